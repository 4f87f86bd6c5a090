"""Traces of step files, fast enough to search: a disk cache, batch derivation, parallel tracing.

* **Cache.** A trace is keyed by the step file's content, every knob, the torch version and
  the source of vramplan's tracer (``planner/measure``, ``planner/sdpa_rules.py``); it is
  stored as data (gzip-compressed JSON, :mod:`planner.measure.tracefile`, never a pickle) under
  ``$VRAMPLAN_CACHE`` (default ``~/.cache/vramplan/traces``, made private to the user; a folder
  that others can write or that another user owns is refused), ``VRAMPLAN_CACHE=off`` disables
  it. A corrupt or foreign entry is a miss with one warning line on stderr.
* **Batch derivation.** The storages a step allocates have sizes affine in the micro-batch
  (``numel`` is a product of dimensions, one of them the batch). Three traces at
  ``DERIVE_POINTS`` give each storage's size as ``a + c * B``: fitted on the first two,
  verified on the third (same op stream, same storages, the same sizes to the byte), the step
  at any batch is the first trace's event stream with those sizes, replayed with the
  tracker's own rules (512-byte rounding, the peak checked after every op, reset at
  iteration 2). Where a step is not affine (a size that depends on the batch otherwise, an
  op stream that changes with it), :func:`derive` returns None and the caller traces.
* **Isolated, parallel.** Every trace runs in a worker process (``planner/measure/isolate.py``:
  spawned, torch imported once per worker, stopped at the timeout); :func:`trace_many` traces
  missing setups in several at once with a progress callback.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from planner.step_setup import StepSetup

DERIVE_POINTS = (2, 3, 4)
"""Micro-batches traced to derive the rest: 1 is avoided (size-1 dimensions take other paths:
broadcasting, squeezes, contiguity), two points fit, the third verifies."""


# --- cache -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _versions() -> str:
    import torch

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(torch.__version__.encode())
    for p in sorted((root / "measure").glob("*.py")) + [root / "sdpa_rules.py", root / "step_setup.py"]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path | None:
    value = os.environ.get("VRAMPLAN_CACHE", "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "vramplan" / "traces"


def _path(setup: StepSetup) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{setup.cache_key(_versions())}.json.gz"


_warned: set[str] = set()


def _warn(text: str) -> None:
    """One line on stderr, once per process for the same text."""
    if text not in _warned:
        _warned.add(text)
        sys.stderr.write(f"vramplan: warning: {text}\n")


def _private_folder(folder: Path, create: bool) -> bool:
    """Whether ``folder`` may hold the cache: a directory owned by this user that nobody else
    can write (an entry there decides what later runs report). ``create``: make it, and the
    folders above it that are missing, private to the user (0o700). A refused folder is one
    warning line; a missing one (not creating) is an empty cache."""
    try:
        if create and not folder.is_dir():
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            for p in reversed(missing):
                p.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        st, why = None, f"cannot be used ({exc.strerror or exc})"
    if st is None:
        pass
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a folder"
    elif hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        why = f"is owned by another user (uid {st.st_uid})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"can be written by others (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return True
    _warn(f"trace cache {folder} {why}; tracing without it (use a folder of your own that only you can write: "
          f"chmod 700 {folder}, or another VRAMPLAN_CACHE; VRAMPLAN_CACHE=off disables the cache)")
    return False


def cached(setup: StepSetup) -> Any | None:
    """The setup's StepRecord from the cache, or None (no entry, no usable folder). An entry is
    data (:mod:`planner.measure.tracefile`), checked field by field; a corrupt or foreign one is
    a miss with one warning line, and is overwritten by the next trace."""
    from planner.errors import NotData
    from planner.measure import tracefile

    path = _path(setup)
    if path is None or not _private_folder(path.parent, create=False):
        return None
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(f"trace cache entry {path} cannot be read ({exc.strerror or exc}); tracing again")
        return None
    try:
        return tracefile.loads(raw, path.name.removesuffix(".json.gz"))
    except NotData as exc:
        _warn(f"trace cache entry {path} ignored: {exc}; tracing again")
        return None


def _store(setup: StepSetup, record: Any) -> None:
    from planner.measure import tracefile

    path = _path(setup)
    if path is None or not _private_folder(path.parent, create=True):
        return
    try:
        data = tracefile.dumps(record, path.name.removesuffix(".json.gz"))
    except tracefile.BadEntry as exc:
        _warn(f"trace of {setup.label()} not cached: {exc}")
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache folder only costs speed


def trace(setup: StepSetup, *, use_cache: bool = True) -> Any:
    """The StepRecord of ``setup`` (fake backend, no timeline), from the cache when there, else
    traced in a worker process under the timeout (``planner/measure/isolate.py``)."""
    if use_cache:
        hit = cached(setup)
        if hit is not None:
            return hit
    from planner.measure import isolate

    return isolate.shared().call(_traced, (setup, use_cache), _tracing, warm=isolate.TRACING)


def _traced(args: tuple[StepSetup, bool]) -> Any:
    """In a worker: trace, store in the cache."""
    setup, use_cache = args
    from planner.measure.stepfile import run

    record = run(setup, "fake", keep_timeline=False, count_flops=True)
    record = replace(record, tracker=replace(record.tracker, timeline=[]))
    if use_cache:
        _store(setup, record)
    return record


def _tracing(item: Any) -> str:
    setup = item[0] if isinstance(item, tuple) else item
    return f"tracing {setup.label()}"


def _worker(setup: StepSetup) -> tuple[StepSetup, Any, str | None]:
    from planner.errors import PlannerError

    try:
        return setup, _traced((setup, True)), None
    except PlannerError as exc:
        return setup, None, str(exc)


class Pool:
    """How many worker processes trace at once. The workers themselves are the command's
    (``isolate.shared()``): started on first use, each imports torch and warms its caches once,
    and lives until the command ends (one stopped at the timeout is replaced)."""

    def __init__(self, jobs: int = 0) -> None:
        self.jobs = jobs or (os.cpu_count() or 1)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class SideCall:
    """A call into the user's code (``fn(arg)`` in a worker, e.g. the checkpoint plan's trace) run in
    the same round as :func:`trace_many`'s traces, so the workers run them side by side; ``result``
    once done."""

    fn: Callable[[Any], Any]
    arg: Any
    label: str
    result: Any = None


def _call(item: tuple[Callable[[Any], Any], Any]) -> Any:
    """In a worker: one job of a round (a trace or a side call)."""
    fn, arg = item
    return fn(arg)


def passes(setup: StepSetup) -> int:
    """Forward/backward passes a trace of ``setup`` runs (two iterations of ``accumulation``
    micro-batches): its cost, the same at any micro-batch under FakeTensorMode (ops, not bytes)."""
    return 2 * setup.accumulation


def trace_many(setups: Sequence[StepSetup], jobs: int = 0,
               progress: Callable[[int, int, str], None] | None = None, *, pool: Pool | None = None,
               errors: dict[StepSetup, str] | None = None,
               side: Sequence[SideCall] = ()) -> tuple[dict[StepSetup, Any], int]:
    """Every setup's record (cached ones first, the rest traced in ``jobs`` worker processes,
    0: one per core, or ``pool.jobs``), and how many were traced (not in the cache). A setup the
    user's code rejects raises its PlannerError, or with ``errors`` given is left out of the
    records and its message put there; a trace stopped at the timeout or ended without a
    result raises (``isolate``). ``side``: calls run in the same round, first (each one's
    ``result`` set; an error in one raises). The traces start longest first (most
    :func:`passes`), so that the round ends as early as the workers allow."""
    from planner.errors import PlannerError
    from planner.measure import isolate

    out: dict[StepSetup, Any] = {}
    todo = []
    for s in dict.fromkeys(setups):
        hit = cached(s)
        if hit is not None:
            out[s] = hit
        else:
            todo.append(s)
    todo.sort(key=passes, reverse=True)  # stable: the caller's order among equals
    total, done = len(todo), 0
    tick = progress or (lambda *_: None)
    workers = pool.jobs if pool is not None else (jobs or (os.cpu_count() or 1))
    if not total and not side:
        return out, total
    if total:
        tick(0, total, todo[0].label())
    items = [(c.fn, c.arg) for c in side] + [(_worker, s) for s in todo]
    labels = {id(it[1]): c.label for it, c in zip(items, side)}

    def label(item: tuple) -> str:
        return labels.get(id(item[1])) or _tracing(item[1])

    for item, value in isolate.shared().imap(_call, items, label, jobs=min(workers, len(items)), warm=isolate.TRACING):
        if item[0] is not _worker:
            next(c for c in side if c.arg is item[1]).result = value
            continue
        s, record, error = value
        if error is None:
            out[s] = record
        elif errors is None:
            raise PlannerError(error)
        else:
            errors[s] = error
        done += 1
        tick(done, total, s.label())
    return out, total


# --- batch derivation -------------------------------------------------------------------------------


@dataclass
class Derivation:
    """Each storage's size as ``a + c * B``, on the first trace's op stream."""

    base: Any  # StepRecord at points[0]
    points: tuple[int, ...]
    a: dict[int, int]
    c: dict[int, int]
    flops: tuple[int, int]  # a, c of iteration 2's floating-point operations
    conv_io: tuple[int, int]

    def record_at(self, batch: int) -> Any:
        """The StepRecord the step would give at micro-batch ``batch``."""
        from planner.measure.tracker import TrackerResult, round_alloc

        base = self.base
        size = {u: round_alloc(self.a[u] + self.c[u] * batch) for u in self.a}
        events = [(u, size[u] if d > 0 else -size[u]) for u, d in base.events]
        peak, peak_mark = _replay_peak(events, base.marks, base.iteration2_start)
        live = _live_after(events, peak_mark[0] if peak_mark else base.iteration2_start)
        infos = [replace(base.info[u], nbytes=size[u], raw=self.a[u] + self.c[u] * batch) for u in live]
        op, phase, step = (peak_mark[1:] if peak_mark else ("reset", "data", "it2"))
        tr = base.tracker
        scale = batch / self.points[0]
        calls = tuple((int(round(c[0] * scale)), *c[1:]) for c in tr.attention_calls)
        tracker = TrackerResult(
            peak_bytes=peak, peak_op=op, peak_phase=phase, peak_step=step, peak_module="",
            live_at_peak=infos, timeline=[], untracked_host_bytes=tr.untracked_host_bytes, notes=list(tr.notes),
            conv_io_max=self.conv_io[0] + self.conv_io[1] * batch, attention_calls=calls,
        )
        setup = dict(base.setup)
        setup["batch_size"] = batch
        setup["effective_batch"] = batch * setup.get("accumulation", 1) * setup.get("gpus", 1)
        if "flops_iteration2" in setup:
            setup["flops_iteration2"] = self.flops[0] + self.flops[1] * batch
        setup["derived"] = f"from traces at micro-batch {', '.join(map(str, self.points))} (affine sizes, verified)"
        return replace(base, tracker=tracker, events=events, setup=setup)


def _replay_peak(events: list[tuple[int, int]], marks: list, it2: int) -> tuple[int, tuple | None]:
    """The tracker's peak over iteration 2: reset to the live bytes where iteration 2 starts,
    then checked after every op (the marks), as LiveStorageTracker._note_peak does."""
    current = 0
    i = 0
    peak, where = -1, None
    for m in marks:
        idx = m[0]
        if peak < 0 and idx >= it2:
            while i < it2:
                current += events[i][1]
                i += 1
            peak, where = current, (it2, "reset", "data", "it2")
        while i < idx:
            current += events[i][1]
            i += 1
        if peak >= 0 and current > peak:
            peak, where = current, m
    if peak < 0:
        while i < len(events):
            current += events[i][1]
            i += 1
        peak = current
    return peak, where


def _live_after(events: list[tuple[int, int]], upto: int) -> list[int]:
    live: dict[int, None] = {}
    for u, d in events[:upto]:
        if d > 0:
            live[u] = None
        else:
            live.pop(u, None)
    return list(live)


def _marks(record: Any) -> list:
    """The peak checks that can see a change: the first mark at each events index (ops that
    allocate nothing, such as ``prim::device`` queries, repeat an index; how many there are
    varies from trace to trace)."""
    seen: set[int] = set()
    out = []
    for m in record.marks:
        if m[0] not in seen:
            seen.add(m[0])
            out.append(m)
    return out


def _segments(record: Any, marks: list) -> list[tuple]:
    """The events between consecutive peak checks, order-free: when the garbage collector
    frees a storage within one op's span varies, and no peak is checked there."""
    cuts = [0] + [m[0] for m in marks] + [len(record.events)]
    return [tuple(sorted((u, d > 0) for u, d in record.events[a:b])) for a, b in zip(cuts, cuts[1:])]


def derive(records: Sequence[tuple[int, Any]]) -> Derivation | None:
    """Fit sizes on the first two (batch, record) pairs, verify on the rest; None where the
    step is not affine in the batch."""
    (b0, r0), (b1, r1) = records[0], records[1]
    marks0 = _marks(r0)
    if any(r.iteration2_start != r0.iteration2_start or len(r.events) != len(r0.events) for _, r in records):
        return None
    segs0 = _segments(r0, marks0)
    for _, r in records[1:]:
        marks = _marks(r)
        if [m[0] for m in marks] != [m[0] for m in marks0] or set(r.info) != set(r0.info):
            return None
        if _segments(r, marks) != segs0:
            return None
    a: dict[int, int] = {}
    c: dict[int, int] = {}
    for u, i0 in r0.info.items():
        i1 = r1.info[u]
        if (i0.op, i0.module, i0.phase, i0.category) != (i1.op, i1.module, i1.phase, i1.category):
            return None
        slope, rem = divmod(i1.raw - i0.raw, b1 - b0)
        if rem:
            return None
        a[u], c[u] = i0.raw - slope * b0, slope
        for b, r in records[2:]:
            if r.info[u].raw != a[u] + c[u] * b:
                return None
    flops = _fit([(b, r.setup.get("flops_iteration2", 0)) for b, r in records])
    conv = _fit([(b, r.tracker.conv_io_max) for b, r in records])
    if flops is None or conv is None:
        return None
    d = Derivation(replace(r0, marks=marks0), tuple(b for b, _ in records), a, c, flops, conv)
    for b, r in records:  # the replay reproduces every traced peak
        if d.record_at(b).tracker.peak_bytes != r.tracker.peak_bytes:
            return None
    return d


def _fit(points: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    pts = list(points)
    (b0, v0), (b1, v1) = pts[0], pts[1]
    slope, rem = divmod(v1 - v0, b1 - b0)
    if rem:
        return None
    base = v0 - slope * b0
    return (base, slope) if all(v == base + slope * b for b, v in pts) else None


def derivation_for(setup: StepSetup, jobs: int = 0,
                   progress: Callable[[int, int, str], None] | None = None) -> Derivation | None:
    """Trace ``setup`` at DERIVE_POINTS (cached, in parallel) and derive; None when not affine."""
    setups = [replace(setup, batch_size=b) for b in DERIVE_POINTS]
    records, _ = trace_many(setups, jobs, progress)
    return derive([(s.batch_size, records[s]) for s in setups])
