"""What a measurement or an estimate says about one training step. Torch-free.

Numbers mean one thing each (``shared/design.md``):

* ``peak_allocated_bytes`` — what ``torch.cuda.max_memory_allocated()`` reports for
  the step: live tensor storages, each rounded up to 512 B, peak over iteration 2.
* ``peak_reserved_bytes`` — the caching allocator's reserved peak.
* ``device_total_bytes`` — reserved + CUDA context + library workspaces: what
  nvidia-smi shows and what must fit on the card.

Bytes are integers; GiB = 2**30, GB = 10**9.
"""

from __future__ import annotations

from dataclasses import field
from enum import Enum
from typing import Any, Iterable
from planner.records import dataclass

GIB = 2**30
GB = 10**9

class Category(str, Enum):
    """What a live storage is, at the peak: one vocabulary for the tracer (planner/measure/
    tracker.py) and the analytic engine (a str Enum, as torch's mem_tracker ``_MemRefType``)."""

    PARAMETERS = "parameters"
    GRADIENTS = "gradients"
    OPTIMIZER_STATE = "optimizer_state"
    ACTIVATIONS = "activations"
    TEMPORARIES = "temporaries"
    COMMUNICATION = "communication"
    """More than one GPU (``--gpus N --strategy ...``): DDP's gradient buckets, FSDP's all-gather
    and reduce-scatter buffers (planner/measure/distributed.py). A breakdown has it only where it
    is non-zero, so one-GPU figures keep the five categories above."""


COMMUNICATION = Category.COMMUNICATION.value
ALL_CATEGORIES = tuple(c.value for c in Category)
CATEGORIES = ALL_CATEGORIES[:-1]
PROFILE_TERM = "profile_term"
"""A device profile's fitted workspace term (``calibrate``: measured allocated minus the engine's,
i.e. cuDNN/cuBLAS workspaces and whatever else the engine misses on that device), which
:meth:`planner.profiles.DeviceProfile.apply` adds to ``peak_allocated_bytes``. A breakdown has it
(by category and by network) only where a profile with a non-zero term was applied, so that the
breakdown still sums to the allocated peak. Signed: a negative term means the engine counts more
than that device allocated."""

# CUDA context (driver, lazily loaded kernels) when no device profile is calibrated:
# 426 MiB measured with nvidia-smi after torch.cuda.mem_get_info() on an RTX 6000 Ada,
# torch 2.10 + CUDA 13.0, lazy module loading (unslothai/unsloth-zoo pull request #1053);
# PyTorch's maintainers quote "around 400MB if CUDA >= 11.7 is used and lazy module
# loading enabled" (pytorch/pytorch issue #109888). Not measured by this project.
DEFAULT_CONTEXT_BYTES = 426 * 2**20
DEFAULT_CONTEXT_SOURCE = (
    "uncalibrated default: 426 MiB CUDA context (public nvidia-smi reading, RTX 6000 Ada, "
    "torch 2.10+cu130; see planner/result.py)"
)


@dataclass(frozen=True)
class Breakdown:
    """Bytes live at the peak, split three ways."""

    by_category: dict[str, int]
    """parameters / gradients / optimizer_state / activations / temporaries (/ communication) -> bytes."""
    by_network: dict[str, int]
    """autoencoder / attention / perceptual / discriminator / unet / losses / data / ... -> bytes."""
    top_modules: tuple[tuple[str, int], ...] = ()
    """Modules whose saved activations hold the most bytes at the peak, largest first."""

    @property
    def total(self) -> int:
        return sum(self.by_category.values())

    def with_profile_term(self, nbytes: int) -> "Breakdown":
        """This breakdown with a profile's term (:data:`PROFILE_TERM`, signed) as its own entry by
        category and by network, so that it sums to the peak the term was added to."""
        if not nbytes:
            return self
        return Breakdown(by_category={**self.by_category, PROFILE_TERM: self.by_category.get(PROFILE_TERM, 0) + nbytes},
                         by_network={**self.by_network, PROFILE_TERM: self.by_network.get(PROFILE_TERM, 0) + nbytes},
                         top_modules=self.top_modules)


@dataclass(frozen=True)
class MemoryReport:
    """One training step's memory: measured (profile) or derived (estimate)."""

    source: str
    """'profile:fake', 'profile:cpu', 'profile:cuda' or 'estimate'."""
    peak_allocated_bytes: int
    """max_memory_allocated() over iteration 2."""
    peak_reserved_bytes: int
    """max_memory_reserved() over the step."""
    device_total_bytes: int
    """Reserved + context + workspaces: what must fit on the card."""
    breakdown: Breakdown
    """Where the allocated peak goes."""
    reserved_basis: str
    """How the reserved figure was obtained (measured, or modelled and how)."""
    context_bytes: int
    """CUDA context + library share of the device total."""
    context_basis: str
    """Measured on which GPU, or the uncalibrated default and its source."""
    peak_at: str = ""
    """Where in the step the peak happens (op, phase, module)."""
    params: dict[str, int] = field(default_factory=dict)
    """Parameter count per network."""
    wall_seconds: float = 0.0
    """How long producing this report took."""
    device: str = ""
    """The device measured on ('CPU (FakeTensorMode, CUDA emulated)', 'NVIDIA H100 80GB HBM3', ...)."""
    notes: tuple[str, ...] = ()
    """Caveats the reader must see (uncalibrated terms, assumptions)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific raw figures (e.g. the tracker's peak on a CUDA run)."""
    fragmentation_bytes: int = 0
    """Reserved minus the live (512-rounded) requests when reserved first reaches its peak:
    cached free blocks, unsplit remainders, segment and page rounding (planner/allocator.py)."""
    free_at_allocated_peak_bytes: int = 0
    """The allocator model's reserved minus allocated when allocated peaks: cached free blocks while the live
    tensors peak (planner/allocator.py AllocatorStats)."""
    largest_free_block_bytes: int = 0
    """The largest cached free block (large pool) at that moment: a larger request needs a new segment."""
    alloc_conf: str = ""
    """The caching-allocator settings the reserved figure assumes (PYTORCH_CUDA_ALLOC_CONF
    syntax); empty: torch's defaults."""
    setup: dict[str, Any] = field(default_factory=dict)
    """What ran (a profile): step, model, input_shape, input_dtype, precision, optimizer,
    gradient_accumulation_steps, backend. Empty when the report does not say."""

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "device": self.device,
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_total_bytes": self.device_total_bytes,
            "context_bytes": self.context_bytes,
            "fragmentation_bytes": self.fragmentation_bytes,
            "free_at_allocated_peak_bytes": self.free_at_allocated_peak_bytes,
            "largest_free_block_bytes": self.largest_free_block_bytes,
            "alloc_conf": self.alloc_conf or "default",
            "breakdown": {
                "by_category": dict(self.breakdown.by_category),
                "by_network": dict(self.breakdown.by_network),
                "top_modules": [{"module": m, "bytes": b} for m, b in self.breakdown.top_modules],
            },
            "peak_at": self.peak_at,
            "params": dict(self.params),
            "reserved_basis": self.reserved_basis,
            "context_basis": self.context_basis,
            "wall_seconds": round(self.wall_seconds, 3),
            "notes": list(self.notes),
            **({"extra": self.extra} if self.extra else {}),
            **({"setup": dict(self.setup)} if self.setup else {}),
        }


def category_for(explicit: str | None, phase: str, module: str) -> str:
    """Category of a live storage: its explicit tag (parameters, gradients,
    optimizer_state), else allocated in forward (or recomputed by a checkpoint in
    backward, i.e. inside a module) -> activations; anything else -> temporaries."""
    if explicit:
        return explicit
    if phase in ("forward", "data", "setup"):
        return "activations"
    if phase == "backward" and module:
        return "activations"
    return "temporaries"


TOP_MODULES = 10


def breakdown(entries: "Iterable[tuple[int, str | None, str, str, str]]", rollup: int = 0) -> Breakdown:
    """The breakdown of the storages live at the peak, given as
    (bytes, explicit category or None, network, phase, module) — the same for a
    measurement (tracker) and an estimate (simulator). ``rollup`` > 0 sums module
    activations up the module tree to that depth (2: network and top-level child)."""
    from collections import Counter

    by_cat: Counter[str] = Counter({c: 0 for c in CATEGORIES})
    by_net: Counter[str] = Counter()
    by_mod: Counter[str] = Counter()
    for nbytes, explicit, network, phase, module in entries:
        cat = category_for(explicit, phase, module)
        by_cat[cat] += nbytes
        net = network or "other"
        if cat == "temporaries" and not module:
            net = f"{phase} temporaries"
        by_net[net] += nbytes
        if cat == "activations" and module:
            by_mod[".".join(module.split(".")[:rollup]) if rollup else module] += nbytes
    return Breakdown(
        by_category=dict(by_cat),
        by_network=dict(sorted(by_net.items(), key=lambda kv: -kv[1])),
        top_modules=tuple(by_mod.most_common(TOP_MODULES)),
    )


def gib(nbytes: int | float) -> float:
    return nbytes / GIB
