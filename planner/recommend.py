"""``vramplan recommend`` on the built-in steps: their search space and the analytic engine
that answers it for planner/search.py's one search. Torch-free.

The space (``knob_settings``): AMP, micro-batch x accumulation, checkpointing, flash attention,
attention levels, non-local attention, the perceptual loss, the discriminator, channels, patch
size, the allocator, the optimizer (tens of thousands of candidates for stage 1). The engine
(``AnalyticEngine``) estimates exactly in milliseconds, so spaces of up to EXHAUSTIVE candidates
are verified without the SAFETY filter (what brute force does), and takes each change's memory
ratio from the simulator's allocated peak without the allocator replay (``_quick``), the exact
figure where that peak does not move.

Quality-risk tiers (issue 5): none — AMP, accumulation, checkpointing, flash
attention; slight — perceptual ratio, discriminator size; moderate — channels,
attention levels, non-local attention, perceptual off, patch size, optimizer.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from planner.allocator import with_expandable_segments
from planner.errors import PlannerError
from planner.gpus import GPU
from planner.result import GIB, MemoryReport
from planner.search import ALTERNATIVES, TIER_NAMES, Candidate, Change, Outcome, SizeSearch, fewest_gpus, max_size
from planner.search import recommend as search_recommend
from planner.spec import TrainingSetup, spec_to_dict

EXHAUSTIVE = 256
FREEZE = ("allocator", "amp", "attention", "batch", "channels", "checkpointing", "discriminator", "flash", "nonlocal",
          "optimizer", "patch", "perceptual")
"""The dimensions of ``knob_settings`` (--freeze names them)."""


def Setting(knob: str, label: str, tier: int, apply: Callable[[TrainingSetup], TrainingSetup]) -> Change:
    """A built-in knob's change (its label is its value)."""
    return Change(knob, label, label, tier, apply)


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


def knob_settings(setup: TrainingSetup, gpu: GPU, freeze: set[str]) -> list[list[Change]]:
    """Per knob: the changes to try (the input's own setting is "as is", not listed)."""
    knobs: list[list[Change]] = []

    def add(knob: str, options: list[Change]) -> None:
        if knob in freeze or not options:
            return
        knobs.append(options)

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
    text = with_expandable_segments(setup.device.alloc_conf)
    if text is not None:
        add("allocator", [Setting("allocator", f"allocator {text}", 0,
                                  lambda s, t=text: replace(s, device=replace(s.device, alloc_conf=t)))])
    opt = setup.autoencoder.training.optimizer if setup.kind == "ldm-stage1" else setup.diffusion.training.optimizer
    if opt != "sgd":
        add("optimizer", [Setting("optimizer", "SGD with momentum", 2, lambda s: _tr(s, optimizer="sgd"))])
    return knobs


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


class AnalyticEngine:
    """The analytic estimator as planner/search.py's engine (every figure exact against the
    trace, milliseconds each)."""

    exhaustive = EXHAUSTIVE

    def __init__(self, gpu: GPU, profile: Any = None, timed: bool = True):
        """``timed``: also the time per sample (recommend orders by it; the size searches do not)."""
        self.gpu, self.profile, self.timed = gpu, profile, timed
        self.evaluations = 0
        self._cache: dict[str, tuple[MemoryReport | None, float | None, str]] = {}

    def evaluate(self, setups: list[TrainingSetup]) -> list[tuple[MemoryReport | None, float | None, str]]:
        out = []
        for s in setups:
            key = repr(spec_to_dict(s))
            if key not in self._cache:
                try:
                    rep, secs = _evaluate(s, self.gpu, self.profile) if self.timed else (_report(s, self.gpu, self.profile), None)
                    self._cache[key] = (rep, secs, "estimated")
                except PlannerError as exc:
                    self._cache[key] = (None, None, str(exc))
                self.evaluations += 1
            out.append(self._cache[key])
        return out

    def ratios(self, base: Candidate, singles: list[Candidate],
               verify: Callable[[list[Candidate]], None]) -> dict[Change, tuple[float, float, int] | None]:
        """From the allocated peak without the allocator replay; where a change leaves that peak
        as it is, it acts on what that does not model (the allocator's reserve, which the band's
        top counts twice): its exact figure."""
        assert base.report is not None and base.fit
        base_alloc = float(base.report.peak_allocated_bytes)
        base_s = base.seconds_per_sample or 1.0
        out: dict[Change, tuple[float, float, int] | None] = {}
        for c in singles:
            st = c.settings[0]
            try:
                c.setup = st.apply(base.setup)
                alloc, sec = _quick(c.setup, self.gpu)
            except PlannerError as exc:
                c.how, c.error, out[st] = "failed", str(exc), None
                continue
            self.evaluations += 1
            mem = alloc / base_alloc
            if alloc == base_alloc:
                verify([c])
                if c.report is None:
                    out[st] = None
                    continue
                mem = c.fit_total / base.fit
            out[st] = (mem, (sec or base_s) / base_s, int(base_alloc - alloc))
        return out


def recommend(
    setup: TrainingSetup,
    gpu: GPU,
    margin: float = 0.05,
    prefer: str = "risk",
    freeze: set[str] | None = None,
    alternatives: int = ALTERNATIVES,
    exhaustive: bool | None = None,
    fit_at: str = "high",
    profile: Any = None,
) -> Outcome:
    """planner/search.py ``recommend`` over the built-in step's space, answered by the analytic
    engine. ``fit_at``: a plan fits when its device_total band's top (default) or point is within
    the budget (planner/band.py ``fit_bytes``); ``profile``: a DeviceProfile applied to every
    estimate (a GPU-measured one collapses the band to its point)."""
    return search_recommend(setup, knob_settings(setup, gpu, freeze or set()), AnalyticEngine(gpu, profile), margin,
                            prefer, fit_at, alternatives, exhaustive)


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
    options = [st for knob in knob_settings(setup, gpu, set()) for st in knob if st.tier == 0]
    targeted: list[tuple[int, str, Change]] = []
    for st in options:
        if st.dim == "flash":
            targeted.append((attention, "attention at the peak", st))
        elif st.dim == "checkpointing":
            targeted.append((max(0, acts - attention), "saved activations outside attention", st))
        elif st.dim == "amp" and not setup.device.mixed_precision and st.label == "AMP fp16":
            targeted.append(((acts + temps) // 2, "half of the fp32 activations and temporaries", st))
        elif st.dim == "batch":
            new_b = int(st.label.split()[1])
            targeted.append((acts - acts * new_b // setup.batch_size, "the activations of the dropped samples", st))
    if not targeted:
        return {"change": None, "knob": None, "risk": None, "targets": None, "targeted_bytes": 0,
                "basis": "breakdown at the peak (no extra estimate)"}
    nbytes, what, st = max(targeted, key=lambda t: t[0])
    return {
        "change": st.label,
        "knob": st.dim,
        "risk": TIER_NAMES[st.tier],
        "targets": what,
        "targeted_bytes": nbytes,
        "share_of_peak": round(nbytes / max(1, report.peak_allocated_bytes), 4),
        "basis": "breakdown at the peak (no extra estimate); `recommend` gives exact savings",
    }


def max_batch(setup: TrainingSetup, gpu: GPU, margin: float = 0.05, limit: int | None = None,
              fit_at: str = "high", profile: Any = None) -> SizeSearch:
    """Largest micro-batch whose device total (the top of its band by default, planner/band.py
    ``fit_bytes``) fits ``gpu.capacity_bytes * (1 - margin)`` (exact estimates).

    The cap is the spec's largest batch (2**20) unless ``limit`` is given; an answer at
    the cap comes back with ``capped=True`` ("at least"), never as if it were the answer.
    """
    from planner.spec import MAX_BATCH

    return max_size(lambda b: _tr(setup, batch_size=b), AnalyticEngine(gpu, profile, timed=False), margin,
                    MAX_BATCH if limit is None else limit, skip_rejected=True, fit_at=fit_at)


def max_gpus(setup: TrainingSetup, gpu: GPU, margin: float, limit: int, fit_at: str = "high",
             profile: Any = None) -> tuple[Any, list, dict, float]:
    """``recommend --max-gpus``: planner/gpusearch.py ``search`` over exact analytic estimates.
    Returns (answer or None, the options tried, the verdict, seconds)."""
    from planner.spec import ParallelSpec

    if setup.parallel.gpus != 1:
        raise PlannerError("--max-gpus: searches the GPU count and strategy itself; leave out --gpus/--strategy")
    t0 = time.perf_counter()

    def make(b: int, a: int, n: int, strategy: str) -> TrainingSetup:
        return replace(_tr(setup, batch_size=b, gradient_accumulation_steps=a), parallel=ParallelSpec(n, strategy))

    smaller = "vramplan recommend" + (f" --voxel {'x'.join(map(str, setup.data.voxel_size))}"
                                      if setup.kind == "ldm-stage1" else "")
    answer, tried, verdict = fewest_gpus(setup.batch_size * setup.accumulation_steps, limit, make,
                                         AnalyticEngine(gpu, profile, timed=False), margin, smaller, fit_at)
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

    base = setup.data.voxel_size
    cons = constraints(setup)
    step = cons["step"]
    smallest = min(base)
    # k steps on the smallest side; the others keep the aspect ratio
    k0 = cons["min_side"] // step

    def at(k: int) -> tuple[int, ...]:
        return tuple(max(cons["min_side"], _round_to(d * k * step / smallest, step)) for d in base)

    kmax = max(k0, min(limit, MAX_SIDE) * smallest // (max(base) * step))
    res = max_size(lambda k: replace(setup, data=replace(setup.data, voxel_size=at(k))), AnalyticEngine(gpu, profile, timed=False),
                   margin, kmax, lo=k0, value_of=at, skip_rejected=True, fit_at=fit_at)
    if res.report is None:
        res.value = None
    res.constraints = cons
    return res


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"

