"""`vramplan recommend`: equals brute force on small spaces; the seed-004 scenario fits."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from planner.analytic.cost import seconds_per_sample
from planner.analytic.estimate import estimate
from planner.cli import app
from planner.config import Overrides, resolve_setup
from planner.gpus import parse_gpu
from planner.recommend import _order_key, knob_settings, max_batch, recommend

ALL = {"amp", "batch", "checkpointing", "flash", "attention", "nonlocal", "perceptual", "discriminator", "channels", "patch", "optimizer"}


def brute_force(setup, gpu, margin, prefer, freeze):
    """Exact estimate of every combination; the best fitting one by the same order."""
    budget = gpu.memory_bytes * (1 - margin)
    knobs = knob_settings(setup, gpu, freeze)
    fitting = []
    for combo in itertools.product(*knobs):
        s = setup
        for st in combo:
            s = st.apply(s)
        rep = estimate(s)
        if rep.device_total_bytes <= budget:
            changed = [c for c in combo if c.label != "as is"]
            fitting.append(type("C", (), {
                "tier": max((c.tier for c in changed), default=0), "changes": len(changed),
                "predicted_seconds": seconds_per_sample(s, rep, gpu), "labels": [c.label for c in changed]})())
    fitting.sort(key=_order_key(prefer))
    return fitting[0].labels if fitting else None


@pytest.mark.parametrize("prefer", ["risk", "speed", "quality"])
@pytest.mark.parametrize("exhaustive", [True, False])
def test_small_space_equals_brute_force(prefer, exhaustive):
    setup = resolve_setup(None, Overrides(voxel="128x128x64", batch=2, amp=False))
    gpu = parse_gpu("6GiB")
    freeze = ALL - {"amp", "checkpointing", "flash", "perceptual", "batch"}
    rec = recommend(setup, gpu, 0.05, prefer, freeze, exhaustive=exhaustive)
    expected = brute_force(setup, gpu, 0.05, prefer, freeze)
    assert expected is not None
    assert rec.best is not None and rec.best.labels == expected


def test_nothing_fits_names_the_card_it_would_need():
    setup = resolve_setup(None, Overrides(voxel="128x128x64"))
    rec = recommend(setup, parse_gpu("1GB"), 0.05, "risk", ALL - {"amp"})
    assert rec.best is None
    assert rec.smallest.exact.device_total_bytes > 10**9
    assert rec.needed_gpu is not None and rec.needed_gpu.memory_bytes * 0.95 >= rec.smallest.exact.device_total_bytes


def test_max_batch_is_the_largest_that_fits():
    setup = resolve_setup(None, Overrides(voxel="64x64x64", perceptual=False))
    gpu = parse_gpu("12GiB")
    b, rep = max_batch(setup, gpu)
    budget = gpu.memory_bytes * 0.95
    assert b >= 1 and rep.device_total_bytes <= budget
    over = estimate(resolve_setup(None, Overrides(voxel="64x64x64", perceptual=False, batch=b + 1)))
    assert over.device_total_bytes > budget


def test_seed004_scenario_fits_and_the_profiler_confirms():
    """Seed 004's "默认" setup (batch 4, no AMP, perceptual on) at 256x256x64 on a 24 GB card."""
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from planner.measure.profile import profile

    setup = resolve_setup(None, Overrides(voxel="256x256x64", batch=4, amp=False))
    gpu = parse_gpu("24GB")
    rec = recommend(setup, gpu)
    assert rec.considered >= 10_000
    assert rec.best is not None
    budget = gpu.memory_bytes * 0.95
    measured = profile(rec.best.setup, "fake")
    assert measured.device_total_bytes <= budget
    assert measured.peak_allocated_bytes == pytest.approx(rec.best.exact.peak_allocated_bytes, rel=0.02)


def test_cli_json_and_write(tmp_path):
    out = tmp_path / "rec.yaml"
    res = CliRunner().invoke(app, ["recommend", "--voxel", "128x128x64", "--gpu", "8GiB", "--json", "--write", str(out),
                                   "--freeze", "channels,attention,patch,optimizer"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["recommended"]["device_total_bytes"] <= 8 * 2**30 * 0.95
    assert out.read_text().startswith("kind: ldm-stage1")
    bad = CliRunner().invoke(app, ["recommend", "--freeze", "colour"])
    assert bad.exit_code == 2 and "unknown knob 'colour'" in bad.output
