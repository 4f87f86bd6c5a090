"""`vramplan table`."""

from __future__ import annotations

from pathlib import Path
import sys
from typing import Annotated, Any, Optional

import typer

from planner.commands.app import command, err
from planner.commands.options import takes_setup, Backend, Fmt, JobsOpt
from planner.commands.render import progress
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP
from planner.setup_flags import SetupFlags, filled, load_step, step_params, sweep_setups
from planner.step_setup import StepSetup


@command()
@takes_setup
def table(
    sweep: Annotated[
        Optional[list[str]],
        typer.Option("--sweep", help="knob=v1,v2 (repeatable; list knobs channels/attention separate values with '/').\n"
                     "Knobs: batch voxel amp checkpointing flash perceptual discriminator disc_layers disc_channels accum optimizer kind channels attention."),
    ] = None,
    configs: Annotated[Optional[list[Path]], typer.Option("--configs", help="One row per YAML file (repeatable).")] = None,
    gpu: Annotated[Optional[list[str]], typer.Option("--gpu", help=f"Add a 'fits' column per card (repeatable). {GPU_HELP}")] = None,
    measure: Annotated[Optional[Backend], typer.Option("--measure", help="Also profile each row (fake or cuda backend).")] = None,
    seed004: Annotated[bool, typer.Option("--seed004", help="Seed 004's comparison table, with real figures.")] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.markdown,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the table to this file.")] = None,
    jobs: JobsOpt = 0,
    flags: SetupFlags | None = None,
) -> None:
    """Comparison table of configurations: peak memory, device total, fits per GPU, relative speed.
    With --step, --sweep takes batch, accum, precision, checkpoint, sdpa, optimizer, gpus, strategy and the step file's knobs.

    Example: vramplan table --sweep batch=1,2,4 --sweep amp=on,off --voxel 96x96x64 --gpu 24GB

    Example: vramplan table --step examples/steps/template.py --sweep width=64,256 --sweep precision=fp32,amp-bf16 --gpu 8GB

    Example: vramplan table --model nets.py:make_net --input 2x1x96x96x96 --sweep batch=1,2,4 --gpu 24GB
    """
    if out_file is not None:
        from planner.config import check_output_path

        check_output_path(out_file, "--out")
    assert flags is not None  # takes_setup
    ss = step_params(flags, "table", jobs=jobs, sweep=sweep,
                     refused={"configs": configs, "measure": measure, "seed004": seed004})
    if ss is not None:
        rows, cards = evaluate_rows(ss, sweep=list(sweep or []), parallel=(flags.gpus, flags.strategy),
                                    gpu=list(gpu or []), jobs=jobs)
        table_step_file(rows, cards, fmt=fmt.value, out_file=out_file)
        return
    from planner.config import check_cuda_backend, check_gpu_flag, check_output_path
    from planner.gpus import parse_gpu
    from planner.report import table as T

    if out_file is not None:  # before the work, not after it
        check_output_path(out_file, "--out")
    check_gpu_flag(gpu)
    cards = [parse_gpu(g) for g in (gpu or [])]
    speed_gpu = cards[0] if cards else parse_gpu("rtx4090")
    if seed004:
        given = ["--" + name.replace("_", "-") for name, _ in flags.given] + \
            [flag for value, flag in ((sweep, "--sweep"), (configs, "--configs")) if value]
        if given:
            raise PlannerError(f"{given[0]}: not with --seed004 (its table is seed 004's own configurations; "
                               "it takes --gpu, --measure, --format and --out)")
        from planner.config import setup_from_dict, with_environment
        from planner.report.seed004 import seed004_configs

        rows = [(meta, setup_from_dict(with_environment(cfg))) for meta, cfg in seed004_configs()]
    else:
        swept = {s.split("=")[0].strip().replace("-", "_") for s in sweep or []}
        for name, _, flag in flags.knobs:
            if name in swept:
                raise PlannerError(f"{flag}: also swept by --sweep {name}=...; give one of them")
        rows = T.build_rows(flags.config, flags.builtin_overrides(), list(sweep or []), list(configs or []))
    if measure == Backend.cpu:
        raise PlannerError("--measure: fake or cuda")
    check_cuda_backend(measure, valid="fake", flag="--measure")
    with err.status("estimating") as status:
        evaluated = T.evaluate(rows, speed_gpu, measure.value if measure else None,
                               lambda i, n: status.update(f"row {i}/{n}"))
    df = T.frame(evaluated, cards)
    if seed004:  # the users' guesses beside the figures they guessed
        guessed_mem = df.pop("seed 004 guessed memory")
        guessed_speed = df.pop("seed 004 guessed speed")
        df.insert(df.columns.get_loc("device total (GiB)") + 1, "seed 004 guessed memory", guessed_mem)
        if "relative speed (est.)" in df.columns:
            df.insert(df.columns.get_loc("relative speed (est.)") + 1, "seed 004 guessed speed", guessed_speed)
    text = T.render(df, fmt.value)
    if out_file is not None:
        T.write_text(out_file, text, "--out")
        err.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


def table_step_file(rows: list[tuple[dict, StepSetup, Any]], gpus: list[Any], *, fmt: str, out_file: Path | None) -> None:
    """table --step: one row per --sweep point of the step file."""
    import pandas as pd

    from planner.report import table as T

    recs = []
    base = rows[0][2][1] or 1.0
    from planner.result import ALL_CATEGORIES, CATEGORIES, COMMUNICATION

    cats = ALL_CATEGORIES if any(r[2][0].breakdown.by_category.get(COMMUNICATION) for r in rows) else CATEGORIES
    for label, s, (rep, secs, how) in rows:
        row = {k: v for k, v in label.items()}
        row["setup"] = s.label()
        row["peak allocated (GiB)"] = round(rep.peak_allocated_bytes / 2**30, 3)
        row["device total (GiB)"] = round(rep.device_total_bytes / 2**30, 3)
        for cat in cats:
            row[f"{cat} (GiB)"] = round(rep.breakdown.by_category.get(cat, 0) / 2**30, 3)
        for g in gpus:
            row[f"fits {g.key}"] = "yes" if rep.device_total_bytes <= g.capacity_bytes else "no"
        row["relative time/sample (est.)"] = round(secs / base, 2) if secs and base else None
        row["how"] = how
        recs.append(row)
    df = pd.DataFrame(recs)
    text = T.render(df, fmt)
    if fmt == "markdown":
        text += ("\nBy trace (FakeTensorMode on the CPU, CUDA emulated), not measured on a GPU; GiB = 2**30 bytes; "
                 "device total = modelled reserved + 426 MiB uncalibrated context; time/sample: uncalibrated roofline, "
                 "relative to the first row"
                 + ("; with more than one GPU: all ranks' samples, communication not modelled" if any(
                     s.gpus > 1 for _, s, _ in rows) else "") + ".\n")
    if out_file is not None:
        T.write_text(out_file, text, "--out")
        err.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


def evaluate_rows(ss: StepSetup, *, sweep: list[str], parallel: tuple[Any, Any], gpu: list[str],
                  jobs: int) -> tuple[list[tuple[dict, StepSetup, Any]], list[Any]]:
    """The step file's --sweep rows, traced (cached, in ``jobs`` processes), with the cards of
    --gpu; ``parallel``: --gpus and --strategy as given, for the one a sweep leaves."""
    from planner.gpus import parse_gpu
    from planner.measure.search import Evaluator

    sf = load_step(ss)
    ss = filled(ss, sf)
    rows = sweep_setups(ss, sf, sweep, (parallel[0], getattr(parallel[1], "value", parallel[1])))
    gpus = [parse_gpu(g) for g in gpu]
    prog, tick = progress(err, "tracing")
    with prog, Evaluator(gpus[0] if gpus else parse_gpu("rtx4090"), jobs, tick, profile=None) as ev:
        reps = ev.reports([s for _, s in rows])
    for label, s in rows:
        if reps[s][0] is None:
            where = ", ".join(f"{k}={v}" for k, v in label.items())
            raise PlannerError((f"--sweep {where}: " if where else "") + reps[s][2])
    return [(label, s, reps[s]) for label, s in rows], gpus
