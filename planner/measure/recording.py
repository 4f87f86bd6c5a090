"""What the tracer records of a traced step, shared by the step-file tracer
(:mod:`planner.measure.stepfile`, which traces every step: the built-in ones are the packaged
step files of :mod:`planner.stepfiles`), the ``--model`` step (:mod:`planner.measure.builtin_trace`)
and the script runner (:mod:`planner.measure.script_run`).

- :class:`StepRecord`: the peak over iteration 2, the alloc/free event stream (for the
  caching-allocator replay), per-storage info, parameter counts per network;
- the tracker prepared for a step (``prepare``: networks' parameters and buffers tagged, their
  gradients tagged as accumulated, the event log), iteration 2's peak reset (``start_iteration``);
- the optimizer step with its state tagged (``optimizer_step``), GradScaler's device-tensor ops
  emulated (``EmulatedGradScaler``) or real (``CudaGradScaler``, backend cuda).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from planner.measure.tracker import Category, LiveStorageTracker, ModuleContext, Phase, TrackerResult

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


def attention_types() -> tuple[type, ...]:
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


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter elements per dtype name ({'fp32': n, 'fp16': m} for a guided-diffusion
    UNet with use_fp16: its convolutions are fp16, its embeddings and norms fp32)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        name = DTYPE_NAMES.get(p.dtype, str(p.dtype).replace("torch.", ""))
        counts[name] = counts.get(name, 0) + p.numel()
    return counts


DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


class EventLog:
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


def prepare(
    backend: str, roots: dict[str, torch.nn.Module], keep_timeline: bool
) -> tuple[LiveStorageTracker, ModuleContext, EventLog]:
    """The tracker, module context and event log of a step over the networks ``roots``, each
    network's parameters and buffers tracked (``track_network``)."""
    modules = ModuleContext(roots, attention_types())
    tracker = LiveStorageTracker(modules, keep_timeline=keep_timeline)
    if backend == "cuda":
        tracker.device_type = "cuda"  # host tensors (Adam's step counters) are not GPU memory
    log = EventLog(tracker)
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


def start_iteration(backend: str, tracker: LiveStorageTracker, log: EventLog, iteration: int,
                    note: Callable[[str], None], it2: int) -> int:
    """Progress note; at iteration 2 the peak is reset (and torch's own counters on the cuda
    backend). Returns where iteration 2's events start."""
    note(f"iteration {iteration}/2")
    if iteration == 2:
        tracker.reset_peak()
        if backend == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return len(log.events)
    return it2


def optimizer_step(tracker: LiveStorageTracker, opt: torch.optim.Optimizer,
                   scaler: "EmulatedGradScaler | CudaGradScaler | None", network: str) -> None:
    """``opt.step()`` (through ``scaler``'s unscale and update when given), its state tagged as ``network``'s."""
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


def record(tracker: LiveStorageTracker, log: EventLog, roots: dict[str, torch.nn.Module], it2: int) -> StepRecord:
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




def backend_modes(backend: str, *, cudnn_layout: bool = True, declare: Any = None) -> tuple[Any, Any]:
    """The two context managers a step runs under on ``backend``: where tensors live and what of
    CUDA is emulated. ``fake``: FakeTensorMode (carrying small constants' values, ``declare``:
    a step's declared outputs) with CUDA's kernels emulated; ``cpu``: real CPU tensors, CUDA
    emulated but its SDPA kernels and cuDNN layouts; ``cuda``: the GPU itself, nothing emulated.
    ``cudnn_layout=False`` keeps the CPU's conv output layouts on ``fake`` (only to compare it
    against ``cpu``)."""
    import contextlib

    from planner.errors import PlannerError
    from planner.measure.cuda_emulation import CudaEmulation

    if backend == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode

        from planner.measure.values import fake_mode_with_values

        return (fake_mode_with_values(FakeTensorMode(allow_non_fake_inputs=True), declare),
                CudaEmulation(sdpa=True, cudnn_layout=cudnn_layout))
    if backend == "cpu":
        return contextlib.nullcontext(), CudaEmulation(sdpa=False, cudnn_layout=False)
    if not torch.cuda.is_available():
        raise PlannerError("--backend cuda: no CUDA device is visible to this torch build (use --backend fake)")
    return torch.device("cuda"), contextlib.nullcontext()
