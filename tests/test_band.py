"""device_total as a band while uncalibrated (planner/band.py): the terms derived by hand on a
made-up report, the three verdicts, the eager/old-stack context, and a hardware profile
collapsing the band. Torch-free."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from planner.band import EAGER_CONTEXT_BYTES, device_band
from planner.cli import app
from planner.result import DEFAULT_CONTEXT_BYTES, DEFAULT_CONTEXT_SOURCE, GIB, Breakdown, MemoryReport

MIB = 2**20


def _report(allocated=8 * GIB, reserved=9 * GIB, context=DEFAULT_CONTEXT_BYTES, basis=DEFAULT_CONTEXT_SOURCE):
    return MemoryReport(source="estimate", peak_allocated_bytes=allocated, peak_reserved_bytes=reserved,
                        device_total_bytes=reserved + context, breakdown=Breakdown({}, {}),
                        reserved_basis="modelled", context_bytes=context, context_basis=basis)


def test_band_terms_lazy_loading():
    band = device_band(_report(), workspace_bytes=320 * MIB)
    t = {x.name: (x.low, x.point, x.high) for x in band.terms}
    # allocator: allocated 8 GiB .. reserved 9 GiB + (9 - 8) GiB again = 10 GiB
    assert t["allocator (reserved)"] == (8 * GIB, 9 * GIB, 10 * GIB)
    # context: 256 MiB (InvokeAI#9413) .. 666,632,192 B (every module loaded, #86509); point 426 MiB
    assert t["CUDA context"] == (256 * MIB, 426 * MIB, 666_632_192)
    assert t["library workspaces"] == (0, 0, 320 * MIB)
    assert band.low == 8 * GIB + 256 * MIB
    assert band.point == 9 * GIB + 426 * MIB
    assert band.high == 10 * GIB + 666_632_192 + 320 * MIB


def test_three_verdicts():
    band = device_band(_report(), workspace_bytes=320 * MIB)
    low, high = 8 * GIB + 256 * MIB, 10 * GIB + 666_632_192 + 320 * MIB
    assert band.verdict(high)[0] == "fits"  # exactly the top still fits
    kind, sentence = band.verdict(high - 1)
    assert kind == "risky" and sentence.startswith("fits only at the low end of the band (risky: 0.00 GiB over")
    # each term's share of the margin above the point: allocator +1 GiB, context +(666,632,192 - 426 MiB), workspaces
    assert "allocator (reserved) up to +1.00 GiB" in sentence
    assert f"CUDA context up to +{(666_632_192 - 426 * MIB) / GIB:.2f} GiB" in sentence
    assert "library workspaces up to +0.31 GiB" in sentence  # 320 MiB
    assert band.verdict(low)[0] == "risky"
    assert band.verdict(low - 1)[0] == "does not fit"


def test_eager_or_old_cuda_context():
    for band in (device_band(_report(), 0, module_loading="EAGER"), device_band(_report(), 0, cuda_version=(11, 6))):
        ctx = next(x for x in band.terms if x.name == "CUDA context")
        # eager: 666,632,192 B (#86509) .. 1343 MiB (HF model_memory_anatomy.md), the 426 MiB point below it
        assert (ctx.low, ctx.high) == (min(EAGER_CONTEXT_BYTES, 426 * MIB), 1343 * MIB) == (426 * MIB, 1343 * MIB)
    ctx = next(x for x in device_band(_report(), 0, cuda_version=(11, 7)).terms if x.name == "CUDA context")
    assert (ctx.low, ctx.high) == (256 * MIB, EAGER_CONTEXT_BYTES)


def test_a_hardware_profile_collapses_the_band():
    band = device_band(_report(context=600 * MIB, basis="measured: mean of 2 mem_get_info readings on H100"),
                       workspace_bytes=320 * MIB)
    assert band.calibrated and band.low == band.point == band.high == 9 * GIB + 600 * MIB
    assert "calibrated: a GPU profile measured its terms" in band.verdict(20 * GIB)[1]


def test_estimate_prints_and_emits_the_band():
    r = CliRunner().invoke(app, ["estimate", "--voxel", "64x64x64", "--gpu", "24GB", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    band = data["device_band"]
    alloc = next(t for t in band["terms"] if t["name"] == "allocator (reserved)")
    assert (alloc["low_bytes"], alloc["point_bytes"]) == (data["peak_allocated_bytes"], data["peak_reserved_bytes"])
    assert alloc["high_bytes"] == 2 * data["peak_reserved_bytes"] - data["peak_allocated_bytes"]
    assert band["point_bytes"] == data["device_total_bytes"]  # reserved + the 426 MiB context
    assert band["verdict"] == "fits"
    r = CliRunner().invoke(app, ["estimate", "--voxel", "64x64x64", "--gpu", "24GB"])
    assert "Band (card sold as 24 GB): fits even at the top of the band" in r.output


def test_step_file_estimate_has_the_band(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_step import TINY

    (tmp_path / "tiny.py").write_text(TINY)
    r = CliRunner().invoke(app, ["estimate", "--step", str(tmp_path / "tiny.py"), "--gpu", "24GB", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    # the tiny step: 5,697,536 B allocated (tests/test_stepfile_knobs.py), 6 MiB reserved (3 small segments)
    alloc = next(t for t in data["device_band"]["terms"] if t["name"] == "allocator (reserved)")
    assert (alloc["low_bytes"], alloc["point_bytes"], alloc["high_bytes"]) == (5_729_792, 6 * MIB, 12 * MIB - 5_729_792)
    r = CliRunner().invoke(app, ["estimate", "--step", str(tmp_path / "tiny.py"), "--gpu", "24GB"])
    assert "Band (card sold as 24 GB): fits even at the top of the band" in r.output


# --- recommend fits at the top of the band (planner/band.py fit_bytes / margin_json) ---------------

CUBLAS_NO_CARD = 2 * 32 * MIB  # planner/workspaces.py: 2 threads x 32 MiB (no compute capability known)


def test_fit_bytes_and_the_margin_split_by_hand():
    from planner.band import fit_bytes, margin_json, margin_line

    r = _report()  # allocated 8 GiB, reserved 9 GiB, context 426 MiB; no attention/conv: cuBLAS only
    # top = reserved 9 GiB + (9 - 8) GiB again + 666,632,192 B context + 64 MiB cuBLAS
    top = 10 * GIB + 666_632_192 + CUBLAS_NO_CARD
    assert fit_bytes(r, None) == top and fit_bytes(r, None, "point") == 9 * GIB + 426 * MIB
    m = margin_json(r, None, 12 * GIB)
    assert (m["point_bytes"], m["high_bytes"], m["fit_bytes"]) == (9 * GIB + 426 * MIB, top, top)
    assert m["spare_bytes"] == 12 * GIB - top and not m["calibrated"]
    assert [(t["name"], t["above_point_bytes"]) for t in m["terms"]] == [
        ("allocator (reserved)", GIB), ("CUDA context", 666_632_192 - 426 * MIB), ("library workspaces", CUBLAS_NO_CARD)]
    line = margin_line(r, None, 12 * GIB)
    # margin 1 GiB + 219,938,816 B + 64 MiB = 1,361,313,792 B = 1.27 GiB
    assert line.startswith(f"fitted at the top of the band, {top / GIB:.2f} GiB = point 9.42 + margin 1.27 GiB "
                           "(allocator (reserved) 1.00 + CUDA context 0.20 + library workspaces 0.06")
    assert "(--fit-at point)" in margin_line(r, None, 12 * GIB, "point")


def test_a_gpu_profile_collapses_the_fit_and_says_so():
    from planner.band import fit_bytes, margin_line

    r = _report(context=600 * MIB, basis="measured: mean of 2 mem_get_info readings on H100")
    assert fit_bytes(r, None) == fit_bytes(r, None, "point") == 9 * GIB + 600 * MIB
    assert "calibrated: a GPU profile measured its terms" in margin_line(r, None, 12 * GIB)


FREEZE = {"amp", "batch", "attention", "nonlocal", "perceptual", "discriminator", "channels", "patch", "optimizer"}


def _small():
    from planner.config import Overrides, resolve_setup

    return resolve_setup(None, Overrides(voxel="64x64x64", perceptual=False))


def test_recommend_fits_the_top_of_the_band_not_the_point():
    from planner.analytic.estimate import estimate
    from planner.band import band_for
    from planner.gpus import parse_gpu
    from planner.recommend import recommend

    setup = _small()
    rep = estimate(setup)
    # a card exactly the input's point figure: it fits there, not at the top of its band
    card = parse_gpu(f"exact:{rep.device_total_bytes}B")
    at_point = recommend(setup, card, 0.0, fit_at="point", freeze=FREEZE)
    assert at_point.input_fits and at_point.headroom_bytes == 0
    rec = recommend(setup, card, 0.0, freeze=FREEZE)
    assert not rec.input_fits and rec.best is not None and rec.best.labels
    top = band_for(rec.best.exact, card).high
    assert top <= card.capacity_bytes and rec.margin_json(rec.best)["fit_bytes"] == top
    # the same card at the input's own top: it fits as it is
    rep_top = band_for(rep, None).high
    assert recommend(setup, parse_gpu(f"exact:{rep_top}B"), 0.0, freeze=FREEZE).input_fits


def test_recommend_with_a_measured_profile_fits_its_point():
    from planner.analytic.estimate import estimate
    from planner.gpus import parse_gpu
    from planner.profiles import DeviceProfile
    from planner.recommend import recommend

    setup = _small()
    prof = DeviceProfile("h100-test", {"name": "H100"}, True, context_bytes=500 * MIB,
                         context_source="measured: mean of 3 mem_get_info readings on H100")
    point = prof.apply(estimate(setup)).device_total_bytes
    rec = recommend(setup, parse_gpu(f"exact:{point}B"), 0.0, profile=prof, freeze=FREEZE)
    assert rec.input_fits and rec.headroom_bytes == 0  # the band collapsed to the measured point
    assert rec.margin_json(rec.best)["calibrated"]
    assert "calibrated: a GPU profile measured its terms" in rec.margin_line(rec.best)


def test_fit_at_is_checked():
    r = CliRunner().invoke(app, ["recommend", "--voxel", "32x32x32", "--fit-at", "middle"])
    assert r.exit_code == 2 and "--fit-at: 'middle' (valid: high, point)" in r.output
    assert "Traceback" not in r.output
