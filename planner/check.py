"""``vramplan check``: a memory budget and regression gate for the users' own CI.

Each setup is a built-in config YAML (evaluated by the torch-free analytic estimator, as
``vramplan estimate --config`` does) or a step file ``.py`` (traced under FakeTensorMode,
through the trace cache, as ``vramplan estimate --step`` does). A setup fails when

* its device total exceeds the budget, ``capacity * (1 - margin)`` of the ``--gpu`` card
  (the CUDA-reported capacity, :func:`planner.gpus.parse_gpu`), or
* with a baseline, its ``peak_allocated_bytes`` or ``device_total_bytes`` grew by more than
  ``tolerance`` (a fraction) against the stored figure.

The report says what grew and where: the breakdown at the peak (``planner.result.Breakdown``,
top modules rolled up to network.child) diffed by category, by network and by module.

The baseline file (JSON, :data:`BASELINE_VERSION`) holds the GPU it was made for and, per
setup name (the path as given plus the step flags), the totals and the three breakdown
dicts. It is validated field by field when read; a bad one is one PlannerError line.

Torch-free: :mod:`planner.measure` is imported only when a step file is checked.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import field
from pathlib import Path, PurePath
from typing import Any, Callable

from planner.records import dataclass
from planner.errors import NotData, PlannerError, parse_json, quote
from planner.result import GIB, PROFILE_TERM, TOP_MODULES, MemoryReport

BASELINE_VERSION = 1
"""The baseline file's format; a file with another version is refused."""
DEFAULT_TOLERANCE = 0.02
"""Growth of a gated figure allowed against the baseline, as a fraction (2 %)."""
DEFAULT_MARGIN = 0.05
ROLLUP = 2
"""Module depth of the by-module diff: network.child (``generator.encoder``)."""
GATED = ("peak_allocated_bytes", "device_total_bytes")
"""The figures a baseline comparison gates."""
TOTALS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_total_bytes")
BREAKDOWNS = ("by_category", "by_network", "top_modules")
BREAKDOWN_LABELS = {"by_category": "category", "by_network": "network", "top_modules": "module"}
STEP_FLAGS = (("batch", "--batch"), ("accum", "--accum"), ("precision", "--precision"),
              ("checkpoint", "--checkpoint"), ("knob", "--knob"), ("jobs", "--jobs"), ("timeout", "--timeout"),
              ("sdpa", "--sdpa"), ("optimizer", "--optimizer"), ("alloc_conf", "--alloc-conf"), ("gpus", "--gpus"),
              ("strategy", "--strategy"))
"""Flags that apply to step-file setups only (refused when no step file is given)."""
CONFIG_SUFFIXES = (".yaml", ".yml")
STEP_SUFFIXES = (".py",)


# --- formatting --------------------------------------------------------------------------------


def fmt_bytes(n: int | float) -> str:
    """A byte count with its unit: GiB (2**30) from 0.1 GiB, else MiB, KiB or B."""
    a = abs(n)
    if a >= GIB / 10:
        return f"{n / GIB:.2f} GiB"
    if a >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if a >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{int(n)} B"


def fmt_delta(n: int) -> str:
    return ("+" if n >= 0 else "-") + fmt_bytes(abs(n))


def fmt_fraction(f: float) -> str:
    return "+inf%" if math.isinf(f) else f"{f:+.1%}"


# --- what to check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One setup to check, as given on the command line (or to the pytest plugin)."""

    arg: str
    """The path as given, normalised (``./a/../b.yaml`` -> ``b.yaml``, ``/`` separators)."""
    path: Path
    """Where to load it from (``arg`` resolved against the base directory, if any)."""
    kind: str
    """'config' (a built-in config YAML, analytic) or 'step' (a step file, traced)."""
    name: str
    """The baseline key: the path as given plus the step flags."""


def _normalise(arg: str) -> str:
    return PurePath(os.path.normpath(arg)).as_posix()


def step_flag_text(flags: dict[str, Any]) -> str:
    """The step flags as they apply to a step file, in a fixed order (knobs sorted by name):
    the suffix of a step setup's baseline name."""
    from planner.step_setup import parse_knob

    parts = []
    for key, flag in STEP_FLAGS:
        value = flags.get(key)
        if key in ("knob", "jobs", "timeout") or value is None:
            continue
        parts.append(f"{flag} {value}")
    knobs = sorted(((parse_knob(k)[0], k.strip()) for k in flags.get("knob") or []))
    parts += [f"--knob {text}" for _, text in knobs]
    return " ".join(parts)


def targets(args: list[str], flags: dict[str, Any] | None = None, base_dir: Path | None = None) -> list[Target]:
    """The setups to check, each file checked to exist; step flags without a step file and a
    setup given twice are errors."""
    flags = flags or {}
    if not args:
        raise PlannerError("check: give at least one setup (a built-in config .yaml or a step file .py)")
    out: list[Target] = []
    for arg in args:
        if not isinstance(arg, str) or not arg.strip():
            raise PlannerError("check: empty setup path (valid: a built-in config .yaml/.yml or a step file .py)")
        norm = _normalise(arg)
        suffix = PurePath(norm).suffix.lower()
        if suffix in CONFIG_SUFFIXES:
            kind = "config"
        elif suffix in STEP_SUFFIXES:
            kind = "step"
        else:
            raise PlannerError(f"check: {quote(arg)} is not a setup file (valid: a built-in config .yaml/.yml "
                               "or a step file .py)")
        path = Path(norm)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise PlannerError(f"check: setup file {quote(arg)} {what}")
        suffix_flags = step_flag_text(flags) if kind == "step" else ""
        name = f"{norm} {suffix_flags}" if suffix_flags else norm
        out.append(Target(arg=norm, path=path, kind=kind, name=name))
    if not any(t.kind == "step" for t in out):
        for key, flag in STEP_FLAGS:
            if flags.get(key) not in (None, 0):  # jobs defaults to 0; an empty --checkpoint '' is given
                raise PlannerError(f"{flag}: applies to step files (.py) only, and none is given"
                                   + ("" if key in ("jobs", "timeout") else "; a built-in config sets it in its YAML"))
    seen: set[str] = set()
    for t in out:
        if t.name in seen:
            raise PlannerError(f"check: setup {quote(t.name)} given twice")
        seen.add(t.name)
    return out


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One setup's report, and what it describes."""

    target: Target
    report: MemoryReport
    """(An error case's, :meth:`Outcome.error_case`, is an empty placeholder that no output reads.)"""
    setup: str
    """One line: what ran (kind/step file, shapes or knobs, batch, precision)."""
    setup_detail: dict[str, Any]
    engine: str
    """How the figures were obtained (analytic estimate, or by trace and how)."""
    seconds: float | None = None

    def entry(self) -> dict[str, Any]:
        """The baseline entry of this setup."""
        r, b = self.report, self.report.breakdown
        return {
            "setup": self.setup,
            "engine": self.engine,
            **{k: int(getattr(r, k)) for k in TOTALS},
            "by_category": {k: int(v) for k, v in b.by_category.items()},
            "by_network": {k: int(v) for k, v in b.by_network.items()},
            "top_modules": {m: int(v) for m, v in b.top_modules},
        }


def _config_report(t: Target, card: Any) -> Measured:
    from planner import profiles
    from planner.analytic.estimate import estimate
    from planner.config import resolve_setup
    from planner.report.terminal import setup_line

    t0 = time.perf_counter()
    try:
        setup = resolve_setup(str(t.path), None, flag=t.arg)
        report = estimate(setup, card.capacity_bytes, rollup=ROLLUP)
    except PlannerError as exc:
        msg = str(exc)
        raise (exc if t.arg in msg else PlannerError(f"{t.arg}: {msg}")) from None
    prof = profiles.for_gpu(card.key)
    engine = "analytic estimate (torch-free)"
    if prof is not None:
        report = prof.apply(report)
        engine += f", profile {prof.label}"
    else:
        engine += ", uncalibrated"
    return Measured(t, report, setup_line(setup), {"summary": setup_line(setup), "config": str(t.arg)}, engine,
                    time.perf_counter() - t0)


def _named(t: Target, msg: str) -> str:
    """The error of one setup, naming it (unless it names the file already)."""
    return msg if msg.startswith(t.arg) or quote(t.arg) in msg else f"{t.name}: {msg}"


def _step_reports(ts: list[Target], flags: dict[str, Any], card: Any, jobs: int,
                  progress: Callable[[int, int, str], None] | None,
                  errors: dict[str, str]) -> tuple[dict[str, Measured], dict[str, Any]]:
    """The step-file setups' reports, traced together; a setup whose file or code fails is put
    in ``errors`` (name -> one line) and left out. Each case's seconds: an equal share of the
    wall time of the traces made together (they run in parallel; ``stats`` has the total)."""
    from planner import setup_flags

    t0 = time.perf_counter()
    setups = {}
    p = {"step": "", **{k: flags.get(k) for k, _ in STEP_FLAGS if k != "jobs"}}
    setup_flags.step_setup({**p, "step": str(ts[0].path)})  # the flags themselves: bad input, before any file
    for t in ts:
        try:
            ss = setup_flags.step_setup({**p, "step": str(t.path)})
            sf = setup_flags.load_step(ss)  # the file's functions and knobs, checked before any tracing
            setups[t.name] = setup_flags.filled(ss, sf)
        except PlannerError as exc:
            errors[t.name] = _named(t, str(exc))
    from planner.measure.search import Evaluator

    with Evaluator(card, jobs, progress) as ev:
        reps = ev.reports(list(dict.fromkeys(setups.values())))
    seconds = time.perf_counter() - t0
    out = {}
    for t in ts:
        if t.name not in setups:
            continue
        ss = setups[t.name]
        rep, _, how = reps[ss]
        if rep is None:  # the user's code rejected the setup: `how` is its one-line error
            errors[t.name] = _named(t, how)
            continue
        engine = ("by trace: the step file under FakeTensorMode on the CPU, CUDA emulated, "
                  + ("derived from traces at other micro-batches" if how == "derived" else "traced at this size")
                  + "; uncalibrated")
        out[t.name] = Measured(t, rep, ss.label(), ss.to_json(), engine, seconds / len(ts))
    stats = {"traces": ev.stats.traces, "cached_traces": ev.stats.cached, "seconds": round(seconds, 2),
             "seconds_each": seconds / len(ts)}
    return out, stats


def measure(ts: list[Target], card: Any, flags: dict[str, Any] | None = None, *, jobs: int = 0,
            progress: Callable[[int, int, str], None] | None = None,
            errors: dict[str, str] | None = None) -> tuple[list[Measured], dict[str, Any]]:
    """Every target's report (in the order given) and trace statistics (empty without step files).
    Built-in configs first: they are fast. A setup that cannot be measured (its config, its step
    file or the user's code fails) raises its PlannerError, or with ``errors`` given is left out
    of the reports and its one-line message put there (the others are still measured)."""
    flags = flags or {}
    errs: dict[str, str] = {}
    done = {}
    stats: dict[str, Any] = {}
    for t in ts:
        if t.kind == "config":
            t0 = time.perf_counter()
            try:
                done[t.name] = _config_report(t, card)
            except PlannerError as exc:
                errs[t.name] = str(exc)
                stats.setdefault("error_seconds", {})[t.name] = time.perf_counter() - t0
    steps = [t for t in ts if t.kind == "step"]
    if steps:
        found, step_stats = _step_reports(steps, flags, card, jobs, progress, errs)
        stats.update(step_stats)
        done.update(found)
    if errs and errors is None:
        raise PlannerError(next(errs[t.name] for t in ts if t.name in errs))
    if errors is not None:
        errors.update(errs)
    return [done[t.name] for t in ts if t.name in done], stats


# --- the baseline file -------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    path: str
    gpu: dict[str, Any]
    setups: dict[str, dict[str, Any]]
    margin: float | None = None


def _bytes_ok(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


TOP_KEYS = ("version", "tool", "units", "gpu", "margin", "setups")
GPU_KEYS = ("key", "name", "capacity_bytes", "capacity_source")
ENTRY_KEYS = ("setup", "engine", *TOTALS, *BREAKDOWNS)


def _unknown(obj: dict, known: tuple[str, ...], where: str, bad: Callable[[str], PlannerError]) -> None:
    """A field nobody reads is a typo or another tool's file: refused, naming it."""
    extra = [k for k in obj if k not in known]
    if extra:
        raise bad(f"{where} has unknown field {quote(extra[0])} (valid: {', '.join(known)})")


def read_baseline(path: str | Path, flag: str = "--baseline", make: str = "--update-baseline") -> Baseline:
    """The baseline at ``path``, validated field by field; anything wrong is one PlannerError
    line naming the file and the field. Every figure is a whole number of bytes; the totals are
    positive (a growth is a fraction of them) and ordered allocated <= reserved <= device total."""
    from planner.config import read_input_file

    shown = quote(str(path))
    if not Path(path).exists():
        raise PlannerError(f"{flag}: no such file {shown} (make it with {make})")
    raw = read_input_file(path, flag)

    def bad(what: str) -> PlannerError:
        return PlannerError(f"{flag}: {shown}: {what}")

    try:
        data = parse_json(raw, "a baseline")
    except NotData as exc:
        raise bad(f"{exc} (valid: a JSON baseline written by `vramplan check --update-baseline`)") from None
    if not isinstance(data, dict):
        raise bad(f"must hold a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if "version" not in data:
        raise bad(f"no 'version' field (valid: {BASELINE_VERSION})")
    if version != BASELINE_VERSION or isinstance(version, bool):
        raise bad(f"'version' is {quote(version)} (valid: {BASELINE_VERSION}; remake it with --update-baseline)")
    _unknown(data, TOP_KEYS, "the file", bad)
    for key in ("tool", "units"):
        if key in data and not isinstance(data[key], str):
            raise bad(f"'{key}' must be a string, got {quote(data[key])}")
    gpu = data.get("gpu")
    if not isinstance(gpu, dict) or not isinstance(gpu.get("key"), str) or not gpu["key"]:
        raise bad(f"'gpu' must be an object with a 'key' string, got {quote(gpu)}")
    _unknown(gpu, GPU_KEYS, "gpu", bad)
    for key in ("name", "capacity_source"):
        if key in gpu and not isinstance(gpu[key], str):
            raise bad(f"gpu.{key} must be a string, got {quote(gpu[key])}")
    if "capacity_bytes" in gpu and not _bytes_ok(gpu["capacity_bytes"], 1):
        raise bad(f"gpu.capacity_bytes must be a positive integer, got {quote(gpu['capacity_bytes'])}")
    margin = data.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1):
        raise bad(f"'margin' must be a number in [0, 1), got {quote(margin)}")
    setups = data.get("setups")
    if not isinstance(setups, dict):
        raise bad(f"'setups' must be an object of setup name -> figures, got {quote(setups)}")
    for name, entry in setups.items():
        where = f"setups[{quote(name)}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} must be an object, got {quote(entry)}")
        _unknown(entry, ENTRY_KEYS, where, bad)
        if not isinstance(entry.get("setup"), str):
            raise bad(f"{where}.setup must be a string describing the setup, got {quote(entry.get('setup'))}")
        if "engine" in entry and not isinstance(entry["engine"], str):
            raise bad(f"{where}.engine must be a string, got {quote(entry['engine'])}")
        for key in TOTALS:
            if key not in entry:
                raise bad(f"{where} has no '{key}'")
            if not _bytes_ok(entry[key], 1):
                raise bad(f"{where}.{key} must be a positive integer of bytes, got {quote(entry[key])}")
        if not entry[TOTALS[0]] <= entry[TOTALS[1]] <= entry[TOTALS[2]]:
            raise bad(f"{where}: figures out of order ({' <= '.join(f'{k} {entry[k]:,}' for k in TOTALS)} must hold)")
        for key in BREAKDOWNS:
            d = entry.get(key)
            if not isinstance(d, dict):
                raise bad(f"{where}.{key} must be an object of name -> bytes, got {quote(d)}")
            for k, v in d.items():
                if k == PROFILE_TERM and key != "top_modules":  # a fitted correction: signed (planner/result.py)
                    if not _bytes_ok(v, -(2**63)):
                        raise bad(f"{where}.{key}[{quote(k)}] must be an integer of bytes, got {quote(v)}")
                elif not _bytes_ok(v):
                    raise bad(f"{where}.{key}[{quote(k)}] must be a non-negative integer of bytes, got {quote(v)}")
    return Baseline(str(path), gpu, setups, margin)


def baseline_json(card: Any, margin: float, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": BASELINE_VERSION,
        "tool": "vramplan check",
        "units": "bytes (GiB = 2**30)",
        "gpu": {"key": card.key, "name": card.name, "capacity_bytes": card.capacity_bytes,
                "capacity_source": card.capacity_source or "as given"},
        "margin": margin,
        "setups": entries,
    }


def write_baseline(path: str | Path, data: dict[str, Any], flag: str = "--baseline") -> None:
    p = Path(path)
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PlannerError(f"{flag}: {quote(str(path))} cannot be written ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class BaselineChanges:
    """What ``--update-baseline`` did to the file: setup names added, changed (figures or
    description differ), unchanged, removed (``--prune-baseline`` only) and kept (in the file,
    not checked now, left as they were)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def text(self) -> str:
        def part(verb: str, names: list[str]) -> str:
            shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
            return f"{verb} {len(names)}" + (f" ({shown})" if names else "")

        out = "; ".join([part("added", self.added), part("changed", self.changed), part("unchanged", self.unchanged),
                         part("removed", self.removed)])
        if self.kept:
            out += f"; {part('kept', self.kept)} not checked now (--prune-baseline removes them)"
        return out

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in ("added", "changed", "unchanged", "removed", "kept")}


def merge_into_baseline(path: str | Path, card: Any, margin: float, measured: list[Measured],
                        flag: str = "--baseline", *, prune: bool = False, keep_card: bool = True) -> BaselineChanges:
    """Add or replace these setups' entries in the baseline at ``path`` (made when missing),
    keeping every other entry unless ``prune``. ``keep_card``: an existing file keeps its GPU
    and margin (the pytest plugin's update mode); else they become ``card`` and ``margin``
    (``vramplan check --update-baseline --gpu …``). A baseline that exists but does not read is
    refused, never overwritten."""
    entries: dict[str, dict[str, Any]] = {}
    data = baseline_json(card, margin, entries)
    if Path(path).exists():
        old = read_baseline(path, flag)
        entries.update(old.setups)
        if keep_card:
            data["gpu"] = old.gpu
            if old.margin is not None:
                data["margin"] = old.margin
    ch = BaselineChanges()
    now = {m.target.name: m.entry() for m in measured}
    for name, entry in now.items():
        (ch.added if name not in entries else ch.unchanged if entries[name] == entry else ch.changed).append(name)
        entries[name] = entry
    for name in [n for n in entries if n not in now]:
        if prune:
            del entries[name]
            ch.removed.append(name)
        else:
            ch.kept.append(name)
    write_baseline(path, data, flag)
    return ch


# --- judging -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One setup's verdict: budget, and growth against its baseline entry."""

    measured: Measured
    budget_bytes: int
    fits: bool
    old: dict[str, Any] | None = None
    status: str = "ok"
    """'ok', 'fail', 'new' (no baseline entry; not a failure) or 'error' (not measured: ``error``)."""
    failures: list[str] = field(default_factory=list)
    growth: dict[str, dict[str, Any]] = field(default_factory=dict)
    diff: dict[str, dict[str, int]] = field(default_factory=dict)
    capped: dict[str, bool] = field(default_factory=dict)
    """Per breakdown: a top-10 list was full on one side, so a module outside it counts as 0."""
    error: str | None = None
    """Why the setup could not be measured (its config, step file or the user's code failed)."""

    @classmethod
    def error_case(cls, t: Target, error: str, budget: int, seconds: float | None) -> "Outcome":
        """A setup that could not be measured: no figures, only its error."""
        from planner.result import Breakdown

        empty = MemoryReport("not measured", 0, 0, 0, Breakdown({}, {}), "", 0, "")
        m = Measured(t, empty, f"{t.name} (not measured)", {}, "not measured", seconds)
        return cls(m, budget, False, status="error", error=error)

    @property
    def name(self) -> str:
        return self.measured.target.name

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def grew_text(self) -> str:
        """'activations +1.21 GiB (generator.encoder +1.05 GiB), parameters +2.0 MiB', or ''."""
        cats = self.diff.get("by_category", {})
        mods = self.diff.get("top_modules", {})
        top_mod = max(((m, d) for m, d in mods.items() if d > 0), key=lambda kv: kv[1], default=None)
        parts = []
        for cat, d in sorted(cats.items(), key=lambda kv: -kv[1]):
            if d <= 0:
                continue
            text = f"{cat} {fmt_delta(d)}"
            if cat == "activations" and top_mod is not None:
                text += f" ({top_mod[0]} {fmt_delta(top_mod[1])})"
            parts.append(text)
        return ", ".join(parts)

    def shrank_text(self) -> str:
        cats = self.diff.get("by_category", {})
        return ", ".join(f"{c} {fmt_delta(d)}" for c, d in sorted(cats.items(), key=lambda kv: kv[1]) if d < 0)

    def changes(self, key: str, limit: int = 4) -> str:
        items = sorted(self.diff.get(key, {}).items(), key=lambda kv: -abs(kv[1]))
        text = ", ".join(f"{k} {fmt_delta(d)}" for k, d in items[:limit])
        if len(items) > limit:
            text += f", … ({len(items) - limit} more)"
        return text

    def fit_text(self) -> str:
        total = self.measured.report.device_total_bytes
        if self.fits:
            return (f"fits: device_total {fmt_bytes(total)} <= budget {fmt_bytes(self.budget_bytes)} "
                    f"({fmt_bytes(self.budget_bytes - total)} to spare)")
        return (f"DOES NOT FIT: device_total {fmt_bytes(total)} > budget {fmt_bytes(self.budget_bytes)} "
                f"({fmt_bytes(total - self.budget_bytes)} over)")

    def headline(self) -> str:
        """One line: the verdict, the setup's name, and why."""
        tag = {"ok": "ok", "fail": "FAIL", "new": "new", "error": "ERROR"}[self.status]
        head = f"{tag} {self.name}: "
        if self.error is not None:
            return head + f"not measured: {self.error}"
        if self.failures:
            text = "; ".join(self.failures)
            grew = self.grew_text()
            if grew and any(g["over_tolerance"] for g in self.growth.values()):
                text += f"; grew: {grew}"
            return head + text
        bits = [self.fit_text()]
        if self.status == "new":
            bits.append("new (no baseline)")
        elif self.growth:
            g = self.growth["device_total_bytes"]
            bits.append(f"device_total {fmt_fraction(g['fraction'])} against the baseline")
        return head + "; ".join(bits)

    def lines(self, tolerance: float | None) -> list[str]:
        """The setup's report: setup, totals (old -> new), what grew and where, the verdict."""
        r = self.measured.report
        if self.error is not None:
            return [f"ERROR {self.name}", f"  not measured: {self.error}"]
        tag = {"ok": "ok  ", "fail": "FAIL", "new": "new "}[self.status]
        out = [f"{tag} {self.name}" + ("  (new: no baseline)" if self.status == "new" else "")]
        out.append(f"  setup: {self.measured.setup}")
        out.append(f"  figures: {self.measured.engine}")
        for key in GATED:
            label = key.removesuffix("_bytes")
            if key in self.growth:
                g = self.growth[key]
                over = f"  over the {tolerance:.1%} tolerance" if g["over_tolerance"] else ""
                out.append(f"  {label}: {fmt_bytes(g['old'])} -> {fmt_bytes(g['new'])} "
                           f"({fmt_delta(g['delta'])}, {fmt_fraction(g['fraction'])}){over}")
            else:
                out.append(f"  {label}: {fmt_bytes(getattr(r, key))} ({getattr(r, key):,} B)")
        if self.old is not None:
            grew, shrank = self.grew_text(), self.shrank_text()
            if grew:
                out.append(f"  what grew: {grew}")
            if shrank:
                out.append(f"  what shrank: {shrank}")
            for key in ("by_network", "top_modules"):
                text = self.changes(key)
                if text:
                    cap = " (top-10 lists; a module outside one counts as 0)" if self.capped.get(key) else ""
                    out.append(f"  by {BREAKDOWN_LABELS[key]}: {text}{cap}")
            if not self.diff.get("by_category") and not self.diff.get("by_network"):
                out.append("  breakdown: unchanged")
        out.append(f"  {self.fit_text()}")
        return out

    def to_json(self) -> dict[str, Any]:
        m, r = self.measured, self.measured.report
        if self.error is not None:
            return {"name": self.name, "file": m.target.arg, "kind": m.target.kind, "status": "error",
                    "error": self.error, "message": self.headline()}
        return {
            "name": self.name,
            "file": m.target.arg,
            "kind": m.target.kind,
            "status": self.status,
            "setup": m.setup,
            "setup_detail": m.setup_detail,
            "engine": m.engine,
            **{k: getattr(r, k) for k in TOTALS},
            "budget_bytes": self.budget_bytes,
            "fits": self.fits,
            "breakdown": {k: v for k, v in m.entry().items() if k in BREAKDOWNS},
            "baseline": ({k: self.old[k] for k in TOTALS} if self.old is not None else None),
            "growth": self.growth or None,
            "diff": self.diff or None,
            "grew": self.grew_text() or None,
            "failures": self.failures,
            "message": self.headline(),
        }


def _diff(old: dict[str, int], new: dict[str, int]) -> dict[str, int]:
    return {k: new.get(k, 0) - old.get(k, 0) for k in dict.fromkeys([*new, *old]) if new.get(k, 0) != old.get(k, 0)}


def judge(measured: list[Measured], card: Any, margin: float, baseline: Baseline | None = None,
          tolerance: float = DEFAULT_TOLERANCE) -> list[Outcome]:
    """The verdict of every setup: the budget (capacity * (1 - margin)) and, with a baseline,
    growth of the gated figures beyond ``tolerance``."""
    budget = int(card.capacity_bytes * (1 - margin))
    outcomes = []
    for m in measured:
        r = m.report
        o = Outcome(m, budget, r.device_total_bytes <= budget)
        if not o.fits:
            o.failures.append(f"does not fit {card.name}: device_total {fmt_bytes(r.device_total_bytes)} > budget "
                              f"{fmt_bytes(budget)} ({fmt_bytes(r.device_total_bytes - budget)} over)")
        if baseline is not None:
            old = baseline.setups.get(m.target.name)
            if old is None:
                o.status = "new"
            else:
                o.old = old
                new = m.entry()
                for key in GATED:
                    a, b = old[key], new[key]
                    frac = (b - a) / a if a else (math.inf if b > a else 0.0)
                    over = frac > tolerance
                    o.growth[key] = {"old": a, "new": b, "delta": b - a, "fraction": frac, "over_tolerance": over}
                    if over:
                        o.failures.append(f"{key.removesuffix('_bytes')} grew {fmt_fraction(frac)} "
                                          f"({fmt_bytes(a)} -> {fmt_bytes(b)}, tolerance {tolerance:.1%})")
                for key in BREAKDOWNS:
                    d = _diff(old[key], new[key])
                    if d:
                        o.diff[key] = d
                    if key == "top_modules":
                        o.capped[key] = TOP_MODULES in (len(old[key]), len(new[key]))
        if o.failures:
            o.status = "fail"
        outcomes.append(o)
    return outcomes


def json_safe(obj: Any) -> Any:
    """inf -> None (JSON has no infinity)."""
    if isinstance(obj, float) and math.isinf(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# --- CI outputs --------------------------------------------------------------------------------


def gpu_line(card: Any, margin: float) -> str:
    budget = int(card.capacity_bytes * (1 - margin))
    return (f"GPU {card.name} ({card.key}): budget {fmt_bytes(budget)} = capacity {card.capacity_bytes / GIB:.2f} GiB "
            f"x (1 - {margin:.0%} margin)")


def junit_xml(outcomes: list[Outcome], card: Any, margin: float, tolerance: float | None,
              baseline_path: str | None) -> bytes:
    """One <testcase> per setup; a <failure> with the headline (message) and the report (text)
    when it fails, an <error> when it could not be measured."""
    import xml.etree.ElementTree as ET

    failures = sum(o.failed for o in outcomes)
    errors = str(sum(o.error is not None for o in outcomes))
    secs = sum(o.measured.seconds or 0.0 for o in outcomes)
    root = ET.Element("testsuites", name="vramplan check", tests=str(len(outcomes)), failures=str(failures),
                      errors=errors)
    suite = ET.SubElement(root, "testsuite", name="vramplan check", tests=str(len(outcomes)), failures=str(failures),
                          errors=errors, skipped="0", time=f"{secs:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("gpu", card.key), ("gpu_name", card.name), ("capacity_bytes", str(card.capacity_bytes)),
                 ("capacity_source", card.capacity_source or "as given"), ("margin", str(margin)),
                 ("budget_bytes", str(int(card.capacity_bytes * (1 - margin)))),
                 ("baseline", baseline_path or ""), ("tolerance", "" if tolerance is None else str(tolerance))):
        ET.SubElement(props, "property", name=k, value=v)
    for o in outcomes:
        attrs = {"classname": "vramplan.check", "name": o.name, "file": o.measured.target.arg}
        if o.measured.seconds is not None:
            attrs["time"] = f"{o.measured.seconds:.3f}"
        case = ET.SubElement(suite, "testcase", attrs)
        text = "\n".join(o.lines(tolerance))
        if o.error is not None:
            ET.SubElement(case, "error", message=o.headline(), type="setup not measured").text = text
        elif o.failed:
            kind = "memory budget" if not o.fits else "memory regression"
            f = ET.SubElement(case, "failure", message=o.headline(), type=kind)
            f.text = text
        ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def github_annotations(outcomes: list[Outcome], card: Any, margin: float) -> list[str]:
    """``::error file=…,title=…::…`` per failing setup, ``::warning …`` per setup without a
    baseline entry (GitHub Actions workflow commands): the headline, then the setup and the card."""
    lines = []
    for o in outcomes:
        f = _gh_escape(o.measured.target.arg, prop=True)
        text = _gh_escape(o.headline() if o.error is not None else
                          f"{o.headline()} [setup: {o.measured.setup}; {gpu_line(card, margin)}]")
        if o.failed or o.error is not None:
            why = "not measured" if o.error is not None else "does not fit" if not o.fits else "memory grew"
            title = _gh_escape(f"vramplan check: {why}", prop=True)
            lines.append(f"::error file={f},title={title}::{text}")
        elif o.status == "new":
            title = _gh_escape("vramplan check: no baseline", prop=True)
            lines.append(f"::warning file={f},title={title}::{text}")
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(outcomes: list[Outcome], card: Any, margin: float, tolerance: float | None,
                     baseline_path: str | None) -> str:
    """A markdown table for ``$GITHUB_STEP_SUMMARY``: one row per setup."""
    failed = sum(o.failed or o.error is not None for o in outcomes)
    head = f"### vramplan check: {failed} of {len(outcomes)} setups failed" if failed else \
        f"### vramplan check: all {len(outcomes)} setups pass"
    lines = [head, "", _md(gpu_line(card, margin)) + ("" if baseline_path is None else
                                                      f"; baseline `{_md(baseline_path)}`, tolerance {tolerance:.1%}"), "",
             "| setup | result | peak allocated | device total | change (allocated / total) | fits budget | what grew |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for o in outcomes:
        r = o.measured.report
        if o.error is not None:
            lines.append(f"| `{_md(o.name)}` | **ERROR** | – | – | – | – | {_md(o.error)} |")
            continue

        def fig(key: str) -> str:
            g = o.growth.get(key)
            return f"{fmt_bytes(g['old'])} → {fmt_bytes(g['new'])}" if g else fmt_bytes(getattr(r, key))

        if o.growth:
            change = " / ".join(fmt_fraction(o.growth[k]["fraction"]) for k in GATED)
        else:
            change = "new" if o.status == "new" else "–"
        result = {"ok": "pass", "fail": "**FAIL**", "new": "pass (new, no baseline)"}[o.status]
        lines.append(f"| `{_md(o.name)}` | {result} | {fig('peak_allocated_bytes')} | {fig('device_total_bytes')} | "
                     f"{change} | {'yes' if o.fits else '**no**'} | {_md(o.grew_text()) or '–'} |")
    lines.append("")
    lines.append("Setups: " + "; ".join(f"`{_md(o.name)}`: {_md(o.measured.setup)}" for o in outcomes))
    return "\n".join(lines) + "\n\n"


# --- the whole check ---------------------------------------------------------------------------


@dataclass
class CheckResult:
    card: Any
    margin: float
    tolerance: float | None
    """None without a baseline comparison."""
    baseline_path: str | None
    updated: bool
    """The baseline file was updated from these setups (merged; what changed: ``changes``)."""
    outcomes: list[Outcome]
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    changes: BaselineChanges | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def errors(self) -> list[Outcome]:
        """Setups that could not be measured."""
        return [o for o in self.outcomes if o.error is not None]

    @property
    def exit_code(self) -> int:
        """2 when a setup could not be measured (as for any bad input; the others are still
        reported), else 1 when one failed, else 0."""
        return 2 if self.errors else 1 if self.failed else 0

    def text_lines(self) -> list[str]:
        n = len(self.outcomes)
        out = [f"vramplan check: {n} setup{'s' if n != 1 else ''}; {gpu_line(self.card, self.margin)}",
               self.card.capacity_note()]
        if self.updated:
            assert self.changes is not None
            out.append(f"baseline: updated {self.baseline_path}: {self.changes.text()}; no comparison made")
        elif self.baseline_path is not None:
            out.append(f"baseline: {self.baseline_path}, tolerance {self.tolerance:.1%} on peak_allocated and device_total")
        else:
            out.append("baseline: none (budget only; --baseline FILE also gates growth)")
        for o in self.outcomes:
            out.append("")
            out += o.lines(self.tolerance)
        out.append("")
        out += [f"note: {x}" for x in self.notes]
        if self.stats.get("traces") or self.stats.get("cached_traces"):
            out.append(f"step files: {self.stats['traces']} traces ({self.stats['cached_traces']} from the trace cache), "
                       f"{self.stats['seconds']:.1f} s")
        bad, errs = self.failed, self.errors
        if errs:
            out.append(f"result: {len(errs)} of {n} setups not measured, {len(bad)} failed (exit 2)")
        else:
            out.append(f"result: {len(bad)} of {n} setups failed (exit 1)" if bad else f"result: all {n} setups pass (exit 0)")
        return out

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "command": "vramplan check",
            "gpu": {"key": self.card.key, "name": self.card.name, **self.card.capacity_json(),
                    "capacity_note": self.card.capacity_note(), "margin": self.margin,
                    "budget_bytes": int(self.card.capacity_bytes * (1 - self.margin))},
            "baseline": None if self.baseline_path is None else
            {"path": self.baseline_path, "tolerance": self.tolerance, "updated": self.updated,
             "changes": self.changes.to_json() if self.changes is not None else None},
            "setups": [o.to_json() for o in self.outcomes],
            "failed": len(self.failed),
            "errors": len(self.errors),
            "exit_code": self.exit_code,
            "notes": self.notes,
            "trace_stats": self.stats or None,
        })


def check_tolerance(tolerance: float, flag: str = "--tolerance") -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance < 0:
        raise PlannerError(f"{flag}: {quote(tolerance)} must be a fraction >= 0, e.g. 0.02 for 2 %")


def check_margin(margin: float, flag: str = "--margin") -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise PlannerError(f"{flag}: {quote(margin)} must be in [0, 1), e.g. 0.05 for 5 %")


def run(args: list[str], *, gpu: str, margin: float = DEFAULT_MARGIN, baseline: str | Path | None = None,
        tolerance: float | None = None, update_baseline: bool = False, prune_baseline: bool = False,
        flags: dict[str, Any] | None = None, jobs: int = 0, base_dir: Path | None = None,
        progress: Callable[[int, int, str], None] | None = None) -> CheckResult:
    """Check every setup against the budget and, with ``baseline``, against its stored figures
    (``update_baseline``: merge them into the file instead: add new setups, replace checked
    ones, keep the rest; ``prune_baseline``: also remove the setups not checked now). Every
    input is checked before any work; a setup that cannot be measured is an error case beside
    the others' verdicts, and keeps its baseline entry."""
    from planner.config import check_gpu_flag
    from planner.gpus import parse_gpu

    check_gpu_flag(gpu)
    card = parse_gpu(gpu)
    check_margin(margin)
    if tolerance is not None:
        check_tolerance(tolerance)
        if baseline is None:
            raise PlannerError("--tolerance: applies to a baseline comparison; give --baseline FILE")
    if update_baseline and baseline is None:
        raise PlannerError("--update-baseline: give --baseline FILE to write")
    if prune_baseline and not update_baseline:
        raise PlannerError("--prune-baseline: applies with --update-baseline (it removes the baseline's setups "
                           "not checked now)")
    if update_baseline and tolerance is not None:
        raise PlannerError("--tolerance: applies to a comparison; --update-baseline writes the figures instead")
    ts = targets(args, flags, base_dir)
    bpath = None if baseline is None else str(baseline)
    old = None
    if bpath is not None:
        if update_baseline:
            from planner.config import check_output_path

            check_output_path(bpath, "--baseline")
            if Path(bpath).exists():
                read_baseline(bpath)  # merged into: a file that does not read is refused, never overwritten
        else:
            old = read_baseline(bpath)
    tol = None if bpath is None or update_baseline else (DEFAULT_TOLERANCE if tolerance is None else tolerance)
    errors: dict[str, str] = {}
    measured, stats = measure(ts, card, flags, jobs=jobs, progress=progress, errors=errors)
    judged = {o.name: o for o in judge(measured, card, margin, old, tol or 0.0)}
    budget = int(card.capacity_bytes * (1 - margin))
    took = {**{t.name: stats.get("seconds_each") for t in ts if t.kind == "step"}, **stats.pop("error_seconds", {})}
    outcomes = [judged[t.name] if t.name in judged else Outcome.error_case(t, errors[t.name], budget, took.get(t.name))
                for t in ts]
    notes = []
    if old is not None:
        if old.gpu.get("key") != card.key:
            notes.append(f"the baseline was made for --gpu {old.gpu.get('key')} ({old.gpu.get('name', '?')}); "
                         f"checking against {card.key}: the figures compared do not depend on the card except through "
                         "allocator settings that act on its capacity")
        unchecked = [k for k in old.setups if k not in {t.name for t in ts}]
        if unchecked:
            notes.append(f"{len(unchecked)} baseline setup(s) not checked now: " + ", ".join(unchecked[:5])
                         + (" …" if len(unchecked) > 5 else ""))
        for o in outcomes:
            g = o.growth.get("device_total_bytes")
            if g and not o.failed and g["fraction"] < -(tol or 0.0):
                notes.append(f"{o.name}: device_total shrank {fmt_fraction(g['fraction'])}; lock it in with "
                             f"--update-baseline")
    changes = None
    if update_baseline:
        assert bpath is not None
        changes = merge_into_baseline(bpath, card, margin, measured, prune=prune_baseline, keep_card=False)
        if errors:
            notes.append(f"{len(errors)} setup(s) not measured keep their baseline entries, if any: "
                         + ", ".join(list(errors)[:5]))
    return CheckResult(card, margin, tol, bpath, update_baseline, outcomes, stats, notes, changes)
