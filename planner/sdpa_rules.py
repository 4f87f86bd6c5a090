"""CUDA's choice of kernel for F.scaled_dot_product_attention, torch-free: one rule set for
the estimator (planner/analytic/ops.py) and the profiler's CUDA emulation
(planner/measure/cuda_emulation.py, which reads shapes, strides and offsets off the fake
tensors and calls :func:`sdpa_choice`).

A port of, for the torch this project pins (2.13):
* aten/src/ATen/native/transformers/cuda/sdp_utils.cpp: select_sdp_backend,
  can_use_flash_attention, can_use_mem_efficient_attention, check_head_dim_size_flash,
  check_head_dim_size_mem_efficient, minimum_gemm_alignment,
  check_data_ptr_alignment_mem_efficient, check_flash_attention_hardware_support,
  check_mem_efficient_hardware_support,
  check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120,
  check_flash_causal_non_square_seqlens, check_dtypes_flash_attention /
  check_dtypes_low_precision;
* aten/src/ATen/native/transformers/sdp_utils_cpp.h (the wheel ships it under
  torch/include): check_tensor_shapes, check_for_attn_mask, check_tensor_dtype,
  check_batch_size_and_num_heads_dense<supports_gqa, requires_same_num_heads=true>,
  check_grouped_query_attention, check_nonzero_sequence_lengths_dense,
  check_last_dim_stride_equals_1_dense<ignore_singleton_dim>,
  check_runtime_disabled_flash / _mem_efficient, input_requires_grad;
* aten/src/ATen/Context.h: the default priority order flash, efficient, math, cudnn.
Each kernel's rejection is its first failing check, in the source's order. Assumed GPU:
compute capability 8.0 (A100 class) unless ``cc`` says otherwise; the cuDNN backend is
not emulated (after math in the default order).
"""

from __future__ import annotations

from math import prod

SDPA_COMPUTE_CAPABILITY = (8, 0)
DEFAULT_ORDER = ("flash", "efficient", "math")
_SDPA_DTYPE_NAMES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64"}


class NoKernel(RuntimeError):
    """Every enabled backend rejected the inputs (torch: "No available kernel")."""

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("No available kernel. Aborting execution. (" + "; ".join(reasons) + ")")
        self.reasons = reasons

def _sdpa_shapes_4d(qs: tuple, ks: tuple, vs: tuple) -> str | None:
    if not (len(qs) == len(ks) == len(vs) == 4):  # check_tensor_shapes
        return f"q/k/v must be 4-D, got {len(qs)}-D/{len(ks)}-D/{len(vs)}-D"
    return None


def _sdpa_batch_heads(qs: tuple, ks: tuple, vs: tuple, enable_gqa: bool) -> str | None:
    # check_batch_size_and_num_heads_dense<supports_gqa=true>, check_grouped_query_attention
    if not (qs[0] == ks[0] == vs[0]):
        return f"q/k/v batch sizes differ ({qs[0]}/{ks[0]}/{vs[0]})"
    qh, kh, vh = qs[-3], ks[-3], vs[-3]
    if enable_gqa:
        if kh != vh:
            return f"key and value have different numbers of heads ({kh}/{vh})"
        if kh == 0 or qh % kh != 0:
            return f"key/value heads ({kh}) do not divide query heads ({qh})"
        return None
    if not (qh == kh == vh):
        return f"q/k/v numbers of heads differ ({qh}/{kh}/{vh})"
    return None


def _sdpa_nonzero_lengths(qs: tuple, ks: tuple) -> str | None:
    if qs[-2] == 0 or ks[-2] == 0:  # check_nonzero_sequence_lengths_dense
        return f"zero sequence length (query {qs[-2]}, key {ks[-2]})"
    return None


def _sdpa_last_dim_strides(qs: tuple, strides: tuple, mask_stride: int | None, ignore_singleton: bool) -> str | None:
    # check_last_dim_stride_equals_1_dense<ignore_singleton_dim>; the mask counts on a GPU
    if not (ignore_singleton and qs[-1] == 1):
        for name, st in zip(("q", "k", "v"), strides):
            if st != 1:
                return f"last dimension of {name} not contiguous: stride {st}"
    if mask_stride is not None and mask_stride != 1:
        return f"last dimension of attn_mask not contiguous: stride {mask_stride}"
    return None


def _sdpa_dtype(dtypes: tuple, allowed: tuple) -> str | None:
    if dtypes[0] == dtypes[1] == dtypes[2] and dtypes[0] in allowed:  # check_tensor_dtype
        return None
    names = "/".join(_SDPA_DTYPE_NAMES.get(d, d) for d in allowed)
    got = "/".join(_SDPA_DTYPE_NAMES.get(d, d) for d in dtypes)
    return f"dtype {got} (needs {names})"


def flash_rejection(
    qs: tuple, ks: tuple, vs: tuple, dtypes: tuple, *, requires_grad: bool, mask_stride: int | None,
    dropout_p: float, is_causal: bool, enable_gqa: bool, strides: tuple, cc: tuple, enabled: bool = True,
) -> str | None:
    """sdp_utils.cpp can_use_flash_attention: the first failing check, or None."""
    d_q, d_k, d_v = qs[-1], ks[-1], vs[-1]
    r = None
    if not enabled:  # check_runtime_disabled_flash
        r = "disabled (torch.backends.cuda.enable_flash_sdp(False) or sdpa_kernel)"
    r = r or _sdpa_shapes_4d(qs, ks, vs)
    if r is None and mask_stride is not None:  # check_for_attn_mask
        r = "an attn_mask is given"
    if r is None and not (d_q == d_k == d_v and d_q <= 256):  # check_head_dim_size_flash (CUDA: max 256)
        r = f"head dims {d_q}/{d_k}/{d_v} (needs equal and <= 256)"
    if r is None and not ((8, 0) <= cc <= (12, 1)):  # check_flash_attention_hardware_support
        r = f"needs sm80..sm121, GPU is sm{cc[0]}{cc[1]}"
    # check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120
    if r is None and requires_grad and ((8, 6) <= cc <= (8, 9) or (12, 0) <= cc <= (12, 1)):
        if not (d_q <= 192 or (dropout_p <= 0.0 and d_q > 224)):
            r = f"training with head dim {d_q} on sm{cc[0]}{cc[1]} (needs <= 192, or > 224 without dropout)"
    if r is None and is_causal and qs[-2] != ks[-2]:  # check_flash_causal_non_square_seqlens
        r = f"is_causal with query length {qs[-2]} != key length {ks[-2]}"
    # check_dtypes_flash_attention -> check_dtypes_low_precision (sm >= 8: half, bfloat16)
    r = r or _sdpa_dtype(dtypes, ("f16", "bf16") if cc[0] >= 8 else ("f16",))
    return (
        r or _sdpa_batch_heads(qs, ks, vs, enable_gqa) or _sdpa_nonzero_lengths(qs, ks)
        or _sdpa_last_dim_strides(qs, strides, mask_stride, True)
    )


def efficient_rejection(
    qs: tuple, ks: tuple, vs: tuple, dtypes: tuple, *, mask_stride: int | None, enable_gqa: bool,
    strides: tuple, offsets: tuple, cc: tuple, enabled: bool = True,
) -> str | None:
    """sdp_utils.cpp can_use_mem_efficient_attention: the first failing check, or None."""
    d_q, d_k, d_v = qs[-1], ks[-1], vs[-1]
    r = None
    if not enabled:  # check_runtime_disabled_mem_efficient
        r = "disabled (torch.backends.cuda.enable_mem_efficient_sdp(False) or sdpa_kernel)"
    if r is None and not ((5, 0) <= cc <= (12, 1)):  # check_mem_efficient_hardware_support
        r = f"needs sm50..sm121, GPU is sm{cc[0]}{cc[1]}"
    r = r or _sdpa_shapes_4d(qs, ks, vs)
    if r is None:
        # check_head_dim_size_mem_efficient: q/k head dims equal, q and v head dims
        # multiples of minimum_gemm_alignment (sm80+: 8 for half/bfloat16, 4 for float), > 0
        half = dtypes[0] in ("f16", "bf16")
        align = 4 if cc[0] >= 8 else 1
        if cc[0] >= 8 or (cc[0] >= 7 and half):  # use_tensor_cores
            align = max(align, 128 // (16 if half else 32))
        if not (d_q == d_k and d_q % align == 0 and d_q > 0 and d_v % align == 0 and d_v > 0):
            r = f"head dims {d_q}/{d_k}/{d_v} (needs q == k and multiples of {align})"
        elif cc[0] >= 8:  # check_data_ptr_alignment_mem_efficient: storage offsets aligned
            for name, shape, off in zip(("q", "k", "v"), (qs, ks, vs), offsets):
                if prod(shape) != 0 and off % align != 0:
                    r = f"{name} storage offset {off} not a multiple of {align} elements"
                    break
    return (
        r or _sdpa_nonzero_lengths(qs, ks) or _sdpa_last_dim_strides(qs, strides, mask_stride, False)
        # check_batch_size_and_num_heads_dense<false /*supports_grouped_query_attention=*/>:
        # enable_gqa does not apply, so grouped k/v heads are rejected (torch runs math)
        or _sdpa_batch_heads(qs, ks, vs, False)
        or _sdpa_dtype(dtypes, ("f16", "f32", "bf16") if cc[0] >= 8 else ("f16", "f32"))
    )


def sdpa_choice(
    qs: tuple, ks: tuple, vs: tuple, dtypes: tuple, *,
    requires_grad: bool = False, mask_stride: int | None = None, dropout_p: float = 0.0,
    is_causal: bool = False, enable_gqa: bool = False, strides: tuple = (1, 1, 1),
    offsets: tuple = (0, 0, 0), cc: tuple = SDPA_COMPUTE_CAPABILITY,
    flash_enabled: bool = True, efficient_enabled: bool = True, math_enabled: bool = True,
    order: tuple = DEFAULT_ORDER,
) -> tuple[str, tuple[str, ...]]:
    """(backend, reasons a fused kernel was rejected): select_sdp_backend for q/k/v of shapes
    ``qs``/``ks``/``vs`` and dtypes ``dtypes`` ('f16', ...). ``mask_stride``: the attn_mask's
    last stride, None without a mask; ``strides``/``offsets``: q/k/v last-dimension strides
    and storage offsets; ``requires_grad``: input_requires_grad (an input needs grad, grad
    mode on); ``order``: the backends in priority order. Raises :class:`NoKernel`."""
    cc = tuple(cc)
    reasons: list[str] = []
    for backend in order:
        if backend == "flash":
            r = flash_rejection(qs, ks, vs, dtypes, requires_grad=requires_grad, mask_stride=mask_stride,
                                dropout_p=dropout_p, is_causal=is_causal, enable_gqa=enable_gqa,
                                strides=strides, cc=cc, enabled=flash_enabled)
            if r is None:
                return "flash", tuple(reasons)
            reasons.append(f"flash: {r}")
        elif backend == "efficient":
            r = efficient_rejection(qs, ks, vs, dtypes, mask_stride=mask_stride, enable_gqa=enable_gqa,
                                    strides=strides, offsets=offsets, cc=cc, enabled=efficient_enabled)
            if r is None:
                return "efficient", tuple(reasons)
            reasons.append(f"memory-efficient: {r}")
        elif backend == "math" and math_enabled:
            return "math", tuple(reasons)
    raise NoKernel(tuple(reasons))
