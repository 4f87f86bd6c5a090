"""The reference training steps, simulated on symbolic tensors (no torch).

Mirrors the packaged step files that the tracer runs (planner/stepfiles/ldm_stage1.py,
ldm_stage2.py) statement by statement: the same loops, the same Python variables (so the previous iteration's reconstruction and losses stay
alive until reassigned), autocast regions, GradScaler, optimizer steps; two
iterations, the peak taken over the second.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from planner.records import dataclass
from planner.analytic import ops as O
from planner.analytic.engine import _ACC, AllocInfo, Memory, Sim, T
from planner.analytic.models import AutoencoderKL, PatchDiscriminator
from planner.analytic.nn import Mod
from planner.analytic.optim import GradScaler, Optimizer
from planner.spec import TrainingSetup

ADV_WEIGHT = 0.01
PERCEPTUAL_WEIGHT = 0.001
KL_WEIGHT = 1e-6


@dataclass
class SimResult:
    peak_bytes: int
    peak_where: tuple[str, str, str, str]
    mem: Memory
    """The simulation's accountant: the event log and what every allocation was."""
    iteration2_start: int
    params: dict[str, int]
    flops: int = 0
    bytes_written: int = 0
    conv_io_max: int = 0
    """The largest convolution's input + output bytes (cuDNN workspace hint)."""
    attention_calls: tuple = ()
    """(batch, heads, seq_q, seq_k, head_dim, dtype, backend) per SDPA call with a backward."""
    layout: dict = field(default_factory=dict)
    """--gpus N: per network, what each rank holds (planner/analytic/parallel.py layout_text)."""

    @property
    def events(self) -> list[tuple[int, int]]:
        return self.mem.events

    @property
    def live_at_peak(self) -> list[AllocInfo]:
        return self.mem.live_at_peak()

    @property
    def event_ops(self) -> list[str]:
        return [self.mem.info[u].op for u, _ in self.mem.events]


class _Ctx:
    def __init__(self, setup: TrainingSetup) -> None:
        self.sim = Sim()
        O.use(self.sim)
        self.setup = setup
        self.amp = setup.device.mixed_precision
        self.sim.autocast_dtype = "bf16" if setup.device.amp_dtype == "bfloat16" else "f16"
        self.use_scaler = self.amp and self.sim.autocast_dtype == "f16"
        self.layout: dict[str, str] = {}
        """Per network, how each rank holds it (--gpus N --strategy S)."""
        mem = self.sim.mem

        def tag_grad(var: T) -> None:
            if var.grad is not None:
                info = mem.info[var.grad.st.uid]
                info.category = "gradients"
                info.network = var.name

        self.sim.accum_hooks.append(tag_grad)

    def register(self, name: str, m: Mod) -> Mod:
        m.name_tree(name)
        for t in m.parameters() + m.buffers():
            info = self.sim.mem.info[t.st.uid]
            info.category = "parameters"
            info.network = name
            t.name = name
        return m

    def autocast(self):
        sim = self.sim
        amp = self.amp

        class _AC:
            def __enter__(self_inner):
                self_inner.prev = sim.enter_autocast(amp) if amp else None

            def __exit__(self_inner, *exc):
                if amp:
                    sim.exit_autocast(self_inner.prev)

        return _AC()

    def backward(self, loss: T, scaler: GradScaler | None) -> None:
        sim = self.sim
        sim.mem.phase = "backward"
        sim.mem.network_hint = "backward"
        root = scaler.scale(loss) if scaler else loss
        seed = sim.new((), root.dtype, "ones_like")
        sim.backward(root, seed)
        del seed, root

    def optimizer_step(self, opt: Optimizer, scaler: GradScaler | None) -> None:
        self.sim.mem.phase = "optimizer"
        if scaler is not None:
            scaler.unscale_and_step(opt)
            scaler.update()
        else:
            opt.step()


def simulated_micro_steps(accum: int) -> int:
    """Micro-batches the simulation runs per optimizer step.

    With accumulation, every micro-batch after the second starts from the same state
    as the second (gradients exist, the previous micro-batch's tensors are alive), so
    its memory repeats the second one's exactly; simulating two (the last one followed
    by the optimizer step) gives the same peak. FLOPs and traffic are scaled back up."""
    return min(accum, 2)


def start_iteration(mem: Memory, iteration: int, it2: int) -> int:
    """At iteration 2 the peak is reset. Returns where iteration 2's events start."""
    if iteration == 2:
        mem.reset_peak()
        return len(mem.events)
    return it2


def next_batch(mem: Memory, iteration: int, shape: tuple[int, ...]) -> T:
    """The data loader's next batch on the device."""
    mem.step = f"it{iteration}"
    mem.phase = "data"
    mem.network_hint = "data"
    return O.randn(shape)


def _float(x: T) -> T:
    return O.to_copy(x, "f32") if x.dtype != "f32" else x


def adv_loss(ctx: _Ctx, logits: T, target_is_real: bool) -> T:
    """monai PatchAdversarialLoss(criterion='least_squares')."""
    sim = ctx.sim
    one = sim.new((), "i64", "lift_fresh")
    target = sim.new((), logits.dtype, "_to_copy")  # .fill_(label).type(input.type())
    del one
    target_exp = T(logits.shape, target.dtype, target.st, dense=False)
    disc_out = O.leaky_relu(logits, 0.05)
    loss_ = O.mse_loss(disc_out, target_exp)
    del disc_out, target_exp, target
    stacked = O.view(loss_, (1,))
    s = sim.new((1,), loss_.dtype, "stack")
    del stacked
    loss = O.mean_all(O.contiguous_copy(loss_, (1,), op="stack"))
    del s
    return loss


def kl(z_mu: T, z_sigma: T, dims: list[int]) -> T:
    a = O.pow2(z_mu)
    b = O.pow2(z_sigma)
    c = O.add(a, b)
    del a, b
    d = O.log(O.pow2(z_sigma))
    e = O.sub(c, d)
    del c, d
    f = O.sub(e, 1.0)
    del e
    summed = O.sum_dims(f, dims)
    del f
    kl_loss = O.mul(summed, 0.5)
    del summed
    kl_loss = O.div(O.sum_all(kl_loss), 1.0)
    return kl_loss


def wrap(ctx: _Ctx, nets: dict[str, Mod | None]) -> dict[str, Any]:
    """The trainable networks as ``--gpus N --strategy S`` wraps them (planner/analytic/parallel.py)."""
    par = ctx.setup.parallel
    if par.gpus == 1:
        return nets
    from planner.analytic.parallel import wrap_networks

    return wrap_networks(ctx.sim, nets, par.strategy, par.gpus, ctx.layout)


def simulate(setup: TrainingSetup) -> SimResult:
    if setup.kind == "ldm-stage1":
        return _stage1(setup)
    from planner.analytic.unet import simulate_stage2

    return simulate_stage2(setup)


def _finish(ctx: _Ctx, it2: int, roots: dict[str, Mod]) -> SimResult:
    mem = ctx.sim.mem
    accum = ctx.setup.accumulation_steps
    scale = accum / simulated_micro_steps(accum)
    res = SimResult(
        peak_bytes=mem.peak,
        peak_where=mem.peak_where,
        mem=mem,
        iteration2_start=it2,
        params={n: sum(p.numel for p in m.parameters()) for n, m in roots.items()},
        flops=int(ctx.sim.flops * scale),
        bytes_written=int(mem.written * scale),
        conv_io_max=ctx.sim.conv_io_max,
        attention_calls=tuple(ctx.sim.attention_calls),
        layout=dict(ctx.layout),
    )
    _ACC.clear()
    return res


def _stage1(setup: TrainingSetup) -> SimResult:
    ctx = _Ctx(setup)
    sim, mem = ctx.sim, ctx.sim.mem
    tr = setup.autoencoder.training
    roots: dict[str, Mod] = {"autoencoder": ctx.register("autoencoder", AutoencoderKL(sim, setup))}
    autoencoder = roots["autoencoder"]
    discriminator = None
    perceptual = None
    if tr.discriminator.enabled:
        discriminator = roots["discriminator"] = ctx.register("discriminator", PatchDiscriminator(sim, setup))
    if tr.use_perceptual_loss:
        from planner.analytic.perceptual import PerceptualLoss

        perceptual = roots["perceptual"] = ctx.register("perceptual", PerceptualLoss(sim, setup))
    # the perceptual network is wrapped too: its LPIPS lin layers' weights require grad (as torch's
    # DDP / fully_shard see it; planner/measure/distributed.py wraps every network with one)
    autoencoder, discriminator, perceptual = wrap(
        ctx, {"autoencoder": autoencoder, "discriminator": discriminator, "perceptual": perceptual}).values()
    optimizer_g = Optimizer(sim, tr.optimizer, [p for p in autoencoder.parameters() if p.requires_grad], "autoencoder")
    optimizer_d = (
        Optimizer(sim, tr.optimizer, discriminator.parameters(), "discriminator") if discriminator is not None else None
    )
    scaler_g = GradScaler(sim, "autoencoder") if ctx.use_scaler else None
    scaler_d = GradScaler(sim, "discriminator") if ctx.use_scaler and discriminator is not None else None
    accum = tr.gradient_accumulation_steps
    shape = setup.image_shape
    spatial_axes = list(range(1, len(shape)))
    it2 = 0
    images = reconstruction = z_mu = z_sigma = None  # noqa: F841
    logits_fake = logits_real = recons_loss = p_loss = generator_loss = kl_loss = loss_g = None  # noqa: F841
    loss_d_fake = loss_d_real = discriminator_loss = loss_d = None  # noqa: F841
    for iteration in (1, 2):
        it2 = start_iteration(mem, iteration, it2)
        for micro in range(simulated_micro_steps(accum)):
            # the new batch is made while the previous one is still referenced
            images = next_batch(mem, iteration, shape)
            mem.step = f"it{iteration}.generator"
            if micro == 0:
                optimizer_g.zero_grad()
            mem.phase = "forward"
            mem.network_hint = "losses"
            with ctx.autocast():
                reconstruction, z_mu, z_sigma = autoencoder(images)
                if discriminator is not None:
                    logits_fake = discriminator(_float(reconstruction))[-1]
                recons_loss = O.l1_loss(_float(reconstruction), _float(images))
                if perceptual is not None:
                    p_loss = perceptual(_float(reconstruction), _float(images))
                if discriminator is not None:
                    generator_loss = adv_loss(ctx, logits_fake, True)
                kl_loss = kl(z_mu, z_sigma, spatial_axes)
                loss_g = O.add(recons_loss, O.mul(kl_loss, KL_WEIGHT))
                if perceptual is not None:
                    loss_g = O.add(loss_g, O.mul(p_loss, PERCEPTUAL_WEIGHT))
                if discriminator is not None:
                    loss_g = O.add(loss_g, O.mul(generator_loss, ADV_WEIGHT))
                if accum > 1:
                    loss_g = O.div(loss_g, accum)
            ctx.backward(loss_g, scaler_g)
            if micro == simulated_micro_steps(accum) - 1:
                ctx.optimizer_step(optimizer_g, scaler_g)
            if discriminator is None:
                continue
            mem.step = f"it{iteration}.discriminator"
            if micro == 0:
                optimizer_d.zero_grad()
            mem.phase = "forward"
            mem.network_hint = "losses"
            with ctx.autocast():
                logits_fake = discriminator(O.detach(reconstruction))[-1]
                loss_d_fake = adv_loss(ctx, logits_fake, False)
                logits_real = discriminator(O.detach(images))[-1]
                loss_d_real = adv_loss(ctx, logits_real, True)
                discriminator_loss = O.mul(O.add(loss_d_fake, loss_d_real), 0.5)
                loss_d = O.mul(discriminator_loss, ADV_WEIGHT)
                if accum > 1:
                    loss_d = O.div(loss_d, accum)
            ctx.backward(loss_d, scaler_d)
            if micro == simulated_micro_steps(accum) - 1:
                ctx.optimizer_step(optimizer_d, scaler_d)
    mem.phase = "setup"
    return _finish(ctx, it2, roots)
