"""``vramplan snapshot``: a traced step exported in torch.cuda.memory._snapshot()'s format and
rendered by PyTorch's own viewer code (torch/cuda/_memory_viz.py, offline functions).

The tiny step (tests/tiny_step.py, fp32 AdamW, batch 64): every storage is at most 256 KiB, so all
go to the small pool's 2 MiB segments (allocator: kSmallSize 1 MiB, kSmallBuffer 2 MiB); the
live bytes peak at 5,697,536 B in iteration 2 (derived in tests/test_stepfile_knobs.py), which
needs ceil(5,697,536 / 2 MiB) = 3 segments -> 6 MiB reserved.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch.cuda._memory_viz as viz
from typer.testing import CliRunner

from planner.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_step import TINY  # noqa: E402

MIB = 2**20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("snap")
    (d / "tiny.py").write_text(TINY)
    r = CliRunner().invoke(app, ["snapshot", "--step", str(d / "tiny.py"), "--out", str(d / "t.pickle"), "--json"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(app, ["snapshot", "--step", str(d / "tiny.py"), "--out", str(d / "t.json")])
    assert r2.exit_code == 0, r2.output
    return d, json.loads(r.output)


def test_summary_matches_the_trace(exported):
    _, info = exported
    assert info["peak_live_bytes"] == 5_729_792  # the tracker's iteration-2 peak
    assert info["segments"] == 3 and info["reserved_bytes"] == 6 * MIB


def test_torch_viewer_renders_the_export(exported):
    d, info = exported
    snap = pickle.loads((d / "t.pickle").read_bytes())  # the test reads its own export; vramplan never does
    as_json = json.loads((d / "t.json").read_text())
    assert as_json["device_traces"] == snap["device_traces"] and len(as_json["segments"]) == len(snap["segments"])
    summary = viz.segsum(snap)  # asserts its own accounting: free + allocated == reserved per segment
    assert "segments: 3\n" in summary and "total_reserved: 6.0MiB" in summary
    text = viz.trace(snap)
    assert text.startswith(f"Device 0 ----------------\n{info['trace_events']} entries\na = cudaMalloc(0, 2.0MiB)")
    for plot in (viz.trace_plot, viz.segment_plot):
        html = plot(snap)
        assert "snapshot.pickle" in html and "MemoryViz.js" in html
    # the flamegraph input of memory(): one line per active block, sizes summing to what is live
    lines = viz.memory(snap, format_flamegraph=lambda s: s).splitlines()
    active = sum(int(x.rsplit(" ", 1)[1]) for x in lines if ";active_allocated;" in x)
    assert active == info["allocated_at_end_bytes"]


def test_trace_entries_balance(exported):
    d, info = exported
    snap = json.loads((d / "t.json").read_text())
    entries = snap["device_traces"][0]
    allocs = sum(e["size"] for e in entries if e["action"] == "alloc")
    freed = sum(e["size"] for e in entries if e["action"] == "free_completed")
    assert allocs - freed == sum(b["requested_size"] for s in snap["segments"] for b in s["blocks"])
    assert sum(e["size"] for e in entries if e["action"] == "segment_alloc") == info["reserved_bytes"]
    assert [s["address"] for s in snap["segments"]] == [0, 2 * MIB, 4 * MIB]


@pytest.mark.parametrize("extra, message", [
    (["--out", "t.txt"], "--out: 't.txt' must end in .pickle"),
    (["--out", "t.pickle", "--knob", "nope=1"], "nope"),
])
def test_bad_input_one_line(exported, monkeypatch, extra, message):
    d, _ = exported
    monkeypatch.chdir(d)
    r = CliRunner().invoke(app, ["snapshot", "--step", "tiny.py", *extra])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_non_default_allocator_settings_are_refused(exported):
    from planner.errors import PlannerError
    from planner.snapshot import snapshot_of

    with pytest.raises(PlannerError, match="default allocator settings only"):
        snapshot_of(None, "expandable_segments:True")
