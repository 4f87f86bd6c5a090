"""A traced step as a PyTorch memory snapshot, so PyTorch's own viewers open it.

The format is what ``torch.cuda.memory._snapshot()`` returns and ``_dump_snapshot`` pickles
(read in torch 2.13's ``torch/cuda/_memory_viz.py``: ``segsum``, ``trace``, ``segments``,
``memory``, ``trace_plot``, ``segment_plot``, and ``_profile_to_snapshot``, which builds one the
same way from profiler events)::

    {"segments": [{"device", "address", "total_size", "allocated_size", "active_size",
                   "requested_size", "stream", "segment_type", "is_expandable", "frames",
                   "blocks": [{"address", "size", "requested_size", "state", "frames"}, ...]}, ...],
     "device_traces": [[{"action": "segment_alloc" | "alloc" | "free_requested" | "free_completed",
                         "addr", "size", "stream", "time_us", "frames"}, ...]]}

Addresses and segments come from replaying the trace's allocations through the caching-allocator
model (planner/allocator.py ``CachingAllocatorModel``, default settings: its segments are laid
end to end from address 0); ``segments`` is the state at the end of the two iterations, as a
snapshot taken after the step; ``device_traces`` is every allocation of both iterations. A
block's size is the model's block, its ``requested_size`` and the trace entries' ``size`` the
storage's bytes as the tracker counts them (512-rounded), as the allocator records the request
(c10/cuda/CUDACachingAllocator.cpp ``malloc``: ``record_trace(TraceEntry::ALLOC, block->ptr,
orig_size, ...)``; ``free``: ``block->requested_size``). Frames are not Python stacks: one frame per allocation names
the op, its category, phase and step (``name``) and the module or network (``filename``).

``torch.cuda._memory_viz`` and https://pytorch.org/memory_viz read a pickle: :func:`write`
pickles for ``.pickle`` (plain dicts, lists, ints and strings; vramplan itself never reads a
pickle) and writes JSON for ``.json``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from planner.allocator import CachingAllocatorModel, parse_alloc_conf
from planner.errors import PlannerError


def _frames(info: Any) -> list[dict[str, Any]]:
    if info is None:
        return []
    cat = info.category.value if info.category is not None else info.phase.value
    return [{"filename": info.module or info.network or "?", "line": 0,
             "name": f"{info.op} [{cat}, {info.phase.value}, {info.step}]"}]


def snapshot_of(record: Any, alloc_conf: str = "") -> dict[str, Any]:
    """The snapshot of a StepRecord (planner/measure/builtin_trace.py) replayed with the default allocator."""
    if not parse_alloc_conf(alloc_conf or None).is_default:
        raise PlannerError(f"--snapshot: exported with the default allocator settings only (got alloc_conf "
                           f"{alloc_conf!r}); drop --alloc-conf / PYTORCH_CUDA_ALLOC_CONF for the export")
    model = CachingAllocatorModel()
    trace: list[dict[str, Any]] = []
    requested: dict[int, int] = {}
    for t, (uid, delta) in enumerate(record.events):
        frames = _frames(record.info.get(uid))
        if delta > 0:
            reserved, base = model.reserved, model._next_addr
            model.malloc(uid, delta)
            block = model._live.get(uid)
            if block is None:
                continue
            if model.reserved > reserved:  # a new segment at the end of the address range
                trace.append({"action": "segment_alloc", "addr": base, "size": model.reserved - reserved, "stream": 0,
                              "time_us": t, "frames": frames})
            requested[uid] = delta
            trace.append({"action": "alloc", "addr": block.addr, "size": delta, "stream": 0, "time_us": t,
                          "frames": frames})
        elif delta < 0:
            block = model._live.get(uid)
            if block is None:
                continue
            addr, size = block.addr, requested.pop(uid)
            model.free(uid)
            for action in ("free_requested", "free_completed"):
                trace.append({"action": action, "addr": addr, "size": size, "stream": 0, "time_us": t,
                              "frames": frames})
    live = {id(b): (uid, b) for uid, b in model._live.items()}
    blocks = [b for _, b in live.values()] + [b for pool in model._pools.values() for _, _, b in pool]
    segments = []
    for head in sorted((b for b in blocks if b.prev is None), key=lambda b: b.addr):
        seg_blocks, b = [], head
        while b is not None:
            uid = live.get(id(b), (None, None))[0]
            active = uid is not None and not b.free
            req = min(requested.get(uid, b.size), b.size) if active else 0
            seg_blocks.append({"address": b.addr, "size": b.size, "requested_size": req,
                               "state": "active_allocated" if active else "inactive",
                               "frames": _frames(record.info.get(uid)) if active else []})
            b = b.next
        active_size = sum(x["size"] for x in seg_blocks if x["state"] == "active_allocated")
        segments.append({"device": 0, "address": head.addr, "total_size": sum(x["size"] for x in seg_blocks),
                         "allocated_size": active_size, "active_size": active_size,
                         "requested_size": sum(x["requested_size"] for x in seg_blocks), "stream": 0,
                         "segment_type": "small" if head.small else "large", "segment_pool_id": (0, 0),
                         "is_expandable": False, "frames": [], "blocks": seg_blocks})
    return {"segments": segments, "device_traces": [trace]}


def write(snapshot: dict[str, Any], path: str | Path) -> Path:
    """``.pickle`` (what PyTorch's viewers open) or ``.json``."""
    p = Path(path)
    if p.suffix == ".json":
        p.write_text(json.dumps(snapshot) + "\n")
    elif p.suffix in (".pickle", ".pkl"):
        p.write_bytes(pickle.dumps(snapshot))
    else:
        raise PlannerError(f"--out: {str(path)!r} must end in .pickle (PyTorch's memory viewer) or .json")
    return p


def summary(snapshot: dict[str, Any], since_us: int = 0) -> dict[str, int]:
    """Counts a reader can check against the report: segments, reserved, live at the end, and
    the peak of live requested bytes over the trace entries from ``since_us`` (the event index
    where iteration 2 starts gives the report's peak_allocated)."""
    live = peak = 0
    for e in snapshot["device_traces"][0]:
        if e["action"] == "alloc":
            live += e["size"]
            if e["time_us"] >= since_us:
                peak = max(peak, live)
        elif e["action"] == "free_completed":
            live -= e["size"]
    segs = snapshot["segments"]
    return {"segments": len(segs), "reserved_bytes": sum(s["total_size"] for s in segs),
            "allocated_at_end_bytes": sum(s["allocated_size"] for s in segs), "trace_events": len(snapshot["device_traces"][0]),
            "peak_live_bytes": peak}


def snapshot_command(setup_of: Any, *, out_file: Any, as_json: bool, out: Any) -> None:
    """``vramplan snapshot --out step.pickle``: the setup (``setup_of()``: a step file's StepSetup
    or the built-in TrainingSetup, made after --out is checked) traced on the fake backend, exported."""
    from planner.report.text import print_json as _print_json
    from planner.config import check_output_path
    from planner.step_setup import StepSetup

    path = check_output_path(out_file, "--out")
    if path.suffix not in (".pickle", ".pkl", ".json"):
        raise PlannerError(f"--out: {str(path)!r} must end in .pickle (PyTorch's memory viewer) or .json")
    builtin = setup_of()
    if isinstance(builtin, StepSetup):
        from planner.measure import traces

        ss = builtin
        record, conf = traces.trace(ss), ss.alloc_conf
    else:
        from planner.measure.builtin_trace import run_step

        record, conf = run_step(builtin, "fake"), builtin.device.alloc_conf
    snap = snapshot_of(record, conf)
    write(snap, path)
    info = {"path": str(path), **summary(snap, record.iteration2_start)}
    if as_json:
        _print_json(info)
        return
    out.print(f"wrote {path}: {info['segments']} segments, {info['reserved_bytes']:,} B reserved, "
              f"{info['trace_events']:,} trace events, peak live in iteration 2 {info['peak_live_bytes']:,} B; open it at "
              "https://pytorch.org/memory_viz or with python -m torch.cuda._memory_viz trace_plot", markup=False)
