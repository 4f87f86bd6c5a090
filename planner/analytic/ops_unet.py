"""Op rules the diffusion UNet step needs beyond :mod:`planner.analytic.ops`.

Registered under ``unet_*`` names (``O.register`` rejects duplicates, and other
rule modules may register the plain aten names). Each function mirrors one torch
call as CUDA runs it under the profiler's emulation (see ``ops.py``): autocast
policy, outputs, what autograd saves, what backward allocates.

The timestep embedding and the DDPM ``add_noise`` run on tensors that never require
grad, so most of these rules only allocate.
"""

from __future__ import annotations

from math import prod

from typing import Sequence

from planner.analytic import ops as O
from planner.analytic.engine import Sim, T


@O.register("unet_arange")
def arange(n: int, dtype: str = "f32") -> T:
    """torch.arange(start=0, end=n, dtype=...): a fresh tensor, no autograd."""
    return O._new((n,), dtype, "arange")


@O.register("unet_randint")
def randint(shape: Sequence[int]) -> T:
    """torch.randint(low, high, shape): int64, no autograd (``.long()`` is a no-op)."""
    return O._new(tuple(shape), "i64", "randint")


@O.register("unet_index")
def index(src: T, idx: T) -> T:
    """src[idx] for a 1-D integer index (aten.index.Tensor): gathers len(idx) elements.

    Only used on buffers that do not require grad (the scheduler's alphas_cumprod)."""
    out = O._new((*idx.shape, *src.shape[1:]), src.dtype, "index")
    if src.requires_grad and O.S.grad_enabled:  # pragma: no cover - not needed by the step
        raise NotImplementedError("unet_index: gradient through an index op")
    return out


def _unary_no_grad(a: T, name: str) -> T:
    if a.requires_grad and O.S.grad_enabled:  # pragma: no cover - not needed by the step
        raise NotImplementedError(f"{name}: gradient not modelled")
    return O._like(a, a.shape, a.dtype, name)


@O.register("unet_cos")
def cos(a: T) -> T:
    """torch.cos (no CUDA autocast policy). Only on the timestep embedding's args."""
    return _unary_no_grad(a, "cos")


@O.register("unet_sin")
def sin(a: T) -> T:
    """torch.sin (no CUDA autocast policy). Only on the timestep embedding's args."""
    return _unary_no_grad(a, "sin")


@O.register("unet_pow_scalar")
def pow_scalar(a: T, exponent: float) -> T:
    """a ** exponent (pow.Tensor_Scalar, CUDA autocast fp32). PowBackward0 saves self;
    pow_backward = grad * (exponent * self.pow(exponent - 1))."""
    (a,) = O.ac_fp32(a)
    out = O._like(a, a.shape, a.dtype, "pow")
    shape, dt = a.shape, a.dtype

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        p = O._new(shape, dt, "pow")
        m = O._new(shape, dt, "mul")
        r = O._new(g[0].shape, O.promote(g[0].dtype, dt), "mul")
        del m, p
        return [r]

    O.S.record("PowBackward0", [a], [out], bwd, (a,))
    return out


@O.register("unet_contiguous")
def contiguous(a: T) -> T:
    """Tensor.contiguous(): the tensor itself when it already is, else clone (CloneBackward0)."""
    if a.contig and not a.cl:
        return a
    out = O._new(a.shape, a.dtype, "clone")
    a_shape = a.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        r = T(a_shape, g[0].dtype, g[0].st, dense=g[0].dense)
        r.contig = g[0].contig
        r.cl = g[0].cl
        return [r]

    O.S.record("CloneBackward0", [a], [out], bwd)
    return out


# --- multi-head attention layouts ---------------------------------------------------------
#
# SABlock's q/k/v are ``Rearrange("b h (l d) -> b l h d")`` views of (b, n, l*d) linear
# outputs, and what the backward hands back to those views decides whether reshapes
# copy. A 4-D (b, l, n, d) gradient carries its layout in the T flags:
#   contig=True              "L0": contiguous (b, l, n, d) (a bmm gradient)
#   contig=False, cl=True    "L1": laid out (b, n, l, d), the forward view's own layout
#                                  (SDPA's gradients: empty_like(query))
#   contig=False, cl=False   "L2": laid out (b, l, d, n) (einsum's gradient for k,
#                                  which it multiplies transposed)
# With one head L0 and L1 are the same layout.


def _tag(t: T, layout: str) -> T:
    t.contig = layout == "L0"
    t.cl = layout == "L1"
    return t


def _layout(g: T) -> str:
    if g.contig:
        return "L0"
    return "L1" if g.cl else "L2"


@O.register("unet_heads_split")
def heads_split(t: T, heads: int, sdpa: bool) -> T:
    """Rearrange('b h (l d) -> b l h d'): reshape + permute, both views.

    Backward: permute back to (b, n, l, d) and reshape to (b, n, l*d): a view of an
    L1 (or one-head L0) gradient; a view of an L2 gradient that stays transposed
    ((b, n, c) with the n stride 1); a copy (clone) of an L0 gradient with several heads.
    ``sdpa``: the gradients come from the SDPA kernels (L1)."""
    b, n, c = t.shape
    out = O.S.view(t, (b, heads, n, c // heads))
    if heads > 1:
        _tag(out, "L1")
    a_shape = t.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        if not gg.dense:
            return [T(a_shape, gg.dtype, gg.st, dense=False)]
        layout = "L1" if sdpa else _layout(gg)
        if heads == 1 and layout == "L0":
            layout = "L1"
        if layout == "L0":
            return [O._new(a_shape, gg.dtype, "clone")]
        r = T(a_shape, gg.dtype, gg.st)
        r.contig = layout == "L1"
        return [r]

    O.S.record("ViewBackward0", [t], [out], bwd)
    return out


def _clone_operand(a: T, shape: tuple, grad_layout: str) -> T:
    """einsum's reshape of a head-transposed (b, l, ., .) operand to (b*l, ., .) for
    bmm: clone + _unsafe_view, or a view when b == 1 (the size-1 batch dim does not
    constrain the strides). Backward passes the (contiguous) gradient on as a view in
    ``grad_layout``."""
    a_shape = a.shape
    if a_shape[0] == 1:
        out = O.S.view(a, shape)
    else:
        out = O._new(shape, a.dtype, "clone")

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        return [_tag(T(a_shape, gg.dtype, gg.st, dense=gg.dense), grad_layout)]

    O.S.record("CloneBackward0", [a], [out], bwd)
    return out


def _bmm(a: T, b: T, out_shape: tuple, grad_a_layout: str, grad_b_layout: str) -> T:
    """aten.bmm (BmmBackward0 computes mat2's gradient before self's)."""
    out = O._new(out_shape, a.dtype, "bmm")
    a_shape, b_shape = a.shape, b.shape
    need_a, need_b = a.requires_grad, b.requires_grad

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        dt = g[0].dtype
        gb = _tag(O._new(b_shape, dt, "bmm"), grad_b_layout) if need_b else None
        ga = _tag(O._new(a_shape, dt, "bmm"), grad_a_layout) if need_a else None
        return [ga, gb]

    # saved as BmmBackward0 declares them (mat2_, self_): released in that order
    O.S.record("BmmBackward0", [a, b], [out], bwd, (b if need_a else None, a if need_b else None))
    O.count_flops(2 * prod(out_shape) * a.shape[-1], int(need_a) + int(need_b))
    return out


def _unfold_heads(out: T, shape: tuple) -> T:
    """view (b*l, x, y) -> (b, l, x, y). Backward reshape: a copy of an L1 gradient
    (several heads) when b > 1, else a view."""
    res = O.S.view(out, shape)
    a_shape = out.shape
    batch = shape[0]

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        if gg.dense and _layout(gg) == "L1" and batch > 1:
            return [O._new(a_shape, gg.dtype, "clone")]
        return [T(a_shape, gg.dtype, gg.st, dense=gg.dense)]

    O.S.record("ViewBackward0", [out], [res], bwd)
    return res


@O.register("unet_einsum_qk")
def einsum_qk(q: T, k: T) -> T:
    """torch.einsum('blxd,blyd->blxy', q, k) (autocast lower): bmm(q, k^T).

    One head: both operands are views. Several heads: einsum reshapes the
    head-transposed q and k^T to (b*l, ., .) with copies. k's gradient is the
    transpose of a bmm output (L2)."""
    q, k = O.ac_lower(q, k)
    b, lh, n, d = q.shape
    m = k.shape[2]
    if lh == 1:
        return _bmm(q, k, (b, lh, n, m), "L0", "L2")
    qc = _clone_operand(q, (b * lh, n, d), "L0")
    kc = _clone_operand(k, (b * lh, d, m), "L2")
    out = _bmm(qc, kc, (b * lh, n, m), "L0", "L0")
    del qc, kc
    return _unfold_heads(out, (b, lh, n, m))


@O.register("unet_einsum_av")
def einsum_av(a: T, v: T) -> T:
    """torch.einsum('bhxy,bhyd->bhxd', att, v) (autocast lower): bmm(att, v)."""
    a, v = O.ac_lower(a, v)
    b, lh, n, m = a.shape
    d = v.shape[-1]
    if lh == 1:
        return _bmm(a, v, (b, lh, n, d), "L0", "L0")
    af = O.S.view(a, (b * lh, n, m))
    a_shape = a.shape
    O.S.record("ViewBackward0", [a], [af], lambda sim, g, sv: [T(a_shape, g[0].dtype, g[0].st, dense=g[0].dense)])
    vc = _clone_operand(v, (b * lh, m, d), "L0")
    out = _bmm(af, vc, (b * lh, n, d), "L0", "L0")
    del af, vc
    return _unfold_heads(out, (b, lh, n, d))


@O.register("unet_heads_merge")
def heads_merge(x: T, sdpa: bool) -> T:
    """Rearrange('b l h d -> b h (l d)'): permute + reshape. A view for one head and for
    the SDPA output (laid out (b, h, l, d)); a copy of a bmm output with several heads.
    Backward: reshape back (a view), permute: an L1 gradient."""
    b, lh, n, d = x.shape
    if lh == 1 or sdpa:
        out = O.S.view(x, (b, n, lh * d))
        a_shape = x.shape

        def vbwd(sim: Sim, g: list, sv: tuple) -> list:
            gg = g[0]
            r = T(a_shape, gg.dtype, gg.st, dense=gg.dense)
            if lh > 1 and gg.dense:
                _tag(r, "L1" if gg.contig else "L2")
            else:
                r.contig = gg.contig
            return [r]

        O.S.record("ViewBackward0", [x], [out], vbwd)
        return out
    out = O._new((b, n, lh * d), x.dtype, "clone")
    a_shape = x.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        r = T(a_shape, gg.dtype, gg.st, dense=gg.dense)
        if gg.dense:
            _tag(r, "L1" if gg.contig else "L2")
        return [r]

    O.S.record("CloneBackward0", [x], [out], bwd)
    return out


@O.register("unet_tokens_view")
def tokens_view(x: T) -> T:
    """SpatialAttentionBlock's x.reshape(b, c, -1).transpose(1, 2): views, (b, n, c)
    with the n stride 1.

    Its gradient is the sum of the q/k/v linears' input gradients, permuted back. With
    one sample at::matmul folds the transposed input without a copy, and mm's
    mm_mat1_backward returns a column-major gradient for a column-major input
    (derivatives: "if input was column-major, return grad as column-order"); ToCopy
    and the sums keep that layout, so permuted back it is contiguous and group_norm's
    backward uses it as is. With b > 1 the linears fold a contiguous copy, the
    gradient is contiguous as (b, n, c), and permuted back it is not (group_norm's
    backward copies it)."""
    b, c = x.shape[0], x.shape[1]
    n = 1
    for s in x.shape[2:]:
        n *= s
    out = O.S.view(x, (b, n, c))
    out.contig = False
    a_shape = x.shape
    one = b == 1

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        r = T(a_shape, gg.dtype, gg.st, dense=gg.dense)
        r.contig = one
        r.cl = not one
        return [r]

    O.S.record("TransposeBackward0", [x], [out], bwd)
    return out
