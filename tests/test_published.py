"""The published-figures points (benchmarks/published/points.json): the schema validated field by
field, and two cheap points recomputed through the benchmark's own code (benchmarks/bench_published.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from planner.errors import PlannerError

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def _bench():
    spec = importlib.util.spec_from_file_location("bench_published", ROOT / "benchmarks" / "bench_published.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


B = _bench()


def test_the_points_file_is_valid_and_sourced():
    points = B.load_points()
    assert len(points) >= 20 and len({p.id for p in points}) == len(points)
    for p in points:
        assert p.source.startswith("https://") and p.gpu and p.counter in B.COUNTERS and p.versions
    one = {p.id: p for p in points}["hf-bench-bert-base-uncased-s8"]
    # "bert-base-uncased 8 8 1227" printed as MB = bytes >> 20: 1227 * 2**20 = 1,286,602,752 B
    assert (one.figure, one.unit, one.figure_bytes) == (1227, "MiB", 1_286_602_752)


def _write(tmp_path, **change):
    data = json.loads(B.POINTS.read_text())
    p = data["points"][0]
    for k, v in change.items():
        if v is None:
            del p[k]
        else:
            p[k] = v
    path = tmp_path / "points.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, message", [
    ({"counter": None}, "'counter' is missing"),
    ({"counter": "nvidia_smi_guess"}, "'counter' 'nvidia_smi_guess' (valid: max_memory_allocated"),
    ({"unit": "MiBs"}, "'unit' 'MiBs' (valid: B, KiB, MiB"),
    ({"figure": -3}, "'figure' must be > 0"),
    ({"figure": True}, "'figure' must be"),
    ({"source": "somewhere on the web"}, "'source' must be an https:// address"),
    ({"step": "benchmarks/published/steps/nope.py"}, "is not a step file of this repository"),
    ({"versions": {"torch": ""}}, "'versions' must map names to non-empty strings"),
    ({"module_loading": "SOMETIMES"}, "'module_loading' 'SOMETIMES' (valid: LAZY, EAGER)"),
    ({"precision": "fp8"}, "'precision' 'fp8'"),
])
def test_a_bad_field_is_named(tmp_path, change, message):
    with pytest.raises(PlannerError, match="point 'hf-bench-bert-base-uncased-s8'|point 0") as exc:
        B.load_points(_write(tmp_path, **change))
    assert message in str(exc.value)


def test_two_cheap_points_recomputed():
    pytest.importorskip("torch")
    points = {p.id: p for p in B.load_points()}
    picked = [points["hf-bench-bert-6-lay-s8"], points["hf-bench-bert-384-hid-s8"]]
    rows = {r["id"]: r for r in B.evaluate(picked)}
    six, narrow = rows["hf-bench-bert-6-lay-s8"], rows["hf-bench-bert-384-hid-s8"]
    # bert-6-lay parameters by hand: embeddings 30522*768 + 512*768 + 2*768 + LayerNorm 2*768 = 23,837,184;
    # per layer Q, K, V, O 4*(768*768 + 768) + 2 LayerNorms 4*768 + 768*3072 + 3072 + 3072*768 + 768 = 7,087,872;
    # pooler 768*768 + 768 = 590,592 -> 23,837,184 + 6 * 7,087,872 + 590,592 = 66,955,008 fp32 = 267,820,032 B.
    # Batch 8 x 8 tokens under no_grad: the weights plus a few activations, the largest the FFN's
    # 8*8*3072*4 = 786,432 B (dense output and its GELU, both live) and 8*8*768*4 = 196,608 B hidden states:
    # under 3 MiB above the weights (measured here: 2,194,944 B)
    allocated = six["band_terms"]["allocator (reserved)"][0]  # the band's low end of the allocator term
    assert 267_820_032 + 2 * 786_432 <= allocated <= 267_820_032 + 3 * MIB
    # the published device figures (TITAN RTX, torch 1.4.0: eager module loading) fall inside the band
    assert six["published_bytes"] == 1097 * MIB and six["inside"] and not six["above_top"]
    assert narrow["published_bytes"] == 1005 * MIB and narrow["inside"]
    # eager context: min(666,632,192 B (#86509), the 426 MiB point) .. 1343 MiB (HF docs), planner/band.py
    ctx = six["band_terms"]["CUDA context"]
    assert (ctx[0], ctx[1], ctx[2]) == (426 * MIB, 426 * MIB, 1343 * MIB)
