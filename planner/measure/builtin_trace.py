"""The reference training steps, run under the live-storage tracker.

Stage 1 (``ldm-stage1``) is MONAI's ``generation/3d_autoencoderkl`` tutorial loop
after the adversarial warm-up, transcribed literally (see ``shared/design.md``):
generator half (autoencoder, discriminator on the reconstruction, L1, 2.5D
perceptual, least-squares adversarial, KL) with its GradScaler and optimizer,
then the discriminator half. Stage 2 (``ldm-stage2``) is the ``generation/3d_ddpm``
step: ``DiffusionInferer(DDPMScheduler)`` noise prediction and an MSE loss.
A user module (``--model pkg.mod:factory`` or ``file.py:factory``) gets a plain MSE step;
loading it and tracing its code (``.half()``, ``.cuda()``, its errors) is in
:mod:`planner.measure.user_code`.

Every variable lives in one function scope, as in a training script, so the
previous iteration's ``reconstruction`` and losses stay alive until reassigned.
Two iterations run; the peak is taken over the second (optimizer state exists).

Backends: ``fake`` (FakeTensorMode on the CPU with CUDA emulation: nothing is
allocated), ``cpu`` (real CPU tensors, the same emulation minus the SDPA kernels;
used to check the fake backend), ``cuda`` (see :mod:`planner.measure.cuda_backend`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from planner.errors import PlannerError
from planner.measure.cuda_emulation import CudaEmulation
from planner.measure.tracker import Category, LiveStorageTracker, ModuleContext, Phase, TrackerResult
from planner.spec import TrainingSetup

# Loss weights of the 3d_autoencoderkl tutorial.
ADV_WEIGHT = 0.01
PERCEPTUAL_WEIGHT = 0.001
KL_WEIGHT = 1e-6
LR = 1e-4


# --- models --------------------------------------------------------------------------


def build_autoencoder(setup: TrainingSetup) -> torch.nn.Module:
    from monai.networks.nets import AutoencoderKL

    ae = setup.autoencoder
    return AutoencoderKL(
        spatial_dims=setup.data.spatial_dims,
        in_channels=setup.data.in_channels,
        out_channels=setup.data.in_channels,
        channels=ae.num_channels,
        latent_channels=ae.latent_channels,
        num_res_blocks=ae.num_res_blocks,
        norm_num_groups=ae.norm_num_groups,
        attention_levels=ae.attention_levels,
        with_encoder_nonlocal_attn=ae.with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn=ae.with_decoder_nonlocal_attn,
        use_checkpoint=ae.training.use_gradient_checkpointing,
        use_flash_attention=ae.use_flash_attention,
    )


def build_discriminator(setup: TrainingSetup) -> torch.nn.Module:
    from monai.networks.nets import PatchDiscriminator

    d = setup.autoencoder.training.discriminator
    return PatchDiscriminator(
        spatial_dims=setup.data.spatial_dims,
        num_layers_d=d.num_layers_d,
        channels=d.num_channels,
        in_channels=setup.data.in_channels,
        out_channels=1,
        norm=d.norm.upper(),
    )


def build_perceptual(setup: TrainingSetup) -> torch.nn.Module:
    from planner.measure.perceptual import PerceptualLoss

    p = setup.autoencoder.training.perceptual
    return PerceptualLoss(
        spatial_dims=setup.data.spatial_dims,
        network_type=p.network_type,
        is_fake_3d=setup.data.spatial_dims == 3,
        fake_3d_ratio=p.fake_3d_ratio,
    )


def build_unet(setup: TrainingSetup) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    d = setup.diffusion
    ch = setup.unet_input_shape[1]
    return DiffusionModelUNet(
        spatial_dims=setup.data.spatial_dims,
        in_channels=ch,
        out_channels=ch,
        channels=d.num_channels,
        attention_levels=d.attention_levels,
        num_head_channels=d.num_head_channels,
        num_res_blocks=d.num_res_blocks,
        norm_num_groups=d.norm_num_groups,
        use_flash_attention=d.use_flash_attention,
    )


def make_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    # On CUDA torch.optim resolves foreach=None to True (torch/optim/optimizer.py
    # _default_to_fused_or_foreach: all params on CUDA) and its temporaries count.
    if name == "adam":
        return torch.optim.Adam(params, lr=LR, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=LR, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR, momentum=0.9, foreach=True)
    raise PlannerError(f"optimizer: got {name!r}, valid: adam, adamw, sgd")


class EmulatedGradScaler:
    """torch.amp.GradScaler's device-tensor ops, without its host syncs.

    GradScaler disables itself without CUDA, and its ``step`` calls ``.item()``
    (impossible on fake tensors), so its allocations are replayed here as in
    ``torch/amp/grad_scaler.py``: the lazily created ``_scale`` (fp32) and
    ``_growth_tracker`` (int32); per ``unscale_``: ``_scale.double().reciprocal().float()``,
    a ``found_inf`` zero, and ``_MultiDeviceReplicator.get`` copies of both (copy=True);
    ``_amp_foreach_non_finite_check_and_unscale_`` in place on the grads; ``update``
    with ``_amp_update_scale_``. Grads are assumed finite (the step is taken).
    """

    def __init__(self, init_scale: float = 2.0**16) -> None:
        self.init_scale = init_scale
        self._scale: torch.Tensor | None = None
        self._growth_tracker: torch.Tensor | None = None
        self._found_inf_per_device: list[torch.Tensor] = []

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        if self._scale is None:
            self._scale = torch.full((), self.init_scale, dtype=torch.float32, device=loss.device)
            self._growth_tracker = torch.full((), 0, dtype=torch.int32, device=loss.device)
        return loss * self._scale.to(device=loss.device, non_blocking=True)

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self._scale, self._growth_tracker) if t is not None]

    def unscale_and_step(self, optimizer: torch.optim.Optimizer, on_step: Callable[[], None]) -> None:
        self.unscale_(optimizer)
        on_step()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """``GradScaler.unscale_``: the grads divided by the scale in place, ``found_inf`` kept for ``update``."""
        assert self._scale is not None
        inv_scale = self._scale.double().reciprocal().float()
        found_inf = torch.full((), 0.0, dtype=torch.float32, device=self._scale.device)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            dev_found_inf = found_inf.to(device=grads[0].device, non_blocking=True, copy=True)
            dev_inv_scale = inv_scale.to(device=grads[0].device, non_blocking=True, copy=True)
            by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
            for g in grads:
                by_dtype.setdefault(g.dtype, []).append(g)
            with torch.no_grad():
                for group in by_dtype.values():
                    torch._amp_foreach_non_finite_check_and_unscale_(group, dev_found_inf, dev_inv_scale)
            self._found_inf_per_device = [dev_found_inf]
            del dev_inv_scale
        del inv_scale, found_inf

    def update(self) -> None:
        if self._scale is None or not self._found_inf_per_device:
            return
        found_inf_combined = self._found_inf_per_device[0]
        torch._amp_update_scale_(self._scale, self._growth_tracker, found_inf_combined, 2.0, 0.5, 2000)
        self._found_inf_per_device = []


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """What the tracker saw: the peak over iteration 2 and the event stream."""

    tracker: TrackerResult
    events: list[tuple[int, int]]  # (uid, +bytes alloc / -bytes free), iteration 2 included
    networks: tuple[str, ...]
    iteration2_start: int  # index into events where iteration 2 begins
    params: dict[str, int]  # network -> parameter count
    info: dict  # uid -> StorageInfo (op, category, phase, step, module): timelines, diffing
    setup: dict = field(default_factory=dict)  # what ran: step, input shape, precision, optimizer, backend
    marks: list = field(default_factory=list)  # (events index, op, phase, step): where the tracker took its peak checks


# --- the runner ----------------------------------------------------------------------


class _Runner:
    def __init__(self, setup: TrainingSetup | None, backend: str):
        self.setup = setup
        self.backend = backend
        self.amp = bool(setup.device.mixed_precision) if setup else False
        self.amp_dtype = torch.float16
        if setup and setup.device.amp_dtype == "bfloat16":
            self.amp_dtype = torch.bfloat16
        self.use_scaler = self.amp and self.amp_dtype == torch.float16
        self.wrapped: Any = None  # --gpus: planner.measure.distributed.Wrapped

    # autocast region: CUDA's on a GPU, CPU's key (carrying the CUDA policy) otherwise
    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        dev = "cuda" if self.backend == "cuda" else "cpu"
        return torch.autocast(dev, dtype=self.amp_dtype)

    def nets(self, roots: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
        """What the step calls: the DDP / FSDP-wrapped networks under --gpus, else ``roots``."""
        return roots if self.wrapped is None else self.wrapped.nets

    def device(self) -> torch.device:
        return torch.device("cuda" if self.backend == "cuda" else "cpu")

    def scaler(self) -> "EmulatedGradScaler | CudaGradScaler | None":
        if not self.use_scaler:
            return None
        return CudaGradScaler() if self.backend == "cuda" else EmulatedGradScaler()

    def start_iteration2(self, tracker: LiveStorageTracker) -> None:
        tracker.reset_peak()
        if self.backend == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()


class CudaGradScaler:
    """The real torch.amp.GradScaler behind EmulatedGradScaler's interface (cuda backend)."""

    def __init__(self) -> None:
        self._inner = torch.amp.GradScaler("cuda")

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self._inner.scale(loss)

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self._inner._scale, self._inner._growth_tracker) if t is not None]

    def unscale_and_step(self, optimizer: torch.optim.Optimizer, on_step: Callable[[], None]) -> None:
        self._inner.step(_StepProxy(optimizer, on_step))

    def update(self) -> None:
        self._inner.update()


class _StepProxy:
    """Lets GradScaler.step call our tracked step function."""

    def __init__(self, optimizer: torch.optim.Optimizer, on_step: Callable[[], None]) -> None:
        self._opt, self._on_step = optimizer, on_step
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state

    def step(self, *args: Any, **kwargs: Any) -> None:
        self._on_step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opt, name)


def _attention_types() -> tuple[type, ...]:
    """MONAI's attention blocks, where MONAI is loaded (a module of theirs can exist only
    then; importing MONAI for a step file that does not use it costs seconds)."""
    import sys

    if "monai" not in sys.modules:
        return ()
    from monai.networks.blocks import SABlock, SpatialAttentionBlock

    types: list[type] = [SABlock, SpatialAttentionBlock]
    try:
        from monai.networks.nets import diffusion_model_unet as dm

        for name in ("SpatialTransformer", "AttentionBlock", "DiffusionUNetTransformerBlock"):
            if hasattr(dm, name):
                types.append(getattr(dm, name))
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _load_factory(spec: str) -> Callable[[], torch.nn.Module]:
    from planner.measure.user_code import load_factory

    return load_factory(spec)


def run_step(
    setup: TrainingSetup | None,
    backend: str = "fake",
    *,
    custom_model: str | None = None,
    custom_input: tuple[int, ...] | None = None,
    progress: Callable[[str], None] | None = None,
    keep_timeline: bool = True,
    cudnn_layout: bool = True,
) -> StepRecord:
    """Run two iterations of the reference step; return what the tracker saw.

    ``cudnn_layout=False`` keeps the CPU backend's conv output layouts (only for
    comparing the fake backend against real CPU tensors)."""
    if backend not in ("fake", "cpu", "cuda"):
        raise PlannerError(f"--backend: got {backend!r}, valid: fake, cpu, cuda")
    world = setup.parallel.gpus if setup is not None and custom_model is None else 1
    if world > 1 and backend == "cuda":
        raise PlannerError("--gpus: per-rank figures are traced on the fake (or cpu) backend under a fake process "
                           "group, not measured on one GPU (use --backend fake)")
    note = progress or (lambda _msg: None)
    runner = _Runner(setup, backend)
    if backend == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode

        from planner.measure.values import fake_mode_with_values

        outer: Any = fake_mode_with_values(FakeTensorMode(allow_non_fake_inputs=True))
        emulation: Any = CudaEmulation(sdpa=True, cudnn_layout=cudnn_layout)
    elif backend == "cpu":
        outer, emulation = contextlib.nullcontext(), CudaEmulation(sdpa=False, cudnn_layout=False)
    else:  # real CUDA: real autocast, real GradScaler, models built on the device
        if not torch.cuda.is_available():
            raise PlannerError("--backend cuda: no CUDA device is visible to this torch build (use --backend fake)")
        outer, emulation = torch.device("cuda"), contextlib.nullcontext()
    user_autocast = None
    if custom_model is not None and backend != "cuda":
        from planner.measure.user_code import CudaAutocastAsTraced, cuda_as_traced_device

        user_autocast = CudaAutocastAsTraced()  # the model's own autocast("cuda") regions
        user_cuda: Any = cuda_as_traced_device(runner.device(), user_autocast)  # .cuda() / device="cuda" too
    else:
        user_cuda = contextlib.nullcontext()
    from planner.measure.user_code import quiet_fake_tensor_log

    from planner.measure.distributed import fake_group

    # the process group and its device mesh are made outside FakeTensorMode (planner/measure/distributed.py)
    with fake_group(world) as mesh, quiet_fake_tensor_log(), outer, emulation, user_cuda:
        note("building models")
        torch.manual_seed(0)
        if custom_model is not None:
            from planner.measure.user_code import build

            model = build(custom_model)
            model.train()
            roots = {"model": model}
            record = _run_custom(runner, roots, custom_input, note, keep_timeline)
            record = _with_setup(record, runner, custom_input, custom_model=custom_model, dtype=_param_dtype(model),
                                 param_counts=_param_counts(model))
            if user_autocast is not None and user_autocast.dtypes:
                own = " and ".join(sorted(_DTYPE_NAMES.get(d, str(d)) for d in user_autocast.dtypes))
                record.setup["precision"] += f"; the model's own autocast(cuda, {own}) regions"
            return record
        assert setup is not None
        if setup.kind == "ldm-stage1":
            roots = {"autoencoder": build_autoencoder(setup)}
            if setup.autoencoder.training.discriminator.enabled:
                roots["discriminator"] = build_discriminator(setup)
            if setup.autoencoder.training.use_perceptual_loss:
                roots["perceptual"] = build_perceptual(setup)
            # The tutorial calls autoencoder.train() and discriminator.train(); the
            # perceptual loss keeps LPIPS in the eval mode its constructor sets.
            for name in ("autoencoder", "discriminator"):
                if name in roots:
                    roots[name].train()
            _wrap(runner, roots, mesh, note)
            return _with_setup(_run_stage1(runner, roots, note, keep_timeline), runner, setup.image_shape)
        roots = {"unet": build_unet(setup)}
        roots["unet"].train()
        _wrap(runner, roots, mesh, note)
        return _with_setup(_run_stage2(runner, roots, note, keep_timeline), runner, setup.unet_input_shape)


def _wrap(runner: "_Runner", roots: dict[str, torch.nn.Module], mesh: Any, note: Callable[[str], None]) -> None:
    """--gpus N --strategy S: torch's DDP / fully_shard around each network with a parameter that
    requires grad (planner/measure/distributed.py ``wrap``); the step calls ``runner.nets(roots)``."""
    par = runner.setup.parallel if runner.setup is not None else None
    if par is None or par.gpus == 1:
        return
    from planner.measure.distributed import wrap

    note(f"wrapping for {par.strategy} on {par.gpus} ranks")
    runner.wrapped = wrap(roots, par.strategy, par.gpus, mesh)


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (fp32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter elements per dtype name ({'fp32': n, 'fp16': m} for a guided-diffusion
    UNet with use_fp16: its convolutions are fp16, its embeddings and norms fp32)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        name = _DTYPE_NAMES.get(p.dtype, str(p.dtype).replace("torch.", ""))
        counts[name] = counts.get(name, 0) + p.numel()
    return counts


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def precision(runner: "_Runner", param_dtype: torch.dtype = torch.float32) -> str:
    """'fp32', 'autocast fp16 + GradScaler', 'autocast bf16', 'fp16 parameters and input (no autocast)'."""
    if runner.amp:
        return f"autocast {_DTYPE_NAMES[runner.amp_dtype]}" + (" + GradScaler" if runner.use_scaler else "")
    name = _DTYPE_NAMES.get(param_dtype, str(param_dtype).replace("torch.", ""))
    return name if param_dtype == torch.float32 else f"{name} parameters and input (no autocast)"


def _with_setup(
    record: StepRecord,
    runner: "_Runner",
    input_shape: tuple[int, ...] | None,
    *,
    custom_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    param_counts: dict[str, int] | None = None,
) -> StepRecord:
    """The record, stating what ran: step, model, input shape, precision (with the
    parameters' dtypes when they are mixed), optimizer, backend."""
    setup = runner.setup
    if custom_model is not None:
        info: dict[str, Any] = {"step": "custom MSE step (--model)", "model": custom_model}
        optimizer = setup.autoencoder.training.optimizer if setup else "adam"
        accum = 1
    else:
        assert setup is not None
        info = {"step": setup.kind}
        tr = setup.autoencoder.training if setup.kind == "ldm-stage1" else setup.diffusion.training
        optimizer, accum = tr.optimizer, tr.gradient_accumulation_steps
    info.update(
        input_shape=list(input_shape or ()),
        input_dtype=_DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", "")),
        precision=precision(runner, dtype),
        optimizer=optimizer,
        gradient_accumulation_steps=accum,
        backend=runner.backend,
    )
    if runner.wrapped is not None:
        info.update(runner.wrapped.info())
    if param_counts:
        info["parameter_dtypes"] = dict(param_counts)
        if len(param_counts) > 1:
            mixed = ", ".join(f"{k} {v:,}" for k, v in sorted(param_counts.items(), key=lambda kv: -kv[1]))
            info["precision"] += f"; mixed parameter dtypes ({mixed} elements)"
    return replace(record, setup=info)


class _EventLog:
    """Alloc/free stream for the caching-allocator model."""

    def __init__(self, tracker: LiveStorageTracker) -> None:
        self.events: list[tuple[int, int]] = []
        orig_register, orig_release = tracker._register, tracker._release

        def register(st: Any, op: str) -> int:
            before = tracker._by_obj.get(id(st))
            uid = orig_register(st, op)
            if before is None:
                self.events.append((uid, tracker.info[uid].nbytes))
            return uid

        def release(key: int, uid: int) -> None:
            if uid in tracker.live:
                self.events.append((uid, -tracker.live[uid]))
            orig_release(key, uid)

        tracker._register = register  # type: ignore[method-assign]
        tracker._release = release  # type: ignore[method-assign]

        orig_untrack = tracker.untrack_host

        def untrack(tensors: Any) -> None:
            tensors = [t for t in tensors if t is not None]
            for t in tensors:
                uid = tracker.uid_of(t)
                if uid is not None and uid in tracker.live:
                    self.events.append((uid, -tracker.live[uid]))
            orig_untrack(tensors)

        tracker.untrack_host = untrack  # type: ignore[method-assign]

        # The tracker checks its peak after every op (never inside one); the stream keeps
        # where, so a replay of derived sizes takes its peak at the same points.
        self.marks: list[tuple[int, str, str, str]] = []
        orig_note = tracker._note_peak

        def note_peak(op: str) -> None:
            self.marks.append((len(self.events), op, tracker.phase.value, tracker.step))
            orig_note(op)

        tracker._note_peak = note_peak  # type: ignore[method-assign]


def _prepare(
    runner: _Runner, roots: dict[str, torch.nn.Module], keep_timeline: bool
) -> tuple[LiveStorageTracker, ModuleContext, _EventLog]:
    modules = ModuleContext(roots, _attention_types())
    tracker = LiveStorageTracker(modules, keep_timeline=keep_timeline)
    if runner.backend == "cuda":
        tracker.device_type = "cuda"  # host tensors (Adam's step counters) are not GPU memory
    log = _EventLog(tracker)
    for name, m in roots.items():
        track_network(tracker, name, m)
    return tracker, modules, log


def track_network(tracker: LiveStorageTracker, name: str, m: torch.nn.Module) -> None:
    """``m``'s parameters and buffers tagged as network ``name``'s parameters; its gradients
    tagged as they are accumulated."""
    tracker.track(list(m.parameters()) + list(m.buffers()), Category.PARAMETERS, network=name)
    for p in m.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(
                lambda param, _n=name: tracker.tag([param.grad], Category.GRADIENTS, _n)
            )


def _start_iteration(runner: _Runner, tracker: LiveStorageTracker, log: _EventLog, iteration: int,
                     note: Callable[[str], None], it2: int) -> int:
    """Progress note; at iteration 2 the peak is reset. Returns where iteration 2's events start."""
    note(f"iteration {iteration}/2")
    if iteration == 2:
        runner.start_iteration2(tracker)
        return len(log.events)
    return it2


def _next_batch(tracker: LiveStorageTracker, iteration: int, shape: tuple[int, ...], dev: torch.device,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The data loader's next batch on the device (`batch["image"].to(device)`)."""
    tracker.step = f"it{iteration}"
    tracker.phase = Phase.DATA
    tracker.network_hint = "data"
    return torch.randn(shape, device=dev, dtype=dtype)


def _optimizer_step(tracker: LiveStorageTracker, opt: torch.optim.Optimizer, scaler: EmulatedGradScaler | None, network: str) -> None:
    tracker.phase = Phase.OPTIMIZER

    def step() -> None:
        tracker.host_scalars = True
        try:
            opt.step()
        finally:
            tracker.host_scalars = False

    if scaler is not None:
        scaler.unscale_and_step(opt, step)
        scaler.update()
        tracker.tag(scaler.state_tensors(), Category.OPTIMIZER_STATE, network)
    else:
        step()
    tag_optimizer_state(tracker, opt, network)


def tag_optimizer_state(tracker: LiveStorageTracker, opt: torch.optim.Optimizer, network: str) -> None:
    """After a step: the optimizer's state tensors tagged as ``network``'s; its host-side
    ``step`` counters (not capturable) left out of device memory."""
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                if k == "step":
                    tracker.untrack_host([v])
                else:
                    tracker.tag([v], Category.OPTIMIZER_STATE, network)


def _record(tracker: LiveStorageTracker, log: _EventLog, roots: dict[str, torch.nn.Module], it2: int) -> StepRecord:
    from planner.measure.values import active_notes

    tracker.notes.extend(n for n in active_notes() if n not in tracker.notes)
    return StepRecord(
        tracker=tracker.result(),
        events=list(log.events),
        networks=tuple(roots),
        iteration2_start=it2,
        params={n: sum(p.numel() for p in m.parameters()) for n, m in roots.items()},
        info=dict(tracker.info),
        marks=list(log.marks),
    )


def _run_stage1(runner: _Runner, roots: dict[str, torch.nn.Module], note: Callable[[str], None], keep_timeline: bool) -> StepRecord:
    from monai.losses import PatchAdversarialLoss

    setup = runner.setup
    assert setup is not None
    nets = runner.nets(roots)
    autoencoder = nets["autoencoder"]
    discriminator = nets.get("discriminator")
    perceptual = nets.get("perceptual")
    tr = setup.autoencoder.training
    optimizer_g = make_optimizer(tr.optimizer, list(autoencoder.parameters()))
    optimizer_d = make_optimizer(tr.optimizer, list(discriminator.parameters())) if discriminator is not None else None
    scaler_g = runner.scaler()
    scaler_d = runner.scaler() if discriminator is not None else None
    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    accum = tr.gradient_accumulation_steps
    shape = setup.image_shape
    spatial_axes = list(range(1, len(shape)))
    dev = runner.device()

    tracker, modules, log = _prepare(runner, roots, keep_timeline)
    it2 = 0
    images = reconstruction = z_mu = z_sigma = None  # noqa: F841 - script-like liveness
    logits_fake = logits_real = recons_loss = p_loss = generator_loss = kl_loss = loss_g = None  # noqa: F841
    loss_d_fake = loss_d_real = discriminator_loss = loss_d = None  # noqa: F841
    from planner.measure.distributed import tracing

    with modules, tracker, tracing(runner.wrapped, tracker):
        for iteration in (1, 2):
            it2 = _start_iteration(runner, tracker, log, iteration, note, it2)
            for micro in range(accum):
                # the new batch is made while the previous one is still referenced
                images = _next_batch(tracker, iteration, shape, dev)
                # ---- generator half
                tracker.step = f"it{iteration}.generator"
                if micro == 0:
                    optimizer_g.zero_grad(set_to_none=True)
                tracker.phase = Phase.FORWARD
                tracker.network_hint = "losses"
                with runner.autocast():
                    reconstruction, z_mu, z_sigma = autoencoder(images)
                    if discriminator is not None:
                        logits_fake = discriminator(reconstruction.contiguous().float())[-1]
                    recons_loss = F.l1_loss(reconstruction.float(), images.float())
                    if perceptual is not None:
                        p_loss = perceptual(reconstruction.float(), images.float())
                    if discriminator is not None:
                        generator_loss = adv_loss(logits_fake, target_is_real=True, for_discriminator=False)
                    kl_loss = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=spatial_axes)
                    kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
                    loss_g = recons_loss + KL_WEIGHT * kl_loss
                    if perceptual is not None:
                        loss_g = loss_g + PERCEPTUAL_WEIGHT * p_loss
                    if discriminator is not None:
                        loss_g = loss_g + ADV_WEIGHT * generator_loss
                    if accum > 1:
                        loss_g = loss_g / accum
                tracker.phase = Phase.BACKWARD
                tracker.network_hint = "backward"
                (scaler_g.scale(loss_g) if scaler_g else loss_g).backward()
                if micro == accum - 1:
                    _optimizer_step(tracker, optimizer_g, scaler_g, "autoencoder")
                if discriminator is None:
                    continue
                # ---- discriminator half
                tracker.step = f"it{iteration}.discriminator"
                if micro == 0:
                    optimizer_d.zero_grad(set_to_none=True)
                tracker.phase = Phase.FORWARD
                tracker.network_hint = "losses"
                with runner.autocast():
                    logits_fake = discriminator(reconstruction.contiguous().detach())[-1]
                    loss_d_fake = adv_loss(logits_fake, target_is_real=False, for_discriminator=True)
                    logits_real = discriminator(images.contiguous().detach())[-1]
                    loss_d_real = adv_loss(logits_real, target_is_real=True, for_discriminator=True)
                    discriminator_loss = (loss_d_fake + loss_d_real) * 0.5
                    loss_d = ADV_WEIGHT * discriminator_loss
                    if accum > 1:
                        loss_d = loss_d / accum
                tracker.phase = Phase.BACKWARD
                tracker.network_hint = "backward"
                (scaler_d.scale(loss_d) if scaler_d else loss_d).backward()
                if micro == accum - 1:
                    _optimizer_step(tracker, optimizer_d, scaler_d, "discriminator")
        tracker.phase = Phase.SETUP
        return _record(tracker, log, roots, it2)


def _run_stage2(runner: _Runner, roots: dict[str, torch.nn.Module], note: Callable[[str], None], keep_timeline: bool) -> StepRecord:
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    setup = runner.setup
    assert setup is not None
    model = runner.nets(roots)["unet"]
    optimizer = make_optimizer(setup.diffusion.training.optimizer, list(model.parameters()))
    scaler = runner.scaler()
    scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    inferer = DiffusionInferer(scheduler)
    accum = setup.diffusion.training.gradient_accumulation_steps
    shape = setup.unet_input_shape
    dev = runner.device()
    tracker, modules, log = _prepare(runner, roots, keep_timeline)
    # The scheduler's alphas_cumprod is moved to the device by add_noise; count it.
    tracker.track([scheduler.alphas_cumprod], Category.PARAMETERS, network="unet")
    it2 = 0
    images = noise = timesteps = noise_pred = loss = None  # noqa: F841
    from planner.measure.distributed import tracing

    with modules, tracker, tracing(runner.wrapped, tracker):
        for iteration in (1, 2):
            it2 = _start_iteration(runner, tracker, log, iteration, note, it2)
            for micro in range(accum):
                # the new batch is made while the previous one is still referenced
                images = _next_batch(tracker, iteration, shape, dev)
                if micro == 0:
                    optimizer.zero_grad(set_to_none=True)
                tracker.phase = Phase.FORWARD
                tracker.network_hint = "losses"
                with runner.autocast():
                    noise = torch.randn_like(images)
                    timesteps = torch.randint(0, scheduler.num_train_timesteps, (images.shape[0],), device=dev).long()
                    noise_pred = inferer(inputs=images, diffusion_model=model, noise=noise, timesteps=timesteps)
                    loss = F.mse_loss(noise_pred.float(), noise.float())
                    if accum > 1:
                        loss = loss / accum
                tracker.phase = Phase.BACKWARD
                tracker.network_hint = "backward"
                (scaler.scale(loss) if scaler else loss).backward()
                if micro == accum - 1:
                    _optimizer_step(tracker, optimizer, scaler, "unet")
        tracker.phase = Phase.SETUP
        return _record(tracker, log, roots, it2)


def _run_custom(
    runner: _Runner,
    roots: dict[str, torch.nn.Module],
    input_shape: tuple[int, ...] | None,
    note: Callable[[str], None],
    keep_timeline: bool,
) -> StepRecord:
    if not input_shape:
        raise PlannerError("--input: give the batch shape with --model, e.g. --input 2x1x96x96x64")
    model = roots["model"]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PlannerError("--model: the module has no trainable parameters")
    from planner.measure.user_code import forward_error

    dtype = _param_dtype(model)
    scaler = runner.scaler()
    if scaler is not None and any(p.dtype == torch.float16 for p in params):
        # torch.amp.GradScaler.unscale_ raises "Attempting to unscale FP16 gradients."
        raise PlannerError(
            "--amp: the model's parameters are fp16 (.half() or .to(torch.float16) in the factory) and "
            "GradScaler cannot unscale fp16 gradients; use --no-amp for pure fp16, or keep fp32 parameters for AMP"
        )
    optimizer = make_optimizer(runner.setup.autoencoder.training.optimizer if runner.setup else "adam", params)
    dev = runner.device()
    batch_dtype = dtype  # a model cast with .half()/.to(dtype) is fed batches of its own dtype
    tracker, modules, log = _prepare(runner, roots, keep_timeline)
    it2 = 0
    x = out = target = loss = None  # noqa: F841
    with modules, tracker:
        for iteration in (1, 2):
            it2 = _start_iteration(runner, tracker, log, iteration, note, it2)
            x = _next_batch(tracker, iteration, input_shape, dev, batch_dtype)
            optimizer.zero_grad(set_to_none=True)
            tracker.phase = Phase.FORWARD
            tracker.network_hint = "losses"
            try:
                with runner.autocast():
                    out = model(x)
                    if not isinstance(out, torch.Tensor):
                        raise PlannerError(
                            f"--model: the module returned {type(out).__name__}; the MSE step needs one tensor"
                        )
                    tracker.phase = Phase.DATA
                    target = torch.randn(out.shape, device=dev)
                    tracker.phase = Phase.FORWARD
                    loss = F.mse_loss(out.float(), target.float())
                tracker.phase = Phase.BACKWARD
                tracker.network_hint = "backward"
                (scaler.scale(loss) if scaler else loss).backward()
            except PlannerError:
                raise
            except Exception as exc:  # noqa: BLE001 - the user's forward/backward: one line naming it
                phase = "backward" if tracker.phase == Phase.BACKWARD else "forward"
                raise forward_error(exc, input_shape, phase) from None
            _optimizer_step(tracker, optimizer, scaler, "model")
        tracker.phase = Phase.SETUP
        return _record(tracker, log, roots, it2)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
