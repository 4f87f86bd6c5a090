"""`vramplan estimate`: JSON keys, the verdict, no torch on the estimate path."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert data["gpu"]["memory_bytes"] == 24 * 10**9  # "24GB" is decimal
    assert data["fits"] is (data["device_total_bytes"] <= 24 * 10**9)
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
    assert res.output.strip().startswith("error: unknown GPU 'rtx9999'")
    assert res.output.strip().count("\n") == 0


def test_estimate_path_never_imports_torch():
    code = (
        "import sys\n"
        "from planner.cli import main\n"
        "sys.argv = ['vramplan', 'estimate', '--voxel', '64x64x32', '--no-perceptual', '--gpu', '24GB', '--json']\n"
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
