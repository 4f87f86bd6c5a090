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
    # ("Block",) twice: --checkpoint auto is a plan per traced setup (planner/measure/ckpt_plan.py), so its
    # sizes are traced, not derived; derivation applies to the classes a plan resolves to
    [("fp32", (), 1), ("amp-fp16", (), 1), ("amp-bf16", ("Block",), 1), ("fp32", ("Block",), 2)],
)
def test_derived_equals_direct_trace(precision, checkpoint, accumulation):
    # 4 setups x 5 batches = 20 (setup, batch) pairs, each derived from traces at 2, 3, 4
    # and compared with a direct trace to the byte: peak and every live storage at the peak.
    from planner.measure import traces
    from planner.step_setup import StepSetup

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
    (["estimate", "--knob", "width=3"], "--knob width: the built-in step has no knob 'width' (valid: kind, voxel,"),
    (["estimate", "--step", TEMPLATE, "--voxel", "64x64x64"], "has no knob 'voxel' (valid: depth, features, tokens, width)"),
    (["estimate", "--step", TEMPLATE, "--knob", "wdth=3"], "valid: depth, features, tokens, width"),
    (["estimate", "--step", TEMPLATE, "--precision", "fp8"], "cannot take precision 'fp8' (valid: fp32, amp-fp16,"),
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
    # checkpointing off/auto x (micro-batch, accumulation) splits of 16 x allocator as is/expandable
    # segments: 2 x 5 x 2 = 20
    assert data["considered"] == len(data["candidates"]) == 20
    assert data["evaluated"] + data["predicted"] == 20
    assert data["best"] is not None and data["best"]["changes"] == [] and data["best"]["how"] != "predicted"
    cands = data["candidates"]
    # each change alone is evaluated exactly (input, checkpoint auto, the 4 other splits, the allocator)
    alone = [c for c in cands if len(c["changes"]) <= 1]
    assert len(alone) == 7 and all(c["how"] in ("traced", "derived") and c["device_total_bytes"] for c in alone)
    for c in cands:
        if c["how"] == "predicted":
            assert c["device_total_bytes"] is None and c["predicted_device_total_bytes"] > 0
    # it fits as it is: what else is verified is what was predicted faster (planner/search.py)
    r = runner.invoke(app, ["recommend", "--step", TEMPLATE, "--knob", "width=64", "--gpu", "1GB", "--max-batch",
                            "--jobs", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["max"] >= 1 and data["device_total_bytes"] <= data["gpu"]["budget_bytes"]
    # every size the search asks for is derived from the traces at micro-batch 2, 3 and 4,
    # except 1, below the derivation points, traced directly
    assert data["traced_directly"] <= 1 and data["traces"] == 3 + data["traced_directly"] and data["derived"] >= 3


HALF_NET = '''
import torch
import torch.nn.functional as F


def networks(width: int = 64):
    return {"net": torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width)).half()}


def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=0.1)}


def batch(batch_size: int = 8, width: int = 64):
    return {"x": torch.randn(batch_size, width, device="cuda", dtype=torch.float16)}


def step(nets, opts, b, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        loss = nets["net"](b["x"]).float().pow(2).mean()
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def test_recommend_step_goes_on_past_a_setting_the_step_rejects(tmp_path):
    # the network is half already (the user's own .half()): GradScaler cannot unscale fp16
    # gradients, so autocast fp16 is rejected by vramplan's check; the search marks it failed,
    # predicts nothing from it, and recommends among the rest
    path = tmp_path / "half_step.py"
    path.write_text(HALF_NET)
    r = runner.invoke(app, ["recommend", "--step", str(path), "--gpu", "8GB", "--jobs", "1", "--freeze",
                            "batch,checkpointing,allocator", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    failed = [c for c in data["candidates"] if c["how"] == "failed"]
    assert [c["setup"]["precision"] for c in failed] == ["amp-fp16"]
    assert "GradScaler" in failed[0]["error"] and any("GradScaler" in e for e in data["failed"].values())
    assert data["best"] is not None and data["best"]["setup"]["precision"] != "amp-fp16"


def test_calibrate_step_fake_is_the_identity_and_estimate_applies_it(tmp_path, monkeypatch):
    # calibrate --step fits the step file's trace against a run on --backend. On the fake
    # backend that run is a fresh trace of the same step, so the fit is exact: workspace 0,
    # reserved = 1 x model + 0, zero residuals; the profile says basis "trace" and --step
    # estimates take it, the built-in estimator refuses it (and --step refuses an analytic one)
    from planner import profiles

    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    r = runner.invoke(app, ["calibrate", "--step", TEMPLATE, "--knob", "width=64", "--sweep", "batch=4,8",
                            "--name", "steptest", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["basis"] == "trace" and data["hardware"] is False
    assert data["terms"]["workspace_bytes"] == 0 and data["terms"]["reserved_scale"] == 1.0
    assert data["terms"]["reserved_offset_bytes"] == 0
    assert [p["name"] for p in data["measurements"]] == ["batch=4", "batch=8"]
    for p in data["measurements"]:
        assert p["measured_allocated_bytes"] == p["estimated_allocated_bytes"] > 0
        assert p["measured_reserved_bytes"] == p["modelled_reserved_bytes"]
    plain = json.loads(runner.invoke(app, ["estimate", "--step", TEMPLATE, "--knob", "width=64", "--json"]).stdout)
    r = runner.invoke(app, ["estimate", "--step", TEMPLATE, "--knob", "width=64", "--profile", "steptest", "--json"])
    assert r.exit_code == 0, r.output
    applied = json.loads(r.stdout)
    assert applied["peak_allocated_bytes"] == plain["peak_allocated_bytes"]
    assert any("profile: steptest" in n for n in applied["notes"])
    r = runner.invoke(app, ["estimate", "--profile", "steptest"])
    assert r.exit_code == 2 and "fitted for step-file traces" in r.output
    (tmp_path / "builtin.json").write_text(json.dumps({"name": "builtin", "terms": {}}))
    r = runner.invoke(app, ["estimate", "--step", TEMPLATE, "--profile", "builtin"])
    assert r.exit_code == 2 and "analytic estimator" in r.output


@pytest.mark.parametrize("args,message", [
    (["calibrate", "--step", TEMPLATE, "--grid", "g.yaml", "--name", "x"], "--grid: does not apply to --step"),
    (["calibrate", "--sweep", "batch=1,2", "--name", "x"], "--sweep: only with --step"),
    (["calibrate", "--step", TEMPLATE, "--name", "bad/name"], "--name"),
])
def test_calibrate_step_bad_input(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output, r.output


@pytest.mark.parametrize("args", [
    ["plot", "breakdown", "--step", TEMPLATE, "--x", "batch", "--out", "b.png"],
    ["plot", "breakdown", "--x", "batch", "--out", "b.png"],
])
def test_plot_x_outside_scaling_is_refused(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--x: only for `plot scaling`" in r.output, r.output


def test_max_gpus_one_gpu_suffices():
    r = runner.invoke(app, ["recommend", "--step", TEMPLATE, "--knob", "width=64", "--max-gpus", "4", "--gpu", "24GB",
                            "--jobs", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer"]["gpus"] == 1 and data["answer"]["micro_batch"] == 16 and len(data["tried"]) == 1
    assert data["verdict"]["text"].startswith("one GPU suffices")


def test_max_gpus_says_when_more_gpus_do_not_help():
    # a card smaller than the modelled CUDA context (426 MiB): nothing fits on any count. Global
    # batch 4: 1 GPU tries micro-batch 4, 2, 1; 2 GPUs (per rank 2) 2, 1 for each strategy; 4
    # GPUs (per rank 1) 1 for each; 8 does not divide 4 -> 3 + 3 x 2 + 3 = 12 traced setups
    r = runner.invoke(app, ["recommend", "--step", TEMPLATE, "--knob", "width=64", "--batch", "4", "--max-gpus", "8",
                            "--gpu", "exact:0.4GiB", "--jobs", "1", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer"] is None
    assert [(t["gpus"], t["strategy"], t["micro_batch"], t["accumulation"]) for t in data["tried"]] == [
        (1, "none", 4, 1), (1, "none", 2, 2), (1, "none", 1, 4),
        (2, "ddp", 2, 1), (2, "ddp", 1, 2), (2, "fsdp-grad-op", 2, 1), (2, "fsdp-grad-op", 1, 2),
        (2, "fsdp", 2, 1), (2, "fsdp", 1, 2), (4, "ddp", 1, 1), (4, "fsdp-grad-op", 1, 1), (4, "fsdp", 1, 1)]
    assert data["verdict"]["text"].startswith("more GPUs do not help: up to 4 GPUs nothing fits")
    assert data["verdict"]["smallest_per_rank_bytes"] == min(t["device_total_bytes"] for t in data["tried"])


@pytest.mark.parametrize("args,message", [
    (["recommend", "--max-gpus", "4", "--gpus", "2", "--strategy", "ddp"], "leave out --gpus"),
    (["recommend", "--step", TEMPLATE, "--max-gpus", "4", "--gpus", "2", "--strategy", "ddp"], "leave out --gpus"),
    (["recommend", "--step", TEMPLATE, "--max-gpus", "4", "--max-batch"], "--max-gpus: give one search at a time"),
])
def test_max_gpus_bad_input(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output, r.output
