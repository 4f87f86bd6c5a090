"""`vramplan plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planner.commands.app import command, err, out
from planner.commands.options import AccumOpt, BatchOpt, CheckpointOpt, ConfigOpt, GpusOpt, InputOpt, JobsOpt, KindOpt, KnobOpt, ModelOpt, OptimOpt, PlotKind, PrecisionOpt, SdpaOpt, StepOpt, StrategyOpt, TimeoutOpt, VoxelOpt
from planner.commands.table import evaluate_rows
from planner.errors import PlannerError, one_line
from planner.gpu_rule import GPU_HELP
from planner.setup_flags import builtin_overrides, step_params


@command()
def plot(
    what: Annotated[PlotKind, typer.Argument(help="breakdown, scaling or timeline.")],
    config: ConfigOpt = None,
    kind: KindOpt = None,
    voxel: VoxelOpt = None,
    batch: BatchOpt = None,
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="knob=v1,v2 as for `vramplan table` (breakdown: one bar per row; scaling: one line per row).")] = None,
    gpu: Annotated[Optional[list[str]], typer.Option("--gpu", help=f"Draw this card's capacity (repeatable). {GPU_HELP}")] = None,
    x: Annotated[Optional[str], typer.Option("--x", help="scaling: 'voxel' (cubes 32..256 at the config's aspect, the default) or 'batch'.")] = None,
    out_file: Annotated[Path, typer.Option("--out", help="Output file (.png or .svg).")] = Path("vramplan.png"),
    model: ModelOpt = None,
    input_shape: InputOpt = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    gpus: GpusOpt = None,
    strategy: StrategyOpt = None,
    jobs: JobsOpt = 0,
    accum: AccumOpt = None,
    optimizer: OptimOpt = None,
) -> None:
    """Figures: memory breakdown per configuration, scaling with size, or the live-memory timeline of a step.

    Example: vramplan plot breakdown --sweep amp=on,off --voxel 128x128x64 --gpu 24GB --out breakdown.png
    Example: vramplan plot breakdown --step examples/steps/template.py --sweep precision=fp32,amp-bf16 --out b.png
    """
    if out_file.suffix.lower() not in (".png", ".svg"):
        raise PlannerError(f"--out: {one_line(repr(str(out_file)), 80)} must end in .png or .svg")
    if x is not None and (step or what != PlotKind.scaling):
        raise PlannerError(f"--x: only for `plot scaling` of the built-in steps (got plot {what.value}"
                           f"{' --step' if step else ''})")
    p = step_params(locals(), "plot")
    if p is not None:
        plot_step_file(p, out, err)
        return
    from planner.gpus import parse_gpu
    from planner.report import plot as P
    from planner.report import table as T

    from planner.config import check_gpu_flag, check_output_path

    if out_file.suffix.lower() not in (".png", ".svg"):
        raise PlannerError(f"--out: {one_line(repr(str(out_file)), 80)} must end in .png or .svg")
    check_output_path(out_file, "--out")  # before the work, not after it
    check_gpu_flag(gpu)
    cards = [parse_gpu(g) for g in (gpu or [])]
    rows = T.build_rows(config, builtin_overrides(locals()),
                        list(sweep or []), [])
    if len(rows) > P.MAX_SERIES:
        raise PlannerError(f"--sweep: {len(rows)} configurations (valid: at most {P.MAX_SERIES} in one figure)")
    from planner.analytic.estimate import estimate as run_estimate

    per_rank = any(s.parallel.gpus > 1 for _, s in rows)
    if what == PlotKind.breakdown:
        labels = [(", ".join(f"{k}={v}" for k, v in lab.items()) or "config")
                  + (f" {s.parallel.strategy}" if s.parallel.gpus > 1 and "strategy" not in lab else "")
                  for lab, s in rows]
        fig = P.breakdown_figure(labels, [run_estimate(s) for _, s in rows], cards,
                                 "Memory of one training step by category (device total"
                                 + (", per rank)" if per_rank else ")"))
    elif what == PlotKind.scaling:
        from planner.report.scaling import scaling_series

        series, xlabel = scaling_series(rows, x or "voxel")
        fig = P.scaling_figure(series, cards, xlabel, "Peak memory against problem size"
                               + (" (per rank: " + ", ".join(sorted({f"{s.parallel.gpus} GPUs {s.parallel.strategy}"
                                                                    for _, s in rows if s.parallel.gpus > 1})) + ")"
                                  if per_rank else ""))
    else:
        if len(rows) != 1:
            raise PlannerError("--sweep: the timeline shows one configuration")
        from planner.report.scaling import timeline_data

        with err.status("profiling the step (fake backend)"):
            points, phases, peak_i = timeline_data(rows[0][1])
        fig = P.timeline_figure(points, phases, peak_i, gpus=cards)
    P.save(fig, out_file, "--out")
    err.print(f"wrote {out_file}")


def plot_step_file(p: dict[str, Any], out: Any, err: Any) -> None:
    from planner.report import plot as P

    what = getattr(p.get("what"), "value", p.get("what"))
    if what != "breakdown":
        raise PlannerError(f"plot {what}: with --step only 'breakdown' (one bar per --sweep row); "
                           "use `vramplan table --step ... --sweep` for sizes")
    ss, rows, gpus = evaluate_rows(p, err)
    if len(rows) > P.MAX_SERIES:
        raise PlannerError(f"--sweep: {len(rows)} configurations (valid: at most {P.MAX_SERIES} in one figure)")
    labels = [", ".join(f"{k}={v}" for k, v in lab.items()) or "as given" for lab, _, _ in rows]
    fig = P.breakdown_figure(labels, [r[0] for _, _, r in rows], gpus)
    P.save(fig, p["out_file"], "--out")
    err.print(f"wrote {p['out_file']}")
