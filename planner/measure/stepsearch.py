"""Searching a step file's configurations: ``recommend --step``, ``--max-batch``, ``--max-knob``.

Every candidate's memory is what its traced step does: derived from a few traces where the
step is affine in the micro-batch (``planner/measure/traces.py``), traced directly where not.
Accumulation: from the second micro-batch on, every micro-batch runs with the previous
micro-batches' gradients held and the last one also steps, so a step with accumulation
A >= 3 allocates, micro-batch by micro-batch, what accumulation 2 allocates on its last
micro-batch. Candidates with A >= 3 take accumulation 2's figures where a trace at
accumulation 3 (micro-batch 2) has the same peak as accumulation 2, and are traced
directly where it does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from planner.gpus import GPU
from planner.recommend import TIER_NAMES, SizeSearch, _check_margin, _largest
from planner.result import MemoryReport
from planner.steps import PRECISION_HELP, StepSetup

PRECISION_TIER = {"fp32": 0, "amp-fp16": 0, "amp-bf16": 0, "fp16-master": 1, "bf16-master": 1, "fp16": 2, "bf16": 2}
ACCUM_CHECK = (2, 3)  # (micro-batch, accumulation) of the trace that checks "A >= 3 is like A = 2"


@dataclass
class Candidate:
    setup: StepSetup
    changes: list[str]
    tier: int
    report: MemoryReport | None = None
    seconds_per_sample: float | None = None
    how: str = ""

    def to_json(self) -> dict:
        r = self.report
        return {"changes": self.changes, "tier": TIER_NAMES[self.tier], "setup": self.setup.to_json(),
                "peak_allocated_bytes": r.peak_allocated_bytes if r else None,
                "device_total_bytes": r.device_total_bytes if r else None,
                "seconds_per_sample": self.seconds_per_sample, "how": self.how}


@dataclass
class Stats:
    traces: int = 0
    cached: int = 0
    derived: int = 0
    direct: int = 0
    seconds: float = 0.0


def seconds_per_sample(record: Any, precision: str, gpu: GPU) -> float | None:
    """Roofline time per effective sample (``planner.analytic.cost.roofline_seconds``, the
    simulator's model) on the traced step: iteration 2's matmul/conv/attention FLOPs
    (torch.utils.flop_counter, recomputation included) and the bytes it allocates, over the
    samples it consumed. Per sample it is the same for accumulation 2 and any higher one.
    Uncalibrated; for comparing candidates."""
    from planner.analytic.cost import roofline_seconds

    flops = record.setup.get("flops_iteration2")
    if flops is None:
        return None
    written = sum(d for _, d in record.events[record.iteration2_start:] if d > 0)
    step = roofline_seconds(flops, written, gpu, half=precision != "fp32")
    return step / (record.setup["batch_size"] * record.setup["accumulation"])


class Evaluator:
    """Reports for many StepSetups from as few traces as the derivation allows."""

    def __init__(self, gpu: GPU | None, jobs: int = 0, progress: Callable[[int, int, str], None] | None = None,
                 derive_from: int = 3):
        """``derive_from``: a class of setups (same step, knobs, precision, checkpointing,
        accumulation <= 2) asked for at fewer micro-batches than this is traced at those
        directly instead of derived (a derivation costs DERIVE_POINTS traces); 1 when more
        sizes will be asked for later, one at a time (a size search)."""
        self.gpu, self.jobs, self.progress, self.derive_from = gpu, jobs, progress, derive_from
        self.stats = Stats()
        self._derivs: dict[StepSetup, Any] = {}
        self._records: dict[StepSetup, Any] = {}
        self._accum_ok: dict[StepSetup, bool] = {}

    @staticmethod
    def _cls(s: StepSetup) -> StepSetup:
        return replace(s, batch_size=None, accumulation=min(s.accumulation, 2), alloc_conf="")

    def _trace(self, setups: list[StepSetup]) -> None:
        from planner.measure import traces

        todo = [s for s in dict.fromkeys(setups) if s not in self._records]
        if not todo:
            return
        records, traced = traces.trace_many(todo, self.jobs, self.progress)
        self._records.update(records)
        self.stats.traces += traced
        self.stats.cached += len(todo) - traced

    def evaluate(self, setups: list[StepSetup]) -> dict[StepSetup, tuple[Any, str]]:
        """setup -> (StepRecord, how) for every setup; a record taken from accumulation 2 for an
        accumulation >= 3 is that trace's, as traced (its setup says accumulation 2)."""
        from planner.measure import traces

        classes = list(dict.fromkeys(self._cls(s) for s in setups))
        sizes: dict[StepSetup, set[int]] = {}
        for s in setups:
            sizes.setdefault(self._cls(s), set()).add(s.batch_size or 0)
        first = []
        for c in classes:
            if c not in self._derivs and len(sizes[c]) < self.derive_from:
                self._derivs[c] = None  # fewer sizes than a derivation is worth: trace them
            if c not in self._derivs:
                first += [replace(c, batch_size=b) for b in traces.DERIVE_POINTS]
            if any(s.accumulation >= 3 and self._cls(s) == c for s in setups) and c not in self._accum_ok:
                b, a = ACCUM_CHECK
                first += [replace(c, batch_size=b, accumulation=a), replace(c, batch_size=b, accumulation=2)]
        self._trace(first)
        for c in classes:
            if c not in self._derivs:
                self._derivs[c] = traces.derive([(b, self._records[replace(c, batch_size=b)]) for b in traces.DERIVE_POINTS])
            if c.accumulation == 2 and c not in self._accum_ok:
                b, a = ACCUM_CHECK
                if replace(c, batch_size=b, accumulation=a) in self._records:
                    self._accum_ok[c] = (self._records[replace(c, batch_size=b, accumulation=a)].tracker.peak_bytes
                                         == self._records[replace(c, batch_size=b, accumulation=2)].tracker.peak_bytes)
        direct = []
        for s in setups:
            c = self._cls(s)
            if self._derivs[c] is None or (s.accumulation > 2 and not self._accum_ok.get(c)):
                direct.append(self._direct(s))
        self._trace(direct)
        out = {}
        for s in setups:
            c = self._cls(s)
            d = self._derivs[c]
            b = s.batch_size
            assert b is not None
            if d is not None and (s.accumulation <= 2 or self._accum_ok.get(c)):
                rec, how = d.record_at(b), "derived"
                self.stats.derived += 1
            else:
                rec, how = self._records[self._direct(s)], "traced"
                self.stats.direct += 1
            out[s] = (rec, how)
        return out

    def _direct(self, s: StepSetup) -> StepSetup:
        c = self._cls(s)
        if s.accumulation >= 3 and self._accum_ok.get(c):
            return replace(s, accumulation=2, alloc_conf="")
        return replace(s, alloc_conf="")

    def reports(self, setups: list[StepSetup]) -> dict[StepSetup, tuple[MemoryReport, float | None, str]]:
        from planner.measure.profile import report_from

        out = {}
        for s, (rec, how) in self.evaluate(setups).items():
            secs = seconds_per_sample(rec, s.precision, self.gpu) if self.gpu else None
            if s.accumulation > rec.setup["accumulation"]:
                info = dict(rec.setup)
                info.update(accumulation=s.accumulation, effective_batch=s.batch_size * s.accumulation,
                            accumulation_basis=f"as accumulation 2 (checked: a trace at micro-batch {ACCUM_CHECK[0]} "
                                               f"x accumulation {ACCUM_CHECK[1]} has accumulation 2's peak)")
                rec = replace(rec, setup=info)
            cap = self.gpu.capacity_bytes if self.gpu else None
            note = (f"by trace: the step file traced under FakeTensorMode on the CPU (CUDA emulated), "
                    f"{'derived from traces at other micro-batches (affine sizes, verified)' if how == 'derived' else 'traced at this size'}; "
                    "not the analytic estimator",)
            rep = report_from(rec, "fake", s.alloc_conf, 0.0, source="estimate:trace", rollup=2, capacity_bytes=cap,
                              extra_notes=note)
            out[s] = (rep, secs, how)
        return out


# --- recommend ------------------------------------------------------------------------------------


def candidates(base: StepSetup, gpu: GPU, freeze: set[str], search_knobs: dict[str, list[Any]],
               batch_default: int) -> list[Candidate]:
    """precision x checkpointing x (micro-batch, accumulation) at the same effective batch
    x the file's own knobs named by --search."""
    b0 = base.batch_size or batch_default
    effective = b0 * base.accumulation
    precisions = [base.precision] + [p for p in ("fp32", "amp-fp16", "amp-bf16", "fp16-master", "bf16-master")
                                     if p != base.precision and (gpu.bf16 or "bf16" not in p)]
    if "precision" in freeze:
        precisions = [base.precision]
    ckpts = [base.checkpoint] + ([("auto",)] if base.checkpoint != ("auto",) and not base.checkpoint else [()] if base.checkpoint else [])
    if "checkpointing" in freeze:
        ckpts = [base.checkpoint]
    splits = [(b0, base.accumulation)] + [(effective // a, a) for a in range(1, effective + 1)
                                          if effective % a == 0 and (effective // a, a) != (b0, base.accumulation)]
    if "batch" in freeze:
        splits = [(b0, base.accumulation)]
    knob_sets: list[dict[str, Any]] = [{}]
    for name, values in search_knobs.items():
        knob_sets = [{**ks, name: v} for ks in knob_sets for v in values]
    out = []
    for p in precisions:
        for ck in ckpts:
            for b, a in splits:
                for ks in knob_sets:
                    s = replace(base, precision=p, checkpoint=ck, batch_size=b, accumulation=a).with_knobs(**ks)
                    changes = []
                    if p != base.precision:
                        changes.append(f"precision {p} ({PRECISION_HELP[p]})")
                    if ck != base.checkpoint:
                        changes.append("checkpoint " + (",".join(ck) if ck else "off"))
                    if (b, a) != (b0, base.accumulation):
                        changes.append(f"micro-batch {b} x accumulation {a}")
                    for k, v in ks.items():
                        if base.knob_dict.get(k) != v:
                            changes.append(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")
                    tier = max([PRECISION_TIER[p] if p != base.precision else 0] + [2 for k in ks if base.knob_dict.get(k) != ks[k]])
                    out.append(Candidate(s, changes, tier))
    return out


def recommend(base: StepSetup, gpu: GPU, margin: float, prefer: str, freeze: set[str],
              search_knobs: dict[str, list[Any]], batch_default: int, jobs: int = 0,
              progress: Callable[[int, int, str], None] | None = None) -> tuple[Candidate | None, list[Candidate], Stats]:
    t0 = time.perf_counter()
    cands = candidates(base, gpu, freeze, search_knobs, batch_default)
    ev = Evaluator(gpu, jobs, progress)
    results = ev.reports([c.setup for c in cands])
    budget = gpu.capacity_bytes * (1 - margin)
    for c in cands:
        c.report, c.seconds_per_sample, c.how = results[c.setup]
    inf = float("inf")
    key = {
        "risk": lambda c: (c.tier, c.seconds_per_sample or inf, c.report.device_total_bytes),
        "speed": lambda c: (c.seconds_per_sample or inf, c.tier, c.report.device_total_bytes),
        "quality": lambda c: (c.tier, c.report.device_total_bytes),
    }[prefer]
    ordered = sorted(cands, key=key)
    fitting = [c for c in ordered if c.report.device_total_bytes <= budget]
    ev.stats.seconds = time.perf_counter() - t0
    return (fitting[0] if fitting else None), ordered, ev.stats


# --- largest size ---------------------------------------------------------------------------------


def max_batch(base: StepSetup, gpu: GPU, margin: float, limit: int = 1 << 16, jobs: int = 0,
              progress: Callable[[int, int, str], None] | None = None) -> tuple[SizeSearch, Stats]:
    """The largest micro-batch (accumulation as given) whose device total fits: the built-in
    kinds' search (planner.recommend._largest: doubling, bisection, a neighbourhood re-check)."""
    return _search(lambda k: replace(base, batch_size=k), 1, gpu, margin, limit,
                   Evaluator(gpu, jobs, progress, derive_from=1))


def max_knob(base: StepSetup, name: str, step: int, gpu: GPU, margin: float, limit: int,
             progress: Callable[[int, int, str], None] | None = None) -> tuple[SizeSearch, Stats]:
    """The largest value (a multiple of ``step``) of an integer knob whose device total fits."""
    return _search(lambda k: base.with_knobs(**{name: k * step}), step, gpu, margin, max(1, limit // step),
                   Evaluator(gpu, 1, progress))


def _search(at: Callable[[int], StepSetup], unit: int, gpu: GPU, margin: float, limit: int,
            ev: Evaluator) -> tuple[SizeSearch, Stats]:
    _check_margin(margin)
    budget = gpu.capacity_bytes * (1 - margin)
    t0 = time.perf_counter()

    def fits(k: int) -> MemoryReport | None:
        s = at(k)
        rep = ev.reports([s])[s][0]
        return rep if rep.device_total_bytes <= budget else None

    res = _largest(fits, 1, limit)
    ev.stats.seconds = time.perf_counter() - t0
    if unit != 1:
        res = replace(res, value=res.value * unit, cap=res.cap * unit,
                      smaller_not_fitting=[k * unit for k in res.smaller_not_fitting],
                      larger_fitting_skipped=[k * unit for k in res.larger_fitting_skipped])
    return res, ev.stats
