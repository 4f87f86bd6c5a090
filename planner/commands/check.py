"""`vramplan check`."""

from __future__ import annotations

from pathlib import Path
import sys
from typing import Annotated, Optional

import typer

from planner.commands.options import takes_setup
from planner.setup_flags import SetupFlags
from planner.commands.app import command, err, out, print_json
from planner.commands.options import JsonOpt
from planner.commands.render import progress
from planner.errors import PlannerError, one_line
from planner.gpu_rule import GPU_HELP


@command()
@takes_setup
def check(
    gpu: Annotated[str, typer.Option("--gpu", help=f"Card to fit. {GPU_HELP}")],
    setups: Annotated[Optional[list[str]], typer.Argument(
        metavar="CONFIG_OR_STEP...", show_default=False,
        help="Setups to check: built-in config YAMLs (analytic, no torch) and step files .py (traced, cached).")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Safety margin: the budget is capacity x (1 - margin).")] = 0.05,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Baseline JSON: also fail when a peak grows by more than --tolerance.")] = None,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="Growth allowed against --baseline, a fraction (default 0.02).")] = None,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Merge these setups' figures into --baseline instead of comparing: adds new setups, replaces checked ones, keeps the others; says what it added, changed and kept.")] = False,
    prune_baseline: Annotated[bool, typer.Option("--prune-baseline", help="With --update-baseline: also remove the baseline's setups not checked now.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", min=0, help="Step files: trace in this many processes (0: one per core).")] = 0,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write a JUnit XML file (one test case per setup).")] = None,
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
) -> None:
    """Fail (exit 1) when a setup does not fit the GPU with the margin, or grew against a baseline
    (exit 2 when a setup cannot be measured; the others are still checked and reported).

    Step flags apply to every step file given. On GitHub Actions (GITHUB_ACTIONS=true) failures
    are also ::error annotations, and a table is appended to $GITHUB_STEP_SUMMARY when set.

    Example: vramplan check examples/seed004_high_res.yaml --gpu 24GB --baseline vram.json

    Example: vramplan check cfg.yaml steps/train.py --knob width=64 --gpu 24GB --junit vram.xml

    Example: vramplan check --model nets.py:make_net --input 2x1x96x96x96 --gpu 24GB
    """
    import os

    from planner import check as C
    from planner.config import check_output_path

    if junit is not None:
        check_output_path(junit, "--junit")
    assert flags is not None  # takes_setup
    # --step as given (a built-in step named as its step file, --step ldm-stage1, is resolved to it)
    for value, flag in ((dict(flags.given).get("step"), "--step"), (flags.config, "--config")):
        if value is not None:
            raise PlannerError(f"{flag}: check takes its setups as arguments (config .yaml and step file .py files)")
    if flags.model or flags.input_shape:
        if setups:
            raise PlannerError("--model: check takes either setups (configs, step files) or --model, not both")
        flags = flags.as_model_step()
        setups = [str(flags.step)]
    step_flags = flags.step_flags(jobs)  # the flags every step file given takes (planner/check.py STEP_FLAGS)
    if not setups:
        raise PlannerError("check: give the setups to check (config .yaml or step file .py), or --model FACTORY --input SHAPE")
    kw = dict(gpu=gpu, margin=margin, baseline=baseline, tolerance=tolerance, update_baseline=update_baseline,
              prune_baseline=prune_baseline, flags=step_flags, jobs=jobs)
    if any(str(s).lower().endswith(".py") for s in setups) and sys.stderr.isatty():  # CI logs: no progress bar
        prog, tick = progress(err, "tracing")
        with prog:
            res = C.run(setups, progress=tick, **kw)
    else:
        res = C.run(setups, **kw)
    if junit is not None:
        junit.write_bytes(C.junit_xml(res.outcomes, res.card, margin, res.tolerance, res.baseline_path))
    notes = C.github_annotations(res.outcomes, res.card, margin) if os.environ.get("GITHUB_ACTIONS") == "true" else []
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(C.summary_markdown(res.outcomes, res.card, margin, res.tolerance, res.baseline_path))
        except OSError as exc:
            raise PlannerError(f"GITHUB_STEP_SUMMARY: {summary!r} cannot be written ({exc.strerror or exc})") from None
    if as_json:
        data = res.to_json()
        if notes:
            data["github_annotations"] = notes
        print_json(data)
        for line in notes:  # stdout holds the JSON
            sys.stderr.write(line + "\n")
    else:
        for line in res.text_lines():
            out.print(line, markup=False)
        for line in notes:
            sys.stdout.write(line + "\n")
    for o in res.errors:  # bad input, as any: one line each on stderr (the report says the rest)
        sys.stderr.write(f"error: {one_line(o.error or '')}\n")
    if res.exit_code:
        raise typer.Exit(res.exit_code)
