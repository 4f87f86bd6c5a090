"""Make a CPU (or fake-CPU) training step allocate what it would on CUDA.

A CPU-only torch build cannot run ops on fake CUDA tensors, so the profiler
traces on CPU tensors and emulates, at the dispatcher level, the places where
CUDA differs:

1. **Autocast op lists.** CPU autocast is not CUDA autocast (CPU keeps
   group_norm/softmax in low precision and promotes cat/stack; CUDA runs
   group_norm, softmax, upsample and the losses in fp32 and does not promote
   cat). While :class:`CudaEmulation` is active, every op that has an
   ``AutocastCPU`` or ``AutocastCUDA`` kernel in this build gets a Python kernel
   on the ``AutocastCPU`` key that applies the *CUDA* policy (or passes through
   when CUDA has none). Casting at the dispatcher's autocast level (above
   autograd) means the casts are recorded by autograd and the low-precision
   copies are what backward saves, exactly as real autocast; it also works when
   ``torch.utils.checkpoint`` recomputes in backward, where Python function
   modes are not active.
   Source of the lists: ``aten/src/ATen/autocast_mode.h`` (AT_FORALL_LOWER_PRECISION_FP,
   AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE,
   AT_FORALL_PROMOTE) and ``autocast_mode.cpp`` (cudnn_convolution[_transpose]
   lower precision, binary_cross_entropy banned). ``tests/test_cuda_emulation.py``
   checks the transcription against the AutocastCUDA registrations of this build.
2. **The weight-cast cache.** ``cached_cast`` in ``autocast_mode.cpp`` keeps the
   low-precision copy of an fp32 leaf that requires grad (a weight) for the
   whole autocast region and clears it when the outermost region exits.
3. **CUDA-only branches of composite ops** (``CompositeImplicitAutograd``
   overrides, and FakeTensor's conv layout hook): convolutions keep a channels-last
   input channels-last as cuDNN does; group_norm makes its input contiguous off the CPU (the CPU keeps a
   channels-last input as it is; ``group_norm.cpp``); softmax/log_softmax of fp16 input to fp32 output is one fused
   kernel on CUDA (``aten/src/ATen/native/SoftMax.cpp``: ``_softmax(input, dim,
   half_to_float=true)``, no fp32 copy of the input); dropout uses the fused
   ``native_dropout`` (``Dropout.cpp``: ``is_fused_kernel_acceptable``);
   max_pool2d always produces indices off the CPU; linear adds its bias in place (the
   branch a plain tensor takes; FakeTensor would take the out-of-place one for
   tensor subclasses); scaled_dot_product_attention
   picks the backend CUDA's ``select_sdp_backend`` would (a port of every dense check in
   ``cuda/sdp_utils.cpp`` and ``sdp_utils_cpp.h``, sm80 assumed: dtype, 4-D inputs,
   head dims and alignment, masks, contiguous last dimensions, batch/heads, empty
   sequences, runtime switches) and runs what ``attention.cpp`` then runs; when a fused
   kernel is rejected and the O(n^2) math kernel runs, a note says where and why.

Torch is imported here: this is the measuring side only.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from planner.sdpa_rules import NoKernel, sdpa_choice

# --- transcription of aten/src/ATen/autocast_mode.h ---------------------------------

LOWER_PRECISION_FP = (
    "_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc",
    "conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input", "convolution",
    "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv", "linalg_vecdot",
    "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "_scaled_dot_product_flash_attention",
    "scaled_dot_product_attention",
    # autocast_mode.cpp registers these two beside the list:
    "cudnn_convolution", "cudnn_convolution_transpose",
)

FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor",
    "pow.Scalar", "softplus", "layer_norm", "native_layer_norm", "rms_norm", "group_norm",
    "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
    "renorm", "logsumexp", "upsample_nearest1d", "_upsample_nearest_exact1d",
    "upsample_nearest2d", "_upsample_nearest_exact2d", "upsample_nearest3d",
    "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d",
    "_upsample_bicubic2d_aa",
)

FP32_SET_OPT_DTYPE = (
    "prod", "prod.dim_int", "prod.dim_Dimname", "softmax.int", "softmax.Dimname",
    "log_softmax.int", "log_softmax.Dimname", "cumprod", "cumprod.dimname", "cumsum",
    "cumsum.dimname", "linalg_vector_norm", "linalg_matrix_norm", "linalg_matrix_norm.str_ord",
    "sum", "sum.dim_IntList", "sum.dim_DimnameList",
)

# registered overload -> the dtype-taking overload it redispatches to
FP32_APPEND_DTYPE = {
    "norm.Scalar": "norm.ScalarOpt_dtype",
    "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype",
    "norm.names_ScalarOpt_dim": "norm.names_ScalarOpt_dim_dtype",
}

PROMOTE = (
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
    "index_put", "tensordot", "scatter_add",
)

BANNED = ("binary_cross_entropy",)


def cuda_policy_table() -> dict[str, str]:
    """'op.overload' (overload 'default' spelled without suffix) -> policy name."""
    table: dict[str, str] = {}
    for names, policy in (
        (LOWER_PRECISION_FP, "lower_precision_fp"),
        (FP32, "fp32"),
        (FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype"),
        (tuple(FP32_APPEND_DTYPE), "fp32_append_dtype"),
        (PROMOTE, "promote"),
        (BANNED, "banned"),
    ):
        for n in names:
            if n in table:
                raise ValueError(f"autocast op {n} listed twice")
            table[n] = policy
    return table


def _resolve(name: str) -> torch._ops.OpOverload | None:
    base, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, base, None)
    if packet is None:
        return None
    return getattr(packet, overload or "default", None)


def _registered(key: str) -> set[str]:
    return {n.removeprefix("aten::") for n in torch._C._dispatch_get_registrations_for_dispatch_key(key)}


# --- the kernels ---------------------------------------------------------------------

_NO_AUTOCAST = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _eligible(t: Any) -> bool:
    # is_eligible(): defined, autocast-eligible (every tensor here stands for a CUDA
    # tensor), floating point, not double.
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class _CastCache:
    """``cached_cast``'s cache: lower-precision copies of fp32 leaf weights."""

    def __init__(self) -> None:
        self._store: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def cast(self, t: Any, to: torch.dtype, lower: torch.dtype) -> Any:
        if not _eligible(t) or t.dtype == to:
            return t
        can_cache = (
            to == lower
            and t.dtype == torch.float32
            and t.requires_grad
            and t.is_leaf
            and not t._is_view()
            and torch.is_autocast_cache_enabled()
        )
        if not can_cache:
            return t.to(to)
        hit = self._store.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        out = t.to(to)
        self._store[id(t)] = (weakref.ref(t), out)
        return out

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def _map(fn: Callable[[Any], Any], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def one(a: Any) -> Any:
        if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            return type(a)(one(x) for x in a)
        return fn(a)

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def _flat_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _make_autocast_kernel(op: torch._ops.OpOverload, policy: str, cache: _CastCache) -> Callable:
    schema_args = [a.name for a in op._schema.arguments]
    dtype_pos = schema_args.index("dtype") if "dtype" in schema_args else None

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST):
            lower = torch.get_autocast_dtype("cpu")
            if policy == "passthrough":
                return op(*args, **kwargs)
            if policy == "banned":
                raise RuntimeError(
                    f"{op} is unsafe to autocast (CUDA autocast bans it); use binary_cross_entropy_with_logits"
                )
            if policy == "lower_precision_fp":
                args, kwargs = _map(lambda a: cache.cast(a, lower, lower), args, kwargs)
                return op(*args, **kwargs)
            if policy == "fp32":
                args, kwargs = _map(lambda a: cache.cast(a, torch.float32, lower), args, kwargs)
                return op(*args, **kwargs)
            if policy == "fp32_set_opt_dtype":
                if not (args and _eligible(args[0])):
                    return op(*args, **kwargs)
                if dtype_pos is not None and len(args) > dtype_pos:
                    if args[dtype_pos] is None:
                        args = (*args[:dtype_pos], torch.float32, *args[dtype_pos + 1 :])
                elif kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
                return op(*args, **kwargs)
            if policy == "fp32_append_dtype":
                target = _resolve(FP32_APPEND_DTYPE[_name(op)])
                out_type = torch.float32 if _eligible(args[0]) else args[0].dtype
                return target(*args, dtype=out_type, **kwargs)
            if policy == "promote":
                to = lower
                for t in _flat_tensors(args, kwargs):
                    if _eligible(t) and t.dtype == torch.float32:
                        to = torch.float32
                args, kwargs = _map(lambda a: cache.cast(a, to, lower), args, kwargs)
                return op(*args, **kwargs)
            raise AssertionError(policy)

    return kernel


def _name(op: torch._ops.OpOverload) -> str:
    base = op._schema.name.removeprefix("aten::")
    return base if op._overloadname == "default" else f"{base}.{op._overloadname}"


# --- CUDA-only branches of composite ops ---------------------------------------------

aten = torch.ops.aten


def _softmax_cuda(self: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    # SoftMax.cpp: if (input_.is_cuda() && input_.scalar_type() == Half && dtype == Float)
    #   return at::_softmax(input_, dim_, true);   // fused, no fp32 copy of the input
    if self.dtype == torch.float16 and dtype == torch.float32:
        return aten._softmax(self, dim, True)
    converted = self.to(dtype) if dtype is not None else self
    return aten._softmax(converted, dim, False)


def _log_softmax_cuda(self: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    if self.dtype == torch.float16 and dtype == torch.float32:
        return aten._log_softmax(self, dim, True)
    converted = self.to(dtype) if dtype is not None else self
    return aten._log_softmax(converted, dim, False)


def _dropout_cuda(input: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    # Dropout.cpp: fused native_dropout when (is_cuda && 0 < p < 1 && numel > 0), else
    # _dropout_impl: p == 0 or !train -> input itself; p == 1 -> input * 0.
    if not train or p == 0 or input.numel() == 0:
        return input
    if p == 1:
        return input * torch.zeros((), dtype=input.dtype, device=input.device)
    return aten.native_dropout(input, p, train)[0]


def _max_pool2d_cuda(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    # Pooling.cpp: off the CPU max_pool2d is max_pool2d_with_indices (indices allocated).
    return aten.max_pool2d_with_indices(self, kernel_size, stride, padding, dilation, ceil_mode)[0]


# --- scaled_dot_product_attention: select_sdp_backend for CUDA ---------------------------
#
# The backend choice is planner/sdpa_rules.py (torch-free, shared with the estimator; its
# docstring cites sdp_utils.cpp and sdp_utils_cpp.h function by function). Here: reading
# the tensors' shapes, strides and offsets for it, the runtime switches and priority order,
# and what aten/src/ATen/native/transformers/attention.cpp scaled_dot_product_attention
# does around the kernel (convert_boolean_attn_mask, pad_last_dim<8>,
# post_process_flash_output, preprocess_mask, should_compute_logsumexp,
# validate_sdpa_input).
#
# Assumed GPU: compute capability 8.0 (A100 class); the rules that depend on it take the
# capability as a parameter (sm86/89 and sm120/121 reject flash for training with
# head_dim in (192, 224], or (224, 256] with dropout). Not emulated: nested tensors (dense
# only), CUDA-less builds (USE_FLASH_ATTENTION is assumed), the cuDNN backend (after math
# in the default order, so reached only when math is disabled or the priority order is
# changed; on sm90/sm10x with cuDNN > 9.15 newer torch puts it first:
# check_prefer_cudnn_attention), FlashAttention-3 dtypes (off by default), ROCm.

ASSUMED_COMPUTE_CAPABILITY = (8, 0)

# SDPBackend enum values (aten/src/ATen/SDPBackend.h)
_SDP_MATH, _SDP_FLASH, _SDP_EFFICIENT, _SDP_CUDNN, _SDP_OVERRIDEABLE = 0, 1, 2, 3, 4

@dataclass(frozen=True, eq=False)
class SdpaChoice:
    """The backend CUDA's select_sdp_backend picks, and why the fused kernels it skipped
    were rejected (one reason per kernel: its first failing check, as in sdp_utils.cpp).

    Compares equal to the backend name (``choice == "flash"``)."""

    backend: str
    """'flash', 'efficient' or 'math'."""
    reasons: tuple[str, ...] = ()
    """'flash: ...' / 'memory-efficient: ...' for each fused kernel tried and rejected."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.backend == other
        if isinstance(other, SdpaChoice):
            return (self.backend, self.reasons) == (other.backend, other.reasons)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.backend, self.reasons))

    def __str__(self) -> str:
        return self.backend

    @property
    def why(self) -> str:
        """The reasons in one phrase; a reason both kernels share is said once."""
        msgs: dict[str, list[str]] = {}
        for r in self.reasons:
            kernel, _, msg = r.partition(": ")
            msgs.setdefault(msg, []).append(kernel)
        parts = []
        for msg, kernels in msgs.items():
            parts.append(msg if len(kernels) > 1 else f"{kernels[0]}: {msg}")
        return "; ".join(parts)


def _input_requires_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    # sdp_utils_cpp.h input_requires_grad
    return (q.requires_grad or k.requires_grad or v.requires_grad) and torch.is_grad_enabled()


_SHORT_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64"}
# SDPBackend values -> the names planner.sdpa_rules orders by (cuDNN and overrideable: not emulated)
_BACKEND_NAMES = {_SDP_FLASH: "flash", _SDP_EFFICIENT: "efficient", _SDP_MATH: "math"}


def sdpa_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    enable_gqa: bool = False,
    compute_capability: tuple[int, int] = ASSUMED_COMPUTE_CAPABILITY,
) -> SdpaChoice:
    """The backend CUDA's ``select_sdp_backend`` (sdp_utils.cpp) picks for these inputs on
    a GPU of ``compute_capability`` (default sm80), honouring the runtime switches
    (``torch.backends.cuda.enable_flash_sdp`` ..., ``torch.nn.attention.sdpa_kernel``)
    and the priority order: the torch-free rules of planner/sdpa_rules.py (the estimator's
    too) on the shapes, dtypes, last-dimension strides and storage offsets of the tensors."""
    if not any(
        (torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
         torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled())
    ):
        raise RuntimeError("No available kernel. Aborting execution. (every SDPA backend is disabled)")
    order = list(torch._C._get_sdp_priority_order()) if hasattr(torch._C, "_get_sdp_priority_order") else [1, 2, 0, 3, 4]
    try:
        backend, reasons = sdpa_choice(
            tuple(q.shape), tuple(k.shape), tuple(v.shape),
            tuple(_SHORT_DTYPES.get(t.dtype, str(t.dtype).replace("torch.", "")) for t in (q, k, v)),
            requires_grad=_input_requires_grad(q, k, v),
            mask_stride=None if attn_mask is None else attn_mask.stride(-1),
            dropout_p=dropout_p, is_causal=is_causal, enable_gqa=enable_gqa,
            strides=(q.stride(-1), k.stride(-1), v.stride(-1)),
            offsets=(q.storage_offset(), k.storage_offset(), v.storage_offset()),
            cc=tuple(compute_capability),
            flash_enabled=torch.backends.cuda.flash_sdp_enabled(),
            efficient_enabled=torch.backends.cuda.mem_efficient_sdp_enabled(),
            math_enabled=torch.backends.cuda.math_sdp_enabled(),
            order=tuple(_BACKEND_NAMES[b] for b in order if b in _BACKEND_NAMES),
        )
    except NoKernel as exc:
        raise RuntimeError(
            "No available kernel. Aborting execution. (math disabled; fused kernels rejected: "
            + "; ".join(exc.reasons) + "; cuDNN attention is not emulated)"
        ) from None
    return SdpaChoice(backend, reasons)


def math_scores_bytes(q: torch.Tensor, k: torch.Tensor, enable_gqa: bool = False) -> int:
    """Bytes of the attention weights ``_scaled_dot_product_attention_math`` materialises:
    (batch dims broadcast) x L x S elements, in fp32 for fp16/bf16 inputs (attention.cpp
    upcasts q/k/v unless torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)),
    else in the input dtype."""
    batch = torch.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2])) if not enable_gqa else tuple(q.shape[:-2])
    n = 1
    for s in (*batch, q.shape[-2], k.shape[-2]):
        n *= int(s)
    low = q.dtype in (torch.float16, torch.bfloat16)
    upcast = low and not torch._C._get_math_sdp_allow_fp16_bf16_reduction()
    return n * (4 if upcast else q.element_size())


# Emulations in force (innermost last): where _sdpa_cuda files its notes.
_ACTIVE: list["CudaEmulation"] = []


def _current_module() -> str:
    """The module path the live-storage tracker attributes ops to right now, if any."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from planner.measure.tracker import LiveStorageTracker

    for mode in reversed(_get_current_dispatch_mode_stack()):
        if isinstance(mode, LiveStorageTracker) and mode.modules is not None:
            return mode.modules.current()[1]
    return ""


def _note_math_fallback(choice: SdpaChoice, q: torch.Tensor, k: torch.Tensor, enable_gqa: bool) -> None:
    """A fused kernel was rejected and the math kernel runs: tell the report."""
    if not choice.reasons:
        return
    module = _current_module()
    gib = math_scores_bytes(q, k, enable_gqa) / 2**30
    where = f"attention in {module}" if module else "attention (outside any tracked module)"
    note = f"{where} runs the math kernel ({choice.why}): its scores take {gib:.2f} GiB"
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from planner.measure.tracker import LiveStorageTracker

    for mode in _get_current_dispatch_mode_stack():
        if isinstance(mode, LiveStorageTracker):
            notes = getattr(mode, "notes", None)
            if notes is not None and note not in notes:
                notes.append(note)
    for emu in _ACTIVE:
        if note not in emu.notes:
            emu.notes.append(note)


def _validate_sdpa_input(q, k, v, attn_mask) -> None:
    # attention.cpp validate_sdpa_input
    if not (q.dtype == k.dtype == v.dtype):
        raise RuntimeError(
            f"Expected query, key, and value to have the same dtype, but got query.dtype: {q.dtype} "
            f"key.dtype: {k.dtype} and value.dtype: {v.dtype} instead."
        )
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise RuntimeError("Expected query, key, and value to all be  at least 2 dimensional")
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, torch.float32, q.dtype):
        raise RuntimeError("Expected attn_mask dtype to be bool or float or to match query dtype")


def _convert_boolean_attn_mask(attn_mask, dtype):
    # attention.cpp convert_boolean_attn_mask: bool -> additive mask in the query dtype. In
    # this torch (traced on the CPU path, which shares it): two scalar_tensors and one
    # where(mask, 0, -inf), no logical_not temporary.
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    zero = torch.scalar_tensor(0.0, dtype=dtype, device=attn_mask.device)
    neg_inf = torch.scalar_tensor(-float("inf"), dtype=dtype, device=attn_mask.device)
    return torch.where(attn_mask, zero, neg_inf)


def _pad_last_dim(t: torch.Tensor, alignment: int) -> torch.Tensor:
    # attention.cpp pad_last_dim<alignment, slice=false>
    rem = t.shape[-1] % alignment
    return t if rem == 0 else _constant_pad(t, (0, alignment - rem))


def _preprocess_mask(mask, q, k):
    # attention.cpp preprocess_mask: pad_bias<8> unless aligned_tensor<8>, then expand
    align = 8
    aligned = all(mask.stride(i) % align == 0 for i in range(mask.dim() - 1)) and mask.stride(-1) == 1
    if not aligned:
        size = mask.shape[-1]
        mask = _constant_pad(mask, (0, align - size % align))[..., :size]
    return mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def _constant_pad(t: torch.Tensor, pads: tuple[int, int]) -> torch.Tensor:
    # at::pad(constant) -> constant_pad_nd
    return aten.constant_pad_nd(t, list(pads), 0.0)


def _sdpa_cuda(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """attention.cpp scaled_dot_product_attention, as it runs on CUDA."""
    _validate_sdpa_input(query, key, value, attn_mask)
    choice = sdpa_backend(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    mask = _convert_boolean_attn_mask(attn_mask, query.dtype)
    if choice == "flash":
        og = query.shape[-1]
        og_scale = scale if scale is not None else 1.0 / math.sqrt(og)
        q, k, v = (_pad_last_dim(t, 8) for t in (query, key, value))
        out = aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=og_scale)[0]
        return out[..., :og] if out.shape[-1] != og else out  # post_process_flash_output
    if choice == "efficient":
        need_lse = _input_requires_grad(query, key, value)  # should_compute_logsumexp
        if mask is not None:
            mask = _preprocess_mask(mask, query, key)
        return aten._scaled_dot_product_efficient_attention(
            query, key, value, mask, need_lse, dropout_p, is_causal, scale=scale
        )[0]
    _note_math_fallback(choice, query, key, enable_gqa)
    return aten._scaled_dot_product_attention_math(
        query, key, value, mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa
    )[0]


def _linear_plain(input, weight, bias=None):
    # Linear.cpp at::linear, taking the branches a plain CUDA tensor takes. FakeTensor is
    # a tensor subclass, for which at::linear adds the bias out of place ("composite
    # compliance"); a real tensor adds it in place (output.add_(bias)).
    if input.dim() == 2 and bias is not None:
        return aten.addmm(bias, input, weight.t())
    fusable = bias is not None and (bias.dim() == 1 or bias.squeeze().dim() == 1) and bias.is_contiguous()
    if fusable and input.is_contiguous():  # _flatten_nd_linear
        sizes = input.shape
        out = aten.addmm(bias, input.view(-1, sizes[-1]), weight.t())
        return out.view(*sizes[:-1], out.shape[-1])
    output = aten.matmul(input, weight.t())
    if bias is not None:
        output.add_(bias)
    return output


def _group_norm_cuda(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    # group_norm.cpp: X = input.device().is_cpu() ? input.contiguous(suggest_memory_format())
    #                                             : input.contiguous();
    # off the CPU a channels-last input (e.g. the sum after an attention block) is copied.
    n, c = input.shape[0], input.shape[1]
    hxw = 1
    for s in input.shape[2:]:
        hxw *= s
    x = input.contiguous()
    gamma = weight.contiguous() if weight is not None else None
    beta = bias.contiguous() if bias is not None else None
    return aten.native_group_norm(x, gamma, beta, n, c, hxw, num_groups, eps)[0]


COMPOSITE_OVERRIDES: dict[str, Callable] = {
    "linear": _linear_plain,
    "group_norm": _group_norm_cuda,
    "softmax.int": _softmax_cuda,
    "log_softmax.int": _log_softmax_cuda,
    "dropout": _dropout_cuda,
    "max_pool2d": _max_pool2d_cuda,
}


def _batch_norm_helper_cuda(orig: Callable) -> Callable:
    """FakeTensor runs torch._decomp's native_batch_norm, whose helper casts the saved
    mean and inverse std to the input dtype when the device is the CPU; CUDA's kernels
    (Normalization.cu, cuDNN) keep them in fp32 for fp16/bf16 input."""

    def helper(input, *args, **kwargs):
        out = orig(input, *args, **kwargs)
        if input.dtype in (torch.float16, torch.bfloat16):
            output, save_mean, save_rstd, *rest = out
            return (output, save_mean.to(torch.float32), save_rstd.to(torch.float32), *rest)
        return out

    return helper


def _is_cl(t: torch.Tensor, fmt: torch.memory_format) -> bool:
    return t.is_contiguous(memory_format=fmt) and not t.is_contiguous()


def _cudnn_memory_format(input: torch.Tensor, weight: torch.Tensor, backend: Any = None) -> torch.memory_format:
    """ConvUtils.h ``cudnn_conv_suggest_memory_format`` (cuDNN >= 8.0.5): a conv's output
    (and its gradients) are channels-last when the input or the weight is, else
    contiguous; never for float64. FakeTensor asks the CPU backend instead, which keeps
    fp32 3-D convs contiguous (slow_conv3d) and only fp16/bf16 ones channels-last."""
    if input.dtype == torch.float64 or weight.dtype == torch.float64:
        return torch.contiguous_format
    if weight.dim() == 5 and (_is_cl(input, torch.channels_last_3d) or _is_cl(weight, torch.channels_last_3d)):
        return torch.channels_last_3d
    if weight.dim() == 4 and (_is_cl(input, torch.channels_last) or _is_cl(weight, torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def _clear_fake_dispatch_cache() -> None:
    """Forget FakeTensorMode's op cache (a class-level dict shared by every fake mode in
    the process). Its entries hold output metadata, strides included, but its key does not
    include the conv layout hook above, so a fake conv cached under one layout rule would
    be replayed under the other (a fake run with ``cudnn_layout=False`` after a default
    one, or the reverse, got the other run's layouts and peak)."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:  # pragma: no cover
        return
    clear = getattr(FakeTensorMode, "cache_clear", None)
    if clear is not None:
        clear()


class CudaEmulation(contextlib.AbstractContextManager):
    """Install the CUDA autocast policy and CUDA composite branches; undo on exit.

    ``sdpa``: also route scaled_dot_product_attention to the backend CUDA would pick
    (flash / memory-efficient kernels exist here only as fake-tensor meta kernels,
    so leave it off when running on real CPU tensors). ``cudnn_layout``: give fake
    convolutions cuDNN's output layout (real CPU kernels cannot follow it, so the
    fake-versus-real check turns it off on both sides).
    """

    def __init__(self, sdpa: bool = True, cudnn_layout: bool = True) -> None:
        self.sdpa = sdpa
        self.cudnn_layout = cudnn_layout
        self.cache = _CastCache()
        self._lib: torch.library.Library | None = None
        self._orig_clear: Callable | None = None
        self.notes: list[str] = []
        """What the emulation decided that the report must say (SDPA math fallbacks)."""

    def __enter__(self) -> "CudaEmulation":
        lib = torch.library.Library("aten", "IMPL")
        table = cuda_policy_table()
        names = (_registered("AutocastCPU") | _registered("AutocastCUDA") | set(table)) - set(
            FP32_APPEND_DTYPE.values()
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            for name in sorted(names):
                op = _resolve(name)
                if op is None:
                    continue  # an overload this build does not have (Dimname variants)
                lib.impl(name, _make_autocast_kernel(op, table.get(name, "passthrough"), self.cache), "AutocastCPU")
            overrides = dict(COMPOSITE_OVERRIDES)
            if self.sdpa:
                overrides["scaled_dot_product_attention"] = _sdpa_cuda
            for name, fn in overrides.items():
                lib.impl(name, fn, "CompositeImplicitAutograd")
        self._lib = lib
        # autocast.__exit__ calls torch.clear_autocast_cache() when the outermost region
        # ends (torch/amp/autocast_mode.py); clear the emulated cache at the same moment.
        self._orig_clear = torch.clear_autocast_cache

        def clear() -> None:
            self.cache.clear()
            self._orig_clear()

        torch.clear_autocast_cache = clear
        # FakeTensor's convolution picks its output layout through this hook
        # (torch/_subclasses/fake_impls.py); give it cuDNN's rule.
        self._orig_fmt = torch._C._conv_determine_backend_memory_format
        from torch._decomp import decompositions as _dec

        self._orig_bn = _dec.native_batch_norm_helper
        if self.cudnn_layout:
            torch._C._conv_determine_backend_memory_format = _cudnn_memory_format
            _dec.native_batch_norm_helper = _batch_norm_helper_cuda(self._orig_bn)
        _clear_fake_dispatch_cache()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        torch.clear_autocast_cache = self._orig_clear
        torch._C._conv_determine_backend_memory_format = self._orig_fmt
        from torch._decomp import decompositions as _dec

        _dec.native_batch_norm_helper = self._orig_bn
        _clear_fake_dispatch_cache()
        self.cache.clear()
        if self._lib is not None:
            self._lib._destroy()
            self._lib = None
