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
with an exact estimate; the first that truly fits (device total <= card x (1 -
margin)) is the answer. On small spaces (<= EXHAUSTIVE candidates) every candidate
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
    step = 2 ** (len(setup.autoencoder.num_channels) - 1) * 8
    opts = []
    for f in (0.75, 0.5):
        v = tuple(max(step * 2, _round_to(x * f, step)) for x in setup.data.voxel_size)
        if v != setup.data.voxel_size:
            opts.append(Setting("patch", f"patches of {'x'.join(map(str, v))}", 2, lambda s, v=v: replace(s, data=replace(s.data, voxel_size=v))))
    add("patch", opts)
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


def _evaluate(setup: TrainingSetup, gpu: GPU) -> tuple[MemoryReport, float | None]:
    from planner.analytic.cost import seconds_per_sample
    from planner.analytic.estimate import estimate

    rep = estimate(setup)
    return rep, seconds_per_sample(setup, rep, gpu)


def _quick(setup: TrainingSetup, gpu: GPU) -> tuple[float, float | None]:
    """Peak allocated and time per sample without the allocator replay (for ratios)."""
    from planner.analytic.cost import rates
    from planner.analytic.step import simulate

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
) -> Recommendation:
    if not 0 <= margin < 1:
        raise PlannerError(f"--margin: {margin} must be in [0, 1)")
    if prefer not in ("risk", "speed", "quality"):
        raise PlannerError(f"--prefer: '{prefer}' (valid: risk, speed, quality)")
    t0 = time.perf_counter()
    budget = int(gpu.memory_bytes * (1 - margin))
    base_rep, base_s = _evaluate(setup, gpu)
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
            alone[id(st)] = (alloc / base_alloc, (sec or base_s) / base_s)
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
        cands.append(Candidate(combo, base_rep.device_total_bytes * mem, base_s * tim,
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
            cache[key] = _evaluate(s, gpu)
            verified += 1
        c.exact, c.seconds = cache[key]
        c.setup = s
        return c.exact.device_total_bytes <= budget

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
                         considered=len(cands), verified=verified)
    if not found:
        smallest = min(cands, key=lambda c: c.predicted_total)
        exact(smallest)
        rec.smallest = smallest
        need = smallest.exact.device_total_bytes / (1 - margin)
        fits = [g for g in CATALOG if g.memory_bytes >= need]
        rec.needed_gpu = min(fits, key=lambda g: g.memory_bytes) if fits else None
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


def _largest(fits: Callable[[int], MemoryReport | None], limit: int) -> tuple[int, MemoryReport | None]:
    """Largest k in [1, limit] with fits(k) (fits is monotone): doubling, then bisection."""
    if fits(1) is None:
        return 0, None
    lo, hi = 1, 2
    while hi <= limit and fits(hi) is not None:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid) is not None:
            lo = mid
        else:
            hi = mid
    return lo, fits(lo)


def max_batch(setup: TrainingSetup, gpu: GPU, margin: float = 0.05, limit: int = 1024) -> tuple[int, MemoryReport | None]:
    """Largest micro-batch whose device total fits (exact estimates)."""
    from planner.analytic.estimate import estimate

    budget = gpu.memory_bytes * (1 - margin)

    def fits(b: int) -> MemoryReport | None:
        rep = estimate(_tr(setup, batch_size=b))
        return rep if rep.device_total_bytes <= budget else None

    return _largest(fits, limit)


def max_voxel(setup: TrainingSetup, gpu: GPU, margin: float = 0.05) -> tuple[tuple[int, ...] | None, MemoryReport | None]:
    """Largest volume at the configuration's aspect ratio that fits (sizes in steps of
    the model's downsampling factor x 8, so the discriminator's constraint holds)."""
    from planner.analytic.estimate import estimate

    budget = gpu.memory_bytes * (1 - margin)
    base = setup.data.voxel_size
    step = 2 ** (len(setup.autoencoder.num_channels) - 1) * 8
    smallest = min(base)

    def at(k: int) -> tuple[int, ...]:
        return tuple(_round_to(d * k * step / smallest, step) for d in base)

    def fits(k: int) -> MemoryReport | None:
        try:
            s = replace(setup, data=replace(setup.data, voxel_size=at(k)))
        except PlannerError:
            return None
        rep = estimate(s)
        return rep if rep.device_total_bytes <= budget else None

    k, rep = _largest(fits, 64)
    return (at(k) if rep else None), rep


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


TIER_OF = TIER_NAMES
