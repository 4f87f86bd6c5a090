"""``vramplan estimate``: the analytic peak of the reference step, without torch."""

from __future__ import annotations

import time
from dataclasses import dataclass

from planner.allocator import replay
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

def breakdown_of(live) -> Breakdown:
    return breakdown((i.nbytes, i.category, i.network, i.phase, i.module) for i in live)


@dataclass(frozen=True)
class Verdict:
    """Does the device total fit on the card?"""

    gpu: GPU
    fits: bool
    margin_bytes: int
    """Card memory minus device total: headroom if >= 0, shortfall if < 0."""

    def to_json(self) -> dict:
        return {
            "key": self.gpu.key,
            "name": self.gpu.name,
            "memory_bytes": self.gpu.memory_bytes,
            "fits": self.fits,
            "headroom_bytes" if self.fits else "shortfall_bytes": abs(self.margin_bytes),
        }

    def sentence(self) -> str:
        gib = abs(self.margin_bytes) / GIB
        card = f"{self.gpu.name} ({self.gpu.memory_bytes / GIB:.2f} GiB)"
        if self.fits:
            return f"FITS on {card} with {gib:.2f} GiB headroom"
        return f"DOES NOT FIT on {card}: {gib:.2f} GiB short"


def verdict(report: MemoryReport, gpu: GPU) -> Verdict:
    margin = gpu.memory_bytes - report.device_total_bytes
    return Verdict(gpu, margin >= 0, margin)


def estimate(setup: TrainingSetup) -> MemoryReport:
    from planner.analytic.step import simulate

    t0 = time.perf_counter()
    res = simulate(setup)
    alloc = replay(res.events, res.iteration2_start)
    reserved = alloc.peak_reserved_bytes
    op, phase, step, module = res.peak_where
    return MemoryReport(
        source="estimate",
        peak_allocated_bytes=res.peak_bytes,
        peak_reserved_bytes=reserved,
        device_total_bytes=reserved + DEFAULT_CONTEXT_BYTES,
        breakdown=breakdown_of(res.live_at_peak),
        reserved_basis="modelled: caching-allocator replay of the simulated allocations (uncalibrated)",
        context_bytes=DEFAULT_CONTEXT_BYTES,
        context_basis=DEFAULT_CONTEXT_SOURCE,
        peak_at=f"{step} {phase}: {op}" + (f" in {module}" if module else ""),
        params=dict(res.params),
        wall_seconds=time.perf_counter() - t0,
        device="analytic (no GPU, no torch)",
        extra={"flops": res.flops, "bytes_written": res.bytes_written},
        notes=(
            "peak_allocated: simulated op by op (tensor shapes, what autograd saves, CUDA autocast), "
            "512-byte rounded; checked against the fake-backend profiler by benchmarks/accuracy.py",
            "peak_reserved: caching-allocator model, not calibrated on a GPU",
            f"device_total: reserved + {DEFAULT_CONTEXT_SOURCE}; cuDNN/cuBLAS workspaces not included",
        ),
    )
