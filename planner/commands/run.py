"""`vramplan run [OPTIONS] -- python train.py ARGS`: the user's training script, unchanged, traced.

Parse, send the script to the isolated worker (``planner/script_setup.py`` ->
``planner/measure/script_run.py``), render the report as ``estimate --step`` does. Torch is
imported only in the worker.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from planner.commands.app import command, err, out, print_json
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP


@command(name="run")
def run(
    command: Annotated[Optional[list[str]], typer.Argument(
        help="After --: python train.py ARGS, python -m package.module ARGS, or torchrun --nproc-per-node N "
        "train.py ARGS.", show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps to run, then stop the script.")] = 2,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help=f"Card to emulate and check against. {GPU_HELP}")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="Replace the script's CUDA autocast: fp32 (off, GradScaler off), amp-fp16, amp-bf16 "
        "(its regions' dtype; autocast around each network's forward where it has none).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", help="Wrap these module classes in torch's non-reentrant checkpoint wrapper: "
        "ClassName[,ClassName].")] = None,
    sdpa: Annotated[Optional[str], typer.Option(
        "--sdpa", help="The only SDPA backend enabled: flash, efficient, math (default auto: CUDA's choice).")] = None,
    alloc_conf: Annotated[Optional[str], typer.Option(
        "--alloc-conf", help="CUDA caching-allocator settings (PYTORCH_CUDA_ALLOC_CONF syntax) for the "
        "reserved-memory model.")] = None,
    batch: Annotated[Optional[int], typer.Option(
        "--batch", min=1, help="batch_size of the script's training DataLoaders (those that shuffle).")] = None,
    gpus: Annotated[Optional[int], typer.Option(
        "--gpus", min=1, help="Data-parallel ranks: rank 0 of N is traced, the script's init_process_group answered by a "
        "fake process group, LOCAL_RANK/RANK/WORLD_SIZE set; figures per rank. A torchrun launch sets it.")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", help="With --gpus N: ddp (the script's own DistributedDataParallel is what is traced).")] = None,
    accum: Annotated[Optional[int], typer.Option(
        "--accum", min=1, help="Refused: accumulation in your own loop is set in the script.")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Seconds the script may run before it is stopped, naming its file:line (exit 3). "
        "Default 600.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (the script's "
                                                         "stdout goes to stderr).")] = False,
) -> None:
    """Run your training script unchanged, CUDA emulated on the CPU, and report its peak GPU memory.

    The script runs in a worker process under FakeTensorMode (model tensors take no memory), its data
    pipeline real on the CPU, and is stopped after --steps optimizer steps (torch.optim's step hooks).
    Validation / inference passes between steps are measured too.

    \b
    Example: vramplan run --gpu 24GB -- python train.py --roi 96

    Example: vramplan run --precision amp-bf16 --checkpoint SwinTransformerBlock --json -- python -m mypkg.train

    Example: vramplan run --gpu 80GB -- torchrun --nproc-per-node 8 train.py
    """
    from planner.config import environment_alloc_conf
    from planner.gpus import parse_gpu
    from planner.measure.isolate import set_timeout
    from planner.script_setup import script_setup, trace_in_worker

    if accum is not None:
        raise PlannerError(f"--accum {accum}: gradient accumulation in your own loop cannot be applied from "
                           f"outside; change the script's own accumulation setting (after --) instead")
    set_timeout(timeout)
    card = parse_gpu(gpu) if gpu else None
    setup = script_setup(command, steps=steps, card=card, precision=precision, checkpoint=checkpoint, sdpa=sdpa,
                         batch=batch, gpus=gpus, strategy=strategy)
    alloc_conf = alloc_conf or environment_alloc_conf()
    from planner.allocator import parse_alloc_conf

    parse_alloc_conf(alloc_conf or None)  # a bad setting is one line before the script runs
    t0 = time.perf_counter()
    with err.status(f"running {setup.script}"):
        result = trace_in_worker(setup)
    from planner.measure.profile import report_from

    gpu_note = (f"the script saw torch.cuda report {setup.gpu_name} ({setup.gpu_total:,} B)"
                + ("" if card else "; give --gpu to emulate your card"))
    report = report_from(result.record, "fake", alloc_conf, time.perf_counter() - t0, source="run", rollup=2,
                         capacity_bytes=card.capacity_bytes if card else None,
                         extra_notes=(f"by trace: {setup.label()} run under FakeTensorMode on the CPU (CUDA emulated), "
                                      f"stopped after {result.steps} optimizer steps; peak over the whole run",
                                      gpu_note, *result.notes))
    from planner.analytic.estimate import verdict

    v = verdict(report, card) if card is not None else None
    if as_json:
        from planner.band import band_json

        data = report.to_json()
        data["fits"] = v.fits if v else None
        data["gpu"] = v.to_json() if v else None
        data["run"] = {"command": setup.command_words(), "gpus": setup.gpus, "optimizer_steps": result.steps,
                       "networks": result.networks, "parts": [s.to_json() for s in result.segments]}
        data["device_band"] = band_json(report, card)
        print_json(data)
        return
    from planner.report.terminal import render_report

    render_report(report, None, out, title="vramplan run (traced now)")
    out.print("command: " + " ".join(setup.command_words()), markup=False)
    out.print("peak by part of the run (allocated, GiB = 2**30 B):", markup=False)
    for s in result.segments:
        out.print(f"  {s.label:<28} {s.peak_bytes / 2**30:8.3f} GiB  ({s.peak_bytes:,} B) at {s.where}", markup=False)
    if v is not None:
        from planner.band import band_line

        style = "bold green" if v.fits else "bold red"
        out.print(f"[{style}]{v.sentence()}[/{style}] (device_total {report.device_total_bytes / 2**30:.2f} GiB)")
        out.print(f"[dim]{v.gpu.capacity_note()}[/dim]")
        out.print(band_line(report, v.gpu), markup=False)
    out.print(f"[dim]{report.wall_seconds:.1f} s[/dim]")
