"""The one search behind ``recommend``, ``--max-batch``, ``--max-voxel``, ``--max-knob``: any step,
whichever engine answers it. Torch-free.

A step's search space is a list of dimensions, each a list of ``Change`` s (a knob set to another
value: precision, checkpointing, micro-batch x accumulation, a knob of the step); a ``Candidate`` is
at most one change per dimension, so the space is the product of the dimensions with "as is" added
to each. An ``Engine`` answers setups: the analytic engine of the built-in steps
(``planner/recommend.py`` ``AnalyticEngine``, exact against the trace, milliseconds) or the tracer
(``planner/measure/search.py`` ``TraceEngine``, seconds).

``recommend``:
  1. The input and each change alone are evaluated; each change's memory and time ratio to the
     input is what it alone does (an engine may take the ratio from a cheaper figure:
     ``Engine.ratios``).
  2. Every candidate is predicted: the input's figure times the ratio of each of its changes.
  3. Candidates are ordered by the user's preference (``order_key``: lowest quality-risk tier,
     then fastest, by default) and walked: a candidate predicted within the budget plus SAFETY
     (every candidate, on an engine cheap enough: ``Engine.exhaustive``) is verified exactly, until
     ALTERNATIVES + 1 fit. A candidate fits when ``band.fit_bytes`` of its exact report (the top of
     its device_total band, or its point) is within the budget.
  4. The fitting ones are ordered again on their exact figures; the first is the answer.
  5. The input fits already: it is the answer (``--prefer speed``: the fastest that fits), with the
     candidates predicted faster verified as ``faster``. Nothing fits: the smallest candidate is
     verified and the catalog card it would fit is named.

``largest``: the largest size k with fits(k), doubling, bisection and a neighbourhood re-check
(device totals are not monotone in the size).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import field, replace
from typing import Any, Callable, Iterable, Protocol

from planner.records import dataclass
from planner.errors import PlannerError, quote
from planner.result import MemoryReport

TIERS = {"none": 0, "slight": 1, "moderate": 2}
TIER_NAMES = {v: k for k, v in TIERS.items()}
SAFETY = 0.15  # verify candidates predicted up to 15 % over the budget
ALTERNATIVES = 5  # fitting candidates found besides the best before the walk stops
PREFER = ("risk", "speed", "quality")


@dataclass(frozen=True)
class Change:
    """One knob set to another value. ``dim``: the dimension it belongs to (at most one change per
    dimension in a candidate); ``apply``: the setup with this change made."""

    dim: str
    value: Any
    label: str
    tier: int
    apply: Callable[[Any], Any] = field(compare=False, hash=False, repr=False)


@dataclass(eq=False)
class Candidate:
    """One configuration: the input with ``settings`` applied. Exact once verified (``report``),
    predicted before (``predicted_fit``, ``predicted_seconds``)."""

    settings: tuple[Change, ...]
    tier: int
    setup: Any = None
    report: MemoryReport | None = None
    seconds_per_sample: float | None = None
    fit: int | None = None
    """Where verified: the figure held against the budget (planner/band.py ``fit_bytes``)."""
    how: str = "predicted"
    error: str | None = None
    predicted_total: float | None = None
    predicted_fit: float | None = None
    predicted_seconds: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.settings]

    @property
    def changes(self) -> list[str]:
        return self.labels

    @property
    def parts(self) -> tuple[tuple[str, Any], ...]:
        """(dimension, value) of each change."""
        return tuple((s.dim, s.value) for s in self.settings)

    @property
    def exact(self) -> MemoryReport | None:
        return self.report

    @property
    def verified(self) -> bool:
        return self.report is not None

    @property
    def total(self) -> float:
        """The exact device total where verified, else the prediction (inf: cannot run)."""
        if self.report is not None:
            return float(self.report.device_total_bytes)
        return self.predicted_total if self.predicted_total is not None else float("inf")

    @property
    def fit_total(self) -> float:
        """What is held against the budget: ``fit`` where verified, else the prediction."""
        if self.report is not None and self.fit is not None:
            return float(self.fit)
        return self.predicted_fit if self.predicted_fit is not None else float("inf")

    @property
    def seconds(self) -> float:
        """Time per effective sample: exact where verified, else predicted (inf: unknown)."""
        v = self.seconds_per_sample if self.report is not None else self.predicted_seconds
        return v if v is not None else float("inf")


class Engine(Protocol):
    """What answers a step's setups for the search."""

    gpu: Any
    exhaustive: int
    """Spaces of at most this many candidates are verified without the SAFETY filter."""
    evaluations: int
    """Exact (or ratio) evaluations made so far, for the output."""

    def evaluate(self, setups: list[Any]) -> list[tuple[MemoryReport | None, float | None, str]]:
        """Per setup: (report, seconds per sample, how), or (None, None, why it cannot run)."""

    # Optional: ``width`` (int), how many evaluations the engine runs side by side (a tracer's worker
    # processes; 1 where absent), and ``batch_key(setup)``, the evaluation a setup needs (setups with
    # the same key share one; None: it needs none, e.g. a replay of a trace already taken). The walk
    # verifies that many candidates at once (``_walk``) through ``evaluate_each(setups)`` where the
    # engine has it (deciding as if each came alone), and ``--max-gpus`` hands the options it will try
    # next to ``prepare(setups)``.

    def ratios(self, base: Candidate, singles: list[Candidate],
               verify: Callable[[list[Candidate]], None]) -> dict[Change, tuple[float, float, int] | None]:
        """Per change alone (``singles``: one candidate per change, ``verify`` evaluates candidates
        exactly): (memory ratio, time ratio, bytes it saves) against ``base``, or None where it
        cannot run."""


def exact_ratios(base: Candidate, singles: list[Candidate],
                 verify: Callable[[list[Candidate]], None]) -> dict[Change, tuple[float, float, int] | None]:
    """``Engine.ratios`` of an engine whose every figure is exact (a trace): each change alone evaluated
    (one ``verify`` round: a tracer runs them side by side), its ratios to ``base``."""
    verify(singles)
    out: dict[Change, tuple[float, float, int] | None] = {}
    b = base.seconds_per_sample
    for c in singles:
        out[c.settings[0]] = None if c.report is None else (
            c.total / base.total, (c.seconds_per_sample / b) if b and c.seconds_per_sample else 1.0,
            int(base.total - c.total))
    return out


def order_key(prefer: str) -> Callable[[Candidate], tuple]:
    """risk (default): lowest quality-risk tier, then fastest, then fewest changes; speed: fastest
    first; quality: fewest and least risky changes first. The device total breaks ties."""
    if prefer not in PREFER:
        raise PlannerError(f"--prefer: '{prefer}' (valid: {', '.join(PREFER)})")
    if prefer == "speed":
        return lambda c: (c.seconds, c.tier, len(c.settings), c.total)
    if prefer == "quality":
        return lambda c: (c.tier, len(c.settings), c.seconds, c.total)
    return lambda c: (c.tier, c.seconds, len(c.settings), c.total)


FREEZE_ALIASES = (("precision", "amp"), ("sdpa", "flash"), ("checkpoint", "checkpointing"))
"""One vocabulary: each pair names the same dimension in the flags' words (--precision, --sdpa,
--checkpoint) and in the built-in step's former ones (--amp, --flash-attention, --checkpointing);
--freeze takes either name in every space."""


def parse_freeze(text: str | None, valid: tuple[str, ...], of: str = "") -> set[str]:
    """``--freeze a,b``: the dimensions not to change; one not in ``valid`` (this space's dimensions)
    is an error naming them (``of``: whose space, e.g. " for --step"). A name of
    :data:`FREEZE_ALIASES` stands for its pair's name in this space."""
    frozen = set()
    for name in (f.strip() for f in (text or "").split(",") if f.strip()):
        if name not in valid:
            name = next((b if a == name else a for a, b in FREEZE_ALIASES if name in (a, b) and
                         (b if a == name else a) in valid), name)
        if name not in valid:
            raise PlannerError(f"--freeze: unknown knob {quote(name)}{of} (valid: {', '.join(valid)})")
        frozen.add(name)
    return frozen


def check_margin(margin: float) -> None:
    if not 0 <= margin < 1:
        raise PlannerError(f"--margin: {margin} must be in [0, 1)")


def space(dims: list[list[Change]]) -> Iterable[tuple[Change, ...]]:
    """Every combination: at most one change per dimension."""
    for combo in itertools.product(*[[None, *options] for options in dims]):
        yield tuple(c for c in combo if c is not None)


def apply(base: Any, settings: Iterable[Change]) -> Any:
    s = base
    for st in settings:
        s = st.apply(s)
    return s


def _setup(base: Any, c: Candidate) -> Any:
    """``c``'s setup (made once), or None where a change cannot be applied (``c.error`` says why)."""
    if c.setup is None and not c.error:
        try:
            c.setup = apply(base, c.settings)
        except PlannerError as exc:
            c.how, c.error = "failed", str(exc)
    return c.setup


def _walk(walk: list[Candidate], fits: Callable[[Candidate], bool], wanted: int,
          verify: Callable[[list[Candidate]], None], engine: Any,
          setup: Callable[[Candidate], Any]) -> list[Candidate]:
    """Verify ``walk``'s candidates in order until ``wanted`` of them fit (``fits`` on the exact
    figures); the ones that fit. An engine that evaluates several setups at once (``width`` > 1:
    a tracer's worker processes) is given, with each candidate to verify, the next ones of the walk
    up to ``width`` distinct evaluations (``Engine.batch_key``: setups with the same key share one,
    None: costs none) and no more than the fitting ones still wanted, so they run side by side;
    the result is the sequential walk's (what is verified ahead stays exact, it is never counted
    past the stop). A candidate that costs no evaluation is verified alone."""
    width = getattr(engine, "width", 1)
    key = getattr(engine, "batch_key", None)
    found: list[Candidate] = []
    for i, c in enumerate(walk):
        if len(found) >= wanted:
            break
        if c.report is None and not c.error and setup(c) is not None and key is not None and key(c.setup) is None:
            verify([c])  # costs no evaluation: alone
        elif c.report is None and not c.error:
            room = min(width, wanted - len(found))  # no more ahead than could still be wanted
            batch, keys, last = [], set(), 1
            for d in walk[i:]:
                if d.report is not None or d.error or setup(d) is None:
                    continue
                k = key(d.setup) if key is not None else id(d)
                if k is not None and k not in keys:
                    if len(keys) >= room:
                        break
                    keys.add(k)
                batch.append(d)
                if k is not None:
                    last = len(batch)
            verify(batch[:last])  # none that costs nothing past the last that costs one
        if c.report is not None and fits(c):
            found.append(c)
    return found


@dataclass
class Outcome:
    """What ``recommend`` found."""

    input: Candidate
    best: Candidate | None
    fitting: list[Candidate]
    """Verified candidates that fit, in preference order on their exact figures."""
    ordered: list[Candidate]
    """Every candidate, in preference order (exact where verified, predicted elsewhere)."""
    budget_bytes: int
    fit_at: str
    gpu: Any = None
    faster: list[Candidate] = field(default_factory=list)
    """The input fits: verified candidates that fit and are faster than it."""
    smallest: Candidate | None = None
    """Nothing fits: the smallest candidate, verified."""
    needed_gpu: Any = None
    """Nothing fits: the smallest catalog card the smallest candidate fits."""
    savings: dict[str, int] = field(default_factory=dict)
    """Change label -> bytes it saves alone (the engine's ratio figure)."""
    evaluations: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    """What the search found on the way (why nothing can fit)."""

    @property
    def input_fits(self) -> bool:
        return self.input.fit_total <= self.budget_bytes

    @property
    def base(self) -> MemoryReport:
        """The input's exact report."""
        assert self.input.report is not None
        return self.input.report

    @property
    def base_seconds(self) -> float | None:
        return self.input.seconds_per_sample

    @property
    def verified(self) -> int:
        return self.evaluations

    @property
    def headroom_bytes(self) -> int:
        """Budget minus the input's figure at ``fit_at`` in its band (negative: short)."""
        return self.budget_bytes - int(self.input.fit_total)

    def margin_json(self, c: Candidate) -> dict:
        """How a verified candidate's figure splits into the point and each band term above it."""
        from planner.band import margin_json

        assert c.report is not None
        return margin_json(c.report, self.gpu, self.budget_bytes, self.fit_at)

    def margin_line(self, c: Candidate) -> str:
        from planner.band import margin_line

        assert c.report is not None
        return margin_line(c.report, self.gpu, self.budget_bytes, self.fit_at)

    @property
    def considered(self) -> int:
        return len(self.ordered)

    @property
    def alternatives(self) -> list[Candidate]:
        """The fitting candidates after the answer (besides ``faster``)."""
        return [c for c in self.fitting if c is not self.best and c not in self.faster]


def recommend(base: Any, dims: list[list[Change]], engine: Engine, margin: float, prefer: str = "risk",
              fit_at: str = "high", alternatives: int = ALTERNATIVES, exhaustive: bool | None = None) -> Outcome:
    """The cheapest candidate of ``dims`` around ``base`` that fits ``engine.gpu`` (see the module
    docstring). ``exhaustive``: verify without the SAFETY filter (default: when the space has at most
    ``engine.exhaustive`` candidates)."""
    from planner.band import check_fit_at, fit_bytes, fixed_bytes
    from planner.gpus import CATALOG

    check_fit_at(fit_at)
    check_margin(margin)
    key = order_key(prefer)
    t0 = time.perf_counter()
    gpu = engine.gpu
    budget = int(gpu.capacity_bytes * (1 - margin))
    cands = [Candidate(combo, max((c.tier for c in combo), default=0)) for combo in space(dims)]
    as_is = cands[0]
    assert not as_is.settings
    as_is.setup = base

    def verify(batch: list[Candidate], each: bool = False) -> None:
        """Evaluate ``batch`` exactly (one engine call: a tracer runs them side by side); ``each``:
        as if one at a time (``Engine.evaluate_each`` where the engine has it)."""
        todo = [c for c in batch if c.report is None and not c.error and _setup(base, c) is not None]
        if not todo:
            return
        run = getattr(engine, "evaluate_each", engine.evaluate) if each else engine.evaluate
        results = run([c.setup for c in todo])
        for c, (rep, secs, how) in zip(todo, results):
            if rep is None:
                c.how, c.error = "failed", how
            else:
                c.report, c.seconds_per_sample, c.how = rep, secs, how
                c.fit = fit_bytes(rep, gpu, fit_at)

    verify([as_is])
    if as_is.report is None:
        raise PlannerError(as_is.error or "the input setup could not be evaluated")
    base_secs = as_is.seconds_per_sample
    singles = [c for c in cands if len(c.settings) == 1]
    ratio = engine.ratios(as_is, singles, verify)
    savings = {ch.label: r[2] for ch, r in ratio.items() if r is not None}
    for c in cands:
        if c.report is not None or c.error:
            continue
        mem, tim = 1.0, 1.0
        for st in c.settings:
            r = ratio.get(st)
            if r is None:
                c.how, c.error = "failed", f"not run: {st.label} alone cannot run"
                break
            mem, tim = mem * r[0], tim * r[1]
        else:
            c.predicted_total = as_is.total * mem
            c.predicted_fit = as_is.fit_total * mem
            c.predicted_seconds = base_secs * tim if base_secs else None
    ordered = sorted(cands, key=key)
    do_all = exhaustive if exhaustive is not None else len(cands) <= engine.exhaustive
    out = Outcome(as_is, None, [], ordered, budget, fit_at, gpu, savings=savings)
    if as_is.fit_total <= budget:
        # already fits: keep it; verify what is predicted faster and may fit (at most 4 x alternatives + 8)
        walk = [c for c in ordered if c.settings and not c.error and c.seconds < as_is.seconds * 0.995
                and c.fit_total <= budget * (1 + SAFETY)][:4 * alternatives + 8]
        out.faster = _walk(walk, lambda c: c.fit_total <= budget and c.seconds < as_is.seconds, alternatives,
                           lambda b: verify(b, each=True), engine, lambda c: _setup(base, c))
        out.faster.sort(key=key)
        out.fitting = sorted([as_is, *out.faster], key=key)
        out.best = out.fitting[0] if prefer == "speed" else as_is
    else:
        floor = fixed_bytes(as_is.report, gpu, fit_at)
        if floor > budget:  # the CUDA context alone is over the budget: no change to the step can fit
            out.notes.append(f"the CUDA context alone ({floor / 2**30:.2f} GiB at the "
                             f"{'top of its band' if fit_at == 'high' else 'point'}) is over the budget "
                             f"({budget / 2**30:.2f} GiB): no change to the step fits this card")
        walk = [c for c in ordered if floor <= budget and not c.error
                and (do_all or c.report is not None or c.fit_total <= budget * (1 + SAFETY))]
        found = _walk(walk, lambda c: c.fit_total <= budget, alternatives + 1, lambda b: verify(b, each=True), engine,
                      lambda c: _setup(base, c))
        out.fitting = sorted(found, key=key)
        out.best = out.fitting[0] if found else None
        if not found:
            runnable = [c for c in cands if not c.error and c.fit_total < float("inf")]
            if runnable:
                smallest = min(runnable, key=lambda c: c.fit_total)
                verify([smallest])
                if smallest.report is not None and smallest.fit_total <= budget:  # it fits after all
                    out.fitting, out.best = [smallest], smallest
                elif smallest.report is not None:
                    out.smallest = smallest
                    need = smallest.fit_total / (1 - margin)
                    cards = [g for g in CATALOG if g.capacity_bytes >= need]
                    out.needed_gpu = min(cards, key=lambda g: g.capacity_bytes) if cards else None
    out.ordered = sorted(cands, key=key)
    out.evaluations = engine.evaluations
    out.seconds = time.perf_counter() - t0
    return out


# --- the largest size that fits ---------------------------------------------------------------------


@dataclass
class SizeSearch:
    """Result of ``largest`` (``--max-batch``, ``--max-voxel``, ``--max-knob``); unpacks as
    ``(value, report)``."""

    value: Any
    report: MemoryReport | None
    capped: bool = False
    """The search stopped at its cap while still fitting: the answer is at least ``value``."""
    cap: Any = None
    smaller_not_fitting: list = field(default_factory=list)
    """Sizes below the answer that do NOT fit (device total is not monotone in the size)."""
    larger_fitting_skipped: list = field(default_factory=list)
    """Sizes above the bisection's first answer found to fit by the neighbourhood scan."""
    estimates: int = 0
    constraints: dict | None = None
    """max_voxel: the step and minimum side per network (planner.shapes.constraints)."""
    rejected: dict = field(default_factory=dict)
    """Sizes the step itself rejected (its one-line error), searched past as not fitting."""
    start: int = 0
    """Where the search started (the step's own value for --max-knob)."""

    def __iter__(self):
        return iter((self.value, self.report))


NEIGHBOURHOOD = 8
"""How many sizes below (and half as many above) the bisection's answer are re-checked."""


def largest(fits: Callable[[int], MemoryReport | None], lo_k: int, limit: int) -> SizeSearch:
    """Largest k in [lo_k, limit] with fits(k), not assuming monotonicity.

    Doubling then bisection finds a k that fits with k+1 not fitting; the device
    total can still drop as the size grows (allocator segment rounding), so the
    NEIGHBOURHOOD sizes above are re-checked (and the search moves up if one fits)
    and those below are scanned: any that does not fit is reported.
    """
    memo: dict[int, MemoryReport | None] = {}

    def f(k: int) -> MemoryReport | None:
        if k not in memo:
            memo[k] = fits(k)
        return memo[k]

    if f(lo_k) is None:
        # the smallest does not fit; a slightly larger one still might
        for k in range(lo_k + 1, min(limit, lo_k + NEIGHBOURHOOD // 2) + 1):
            if f(k) is not None:
                lo_k = k
                break
        else:
            return SizeSearch(0, None, estimates=len(memo))
    lo, hi = lo_k, lo_k * 2
    while hi <= limit and f(hi) is not None:
        lo, hi = hi, hi * 2
    if hi > limit:
        hi = limit + 1
        if lo < limit and f(limit) is not None:
            lo = limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) is not None:
            lo = mid
        else:
            hi = mid
    skipped = []
    moved = True
    while moved:
        moved = False
        for k in range(lo + 1, min(limit, lo + NEIGHBOURHOOD // 2) + 1):
            if f(k) is not None:
                skipped.append(k)
                lo, moved = k, True
    below = [k for k in range(max(lo_k, lo - NEIGHBOURHOOD), lo) if f(k) is None]
    return SizeSearch(lo, f(lo), capped=(lo == limit), cap=limit, smaller_not_fitting=below,
                      larger_fitting_skipped=skipped, estimates=len(memo))


def max_size(at: Callable[[int], Any], engine: Engine, margin: float, limit: int, *, lo: int = 1, floor: int = 1,
             value_of: Callable[[int], Any] | None = None, skip_rejected: bool = False,
             fit_at: str = "high") -> SizeSearch:
    """The largest k in [lo, limit] whose setup ``at(k)`` fits ``engine.gpu`` (``largest``), and where
    ``lo`` does not fit, the largest in [floor, lo). ``value_of``: the size k stands for (k x a step,
    a volume); the result speaks in it. A setup the engine cannot run (the step rejects the size)
    counts as not fitting and is named in ``rejected`` with ``skip_rejected``, else raises."""
    from planner.band import check_fit_at, fit_bytes

    check_margin(margin)
    check_fit_at(fit_at)
    budget = engine.gpu.capacity_bytes * (1 - margin)
    value = value_of or (lambda k: k)
    rejected: dict[Any, str] = {}

    def fits(k: int) -> MemoryReport | None:
        try:
            rep, _, why = engine.evaluate([at(k)])[0]
        except PlannerError as exc:
            rep, why = None, str(exc)
        if rep is None:
            if not skip_rejected:
                raise PlannerError(why)
            rejected[value(k)] = why
            return None
        return rep if fit_bytes(rep, engine.gpu, fit_at) <= budget else None

    lo = min(lo, limit)
    res = largest(fits, lo, limit)
    if not res.value and floor < lo:  # the start does not fit: the answer is below it
        res = largest(fits, floor, lo - 1)
    return replace(res, value=value(res.value) if res.report is not None else res.value,
                   cap=None if res.cap is None else value(res.cap),
                   smaller_not_fitting=[value(k) for k in res.smaller_not_fitting if value(k) not in rejected],
                   larger_fitting_skipped=[value(k) for k in res.larger_fitting_skipped],
                   rejected=dict(sorted(rejected.items())), start=value(lo))


def fewest_gpus(total: int, limit: int, make: Callable[[int, int, int, str], Any], engine: Engine, margin: float,
                smaller: str, fit_at: str = "high") -> tuple[Any, list, dict]:
    """``--max-gpus``: planner/gpusearch.py ``search`` (the fewest GPUs and the strategy whose per-rank
    step fits, at ``total`` samples per optimizer step) with every option answered by ``engine``;
    ``make(batch, accumulation, gpus, strategy)`` builds the setup."""
    from planner.band import check_fit_at, fit_bytes
    from planner.gpusearch import search

    check_margin(margin)
    check_fit_at(fit_at)

    def evaluate(s: Any) -> tuple[MemoryReport | None, str]:
        rep, _, how = engine.evaluate([s])[0]
        return rep, how

    prepare = getattr(engine, "prepare", None)
    return search(total, limit, engine.gpu.capacity_bytes * (1 - margin), make, evaluate, smaller,
                  fit=lambda r: fit_bytes(r, engine.gpu, fit_at),
                  ahead=(engine.width, prepare) if prepare is not None and getattr(engine, "width", 1) > 1 else None)
