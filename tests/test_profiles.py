"""Device profiles: least-squares fit, application to an estimate, loading errors."""

from __future__ import annotations

import pytest

from planner.calibrate import fit, fit_line
from planner.errors import PlannerError
from planner.profiles import DeviceProfile, load, save
from planner.result import PROFILE_TERM, Breakdown, MemoryReport


def test_fit_line_is_least_squares():
    # y = 2x + 1 exactly
    assert fit_line([1, 2, 3], [3, 5, 7]) == pytest.approx((2.0, 1.0))
    # single point: slope 1, intercept y - x
    assert fit_line([10], [12]) == (1.0, 2.0)
    # noisy: points (0,0), (1,1), (2,3): slope = sum((x-1)(y-4/3))/sum((x-1)^2) = (4/3 + 5/3)/2 = 1.5,
    # intercept = 4/3 - 1.5 * 1 = -1/6
    a, b = fit_line([0, 1, 2], [0, 1, 3])
    assert a == pytest.approx(1.5) and b == pytest.approx(-1 / 6)


def _point(est, meas, model_res, meas_res, ctx=None):
    return {"name": "p", "config": {}, "estimated_allocated_bytes": est, "modelled_reserved_bytes": model_res,
            "measured_allocated_bytes": meas, "measured_reserved_bytes": meas_res, "measured_context_bytes": ctx}


def test_fit_recovers_known_terms():
    # measured allocated = estimate + 64 MiB workspace; measured reserved = 1.1 * model + 32 MiB;
    # context 500 MiB measured on each point
    MiB = 2**20
    pts = [_point(e, e + 64 * MiB, r, int(1.1 * r + 32 * MiB), 500 * MiB)
           for e, r in [(1000 * MiB, 1200 * MiB), (4000 * MiB, 4600 * MiB), (9000 * MiB, 10000 * MiB)]]
    prof = fit("gpu", {"name": "test GPU"}, pts, hardware=True)
    assert prof.workspace_bytes == 64 * MiB
    assert prof.reserved_scale == pytest.approx(1.1, rel=1e-6)
    assert prof.reserved_offset_bytes == pytest.approx(32 * MiB, abs=2)
    assert prof.context_bytes == 500 * MiB
    assert prof.residuals["allocated"]["max_abs_pct"] == 0


def test_apply_adds_the_terms_and_says_so():
    rep = MemoryReport("estimate", 1000, 2000, 2000 + 7, Breakdown({"activations": 1000}, {}), "model", 7, "default")
    prof = DeviceProfile("x", {"name": "G"}, hardware=True, workspace_bytes=100, reserved_scale=2.0,
                         reserved_offset_bytes=10, context_bytes=300)
    out = prof.apply(rep)
    assert out.peak_allocated_bytes == 1100
    assert out.peak_reserved_bytes == 2 * 2000 + 10
    assert out.device_total_bytes == 4010 + 300
    assert any("calibrated on real hardware" in n for n in out.notes)


@pytest.mark.parametrize("workspace, term", [
    (100, 100),  # 1000 + 100: the categories 1000 (activations) + the term 100
    (-300, -300),  # a negative term (the engine counted more than the device allocated): 700
    (-5000, -1000),  # clamped at 0 allocated: the term applied is 0 - 1000
    (0, 0),  # no term, no entry
])
def test_apply_files_its_term_in_the_breakdown(workspace, term):
    # issue 23: `--profile fake` changed peak_allocated but not the categories (no longer its sum)
    rep = MemoryReport("estimate", 1000, 2000, 2007, Breakdown({"activations": 1000}, {"net": 1000}), "model", 7, "d")
    out = DeviceProfile("x", {"name": "G"}, hardware=True, workspace_bytes=workspace).apply(rep)
    assert out.peak_allocated_bytes == 1000 + term
    extra = {PROFILE_TERM: term} if term else {}
    assert out.breakdown.by_category == {"activations": 1000, **extra}
    assert out.breakdown.by_network == {"net": 1000, **extra}
    assert out.breakdown.total == sum(out.breakdown.by_network.values()) == out.peak_allocated_bytes


def test_fake_profile_estimate_still_sums_to_its_peak(tmp_path):
    """The shipped fake profile on an estimate through the CLI: its workspace term (read from
    profiles/fake.json) is the difference between the two peaks and the breakdown's new entry."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from planner.cli import app

    term = json.loads((Path(__file__).parents[1] / "profiles" / "fake.json").read_text())["terms"]["workspace_bytes"]
    assert term != 0
    runner = CliRunner()
    args = ["estimate", "--voxel", "32x32x32", "--no-perceptual", "--json"]
    plain = json.loads(runner.invoke(app, args).stdout)
    fake = json.loads(runner.invoke(app, [*args, "--profile", "fake"]).stdout)
    assert fake["peak_allocated_bytes"] == plain["peak_allocated_bytes"] + term
    for key in ("by_category", "by_network"):
        assert fake["breakdown"][key] == {**plain["breakdown"][key], PROFILE_TERM: term}
        assert sum(fake["breakdown"][key].values()) == fake["peak_allocated_bytes"]


def test_save_load_roundtrip_and_unknown(tmp_path):
    prof = DeviceProfile("rt", {"name": "CPU"}, hardware=False, workspace_bytes=5)
    save(prof, tmp_path)
    assert load("rt", tmp_path).workspace_bytes == 5
    with pytest.raises(PlannerError, match="unknown profile 'nope'"):
        load("nope", tmp_path)


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["measurements"].__setitem__(0, [1]), "'measurements[0]' must be an object"),
    (lambda d: d["measurements"][3].__setitem__("measured_allocated_bytes", "5"),
     "'measurements[3].measured_allocated_bytes' must be a whole number in 0.."),
    (lambda d: d["measurements"][3].__setitem__("measured_reserved_bytes", -1), "measured_reserved_bytes"),
    (lambda d: d["measurements"][3].__setitem__("config", "s1.yaml"), "'measurements[3].config' must be an object"),
    (lambda d: d["measurements"][3].pop("name"), "'measurements[3].name' must be a string"),
    (lambda d: d["measurements"][3].__setitem__("note", {"a": 1}), "'measurements[3].note' must be"),
    (lambda d: d["residuals"]["allocated"].__setitem__("max_abs_pct", "0.1"),
     "'residuals.allocated.max_abs_pct' must be a finite number"),
    (lambda d: d["residuals"].__setitem__("points", 4.5), "'residuals.points' must be a whole number"),
    (lambda d: d["device"].__setitem__("machine", ["x86_64"]), "'device.machine' must be"),
])
def test_profile_fields_are_checked_one_by_one(tmp_path, edit, fragment):
    """The shipped profile with one field broken: one PlannerError naming the file and the field
    (the measurement points and residuals included, not only the fitted terms)."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).resolve().parents[1] / "profiles" / "fake.json").read_text())
    load(str(Path(__file__).resolve().parents[1] / "profiles" / "fake.json"))  # valid as shipped
    edit(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlannerError, match="broken.json") as info:
        load(str(path))
    assert fragment in str(info.value) and "\n" not in str(info.value)
