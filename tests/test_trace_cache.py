"""The trace cache holds data, never code (issue 23, "Nothing from disk runs as code").

A hit gives a record equal, field by field, to the traced one; a corrupt entry, a field of the
wrong type, a pickle (even one whose ``__reduce__`` would run a command) and another setup's
entry are misses with one warning line on stderr; the folder is made private to the user, and
a folder that others can write is refused."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import stat
import sys
from pathlib import Path

import pytest

from planner.measure import traces, tracefile
from planner.step_setup import StepSetup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_step import TINY  # noqa: E402


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """The tiny step at width 8, hidden 16, depth 1, batch 2 (a 2-second trace), uncached."""
    path = tmp_path_factory.mktemp("tiny") / "tiny_step.py"
    path.write_text(TINY)
    setup = StepSetup(str(path), knobs=(("depth", 1), ("hidden", 16), ("width", 8)), batch_size=2)
    return setup, traces.trace(setup, use_cache=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "a" / "b" / "traces"
    monkeypatch.setenv("VRAMPLAN_CACHE", str(folder))
    monkeypatch.setattr(traces, "_warned", set())
    return folder


def warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_hit_equals_the_traced_record_field_by_field(traced, cache, capsys):
    setup, record = traced
    assert traces.cached(setup) is None  # nothing there yet, and no folder: no warning
    traces._store(setup, record)
    hit = traces.cached(setup)
    assert hit is not None and hit is not record
    for f in dataclasses.fields(record):  # each field, with its container and element types
        assert getattr(hit, f.name) == getattr(record, f.name), f.name
        assert type(getattr(hit, f.name)) is type(getattr(record, f.name)), f.name
    tr, tr0 = hit.tracker, record.tracker
    for f in dataclasses.fields(tr0):
        assert getattr(tr, f.name) == getattr(tr0, f.name), f.name
        assert type(getattr(tr, f.name)) is type(getattr(tr0, f.name)), f.name
    assert hit == record
    # tuples stay tuples, enums enums; the live storages are the record's own info objects
    assert type(hit.events[0]) is tuple and type(hit.marks[0]) is tuple and type(hit.networks) is tuple
    s = tr.live_at_peak[0]
    assert type(s.phase).__name__ == "Phase" and s is hit.info[s.uid]
    assert hit.setup["knobs"] == {"classes": 0, "depth": 1, "hidden": 16, "width": 8}
    assert warnings(capsys) == []
    # on disk: gzip-compressed JSON, in folders made private to the user
    (entry,) = cache.iterdir()
    assert entry.name.endswith(".json.gz")
    body = json.loads(gzip.decompress(entry.read_bytes()))
    assert body["format"] == "vramplan trace" and body["record"]["tracker"]["peak_bytes"] == tr0.peak_bytes
    for folder in (cache, cache.parent, cache.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_tuples_in_setup_data_round_trip(traced):
    setup, record = traced
    odd = dataclasses.replace(record, setup={**record.setup, "shape": (2, 8), "nested": {"t": [(1, "a")]}, "f": 0.5})
    back = tracefile.loads(tracefile.dumps(odd, "k"), "k")
    assert back == odd and type(back.setup["shape"]) is tuple and type(back.setup["nested"]["t"][0]) is tuple


def _entry(setup, cache) -> Path:
    return cache / f"{setup.cache_key(traces._versions())}.json.gz"


def _miss_with_one_warning(setup, capsys, *needles: str) -> None:
    assert traces.cached(setup) is None
    lines = warnings(capsys)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_corrupt_entry_is_a_miss_with_one_warning(traced, cache, capsys):
    setup, record = traced
    traces._store(setup, record)
    path = _entry(setup, cache)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _miss_with_one_warning(setup, capsys, str(path), "not a gzip-compressed trace")
    path.write_bytes(b"\x00garbage")
    traces._warned.clear()
    _miss_with_one_warning(setup, capsys, "not a gzip-compressed trace")
    # the next trace overwrites it
    traces._store(setup, record)
    assert traces.cached(setup) == record


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["tracker"].__setitem__("peak_bytes", "17408"), "record.tracker.peak_bytes: a non-negative integer"),
    (lambda r: r["events"][3].__setitem__(1, 1.5), "record.events[3][1]: an integer"),
    (lambda r: r["info"][0][1].__setitem__("phase", "lunch"), "record.info[1].phase: one of setup"),
    (lambda r: r["tracker"].__setitem__("live_at_peak", [10**6]), "record.tracker.live_at_peak[0]: storage 1000000"),
    (lambda r: r.pop("marks"), "missing ['marks']"),
    (lambda r: r.__setitem__("extra", 1), "unknown ['extra']"),
    (lambda r: r["setup"].__setitem__("knobs", {"__reduce__": []}), "record.setup['knobs']: an object other than"),
])
def test_wrong_field_is_a_miss_naming_it(traced, cache, capsys, edit, field):
    setup, record = traced
    traces._store(setup, record)
    path = _entry(setup, cache)
    body = json.loads(gzip.decompress(path.read_bytes()))
    edit(body["record"])
    path.write_bytes(gzip.compress(json.dumps(body).encode()))
    _miss_with_one_warning(setup, capsys, field)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_entry_is_never_loaded(traced, cache, capsys, tmp_path):
    setup, record = traced
    traces._store(setup, record)
    marker = tmp_path / "pwned"
    path = _entry(setup, cache)
    path.write_bytes(pickle.dumps(_Payload(marker)))
    _miss_with_one_warning(setup, capsys, "not a gzip-compressed trace")
    # a gzip-compressed pickle is not JSON either
    path.write_bytes(gzip.compress(pickle.dumps(_Payload(marker))))
    traces._warned.clear()
    _miss_with_one_warning(setup, capsys, "not UTF-8 text")
    # an old-style .pkl entry beside it is never opened
    path.with_name(path.name.removesuffix(".json.gz") + ".pkl").write_bytes(pickle.dumps(_Payload(marker)))
    path.unlink()
    assert traces.cached(setup) is None and warnings(capsys) == []
    assert not marker.exists()


def test_foreign_and_deep_entries_are_misses(traced, cache, capsys):
    setup, record = traced
    other = setup.with_knobs(width=16)
    traces._store(setup, record)
    _entry(setup, cache).rename(_entry(other, cache))  # another setup's entry under this name
    _miss_with_one_warning(other, capsys, "written for another setup")
    deep = b"[" * 100_000 + b"]" * 100_000
    _entry(other, cache).write_bytes(gzip.compress(deep))
    _miss_with_one_warning(other, capsys, "nested too deeply")


@pytest.mark.parametrize("mode", [0o770, 0o707])
def test_folder_others_can_write_is_refused(traced, cache, capsys, mode):
    setup, record = traced
    traces._store(setup, record)
    cache.chmod(mode)
    _miss_with_one_warning(setup, capsys, str(cache), "can be written by others", f"mode {mode:o}", "chmod 700")
    traces._store(setup, record)  # refused for writing too: still the one entry, same warning not repeated
    assert len(list(cache.iterdir())) == 1 and warnings(capsys) == []


def test_folder_of_another_user_is_refused(traced, cache, capsys, monkeypatch):
    setup, record = traced
    traces._store(setup, record)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(cache).st_uid + 1)
    _miss_with_one_warning(setup, capsys, "owned by another user")


def test_store_refuses_what_the_schema_does_not_describe(traced, cache, capsys):
    setup, record = traced
    traces._store(setup, dataclasses.replace(record, setup={**record.setup, "bad": {1, 2}}))
    assert not cache.exists() or not list(cache.iterdir())
    assert "not cached: record.setup['bad']: a set is not plain data" in capsys.readouterr().err
