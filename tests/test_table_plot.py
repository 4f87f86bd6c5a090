"""Tables against golden files; figures checked through matplotlib's objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.config import Overrides, resolve_setup
from planner.gpus import parse_gpu
from planner.report import plot as P
from planner.report import table as T
from planner.errors import PlannerError

GOLDEN = Path(__file__).parent / "golden"
SWEEP = ["table", "--sweep", "batch=1,2", "--sweep", "amp=on,off", "--voxel", "32x32x32", "--gpu", "24GB", "--gpu", "rtx3060"]


@pytest.mark.parametrize("fmt", ["markdown", "csv", "html", "latex", "json"])
def test_table_formats_match_golden(fmt):
    # regenerate with: vramplan table <SWEEP args> --format FMT --out tests/golden/sweep.FMT
    res = CliRunner().invoke(app, [*SWEEP, "--format", fmt])
    assert res.exit_code == 0, res.output
    assert res.stdout == (GOLDEN / f"sweep.{fmt}").read_text()


def test_seed004_table_matches_golden():
    res = CliRunner().invoke(app, ["table", "--seed004", "--gpu", "24GB"])
    assert res.exit_code == 0, res.output
    assert res.stdout == (GOLDEN / "seed004.markdown").read_text()


def test_sweep_errors():
    with pytest.raises(PlannerError, match="unknown knob 'colour'"):
        T.parse_sweeps(["colour=red"])
    with pytest.raises(PlannerError, match="must be on or off"):
        T.parse_sweeps(["amp=maybe"])
    assert T.parse_sweeps(["channels=32,64,64/16,32,64"])[0][1][1] == ("16,32,64", "16,32,64")


def _reports(n_rows):
    from planner.analytic.estimate import estimate

    return [estimate(resolve_setup(None, Overrides(voxel="32x32x32", batch=b))) for b in range(1, n_rows + 1)]


def test_breakdown_figure_content():
    reps = _reports(2)
    gpus = [parse_gpu("24GB"), parse_gpu("rtx3060")]
    fig = P.breakdown_figure(["b1", "b2"], reps, gpus)
    ax = fig.axes[0]
    # 5 categories + allocator overhead + context, one bar per configuration each
    assert len(ax.patches) == 7 * 2
    # the stacked bars add up to the device total
    tops = [max(p.get_y() + p.get_height() for p in ax.patches if abs(p.get_x() + p.get_width() / 2 - i) < 0.5) for i in range(2)]
    assert tops == pytest.approx([r.device_total_bytes / 2**30 for r in reps])
    lines = sorted(line.get_ydata()[0] for line in ax.get_lines())
    # each card's line is at the capacity CUDA reports (what verdicts use), not the physical size
    assert lines == pytest.approx(sorted(g.capacity_bytes / 2**30 for g in gpus))
    assert "GiB" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b1", "b2"]


def test_scaling_figure_marks_crossings():
    xs = [1e5, 1e6, 1e7]
    ys = [1 * 2**30, 10 * 2**30, 100 * 2**30]
    # "24.0GiB" is an exact capacity of 24 GiB ("24GiB" would be the marketed class, 23.64 GiB)
    fig = P.scaling_figure({"cfg": (xs, ys)}, [parse_gpu("exact:24GiB")], "voxels")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # y = x / 1e5 GiB in log-log: crosses 24 GiB at x = 2.4e6
    assert P.crossings(xs, [y / 2**30 for y in ys], 24.0) == pytest.approx([2.4e6])
    marks = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(2.4e6)


def test_timeline_figure_from_the_profiler(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from planner.report.scaling import timeline_data

    setup = resolve_setup(None, Overrides(voxel="32x32x32", perceptual=False))
    points, phases, peak_i = timeline_data(setup)
    fig = P.timeline_figure(points, phases, peak_i)
    ax = fig.axes[0]
    assert len(ax.collections) == 5  # one stacked band per category
    peak_total = sum(points[peak_i][1].values())
    notes = [t for t in ax.texts if t.get_text().startswith("peak")]
    assert notes and f"{peak_total / 2**30:.2f}" in notes[0].get_text()
    names = {p[1] for p in phases}
    assert {"generator forward", "generator backward", "discriminator forward"} <= names
    out = tmp_path / "t.svg"
    res = CliRunner().invoke(app, ["plot", "timeline", "--voxel", "32x32x32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().lstrip().startswith("<?xml")
