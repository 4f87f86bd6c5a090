"""Searching a step file's configurations: ``recommend --step``, ``--max-batch``, ``--max-knob``.

Every exact figure is what the traced step does: derived from a few traces where the step is
affine in the micro-batch (``planner/measure/traces.py``), traced directly where not.
Accumulation: from the second micro-batch on, every micro-batch runs with the previous
micro-batches' gradients held and the last one also steps, so a step with accumulation
A >= 3 allocates, micro-batch by micro-batch, what accumulation 2 allocates on its last
micro-batch. Candidates with A >= 3 take accumulation 2's figures where a trace at
accumulation 3 (micro-batch 2) has the same peak as accumulation 2, and are traced
directly where it does not.

``recommend`` is planner/search.py's one search with the tracer as its engine
(``TraceEngine``) over the step's space (``dims``: precision x checkpointing x (micro-batch,
accumulation) x the file's ``--search`` knobs): each change alone is traced exactly, every
combination predicted from them and verified in preference order. A candidate never verified says
"predicted".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from planner.errors import PlannerError
from planner.gpus import GPU
from planner.gpusearch import GpuOption
from planner.search import (Candidate, Change, Outcome, SizeSearch, apply, check_margin, exact_ratios, fewest_gpus,
                            max_size)
from planner.result import MemoryReport
from planner.measure.precision_note import amp_costs_more, precision_pair
from planner.step_setup import PRECISION_HELP, StepSetup

PRECISION_TIER = {"fp32": 0, "amp-fp16": 0, "amp-bf16": 0, "fp16-master": 1, "bf16-master": 1, "fp16": 2, "bf16": 2}
ACCUM_CHECK = (2, 3)  # (micro-batch, accumulation) of the trace that checks "A >= 3 is like A = 2"
FREEZE = ("precision", "checkpointing", "batch", "sdpa", "allocator")
"""The dimensions of :func:`dims` besides --search's knobs (--freeze names them)."""
DIRECT_ACCUM = 4  # one setup of a class at accumulation <= this is traced as it is, not checked


@dataclass
class Stats:
    traces: int = 0
    cached: int = 0
    derived: int = 0
    direct: int = 0
    predicted: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the search's traces show (AMP costing memory)
    allocator: dict | None = None  # --max-batch: the larger answer with expandable segments, where there is one


def seconds_per_sample(record: Any, precision: str, gpu: GPU) -> float | None:
    """Roofline time per effective sample (``planner.analytic.cost.roofline_seconds``, the
    simulator's model) on the traced step: iteration 2's matmul/conv/attention FLOPs
    (torch.utils.flop_counter's formulas, recomputation included) and the bytes it allocates,
    over the samples it consumed, on all ranks (``--gpus N``: N ranks step at once; communication
    not modelled). Per sample it is the same for accumulation 2 and any higher one. Uncalibrated;
    for comparing candidates."""
    from planner.analytic.cost import roofline_seconds

    flops = record.setup.get("flops_iteration2")
    if flops is None:
        return None
    written = sum(d for _, d in record.events[record.iteration2_start:] if d > 0)
    step = roofline_seconds(flops, written, gpu, half=precision != "fp32")
    return step / (record.setup["batch_size"] * record.setup["accumulation"] * record.setup.get("gpus", 1))


class Evaluator:
    """Reports for many StepSetups from as few traces as the derivation allows. Its worker
    processes live until :meth:`close` (or the ``with`` block's end)."""

    def __init__(self, gpu: GPU | None, jobs: int = 0, progress: Callable[[int, int, str], None] | None = None,
                 derive_from: int = 3, profile: Any = None):
        """``derive_from``: a class of setups (same step, knobs, precision, checkpointing,
        accumulation <= 2) asked for at fewer micro-batches than this is traced at those
        directly instead of derived (a derivation costs DERIVE_POINTS traces); 1 when more
        sizes will be asked for later, one at a time (a size search)."""
        from planner.measure import traces

        self.gpu, self.jobs, self.progress, self.derive_from = gpu, jobs, progress, derive_from
        self.profile = profile  # a `calibrate --step` DeviceProfile applied to every report
        self.stats = Stats()
        self.pool = traces.Pool(jobs)
        self.errors: dict[StepSetup, str] = {}
        self._derivs: dict[StepSetup, Any] = {}
        self._records: dict[StepSetup, Any] = {}
        self._accum_ok: dict[StepSetup, bool] = {}

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()

    @staticmethod
    def cls(s: StepSetup) -> StepSetup:
        return replace(s, batch_size=None, accumulation=min(s.accumulation, 2), alloc_conf="")

    def _trace(self, setups: list[StepSetup], side: Any = ()) -> None:
        from planner.measure import traces

        todo = [s for s in dict.fromkeys(setups) if s not in self._records and s not in self.errors]
        if not todo and not side:
            return
        records, traced = traces.trace_many(todo, self.jobs, self.progress, pool=self.pool, errors=self.errors,
                                            side=side)
        self._records.update(records)
        self.stats.traces += traced
        self.stats.cached += len(todo) - traced
        for s in todo:
            if s in self.errors:
                self.stats.failed[s.label()] = self.errors[s]

    def add(self, setup: StepSetup, record: Any) -> None:
        """A trace of ``setup`` taken elsewhere (a side call: the checkpoint plan's), counted as one."""
        key = replace(setup, alloc_conf="")
        if key not in self._records:
            self._records[key] = record
            self.stats.traces += 1

    def pending(self, s: StepSetup) -> Any:
        """What evaluating ``s`` on its own still needs, as a key (setups with the same key share
        it): its class's accumulation check or derivation, or its own trace; None where it needs no
        new trace (derived, traced, or a replay of one of them with other allocator settings)."""
        from planner.measure import traces

        if self._derivable(s):
            return None
        c = self.cls(s)
        if s.accumulation > DIRECT_ACCUM and c not in self._accum_ok:
            return ("check", c)
        if c not in self._derivs and (s.batch_size or 0) >= min(traces.DERIVE_POINTS) and self.derive_from <= 1:
            return c
        d = self._direct(s)
        return None if d in self._records or d in self.errors else d

    def evaluate(self, setups: list[StepSetup], alone: bool = False) -> dict[StepSetup, tuple[Any, str]]:
        """setup -> (StepRecord, how) for every setup, or (None, the error) where the user's code
        rejected it; a record taken from accumulation 2 for an accumulation >= 3 is that
        trace's, as traced (its setup says accumulation 2). Micro-batches below the derivation
        points are traced, never extrapolated (size-1 dimensions take other paths). ``alone``:
        :meth:`prepare`'s."""
        self.prepare(setups, alone=alone)
        out: dict[StepSetup, tuple[Any, str]] = {}
        for s in setups:
            if self._derivable(s):
                assert s.batch_size is not None
                out[s] = (self._derivs[self.cls(s)].record_at(s.batch_size), "derived")
                self.stats.derived += 1
            elif self._direct(s) in self._records:
                out[s] = (self._records[self._direct(s)], "traced")
                self.stats.direct += 1
            else:
                out[s] = (None, self.errors.get(self._direct(s), "not traced"))
        return out

    def prepare(self, setups: list[StepSetup], side: Any = (), alone: bool = False) -> None:
        """Take the traces that :meth:`evaluate` of ``setups`` needs (the same decisions, so a later
        ``evaluate`` takes none), with ``side`` calls (``traces.SideCall``) in the first round.
        ``alone``: decide as if each setup (with its allocator variants: one trace) were evaluated on
        its own, one after another -- what a walk verifying one candidate at a time takes -- with the
        traces still run side by side."""
        groups = list(_groups(setups)) if alone else [setups]
        first = [s for g in groups for s in self._decide(g)]
        self._trace(first, side)
        for g in groups:
            self._settle(g)
        self._trace([self._direct(s) for s in setups if not self._derivable(s)])

    def _decide(self, setups: list[StepSetup]) -> list[StepSetup]:
        """Per class of ``setups``: derive or trace each size, check accumulation >= 3 or trace it as
        it is; the first round's traces."""
        from planner.measure import traces

        low = min(traces.DERIVE_POINTS)
        sizes: dict[StepSetup, set[int]] = {}
        deep: dict[StepSetup, dict[StepSetup, None]] = {}  # one trace each: allocator variants share it
        for s in setups:
            c = self.cls(s)
            sizes.setdefault(c, set()).add(s.batch_size or 0)
            if s.accumulation >= 3:
                deep.setdefault(c, {})[replace(s, alloc_conf="")] = None
        first, checking = [], set()
        for c in sizes:
            derivable = {b for b in sizes[c] if b >= low}
            if c not in self._derivs and derivable:
                if len(derivable) < self.derive_from:
                    self._derivs[c] = None  # fewer sizes than a derivation is worth: trace them
                else:
                    first += [replace(c, batch_size=b) for b in traces.DERIVE_POINTS]
            if c in deep and c not in self._accum_ok and not (len(deep[c]) == 1 and next(iter(deep[c])).accumulation <= DIRECT_ACCUM):
                b, a = ACCUM_CHECK
                first += [replace(c, batch_size=b, accumulation=a), replace(c, batch_size=b, accumulation=2)]
                checking.add(c)
        # setups already known to need their own trace go in the same round
        return first + [self._direct(s) for s in setups
                        if not (s.accumulation >= 3 and self.cls(s) in checking)
                        and ((s.batch_size or 0) < low or (self.cls(s) in self._derivs and self._derivs[self.cls(s)] is None))]

    def _settle(self, setups: list[StepSetup]) -> None:
        """After the first round: each class's derivation and accumulation check."""
        from planner.measure import traces

        low = min(traces.DERIVE_POINTS)
        for c in dict.fromkeys(self.cls(s) for s in setups):
            if c not in self._derivs and any((s.batch_size or 0) >= low for s in setups if self.cls(s) == c):
                pts = [replace(c, batch_size=b) for b in traces.DERIVE_POINTS]
                ok = all(p in self._records for p in pts)
                self._derivs[c] = traces.derive([(p.batch_size, self._records[p]) for p in pts]) if ok else None
            if c.accumulation == 2 and c not in self._accum_ok:
                b, a = ACCUM_CHECK
                three, two = replace(c, batch_size=b, accumulation=a), replace(c, batch_size=b, accumulation=2)
                if three in self._records and two in self._records:
                    self._accum_ok[c] = self._records[three].tracker.peak_bytes == self._records[two].tracker.peak_bytes

    def _derivable(self, s: StepSetup) -> bool:
        from planner.measure import traces

        c = self.cls(s)
        return (self._derivs.get(c) is not None and (s.batch_size or 0) >= min(traces.DERIVE_POINTS)
                and (s.accumulation <= 2 or bool(self._accum_ok.get(c))))

    def _direct(self, s: StepSetup) -> StepSetup:
        c = self.cls(s)
        if s.accumulation >= 3 and self._accum_ok.get(c):
            return replace(s, accumulation=2, alloc_conf="")
        return replace(s, alloc_conf="")

    def reports(self, setups: list[StepSetup],
                alone: bool = False) -> dict[StepSetup, tuple[MemoryReport | None, float | None, str]]:
        """setup -> (report, seconds per sample, how); (None, None, the error) where the user's
        code rejected the setup. ``alone``: :meth:`prepare`'s."""
        from planner.measure.profile import report_from

        out: dict[StepSetup, tuple[MemoryReport | None, float | None, str]] = {}
        for s, (rec, how) in self.evaluate(setups, alone).items():
            if rec is None:
                out[s] = (None, None, how)
                continue
            secs = seconds_per_sample(rec, s.precision, self.gpu) if self.gpu else None
            if s.accumulation > rec.setup["accumulation"]:
                info = dict(rec.setup)
                info.update(accumulation=s.accumulation, effective_batch=s.batch_size * s.accumulation * s.gpus,
                            accumulation_basis=f"as accumulation 2 (checked: a trace at micro-batch {ACCUM_CHECK[0]} "
                                               f"x accumulation {ACCUM_CHECK[1]} has accumulation 2's peak)")
                rec = replace(rec, setup=info)
            cap = self.gpu.capacity_bytes if self.gpu else None
            note = (f"by trace: the step file traced under FakeTensorMode on the CPU (CUDA emulated), "
                    f"{'derived from traces at other micro-batches (affine sizes, verified)' if how == 'derived' else 'traced at this size'}; "
                    "not the analytic estimator",)
            rep = report_from(rec, "fake", s.alloc_conf, 0.0, source="estimate:trace", rollup=2, capacity_bytes=cap,
                              extra_notes=note)
            out[s] = (self.profile.apply(rep) if self.profile is not None else rep, secs, how)
        return out

    def report(self, s: StepSetup) -> MemoryReport:
        """One setup's report; the user's error as a PlannerError."""
        rep, _, how = self.reports([s])[s]
        if rep is None:
            raise PlannerError(how)
        return rep


def _groups(setups: list[StepSetup]) -> Any:
    """``setups`` in order, each with its allocator variants (one trace)."""
    by: dict[StepSetup, list[StepSetup]] = {}
    for s in setups:
        by.setdefault(replace(s, alloc_conf=""), []).append(s)
    return by.values()


# --- recommend ------------------------------------------------------------------------------------


class TraceEngine:
    """The tracer as planner/search.py's engine: every figure a trace (derived where the step is
    affine in the micro-batch); each change's ratio is its exact figure alone."""

    exhaustive = 0  # seconds per trace: always walk with the SAFETY filter

    def __init__(self, ev: Evaluator):
        self.ev, self.gpu = ev, ev.gpu

    @property
    def evaluations(self) -> int:
        return self.ev.stats.traces + self.ev.stats.cached

    @property
    def width(self) -> int:
        """Traces run side by side (the worker processes)."""
        return self.ev.pool.jobs

    def batch_key(self, setup: StepSetup) -> Any:
        return self.ev.pending(setup)

    def prepare(self, setups: list[StepSetup]) -> None:
        """Trace what ``setups`` need, each as if alone, side by side (a later ``evaluate`` of each
        takes none)."""
        self.ev.prepare(setups, alone=True)

    def evaluate(self, setups: list[StepSetup]) -> list[tuple[MemoryReport | None, float | None, str]]:
        res = self.ev.reports(setups)
        return [res[s] for s in setups]

    def evaluate_each(self, setups: list[StepSetup]) -> list[tuple[MemoryReport | None, float | None, str]]:
        """:meth:`evaluate` deciding as if each setup came alone (a walk's round: the traces the
        sequential walk would take, side by side)."""
        res = self.ev.reports(setups, alone=True)
        return [res[s] for s in setups]

    def ratios(self, base: Candidate, singles: list[Candidate],
               verify: Callable[[list[Candidate]], None]) -> dict[Change, tuple[float, float, int] | None]:
        return exact_ratios(base, singles, verify)


def dims(base: StepSetup, gpu: GPU, freeze: set[str], search_knobs: dict[str, list[Any]],
         checkpoint_plan: Callable[[StepSetup], Any] | None = None) -> tuple[StepSetup, list[list[Change]], list[str]]:
    """The step's search space around ``base`` (micro-batch set): precision x checkpointing x
    (micro-batch, accumulation) at the same effective batch x the SDPA kernel (CUDA's choice, where
    the input forces one) x the allocator (expandable segments) x the file's own knobs named by
    --search. ``checkpoint_plan``: the card's per-module plan for a setup (``--checkpoint auto``
    becomes that plan; planner/measure/ckpt_plan.py). Returns the input (its own ``auto``
    resolved), the dimensions and notes."""
    notes: list[str] = []
    plan = None
    offer_auto = "checkpointing" not in freeze and not base.checkpoint
    if checkpoint_plan is not None and (base.checkpoint == ("auto",) or offer_auto):
        plan = checkpoint_plan(base)
        notes.append(plan.summary())
        if base.checkpoint == ("auto",):
            base = replace(base, checkpoint=plan.checkpoint)
    out: list[list[Change]] = []
    if "precision" not in freeze:
        out.append([Change("precision", p, f"precision {p} ({PRECISION_HELP[p]})", PRECISION_TIER[p],
                           lambda s, p=p: replace(s, precision=p))
                    for p in ("fp32", "amp-fp16", "amp-bf16", "fp16-master", "bf16-master")
                    if p != base.precision and (gpu.bf16 or "bf16" not in p)])
    if "checkpointing" not in freeze:
        if base.checkpoint:
            out.append([Change("checkpoint", (), "checkpoint off", 0, lambda s: replace(s, checkpoint=()))])
        elif plan is None:
            out.append([Change("checkpoint", ("auto",), "checkpoint auto", 0, lambda s: replace(s, checkpoint=("auto",)))])
        elif plan.checkpoint:
            out.append([Change("checkpoint", plan.checkpoint, f"checkpoint {plan.short()} (per-module plan)", 0,
                               lambda s, ck=plan.checkpoint: replace(s, checkpoint=ck))])
        else:
            notes.append("checkpointing: not a candidate, it removes nothing at the peak")
    if "batch" not in freeze:
        assert base.batch_size is not None
        b0, a0 = base.batch_size, base.accumulation
        effective = b0 * a0
        out.append([Change("split", (effective // a, a), f"micro-batch {effective // a} x accumulation {a}", 0,
                           lambda s, b=effective // a, a=a: replace(s, batch_size=b, accumulation=a))
                    for a in range(1, effective + 1) if effective % a == 0 and a != a0])
    if "sdpa" not in freeze and base.sdpa != "auto":  # a forced kernel: CUDA's own choice (planner/sdpa_rules.py)
        out.append([Change("sdpa", "auto", "sdpa auto (CUDA's choice of kernel)", 0, lambda s: replace(s, sdpa="auto"))])
    if "allocator" not in freeze:
        # expandable segments: the same step and speed, less reserved beyond the live tensors
        # (planner/allocator.py); the same trace replayed, no new one
        from planner.allocator import with_expandable_segments

        text = with_expandable_segments(base.alloc_conf)
        if text is not None:
            out.append([Change("allocator", text, f"allocator {text}", 0, lambda s, t=text: replace(s, alloc_conf=t))])
    for name, values in search_knobs.items():
        own = base.knob_dict.get(name)
        out.append([Change(f"knob {name}", v, f"{name}={','.join(map(str, v)) if isinstance(v, tuple) else v}", 2,
                           lambda s, name=name, v=v: s.with_knobs(**{name: v}))
                    for v in dict.fromkeys(values) if v != own])
    return base, [d for d in out if d], notes


def _plan_beside(base: StepSetup, ev: Evaluator, margin: float, freeze: set[str],
                 search_knobs: dict[str, list[Any]]) -> Any:
    """The card's per-module checkpoint plan for ``base`` (:func:`dims`' ``checkpoint_plan``), taken in
    one round with the traces of the changes that do not depend on it (each change alone: the
    search's first traces), so the workers trace them side by side; the planning trace (``base``'s
    own) and the trace with the plan (the checkpoint candidate) are handed to ``ev``."""
    from planner.measure import ckpt_plan

    early: list[StepSetup] = []
    if base.checkpoint != ("auto",):  # under auto every change applies to the plan's setup
        for dim in dims(base, ev.gpu, freeze | {"checkpointing"}, search_knobs)[1]:
            for ch in dim:
                try:
                    early.append(ch.apply(base))
                except PlannerError:
                    pass  # the search says why it cannot be made
    # a change in the input's own class (same precision, checkpointing, accumulation <= 2) waits for
    # the input's trace, so that the evaluator decides on that class as it would without this round
    early = [s for s in early if ev.cls(s) != ev.cls(base)]
    call = ckpt_plan.card_plan_call(base, ev.gpu, margin)
    ev.prepare(early, side=[call])
    plan, records = call.result
    for setup, record in records:
        ev.add(setup, record)
    return plan


def recommend(base: StepSetup, gpu: GPU, margin: float, prefer: str, freeze: set[str],
              search_knobs: dict[str, list[Any]], batch_default: int, jobs: int = 0,
              progress: Callable[[int, int, str], None] | None = None,
              profile: Any = None, fit_at: str = "high") -> tuple[Outcome, Stats]:
    """planner/search.py ``recommend`` over the step's space (:func:`dims`), every figure traced:
    the outcome and the traces' statistics (with notes: the per-module checkpoint plan, why the
    winner wins, AMP costing memory)."""
    from planner.band import check_fit_at
    from planner.measure import ckpt_plan
    from planner.search import recommend as search_recommend

    check_fit_at(fit_at)
    check_margin(margin)
    t0 = time.perf_counter()
    base = replace(base, batch_size=base.batch_size or batch_default)
    with Evaluator(gpu, jobs, progress, profile=profile) as ev:
        start, space, notes = dims(base, gpu, freeze, search_knobs, lambda s: _plan_beside(s, ev, margin, freeze, search_knobs))
        found = search_recommend(start, space, TraceEngine(ev), margin, prefer, fit_at)
        stats = ev.stats
        pair = precision_pair(found.ordered)
        if pair is not None:
            recs = ev.evaluate([pair[0].setup, pair[1].setup])
            amp, fp32 = recs[pair[0].setup][0], recs[pair[1].setup][0]
            note = amp_costs_more(amp, fp32, pair[0].setup.precision) if amp is not None and fp32 is not None else None
            notes += [note] if note else []
    for c in found.ordered:  # every candidate names its setup (the JSON's "setup")
        if c.setup is None:
            try:
                c.setup = apply(start, c.settings)
            except PlannerError as exc:
                c.how, c.error = "failed", str(exc)
    stats.predicted = sum(1 for c in found.ordered if c.report is None and not c.error)
    stats.seconds = time.perf_counter() - t0
    stats.notes += notes + found.notes + [n for n in [ckpt_plan.why(found.best, found.ordered, found.input, found.budget_bytes)] if n]
    return found, stats


# --- largest size ---------------------------------------------------------------------------------


def max_batch(base: StepSetup, gpu: GPU, margin: float, limit: int = 1 << 16, jobs: int = 0,
              progress: Callable[[int, int, str], None] | None = None, profile: Any = None,
              fit_at: str = "high") -> tuple[SizeSearch, Stats]:
    """The largest micro-batch (accumulation as given) whose device total fits: the built-in
    kinds' search (planner.search.largest: doubling, bisection, a neighbourhood re-check)."""
    res, stats = _search(lambda k: replace(base, batch_size=k), 1, gpu, margin, limit,
                         Evaluator(gpu, jobs, progress, derive_from=1, profile=profile), fit_at=fit_at)
    return _with_allocator(base, res, stats, gpu, margin, limit, lambda: Evaluator(gpu, jobs, progress, derive_from=1,
                                                                                   profile=profile), fit_at)


def _with_allocator(base: StepSetup, res: SizeSearch, stats: Stats, gpu: GPU, margin: float, limit: int,
                    evaluator: Callable[[], Evaluator], fit_at: str = "high") -> tuple[SizeSearch, Stats]:
    """Where the next micro-batch fits with expandable segments (an allocator setting: same step,
    same speed, less reserved beyond the live tensors; planner/allocator.py), the largest that fits
    with it, said in a note; the answer itself stays the one for the settings given."""
    from planner.allocator import with_expandable_segments

    text = with_expandable_segments(base.alloc_conf)
    if text is None or not res.value or res.capped or res.value >= limit:
        return res, stats
    alt = replace(base, alloc_conf=text)
    with evaluator() as ev:
        try:
            nxt = ev.report(replace(alt, batch_size=res.value + 1))
        except PlannerError:
            return res, stats
    from planner.band import fit_bytes

    if fit_bytes(nxt, gpu, fit_at) > gpu.capacity_bytes * (1 - margin):
        return res, stats
    more, extra = _search(lambda k: replace(alt, batch_size=k), 1, gpu, margin, limit, evaluator(), lo=res.value + 1,
                          fit_at=fit_at)
    stats.traces, stats.cached = stats.traces + extra.traces, stats.cached + extra.cached
    if more.value and more.report is not None:
        stats.notes.append(f"with PYTORCH_CUDA_ALLOC_CONF={text} (allocator only: same step, same speed) micro-batch "
                           f"{more.value} fits (device_total {more.report.device_total_bytes / 2**30:.2f} GiB)")
        stats.allocator = {"alloc_conf": text, "max": more.value, "device_total_bytes": more.report.device_total_bytes}
    return res, stats


def max_knob(base: StepSetup, name: str, step: int, gpu: GPU, margin: float, limit: int,
             progress: Callable[[int, int, str], None] | None = None, profile: Any = None,
             start: int = 1, floor: int = 1, fit_at: str = "high") -> tuple[SizeSearch, Stats]:
    """The largest value (a multiple of ``step``) of an integer knob whose device total fits,
    searched from ``start`` (rounded down to a multiple of ``step``, at least ``step``) and, when
    that does not fit, below it down to ``floor``; a value the step rejects (its one-line error)
    counts as not fitting and is named in ``rejected``."""
    return _search(lambda k: base.with_knobs(**{name: k * step}), step, gpu, margin, max(1, limit // step),
                   Evaluator(gpu, 1, progress, profile=profile), lo=max(1, start // step), skip_rejected=True,
                   floor=max(1, -(-floor // step)), fit_at=fit_at)


def _search(at: Callable[[int], StepSetup], unit: int, gpu: GPU, margin: float, limit: int,
            ev: Evaluator, lo: int = 1, skip_rejected: bool = False, floor: int = 1,
            fit_at: str = "high") -> tuple[SizeSearch, Stats]:
    """planner/search.py ``max_size`` with every figure traced; sizes in multiples of ``unit``."""
    t0 = time.perf_counter()
    with ev:
        res = max_size(at, TraceEngine(ev), margin, limit, lo=lo, floor=floor, value_of=lambda k: k * unit,
                       skip_rejected=skip_rejected, fit_at=fit_at)
    ev.stats.seconds = time.perf_counter() - t0
    return res, ev.stats


# --- more GPUs --------------------------------------------------------------------------------------


def max_gpus(base: StepSetup, gpu: GPU, margin: float, limit: int, batch_default: int, jobs: int = 0,
             progress: Callable[[int, int, str], None] | None = None,
             profile: Any = None, fit_at: str = "high") -> tuple[GpuOption | None, list[GpuOption], dict[str, Any], Stats]:
    """``recommend --step --max-gpus``: planner/gpusearch.py ``search`` with every option traced."""
    if base.gpus != 1:
        raise PlannerError("--max-gpus: searches the GPU count and strategy itself; leave out --gpus/--strategy")
    t0 = time.perf_counter()
    total = (base.batch_size or batch_default) * base.accumulation  # samples per optimizer step, all ranks
    with Evaluator(gpu, jobs, progress, profile=profile) as ev:
        answer, tried, verdict = fewest_gpus(
            total, limit, lambda b, a, n, strategy: replace(base, batch_size=b, accumulation=a, gpus=n, strategy=strategy),
            TraceEngine(ev), margin, f"vramplan recommend --step {base.path}", fit_at)
        stats = ev.stats
    stats.seconds = time.perf_counter() - t0
    return answer, tried, verdict, stats
