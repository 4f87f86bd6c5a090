"""Per-op memory rules: outputs, what autograd saves, what backward allocates.

Each public function mirrors one torch call as CUDA runs it: the autocast policy
(``aten/src/ATen/autocast_mode.h``, the same lists as
:mod:`planner.measure.cuda_emulation`), the composite decomposition down to the
aten ops the dispatcher sees, and for each aten op its outputs, the tensors
``tools/autograd/derivatives.yaml`` saves, and the allocations of its backward
formula. Rules are registered by aten name in :data:`RULES`; registering a name
twice is an error, and :func:`rule` raises for an op nobody wrote a rule for.

Shapes are tuples; dtypes are 'f32', 'f16', 'bf16', 'i64', 'b8', ...
"""

from __future__ import annotations

from math import prod
from typing import Callable, Sequence

from planner.analytic.engine import ITEMSIZE, Sim, T, detached
from planner.errors import PlannerError

RULES: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        if name in RULES:
            raise ValueError(f"op rule {name!r} registered twice")
        RULES[name] = fn
        return fn

    return deco


def rule(name: str) -> Callable:
    try:
        return RULES[name]
    except KeyError:
        raise NotImplementedError(f"no memory rule for op {name!r}") from None


S: Sim = None  # type: ignore[assignment]  # the simulation the model code runs in


def use(sim: Sim) -> None:
    global S
    S = sim


# --- helpers -------------------------------------------------------------------------------


def _new(shape: Sequence[int], dtype: str, op: str) -> T:
    return S.new(shape, dtype, op)


def _like(src: T, shape: Sequence[int], dtype: str, op: str) -> T:
    """An op output that takes its layout (channels-last or not) from ``src``."""
    t = S.new(shape, dtype, op)
    t.cl = src.cl
    return t


def count_flops(forward: int, backward_passes: int) -> None:
    """Forward FLOPs of a conv/matmul, plus one forward's worth per gradient its
    backward computes (grad_input, grad_weight), as the roofline model assumes."""
    if S.recompute_frame is not None or not S.grad_enabled:
        backward_passes = 0  # recomputation (its backward is counted already) or no graph
    S.flops += forward * (1 + backward_passes)


def promote(*dtypes: str) -> str:
    order = {"b8": 0, "u8": 1, "i32": 2, "i64": 3, "bf16": 4, "f16": 4, "f32": 5, "f64": 6}
    best = max(dtypes, key=lambda d: order[d])
    return best


def _grad_like(x_shape: tuple, dtype: str, op: str) -> T:
    return _new(x_shape, dtype, op)


# --- autocast (CUDA policy) ----------------------------------------------------------------


def to_copy(x: T, dtype: str) -> T:
    """aten._to_copy: a new tensor; backward casts the gradient back (ToCopyBackward0)."""
    out = _like(x, x.shape, dtype, "_to_copy")
    src = x.dtype

    def bwd(sim: Sim, g: list, saved: tuple) -> list:
        return [_new(g[0].shape, src, "_to_copy")] if g[0] is not None else [None]

    S.record("ToCopyBackward0", [x], [out], bwd)
    return out


def cached_cast(x: T | None, dtype: str) -> T | None:
    """autocast_mode.cpp cached_cast: fp32 leaf weights that require grad are cached."""
    if x is None or not x.is_float or x.dtype == dtype or x.dtype == "f64":
        return x
    if dtype == S.autocast_dtype and x.dtype == "f32" and x.requires_grad and x.is_leaf and x.is_param:
        hit = S.cast_cache.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        out = to_copy(x, dtype)
        S.cast_cache[id(x)] = (x, out)
        return out
    return to_copy(x, dtype)


def ac_lower(*xs: T | None) -> list:
    if not S.autocast:
        return list(xs)
    return [cached_cast(x, S.autocast_dtype) for x in xs]


def ac_fp32(*xs: T | None) -> list:
    if not S.autocast:
        return list(xs)
    return [cached_cast(x, "f32") for x in xs]


def ac_promote(*xs: T | None) -> list:
    if not S.autocast:
        return list(xs)
    to = "f32" if any(x is not None and x.dtype == "f32" for x in xs) else S.autocast_dtype
    return [cached_cast(x, to) for x in xs]


# --- elementwise -------------------------------------------------------------------------


def _sum_to(g: T, shape: tuple, dtype: str, op: str) -> T:
    if g.shape == shape:
        return g
    return _new(shape, g.dtype, "sum")


def add(a: T, b: T | float, alpha: float = 1.0, op: str = "add") -> T:
    """a + b (Tensor + Tensor, or + Python scalar). Saves nothing."""
    if not isinstance(b, T):
        out = _like(a, a.shape, a.dtype, op)
        S.record("AddBackward1", [a], [out], lambda sim, g, s: [g[0]])
        return out
    shape = _broadcast(a.shape, b.shape)
    out = _like(a, shape, promote(a.dtype, b.dtype), op)
    ash, bsh = a.shape, b.shape

    def bwd(sim: Sim, g: list, saved: tuple) -> list:
        gg = g[0]
        if gg is None:
            return [None, None]
        return [_sum_to(gg, ash, gg.dtype, "sum"), _sum_to(gg, bsh, gg.dtype, "sum")]

    S.record("AddBackward0", [a, b], [out], bwd)
    return out


def sub(a: T, b: T | float) -> T:
    if not isinstance(b, T):
        out = _like(a, a.shape, a.dtype, "sub")
        S.record("SubBackward1", [a], [out], lambda sim, g, s: [g[0]])
        return out
    out = _like(a, _broadcast(a.shape, b.shape), promote(a.dtype, b.dtype), "sub")
    need_b = b.requires_grad

    def bwd(sim: Sim, g: list, saved: tuple) -> list:
        gg = g[0]
        if gg is None:
            return [None, None]
        gb = _new(gg.shape, gg.dtype, "neg") if need_b else None
        return [gg, gb]

    S.record("SubBackward0", [a, b], [out], bwd)
    return out


def rsub(a: T, s: float) -> T:
    """s - a (torch: rsub.Scalar)."""
    out = _like(a, a.shape, a.dtype, "rsub")
    S.record("RsubBackward1", [a], [out], lambda sim, g, sv: [_new(g[0].shape, g[0].dtype, "neg")])
    return out


def mul(a: T, b: T | float) -> T:
    if not isinstance(b, T):
        out = _like(a, a.shape, a.dtype, "mul")
        S.record("MulBackward1", [a], [out], lambda sim, g, s: [_new(g[0].shape, g[0].dtype, "mul")])
        return out
    out = _like(a, _broadcast(a.shape, b.shape), promote(a.dtype, b.dtype), "mul")
    ash, bsh = a.shape, b.shape
    saved = (b if a.requires_grad else None, a if b.requires_grad else None)

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        ga = _sum_to(_new(gg.shape, gg.dtype, "mul"), ash, gg.dtype, "sum") if sv[0] is not None else None
        gb = _sum_to(_new(gg.shape, gg.dtype, "mul"), bsh, gg.dtype, "sum") if sv[1] is not None else None
        return [ga, gb]

    S.record("MulBackward0", [a, b], [out], bwd, saved)
    return out


def div(a: T, s: float) -> T:
    out = _like(a, a.shape, a.dtype, "div")
    S.record("DivBackward1", [a], [out], lambda sim, g, sv: [_new(g[0].shape, g[0].dtype, "div")])
    return out


def div_tensor_scalar_like(a: T) -> T:
    """a / <0-dim tensor> (e.g. torch.sum(kl) / kl.shape[0] keeps a Python int: see div)."""
    return div(a, 1.0)


def _unary_saving_self(name: str, node: str, a: T, bwd_ops: int = 1, out_dtype: str | None = None) -> T:
    out = _new(a.shape, out_dtype or a.dtype, name)
    shape, dt = a.shape, a.dtype

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        # bwd_ops - 1 transients of the input's size, then the gradient
        tmp = [_new(shape, dt, name + "_bwd") for _ in range(bwd_ops - 1)]
        res = _new(shape, g[0].dtype, name + "_backward")
        del tmp
        return [res]

    S.record(node, [a], [out], bwd, (a,))
    return out


def silu(a: T) -> T:
    out = _like(a, a.shape, a.dtype, "silu")
    S.record("SiluBackward0", [a], [out], lambda sim, g, sv: [_new(sv[0].shape, g[0].dtype, "silu_backward")], (a,))
    return out


def leaky_relu(a: T, slope: float) -> T:
    out = _like(a, a.shape, a.dtype, "leaky_relu")
    S.record(
        "LeakyReluBackward0", [a], [out], lambda sim, g, sv: [_new(sv[0].shape, g[0].dtype, "leaky_relu_backward")], (a,)
    )
    return out


def relu_(a: T) -> T:
    """In-place relu: no allocation; saves the result for threshold_backward."""
    S.mem.op = "relu_"
    out = S.view(a)
    # the saved result is the (in-place modified) tensor itself
    S.record("ReluBackward0", [a], [out], lambda sim, g, sv: [_new(sv[0].shape, g[0].dtype, "threshold_backward")], (), (0,))
    return out


def pow2(a: T) -> T:
    """a.pow(2) (pow.Tensor_Scalar: CUDA autocast fp32 policy, so a low-precision input is
    cast first and the fp32 copy is saved); pow_backward = grad * (2 * self.pow(1))."""
    (a,) = ac_fp32(a)
    out = _like(a, a.shape, a.dtype, "pow")

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        p1 = _new(sv[0].shape, sv[0].dtype, "pow")
        m = _new(sv[0].shape, sv[0].dtype, "mul")
        r = _new(g[0].shape, promote(g[0].dtype, m.dtype), "mul")
        del m, p1
        return [r]

    S.record("PowBackward0", [a], [out], bwd, (a,))
    return out


def exp(a: T) -> T:
    (a,) = ac_fp32(a)
    out = _like(a, a.shape, a.dtype, "exp")
    S.record("ExpBackward0", [a], [out], lambda sim, g, sv: [_new(g[0].shape, g[0].dtype, "mul")], (), (0,))
    return out


def log(a: T) -> T:
    (a,) = ac_fp32(a)
    out = _like(a, a.shape, a.dtype, "log")
    S.record("LogBackward0", [a], [out], lambda sim, g, sv: [_new(g[0].shape, g[0].dtype, "div")], (a,))
    return out


def clamp(a: T, lo: float, hi: float) -> T:
    out = _like(a, a.shape, a.dtype, "clamp")

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        # clamp_backward: where((self >= min).logical_and_(self <= max), grad, zeros({}))
        ge = _new(sv[0].shape, "b8", "ge")
        le = _new(sv[0].shape, "b8", "le")
        del le
        z = _new((), g[0].dtype, "scalar_tensor")
        r = _new(g[0].shape, g[0].dtype, "where")
        del ge, z
        return [r]

    S.record("ClampBackward1", [a], [out], bwd, (a,))
    return out


def abs_(a: T) -> T:
    out = _like(a, a.shape, a.dtype, "abs")

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        sg = _new(sv[0].shape, sv[0].dtype, "sgn")
        r = _new(g[0].shape, g[0].dtype, "mul")
        del sg
        return [r]

    S.record("AbsBackward0", [a], [out], bwd, (a,))
    return out


# --- reductions ---------------------------------------------------------------------------


def sum_all(a: T, dtype: str | None = None) -> T:
    if S.autocast and dtype is None and a.is_float:
        dtype = "f32"  # sum: fp32_set_opt_dtype
    out = _new((), dtype or a.dtype, "sum")
    shape = a.shape
    S.record("SumBackward0", [a], [out], lambda sim, g, sv: [T(shape, g[0].dtype, g[0].st, dense=False)])
    return out


def sum_dims(a: T, dims: Sequence[int], dtype: str | None = None) -> T:
    if S.autocast and dtype is None and a.is_float:
        dtype = "f32"
    nd = len(a.shape)
    dims = [d % nd for d in dims]
    oshape = tuple(s for i, s in enumerate(a.shape) if i not in dims)
    out = _new(oshape, dtype or a.dtype, "sum")
    shape = a.shape
    S.record("SumBackward1", [a], [out], lambda sim, g, sv: [T(shape, g[0].dtype, g[0].st, dense=False)])
    return out


def mean_all(a: T) -> T:
    out = _new((), a.dtype, "mean")
    shape = a.shape
    # MeanBackward0: grad.expand(sizes) / numel -> a dense tensor
    S.record("MeanBackward0", [a], [out], lambda sim, g, sv: [_new(shape, g[0].dtype, "div")])
    return out


def mean_dims(a: T, dims: Sequence[int], keepdim: bool = False) -> T:
    nd = len(a.shape)
    dims = [d % nd for d in dims]
    oshape = tuple((1 if i in dims else s) for i, s in enumerate(a.shape) if keepdim or i not in dims)
    out = _new(oshape, a.dtype, "mean")
    shape = a.shape
    S.record("MeanBackward1", [a], [out], lambda sim, g, sv: [_new(shape, g[0].dtype, "div")])
    return out


# --- shape ops (views and copies) ---------------------------------------------------------


def view(a: T, shape: Sequence[int], dense: bool = True, permuted: bool = False) -> T:
    """A view (reshape/transpose/permute that needs no copy). ``permuted``: the result is
    a transposed layout, and so is the gradient its backward hands on."""
    out = S.view(a, shape, dense)
    if permuted:
        out.contig = False
        out.cl = len(out.shape) >= 4
    a_shape = a.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        r = T(a_shape, g[0].dtype, g[0].st, dense=g[0].dense)
        if permuted or not g[0].contig:
            r.contig = False
        return [r]

    S.record("ViewBackward0", [a], [out], bwd)
    return out


def contiguous_copy(a: T, shape: Sequence[int] | None = None, op: str = "clone") -> T:
    """reshape of a non-viewable tensor: clone(contiguous) (+ _unsafe_view)."""
    out = _new(shape or a.shape, a.dtype, op)
    a_shape = a.shape
    S.record("CloneBackward0", [a], [out], lambda sim, g, sv: [T(a_shape, g[0].dtype, g[0].st, dense=False)])
    return out


def detach(a: T) -> T:
    return T(a.shape, a.dtype, a.st, dense=a.dense)


def pad(a: T, pads: Sequence[int]) -> T:
    """F.pad constant -> constant_pad_nd; backward crops: constant_pad_nd(grad, -pad)."""
    nd = len(a.shape)
    shape = list(a.shape)
    for i in range(len(pads) // 2):
        dim = nd - 1 - i
        shape[dim] += pads[2 * i] + pads[2 * i + 1]
    out = _like(a, shape, a.dtype, "constant_pad_nd")
    a_shape = a.shape
    S.record("ConstantPadNdBackward0", [a], [out], lambda sim, g, sv: [_new(a_shape, g[0].dtype, "constant_pad_nd")])
    return out


def cat(xs: Sequence[T], dim: int) -> T:
    dt = promote(*[x.dtype for x in xs])
    shape = list(xs[0].shape)
    d = dim % len(shape)
    shape[d] = sum(x.shape[d] for x in xs)
    out = _new(shape, dt, "cat")
    shapes = [x.shape for x in xs]
    dts = [x.dtype for x in xs]

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        # cat_tensors_backward: slices of grad (views), cast per input dtype if needed
        return [T(s, g[0].dtype, g[0].st, dense=False) for s in shapes]

    S.record("CatBackward0", list(xs), [out], bwd)
    del dts
    return out


def _broadcast(a: tuple, b: tuple) -> tuple:
    n = max(len(a), len(b))
    a2 = (1,) * (n - len(a)) + tuple(a)
    b2 = (1,) * (n - len(b)) + tuple(b)
    return tuple(max(x, y) for x, y in zip(a2, b2))


# --- convolution ----------------------------------------------------------------------------


def conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv(x: T, w: T, b: T | None, stride: int, padding: int, dilation: int = 1) -> T:
    """F.conv{2,3}d -> aten.convolution. Autocast: lower precision for x, w, b.

    Saves input and weight (derivatives.yaml: convolution -> convolution_backward);
    backward allocates grad_input (if the input requires grad), grad_weight, grad_bias.
    """
    x, w, b = ac_lower(x, w, b)
    k = w.shape[2:]
    spatial = [conv_out(s, kk, stride, padding, dilation) for s, kk in zip(x.shape[2:], k)]
    out = _like(x, (x.shape[0], w.shape[0], *spatial), x.dtype, "convolution")
    xs, ws, xdt, wdt = x.shape, w.shape, x.dtype, w.dtype
    need = (x.requires_grad, w.requires_grad, b is not None and b.requires_grad)
    bshape = b.shape if b is not None else None

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gi = _new(xs, xdt, "convolution_backward") if need[0] else None
        gw = _new(ws, wdt, "convolution_backward") if need[1] else None
        gb = _new(bshape, g[0].dtype, "convolution_backward") if need[2] else None
        return [gi, gw, gb]

    S.record("ConvolutionBackward0", [x, w, b], [out], bwd, (x, w))
    count_flops(2 * out.numel * prod(ws[1:]), int(need[0]) + int(need[1]))
    io = (prod(xs) + out.numel) * ITEMSIZE[xdt]
    if io > S.conv_io_max:
        S.conv_io_max = io
    return out


# --- normalization ---------------------------------------------------------------------------


def group_norm(x: T, groups: int, w: T | None, b: T | None) -> T:
    """group_norm (autocast fp32) -> native_group_norm: out, mean (N, G), rstd (N, G)."""
    x, w, b = ac_fp32(x, w, b)
    inp = x  # alive until native_group_norm returns, as the C++ argument is
    if x.cl:
        # group_norm.cpp off the CPU: X = input.contiguous() -> a copy of a channels-last input
        x = contiguous_copy(x)
    out = _new(x.shape, x.dtype, "native_group_norm")
    mean = _new((x.shape[0], groups), x.dtype, "native_group_norm")
    rstd = _new((x.shape[0], groups), x.dtype, "native_group_norm")
    xs, xdt = x.shape, x.dtype
    cw = w.shape if w is not None else None

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        # native_group_norm_backward(grad.contiguous(), ...)
        gc = _new(g[0].shape, g[0].dtype, "clone") if not g[0].contig else g[0]
        gi = _new(xs, xdt, "native_group_norm_backward")
        gw = _new(cw, xdt, "native_group_norm_backward") if cw else None
        gb = _new(cw, xdt, "native_group_norm_backward") if cw else None
        del gc
        return [gi, gw, gb]

    S.record("NativeGroupNormBackward0", [x, w, b], [out, mean, rstd], bwd, (x, w), (1, 2))
    del mean, rstd, inp
    return out


def batch_norm(x: T, w: T | None, b: T | None, running: Sequence[T], training: bool = True) -> T:
    """native_batch_norm (no autocast policy): out, save_mean (C), save_invstd (C) fp32."""
    c = x.shape[1]
    out = _new(x.shape, x.dtype, "native_batch_norm")
    sm = _new((c,), "f32", "native_batch_norm")
    si = _new((c,), "f32", "native_batch_norm")
    xs, xdt = x.shape, x.dtype
    cw = w.shape if w is not None else None

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gi = _new(xs, xdt, "native_batch_norm_backward")
        gw = _new(cw, "f32", "native_batch_norm_backward") if cw else None
        gb = _new(cw, "f32", "native_batch_norm_backward") if cw else None
        return [gi, gw, gb]

    S.record("NativeBatchNormBackward0", [x, w, b], [out, sm, si], bwd, (x, w, *running), (1, 2))
    del sm, si
    return out


# --- matmul family -------------------------------------------------------------------------


def mm_saving(
    a_saved: T | None, b_saved: T | None, inputs: list, out: T, name: str, a_shape: tuple, b_shape: tuple,
    op: str = "mm", b_first: bool = False,
) -> None:
    need_a, need_b = inputs[0].requires_grad, inputs[1].requires_grad

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        if b_first:
            gb = _new(b_shape, g[0].dtype, op) if need_b else None
            ga = _new(a_shape, g[0].dtype, op) if need_a else None
        else:
            ga = _new(a_shape, g[0].dtype, op) if need_a else None
            gb = _new(b_shape, g[0].dtype, op) if need_b else None
        return [ga, gb]

    # saved as MmBackward0/BmmBackward0 declare them (mat2_, self_): released in that order
    S.record(name, inputs, [out], bwd, (b_saved if need_a else None, a_saved if need_b else None))


def linear(x: T, w: T, b: T | None, x_contiguous: bool) -> T:
    """F.linear (autocast lower) -> at::linear (aten/src/ATen/native/Linear.cpp).

    2-D input or contiguous 3-D input with bias: addmm on a flattened view (saves the
    view and weight.t()). Non-contiguous 3-D input: matmul folds it with reshape,
    which copies (clone), mm saves the copy; then add_(bias) in place.
    """
    x, w, b = ac_lower(x, w, b)
    n_in = w.shape[1]
    rows = prod(x.shape[:-1])
    oshape = (*x.shape[:-1], w.shape[0])
    if len(x.shape) == 2 or (x_contiguous and b is not None):
        flat = view(x, (rows, n_in)) if len(x.shape) != 2 else x
        wt = view(w, (w.shape[1], w.shape[0]), dense=True)
        out2 = _new((rows, w.shape[0]), x.dtype, "addmm")
        need_b = b is not None and b.requires_grad
        need_i, need_w = flat.requires_grad, wt.requires_grad
        fshape, wshape = flat.shape, wt.shape
        bsh = b.shape if b is not None else None

        def bwd(sim: Sim, g: list, sv: tuple) -> list:
            # AddmmBackward0 computes mat1's and mat2's gradients; the bias's (grad
            # itself) is summed to its 1-D shape afterwards (engine validate_outputs)
            gi = _new(fshape, g[0].dtype, "mm") if need_i else None
            gw = _new(wshape, g[0].dtype, "mm") if need_w else None
            gb = _new(bsh, g[0].dtype, "sum") if need_b else None
            return [gb, gi, gw]

        S.record("AddmmBackward0", [b, flat, wt], [out2], bwd, (flat if wt.requires_grad else None, wt if flat.requires_grad else None))
        count_flops(2 * rows * n_in * w.shape[0], int(need_i) + int(need_w))
        del flat, wt
        return _unflatten(out2, oshape) if len(x.shape) != 2 else out2
    # matmul fold path: reshape(-1, C) of the transposed (B, N, C) input is a view when
    # B == 1 and a copy otherwise
    viewable = x_contiguous or prod(x.shape[:-2]) == 1
    # at::matmul(input, weight.t()): weight.t() is taken before matmul folds the input,
    # so its backward node comes first (and runs after the input's in backward)
    wt = view(w, (w.shape[1], w.shape[0]))
    x2 = view(x, (rows, n_in)) if viewable else contiguous_copy(x, (rows, n_in))
    out2 = _new((rows, w.shape[0]), x.dtype, "mm")
    # MmBackward0 computes mat2's gradient before self's (unlike AddmmBackward0)
    mm_saving(x2, wt, [x2, wt], out2, "MmBackward0", x2.shape, wt.shape, b_first=True)
    count_flops(2 * rows * n_in * w.shape[0], int(x2.requires_grad) + int(wt.requires_grad))
    out = _unflatten(out2, oshape)  # _unsafe_view(mm, output_shape)
    del out2, x2, wt
    if b is not None:
        S.mem.op = "add_"
        # add_ in place: a new autograd node (AddBackward0) on the same storage
        res = S.view(out)
        bsh = b.shape
        S.record("AddBackward0", [out, b], [res], lambda sim, g, sv: [g[0], _new(bsh, g[0].dtype, "sum")])
        return res
    return out


def _unflatten(out2: T, oshape: tuple) -> T:
    """out.view(*sizes[:-1], N) after _flatten_nd_linear's addmm (or matmul's
    _unsafe_view(mm)). The backward is grad.reshape(rows, N): a view, except for a
    non-contiguous gradient (transposed by an attention block's transpose(1, 2), or a
    cat slice) whose leading dims do not fold into one (batch > 1): then reshape copies
    it (clone)."""
    out = S.view(out2, oshape)
    fold = prod(oshape[:-2]) == 1
    a_shape = out2.shape

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        gg = g[0]
        if not gg.contig and not fold:
            return [_new(a_shape, gg.dtype, "clone")]
        r = T(a_shape, gg.dtype, gg.st, dense=gg.dense)
        r.contig = gg.contig
        return [r]

    S.record("ViewBackward0", [out2], [out], bwd)
    return out


def bmm(a: T, b: T, out_shape: tuple, b_first: bool = False) -> T:
    """einsum contracting to one bmm (autocast lower). ``b_first``: einsum passed the
    operands to bmm swapped, so backward computes the second operand's gradient first."""
    a, b = ac_lower(a, b)
    out = _new(out_shape, a.dtype, "bmm")
    mm_saving(a, b, [a, b], out, "BmmBackward0", a.shape, b.shape, op="bmm", b_first=b_first)
    count_flops(2 * prod(out_shape) * a.shape[-1], int(a.requires_grad) + int(b.requires_grad))
    return out


# --- softmax / attention ----------------------------------------------------------------


def softmax_fp32(x: T) -> T:
    """softmax.int under CUDA autocast (fp32_set_opt_dtype): fp16 input -> fused
    _softmax(half_to_float=True), fp32 output saved; backward _softmax_backward_data
    gives the input's dtype. Without autocast: _softmax in the input dtype."""
    if S.autocast and x.dtype == "f16":
        odt = "f32"
    elif S.autocast and x.dtype != "f32":
        x = to_copy(x, "f32")
        odt = "f32"
    else:
        odt = x.dtype
    out = _new(x.shape, odt, "_softmax")
    xdt, xs = x.dtype, x.shape
    S.record("SoftmaxBackward0", [x], [out], lambda sim, g, sv: [_new(xs, xdt, "_softmax_backward_data")], (), (0,))
    return out


# CUDA's SDPA backend choice: the torch-free rule set both engines use (planner/sdpa_rules.py).
from planner.sdpa_rules import sdpa_choice  # noqa: E402  (re-exported: ops.sdpa_choice)

_SDPA_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}


def sdpa(q: T, k: T, v: T) -> T:
    """F.scaled_dot_product_attention(q, k, v) (no mask, no dropout, not causal) as CUDA
    dispatches it on sm80: the backend :func:`sdpa_choice` picks. Flash and
    memory-efficient both save q, k, v, the output and a logsumexp (B, H, L) fp32: O(L)
    memory, no L x L scores.

    The symbolic tensors carry no strides: q/k/v are taken to have a contiguous last
    dimension and storage offset 0, which holds for MONAI's SABlock (separate q/k/v
    linears, ``Rearrange('b h (l d) -> b l h d')`` keeps d innermost). Not modelled (a
    PlannerError, so the estimate never silently differs from ``vramplan profile``):
    the math kernel (the fused kernels rejected, e.g. fp32 with a head dim not a
    multiple of 4) and flash with a head dim that attention.cpp pads to a multiple of 8
    (pad_last_dim<8>: padded copies of q/k/v, a sliced output)."""
    q, k, v = ac_lower(q, k, v)
    bsz, heads, L, d = q.shape
    requires_grad = S.grad_enabled and any(x.requires_grad for x in (q, k, v))
    backend, reasons = sdpa_choice(q.shape, k.shape, v.shape, (q.dtype, k.dtype, v.dtype), requires_grad=requires_grad)
    if backend == "math" or (backend == "flash" and d % 8 != 0):
        why = "; ".join(reasons) if backend == "math" else f"flash pads head dim {d} to a multiple of 8"
        raise PlannerError(
            f"estimate: attention with q/k/v {list(q.shape)} {q.dtype} runs "
            f"{'the math kernel' if backend == 'math' else 'a padded flash kernel'} on CUDA ({why}), "
            "which the estimate does not model; use `vramplan profile` for this setup"
        )
    flash = backend == "flash"
    if requires_grad:  # backward scratch (planner/workspaces.py)
        S.attention_calls.append((bsz, heads, L, k.shape[-2], d, _SDPA_DTYPES[q.dtype], backend))
    name = "_scaled_dot_product_flash_attention" if flash else "_scaled_dot_product_efficient_attention"
    out = _new((bsz, heads, L, v.shape[-1]), q.dtype, name)
    # the memory-efficient kernel pads its logsumexp to a multiple of 32 queries
    # (meta__scaled_dot_product_efficient_attention: ceil(M / 32) * 32), and computes it
    # only when an input needs grad (attention.cpp should_compute_logsumexp)
    lse_len = L if flash else (-(-L // 32) * 32 if requires_grad else 0)
    lse = _new((bsz, heads, lse_len), "f32", name)
    extra = [_new((2,), "u64", name), _new((), "u64", name)] if flash else [_new((), "i64", name), _new((), "i64", name)]
    if flash:
        extra.append(_new((0,), q.dtype, name))  # debug attn mask (empty)
    qs, ks, vs, dt = q.shape, k.shape, v.shape, q.dtype
    bname = name + "_backward"

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        return [_new(qs, dt, bname), _new(ks, dt, bname), _new(vs, dt, bname)]

    S.record(
        "ScaledDotProductFlashAttentionBackward0" if flash else "ScaledDotProductEfficientAttentionBackward0",
        # saved in the order the generated node releases them: key_, query_, value_,
        # logsumexp_, output_, then rng_state_/unused_ (flash: seed, offset) or
        # philox_offset_/philox_seed_ (efficient)
        [q, k, v], [out, lse, *extra[:2]], bwd, (k, q, v), (1, 0, 2, 3) if flash else (1, 0, 3, 2),
    )
    # QK^T and PV: 4 B H L S d; backward recomputes the scores and computes three
    # gradients (flash/memory-efficient kernels: about 2.5 forwards)
    fwd = 4 * bsz * heads * L * k.shape[-2] * d
    S.flops += int(fwd * (3.5 if q.requires_grad and S.recompute_frame is None else 1))
    del lse, extra
    return out


# --- losses -----------------------------------------------------------------------------


def l1_loss(a: T, b: T) -> T:
    """F.l1_loss (autocast fp32) = mean(abs(a - b)) (CompositeImplicit)."""
    a, b = ac_fp32(a, b)
    d = sub(a, b)
    ab = abs_(d)
    del d
    return mean_all(ab)


def mse_loss(a: T, b: T) -> T:
    """aten.mse_loss (autocast fp32): saves self and target; mse_loss_backward.

    The reduced result keeps the unreduced loss's storage, and the impl computes into a second
    unreduced tensor that it frees on return (``planner.measure.tracker.REDUCED_LOSSES``:
    ``TORCH_META_FUNC(mse_loss)`` sizes the output as the broadcast op and ``resize_({})``s it)."""
    a, b = ac_fp32(a, b)
    full = prod(_broadcast(a.shape, b.shape))
    unreduced = _new((full,), a.dtype, "mse_loss")
    out = _new((full,), a.dtype, "mse_loss")
    out.shape = ()
    del unreduced
    ash, adt = a.shape, a.dtype
    need_b = b.requires_grad

    def bwd(sim: Sim, g: list, sv: tuple) -> list:
        ga = _new(ash, adt, "mse_loss_backward")
        gb = _new(ash, adt, "mse_loss_backward") if need_b else None
        return [ga, gb]

    S.record("MseLossBackward0", [a, b], [out], bwd, (a, b))
    return out


def _broadcast(a: tuple, b: tuple) -> tuple:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(max(x, y) for x, y in zip(a, b))


def scalar_tensor(dtype: str = "f32", op: str = "lift_fresh") -> T:
    return _new((), dtype, op)


def expand(a: T, shape: tuple) -> T:
    out = T(shape, a.dtype, a.st, dense=False)
    a_shape = a.shape
    S.record("ExpandBackward0", [a], [out], lambda sim, g, sv: [_new(a_shape, g[0].dtype, "sum")])
    return out


ELEMENTWISE_WITH_RULES = (
    "add", "sub", "rsub", "mul", "div", "silu", "leaky_relu", "relu_", "pow", "exp", "log", "clamp", "abs",
    "sum", "mean", "view", "clone", "constant_pad_nd", "cat", "convolution", "native_group_norm",
    "native_batch_norm", "addmm", "mm", "bmm", "_softmax", "_to_copy", "mse_loss",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
)
for _name, _fn in {
    "add": add, "sub": sub, "rsub": rsub, "mul": mul, "div": div, "silu": silu, "leaky_relu": leaky_relu,
    "relu_": relu_, "pow": pow2, "exp": exp, "log": log, "clamp": clamp, "abs": abs_, "sum": sum_all,
    "mean": mean_all, "view": view, "clone": contiguous_copy, "constant_pad_nd": pad, "cat": cat,
    "convolution": conv, "native_group_norm": group_norm, "native_batch_norm": batch_norm, "addmm": linear,
    "mm": linear, "bmm": bmm, "_softmax": softmax_fp32, "_to_copy": to_copy, "mse_loss": mse_loss,
    "_scaled_dot_product_flash_attention": sdpa, "_scaled_dot_product_efficient_attention": sdpa,
}.items():
    register(_name)(_fn)

ITEMSIZE = ITEMSIZE  # re-export for model code


# --- more rules ---------------------------------------------------------------------------


@register("upsample_nearest")
def upsample_nearest(x: T, scale: int) -> T:
    """F.interpolate(nearest) -> upsample_nearest{2,3}d (autocast fp32); saves only sizes."""
    (x,) = ac_fp32(x)
    out = _like(x, (*x.shape[:2], *[s * scale for s in x.shape[2:]]), x.dtype, "upsample_nearest3d")
    xs = x.shape
    S.record("UpsampleNearest3DBackward0", [x], [out], lambda sim, g, sv: [_new(xs, g[0].dtype, "upsample_nearest3d_backward")])
    return out


@register("randn_like")
def randn_like(x: T) -> T:
    return _new(x.shape, x.dtype, "randn_like")


@register("randn")
def randn(shape: tuple, dtype: str = "f32") -> T:
    return _new(shape, dtype, "randn")
