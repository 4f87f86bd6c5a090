"""``vramplan estimate``: the analytic peak of the reference step, without torch."""

from __future__ import annotations

import gc
import time

from planner.records import dataclass
from planner.allocator import allocator_label, replay
from planner.gpus import GPU
from planner.result import (
    DEFAULT_CONTEXT_BYTES,
    DEFAULT_CONTEXT_SOURCE,
    GIB,
    Breakdown,
    MemoryReport,
    breakdown,
)
from planner.spec import TrainingSetup

def breakdown_of(live, rollup: int = 0) -> Breakdown:
    return breakdown(((i.nbytes, i.category, i.network, i.phase, i.module) for i in live), rollup)


@dataclass(frozen=True)
class Verdict:
    """Does the device total fit on the card (its CUDA-reported capacity)?"""

    gpu: GPU
    fits: bool
    margin_bytes: int
    """CUDA-reported capacity minus device total: headroom if >= 0, shortfall if < 0."""
    next_step: dict | None = None
    """When it does not fit: the single change that saves most and the `recommend` command line."""

    def to_json(self) -> dict:
        out = {
            "key": self.gpu.key,
            "name": self.gpu.name,
            "memory_bytes": self.gpu.memory_bytes,
            **self.gpu.capacity_json(),
            "fits": self.fits,
            "headroom_bytes" if self.fits else "shortfall_bytes": abs(self.margin_bytes),
        }
        if not self.fits:
            out["next_step"] = self.next_step
        return out

    def sentence(self) -> str:
        gib = abs(self.margin_bytes) / GIB
        card = f"{self.gpu.name} ({self.gpu.capacity_bytes / GIB:.2f} GiB CUDA-reported)"
        if self.fits:
            return f"FITS on {card} with {gib:.2f} GiB headroom"
        return f"DOES NOT FIT on {card}: {gib:.2f} GiB short"

    def next_lines(self) -> list[str]:
        """What to do next, for a verdict that does not fit."""
        if self.fits or not self.next_step:
            return []
        n = self.next_step
        lines = []
        if n.get("change"):
            lines.append(
                f"Largest share of the peak: {n['targets']}, {n['targeted_bytes'] / GIB:.2f} GiB "
                f"({100 * n['share_of_peak']:.0f} %). The change aimed at it: {n['change']} (quality risk: {n['risk']}); "
                "read from the breakdown, not simulated.")
        lines.append(f"Exact savings and the cheapest configuration that fits: {n['command']}")
        return lines


def verdict(report: MemoryReport, gpu: GPU, setup: TrainingSetup | None = None, command: str | None = None) -> Verdict:
    """Fit against ``gpu.capacity_bytes``; when it does not fit and ``setup`` is given, also the
    change aimed at the largest share of the peak (from the breakdown: no extra estimate) and
    the `recommend` command line."""
    margin = gpu.capacity_bytes - report.device_total_bytes
    fits = margin >= 0
    step = None
    if not fits and setup is not None:
        from planner.recommend import largest_share_change

        step = largest_share_change(setup, gpu, report)
        step["command"] = command or f"vramplan recommend --gpu {gpu.key}"
    return Verdict(gpu, fits, margin, step)


def estimate(setup: TrainingSetup, capacity_bytes: int | None = None, *, rollup: int = 0) -> MemoryReport:
    """The analytic report of ``setup``. ``capacity_bytes``: the card's, for the allocator's
    garbage_collection_threshold (it acts only under a per_process_memory_fraction).
    ``rollup`` > 0: top modules summed up the module tree to that depth (``vramplan check``
    uses 2, network.child, as step-file reports do)."""
    from planner.allocator import parse_alloc_conf
    from planner.analytic.simulate import simulate

    t0 = time.perf_counter()
    # The simulation makes ~10^4 short-lived objects and frees storages by reference
    # counting alone (no cycles hold one), so the cyclic collector only costs time:
    # measured 0.093 -> 0.063 s per stage-1 estimate at 256x256x64 (same bytes).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        res = simulate(setup)
        conf = setup.device.alloc_conf
        cfg = parse_alloc_conf(conf or None)
        alloc = replay(res.events, res.iteration2_start, cfg, capacity_bytes)
    finally:
        if was_enabled:
            gc.enable()
    reserved = alloc.peak_reserved_bytes
    op, phase, step, module = res.peak_where
    par = setup.parallel
    extra: dict = {"flops": res.flops, "bytes_written": res.bytes_written,
                   "workspace_inputs": {"conv_io_max_bytes": res.conv_io_max,
                                        "attention_calls": [list(c) for c in res.attention_calls]}}
    per_rank: tuple[str, ...] = ()
    if par.gpus > 1:
        extra.update(gpus=par.gpus, strategy=par.strategy, layout=dict(res.layout),
                     effective_batch=setup.batch_size * setup.accumulation_steps * par.gpus)
        per_rank = (
            f"per rank: rank 0 of {par.gpus} ({par.strategy}); torch.distributed's DDP / FSDP2 transcribed "
            "(planner/analytic/parallel.py), exact against their trace under a fake process group",
            "NCCL's own buffers are outside the caching allocator and not in these figures "
            "(listed below as a sourced, uncalibrated term)",
        )
    return MemoryReport(
        source="estimate",
        peak_allocated_bytes=res.peak_bytes,
        peak_reserved_bytes=reserved,
        device_total_bytes=reserved + DEFAULT_CONTEXT_BYTES,
        breakdown=breakdown_of(res.live_at_peak, rollup),
        reserved_basis="modelled: caching-allocator replay of the simulated allocations (uncalibrated)",
        context_bytes=DEFAULT_CONTEXT_BYTES,
        context_basis=DEFAULT_CONTEXT_SOURCE,
        peak_at=f"{step} {phase}: {op}" + (f" in {module}" if module else ""),
        params=dict(res.params),
        wall_seconds=time.perf_counter() - t0,
        device="analytic (no GPU, no torch)",
        extra=extra,
        fragmentation_bytes=alloc.fragmentation_bytes,
        free_at_allocated_peak_bytes=alloc.free_at_allocated_peak_bytes,
        largest_free_block_bytes=alloc.largest_free_block_at_allocated_peak_bytes,
        alloc_conf=conf,
        notes=(
            "peak_allocated: simulated op by op (tensor shapes, what autograd saves, CUDA autocast), "
            "512-byte rounded; checked against the fake-backend profiler by benchmarks/accuracy.py",
            f"peak_reserved: caching-allocator model ({allocator_label(conf)}), not calibrated on a GPU",
            f"device_total: reserved + {DEFAULT_CONTEXT_SOURCE}; cuDNN/cuBLAS workspaces not included",
        ) + per_rank + ((
            "garbage_collection_threshold: not applied: it acts on a fraction of the card's capacity, "
            "and no card was given (--gpu)",
        ) if cfg.garbage_collection_threshold is not None and capacity_bytes is None else ()),
    )


def library_terms(report: MemoryReport, gpu: GPU | None) -> list:
    """The memory outside the traced tensors (planner/workspaces.py), for this step on
    ``gpu`` (its compute capability, when the catalog knows it): cuBLAS workspaces, the
    largest cuDNN convolution workspace, the largest attention backward scratch, the CUDA
    context. Sourced and uncalibrated; reported beside device_total, not added to it."""
    import os

    from planner.gpus import cc_tuple
    from planner.workspaces import workspace_terms

    inputs = report.extra.get("workspace_inputs", {})
    cc = cc_tuple(gpu.compute_capability) if gpu is not None and gpu.compute_capability else None
    terms = workspace_terms(
        compute_capability=cc, gpu_key=gpu.key if gpu is not None else None,
        cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG") or None, cudnn_benchmark=False,
        conv_workspace_hint_bytes=inputs.get("conv_io_max_bytes", 0),
        attention=[tuple(c) for c in inputs.get("attention_calls", [])],
    )
    world = report.extra.get("gpus") or (report.setup or {}).get("gpus") or 1
    if world > 1:
        from planner.workspaces import nccl_term

        terms.insert(len(terms) - 1, nccl_term(world))  # before the context
    return terms

