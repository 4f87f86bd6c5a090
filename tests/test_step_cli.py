"""--step through the commands, and batch derivation against direct traces (issue 10)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from planner.cli import app

TEMPLATE = "examples/steps/template.py"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "traces"))


@pytest.mark.parametrize(
    "precision,checkpoint,accumulation",
    [("fp32", (), 1), ("amp-fp16", (), 1), ("amp-bf16", ("auto",), 1), ("fp32", ("Block",), 2)],
)
def test_derived_equals_direct_trace(precision, checkpoint, accumulation):
    # 4 setups x 5 batches = 20 (setup, batch) pairs, each derived from traces at 2, 3, 4
    # and compared with a direct trace to the byte: peak and every live storage at the peak.
    from planner.measure import traces
    from planner.steps import StepSetup

    s = StepSetup(TEMPLATE, precision=precision, checkpoint=checkpoint, accumulation=accumulation,
                  knobs=(("width", 64), ("tokens", 64)))
    d = traces.derivation_for(s, jobs=1)
    assert d is not None
    for b in (1, 5, 7, 9, 12):
        direct = traces.trace(replace(s, batch_size=b), use_cache=False)
        derived = d.record_at(b)
        assert derived.tracker.peak_bytes == direct.tracker.peak_bytes, b
        assert sorted(i.nbytes for i in derived.tracker.live_at_peak) == sorted(i.nbytes for i in direct.tracker.live_at_peak)


def test_estimate_step_json_states_setup():
    r = runner.invoke(app, ["estimate", "--step", TEMPLATE, "--knob", "width=64", "--precision", "amp-bf16",
                            "--batch", "4", "--gpu", "8GB", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["source"] == "estimate:trace"
    assert data["step_setup"]["precision"] == "amp-bf16" and data["step_setup"]["batch_size"] == 4
    assert data["setup"]["knobs"]["width"] == 64 and data["setup"]["effective_batch"] == 4
    assert data["fits"] is True
    assert any("by trace" in n for n in data["notes"])


@pytest.mark.parametrize("args,needle", [
    (["estimate", "--knob", "width=3"], "--knob: only with --step"),
    (["estimate", "--step", TEMPLATE, "--voxel", "64x64x64"], "--voxel: does not apply to --step"),
    (["estimate", "--step", TEMPLATE, "--knob", "wdth=3"], "valid: depth, features, tokens, width"),
    (["estimate", "--step", TEMPLATE, "--precision", "fp8"], "--precision: got 'fp8'"),
    (["estimate", "--step", TEMPLATE, "--checkpoint", "Nope"], "no module of class 'Nope'"),
    (["estimate", "--step", "nope.py"], "no such file"),
    (["recommend", "--step", TEMPLATE, "--max-knob", "nope"], "not an integer knob"),
    (["recommend", "--step", TEMPLATE, "--write", "x.yaml"], "--write: does not apply to --step"),
    (["table", "--step", TEMPLATE, "--measure", "fake"], "--measure: does not apply to --step"),
])
def test_step_bad_input_is_one_line_exit_2(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_table_sweeps_vramplan_and_file_knobs():
    r = runner.invoke(app, ["table", "--step", TEMPLATE, "--sweep", "width=32,64", "--sweep", "precision=fp32,amp-bf16",
                            "--batch", "2", "--gpu", "8GB", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 32") or line.startswith("| 64")]
    assert len(rows) == 4


def test_recommend_step_and_max_batch():
    r = runner.invoke(app, ["recommend", "--step", TEMPLATE, "--knob", "width=64", "--gpu", "8GB", "--jobs", "1",
                            "--freeze", "precision", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    # checkpointing off/auto x (micro-batch, accumulation) splits of 16: 2 x 5 = 10
    assert data["evaluated"] == 10
    assert data["best"] is not None and data["best"]["changes"] == []
    r = runner.invoke(app, ["recommend", "--step", TEMPLATE, "--knob", "width=64", "--gpu", "1GB", "--max-batch",
                            "--jobs", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["max"] >= 1 and data["device_total_bytes"] <= data["gpu"]["budget_bytes"]
    # every size the search asks for is derived from the traces at micro-batch 2, 3 and 4
    assert (data["traces"], data["traced_directly"]) == (3, 0) and data["derived"] >= 3
