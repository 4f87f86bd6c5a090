"""The CLI through typer's CliRunner: output, --json keys, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_gpus_lists_the_catalog():
    res = runner.invoke(app, ["gpus"])
    assert res.exit_code == 0
    assert "rtx4090" in res.stdout and "h100-sxm" in res.stdout
    rows = _json(runner.invoke(app, ["gpus", "--json"]))
    r4090 = next(r for r in rows if r["key"] == "rtx4090")
    assert r4090["memory_bytes"] == 24 * 2**30
    assert r4090["source"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["profile", "--voxel", "250x256x64"], "data.voxel_size: [250, 256, 64] must be divisible by 4"),
        (["profile", "--voxel", "abc"], "--voxel: 'abc' is not a shape"),
        (["profile", "--channels", "24,48,64"], "not divisible by norm_num_groups=16"),
        (["profile", "--attention", "F,T"], "autoencoder.attention_levels: needs 3 entries"),
        (["profile", "--kind", "ldm-stage2", "--checkpointing"], "--checkpointing: applies to kind ldm-stage1 only"),
        (["profile", "--config", "does-not-exist.yaml"], "--config: no such file"),
        (["profile", "--input", "2x1x8x8x8"], "--input: only used with --model"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, fragment):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_console_script_usage_errors_are_one_line_exit_2():
    # an unknown flag is a usage error from the option parser; main() keeps it to one line
    proc = subprocess.run(
        [sys.executable, "-c", "from planner.cli import main; main()", "profile", "--no-such-flag"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "--no-such-flag" in proc.stderr


pytest.importorskip("torch")
pytest.importorskip("monai")


def test_profile_json_small_volume():
    data = _json(runner.invoke(app, ["profile", "--voxel", "32x32x32", "--backend", "fake", "--json"]))
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_total_bytes", "breakdown"):
        assert key in data
    cats = data["breakdown"]["by_category"]
    assert set(cats) == {"parameters", "gradients", "optimizer_state", "activations", "temporaries"}
    # the categories partition the allocated peak
    assert sum(cats.values()) == data["peak_allocated_bytes"]
    assert data["peak_reserved_bytes"] >= data["peak_allocated_bytes"]
    assert data["device_total_bytes"] == data["peak_reserved_bytes"] + data["context_bytes"]
    assert {"autoencoder", "discriminator"} <= set(data["breakdown"]["by_network"])
    assert data["params"]["autoencoder"] > 0
    assert any("not on a GPU" in n for n in data["notes"])


def test_profile_table_output():
    res = runner.invoke(app, ["profile", "--voxel", "32x32x32", "--no-perceptual", "--backend", "fake"])
    assert res.exit_code == 0, res.output
    for text in ("peak_allocated", "peak_reserved", "device_total", "by category", "by network", "optimizer_state"):
        assert text in res.stdout


def test_profile_custom_model(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    data = _json(
        runner.invoke(
            app, ["profile", "--model", "tiny_models:tiny_conv_net", "--input", "2x1x16x16x16", "--no-amp", "--json"]
        )
    )
    assert data["params"] == {"model": 1 * 8 * 27 + 8 + 8 + 8 + 8 * 1 * 27 + 1}
    assert data["peak_allocated_bytes"] > 0
    bad = runner.invoke(app, ["profile", "--model", "tiny_models:not_a_module", "--input", "2x1x16x16x16"])
    assert bad.exit_code == 2 and "not an nn.Module" in bad.output
    bad = runner.invoke(app, ["profile", "--model", "tiny_models:tiny_conv_net", "--input", "2x3x16x16x16"])
    assert bad.exit_code == 2 and "--input: the model rejects shape" in bad.output
