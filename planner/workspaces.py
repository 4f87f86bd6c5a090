"""What the tracker cannot see: library workspaces and the CUDA context. Torch-free.

The fake-tensor tracer and the analytic estimator count tensors the model makes. A
real training step on a GPU also holds memory that no model tensor owns:

* **cuBLAS workspaces** — one per (cuBLAS handle, CUDA stream); handles are per
  thread, and a training step issues GEMMs from two threads (the Python thread runs
  forward, autograd's device thread runs backward).
* **cuDNN convolution workspaces** — scratch for the engine cuDNN runs, asked for per
  call, alive for the call.
* **Scratch of flash / memory-efficient attention backward** — fp32 accumulators the
  kernels allocate per call, alive for the call.
* **The CUDA context** — driver state and (lazily loaded) kernel images; nvidia-smi
  shows it, ``torch.cuda.memory_reserved()`` does not.

Each becomes a :class:`Term`: bytes, a one-line source, and ``calibrated=False`` until
a GPU profile has measured it. Every figure here is derived from the libraries'
sources (file and function named at each constant) or from a public reading (URL);
none was measured by this project.

Sources read (stored copies of public repositories; commit named where the index gave it):

* ``aten/src/ATen/cuda/CublasHandlePool.cpp`` — pytorch/pytorch@26a39059 (older:
  32 MiB default for sm90 only), and the 2026 main branch as mirrored in
  cyyever/pytorch@0cecc5c1 and eellison/pytorch@a9ddf715 (32 MiB for compute
  capability majors 9, 10, 11, 12). The torch this project pins (2.13, git cf30153c)
  ships headers matching the latter's persistent (handle, stream) workspace map
  (``CUDAContextLight.h``: ``WorkspaceMapWithMutex`` of ``pair<DataPtr, size_t>``,
  ``setChosenWorkspaceSize``) and documents cuBLASLt workspace unification as the
  default (``torch/backends/cuda/__init__.py``, ``blas_workspace_size``).
* ``aten/src/ATen/native/cudnn/Conv_v8.cpp`` — cyyever/pytorch@0d188885.
* ``aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp`` (PyTorch's
  vendored FlashAttention-2) — pytorch/pytorch@03b7c19d, ``mha_bwd``.
* ``aten/src/ATen/native/transformers/cuda/mem_eff_attention/kernel_backward.h`` —
  pytorch/pytorch@00f993df, ``AttentionBackwardKernel::Params::workspace_size``; the
  split-key heuristic of ``attention_backward.cu`` ``_efficient_attention_backward``;
  kernel block sizes from ``kernels/cutlassB.h`` (sm70 list: pytorch/pytorch@0c762b3a;
  sm80 list: a stored copy the index did not name by repository).

Not modelled (reported here so nobody reads them as zero): FlashAttention's deterministic
backward (``dq_accum`` gets a leading ``nsplits`` = ceil(SM count / (batch*heads)) axis) and
its GQA/MQA ``dk_expanded``/``dv_expanded``; the memory-efficient backward's ``delta``
(``Params::delta_ptr``, [batch, heads, seq_q] fp32, allocated by the caller, whose code
was not read); cuDNN attention (``backend="cudnn"`` gives a zero term
that says so); ``CUBLASLT_WORKSPACE_SIZE``; per-handle cuDNN/cuBLAS library state (inside
the context's growth); NCCL buffers.

Where each term lands (for callers): the cuBLAS, cuDNN and attention workspaces are
allocated *through PyTorch's caching allocator*, so a CUDA profile already sees them in
``max_memory_allocated`` / ``max_memory_reserved``; only the fake-tensor tracer and the
analytic estimate miss them. The CUDA context is outside the allocator in both.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

from planner.records import dataclass
from planner.errors import PlannerError, quote
from planner.result import DEFAULT_CONTEXT_BYTES

KIB = 1024
MIB = 1024 * 1024

# --- cuBLAS ------------------------------------------------------------------------

CUBLAS_DEFAULT_BYTES = 4096 * KIB * 2 + 16 * KIB * 8
"""8,519,680 B: ``":4096:2:16:8"``, PyTorch's default cuBLAS workspace before Hopper
(CublasHandlePool.cpp ``parseChosenWorkspaceSize``: ``4096 * 1024 * 2 + 16 * 1024 * 8``).
A public reading agrees: ``torch.cuda.memory_allocated()`` is 8519680 after one
``nn.Linear`` on an A10G (pytorch/pytorch issue #95668)."""

CUBLAS_DEFAULT_BYTES_SM90_PLUS = 4096 * KIB * 8
"""33,554,432 B = 32 MiB: the default for compute capability majors 9, 10, 11, 12
(CublasHandlePool.cpp ``parseChosenWorkspaceSize``: "32MiB for Hopper and Blackwell",
``use32mb = major == 9 || major == 10 || major == 11 || major == 12``; older releases,
e.g. pytorch/pytorch@26a39059, used it for sm90 only)."""

CUBLAS_32MIB_MAJORS = (9, 10, 11, 12)

CUBLASLT_DEFAULT_BYTES = 1024 * KIB
"""1 MiB: ``parseCUDABlasLtWorkspaceSize`` default "in KiB according to #73328" (1024).
With ``TORCH_CUBLASLT_UNIFIED_WORKSPACE`` unset (the default outside fbcode) cuBLASLt
reuses the cuBLAS workspace of the same (handle, stream) and adds nothing
(``getCUDABlasLtWorkspaceSize`` caps it at ``getChosenWorkspaceSize``)."""

CUBLAS_SOURCE = ("aten/src/ATen/cuda/CublasHandlePool.cpp parseChosenWorkspaceSize / "
                 "setWorkspaceForHandle (one workspace per (handle, stream), from the caching allocator)")

CUBLAS_THREADS_DEFAULT = 2
"""Threads issuing cuBLAS calls to one device in a training step: the Python thread
(forward, optimizer) and autograd's device worker thread (backward). cuBLAS handles are
unique per thread (``DeviceThreadHandlePool``; pytorch/pytorch pull request #180283:
"cuBLAS handles are unique per thread"), and the workspace map is keyed by
(handle, stream), so the two threads hold two workspaces on one stream."""

_CUBLAS_CONFIG_RE = re.compile(r"(?::[0-9]+:[0-9]+)+")
_CUBLAS_PAIR_RE = re.compile(r":([0-9]+):([0-9]+)")


def parse_cublas_workspace_config(value: str) -> int:
    """``CUBLAS_WORKSPACE_CONFIG`` (``":SIZE_KIB:COUNT"`` repeated) -> bytes per workspace.

    As ``parseChosenWorkspaceSize``: each ``:SIZE:COUNT`` pair adds ``SIZE * 1024 * COUNT``
    bytes, so ``":4096:8"`` is 32 MiB and ``":16:8"`` 128 KiB. PyTorch searches the string
    with the regex ``:([0-9]+):([0-9]+)`` and, when nothing matches, warns and falls back
    to its default; the planner is stricter and rejects anything that is not a sequence
    of ``:SIZE:COUNT`` pairs, so a typo is reported instead of silently planned around.
    """
    if not isinstance(value, str):
        raise PlannerError(f"CUBLAS_WORKSPACE_CONFIG must be a string like ':4096:8', got {quote(value)}")
    text = value.strip()
    if not _CUBLAS_CONFIG_RE.fullmatch(text):
        raise PlannerError(
            f"CUBLAS_WORKSPACE_CONFIG {quote(value)} is not ':SIZE_KIB:COUNT' pairs "
            "(valid: ':4096:8', ':16:8', ':4096:2:16:8')")
    return sum(int(size) * KIB * int(count) for size, count in _CUBLAS_PAIR_RE.findall(text))


def cublas_workspace_bytes(compute_capability: Optional[tuple[int, int]],
                           cublas_workspace_config: Optional[str] = None) -> int:
    """Bytes of one cuBLAS workspace (``getChosenWorkspaceSize``) on a device generation.

    An unknown generation (``None``) gets the larger, 32 MiB default: the planner errs
    toward not fitting rather than toward an out-of-memory error.
    """
    if cublas_workspace_config is not None:
        return parse_cublas_workspace_config(cublas_workspace_config)
    if compute_capability is None or compute_capability[0] in CUBLAS_32MIB_MAJORS:
        return CUBLAS_DEFAULT_BYTES_SM90_PLUS
    return CUBLAS_DEFAULT_BYTES


# --- cuDNN convolution ----------------------------------------------------------------

CONV_WORKSPACE_FACTOR = 1.0
"""Assumed cuDNN workspace of the largest convolution, as a multiple of its input+output
bytes, without ``cudnn.benchmark``. An assumption, not a derivation: PyTorch puts no
bound on it (``Conv_v8.cpp`` ``run_single_conv`` runs the heuristic's top engine and
allocates ``plan.getWorkspaceSize()`` through the caching allocator in
``run_conv_plan``; only on out-of-memory does ``try_configs`` move to the next engine).
The one public reading found is close to 1x: an fp32 Conv3d(256->64, k=3) on an 80 GB
A100 with a 7.99 GiB input and 1.0 GiB output peaked at "only 17G" (pytorch/pytorch issue
#128947), i.e. about 8 GiB of workspace; the same issue shows a one-slice-deeper input
asking for 161 GiB, so the factor can be far larger for some shapes."""

CONV_WORKSPACE_FACTOR_BENCHMARK = 2.0
"""Assumed factor with ``cudnn.benchmark=True``: a placeholder for calibration, with no
public reading behind it. Benchmarking (``get_plans_from_find``) times every engine whose
workspace fits the largest free cached block (``get_available_workspace`` ->
``CUDACachingAllocator::cacheInfo``) and keeps the fastest, which may need more workspace
than the heuristic's choice."""

CONV_SOURCE = ("aten/src/ATen/native/cudnn/Conv_v8.cpp run_single_conv / run_conv_plan "
               "(plan.getWorkspaceSize() from the caching allocator, per call)")


# --- attention backward -----------------------------------------------------------------

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_DTYPE_ALIASES = {"f16": "float16", "fp16": "float16", "half": "float16", "torch.float16": "float16",
                  "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
                  "f32": "float32", "fp32": "float32", "float": "float32", "torch.float32": "float32"}
_BACKENDS = ("flash", "efficient", "math", "cudnn")

FLASH_SOURCE = ("aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp mha_bwd "
                "(dq_accum, softmax_d; Dao-AILab/flash-attention csrc/flash_attn/flash_api.cpp)")
EFFICIENT_SOURCE = ("aten/src/ATen/native/transformers/cuda/mem_eff_attention/kernel_backward.h "
                    "Params::workspace_size; attention_backward.cu num_splits_key heuristic")


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _ceil_div(x: int, m: int) -> int:
    return (x + m - 1) // m


def flash_backward_scratch_bytes(batch: int, heads: int, seq_q: int, head_dim: int) -> int:
    """Bytes ``mha_bwd`` allocates besides dq/dk/dv (non-deterministic path).

    From ``flash_api.cpp`` ``mha_bwd``::

        head_size_rounded = round_multiple(head_size, head_size <= 128 ? 32 : 64)
        seqlen_q_rounded  = round_multiple(seqlen_q, 128)
        softmax_d = empty({batch, num_heads, seqlen_q_rounded}, float)
        dq_accum  = empty({batch, seqlen_q_rounded, num_heads, head_size_rounded}, float)

    ``head_size`` is the head dim padded to a multiple of 8 (SDPA pads it before the call).
    """
    head_size = _round_up(head_dim, 8)
    head_size_rounded = _round_up(head_size, 32 if head_size <= 128 else 64)
    seq_q_rounded = _round_up(seq_q, 128)
    dq_accum = batch * seq_q_rounded * heads * head_size_rounded * 4
    softmax_d = batch * heads * seq_q_rounded * 4
    return dq_accum + softmax_d


def efficient_backward_kernel(head_dim: int, dtype: str,
                              compute_capability: Optional[tuple[int, int]] = None) -> tuple[int, int, int]:
    """(kBlockSizeI, kBlockSizeJ, kMaxK) of the backward kernel assumed to run.

    ``kernels/cutlassB.h`` lists the kernels per dtype and arch in the order the dispatcher
    tries them; the first whose ``kMaxK`` covers the head dim and whose shared memory fits
    runs. Half precision, sm80 list (used from sm80 up): 64x64 k32, 64x64 k64, [sm86/sm89
    only: 128x64 k96], 128x128 k128, 64x64 k128, 128x64 k65536, 64x64 k65536; the sm70/sm75
    lists have 128x64 k128 where sm80 has 128x128. Assumed here: the first listed kernel
    fits, except that the 128x128 k128 kernel is taken not to fit the 99 KiB per SM of
    sm86/sm89 (unverified), so 97..128 there runs 64x64 k128. fp32 is taken as 64x64 for
    every head dim (its lists were not read).
    """
    cc = tuple(compute_capability) if compute_capability is not None else None
    if dtype == "float32":
        k_max = 32 if head_dim <= 32 else 64 if head_dim <= 64 else 128 if head_dim <= 128 else 65536
        return 64, 64, k_max
    if head_dim <= 32:
        return 64, 64, 32
    if head_dim <= 64:
        return 64, 64, 64
    if head_dim <= 128:
        if cc is not None and cc[0] == 7:
            return 128, 64, 128
        if cc in ((8, 6), (8, 9)):
            return (128, 64, 96) if head_dim <= 96 else (64, 64, 128)
        return 128, 128, 128
    return 128, 64, 65536


def efficient_backward_scratch_bytes(batch: int, heads: int, seq_q: int, seq_k: int, head_dim: int,
                                     dtype: str, compute_capability: Optional[tuple[int, int]]) -> int:
    """``Params::workspace_size()`` of the memory-efficient backward kernel, in bytes.

    From ``kernel_backward.h`` (output_accum_t = float, workspace in floats)::

        kOutputInRF      = kIsHalf && kMaxK <= kBlockSizeI
        kEnableSplitKeys = kMinComputeCapability >= 70
        kNeedsAccumGradQ = kEnableSplitKeys || output_accum_t != output_t
        kNeedsAccumGradK = kNeedsAccumGradV = !kOutputInRF && output_accum_t != output_t
        gk = num_splits_key * kBlockSizeJ * align_up(head_dim, kBlockSizeI)     (same for gv)
        gq = ceil(num_queries / kBlockSizeI) * ceil(head_dim / kBlockSizeJ)
             * sizeof(GradQTempStorage) / 4
        GradQTempStorage = {int32 lock, counter, pad[2]; float buffer[kBlockSizeI * kBlockSizeJ]}
        workspace_size = batch * heads * align_up(gk + gv + gq, 4) * 4

    (``buffer`` holds ``AccumTileGmem::kElementsStored`` = threads x 32 accumulators per
    thread = kBlockSizeI * kBlockSizeJ.) ``num_splits_key`` from
    ``_efficient_attention_backward``: ``ceil(num_keys / kBlockSizeJ)``, 1 when
    batch*heads >= 256 and num_keys <= 2 * kBlockSizeJ, capped at ``200 / (batch*heads)``
    when dK/dV accumulators are needed, and 1 when below 1 or split keys are disabled.
    """
    block_i, block_j, k_max = efficient_backward_kernel(head_dim, dtype, compute_capability)
    is_half = dtype in ("float16", "bfloat16")
    split_keys = compute_capability is None or compute_capability[0] >= 7
    output_in_rf = is_half and k_max <= block_i
    needs_gq = split_keys or is_half
    needs_gkv = (not output_in_rf) and is_half

    bh = batch * heads
    splits = _ceil_div(seq_k, block_j)
    if bh >= 256 and seq_k <= 2 * block_j:
        splits = 1
    if needs_gkv:
        splits = min(splits, 200 // bh)
    if not split_keys or splits < 1:
        splits = 1

    gk = splits * block_j * _round_up(head_dim, block_i) if needs_gkv else 0
    gv = gk
    gq_storage_floats = (16 + 4 * block_i * block_j) // 4
    gq = _ceil_div(seq_q, block_i) * _ceil_div(head_dim, block_j) * gq_storage_floats if needs_gq else 0
    return bh * _round_up(gk + gv + gq, 4) * 4


# --- CUDA context ----------------------------------------------------------------------

@dataclass(frozen=True)
class ContextReading:
    """One public reading of the CUDA context's size (nvidia-smi, bare context)."""

    bytes: int
    gpu: str
    compute_capability: tuple[int, int]
    software: str
    source: str


CONTEXT_READINGS: tuple[ContextReading, ...] = (
    ContextReading(
        256 * MIB, "RTX 3090", (8, 6), "torch 2.7.1+cu128, driver 610.43, lazy loading",
        "https://github.com/invoke-ai/InvokeAI/issues/9413 (nvidia-smi: a flat 256 MiB held from startup)"),
    ContextReading(
        426 * MIB, "RTX 6000 Ada", (8, 9), "torch 2.10.0+cu130, lazy loading",
        "https://github.com/unslothai/unsloth-zoo/pull/1053 (nvidia-smi after torch.cuda.mem_get_info(0))"),
)
"""Bare-context readings by card. Searched for and not found: sm70, sm75, sm80, sm90
readings with lazy loading; those generations fall back to ``DEFAULT_CONTEXT_BYTES``.
Whether the 256 vs 426 MiB gap is the generation or the CUDA version (12.8 vs 13.0) the
readings cannot tell."""

_CONTEXT_BY_GPU_KEY = {"rtx3090": CONTEXT_READINGS[0], "rtx6000ada": CONTEXT_READINGS[1]}

EAGER_LOADING_EXTRA_BYTES = 666_632_192 - 287_047_680
"""379,584,512 B: what ``CUDA_MODULE_LOADING=EAGER`` (every kernel image loaded at context
creation) added over ``LAZY`` in the one public A/B reading, ``total - free`` after one
tensor: 666,632,192 B vs 287,047,680 B (pytorch/pytorch pull request #86509, torch 1.13,
GPU not named). LAZY is the default since CUDA 11.7 / torch 1.13 (that pull request sets
it when unset)."""

CONTEXT_LAZY_NOTE = ("bare context; with lazy loading it grows as kernels are first used "
                     "(cuBLAS/cuDNN/attention modules load during the first step)")


def context_term(compute_capability: Optional[tuple[int, int]], gpu_key: Optional[str],
                 module_loading: str = "LAZY") -> "Term":
    """The CUDA context: a public reading for this card, else for this generation, else
    ``planner.result.DEFAULT_CONTEXT_BYTES``."""
    loading = (module_loading or "LAZY").strip().upper()
    if loading not in ("LAZY", "EAGER"):
        raise PlannerError(f"CUDA_MODULE_LOADING {quote(module_loading)} is not LAZY or EAGER")
    reading = _CONTEXT_BY_GPU_KEY.get((gpu_key or "").strip().lower())
    matched = f"reading on this card ({reading.gpu})" if reading else ""
    if reading is None and compute_capability is not None:
        for r in CONTEXT_READINGS:
            if r.compute_capability == tuple(compute_capability):
                reading = r
                matched = f"reading on the same generation (sm{r.compute_capability[0]}{r.compute_capability[1]}: {r.gpu})"
                break
    if reading is not None:
        n, source = reading.bytes, f"{reading.source}; {reading.software}"
        note = f"{matched}; {CONTEXT_LAZY_NOTE}"
    else:
        gen = "unknown generation" if compute_capability is None else \
            f"sm{compute_capability[0]}{compute_capability[1]}"
        n = DEFAULT_CONTEXT_BYTES
        source = ("planner/result.py DEFAULT_CONTEXT_BYTES: 426 MiB, RTX 6000 Ada, torch 2.10+cu130 "
                  "(https://github.com/unslothai/unsloth-zoo/pull/1053)")
        note = f"no public reading found for {gen}; fallback; {CONTEXT_LAZY_NOTE}"
    if loading == "EAGER":
        n += EAGER_LOADING_EXTRA_BYTES
        source += "; + EAGER loading: https://github.com/pytorch/pytorch/pull/86509"
        note += "; CUDA_MODULE_LOADING=EAGER adds the A/B difference of pull request #86509"
    return Term("CUDA context", n, source, note=note)


# --- terms -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One labelled piece of device memory that no model tensor owns."""

    name: str
    bytes: int
    source: str
    """One line: file and function, or URL."""
    calibrated: bool = False
    """True only once a GPU profile has measured this term."""
    note: str = ""
    """Assumptions and how the figure was composed."""

    def __post_init__(self) -> None:
        if not isinstance(self.bytes, int) or isinstance(self.bytes, bool) or self.bytes < 0:
            raise PlannerError(f"Term {quote(self.name)}: bytes must be a non-negative integer, got {quote(self.bytes)}")


def _positive_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PlannerError(f"{what} must be a positive integer, got {quote(value)}")
    return value


def _dtype_name(value: object, where: str) -> str:
    name = str(value).strip().lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in _DTYPE_BYTES:
        raise PlannerError(f"{where}: dtype {quote(value)} is not one of float16, bfloat16, float32")
    return name


def attention_call_scratch(call: Sequence, compute_capability: Optional[tuple[int, int]],
                           index: int = 0) -> tuple[int, str]:
    """(bytes, description) of one SDPA call's backward scratch."""
    where = f"attention[{index}]"
    if not isinstance(call, (tuple, list)) or len(call) != 7:
        raise PlannerError(f"{where} must be (batch, heads, seq_q, seq_k, head_dim, dtype, backend), got {quote(call)}")
    batch, heads, seq_q, seq_k, head_dim, dtype, backend = call
    for value, what in ((batch, "batch"), (heads, "heads"), (seq_q, "seq_q"), (seq_k, "seq_k"), (head_dim, "head_dim")):
        _positive_int(value, f"{where} {what}")
    dtype = _dtype_name(dtype, where)
    backend = str(backend).strip().lower()
    if backend not in _BACKENDS:
        raise PlannerError(f"{where}: backend {quote(backend)} is not one of {', '.join(_BACKENDS)}")
    shape = f"B={batch} H={heads} Lq={seq_q} Lk={seq_k} D={head_dim} {dtype}"
    if backend == "flash":
        if dtype == "float32" or head_dim > 256:
            raise PlannerError(f"{where}: flash attention needs float16/bfloat16 and head_dim <= 256, got {shape}")
        return flash_backward_scratch_bytes(batch, heads, seq_q, head_dim), f"flash {shape}"
    if backend == "efficient":
        n = efficient_backward_scratch_bytes(batch, heads, seq_q, seq_k, head_dim, dtype, compute_capability)
        bi, bj, km = efficient_backward_kernel(head_dim, dtype, compute_capability)
        return n, f"efficient {shape} (kernel {bi}x{bj} kMaxK {km})"
    if backend == "math":
        return 0, f"math {shape} (ordinary tensors, already traced)"
    return 0, f"cudnn {shape} (no rule: cuDNN attention workspace not modelled)"


def workspace_terms(*, compute_capability: Optional[tuple[int, int]], gpu_key: Optional[str],
                    cublas_workspace_config: Optional[str], cudnn_benchmark: bool,
                    conv_workspace_hint_bytes: int, attention: Iterable[Sequence] = (),
                    streams: int = 1, threads: int = CUBLAS_THREADS_DEFAULT,
                    cublaslt_unified: bool = True, module_loading: str = "LAZY") -> list[Term]:
    """The memory a training step holds outside model tensors, term by term.

    ``compute_capability``: e.g. ``(8, 0)``; ``None`` when unknown (the larger defaults).
    ``gpu_key``: a catalog key (``"rtx3090"``) for a per-card context reading, or None.
    ``cublas_workspace_config``: the ``CUBLAS_WORKSPACE_CONFIG`` value, or None (default).
    ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark``.
    ``conv_workspace_hint_bytes``: input+output bytes of the largest convolution; 0: none.
    ``attention``: (batch, heads, seq_q, seq_k, head_dim, dtype, backend) per SDPA call.
    ``streams``: CUDA streams issuing GEMMs; ``threads``: threads issuing GEMMs (2: the
    Python thread and autograd's device thread). ``cublaslt_unified``: False when
    ``TORCH_CUBLASLT_UNIFIED_WORKSPACE=0``. ``module_loading``: ``CUDA_MODULE_LOADING``.

    Returns terms in a fixed order: cuBLAS, [cuBLASLt], [cuDNN conv], [attention], context.
    """
    if compute_capability is not None:
        if (not isinstance(compute_capability, (tuple, list)) or len(compute_capability) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in compute_capability)):
            raise PlannerError(f"compute_capability must be (major, minor), e.g. (8, 0), got {quote(compute_capability)}")
        compute_capability = (compute_capability[0], compute_capability[1])
    streams = _positive_int(streams, "streams")
    threads = _positive_int(threads, "threads")
    if not isinstance(conv_workspace_hint_bytes, int) or isinstance(conv_workspace_hint_bytes, bool) \
            or conv_workspace_hint_bytes < 0:
        raise PlannerError(f"conv_workspace_hint_bytes must be a non-negative integer, got {quote(conv_workspace_hint_bytes)}")

    terms: list[Term] = []
    per = cublas_workspace_bytes(compute_capability, cublas_workspace_config)
    pairs = streams * threads
    if cublas_workspace_config is not None:
        how = f"CUBLAS_WORKSPACE_CONFIG={cublas_workspace_config.strip()}"
    elif compute_capability is None:
        how = "default for an unknown generation taken as the 32 MiB one"
    else:
        how = f"default for sm{compute_capability[0]}{compute_capability[1]}"
    terms.append(Term(
        "cuBLAS workspaces", per * pairs, CUBLAS_SOURCE,
        note=(f"{per:,} B ({how}) x {pairs} (handle, stream) pairs = {threads} threads x {streams} streams; "
              "persistent, from the caching allocator")))
    if not cublaslt_unified:
        lt = CUBLASLT_DEFAULT_BYTES  # CUBLASLT_WORKSPACE_SIZE unset
        terms.append(Term(
            "cuBLASLt workspaces", lt * pairs,
            "aten/src/ATen/cuda/CublasHandlePool.cpp parseCUDABlasLtWorkspaceSize / getCUDABlasLtWorkspace",
            note=f"TORCH_CUBLASLT_UNIFIED_WORKSPACE=0: a separate {lt:,} B per (handle, stream) x {pairs}"))

    if conv_workspace_hint_bytes:
        factor = CONV_WORKSPACE_FACTOR_BENCHMARK if cudnn_benchmark else CONV_WORKSPACE_FACTOR
        mode = "cudnn.benchmark=True" if cudnn_benchmark else "heuristic (benchmark off)"
        note = (f"assumption: {factor:g} x input+output bytes of the largest conv ({conv_workspace_hint_bytes:,} B), "
                f"{mode}; transient, per call, from the caching allocator")
        if cudnn_benchmark:
            note += ("; the first step's benchmark may transiently take up to the largest free cached block, "
                     "then empties the cache")
        terms.append(Term("cuDNN conv workspace", int(round(factor * conv_workspace_hint_bytes)), CONV_SOURCE,
                          note=note))

    calls = list(attention)
    if calls:
        figures = [attention_call_scratch(c, compute_capability, i) for i, c in enumerate(calls)]
        largest = max(range(len(figures)), key=lambda i: figures[i][0])
        backends = {str(c[6]).strip().lower() for c in calls}
        source = "; ".join(s for b, s in (("flash", FLASH_SOURCE), ("efficient", EFFICIENT_SOURCE)) if b in backends) \
            or "no flash/efficient call: no backward scratch"
        listing = ", ".join(f"{d}: {n:,} B" for n, d in figures)
        terms.append(Term(
            "attention backward scratch", figures[largest][0], source,
            note=f"largest single call (transient in backward, calls do not overlap) of: {listing}"))

    terms.append(context_term(compute_capability, gpu_key, module_loading))
    return terms


# NCCL's per-connection receive buffers, one per protocol (NVIDIA/nccl src/init.cc ``computeBuffSizes``:
# DEFAULT_LL_BUFFSIZE, DEFAULT_LL128_BUFFSIZE, DEFAULT_BUFFSIZE; NCCL_LL_BUFFSIZE / NCCL_LL128_BUFFSIZE /
# NCCL_BUFFSIZE override them), with src/include/device.h: NCCL_STEPS 8, NCCL_LL_LINES_PER_THREAD 8,
# NCCL_LL_MAX_NTHREADS 512, sizeof(union ncclLLFifoLine) 16, NCCL_LL128_ELEMS_PER_THREAD 120,
# NCCL_LL128_MAX_NTHREADS 640.
NCCL_LL_BYTES = 8 * 512 * 8 * 16  # 524,288
NCCL_LL128_BYTES = 120 * 640 * 8 * 8  # 4,915,200
NCCL_SIMPLE_BYTES = 1 << 22  # 4 MiB
NCCL_SOURCE = ("NVIDIA/nccl src/init.cc computeBuffSizes (DEFAULT_LL_BUFFSIZE, DEFAULT_LL128_BUFFSIZE, "
               "DEFAULT_BUFFSIZE) and src/include/device.h; docs: NCCL_BUFFSIZE in the NCCL user guide's "
               "environment variables")
NCCL_CHANNELS_ASSUMED = 2
"""Channels NCCL builds depend on the topology it detects (NCCL_MIN_NCHANNELS / NCCL_MAX_NCHANNELS):
an assumption, not a reading; each channel's ring receives from one peer."""


def nccl_term(world: int, channels: int = NCCL_CHANNELS_ASSUMED) -> Term:
    """NCCL's ring buffers on one rank: per channel, one receive connection holding a buffer for each
    protocol (LL, LL128, Simple). Outside PyTorch's caching allocator (NCCL allocates them itself
    with cuMem / cudaMalloc), so not in peak_reserved either. Tree and NVLS connections, the
    communicator's own state and the proxy's host memory are not included."""
    per = NCCL_LL_BYTES + NCCL_LL128_BYTES + NCCL_SIMPLE_BYTES
    return Term(
        "NCCL ring buffers", per * channels, NCCL_SOURCE,
        note=(f"assumption: {channels} channels x {per:,} B (LL {NCCL_LL_BYTES:,} + LL128 {NCCL_LL128_BYTES:,} + "
              f"Simple {NCCL_SIMPLE_BYTES:,}) per ring receive connection, {world} ranks; the channel count "
              "depends on the topology NCCL detects (more on NVLink systems); outside the caching allocator"))


def total_bytes(terms: Iterable[Term]) -> int:
    return sum(t.bytes for t in terms)


def render_lines(terms: Sequence[Term]) -> list[str]:
    """One line per term for reports: name, MiB (2**20 B), bytes, status, source; then a total."""
    width = max([len(t.name) for t in terms] + [len("total")])
    lines = []
    for t in terms:
        status = "calibrated" if t.calibrated else "uncalibrated"
        lines.append(f"{t.name:<{width}}  {t.bytes / MIB:>10.2f} MiB  ({t.bytes:,} B, {status})  source: {t.source}")
        if t.note:
            lines.append(f"{'':<{width}}    {t.note}")
    total = total_bytes(terms)
    lines.append(f"{'total':<{width}}  {total / MIB:>10.2f} MiB  ({total:,} B)")
    return lines


__all__ = [
    "CONTEXT_READINGS", "CUBLAS_DEFAULT_BYTES", "CUBLAS_DEFAULT_BYTES_SM90_PLUS", "CUBLASLT_DEFAULT_BYTES",
    "CONV_WORKSPACE_FACTOR", "CONV_WORKSPACE_FACTOR_BENCHMARK", "EAGER_LOADING_EXTRA_BYTES", "Term",
    "attention_call_scratch", "context_term", "cublas_workspace_bytes", "efficient_backward_kernel",
    "efficient_backward_scratch_bytes", "flash_backward_scratch_bytes", "nccl_term", "parse_cublas_workspace_config",
    "render_lines", "total_bytes", "workspace_terms",
]
