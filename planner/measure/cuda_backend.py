"""The same reference step on a real CUDA device.

Runs ``run_step(backend="cuda")``: models built on the GPU, real CUDA autocast and
GradScaler, no emulation. Iteration 1 is the warm-up; ``reset_peak_memory_stats``
is called at the start of iteration 2, so ``max_memory_allocated`` /
``max_memory_reserved`` cover iteration 2 only. The CUDA context's share comes from
``torch.cuda.mem_get_info``: (total - free) after the step minus the reserved bytes.
The live-storage tracker runs too; its peak is reported beside the measured one
(``extra.tracker_peak_allocated_bytes``) so the two can be compared.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from planner.measure.profile import breakdown_of
from planner.result import MemoryReport
from planner.spec import TrainingSetup


def device_description() -> dict[str, str]:
    props = torch.cuda.get_device_properties(0)
    driver = ""
    try:  # NVML gives the driver version when pynvml is installed
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:  # noqa: BLE001 - optional
        driver = ""
    return {
        "name": props.name,
        "total_memory_bytes": str(props.total_memory),
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": driver,
        "cuda_runtime": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "torch": torch.__version__,
    }


def profile_cuda(
    setup: TrainingSetup | None,
    *,
    custom_model: str | None = None,
    custom_input: tuple[int, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> MemoryReport:
    from planner.measure.builtin_trace import run_step

    t0 = time.perf_counter()
    torch.cuda.init()
    torch.cuda.empty_cache()
    record = run_step(setup, "cuda", custom_model=custom_model, custom_input=custom_input, progress=progress)
    return measured_report(record, t0)


def measured_report(record, t0: float, rollup: int = 0) -> MemoryReport:  # noqa: ANN001 - a StepRecord
    """The report of a step just run on the GPU (built-in, --model or step file): torch's own
    peak counters for iteration 2 (reset where it starts), the context from mem_get_info, the
    breakdown from the live-storage tracker run alongside."""
    torch.cuda.synchronize()
    allocated = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    free, total = torch.cuda.mem_get_info()
    context = max(0, (total - free) - torch.cuda.memory_reserved())
    dev = device_description()
    tr = record.tracker
    return MemoryReport(
        source="profile:cuda",
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        device_total_bytes=reserved + context,
        breakdown=breakdown_of(record, rollup),
        reserved_basis=f"measured: torch.cuda.max_memory_reserved() on {dev['name']}",
        context_bytes=context,
        context_basis=f"measured: mem_get_info (total - free) - memory_reserved() on {dev['name']}",
        peak_at=f"{tr.peak_step} {tr.peak_phase}: {tr.peak_op}" + (f" in {tr.peak_module}" if tr.peak_module else ""),
        params=dict(record.params),
        wall_seconds=time.perf_counter() - t0,
        device=dev["name"],
        notes=("measured on a CUDA device; the breakdown comes from the live-storage tracker run alongside",),
        extra={"tracker_peak_allocated_bytes": tr.peak_bytes, "device": dev},
        setup=dict(record.setup),
    )
