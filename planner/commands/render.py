"""What the commands print around a figure: progress bars, verdict lines, the terms outside
the trace, the setup line of a step file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.step_setup import StepSetup


def progress(err: Any, what: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn(f"{what} [progress.description]{{task.description}}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=getattr(err, "rich", err), transient=True)
    task = prog.add_task("", total=None)

    def tick(done: int, total: int, label: str) -> None:
        prog.update(task, completed=done, total=total, description=label[:60])

    return prog, tick


def print_verdict(v: Any, report: Any, ss: StepSetup, out: Any) -> None:
    """The built-in kinds' verdict line (planner.analytic.estimate.Verdict); the next step of a
    step file is `recommend --step`."""
    style = "bold green" if v.fits else "bold red"
    out.print(f"[{style}]{v.sentence()}[/{style}] (device_total {report.device_total_bytes / 2**30:.2f} GiB)")
    out.print(f"[dim]{v.gpu.capacity_note()}[/dim]")
    from planner.band import band_line

    out.print(band_line(report, v.gpu), markup=False)
    if not v.fits:
        import shlex

        # the --gpu as typed: an exact capacity's key is rounded to 0.01 GiB
        out.print(f"next: vramplan recommend --step {ss.path} --gpu {shlex.quote(v.gpu.given or v.gpu.key)}",
                  markup=False)


def render_step(report: Any, ss: StepSetup, out: Any, title: str) -> None:
    from planner.report.terminal import render_report

    render_report(report, None, out, title=title)
    out.print("setup: " + ss.label(), markup=False)


def print_library_terms(report: Any, card: Any, out: Any) -> None:
    from planner.analytic.estimate import library_terms
    from planner.band import band_line
    from planner.workspaces import render_lines

    out.print("Outside the trace (sourced, uncalibrated; listed, not added to device_total; "
              "the context line is the generation's reading where known):")
    for line in render_lines(library_terms(report, card)):
        out.print(f"  {line}", markup=False)  # sources quote file paths and URLs
    out.print(band_line(report, card), markup=False)


def library_terms_json(report: Any, card: Any) -> dict:
    from planner.analytic.estimate import library_terms

    terms = library_terms(report, card)
    return {
        "included_in_device_total": False,
        "basis": "sourced, uncalibrated (planner/workspaces.py); a GPU profile measures them",
        "terms": [{"name": t.name, "bytes": t.bytes, "source": t.source, "calibrated": t.calibrated,
                   "note": t.note} for t in terms],
        "total_bytes": sum(t.bytes for t in terms),
    }


def write_setup(path: Path, setup: Any) -> None:
    """recommend --write: the full configuration as YAML; a write error is one line."""
    import yaml

    from planner.report.table import write_text
    from planner.spec import spec_to_dict

    write_text(path, yaml.safe_dump(spec_to_dict(setup), sort_keys=False), "--write")


def default_backend() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "fake"


def step_profile(name: str | None) -> Any:
    """--profile NAME for a --step command: a profile fitted by ``calibrate --step``."""
    if not name:
        return None
    from planner import profiles

    return profiles.load_for(name, "trace")
