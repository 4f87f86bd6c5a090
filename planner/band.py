"""device_total as a band while its terms are uncalibrated, and the verdict it gives. Torch-free.

Three terms widen the point figure (reserved + context) into [low, high]:

* **allocator** — the caching-allocator model's reserved figure (planner/allocator.py) is
  uncalibrated. Low: ``peak_allocated`` (an allocator that wastes nothing); high: reserved plus
  the model's own overhead (reserved - allocated) once more. The spread is the model's own
  figure, not an invented percentage.
* **CUDA context** — by loading mode and the readings in planner/workspaces.py:
  lazy loading (default since CUDA 11.7 / torch 1.13, pytorch/pytorch pull request #86509):
  low = the smallest bare-context reading (256 MiB, RTX 3090, torch 2.7.1+cu128,
  invoke-ai/InvokeAI issue #9413); high = ``EAGER_CONTEXT_BYTES`` (666,632,192 B: every module
  loaded, the eager side of the #86509 A/B) — lazy loading grows the context as kernels are
  first used and cannot load more than eager loading does. PyTorch's maintainers quote "~300MB"
  (pytorch/pytorch issue #107667) and "around 400MB if CUDA >= 11.7 is used and lazy module
  loading enabled" (issue #109888), inside this range.
  Eager loading (``CUDA_MODULE_LOADING=EAGER``, or CUDA older than 11.7): low = 666,632,192 B;
  high = ``OLD_STACK_CONTEXT_BYTES`` (1343 MiB, "GPU memory occupied: 1343 MB" after
  ``torch.ones((1, 1)).to("cuda")`` in Hugging Face transformers' docs,
  docs/source/en/model_memory_anatomy.md, NVML used memory; "Before CUDA 11.7, all kernels were
  loaded ... which took >1000MB", pytorch/pytorch issue #107667).
* **library workspaces** — the terms planner/workspaces.py lists (cuBLAS per handle, cuDNN's
  conv workspace, attention backward scratch, NCCL buffers): low 0 (they can sit in cached
  blocks the allocator already holds), high all of them.

A hardware profile (``calibrate --backend cuda`` or ``calibrate --from`` real runs) measured these
terms: the band collapses to the profiled point and says so.
"""

from __future__ import annotations


from planner.records import dataclass
from planner.errors import PlannerError
from planner.result import GIB, MemoryReport

EAGER_CONTEXT_BYTES = 666_632_192
"""``total - free`` with every CUDA module loaded (CUDA_MODULE_LOADING=DEFAULT, torch 1.13):
pytorch/pytorch pull request #86509 (planner/workspaces.py EAGER_LOADING_EXTRA_BYTES is the
difference of the same A/B)."""
LAZY_CONTEXT_LOW_BYTES = 256 * 2**20
"""The smallest bare-context reading with lazy loading (planner/workspaces.py CONTEXT_READINGS)."""
OLD_STACK_CONTEXT_BYTES = 1343 * 2**20
"""NVML used memory after one tiny tensor, Hugging Face transformers docs
(docs/source/en/model_memory_anatomy.md, ``print_gpu_utilization``: ``info.used // 1024**2``)."""
LAZY_SINCE = (11, 7)


@dataclass(frozen=True)
class BandTerm:
    name: str
    low: int
    point: int
    high: int
    source: str


@dataclass(frozen=True)
class DeviceBand:
    terms: tuple[BandTerm, ...]
    calibrated: bool

    @property
    def low(self) -> int:
        return sum(t.low for t in self.terms)

    @property
    def point(self) -> int:
        return sum(t.point for t in self.terms)

    @property
    def high(self) -> int:
        return sum(t.high for t in self.terms)

    def verdict(self, capacity_bytes: int) -> tuple[str, str]:
        """("fits" | "risky" | "does not fit", one sentence)."""
        gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        band = f"device_total band {gib(self.low)} .. {gib(self.high)} (point {gib(self.point)})"
        if self.calibrated:
            band += ", calibrated: a GPU profile measured its terms"
        if self.high <= capacity_bytes:
            return "fits", f"fits even at the top of the band: {band}, {gib(capacity_bytes - self.high)} to spare"
        if self.low > capacity_bytes:
            return "does not fit", f"does not fit even at the low end: {band}, {gib(self.low - capacity_bytes)} short"
        over = self.high - capacity_bytes
        parts = ", ".join(f"{t.name} up to +{gib(t.high - t.point)}" for t in self.terms if t.high > t.point)
        return "risky", (f"fits only at the low end of the band (risky: {gib(over)} over at the top; {parts}): "
                         f"{band}")

    def to_json(self, capacity_bytes: int | None = None) -> dict:
        out: dict = {"low_bytes": self.low, "point_bytes": self.point, "high_bytes": self.high,
                     "calibrated": self.calibrated,
                     "terms": [{"name": t.name, "low_bytes": t.low, "point_bytes": t.point, "high_bytes": t.high,
                                "source": t.source} for t in self.terms]}
        if capacity_bytes is not None:
            out["verdict"], out["sentence"] = self.verdict(capacity_bytes)
        return out


def device_band(report: MemoryReport, workspace_bytes: int, *, module_loading: str = "LAZY",
                cuda_version: tuple[int, int] | None = None) -> DeviceBand:
    """The band around ``report.device_total_bytes``. ``workspace_bytes``: the library terms
    outside the trace (planner/analytic/estimate.py ``library_terms`` less the context);
    ``cuda_version``: the CUDA runtime when known (older than 11.7 loads eagerly)."""
    reserved, allocated, context = report.peak_reserved_bytes, report.peak_allocated_bytes, report.context_bytes
    calibrated = report.context_basis.startswith("measured")
    if calibrated:
        terms = (BandTerm("allocator (reserved)", reserved, reserved, reserved, report.reserved_basis),
                 BandTerm("CUDA context", context, context, context, report.context_basis),
                 BandTerm("library workspaces", 0, 0, 0, "fitted into the profile's workspace term"))
        return DeviceBand(terms, True)
    eager = (module_loading or "LAZY").strip().upper() == "EAGER" or (cuda_version is not None and cuda_version < LAZY_SINCE)
    if eager:
        lo, hi = EAGER_CONTEXT_BYTES, OLD_STACK_CONTEXT_BYTES
        src = ("eager module loading: pytorch/pytorch#86509 (666,632,192 B) .. Hugging Face "
               "model_memory_anatomy.md (1343 MiB)")
    else:
        lo, hi = LAZY_CONTEXT_LOW_BYTES, EAGER_CONTEXT_BYTES
        src = ("lazy loading: InvokeAI#9413 (256 MiB, RTX 3090) .. every module loaded, "
               "pytorch/pytorch#86509 (666,632,192 B)")
    terms = (
        BandTerm("allocator (reserved)", allocated, reserved, reserved + (reserved - allocated),
                 "planner/allocator.py model, uncalibrated: allocated .. reserved + its overhead again"),
        BandTerm("CUDA context", min(lo, context), context, max(hi, context), src),
        BandTerm("library workspaces", 0, 0, workspace_bytes,
                 "planner/workspaces.py terms (cuBLAS, cuDNN conv, attention scratch, NCCL): 0 .. all"),
    )
    return DeviceBand(terms, False)


def band_for(report: MemoryReport, card: object | None) -> DeviceBand:
    """The band of a report on a catalog card (or none): its library terms (planner/analytic/
    estimate.py ``library_terms``) and ``CUDA_MODULE_LOADING`` from the environment."""
    import os

    from planner.analytic.estimate import library_terms

    workspaces = sum(t.bytes for t in library_terms(report, card) if t.name != "CUDA context")
    return device_band(report, workspaces, module_loading=os.environ.get("CUDA_MODULE_LOADING") or "LAZY")


def band_json(report: MemoryReport, card: object | None) -> dict:
    """The ``device_band`` of a command's ``--json`` (with the verdict when a card is given)."""
    return band_for(report, card).to_json(getattr(card, "capacity_bytes", None))


def band_line(report: MemoryReport, card: object | None) -> str:
    """The band's one line under a report (its verdict on ``card`` when one is given)."""
    band = band_for(report, card)
    if card is not None:
        return f"Band ({getattr(card, 'name', '')}): {band.verdict(getattr(card, 'capacity_bytes'))[1]}"
    return f"Band: device_total {band.low / GIB:.2f} .. {band.high / GIB:.2f} GiB (point {band.point / GIB:.2f} GiB)"


# --- what the searches hold against the budget (issue 24: recommend fits at the band's top) ------

FIT_AT = ("high", "point")
"""Where in the band ``recommend`` fits a plan: ``high`` (default: the top, so an uncalibrated term
cannot push the chosen plan into an OOM) or ``point`` (the point figure, the pre-band behaviour)."""


def check_fit_at(at: str) -> str:
    if at not in FIT_AT:
        raise PlannerError(f"--fit-at: {at!r} (valid: {', '.join(FIT_AT)})")
    return at


def fit_bytes(report: MemoryReport, card: object | None, at: str = "high") -> int:
    """The figure a search compares with its budget: the band's top (``at="high"``) or its point.
    With a GPU profile that measured the terms the band is collapsed and both are the point."""
    if check_fit_at(at) == "point":
        return report.device_total_bytes  # the band's point (DeviceBand.point: reserved + context)
    return band_for(report, card).high


def fixed_bytes(report: MemoryReport, card: object | None, at: str = "high") -> int:
    """The part of ``fit_bytes`` that no change to the step moves: the CUDA context term (the
    card's and the loading mode's, the same for every setup of a step on one card)."""
    term = next(t for t in band_for(report, card).terms if t.name == "CUDA context")
    return term.high if check_fit_at(at) == "high" else term.point


def margin_json(report: MemoryReport, card: object | None, budget_bytes: int, at: str = "high") -> dict:
    """How the chosen plan's figure splits: the point, what each band term adds above it (the
    margin the band asks for), the figure held against the budget and what is left."""
    band = band_for(report, card)
    fit = band.high if check_fit_at(at) == "high" else band.point
    return {"fit_at": at, "calibrated": band.calibrated, "point_bytes": band.point, "high_bytes": band.high,
            "fit_bytes": fit, "budget_bytes": int(budget_bytes), "spare_bytes": int(budget_bytes) - fit,
            "terms": [{"name": t.name, "above_point_bytes": t.high - t.point, "source": t.source}
                      for t in band.terms]}


def margin_line(report: MemoryReport, card: object | None, budget_bytes: int, at: str = "high") -> str:
    """One sentence: the figure fitted, which term adds how much above the point, what is left."""
    m = margin_json(report, card, budget_bytes, at)
    gib = lambda n: f"{n / GIB:.2f}"  # noqa: E731
    left = (f"budget {gib(m['budget_bytes'])} GiB, {gib(abs(m['spare_bytes']))} GiB "
            + ("to spare" if m["spare_bytes"] >= 0 else "over"))
    if m["calibrated"]:
        return (f"band collapsed to {gib(m['point_bytes'])} GiB (calibrated: a GPU profile measured its terms); "
                f"{left}")
    parts = " + ".join(f"{t['name']} {gib(t['above_point_bytes'])}" for t in m["terms"])
    margin = m["high_bytes"] - m["point_bytes"]
    if at == "high":
        return (f"fitted at the top of the band, {gib(m['high_bytes'])} GiB = point {gib(m['point_bytes'])} + "
                f"margin {gib(margin)} GiB ({parts}; uncalibrated terms); {left}")
    return (f"fitted at the point figure {gib(m['point_bytes'])} GiB (--fit-at point), not the band's top "
            f"{gib(m['high_bytes'])} GiB (margin {gib(margin)} GiB left out: {parts}); {left}")
