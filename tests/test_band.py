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
    assert "Band (generic 24 GB card): fits even at the top of the band" in r.output


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
    assert "Band (generic 24 GB card): fits even at the top of the band" in r.output
