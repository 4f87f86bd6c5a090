"""``--model FACTORY --input SHAPE`` on every command: it is the built-in model step file
(planner/stepfiles/model_step.py) and gives ``profile --model``'s figures to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app

NETS = '''
import torch.nn as nn

def mlp():
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
'''


@pytest.fixture()
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "cache"))
    return "nets.py:mlp"


def _json(args: list[str]) -> dict:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("precision", [[], ["--no-amp"]])
def test_estimate_model_equals_profile_model(nets: str, precision: list[str]) -> None:
    args = ["--model", nets, "--input", "8x64", *precision]
    est = _json(["estimate", *args, "--gpu", "24GB"])
    prof = _json(["profile", *args])
    # the same step, two runners: profile's own MSE loop, and the model step file with a loop's
    # variables kept until reassigned
    assert est["peak_allocated_bytes"] == prof["peak_allocated_bytes"] > 0
    assert est["setup"]["batch_size"] == 8 and est["setup"]["knobs"] == {"input": 64, "model": nets}


def test_model_on_table_recommend_check_and_plot(nets: str, tmp_path: Path) -> None:
    base = ["--model", nets, "--input", "8x64", "--gpu", "24GB"]
    res = CliRunner().invoke(app, ["table", *base, "--sweep", "batch=8,16"])
    assert res.exit_code == 0, res.output
    assert "model=nets.py:mlp, batch 8," in res.output and "model=nets.py:mlp, batch 16," in res.output
    rec = _json(["recommend", *base, "--max-batch"])
    assert rec["knob"] == "micro-batch" and rec["max"] > 8
    res = CliRunner().invoke(app, ["check", *base])
    assert res.exit_code == 0, res.output
    out = tmp_path / "fig.png"
    res = CliRunner().invoke(app, ["plot", "breakdown", *base, "--out", str(out)])
    assert res.exit_code == 0 and out.stat().st_size > 0, res.output


@pytest.mark.parametrize("args, message", [
    (["estimate", "--input", "8x64"], "--input: only used with --model"),
    (["estimate", "--model", "nets.py:mlp"], "--input: give the batch shape with --model"),
    (["estimate", "--model", "nets.py:mlp", "--input", "8x64", "--batch", "4"], "--batch: with --model the batch is"),
    (["estimate", "--model", "nets.py:mlp", "--input", "8x64", "--voxel", "8x8x8"], "--voxel: the --model step has no knob 'voxel' (valid: input, model)"),
    (["estimate", "--model", "nets.py:mlp", "--input", "8x64", "--step", "x.py"], "give either --step"),
    (["check", "a.yaml", "--model", "nets.py:mlp", "--input", "8x64", "--gpu", "8GB"], "not both"),
])
def test_model_refusals_are_one_line(nets: str, args: list[str], message: str) -> None:
    if args[0] == "estimate":
        args = [*args, "--gpu", "24GB"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
