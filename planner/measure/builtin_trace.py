"""The built-in steps and the ``--model`` step, traced.

The built-in steps (``ldm-stage1``, ``ldm-stage2``; shared/design.md) are traced by one tracer:
their packaged step files (planner/stepfiles/ldm_stage1.py, ldm_stage2.py) under the step-file
tracer (:mod:`planner.measure.stepfile`), the YAML setup (planner/spec.py ``TrainingSetup``)
mapped onto the file's knobs and vramplan's (planner/stepfiles ``step_setup_of``). ``run_step``
is that mapping and call, and states what ran in the built-in's terms (``StepRecord.setup``).

A user module (``--model pkg.mod:factory`` or ``file.py:factory``) with ``profile --model`` gets
the plain MSE step below; loading it and tracing its code (``.half()``, ``.cuda()``, its errors)
is in :mod:`planner.measure.user_code`. (Every other command traces ``--model`` as the packaged
step file planner/stepfiles/model_step.py.)

Backends: ``fake`` (FakeTensorMode on the CPU with CUDA emulation: nothing is allocated), ``cpu``
(real CPU tensors, the same emulation minus the SDPA kernels; used to check the fake backend),
``cuda`` (see :mod:`planner.measure.cuda_backend`).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from planner.errors import PlannerError
from planner.measure.recording import (
    DTYPE_NAMES,
    CudaGradScaler,
    EmulatedGradScaler,
    StepRecord,
    optimizer_step,
    param_counts,
    prepare,
    record,
    start_iteration,
)
from planner.measure.tracker import LiveStorageTracker, Phase
from planner.spec import TrainingSetup

LR = 1e-4


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
    """Two iterations of the built-in step of ``setup`` (its packaged step file, traced), or of the
    ``--model`` MSE step; what the tracker saw, the peak over iteration 2.

    ``cudnn_layout=False`` keeps the CPU backend's conv output layouts (only for
    comparing the fake backend against real CPU tensors)."""
    if backend not in ("fake", "cpu", "cuda"):
        raise PlannerError(f"--backend: got {backend!r}, valid: fake, cpu, cuda")
    if custom_model is not None:
        return _run_model(setup, backend, custom_model, custom_input, progress, keep_timeline, cudnn_layout)
    assert setup is not None
    from planner.measure.stepfile import run
    from planner.stepfiles import step_setup_of

    rec = run(step_setup_of(setup), backend, progress=progress, keep_timeline=keep_timeline, cudnn_layout=cudnn_layout)
    # what ran, in the built-in step's terms (the keys its JSON has always had) beside the step file's
    info = {"step": setup.kind,
            "input_shape": list(setup.image_shape if setup.kind == "ldm-stage1" else setup.unet_input_shape),
            "input_dtype": "fp32", "precision": rec.setup["precision"],
            "optimizer": setup.autoencoder.training.optimizer if setup.kind == "ldm-stage1"
            else setup.diffusion.training.optimizer,
            "gradient_accumulation_steps": setup.accumulation_steps, "backend": backend}
    return replace(rec, setup={**info, "step_file": rec.setup["step"],
                               **{k: v for k, v in rec.setup.items() if k not in info}})


# --- the --model step (profile --model) ------------------------------------------------------


def _run_model(setup: TrainingSetup | None, backend: str, custom_model: str, custom_input: tuple[int, ...] | None,
               progress: Callable[[str], None] | None, keep_timeline: bool, cudnn_layout: bool) -> StepRecord:
    from planner.measure.recording import backend_modes
    from planner.measure.user_code import CudaAutocastAsTraced, build, cuda_as_traced_device, quiet_fake_tensor_log

    note = progress or (lambda _msg: None)
    runner = _Runner(setup, backend)
    outer, emulation = backend_modes(backend, cudnn_layout=cudnn_layout)
    user_autocast = None
    user_cuda: Any = contextlib.nullcontext()
    if backend != "cuda":
        user_autocast = CudaAutocastAsTraced()  # the model's own autocast("cuda") regions
        user_cuda = cuda_as_traced_device(runner.device(), user_autocast)  # .cuda() / device="cuda" too
    with quiet_fake_tensor_log(), outer, emulation, user_cuda:
        note("building models")
        torch.manual_seed(0)
        model = build(custom_model)
        model.train()
        roots = {"model": model}
        rec = _run_custom(runner, roots, custom_input, note, keep_timeline)
        rec = _with_setup(rec, runner, custom_input, custom_model, _param_dtype(model), param_counts(model))
        if user_autocast is not None and user_autocast.dtypes:
            own = " and ".join(sorted(DTYPE_NAMES.get(d, str(d)) for d in user_autocast.dtypes))
            rec.setup["precision"] += f"; the model's own autocast(cuda, {own}) regions"
        return rec


def _with_setup(rec: StepRecord, runner: "_Runner", input_shape: tuple[int, ...] | None, custom_model: str,
                dtype: torch.dtype, counts: dict[str, int]) -> StepRecord:
    """The record, stating what ran: step, model, input shape, precision (with the
    parameters' dtypes when they are mixed), optimizer, backend."""
    setup = runner.setup
    info: dict[str, Any] = {
        "step": "custom MSE step (--model)", "model": custom_model,
        "input_shape": list(input_shape or ()),
        "input_dtype": DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", "")),
        "precision": precision(runner, dtype),
        "optimizer": setup.autoencoder.training.optimizer if setup else "adam",
        "gradient_accumulation_steps": 1,
        "backend": runner.backend,
    }
    if counts:
        info["parameter_dtypes"] = dict(counts)
    if len(counts) > 1:
        mixed = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        info["precision"] += f"; mixed parameter dtypes ({mixed} elements)"
    return replace(rec, setup=info)


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


class _Runner:
    def __init__(self, setup: TrainingSetup | None, backend: str):
        self.setup = setup
        self.backend = backend
        self.amp = bool(setup.device.mixed_precision) if setup else False
        self.amp_dtype = torch.float16
        if setup and setup.device.amp_dtype == "bfloat16":
            self.amp_dtype = torch.bfloat16
        self.use_scaler = self.amp and self.amp_dtype == torch.float16

    # autocast region: CUDA's on a GPU, CPU's key (carrying the CUDA policy) otherwise
    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        dev = "cuda" if self.backend == "cuda" else "cpu"
        return torch.autocast(dev, dtype=self.amp_dtype)

    def device(self) -> torch.device:
        return torch.device("cuda" if self.backend == "cuda" else "cpu")

    def scaler(self) -> "EmulatedGradScaler | CudaGradScaler | None":
        if not self.use_scaler:
            return None
        return CudaGradScaler() if self.backend == "cuda" else EmulatedGradScaler()


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (fp32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def precision(runner: "_Runner", param_dtype: torch.dtype = torch.float32) -> str:
    """'fp32', 'autocast fp16 + GradScaler', 'autocast bf16', 'fp16 parameters and input (no autocast)'."""
    if runner.amp:
        return f"autocast {DTYPE_NAMES[runner.amp_dtype]}" + (" + GradScaler" if runner.use_scaler else "")
    name = DTYPE_NAMES.get(param_dtype, str(param_dtype).replace("torch.", ""))
    return name if param_dtype == torch.float32 else f"{name} parameters and input (no autocast)"


def _next_batch(tracker: LiveStorageTracker, iteration: int, shape: tuple[int, ...], dev: torch.device,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The data loader's next batch on the device (`batch["image"].to(device)`)."""
    tracker.step = f"it{iteration}"
    tracker.phase = Phase.DATA
    tracker.network_hint = "data"
    return torch.randn(shape, device=dev, dtype=dtype)


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
    tracker, modules, log = prepare(runner.backend, roots, keep_timeline)
    it2 = 0
    x = out = target = loss = None  # noqa: F841
    with modules, tracker:
        for iteration in (1, 2):
            it2 = start_iteration(runner.backend, tracker, log, iteration, note, it2)
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
            optimizer_step(tracker, optimizer, scaler, "model")
        tracker.phase = Phase.SETUP
        return record(tracker, log, roots, it2)
