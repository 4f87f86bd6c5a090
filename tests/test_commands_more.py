"""End-to-end CLI paths not covered elsewhere: calibrate, estimate --compare/--profile,
table --measure, recommend --max-voxel."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from planner import profiles
from planner.cli import app

runner = CliRunner()
pytest.importorskip("torch")
pytest.importorskip("monai")


def test_calibrate_writes_a_profile_that_estimate_uses(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    res = runner.invoke(app, ["calibrate", "--name", "trial", "--only", "s1 32^3 fp32", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["hardware"] is False and len(data["measurements"]) == 1
    point = data["measurements"][0]
    # the estimator is exact on this configuration: no workspace term, reserved = model
    assert point["measured_allocated_bytes"] == point["estimated_allocated_bytes"]
    assert data["terms"]["workspace_bytes"] == 0
    listed = runner.invoke(app, ["profiles", "--json"])
    assert [p["name"] for p in json.loads(listed.stdout)] == ["trial"]
    est = runner.invoke(app, ["estimate", "--voxel", "32x32x32", "--no-amp", "--profile", "trial", "--json"])
    assert est.exit_code == 0, est.output
    assert json.loads(est.stdout)["profile"]["name"] == "trial"
    assert json.loads(est.stdout)["profile"]["calibrated"] is False


def test_estimate_compare_shows_the_error_per_category():
    res = runner.invoke(app, ["estimate", "--voxel", "32x32x32", "--compare"])
    assert res.exit_code == 0, res.output
    assert "estimate vs profile:fake" in res.stdout
    assert "peak_allocated" in res.stdout and "+0.00%" in res.stdout


def test_table_measure_adds_measured_columns():
    res = runner.invoke(app, ["table", "--sweep", "amp=on,off", "--voxel", "32x32x32", "--measure", "fake", "--format", "csv"])
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0]
    assert "measured allocated (GiB, profile:fake)" in header and "estimate error" in header
    assert all(line.endswith("+0.0%") for line in res.stdout.splitlines()[1:])


def test_recommend_max_voxel():
    res = runner.invoke(app, ["recommend", "--voxel", "64x64x32", "--gpu", "12GiB", "--max-voxel", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["max_voxel"] is not None and data["device_total_bytes"] <= 12 * 2**30 * 0.95
    # the aspect ratio 2:2:1 is kept
    h, w, d = data["max_voxel"]
    assert h == w == 2 * d
