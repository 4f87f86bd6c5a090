"""Op rules the LPIPS perceptual loss needs beyond :mod:`planner.analytic.ops`.

Each function mirrors one torch call as the profiler runs it (CUDA autocast
policy from :mod:`planner.measure.cuda_emulation`, CUDA-only composite branches,
``tools/autograd/derivatives.yaml`` for what is saved and what backward
allocates). The current simulation is ``O.S``, read at call time.

Gradient shape/dtype fix-ups: torch's ``validate_outputs`` (engine.cpp) runs
right after a node's ``apply``, while the node's gradient inputs are still alive
(they are owned by ``call_function``'s ``inputs`` until it returns), and for each
output in input order first reduces a broadcast gradient (``sum_to``) and then
casts it to the input's dtype. The rules here that need either do it themselves
at the end of their backward (:func:`_validate`), so both happen before the
engine drops the gradient inputs, as in torch.
"""

from __future__ import annotations

from typing import Sequence

from planner.analytic import ops as O
from planner.analytic.engine import Sim, T

# --- helpers --------------------------------------------------------------------------------


def _new(shape: Sequence[int], dtype: str, op: str) -> T:
    return O.S.new(shape, dtype, op)


def _validate(outs: list, metas: Sequence[tuple[tuple, str] | None]) -> list:
    """validate_outputs(): per output, sum_to the input's shape, then cast to its dtype.
    ``outs[i]`` is replaced in the list, so the unreduced gradient dies at once."""
    for i, m in enumerate(metas):
        if m is None or outs[i] is None:
            continue
        shape, dt = m
        if outs[i].shape != shape:
            outs[i] = _new(shape, outs[i].dtype, "sum")
        if outs[i].dtype != dt:
            outs[i] = _new(outs[i].shape, dt, "_to_copy")
    return outs


def strides(shape: Sequence[int], channels_last: bool = False) -> tuple[int, ...]:
    """Strides of a dense tensor: row-major, or channels-last (N, spatial..., C)."""
    n = len(shape)
    if not channels_last or n < 3:
        out = [1] * n
        for d in range(n - 2, -1, -1):
            out[d] = out[d + 1] * max(shape[d + 1], 1)
        return tuple(out)
    # memory order N, spatial..., C
    order = [0, *range(2, n), 1]
    out = [1] * n
    acc = 1
    for d in reversed(order):
        out[d] = acc
        acc *= max(shape[d], 1)
    return tuple(out)


def is_contiguous(shape: Sequence[int], strd: Sequence[int]) -> bool:
    """c10 TensorImpl::compute_contiguous: size-1 dims are ignored."""
    if any(s == 0 for s in shape):
        return True
    expected = 1
    for size, st in zip(reversed(shape), reversed(strd)):
        if size != 1:
            if st != expected:
                return False
            expected *= size
    return True


# --- creation / indexing ----------------------------------------------------------------------


# index_select_backward_symint (FunctionsManual.cpp):
#   if (isTensorSubclassLike(index)) return grad.new_zeros(self_sizes).index_add(dim, index, grad);
#   return grad.new_zeros(self_sizes).index_add_(dim, index, grad);
# The fake-tensor profiler's index is a FakeTensor (a subclass), so it takes the out-of-place
# branch: one extra transient of the input's size per index_select in backward. A real CUDA
# run adds in place (one allocation fewer). True mirrors the profiler, the estimator's ruler;
# set it to False together with a profiler fix (make the index a plain tensor) to follow CUDA.
INDEX_ADD_OUT_OF_PLACE = True


@O.register("randperm")
def randperm(n: int) -> T:
    """torch.randperm(n) (int64; MONAI draws it on the CPU, which the fake-mode profiler
    counts like any other storage; ``[:k].to(device)`` is then a view of it)."""
    return _new((n,), "i64", "randperm")


@O.register("index_select")
def index_select(x: T, dim: int, index: T) -> T:
    """aten.index_select (no autocast policy). IndexSelectBackward0 saves ``index`` (and
    the input's sizes); backward: grad.new_zeros(self_sizes).index_add[_](dim, index, grad)
    (out of place under the fake-tensor profiler: :data:`INDEX_ADD_OUT_OF_PLACE`)."""
    d = dim % len(x.shape)
    shape = list(x.shape)
    shape[d] = index.shape[0]
    out = _new(shape, x.dtype, "index_select")
    xs = x.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        z = _new(xs, g[0].dtype, "new_zeros")
        if not INDEX_ADD_OUT_OF_PLACE:
            return [z]  # index_add_ in place
        r = _new(xs, g[0].dtype, "index_add")
        del z
        return [r]

    O.S.record("IndexSelectBackward0", [x], [out], bwd, (index,))
    return out


@O.register("permute")
def permute(x: T, perm: Sequence[int]) -> T:
    """x.permute(perm): a view (PermuteBackward0 permutes the gradient back, a view)."""
    shape = tuple(x.shape[p] for p in perm)
    # a permutation that only moves size-1 dims is still contiguous (e.g. a 1-channel axis)
    return O.view(x, shape, permuted=not permute_is_contiguous(x, perm))


def permute_is_contiguous(x: T, perm: Sequence[int]) -> bool:
    """Whether ``x.permute(perm).contiguous()`` returns the view itself (no copy)."""
    shape = tuple(x.shape[p] for p in perm)
    st = strides(x.shape, x.cl)
    return is_contiguous(shape, tuple(st[p] for p in perm))


# --- elementwise ------------------------------------------------------------------------------


@O.register("sub.Tensor")
def sub(a: T, b: T) -> T:
    """a - b with broadcasting (no autocast policy: type promotion). SubBackward0 saves
    nothing; self gets grad (reduced to its shape), other -grad (reduced)."""
    shape = O._broadcast(a.shape, b.shape)
    out = O._like(a, shape, O.promote(a.dtype, b.dtype), "sub")
    ma = (a.shape, a.dtype) if a.requires_grad else None
    mb = (b.shape, b.dtype) if b.requires_grad else None

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        outs = [gg if ma else None, _new(gg.shape, gg.dtype, "neg") if mb else None]
        del gg
        return _validate(outs, [ma, mb])

    O.S.record("SubBackward0", [a, b], [out], bwd)
    return out


@O.register("div.Tensor")
def div(a: T, b: T) -> T:
    """a / b, both tensors, with broadcasting (no autocast policy: type promotion).

    DivBackward0 saves ``other`` and, when other needs a gradient, ``self``. Backward
    computes other's gradient first, ``-grad * ((self / other) / other)`` (temporaries
    self/other, /other, -grad; the product kept), then self's, ``grad / other``."""
    shape = O._broadcast(a.shape, b.shape)
    out = O._like(a, shape, O.promote(a.dtype, b.dtype), "div")
    ma = (a.shape, a.dtype) if a.requires_grad else None
    mb = (b.shape, b.dtype) if b.requires_grad else None
    saved = (b, a) if mb else (b,)  # other_, self_: the order the generated node declares (and releases) them

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        go = None
        if mb:
            self_, other = sv[1], sv[0]
            q = _new(O._broadcast(self_.shape, other.shape), O.promote(self_.dtype, other.dtype), "div")
            q2 = _new(q.shape, q.dtype, "div")
            neg = _new(gg.shape, gg.dtype, "neg")
            go = _new(O._broadcast(neg.shape, q2.shape), O.promote(neg.dtype, q2.dtype), "mul")
            del neg, q2, q, self_, other
        gs = None
        if ma:
            gs = _new(O._broadcast(gg.shape, sv[0].shape), O.promote(gg.dtype, sv[0].dtype), "div")
        outs = [gs, go]
        del gg, gs, go  # the list holds the only references: validate frees as it replaces
        return _validate(outs, [ma, mb])

    O.S.record("DivBackward0", [a, b], [out], bwd, saved)
    return out


@O.register("add_.Tensor")
def add_(a: T, b: T) -> T:
    """a += b in place: no allocation; a new AddBackward0 on the same storage."""
    O.S.mem.op = "add_"
    out = O.S.view(a)
    ma = (a.shape, a.dtype) if a.requires_grad else None
    mb = (b.shape, b.dtype) if b.requires_grad else None

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        outs = [gg if ma else None, gg if mb else None]
        del gg
        return _validate(outs, [ma, mb])

    O.S.record("AddBackward0", [a, b], [out], bwd)
    return out


@O.register("pow.Tensor_Scalar")
def pow_scalar(a: T, exponent: float = 2.0) -> T:
    """a ** exponent: CUDA autocast fp32 policy (a low-precision input is cast to fp32
    first and the copy is what PowBackward0 saves); backward as :func:`ops.pow2`."""
    if exponent != 2:
        raise NotImplementedError("pow.Tensor_Scalar: only exponent 2 has a rule")
    return O.pow2(a)  # applies the fp32 policy


@O.register("sum.dim_IntList")
def sum_dim(a: T, dims: Sequence[int], keepdim: bool = False) -> T:
    """torch.sum(a, dim, keepdim) (autocast fp32_set_opt_dtype: fp32 output for a float
    input). SumBackward1: grad expanded back (a view, no allocation)."""
    dtype = a.dtype
    if O.S.autocast and a.is_float:
        dtype = "f32"
    nd = len(a.shape)
    ds = {d % nd for d in dims}
    oshape = tuple((1 if i in ds else s) for i, s in enumerate(a.shape) if keepdim or i not in ds)
    out = _new(oshape, dtype, "sum")
    shape, src = a.shape, a.dtype

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        return _validate([T(shape, g[0].dtype, g[0].st, dense=False)], [(shape, src)])

    O.S.record("SumBackward1", [a], [out], bwd)
    return out


@O.register("sqrt")
def sqrt(a: T) -> T:
    """torch.sqrt (no autocast policy). SqrtBackward0 saves the result;
    backward ``grad / (2 * result)``: the product is a temporary."""
    out = O._like(a, a.shape, a.dtype, "sqrt")

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        two = _new(sv[0].shape, sv[0].dtype, "mul")
        r = _new(O._broadcast(g[0].shape, two.shape), O.promote(g[0].dtype, two.dtype), "div")
        del two
        return [r]

    O.S.record("SqrtBackward0", [a], [out], bwd, (), (0,))
    return out


# --- pooling / convolution --------------------------------------------------------------------


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool, d: int = 1) -> int:
    """aten pooling_output_shape (Pool.h), with the ceil_mode correction."""
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@O.register("max_pool2d_with_indices")
def max_pool2d(x: T, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> T:
    """F.max_pool2d as CUDA runs it: max_pool2d_with_indices (the profiler's CUDA
    emulation routes max_pool2d there): output and int64 indices, no autocast policy.
    MaxPool2DWithIndicesBackward0 saves self and the indices; backward allocates
    grad_input (self's shape)."""
    shape = (*x.shape[:-2], *[pool_out(n, k, s, p, ceil_mode) for n in x.shape[-2:]])
    out = O._like(x, shape, x.dtype, "max_pool2d_with_indices")
    idx = O._like(x, shape, "i64", "max_pool2d_with_indices")
    xs = x.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        return [_new(xs, g[0].dtype, "max_pool2d_with_indices_backward")]

    # saved: self, then result1 (the indices), released in that order
    O.S.record("MaxPool2DWithIndicesBackward0", [x], [out, idx], bwd, (x,), (1,))
    del idx
    return out


@O.register("convolution.autocast")
def conv(x: T, w: T, b: T | None, stride: int, padding: int) -> T:
    """F.conv2d/conv3d under the autocast kernel: the arguments are cast in order (input,
    weight, bias; a frozen weight is not cached, so each call makes and, through
    ConvolutionBackward0, may keep its own low-precision copy), the convolution runs,
    and the cast argument tuple is released last to first (bias, weight, input)."""
    cx, cw, cb = O.ac_lower(x, w, b)
    out = O.conv(cx, cw, cb, stride, padding)
    del cb, cw, cx
    return out
