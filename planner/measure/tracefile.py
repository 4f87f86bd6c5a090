"""A trace as data: the StepRecord <-> gzip-compressed JSON, checked field by field both ways.

The trace cache (:mod:`planner.measure.traces`) lives in a folder that CI jobs restore from a
shared cache, so what it reads must not be able to run code (a pickle can: ``__reduce__``).
Every field of :class:`planner.measure.recording.StepRecord` and of the tracker's records inside it
is described once in :data:`SCHEMA`; :func:`dumps` and :func:`loads` walk the same schema, so
an entry decodes to a record equal to the one encoded (tuples stay tuples, enums enums, ints
ints) or is refused with :class:`BadEntry` naming the field. A dataclass field that the schema
does not describe is refused when storing (a new field cannot be silently dropped).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import zlib
from enum import Enum
from typing import Any, Callable

from planner.errors import NotData, parse_json
from planner.measure.recording import StepRecord
from planner.measure.tracker import Category, Phase, StorageInfo, TimelinePoint, TrackerResult

FORMAT = "vramplan trace"
VERSION = 1
MAX_ENTRY_BYTES = 1 << 30
"""Largest decompressed entry read (a gzip bomb in a restored cache is refused, not inflated)."""


class BadEntry(NotData):
    """An entry that is not a trace this version wrote: the message says why, naming the field.
    (Bytes that are not JSON raise :class:`planner.errors.NotData`, its base.)"""


# --- the schema: one node per value shape ----------------------------------------------------------
# ("int",) any int (not bool); ("nat",) int >= 0; ("str",); ("enum", E); ("opt", node): node or None;
# ("list", node) / ("tuple", node): a JSON array, decoded to that container; ("row", n1, n2, ...): a
# fixed-length tuple; ("pairs", key, value): a dict as [[key, value], ...]; ("obj", node): a dict
# with str keys as a JSON object; ("plain",): JSON-like data (the record's ``setup``), tuples and
# dicts tagged; ("dc", cls, {field: node}); ("live",): a StorageInfo, written as its uid when it
# is the record's own ``info[uid]`` object (as the tracker makes it), else in full.

INT, NAT, STR = ("int",), ("nat",), ("str",)
STORAGE = ("dc", StorageInfo, {"uid": INT, "nbytes": NAT, "phase": ("enum", Phase), "network": STR, "module": STR,
                               "op": STR, "step": STR, "category": ("opt", ("enum", Category)), "raw": NAT})
TRACKER = ("dc", TrackerResult, {
    "peak_bytes": NAT, "peak_op": STR, "peak_phase": STR, "peak_step": STR, "peak_module": STR,
    "live_at_peak": ("list", ("live",)),
    "timeline": ("list", ("dc", TimelinePoint, {"op_index": INT, "live_bytes": NAT, "phase": STR, "step": STR})),
    "untracked_host_bytes": NAT, "notes": ("list", STR), "conv_io_max": NAT,
    "attention_calls": ("tuple", ("row", NAT, NAT, NAT, NAT, NAT, STR, STR)),
})
SCHEMA = ("dc", StepRecord, {  # info first: live_at_peak refers to it
    "info": ("pairs", INT, STORAGE),
    "tracker": TRACKER,
    "events": ("list", ("row", INT, INT)),
    "networks": ("tuple", STR),
    "iteration2_start": NAT,
    "params": ("obj", NAT),
    "setup": ("obj", ("plain",)),
    "marks": ("list", ("row", INT, STR, STR, STR)),
})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Codec:
    def __init__(self) -> None:
        self.info: dict = {}

    # -- encode: check the value against the node, give its JSON form ------------------------------
    def enc(self, node: tuple, v: Any, where: str) -> Any:
        kind = node[0]
        if kind in ("int", "nat"):
            if not _is_int(v) or (kind == "nat" and v < 0):
                raise BadEntry(f"{where}: {'a non-negative ' if kind == 'nat' else 'an '}integer expected, got {v!r}")
            return v
        if kind == "str":
            if not isinstance(v, str):
                raise BadEntry(f"{where}: a string expected, got {type(v).__name__}")
            return v
        if kind == "enum":
            if not isinstance(v, node[1]):
                raise BadEntry(f"{where}: a {node[1].__name__} expected, got {v!r}")
            return v.value
        if kind == "opt":
            return None if v is None else self.enc(node[1], v, where)
        if kind in ("list", "tuple"):
            want = list if kind == "list" else tuple
            if type(v) is not want:
                raise BadEntry(f"{where}: a {want.__name__} expected, got {type(v).__name__}")
            return [self.enc(node[1], x, f"{where}[{i}]") for i, x in enumerate(v)]
        if kind == "row":
            if type(v) is not tuple or len(v) != len(node) - 1:
                raise BadEntry(f"{where}: a tuple of {len(node) - 1} expected, got {v!r}")
            return [self.enc(n, x, f"{where}[{i}]") for i, (n, x) in enumerate(zip(node[1:], v))]
        if kind == "pairs":
            if type(v) is not dict:
                raise BadEntry(f"{where}: a dict expected, got {type(v).__name__}")
            return [[self.enc(node[1], k, f"{where} key"), self.enc(node[2], x, f"{where}[{k!r}]")] for k, x in v.items()]
        if kind == "obj":
            if type(v) is not dict or not all(isinstance(k, str) for k in v):
                raise BadEntry(f"{where}: a dict with string keys expected")
            return {k: self.enc(node[1], x, f"{where}[{k!r}]") for k, x in v.items()}
        if kind == "plain":
            return _enc_plain(v, where)
        if kind == "live":
            if isinstance(v, StorageInfo) and self.info.get(v.uid) is v:
                return v.uid
            return self.enc(STORAGE, v, where)
        assert kind == "dc", node
        cls, fields = node[1], node[2]
        if type(v) is not cls:
            raise BadEntry(f"{where}: a {cls.__name__} expected, got {type(v).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if names != set(fields):
            raise BadEntry(f"{where}: {cls.__name__}'s fields {sorted(names ^ set(fields))} are not in the trace schema")
        if cls is StepRecord:
            self.info = v.info
        return {k: self.enc(n, getattr(v, k), f"{where}.{k}") for k, n in fields.items()}


class _Bad(Exception):
    """A decoding failure: why, and the path to it (collected on the way up, so the happy path
    builds no path strings)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why, self.path = why, []


def _at(f: Callable[[Any], Any], v: Any, label: str, key: Any) -> Any:
    """``f(v)``; a failure inside gets ``label.format(key)`` on its path (formatted only then)."""
    try:
        return f(v)
    except _Bad as e:
        e.path.append(label.format(key))
        raise


def _decoder(node: tuple, ctx: dict) -> Callable[[Any], Any]:
    """The schema node compiled into a function from JSON value to Python value (raising _Bad);
    ``ctx['info']``: the record's storages, for ("live",) references."""
    kind = node[0]
    if kind in ("int", "nat", "str"):
        want = {"int": "an integer", "nat": "a non-negative integer", "str": "a string"}[kind]
        t = str if kind == "str" else int
        nat = kind == "nat"

        def scalar(v: Any) -> Any:
            if type(v) is not t or (nat and v < 0):
                raise _Bad(f"{want} expected, got {_short(v)}")
            return v
        return scalar
    if kind == "enum":
        enum = node[1]
        values = {e.value: e for e in enum}

        def member(v: Any) -> Any:
            if type(v) is not str or v not in values:
                raise _Bad(f"one of {', '.join(values)} expected, got {_short(v)}")
            return values[v]
        return member
    if kind == "opt":
        inner = _decoder(node[1], ctx)
        return lambda v: None if v is None else inner(v)
    if kind == "row":
        items = [_decoder(n, ctx) for n in node[1:]]
        n_items = len(items)

        def row(v: Any) -> tuple:
            if type(v) is not list or len(v) != n_items:
                raise _Bad(f"a list of {n_items} items expected, got {_short(v)}")
            out = []
            try:
                for f, x in zip(items, v):
                    out.append(f(x))
            except _Bad as e:
                e.path.append(f"[{len(out)}]")
                raise
            return tuple(out)
        return row
    if kind in ("list", "tuple"):
        item = _decoder(node[1], ctx)
        make = list if kind == "list" else tuple

        def seq(v: Any) -> Any:
            if type(v) is not list:
                raise _Bad(f"a list expected, got {_short(v)}")
            out = []
            try:
                for x in v:
                    out.append(item(x))
            except _Bad as e:
                e.path.append(f"[{len(out)}]")
                raise
            return out if make is list else tuple(out)
        return seq
    if kind == "pairs":
        key, value = _decoder(node[1], ctx), _decoder(node[2], ctx)

        def pairs(v: Any) -> dict:
            if type(v) is not list:
                raise _Bad(f"a list of [key, value] pairs expected, got {_short(v)}")
            out: dict = {}
            for i, p in enumerate(v):
                if type(p) is not list or len(p) != 2:
                    raise _Bad(f"[{i}]: a [key, value] pair expected, got {_short(p)}")
                k = _at(key, p[0], "[{}] key", i)
                if k in out:
                    raise _Bad(f"key {k!r} given twice")
                out[k] = _at(value, p[1], "[{!r}]", k)
            return out
        return pairs
    if kind == "obj":
        value = _decoder(node[1], ctx)

        def obj(v: Any) -> dict:
            if type(v) is not dict:
                raise _Bad(f"an object expected, got {_short(v)}")
            return {k: _at(value, x, "[{!r}]", k) for k, x in v.items()}
        return obj
    if kind == "plain":
        def plain(v: Any) -> Any:
            try:
                return _dec_plain(v, "")
            except BadEntry as e:
                raise _Bad(str(e).removeprefix(": ")) from None
        return plain
    if kind == "live":
        full = _decoder(STORAGE, ctx)

        def live(v: Any) -> Any:
            if type(v) is int:
                if v not in ctx["info"]:
                    raise _Bad(f"storage {v} is not in info")
                return ctx["info"][v]
            return full(v)
        return live
    assert kind == "dc", node
    cls, fields = node[1], node[2]
    decoders = {k: _decoder(n, ctx) for k, n in fields.items()}
    names = set(fields)

    def dc(v: Any) -> Any:
        if type(v) is not dict:
            raise _Bad(f"an object expected, got {_short(v)}")
        if v.keys() != names:
            missing, extra = sorted(names - set(v)), sorted(set(v) - names)
            raise _Bad(f"{cls.__name__} fields " + "; ".join(
                x for x in (f"missing {missing}" if missing else "", f"unknown {extra}" if extra else "") if x))
        kw = {}
        for k, f in decoders.items():
            kw[k] = _at(f, v[k], ".{}", k)
            if cls is StepRecord and k == "info":
                ctx["info"] = kw[k]
        return cls(**kw)
    return dc


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, (dict, list)) else type(v).__name__.replace("dict", "object")
    return text if len(text) <= 40 else text[:37] + "..."


def _enc_plain(v: Any, where: str) -> Any:
    """JSON-like data: None, bool, int, finite float, str as themselves; a list as an array; a
    tuple as {"tuple": [...]}; a dict with string keys as {"dict": {...}} (so each decodes to
    the same type)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadEntry(f"{where}: {v} has no JSON form")
        return v
    if type(v) is list:
        return [_enc_plain(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if type(v) is tuple:
        return {"tuple": [_enc_plain(x, f"{where}[{i}]") for i, x in enumerate(v)]}
    if type(v) is dict and all(isinstance(k, str) for k in v):
        return {"dict": {k: _enc_plain(x, f"{where}[{k!r}]") for k, x in v.items()}}
    if isinstance(v, Enum):
        raise BadEntry(f"{where}: an enum ({v!r}) in plain data")
    raise BadEntry(f"{where}: a {type(v).__name__} is not plain data")


def _dec_plain(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadEntry(f"{where}: {v} is not a finite number")
        return v
    if isinstance(v, list):
        return [_dec_plain(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict) and len(v) == 1 and isinstance(v.get("tuple"), list):
        return tuple(_dec_plain(x, f"{where}[{i}]") for i, x in enumerate(v["tuple"]))
    if isinstance(v, dict) and len(v) == 1 and isinstance(v.get("dict"), dict):
        return {k: _dec_plain(x, f"{where}[{k!r}]") for k, x in v["dict"].items()}
    raise BadEntry(f"{where}: an object other than {{\"tuple\": [...]}} or {{\"dict\": {{...}}}}")


def dumps(record: StepRecord, key: str) -> bytes:
    """The entry for ``record`` under cache key ``key``; BadEntry when a field does not fit the
    schema (the record is then not stored)."""
    body = {"format": FORMAT, "version": VERSION, "key": key, "record": _Codec().enc(SCHEMA, record, "record")}
    return gzip.compress(json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8"), compresslevel=1)


def loads(raw: bytes, key: str) -> StepRecord:
    """The record in an entry written by :func:`dumps` under ``key``; NotData (BadEntry past the
    JSON) saying why not: not gzip, not JSON, too deep, another format, version or key, a field
    of the wrong type."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            text = f.read(MAX_ENTRY_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise BadEntry(f"not a gzip-compressed trace ({exc})") from None
    if len(text) > MAX_ENTRY_BYTES:
        raise BadEntry(f"over {MAX_ENTRY_BYTES:,} bytes decompressed")
    body = parse_json(text, "a trace")
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadEntry(f"not a {FORMAT} entry")
    if body.get("version") != VERSION or isinstance(body.get("version"), bool):
        raise BadEntry(f"version {_short(body.get('version'))}, this vramplan reads {VERSION}")
    if body.get("key") != key:
        raise BadEntry(f"written for another setup (key {_short(body.get('key'))})")
    try:
        return _decoder(SCHEMA, {"info": {}})(body.get("record"))
    except _Bad as e:
        raise BadEntry("record" + "".join(reversed(e.path)) + ": " + e.why) from None
    except RecursionError:
        raise BadEntry("nested too deeply to be a trace") from None

