"""``vramplan profile``: run the reference step on a backend and report its memory."""

from __future__ import annotations

import time
from typing import Callable

from planner.allocator import allocator_label, parse_alloc_conf, replay
from planner.result import DEFAULT_CONTEXT_BYTES, DEFAULT_CONTEXT_SOURCE, Breakdown, MemoryReport, breakdown
from planner.spec import TrainingSetup

def breakdown_of(record: "StepRecord", rollup: int = 0) -> Breakdown:  # noqa: F821 - torch-side type
    return breakdown(
        ((i.nbytes, i.category.value if i.category is not None else None, i.network, i.phase.value, i.module)
         for i in record.tracker.live_at_peak),
        rollup,
    )


def profile(
    setup: TrainingSetup | None,
    backend: str = "fake",
    *,
    custom_model: str | None = None,
    custom_input: tuple[int, ...] | None = None,
    progress: Callable[[str], None] | None = None,
    capacity_bytes: int | None = None,
    source: str | None = None,
) -> MemoryReport:
    """The report of two traced iterations of ``setup`` on ``backend``. ``capacity_bytes``: the
    card's, for the allocator model; ``source``: the report's source (default profile:BACKEND)."""
    if backend == "cuda":
        from planner.measure.cuda_backend import profile_cuda

        return profile_cuda(setup, custom_model=custom_model, custom_input=custom_input, progress=progress)
    from planner.measure.builtin_trace import run_step

    t0 = time.perf_counter()
    record = run_step(setup, backend, custom_model=custom_model, custom_input=custom_input, progress=progress)
    conf = setup.device.alloc_conf if setup is not None else ""
    return report_from(record, backend, conf, time.perf_counter() - t0, source=source, capacity_bytes=capacity_bytes)


BACKEND_DEVICE = {"fake": "CPU, FakeTensorMode (CUDA emulated)", "cpu": "CPU, real tensors (CUDA emulated)"}


def report_from(record: "StepRecord", backend: str, conf: str, seconds: float, *,  # noqa: F821
                source: str | None = None, rollup: int = 0, capacity_bytes: int | None = None,
                extra_notes: tuple[str, ...] = ()) -> MemoryReport:
    """The MemoryReport of a traced step (built-in, --model or step file; traced or derived)."""
    alloc = replay(record.events, record.iteration2_start, parse_alloc_conf(conf or None), capacity_bytes)
    tr = record.tracker
    reserved = alloc.peak_reserved_bytes
    notes = extra_notes + (
        "peak_allocated: live storages tracked op by op, 512-byte rounded (CUDA caching-allocator block size); "
        "measured on the CPU with CUDA autocast and kernel choices emulated, not on a GPU",
        "peak_reserved: modelled by replaying the step's allocations through a model of the CUDA caching "
        f"allocator (planner/allocator.py; {allocator_label(conf)}), not measured",
        f"device_total: reserved + {DEFAULT_CONTEXT_SOURCE}; cuDNN/cuBLAS workspaces not included",
    ) + tuple(tr.notes)  # e.g. attention that runs the math kernel (cuda_emulation)
    return MemoryReport(
        source=source or f"profile:{backend}",
        peak_allocated_bytes=tr.peak_bytes,
        peak_reserved_bytes=reserved,
        device_total_bytes=reserved + DEFAULT_CONTEXT_BYTES,
        breakdown=breakdown_of(record, rollup),
        reserved_basis="modelled: caching-allocator replay of the traced allocations (uncalibrated)",
        context_bytes=DEFAULT_CONTEXT_BYTES,
        context_basis=DEFAULT_CONTEXT_SOURCE,
        peak_at=f"{tr.peak_step} {tr.peak_phase}: {tr.peak_op}" + (f" in {tr.peak_module}" if tr.peak_module else ""),
        params=dict(record.params),
        wall_seconds=seconds,
        device=BACKEND_DEVICE.get(backend, backend),
        notes=notes,
        extra={"allocator_model_peak_allocated_bytes": alloc.peak_allocated_bytes, "segments": alloc.segments,
               "workspace_inputs": {"conv_io_max_bytes": tr.conv_io_max,
                                    "attention_calls": [list(c) for c in tr.attention_calls]}},
        fragmentation_bytes=alloc.fragmentation_bytes,
        free_at_allocated_peak_bytes=alloc.free_at_allocated_peak_bytes,
        largest_free_block_bytes=alloc.largest_free_block_at_allocated_peak_bytes,
        alloc_conf=conf,
        setup=dict(record.setup),
    )
