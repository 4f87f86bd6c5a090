"""`vramplan estimate`: JSON keys, the verdict, no torch on the estimate path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()


def _json(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_estimate_json_keys_and_verdict():
    data = _json(["estimate", "--voxel", "64x64x32", "--no-perceptual", "--gpu", "24GB", "--json"])
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_total_bytes", "breakdown", "fits", "gpu", "profile"):
        assert key in data
    # "24GB" is a card sold as 24 GB: 24 GiB physical, budgeted against the 23.64 GiB CUDA reports
    assert data["gpu"]["memory_bytes"] == 24 * 2**30
    assert data["gpu"]["capacity_bytes"] == 25383256719  # round(23.64 * 2**30)
    assert "median" in data["gpu"]["capacity_source"]
    assert data["fits"] is (data["device_total_bytes"] <= 25383256719)
    assert data["next_step"] is None  # it fits: nothing to do
    assert data["profile"]["calibrated"] is False
    assert sum(data["breakdown"]["by_category"].values()) == data["peak_allocated_bytes"]
    assert len(data["breakdown"]["top_modules"]) == 10


def test_estimate_says_does_not_fit_with_the_shortfall():
    res = runner.invoke(app, ["estimate", "--voxel", "256x256x64", "--no-perceptual", "--gpu", "rtx4090"])
    assert res.exit_code == 0, res.output
    assert "DOES NOT FIT on NVIDIA GeForce RTX 4090" in res.stdout
    assert "GiB short" in res.stdout
    assert "uncalibrated" in res.stdout


def test_unknown_gpu_is_a_one_line_error():
    res = runner.invoke(app, ["estimate", "--gpu", "rtx9999"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error: --gpu: unknown GPU 'rtx9999'")
    assert res.output.strip().count("\n") == 0


@pytest.mark.parametrize("args", [
    ["--voxel", "64x64x32", "--no-perceptual", "--gpu", "24GB", "--json"],
    # per rank (planner/analytic/parallel.py): DDP / FSDP2 transcribed, still no torch
    ["--voxel", "64x64x32", "--no-perceptual", "--gpus", "8", "--strategy", "fsdp-grad-op", "--json"],
])
def test_estimate_path_never_imports_torch(args):
    code = (
        "import sys\n"
        "from planner.cli import main\n"
        f"sys.argv = ['vramplan', 'estimate', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO_TORCH_OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "NO_TORCH_OK" in proc.stdout


def test_issue9_exact_capacity_is_taken_literally_and_printed():
    # defect 5: "--gpu 23.55GiB" is 23.55 * 2**30 = 25286619955.2 -> 25286619955 B, used as is
    data = _json(["estimate", "--voxel", "64x64x32", "--no-perceptual", "--gpu", "exact:23.55GiB", "--json"])
    assert data["gpu"]["capacity_bytes"] == 25286619955
    assert data["gpu"]["capacity_source"].startswith("exact figure")
    res = runner.invoke(app, ["estimate", "--voxel", "64x64x32", "--no-perceptual", "--gpu", "rtx4090"])
    assert "capacity used: 23.64 GiB" in res.stdout
    assert "github.com" in res.stdout


def test_issue9_does_not_fit_names_the_biggest_single_saving_and_the_command(monkeypatch):
    # defect 3: 256x256x64 with explicit attention scores: the level-3 score matrix alone is
    # (256/4 * 256/4 * 64/4)**2 = 65536**2 entries, 16 GiB per fp32 copy; everything the
    # "attention" network holds at the peak is what flash attention never stores, and it is
    # the largest block of the breakdown, so flash attention is named.
    import planner.analytic.simulate as step_mod

    calls = []
    real = step_mod.simulate
    monkeypatch.setattr(step_mod, "simulate", lambda setup: calls.append(setup) or real(setup))
    res = runner.invoke(app, ["estimate", "--voxel", "256x256x64", "--gpu", "24GB"])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1  # the next step is read from the breakdown: no extra simulation
    out = " ".join(res.stdout.split())
    assert "DOES NOT FIT" in out
    assert "The change aimed at it: flash attention (SDPA) (quality risk: none)" in out
    assert "read from the breakdown, not simulated" in out
    assert "vramplan recommend --voxel 256x256x64 --gpu 24GB" in out
    data = _json(["estimate", "--voxel", "256x256x64", "--gpu", "24GB", "--json"])
    step = data["next_step"]
    assert step["change"] == "flash attention (SDPA)" and step["risk"] == "none"
    attention = data["breakdown"]["by_network"]["attention"]
    assert step["targeted_bytes"] == attention
    assert attention > 4 * 16 * 2**30  # at least four 65536**2 fp32 score-sized blocks
    assert step["command"] == "vramplan recommend --voxel 256x256x64 --gpu 24GB"
    assert data["gpu"]["next_step"] == step


def test_issue9_estimate_json_states_its_setup():
    # defect 2: every result states its setup (precision, shape, optimizer), JSON included
    data = _json(["estimate", "--voxel", "64x64x32", "--no-amp", "--optimizer", "sgd", "--json"])
    assert data["setup"]["config"]["data"]["voxel_size"] == [64, 64, 32]
    assert data["setup"]["config"]["device"]["mixed_precision"] is False
    summary = data["setup"]["summary"]
    assert "voxel 64x64x32" in summary and "fp32" in summary and "sgd" in summary
