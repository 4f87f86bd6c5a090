"""`vramplan calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.commands.options import takes_setup
from planner.setup_flags import SetupFlags, step_params
from planner.commands.app import command, err, out
from planner.commands.options import Backend, JsonOpt
from planner.commands.render import progress
from planner.errors import PlannerError, one_line
from planner.setup_flags import filled, load_step, sweep_setups
from planner.step_setup import StepSetup


@command()
@takes_setup
def calibrate(
    name: Annotated[str, typer.Option("--name", help="Profile name: writes profiles/<name>.json.")] = "fake",
    grid: Annotated[Optional[Path], typer.Option("--grid", help="YAML list of configurations (default: benchmarks/grid.py).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="fake (anywhere) or cuda (a real GPU).")] = Backend.fake,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="With --backend cuda: the card from `vramplan gpus` this profile is for (--gpu NAME then picks it).")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Use only grid entries whose name contains this.")] = None,
    sweep: Annotated[Optional[list[str]], typer.Option(
        "--sweep", help="--step: the points to measure, knob=v1,v2 (repeatable; batch, accum, precision, checkpoint, "
        "sdpa, optimizer and the step file's knobs).")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Fit on recorded run files (vramplan record), e.g. --from runs/*.json.")] = None,
    runs: Annotated[Optional[list[str]], typer.Argument(help="More run files after --from (as the shell expands runs/*.json).", show_default=False)] = None,
    validate: Annotated[Optional[str], typer.Option("--validate", help="--from: check this existing profile on the runs instead of fitting one.")] = None,
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
) -> None:
    """Measure a grid of configurations and fit a device profile's residual terms by least squares.

    With --step: the step file's trace (what estimate --step reports) against a run on --backend
    for each --sweep point; the profile (basis "trace") then corrects --step estimates given
    --profile NAME. On the fake backend that run is the trace itself: the terms come out as the
    identity (a pipeline check); --backend cuda on a GPU measures.

    Example: vramplan calibrate --name fake --backend fake

    Example: vramplan calibrate --step examples/steps/template.py --sweep batch=8,16,32 --name mine --backend cuda --gpu rtx4090

    Example: vramplan calibrate --from runs/*.json --name my-a100   (runs written by vramplan record)
    """
    assert flags is not None  # takes_setup
    if from_ is not None or runs or validate:
        from planner.compare import calibrate_command

        given = [f for v, f in ((flags.step, "--step"), (grid, "--grid"), (only, "--only"), (sweep, "--sweep")) if v]
        given += ["--" + k.replace("_", "-") for k, _ in flags.given if k != "step"]
        if given:
            raise PlannerError(f"{given[0]}: does not apply to --from (each run file holds its own setup)")
        calibrate_command(name=name, from_=from_, runs=runs, validate=validate, gpu=gpu, as_json=as_json, out=out)
        return
    ss = step_params(flags, "calibrate", sweep=sweep)
    if ss is not None:
        if grid is not None or only is not None:
            raise PlannerError(f"{'--grid' if grid is not None else '--only'}: does not apply to --step "
                               "(the points are the step file's --sweep rows)")
        calibrate_step_file(ss, name=name, sweep=list(sweep or []), backend=backend.value, gpu=gpu, as_json=as_json)
        return
    if sweep:
        raise PlannerError("--sweep: only with --step (the built-in calibration's points are its --grid)")
    if flags.given:
        flag = "--" + flags.given[0][0].replace("_", "-")
        raise PlannerError(f"{flag}: only with --step (the built-in calibration's points are its --grid)")
    from rich.progress import Progress

    from planner import profiles
    from planner.calibrate import calibrate as run_calibrate
    from planner.calibrate import load_grid
    from planner.gpus import calibration_card

    from planner.config import check_cuda_backend, check_gpu_flag

    if backend == Backend.cpu:
        raise PlannerError("--backend: calibrate takes fake or cuda")
    check_cuda_backend(backend, valid="fake")
    profiles.check_name(name)  # before the measurements: the file it will write
    check_gpu_flag(gpu)
    card = calibration_card(gpu, backend.value)
    entries = load_grid(grid)
    if only is not None:
        if not only.strip():
            raise PlannerError("--only: empty value (valid: a part of a grid entry's name)")
        entries = [e for e in entries if only in e[0]]
        if not entries:
            raise PlannerError(f"--only: no grid entry's name contains {one_line(repr(only), 80)}")
    with Progress(console=getattr(err, "rich", err), transient=True) as bar:
        task = bar.add_task("calibrating", total=len(entries))

        def tick(i: int, n: int, label: str) -> None:
            bar.update(task, completed=i, description=f"calibrating: {label}")

        try:
            prof = run_calibrate(name, entries, backend.value, card.key if card else None, tick)
        except ImportError as exc:
            raise PlannerError(f"calibrate needs the measuring extra ({exc.name} is missing)") from None
    from planner.calibrate import save_and_report

    save_and_report(prof, as_json, out, lambda path: f"wrote {path}: {len(prof.measurements)} measurements on "
                    f"{prof.device.get('name', backend.value)}")


def calibrate_step_file(ss: StepSetup, *, name: str, sweep: list[str], backend: str, gpu: str | None,
                        as_json: bool) -> None:
    """calibrate --step: the step file's trace against --backend at each --sweep row."""
    from planner import profiles
    from planner.calibrate import calibrate_step
    from planner.config import check_cuda_backend, check_gpu_flag
    from planner.gpus import calibration_card

    if backend == "cpu":
        raise PlannerError("--backend: calibrate takes fake or cuda")
    check_cuda_backend(backend, valid="fake")
    profiles.check_name(name)
    check_gpu_flag(gpu)
    card = calibration_card(gpu, backend)
    sf = load_step(ss)
    ss = filled(ss, sf)
    rows = sweep_setups(ss, sf, sweep)
    setups = [(", ".join(f"{k}={v}" for k, v in label.items()) or s.label(), s) for label, s in rows]
    prog, tick = progress(err, "calibrating")
    with prog:
        prof = calibrate_step(name, setups, backend, card.key if card else None, tick)
    from planner.calibrate import save_and_report

    if save_and_report(prof, as_json, out, lambda path: f"wrote {path}: {len(prof.measurements)} points "
                       f"({'; '.join(lab for lab, _ in setups)}) of {ss.label()} on {prof.device.get('name', backend)}"):
        return
    if backend != "cuda":
        out.print("[yellow]fake backend: each point is the step's trace against a fresh trace of itself, so the terms "
                  "are the identity; this checks the pipeline and calibrates nothing (use --backend cuda on a GPU)[/yellow]")
    out.print(f"use it: vramplan estimate --step {ss.path} --profile {prof.name}", markup=False)
