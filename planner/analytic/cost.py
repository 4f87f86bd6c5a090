"""Estimated time per effective sample: a roofline over the simulated step. Torch-free.

The simulator counts the floating-point operations of every convolution, matmul
and attention kernel it runs (forward, backward, and checkpoint recomputation) and
the bytes every op writes. Time for one optimizer step is

    flops / (peak TFLOP/s at the step's precision) + 2 * bytes written / bandwidth

(each written byte is read about once more), divided by the samples the step
consumes (batch x accumulation x GPUs: with ``--gpus N`` every rank runs the step on its own
micro-batch at once; communication is not modelled, so that is the compute-only bound). Peak rates are the catalog's vendor figures: fp16
tensor-core rate under AMP (bf16 alike), the fp32 rate otherwise. This is an
uncalibrated model for *comparing* configurations (relative speed), not a
prediction of wall time; it ignores kernel launch latency and achieved efficiency.
"""

from __future__ import annotations

from planner.gpus import GPU, parse_gpu
from planner.result import MemoryReport
from planner.spec import TrainingSetup

REFERENCE_GPU = "rtx4090"  # when the card is unknown (a generic '24GB')


def rates(gpu: GPU) -> GPU:
    if gpu.fp16_tflops and gpu.fp32_tflops and gpu.bandwidth_gbs:
        return gpu
    return parse_gpu(REFERENCE_GPU)


def seconds_per_step(setup: TrainingSetup, report: MemoryReport, gpu: GPU) -> float | None:
    flops = report.extra.get("flops")
    written = report.extra.get("bytes_written")
    if flops is None or written is None:
        return None
    # the simulator runs two iterations; one step is half of it
    return 0.5 * roofline_seconds(flops, written, gpu, half=setup.device.mixed_precision)


def roofline_seconds(flops: float, bytes_written: float, gpu: GPU, half: bool) -> float:
    """flops at the fp16 (half) or fp32 peak rate + each written byte read once more, over the
    bandwidth; the model of the module docstring, for the simulator and the traced steps alike."""
    g = rates(gpu)
    tflops = g.fp16_tflops if half else g.fp32_tflops
    return flops / (tflops * 1e12) + 2 * bytes_written / (g.bandwidth_gbs * 1e9)


def seconds_per_sample(setup: TrainingSetup, report: MemoryReport, gpu: GPU) -> float | None:
    step = seconds_per_step(setup, report, gpu)
    if step is None:
        return None
    return step / (setup.batch_size * setup.accumulation_steps * setup.parallel.gpus)
