"""``vramplan recommend``: the cheapest configuration that fits a GPU. Torch-free.

Search. Every knob has a list of settings, the first being "leave it as it is";
a candidate is one setting per knob, so the space is their product (tens of
thousands of candidates for stage 1). Candidates are ordered by the user's
preference (default: lowest quality-risk tier, then fastest estimated time per
effective sample). Memory and time of a candidate are first predicted by a
surrogate: the exact estimate of the input configuration times, for each changed
knob, the ratio that knob alone produced in an exact estimate (so ~20 exact
simulations cover the whole space). Walking the ordered list, a candidate whose
predicted device total is within the budget plus a safety allowance is verified
with an exact estimate; the first that truly fits (the top of its device_total band,
planner/band.py ``fit_bytes``, <= card x (1 - margin); ``fit_at="point"``: the point figure)
is the answer. On small spaces (<= EXHAUSTIVE candidates) every candidate
is estimated exactly, which is what brute force does.

Quality-risk tiers (issue 5): none — AMP, accumulation, checkpointing, flash
attention; slight — perceptual ratio, discriminator size; moderate — channels,
attention levels, non-local attention, perceptual off, patch size, optimizer.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from planner.allocator import parse_alloc_conf
from planner.band import check_fit_at, fit_bytes, margin_json, margin_line
from planner.errors import PlannerError
from planner.gpus import CATALOG, GPU
from planner.result import GIB, MemoryReport
from planner.spec import TrainingSetup, spec_to_dict

TIERS = {"none": 0, "slight": 1, "moderate": 2}
TIER_NAMES = {v: k for k, v in TIERS.items()}
EXHAUSTIVE = 256
SAFETY = 0.15  # verify candidates predicted up to 15 % over the budget


@dataclass(frozen=True)
class Setting:
    knob: str
    label: str
    tier: int
    apply: Callable[[TrainingSetup], TrainingSetup]


def _ae(setup: TrainingSetup, **kw) -> TrainingSetup:
    return replace(setup, autoencoder=replace(setup.autoencoder, **kw))


def _tr(setup: TrainingSetup, **kw) -> TrainingSetup:
    if setup.kind == "ldm-stage1":
        return _ae(setup, training=replace(setup.autoencoder.training, **kw))
    return replace(setup, diffusion=replace(setup.diffusion, training=replace(setup.diffusion.training, **kw)))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _round_to(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def knob_settings(setup: TrainingSetup, gpu: GPU, freeze: set[str]) -> list[list[Setting]]:
    """Per knob: the settings to try, the first one the input's own."""
    keep = lambda knob: Setting(knob, "as is", 0, lambda s: s)  # noqa: E731
    knobs: list[list[Setting]] = []

    def add(knob: str, options: list[Setting]) -> None:
        if knob in freeze or not options:
            return
        knobs.append([keep(knob)] + options)

    dev = setup.device
    amp: list[Setting] = []
    if not dev.mixed_precision or dev.amp_dtype != "float16":
        amp.append(Setting("amp", "AMP fp16", 0, lambda s: replace(s, device=replace(s.device, mixed_precision=True, amp_dtype="float16"))))
    if gpu.bf16 and (not dev.mixed_precision or dev.amp_dtype != "bfloat16"):
        amp.append(Setting("amp", "AMP bf16", 0, lambda s: replace(s, device=replace(s.device, mixed_precision=True, amp_dtype="bfloat16"))))
    add("amp", amp)

    b, acc = setup.batch_size, setup.accumulation_steps
    eff = b * acc
    split = [Setting("batch", f"batch {d} x accum {eff // d}", 0, lambda s, d=d: _tr(s, batch_size=d, gradient_accumulation_steps=eff // d))
             for d in sorted(_divisors(eff), reverse=True) if d < b]
    add("batch", split[:3])

    if setup.kind == "ldm-stage1":
        ae, tr = setup.autoencoder, setup.autoencoder.training
        if not tr.use_gradient_checkpointing:
            add("checkpointing", [Setting("checkpointing", "gradient checkpointing", 0, lambda s: _tr(s, use_gradient_checkpointing=True))])
        if not ae.use_flash_attention and (any(ae.attention_levels) or ae.with_encoder_nonlocal_attn or ae.with_decoder_nonlocal_attn):
            add("flash", [Setting("flash", "flash attention (SDPA)", 0, lambda s: _ae(s, use_flash_attention=True))])
        att = list(ae.attention_levels)
        opts = []
        if sum(att) > 1:
            last = [False] * (len(att) - 1) + [att[-1]]
            opts.append(Setting("attention", f"attention levels {''.join('T' if a else 'F' for a in last)}", 2, lambda s, v=tuple(last): _ae(s, attention_levels=v)))
        if any(att):
            opts.append(Setting("attention", "no attention levels", 2, lambda s: _ae(s, attention_levels=(False,) * len(att))))
        add("attention", opts)
        if ae.with_encoder_nonlocal_attn or ae.with_decoder_nonlocal_attn:
            add("nonlocal", [Setting("nonlocal", "no non-local attention", 2, lambda s: _ae(s, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False))])
        if tr.use_perceptual_loss:
            opts = [Setting("perceptual", f"perceptual ratio {r}", 1, lambda s, r=r: _tr(s, perceptual=replace(s.autoencoder.training.perceptual, fake_3d_ratio=r)))
                    for r in (0.1, 0.05) if r < tr.perceptual.fake_3d_ratio]
            opts.append(Setting("perceptual", "perceptual loss off", 2, lambda s: _tr(s, use_perceptual_loss=False)))
            add("perceptual", opts)
        d = tr.discriminator
        if d.enabled:
            opts = []
            if d.num_layers_d > 2:
                opts.append(Setting("discriminator", f"discriminator {d.num_layers_d - 1} layers", 1, lambda s: _tr(s, discriminator=replace(s.autoencoder.training.discriminator, num_layers_d=d.num_layers_d - 1))))
            if d.num_channels >= 16:
                opts.append(Setting("discriminator", f"discriminator {d.num_channels // 2} channels", 1, lambda s: _tr(s, discriminator=replace(s.autoencoder.training.discriminator, num_channels=d.num_channels // 2))))
            add("discriminator", opts)
        g = ae.norm_num_groups
        opts = []
        for f in (0.75, 0.5):
            ch = tuple(_round_to(c * f, g) for c in ae.num_channels)
            if ch != ae.num_channels and all(c % g == 0 for c in ch):
                opts.append(Setting("channels", f"channels {list(ch)}", 2, lambda s, ch=ch: _ae(s, num_channels=ch)))
        add("channels", opts)
    else:
        df = setup.diffusion
        if not df.use_flash_attention and any(df.attention_levels):
            add("flash", [Setting("flash", "flash attention (SDPA)", 0, lambda s: replace(s, diffusion=replace(s.diffusion, use_flash_attention=True)))])
    from planner.shapes import constraints

    cons = constraints(setup)
    step, low = cons["step"], cons["min_side"]
    opts = []
    for f in (0.75, 0.5):
        v = tuple(max(low, _round_to(x * f, step)) for x in setup.data.voxel_size)
        if v != setup.data.voxel_size:
            opts.append(Setting("patch", f"patches of {'x'.join(map(str, v))}", 2, lambda s, v=v: replace(s, data=replace(s.data, voxel_size=v))))
    add("patch", opts)
    # The allocator: expandable segments map memory in pages instead of caching whole
    # segments, so reserved memory follows the live tensors more closely; no effect on
    # the model or its speed (tier "none"). The search takes it only where it is needed
    # (candidates are ordered by risk, time, then number of changes).
    conf = parse_alloc_conf(setup.device.alloc_conf or None)
    if not conf.expandable_segments:
        text = replace(conf, expandable_segments=True).to_alloc_conf()
        add("allocator", [Setting("allocator", f"allocator {text}", 0,
                                  lambda s, t=text: replace(s, device=replace(s.device, alloc_conf=t)))])
    opt = setup.autoencoder.training.optimizer if setup.kind == "ldm-stage1" else setup.diffusion.training.optimizer
    if opt != "sgd":
        add("optimizer", [Setting("optimizer", "SGD with momentum", 2, lambda s: _tr(s, optimizer="sgd"))])
    return knobs


@dataclass
class Candidate:
    settings: tuple[Setting, ...]
    predicted_total: float
    predicted_seconds: float
    tier: int
    changes: int
    exact: MemoryReport | None = None
    seconds: float | None = None
    setup: TrainingSetup | None = None

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.settings if s.label != "as is"]


@dataclass
class Recommendation:
    base: MemoryReport
    base_seconds: float | None
    gpu: GPU
    budget_bytes: int
    best: Candidate | None
    alternatives: list[Candidate]
    savings: dict[str, int] = field(default_factory=dict)  # change label -> bytes it saves alone
    considered: int = 0
    verified: int = 0
    seconds: float = 0.0
    smallest: Candidate | None = None
    needed_gpu: GPU | None = None
    input_fits: bool = False
    """The input already fits the budget: ``best`` is the input as is, ``faster`` what else fits and is faster."""
    faster: list[Candidate] = field(default_factory=list)
    fit_at: str = "high"
    """Where in the device_total band a plan must fit (planner/band.py ``fit_bytes``)."""

    @property
    def headroom_bytes(self) -> int:
        """Budget minus the input's figure at ``fit_at`` in its band (negative: short)."""
        return self.budget_bytes - fit_bytes(self.base, self.gpu, self.fit_at)

    def margin_json(self, c: Candidate) -> dict:
        """How a verified candidate's figure splits into the point and each band term above it."""
        assert c.exact is not None
        return margin_json(c.exact, self.gpu, self.budget_bytes, self.fit_at)

    def margin_line(self, c: Candidate) -> str:
        assert c.exact is not None
        return margin_line(c.exact, self.gpu, self.budget_bytes, self.fit_at)


def _report(setup: TrainingSetup, gpu: GPU, profile: Any = None) -> MemoryReport:
    """The exact estimate on ``gpu``, with ``profile`` (a DeviceProfile) applied when given."""
    from planner.analytic.estimate import estimate

    rep = estimate(setup, gpu.capacity_bytes)
    return rep if profile is None else profile.apply(rep)


def _evaluate(setup: TrainingSetup, gpu: GPU, profile: Any = None) -> tuple[MemoryReport, float | None]:
    from planner.analytic.cost import seconds_per_sample

    rep = _report(setup, gpu, profile)
    return rep, seconds_per_sample(setup, rep, gpu)


def _quick(setup: TrainingSetup, gpu: GPU) -> tuple[float, float | None]:
    """Peak allocated and time per sample without the allocator replay (for ratios)."""
    from planner.analytic.cost import rates
    from planner.analytic.simulate import simulate

    res = simulate(setup)
    g = rates(gpu)
    tflops = g.fp16_tflops if setup.device.mixed_precision else g.fp32_tflops
    step = 0.5 * (res.flops / (tflops * 1e12) + 2 * res.bytes_written / (g.bandwidth_gbs * 1e9))
    return float(res.peak_bytes), step / (setup.batch_size * setup.accumulation_steps)


def _order_key(prefer: str) -> Callable[[Candidate], tuple]:
    if prefer == "speed":
        return lambda c: (c.predicted_seconds, c.tier, c.changes)
    if prefer == "quality":
        return lambda c: (c.tier, c.changes, c.predicted_seconds)
    return lambda c: (c.tier, c.predicted_seconds, c.changes)


def recommend(
    setup: TrainingSetup,
    gpu: GPU,
    margin: float = 0.05,
    prefer: str = "risk",
    freeze: set[str] | None = None,
    alternatives: int = 5,
    exhaustive: bool | None = None,
    fit_at: str = "high",
    profile: Any = None,
) -> Recommendation:
    """``fit_at``: a plan fits when its device_total band's top (default) or point is within the
    budget (planner/band.py ``fit_bytes``); ``profile``: a DeviceProfile applied to every estimate
    (a GPU-measured one collapses the band to its point)."""
    check_fit_at(fit_at)
    if not 0 <= margin < 1:
        raise PlannerError(f"--margin: {margin} must be in [0, 1)")
    if prefer not in ("risk", "speed", "quality"):
        raise PlannerError(f"--prefer: '{prefer}' (valid: risk, speed, quality)")
    t0 = time.perf_counter()
    budget = int(gpu.capacity_bytes * (1 - margin))
    base_rep, base_s = _evaluate(setup, gpu, profile)
    base_fit = fit_bytes(base_rep, gpu, fit_at)
    base_s = base_s or 1.0
    base_alloc = float(base_rep.peak_allocated_bytes)
    knobs = knob_settings(setup, gpu, freeze or set())
    # exact effect of each setting alone (on the allocated peak; reserved follows it)
    alone: dict[int, tuple[float, float]] = {}
    savings: dict[str, int] = {}
    verified = 1
    for options in knobs:
        for st in options[1:]:
            try:
                alloc, sec = _quick(st.apply(setup), gpu)
            except PlannerError:
                alone[id(st)] = (float("inf"), float("inf"))
                continue
            verified += 1
            mem = alloc / base_alloc
            if alloc == base_alloc:
                # the allocated peak is unchanged: the setting acts on what _quick does not model
                # (the allocator's reserve, which the band's top counts twice): its exact figure
                mem = fit_bytes(_report(st.apply(setup), gpu, profile), gpu, fit_at) / base_fit
                verified += 1
            alone[id(st)] = (mem, (sec or base_s) / base_s)
            savings[st.label] = int(base_alloc - alloc)
    cands: list[Candidate] = []
    for combo in itertools.product(*knobs):
        mem, tim = 1.0, 1.0
        for st in combo:
            if st.label != "as is":
                m, t = alone[id(st)]
                mem *= m
                tim *= t
        changed = [s for s in combo if s.label != "as is"]
        cands.append(Candidate(combo, base_fit * mem, base_s * tim,
                               max((s.tier for s in changed), default=0), len(changed)))
    cands.sort(key=_order_key(prefer))
    do_all = exhaustive if exhaustive is not None else len(cands) <= EXHAUSTIVE
    found: list[Candidate] = []
    cache: dict[str, tuple[MemoryReport, float | None]] = {}

    def exact(c: Candidate) -> bool:
        nonlocal verified
        s = setup
        try:
            for st in c.settings:
                s = st.apply(s)
        except PlannerError:
            return False
        key = repr(spec_to_dict(s))
        if key not in cache:
            cache[key] = _evaluate(s, gpu, profile)
            verified += 1
        c.exact, c.seconds = cache[key]
        c.setup = s
        return fit_bytes(c.exact, gpu, fit_at) <= budget

    if base_fit <= budget:
        # Already fits: keep it, and offer the settings predicted faster that still fit.
        as_is = next(c for c in cands if c.changes == 0)
        as_is.exact, as_is.seconds, as_is.setup = base_rep, base_s, setup
        faster: list[Candidate] = []
        tried = 0
        for c in cands:
            if len(faster) >= alternatives or tried >= 4 * alternatives + 8:
                break
            if c.changes == 0 or c.predicted_seconds >= base_s * 0.995:
                continue
            if c.predicted_total > budget * (1 + SAFETY):
                continue
            tried += 1
            if exact(c) and (c.seconds or base_s) < base_s:
                faster.append(c)
        for c in faster:  # the user's order (--prefer), on the exact times
            c.predicted_seconds = c.seconds or c.predicted_seconds
        faster.sort(key=_order_key(prefer))
        rec = Recommendation(base_rep, base_s, gpu, budget, as_is, [], savings,
                             considered=len(cands), verified=verified, input_fits=True, faster=faster, fit_at=fit_at)
        rec.seconds = time.perf_counter() - t0
        return rec

    for c in cands:
        if len(found) > alternatives:
            break
        if not do_all and c.predicted_total > budget * (1 + SAFETY):
            continue
        if exact(c):
            found.append(c)
    if do_all and found:
        # exact order among the fitting ones (predicted time replaced by the exact one)
        for c in found:
            c.predicted_seconds = c.seconds or c.predicted_seconds
        found.sort(key=_order_key(prefer))
    rec = Recommendation(base_rep, base_s, gpu, budget, found[0] if found else None, found[1:], savings,
                         considered=len(cands), verified=verified, fit_at=fit_at)
    if not found:
        smallest = min(cands, key=lambda c: c.predicted_total)
        exact(smallest)
        rec.smallest = smallest
        need = fit_bytes(smallest.exact, gpu, fit_at) / (1 - margin)
        fits = [g for g in CATALOG if g.capacity_bytes >= need]
        rec.needed_gpu = min(fits, key=lambda g: g.capacity_bytes) if fits else None
    rec.seconds = time.perf_counter() - t0
    return rec


def yaml_diff(base: TrainingSetup, new: TrainingSetup) -> list[str]:
    """'path: old -> new' lines for every leaf that changed."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            for k in a:
                walk(a[k], b[k], f"{path}.{k}" if path else k)
        elif a != b:
            out.append(f"{path}: {a} -> {b}")

    walk(spec_to_dict(base), spec_to_dict(new), "")
    return out


def largest_share_change(setup: TrainingSetup, gpu: GPU, report: MemoryReport) -> dict:
    """The quality-risk-free change aimed at the largest share of the peak, for `estimate`'s
    verdict, read off the breakdown at the peak: no extra simulation.

    Exact savings need one estimate per candidate (two to four here, 0.1-0.2 s), which would
    double the main job's wall time; `recommend` verifies them. What each change of the
    lowest-risk tier acts on, in bytes live at the peak:
      * flash attention: everything attributed to the "attention" network (the explicit
        scores, their softmax and its fp16 copy: what SDPA's fused kernels never store);
      * gradient checkpointing (stage 1): the other saved activations (MONAI keeps one input
        per checkpointed block instead);
      * AMP fp16 (from fp32): half of the activations and temporaries (fp16 copies);
      * a smaller micro-batch with accumulation: activations x (1 - new batch / batch).
    The change with the most bytes is named, with those bytes, as the likely biggest
    saving; the output says it is read from the breakdown, not simulated.
    """
    bd = report.breakdown
    acts = bd.by_category.get("activations", 0)
    temps = bd.by_category.get("temporaries", 0)
    attention = bd.by_network.get("attention", 0)
    options = [st for knob in knob_settings(setup, gpu, set()) for st in knob[1:] if st.tier == 0]
    targeted: list[tuple[int, str, Setting]] = []
    for st in options:
        if st.knob == "flash":
            targeted.append((attention, "attention at the peak", st))
        elif st.knob == "checkpointing":
            targeted.append((max(0, acts - attention), "saved activations outside attention", st))
        elif st.knob == "amp" and not setup.device.mixed_precision and st.label == "AMP fp16":
            targeted.append(((acts + temps) // 2, "half of the fp32 activations and temporaries", st))
        elif st.knob == "batch":
            new_b = int(st.label.split()[1])
            targeted.append((acts - acts * new_b // setup.batch_size, "the activations of the dropped samples", st))
    if not targeted:
        return {"change": None, "knob": None, "risk": None, "targets": None, "targeted_bytes": 0,
                "basis": "breakdown at the peak (no extra estimate)"}
    nbytes, what, st = max(targeted, key=lambda t: t[0])
    return {
        "change": st.label,
        "knob": st.knob,
        "risk": TIER_NAMES[st.tier],
        "targets": what,
        "targeted_bytes": nbytes,
        "share_of_peak": round(nbytes / max(1, report.peak_allocated_bytes), 4),
        "basis": "breakdown at the peak (no extra estimate); `recommend` gives exact savings",
    }


@dataclass
class SizeSearch:
    """Result of ``max_batch`` / ``max_voxel``; unpacks as ``(value, report)``."""

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


def _check_margin(margin: float) -> None:
    if not 0 <= margin < 1:
        raise PlannerError(f"--margin: {margin} must be in [0, 1)")


def _largest(fits: Callable[[int], MemoryReport | None], lo_k: int, limit: int) -> SizeSearch:
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


def max_batch(setup: TrainingSetup, gpu: GPU, margin: float = 0.05, limit: int | None = None,
              fit_at: str = "high", profile: Any = None) -> SizeSearch:
    """Largest micro-batch whose device total (the top of its band by default, planner/band.py
    ``fit_bytes``) fits ``gpu.capacity_bytes * (1 - margin)`` (exact estimates).

    The cap is the spec's largest batch (2**20) unless ``limit`` is given; an answer at
    the cap comes back with ``capped=True`` ("at least"), never as if it were the answer.
    """
    from planner.spec import MAX_BATCH

    _check_margin(margin)
    check_fit_at(fit_at)
    budget = gpu.capacity_bytes * (1 - margin)
    limit = MAX_BATCH if limit is None else limit

    def fits(b: int) -> MemoryReport | None:
        try:
            rep = _report(_tr(setup, batch_size=b), gpu, profile)
        except PlannerError:
            return None
        return rep if fit_bytes(rep, gpu, fit_at) <= budget else None

    return _largest(fits, 1, limit)


def max_gpus(setup: TrainingSetup, gpu: GPU, margin: float, limit: int, fit_at: str = "high",
             profile: Any = None) -> tuple[Any, list, dict, float]:
    """``recommend --max-gpus``: planner/gpusearch.py ``search`` over exact analytic estimates.
    Returns (answer or None, the options tried, the verdict, seconds)."""
    from planner.gpusearch import search
    from planner.spec import ParallelSpec

    _check_margin(margin)
    check_fit_at(fit_at)
    if setup.parallel.gpus != 1:
        raise PlannerError("--max-gpus: searches the GPU count and strategy itself; leave out --gpus/--strategy")
    t0 = time.perf_counter()

    def make(b: int, a: int, n: int, strategy: str) -> TrainingSetup:
        return replace(_tr(setup, batch_size=b, gradient_accumulation_steps=a), parallel=ParallelSpec(n, strategy))

    def evaluate(s: TrainingSetup) -> tuple[MemoryReport | None, str]:
        try:
            return _report(s, gpu, profile), "estimated"
        except PlannerError as exc:
            return None, str(exc)

    smaller = "vramplan recommend" + (f" --voxel {'x'.join(map(str, setup.data.voxel_size))}"
                                      if setup.kind == "ldm-stage1" else "")
    answer, tried, verdict = search(setup.batch_size * setup.accumulation_steps, limit,
                                    gpu.capacity_bytes * (1 - margin), make, evaluate, smaller,
                                    fit=lambda r: fit_bytes(r, gpu, fit_at))
    return answer, tried, verdict, time.perf_counter() - t0


def max_voxel(setup: TrainingSetup, gpu: GPU, margin: float = 0.05, limit: int = 4096,
              fit_at: str = "high", profile: Any = None) -> SizeSearch:
    """Largest volume at the configuration's aspect ratio that fits (the top of its device_total
    band by default, planner/band.py ``fit_bytes``).

    Sizes step by the true divisibility of the networks being sized and start at the
    smallest size they accept (planner.shapes.constraints: e.g. 4 from 28 for the
    default stage 1 with perceptual loss, 16 for the default stage 2 on the latent).
    ``value`` is the volume (a tuple) or None; ``smaller_not_fitting`` lists volumes.
    """
    from planner.shapes import constraints
    from planner.spec import MAX_SIDE

    _check_margin(margin)
    check_fit_at(fit_at)
    budget = gpu.capacity_bytes * (1 - margin)
    base = setup.data.voxel_size
    cons = constraints(setup)
    step = cons["step"]
    smallest = min(base)
    # k steps on the smallest side; the others keep the aspect ratio
    k0 = cons["min_side"] // step

    def at(k: int) -> tuple[int, ...]:
        return tuple(max(cons["min_side"], _round_to(d * k * step / smallest, step)) for d in base)

    kmax = max(k0, min(limit, MAX_SIDE) * smallest // (max(base) * step))

    def fits(k: int) -> MemoryReport | None:
        try:
            s = replace(setup, data=replace(setup.data, voxel_size=at(k)))
            rep = _report(s, gpu, profile)
        except PlannerError:
            return None
        return rep if fit_bytes(rep, gpu, fit_at) <= budget else None

    res = _largest(fits, k0, kmax)
    res.smaller_not_fitting = [at(k) for k in res.smaller_not_fitting]
    res.larger_fitting_skipped = [at(k) for k in res.larger_fitting_skipped]
    res.cap = at(kmax)
    res.value = at(res.value) if res.report is not None else None
    res.constraints = cons
    return res


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


TIER_OF = TIER_NAMES
