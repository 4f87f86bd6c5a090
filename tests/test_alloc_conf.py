"""Issue 12: allocator settings from --alloc-conf, the YAML key device.alloc_conf and
PYTORCH_CUDA_ALLOC_CONF, reflected in reserved memory, fragmentation and recommend."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from planner.allocator import parse_alloc_conf, replay
from planner.analytic.simulate import simulate
from planner.cli import app
from planner.config import Overrides, resolve_setup

runner = CliRunner()
SMALL = ["--voxel", "64x64x32"]


def _est(args, env=None):
    res = runner.invoke(app, ["estimate", *SMALL, *args, "--json"], env=env)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_flag_changes_reserved_as_the_replay_says(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    default = _est([])
    expandable = _est(["--alloc-conf", "expandable_segments:True"])
    # the same simulated events replayed through the allocator model with each setting
    res = simulate(resolve_setup(None, Overrides(voxel="64x64x32")))
    want_default = replay(res.events, res.iteration2_start)
    want_exp = replay(res.events, res.iteration2_start, parse_alloc_conf("expandable_segments:True"))
    assert default["peak_reserved_bytes"] == want_default.peak_reserved_bytes
    assert expandable["peak_reserved_bytes"] == want_exp.peak_reserved_bytes
    assert expandable["fragmentation_bytes"] == want_exp.fragmentation_bytes
    # expandable segments map 20 MiB pages instead of caching whole segments: less reserved,
    # less fragmentation (644 -> 604 MiB and 157 -> 47 MiB on this step, tests/test_allocator_settings.py)
    assert expandable["peak_reserved_bytes"] < default["peak_reserved_bytes"]
    assert expandable["fragmentation_bytes"] < default["fragmentation_bytes"]
    # the allocated peak is the tensors', untouched by the allocator
    assert expandable["peak_allocated_bytes"] == default["peak_allocated_bytes"]
    assert expandable["alloc_conf"] == "expandable_segments:True" and default["alloc_conf"] == "default"
    assert expandable["device_total_bytes"] - expandable["peak_reserved_bytes"] == expandable["context_bytes"]


def test_precedence_environment_then_yaml_then_flag(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {voxel_size: [64, 64, 32]}\ndevice: {alloc_conf: 'max_split_size_mb:128'}\n")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert resolve_setup(None, Overrides()).device.alloc_conf == "expandable_segments:True"
    assert resolve_setup(cfg, Overrides()).device.alloc_conf == "max_split_size_mb:128"
    assert resolve_setup(cfg, Overrides(alloc_conf="roundup_power2_divisions:4")).device.alloc_conf == "roundup_power2_divisions:4"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    assert resolve_setup(None, Overrides()).device.alloc_conf == ""


def test_bad_settings_are_one_line_naming_where_they_came_from(tmp_path):
    res = runner.invoke(app, ["estimate", *SMALL], env={"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:bad"})
    assert res.exit_code == 2
    assert res.stderr.startswith("error: PYTORCH_CUDA_ALLOC_CONF (environment): max_split_size_mb")
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["estimate", *SMALL, "--alloc-conf", "no_such_key:1"], env={})
    assert res.exit_code == 2 and "device.alloc_conf" in res.stderr and "no_such_key" in res.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("device: {alloc_conf: 3}\n")
    res = runner.invoke(app, ["estimate", "--config", str(cfg)], env={})
    assert res.exit_code == 2 and "device.alloc_conf" in res.stderr


def test_text_states_the_settings_and_fragmentation(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    res = runner.invoke(app, ["estimate", *SMALL, "--alloc-conf", "expandable_segments:True"])
    assert res.exit_code == 0, res.output
    assert "alloc_conf expandable_segments:True" in res.stdout  # the setup line
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in res.stdout
    # issue 23: the cache's state when the live tensors peak, on its own line after the table, not as an
    # indented term of the sum (the reserved-peak figure printed ~all of reserved and read as if it added up)
    data = json.loads(runner.invoke(app, ["estimate", *SMALL, "--alloc-conf", "expandable_segments:True",
                                          "--json"]).stdout)
    free, largest = data["free_at_allocated_peak_bytes"], data["largest_free_block_bytes"]
    assert 0 <= largest <= free <= data["peak_reserved_bytes"]  # a free block is part of the free cache
    assert "fragmentation at the reserved peak" not in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("allocator cache when the live tensors peak"))
    assert "not a term of the sum above" in line and f"({free:,} B) reserved but free" in line
    assert "largest free block" in line and f"({largest:,} B)" in line


def test_recommend_takes_expandable_segments_when_fragmentation_breaks_the_fit(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    # default stage-1 setup (96x96x64): device total 4.742 GiB with the default allocator,
    # ~0.6 GiB less with expandable segments (less fragmentation); an exact 4.5 GiB card
    # with no margin fits it only with expandable segments once the model's own knobs
    # that would also fit (flash attention, checkpointing, batch, AMP) are frozen
    base = _est_default()
    exp = _est_default(["--alloc-conf", "expandable_segments:True"])
    assert exp["device_total_bytes"] <= 4.5 * 2**30 < base["device_total_bytes"]
    res = runner.invoke(app, ["recommend", "--gpu", "exact:4.5GiB", "--margin", "0", "--freeze",
                              "flash,checkpointing,batch,amp", "--json", "--fit-at", "point"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["recommended"]["changes"] == ["allocator expandable_segments:True"]
    # by default recommend fits the top of the band (planner/band.py), where the allocator term
    # (reserved + its overhead again) shrinks with expandable segments too: a card exactly the
    # top of the expandable-segments band fits it and not the default allocator's
    top_exp, top_base = exp["device_band"]["high_bytes"], base["device_band"]["high_bytes"]
    assert top_exp < top_base
    res = runner.invoke(app, ["recommend", "--gpu", f"exact:{top_exp}B", "--margin", "0", "--freeze",
                              "flash,checkpointing,batch,amp", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["recommended"]["changes"] == ["allocator expandable_segments:True"]
    assert data["recommended"]["tier"] == "none"
    assert data["recommended"]["diff"] == ["device.alloc_conf:  -> expandable_segments:True"]


def _est_default(args=()):
    res = runner.invoke(app, ["estimate", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_profile_reflects_the_setting():
    from planner.measure.profile import profile

    base = resolve_setup(None, Overrides(voxel="32x32x32", perceptual=False))
    exp = resolve_setup(None, Overrides(voxel="32x32x32", perceptual=False, alloc_conf="expandable_segments:True"))
    a, b = profile(base, "fake"), profile(exp, "fake")
    assert a.peak_allocated_bytes == b.peak_allocated_bytes
    assert b.alloc_conf == "expandable_segments:True" and a.alloc_conf == ""
    assert b.peak_reserved_bytes != a.peak_reserved_bytes


def test_estimate_lists_the_library_terms_outside_the_trace(monkeypatch):
    # issue 12: the workspaces the tracker cannot see, as labelled, sourced, uncalibrated terms
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    data = _est(["--gpu", "rtx4090", "--flash-attention"])
    lib = data["library_terms"]
    assert lib["included_in_device_total"] is False
    terms = {t["name"]: t for t in lib["terms"]}
    assert all(not t["calibrated"] and t["source"] for t in terms.values())
    # cuBLAS on sm89 (RTX 4090): ":4096:2:16:8" = 4096 KiB x 2 + 16 KiB x 8 = 8,519,680 B per
    # (handle, stream); forward and autograd's backward thread: x 2 = 17,039,360 B
    assert terms["cuBLAS workspaces"]["bytes"] == 17_039_360
    # the largest conv: the decoder's full-resolution 64 -> 64 channel conv at 64x64x32 in
    # fp16, input + output = 2 x 64*64*32 * 64 * 2 B = 33,554,432 B, times the assumed 1.0
    assert data["extra"]["workspace_inputs"]["conv_io_max_bytes"] == 33_554_432
    assert terms["cuDNN conv workspace"]["bytes"] == 33_554_432
    # flash attention at the bottom level (16x16x8 = 2048 positions, 64 channels, 1 head)
    assert [1, 1, 2048, 2048, 64, "float16", "flash"] in data["extra"]["workspace_inputs"]["attention_calls"]
    assert terms["attention backward scratch"]["bytes"] > 0
    assert lib["total_bytes"] == sum(t["bytes"] for t in terms.values())
    res = runner.invoke(app, ["estimate", *SMALL, "--gpu", "rtx4090"])
    assert "Outside the trace (sourced, uncalibrated" in res.stdout and "cuBLAS workspaces" in res.stdout


def test_profile_and_estimate_see_the_same_workspace_inputs():
    # the tracker records the largest conv and every SDPA call with a backward, as the
    # estimator does, so both engines list the same library terms for the same step
    from planner.analytic.estimate import estimate
    from planner.measure.profile import profile

    setup = resolve_setup(None, Overrides(voxel="64x64x32", flash_attention=True, perceptual=False))
    est, prof = estimate(setup), profile(setup, "fake")
    a, b = est.extra["workspace_inputs"], prof.extra["workspace_inputs"]
    assert a["conv_io_max_bytes"] == b["conv_io_max_bytes"] == 33_554_432  # 2 x 64*64*32 * 64 ch * 2 B
    assert sorted(map(tuple, a["attention_calls"])) == sorted(map(tuple, b["attention_calls"]))
    assert (1, 1, 2048, 2048, 64, "float16", "flash") in map(tuple, b["attention_calls"])


def test_garbage_collection_threshold_acts_on_the_given_card_and_says_so_without_one(monkeypatch):
    # garbage_collect_cached_blocks frees cached blocks once reserved passes threshold x the
    # card's allowed memory: without a card it cannot act, and the report says so
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    conf = "garbage_collection_threshold:0.5"
    default = _est([])
    no_card = _est(["--alloc-conf", conf])
    assert no_card["peak_reserved_bytes"] == default["peak_reserved_bytes"]
    assert any(n.startswith("garbage_collection_threshold: not applied") for n in no_card["notes"])
    # a card exactly as large as the default reserved peak: the threshold is half of it
    cap = default["peak_reserved_bytes"]
    with_card = _est(["--alloc-conf", conf, "--gpu", f"exact:{cap}B"])
    res = simulate(resolve_setup(None, Overrides(voxel="64x64x32")))
    want = replay(res.events, res.iteration2_start, parse_alloc_conf(conf), capacity_bytes=cap)
    assert with_card["peak_reserved_bytes"] == want.peak_reserved_bytes < default["peak_reserved_bytes"]
    assert not any(n.startswith("garbage_collection_threshold") for n in with_card["notes"])


def test_recommend_write_error_is_one_line(tmp_path, monkeypatch):
    # the YAML of --write goes through the one write helper: an OS error is one line, exit 2
    import planner.report.table as T

    def boom(path, text, flag):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T.Path, "write_text", lambda self, text: boom(self, text, "--write"))
    res = runner.invoke(app, ["recommend", *SMALL, "--gpu", "80GB", "--write", str(tmp_path / "r.yaml")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"error: --write: cannot write '{tmp_path / 'r.yaml'}' (No space left on device)"]


def test_seed004_table_rows_honour_the_environment(monkeypatch):
    # the seed-004 rows are built from fixed mappings, not resolve_setup: the environment
    # variable must reach them as it reaches every other setup
    from planner.config import setup_from_dict, with_environment
    from planner.report.seed004 import seed004_configs

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cfg = seed004_configs()[0][1]
    assert setup_from_dict(with_environment(cfg)).device.alloc_conf == "expandable_segments:True"
    res = runner.invoke(app, ["table", "--seed004", "--format", "json"])
    assert res.exit_code == 0, res.output
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    plain = runner.invoke(app, ["table", "--seed004", "--format", "json"])
    assert json.loads(res.stdout) != json.loads(plain.stdout)  # reserved and device totals moved
