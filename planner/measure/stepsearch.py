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
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from planner.errors import PlannerError
from planner.gpus import GPU
from planner.result import MemoryReport
from planner.steps import PRECISION_HELP, StepSetup

TIER_NAMES = {0: "none", 1: "slight", 2: "moderate"}
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
    error: str = ""

    def to_json(self) -> dict:
        r = self.report
        return {"changes": self.changes, "tier": TIER_NAMES[self.tier], "setup": self.setup.to_json(),
                "peak_allocated_bytes": r.peak_allocated_bytes if r else None,
                "device_total_bytes": r.device_total_bytes if r else None,
                "seconds_per_sample": self.seconds_per_sample, "how": self.how, "error": self.error or None}


@dataclass
class Stats:
    traces: int = 0
    cached: int = 0
    derived: int = 0
    direct: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def seconds_per_sample(record: Any, precision: str, gpu: GPU, accumulation_scale: float = 1.0) -> float | None:
    """Roofline time per effective sample (planner/analytic/cost.py's model on the traced step):
    iteration 2's matmul/conv/attention FLOPs (torch.utils.flop_counter, recomputation included)
    at the precision's peak rate, plus twice the bytes it allocates over the bandwidth.
    Uncalibrated; for comparing candidates."""
    from planner.analytic.cost import rates

    flops = record.setup.get("flops_iteration2")
    if flops is None:
        return None
    written = sum(d for _, d in record.events[record.iteration2_start:] if d > 0)
    g = rates(gpu)
    tflops = g.fp32_tflops if precision == "fp32" else g.fp16_tflops
    step = (flops / (tflops * 1e12) + 2 * written / (g.bandwidth_gbs * 1e9)) * accumulation_scale
    samples = record.setup["batch_size"] * record.setup["accumulation"]
    return step / samples


class Evaluator:
    """Reports for many StepSetups from as few traces as the derivation allows."""

    def __init__(self, gpu: GPU | None, jobs: int = 0, progress: Callable[[int, int, str], None] | None = None):
        self.gpu, self.jobs, self.progress = gpu, jobs, progress
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
        hits = sum(traces.cached(s) is not None for s in todo)
        self._records.update(traces.trace_many(todo, self.jobs, self.progress))
        self.stats.traces += len(todo) - hits
        self.stats.cached += hits

    def evaluate(self, setups: list[StepSetup]) -> dict[StepSetup, tuple[Any, str]]:
        """setup -> (StepRecord, how) for every setup."""
        from planner.measure import traces

        classes = list(dict.fromkeys(self._cls(s) for s in setups))
        sizes: dict[StepSetup, set[int]] = {}
        for s in setups:
            sizes.setdefault(self._cls(s), set()).add(s.batch_size or 0)
        first = []
        for c in classes:
            if c not in self._derivs and len(sizes[c]) < len(traces.DERIVE_POINTS):
                self._derivs[c] = None  # fewer sizes than a derivation traces: trace them
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
            if s.accumulation > rec.setup.get("accumulation", 1):
                info = dict(rec.setup)
                info.update(accumulation=s.accumulation, effective_batch=b * s.accumulation,
                            accumulation_basis=f"as accumulation 2 (checked: a trace at micro-batch {ACCUM_CHECK[0]} "
                                               f"x accumulation {ACCUM_CHECK[1]} has accumulation 2's peak)")
                rec = replace(rec, setup=info)
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
            cap = self.gpu.capacity_bytes if self.gpu else None
            note = (f"by trace: the step file traced under FakeTensorMode on the CPU (CUDA emulated), "
                    f"{'derived from traces at other micro-batches (affine sizes, verified)' if how == 'derived' else 'traced at this size'}; "
                    "not the analytic estimator",)
            rep = report_from(rec, "fake", s.alloc_conf, 0.0, source="estimate:trace", rollup=2, capacity_bytes=cap,
                              extra_notes=note)
            scale = s.accumulation / rec_accum(rec) if rec_accum(rec) else 1.0
            secs = seconds_per_sample(rec, s.precision, self.gpu, scale) if self.gpu else None
            out[s] = (rep, secs, how)
        return out


def rec_accum(rec: Any) -> int:
    return 2 if "accumulation_basis" in rec.setup else rec.setup.get("accumulation", 1)


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
              progress: Callable[[int, int, str], None] | None = None) -> tuple[int, MemoryReport | None, Stats]:
    """The largest micro-batch (accumulation as given) whose device total fits."""
    ev = Evaluator(gpu, jobs, progress)
    budget = gpu.capacity_bytes * (1 - margin)
    t0 = time.perf_counter()

    def rep(b: int) -> MemoryReport:
        return ev.reports([replace(base, batch_size=b)])[replace(base, batch_size=b)][0]

    best, best_rep = _largest(lambda b: rep(b), budget, 1, limit, 1)
    ev.stats.seconds = time.perf_counter() - t0
    return best, best_rep, ev.stats


def max_knob(base: StepSetup, name: str, step: int, gpu: GPU, margin: float, limit: int,
             progress: Callable[[int, int, str], None] | None = None) -> tuple[int, MemoryReport | None, Stats]:
    """The largest value (a multiple of ``step``) of an integer knob whose device total fits."""
    ev = Evaluator(gpu, 1, progress)
    budget = gpu.capacity_bytes * (1 - margin)
    t0 = time.perf_counter()

    def rep(k: int) -> MemoryReport:
        s = base.with_knobs(**{name: k * step})
        if s.batch_size is None:
            raise PlannerError("--max-knob: give --batch")  # pragma: no cover - the CLI fills it
        return ev.reports([s])[s][0]

    best, best_rep = _largest(rep, budget, 1, max(1, limit // step), step)
    ev.stats.seconds = time.perf_counter() - t0
    return best, best_rep, ev.stats


def _largest(rep: Callable[[int], MemoryReport], budget: float, lo: int, hi: int, unit: int) -> tuple[int, MemoryReport | None]:
    """Exponential then binary search for the largest k in [lo, hi] with rep(k) within budget
    (0 when even lo does not fit); returns (k * unit, its report)."""
    r = rep(lo)
    if r.device_total_bytes > budget:
        return 0, None
    good, good_rep, k = lo, r, lo
    bad = None
    while bad is None:
        k = min(hi, good * 2)
        if k == good:
            return good * unit, good_rep
        r = rep(k)
        if r.device_total_bytes <= budget:
            good, good_rep = k, r
        else:
            bad = k
    while bad - good > 1:
        mid = (good + bad) // 2
        r = rep(mid)
        if r.device_total_bytes <= budget:
            good, good_rep = mid, r
        else:
            bad = mid
    return good * unit, good_rep
