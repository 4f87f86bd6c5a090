"""A user's own training step (a step file) under the tracer, with vramplan's knobs applied around it.

The file (``examples/steps/template.py`` documents it) defines::

    networks(**knobs) -> {name: nn.Module}      # generator, discriminator, frozen perceptual net, EMA ...
    optimizers(nets) -> {name: Optimizer}       # any torch.optim class with its options
    batch(batch_size, **knobs) -> tensor | tuple | dict   # one micro-batch on the device
    step(nets, opts, batch, vp)                 # one micro-batch of the user's own step
    DECLARE = {"aten::nonzero": fn, ...}        # optional: outputs of ops a trace cannot run

and uses the handle ``vp`` where a training script would call its AMP/accumulation
helpers (as ``accelerate``'s ``accelerator.backward`` does): ``vp.autocast()``,
``vp.zero_grad(opt)``, ``vp.backward(loss, opt)``, ``vp.step(opt)``; ``vp.keep`` holds
what a script's variables keep alive into the next iteration; ``vp.section(name)`` names what
follows. The built-in steps are step files too (planner/stepfiles), traced here.

vramplan's knobs, each applied to the real objects so its effect is what the traced step
does (never a multiplier):

* batch x accumulation: ``step`` runs ``accumulation`` times per optimizer step on
  micro-batches of ``batch_size``; ``vp.backward`` divides the loss (unless the step did:
  ``divided=True``), ``vp.zero_grad`` acts on
  the first micro-batch and ``vp.step`` on the last, so gradients are held in between;
* precision: CUDA autocast fp16 (+ one GradScaler per optimizer, emulated as in
  ``torch/amp/grad_scaler.py``) or bf16; half networks with fp32 master weights (guided-diffusion
  ``fp16_util.py``: ``make_master_params``, ``model_grads_to_master_grads``,
  ``zero_master_grads``, ``master_params_to_model_params``; inputs cast to half and outputs to
  fp32 as apex O2's ``patch_forward`` does, ``apex/amp/_initialize.py``); plain ``.half()``;
* activation checkpointing: torch's own ``checkpoint_wrapper(..., CheckpointImpl.NO_REENTRANT)``
  through ``apply_activation_checkpointing`` around the named module classes
  (``torch/distributed/algorithms/_checkpoint/checkpoint_wrapper.py``);
* the SDPA backend: ``torch.nn.attention.sdpa_kernel([backend])`` around the step;
* the optimizer: the class replaced, its options kept where the new class takes them.

Optimizers whose ``foreach`` is unset get ``foreach=True``: on CUDA torch.optim resolves
``foreach=None`` to True (``torch/optim/optimizer.py`` ``_default_to_fused_or_foreach``: all
parameters on CUDA), and its temporaries count; on the CPU it would resolve to False.
"""

from __future__ import annotations

import contextlib
import re
import functools
import gc
import importlib
import inspect
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from planner.errors import PlannerError, quote
from planner.measure.tracker import Category, Phase
from planner.step_setup import StepSetup, show_value

REQUIRED = ("networks", "optimizers", "batch", "step")
FP16_MASTER_LOSS_SCALE = 2.0**20  # guided-diffusion fp16_util.py INITIAL_LOG_LOSS_SCALE = 20.0
_HALF = {"fp16-master": torch.float16, "bf16-master": torch.bfloat16, "fp16": torch.float16, "bf16": torch.bfloat16}
_OPTIM_CLASSES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    name: str
    default: Any
    owners: tuple[str, ...]  # which of networks/batch take it


@dataclass
class StepFile:
    """A loaded step file: its functions and its knobs (keyword arguments with defaults)."""

    path: str
    module: types.ModuleType
    knobs: dict[str, Knob]
    batch_default: int | None
    takes_device: frozenset[str]  # which of networks/batch take device=

    def fn(self, name: str) -> Callable[..., Any]:
        return getattr(self.module, name)


def _module(path: str) -> types.ModuleType:
    from planner.measure.user_code import _import_module

    try:
        return _import_module(path, path)
    except PlannerError as exc:
        raise PlannerError(str(exc).replace("--model", "--step", 1)) from None


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, mtime: float) -> StepFile:
    mod = _module(path)
    missing = [n for n in REQUIRED if not callable(getattr(mod, n, None))]
    if missing:
        raise PlannerError(
            f"--step: '{path}' does not define {', '.join(missing)} (a step file defines networks, optimizers, "
            f"batch and step; see examples/steps/template.py)"
        )
    knobs: dict[str, Knob] = {}
    batch_default = None
    for owner in ("networks", "batch"):
        sig = inspect.signature(getattr(mod, owner))
        for i, p in enumerate(sig.parameters.values()):
            if owner == "batch" and i == 0:  # batch_size
                if p.default is not inspect.Parameter.empty:
                    batch_default = p.default
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is inspect.Parameter.empty:
                raise PlannerError(
                    f"--step: {owner}() in '{path}' has parameter '{p.name}' without a default; "
                    f"every knob needs one (it is the value used when no --knob sets it)"
                )
            if p.name == "device":
                continue
            prev = knobs.get(p.name)
            if prev is not None and prev.default != p.default:
                raise PlannerError(
                    f"--step: knob '{p.name}' defaults to {prev.default!r} in {prev.owners[0]}() but to "
                    f"{p.default!r} in {owner}() of '{path}'; give it one default"
                )
            knobs[p.name] = Knob(p.name, p.default, (prev.owners if prev else ()) + (owner,))
    takes_device = frozenset(o for o in ("networks", "batch") if "device" in inspect.signature(getattr(mod, o)).parameters)
    return StepFile(path, mod, knobs, batch_default, takes_device)


def load(path: str) -> StepFile:
    p = Path(path)
    return _load_cached(path, p.stat().st_mtime if p.is_file() else 0.0)


def _check_knob(sf: StepFile, name: str, value: Any) -> Any:
    knob = sf.knobs.get(name)
    if knob is None:
        from planner.setup_flags import refuse, step_name

        raise refuse("--knob", step_name(sf.path), f"has no knob '{name}'", sorted(sf.knobs))
    d = knob.default
    if isinstance(d, bool):
        if not isinstance(value, bool):
            raise PlannerError(f"--knob {name}: expected true or false, got {value!r}")
    elif isinstance(d, int) and d is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlannerError(f"--knob {name}: expected an integer (default {d}), got {value!r}")
    elif isinstance(d, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PlannerError(f"--knob {name}: expected a number (default {d}), got {value!r}")
        value = float(value)
    elif isinstance(d, (tuple, list)):
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return value


def knob_values(sf: StepFile, setup: StepSetup) -> dict[str, Any]:
    values = {k.name: k.default for k in sf.knobs.values()}
    for name, v in setup.knobs:
        values[name] = _check_knob(sf, name, v)
    return values


def _call(sf: StepFile, owner: str, values: dict[str, Any], *args: Any) -> Any:
    kw = {n: v for n, v in values.items() if owner in sf.knobs[n].owners}
    if owner in sf.takes_device:
        kw["device"] = "cuda"  # mapped to the traced device
    return sf.fn(owner)(*args, **kw)


# --- the handle the user's step calls ------------------------------------------------------------


class StepHandle:
    """``vp`` in the user's ``step(nets, opts, batch, vp)``."""

    def __init__(self, run: "_Run") -> None:
        self._run = run
        self.keep = types.SimpleNamespace()
        """Attributes set here stay alive until reassigned, as a training script's variables do."""
        self.micro = 0
        self.accumulation = run.setup.accumulation
        self.iteration = 1

    @property
    def first_micro(self) -> bool:
        return self.micro == 0

    @property
    def last_micro(self) -> bool:
        return self.micro == self.accumulation - 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision knob's autocast region (no-op outside amp-fp16/amp-bf16)."""
        self._run.used.add("autocast")
        dtype = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(self._run.setup.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if self._run.backend == "cuda" else "cpu", dtype=dtype)

    def zero_grad(self, opt: Any) -> None:
        """``zero_grad(set_to_none=True)`` on the first micro-batch; nothing on the others."""
        o = self._run.optimizer(opt, "zero_grad")
        if self.first_micro:
            self._run.zero_grad(o)

    def section(self, name: str) -> None:
        """Names the part of the step that follows in the figures (``peak at it2.NAME``), as a
        script's halves are named (the built-in ldm-stage1 step's generator and discriminator)."""
        self._run.tracker.step = f"it{self.iteration}.{name}"

    def backward(self, loss: torch.Tensor, opt: Any = None, *, divided: bool = False) -> None:
        """``loss / accumulation`` (unless ``divided``: the step divided it itself, as a script's
        ``loss = loss / accum`` does, keeping only the quotient), then, in the backward phase as
        a script's ``scaler.scale(loss).backward()`` is, scaled by ``opt``'s GradScaler
        (amp-fp16) or the static loss scale (fp16-master) and ``.backward()``."""
        run = self._run
        o = run.optimizer(opt, "backward")
        run.used.add("backward")
        if self.accumulation > 1 and not divided:
            loss = loss / self.accumulation
        tracker = run.tracker
        tracker.phase, tracker.network_hint = Phase.BACKWARD, "backward"
        if run.setup.precision == "amp-fp16":
            loss = run.scalers[id(o)].scale(loss)
        elif run.setup.precision == "fp16-master":
            loss = loss * FP16_MASTER_LOSS_SCALE
        loss.backward()
        tracker.phase, tracker.network_hint = Phase.FORWARD, "losses"

    def step(self, opt: Any) -> None:
        """On the last micro-batch: (unscale and) the optimizer step, scaler update."""
        o = self._run.optimizer(opt, "step")
        self._run.stepped.add(id(o))
        if self.last_micro:
            self._run.optimizer_step(o)
            self._run.tracker.phase = Phase.FORWARD


# --- the run ---------------------------------------------------------------------------------------


class _Run:
    def __init__(self, setup: StepSetup, backend: str, tracker: Any, nets: dict[str, torch.nn.Module],
                 opts: dict[str, torch.optim.Optimizer], masters: dict[int, dict[int, torch.Tensor]],
                 params: dict[int, torch.Tensor]) -> None:
        self.params = params  # id -> the optimizers' own (model) parameters, which the masters are keyed by
        from planner.measure.recording import CudaGradScaler, EmulatedGradScaler

        self.setup, self.backend, self.tracker = setup, backend, tracker
        self.nets, self.opts, self.masters = nets, opts, masters
        self.used: set[str] = set()
        self.stepped: set[int] = set()
        self.network_of = {id(o): _owner(o, nets, masters.get(id(o))) for o in opts.values()}
        make = CudaGradScaler if backend == "cuda" else EmulatedGradScaler
        self.scalers = {id(o): make() for o in opts.values()} if setup.precision == "amp-fp16" else {}

    def optimizer(self, opt: Any, what: str) -> torch.optim.Optimizer:
        if opt is None:
            if len(self.opts) == 1:
                return next(iter(self.opts.values()))
            raise PlannerError(f"step: vp.{what}() needs the optimizer when there are several ({', '.join(self.opts)})")
        if isinstance(opt, str):
            if opt not in self.opts:
                raise PlannerError(f"step: vp.{what}({opt!r}): no optimizer by that name (valid: {', '.join(self.opts)})")
            return self.opts[opt]
        for o in self.opts.values():
            if o is opt:
                return o
        raise PlannerError(f"step: vp.{what}() got an optimizer optimizers() did not return")

    def zero_grad(self, o: torch.optim.Optimizer) -> None:
        o.zero_grad(set_to_none=True)
        master = self.masters.get(id(o))
        if master is not None:
            # guided-diffusion fp16_util.zero_grad(model_params): the half gradients are
            # zeroed in place and kept (model grads -> master grads at the step)
            for pid in master:
                p = self.params[pid]
                if p.grad is not None:
                    p.grad.detach_()
                    p.grad.zero_()

    def optimizer_step(self, o: torch.optim.Optimizer) -> None:
        from planner.measure.recording import optimizer_step

        tracker = self.tracker
        network = self.network_of[id(o)]
        master = self.masters.get(id(o))
        if master is not None:
            tracker.phase = Phase.OPTIMIZER
            # model_grads_to_master_grads: each master's grad is a fp32 copy of the half grad
            for pid, m in master.items():
                p = self.params[pid]
                if p.grad is not None:
                    m.grad = p.grad.detach().to(torch.float32, copy=True)  # a copy even of an fp32 grad (_flatten_dense_tensors)
                    tracker.tag([m.grad], Category.GRADIENTS, network)
                    if self.setup.precision == "fp16-master":
                        m.grad.mul_(1.0 / FP16_MASTER_LOSS_SCALE)
        optimizer_step(tracker, o, self.scalers.get(id(o)), network)
        if master is not None:
            with torch.no_grad():
                for pid, m in master.items():
                    m.grad = None  # zero_master_grads
                    self.params[pid].copy_(m)  # master_params_to_model_params


def _owner(o: torch.optim.Optimizer, nets: dict[str, torch.nn.Module], master: dict | None) -> str:
    ids = set(master) if master else {id(p) for g in o.param_groups for p in g["params"]}
    for name, net in nets.items():
        if any(id(p) in ids for p in net.parameters()):
            return name
    return next(iter(nets))


def _as_dict(value: Any, what: str, kind: type, default_name: str, path: str) -> dict[str, Any]:
    if isinstance(value, kind):
        return {default_name: value}
    if isinstance(value, dict) and value and all(isinstance(k, str) and isinstance(v, kind) for k, v in value.items()):
        return dict(value)
    got = type(value).__name__
    if isinstance(value, dict):  # say which entry is wrong, not just "got dict"
        got = "an empty dict"
        for k, v in value.items():
            if not isinstance(k, str):
                got = f"a dict with the key {quote(k)}, not a string"
                break
            if not isinstance(v, kind):
                got = f"a dict whose {quote(k)} is {type(v).__name__}"
                break
    raise PlannerError(f"step: {what}() in {quote(path)} must return a {kind.__name__} or a dict of name -> "
                       f"{kind.__name__}, got {got}")


# --- knobs on the networks ---------------------------------------------------------------------


_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def repeated_blocks(nets: dict[str, torch.nn.Module]) -> list[tuple[str, int, int]]:
    """(class name, instances, parameters) of the user's own module classes that repeat,
    most parameters first: the candidates for ``--checkpoint auto``."""
    stats: dict[str, list[int]] = {}
    for net in nets.values():
        for mod in net.modules():
            cls = type(mod)
            if isinstance(mod, _CONTAINERS) or cls.__module__.startswith("torch.") or mod is net:
                continue
            s = stats.setdefault(cls.__name__, [0, 0])
            s[0] += 1
            s[1] += sum(p.numel() for p in mod.parameters())
    rows = [(n, c, p) for n, (c, p) in stats.items() if c >= 2 and p > 0]
    return sorted(rows, key=lambda r: (-r[2], -r[1], r[0]))


def _checkpoint_classes(setup: StepSetup, nets: dict[str, torch.nn.Module]) -> tuple[str, ...]:
    if not setup.checkpoint:
        return ()
    rows = repeated_blocks(nets)  # --checkpoint auto is resolved before (run -> ckpt_plan.run_auto)
    present = {type(m).__name__ for net in nets.values() for m in net.modules()}
    for name in (n.removeprefix("sac:") for n in setup.checkpoint):
        if "." in name:
            _instance(nets, name)  # a module path: checked here, wrapped by apply_checkpointing
        elif name not in present:
            valid = ", ".join(r[0] for r in rows[:8]) or "none repeat"
            raise PlannerError(f"--checkpoint: no module of class '{name}' in the networks (repeated blocks: {valid})")
    return setup.checkpoint


def apply_checkpointing(nets: dict[str, torch.nn.Module], classes: tuple[str, ...]) -> None:
    if not classes:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    from planner.measure.ckpt_plan import SAC, sac_context

    for selective in (False, True):  # sac:NAME -- selective checkpointing (planner/measure/ckpt_plan.py)
        chosen = [n.removeprefix(SAC) for n in classes if n.startswith(SAC) == selective]
        if not chosen:
            continue
        extra = {"context_fn": sac_context} if selective else {}
        wrap = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT, **extra)
        names = {n for n in chosen if "." not in n}
        ids = {id(_instance(nets, n)) for n in chosen if "." in n}
        for net in nets.values():
            apply_activation_checkpointing(net, checkpoint_wrapper_fn=wrap,
                                           check_fn=lambda m: type(m).__name__ in names or id(m) in ids)


def _instance(nets: dict[str, torch.nn.Module], path: str) -> torch.nn.Module:
    """The module at ``network.qualified.name`` (as ``--checkpoint auto`` names instances), or at
    ``qualified.name`` in the only network."""
    root, _, rest = path.partition(".")
    tries = [(nets[root], rest)] if root in nets else []
    if len(nets) == 1:
        tries.append((next(iter(nets.values())), path))
    for net, name in tries:
        try:
            mod = net.get_submodule(name)
        except AttributeError:
            continue
        if mod is not net:
            return mod
    raise PlannerError(f"--checkpoint: no module at '{path}' (valid: a class name, or a module path "
                       f"network.name.sub as --checkpoint auto prints them; networks: {', '.join(nets)})")


def _cast_forward(net: torch.nn.Module, dtype: torch.dtype, outputs_fp32: bool) -> None:
    """apex O2's patch_forward: floating inputs cast to the half dtype, outputs back to fp32."""
    inner = net.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = inner(*_cast(args, dtype), **_cast(kwargs, dtype))
        return _cast(out, torch.float32) if outputs_fp32 else out

    net.forward = forward  # type: ignore[method-assign]


def _apply_precision(setup: StepSetup, nets: dict[str, torch.nn.Module]) -> dict[str, bool]:
    """Cast trained networks that are not half already; returns which were cast by vramplan."""
    from planner.measure.user_code import swappable_fake_params

    dtype = _HALF.get(setup.precision)
    cast: dict[str, bool] = {}
    if dtype is None:
        return cast
    for name, net in nets.items():
        params = list(net.parameters())
        if not any(p.requires_grad for p in params):
            continue  # frozen networks (a perceptual net) keep their dtype
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in params):
            cast[name] = False  # the network converts itself (guided-diffusion use_fp16)
            continue
        with swappable_fake_params():
            net.to(dtype)
        _cast_forward(net, dtype, outputs_fp32=setup.precision.endswith("-master"))
        cast[name] = True
    return cast


def _emulate_cuda_foreach(o: torch.optim.Optimizer) -> None:
    for g in o.param_groups:
        if g.get("foreach") is None and not g.get("fused") and not g.get("differentiable"):
            g["foreach"] = True
    if o.defaults.get("foreach") is None and not o.defaults.get("fused"):
        o.defaults["foreach"] = True


def _rebuild(cls: type, groups: list[dict], defaults: dict, **extra: Any) -> torch.optim.Optimizer:
    """``cls(groups, **defaults)`` keeping only the options ``cls`` takes (AdamW's defaults hold
    ``decoupled_weight_decay``, which its constructor does not)."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    groups = [{k: v for k, v in g.items() if k == "params" or k in accepted} for g in groups]
    kw = {k: v for k, v in defaults.items() if k in accepted}
    for k, v in extra.items():
        kw.setdefault(k, v)
    return cls(groups, **kw)


def _replace_class(o: torch.optim.Optimizer, name: str) -> torch.optim.Optimizer:
    cls = getattr(torch.optim, _OPTIM_CLASSES[name])
    return _rebuild(cls, o.param_groups, o.defaults, **({"momentum": 0.9} if name == "sgd" else {}))


def _with_masters(o: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, dict[int, torch.Tensor]]:
    """The optimizer rebuilt over fp32 master copies of its parameters (make_master_params)."""
    masters: dict[int, torch.Tensor] = {}
    groups = []
    for g in o.param_groups:
        ms = []
        for p in g["params"]:
            m = torch.nn.Parameter(p.detach().float().clone(), requires_grad=True)
            masters[id(p)] = m
            ms.append(m)
        groups.append({**g, "params": ms})
    return _rebuild(type(o), groups, o.defaults), masters


# --- running -----------------------------------------------------------------------------------


def run(setup: StepSetup, backend: str = "fake", *, progress: Callable[[str], None] | None = None,
        keep_timeline: bool = True, count_flops: bool = False,
        observer: Callable[[dict, dict], contextlib.AbstractContextManager] | None = None,
        cudnn_layout: bool = True) -> Any:
    """Two iterations of the step file's step under the tracker; the peak over the second.

    ``observer(nets, opts)``, when given, returns a context manager entered around each of the
    two iterations, innermost (a second opinion such as torch's MemTracker sees the same ops on
    the same tensors; tests/test_zoo.py). ``cudnn_layout=False`` keeps the CPU's conv output
    layouts on the fake backend (only to compare it against the cpu backend)."""
    from planner.measure.recording import StepRecord, backend_modes, prepare, record, start_iteration
    from planner.measure.user_code import CudaAutocastAsTraced, cuda_as_traced_device, describe, swappable_fake_params

    if setup.checkpoint and setup.checkpoint[0].split(":")[0] == "auto":  # the per-module plan (ckpt_plan.py), traced
        from planner.measure.ckpt_plan import run_auto

        return run_auto(setup, backend, progress=progress, keep_timeline=keep_timeline, count_flops=count_flops,
                        observer=observer)
    note = progress or (lambda _m: None)
    sf = load(setup.path)
    values = knob_values(sf, setup)
    batch_size = setup.batch_size if setup.batch_size is not None else sf.batch_default
    if batch_size is None:
        raise PlannerError(f"--batch: '{setup.path}' batch() has no default batch_size; give --batch")
    if setup.gpus > 1 and backend == "cuda":
        raise PlannerError("--gpus: per-rank figures are traced on the fake (or cpu) backend, not measured with "
                           "--backend cuda")
    outer, emulation = backend_modes(backend, cudnn_layout=cudnn_layout, declare=getattr(sf.module, "DECLARE", None))
    own_autocast = CudaAutocastAsTraced()
    user_cuda: Any = cuda_as_traced_device(torch.device("cpu"), own_autocast) if backend != "cuda" else contextlib.nullcontext()
    declared = _declared(sf)
    from planner.measure.user_code import quiet_fake_tensor_log

    from planner.measure.distributed import fake_group

    with fake_group(setup.gpus) as mesh, quiet_fake_tensor_log(), outer, emulation, user_cuda, _sdpa(setup.sdpa), declared:
        note("building networks")
        torch.manual_seed(0)
        try:
            with swappable_fake_params():
                nets = _as_dict(_call(sf, "networks", values), "networks", torch.nn.Module, "model", setup.path)
        except PlannerError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: one line
            raise PlannerError(f"step: networks() raised {describe(exc)}") from None
        _refuse_empty(setup, "networks()", ((f"{n}: {pn}", p) for n, net in nets.items() for pn, p in net.named_parameters()))
        cast = _apply_precision(setup, nets)
        ckpt = _checkpoint_classes(setup, nets)
        apply_checkpointing(nets, ckpt)
        wrapped = None
        if setup.gpus > 1:
            from planner.measure.distributed import wrap

            note(f"wrapping for {setup.strategy} on {setup.gpus} ranks")
            wrapped = wrap(nets, setup.strategy, setup.gpus, mesh)
            nets = wrapped.nets
        try:
            opts = _as_dict(sf.fn("optimizers")(nets), "optimizers", torch.optim.Optimizer, "optimizer", setup.path)
        except PlannerError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PlannerError(f"step: optimizers() raised {describe(exc)}") from None
        masters: dict[int, dict[int, torch.Tensor]] = {}
        params = {id(p): p for o in opts.values() for g in o.param_groups for p in g["params"]}
        for name, o in list(opts.items()):
            if setup.optimizer:
                o = _replace_class(o, setup.optimizer)
            if setup.precision.endswith("-master"):
                o, m = _with_masters(o)
                masters[id(o)] = m
            _emulate_cuda_foreach(o)
            opts[name] = o
        if setup.precision == "amp-fp16":
            half = [n for n, net in nets.items() if any(p.requires_grad and p.dtype == torch.float16 for p in net.parameters())]
            if half:
                # torch.amp.GradScaler.unscale_ raises "Attempting to unscale FP16 gradients."
                raise PlannerError(f"--precision amp-fp16: network '{half[0]}' has fp16 trainable parameters, which "
                                   f"GradScaler cannot unscale; use --precision fp16-master for half networks")
        roots = dict(nets) if wrapped is None else dict(wrapped.roots)
        tracker, modules, log = prepare(backend, roots, keep_timeline)
        _strip_wrapper_names(modules)
        _collect_young_garbage_per_op(tracker)
        for o in opts.values():
            m = masters.get(id(o))
            if m:
                owner = _owner(o, nets, m)
                tracker.track(list(m.values()), Category.PARAMETERS, network=owner)
        rn = _Run(setup, backend, tracker, nets, opts, masters, params)
        vp = StepHandle(rn)
        it2 = 0
        b = None  # noqa: F841 - the batch stays referenced until the next one is made
        flops = _FlopCount(count_flops, tracker)
        gc_was = gc.isenabled()
        gc.disable()  # collected per op instead (see _collect_young_garbage_per_op)
        from planner.measure.declared_ops import OpSite, explain

        watch = observer(nets, opts) if observer is not None else contextlib.nullcontext()
        site = OpSite(modules)  # entered last: it sees the op the user's code called
        from planner.measure.distributed import tracing

        with modules, tracker, _restore_gc(gc_was), tracing(wrapped, tracker), site:
            for iteration in (1, 2):
                it2 = start_iteration(backend, tracker, log, iteration, note, it2)
                vp.iteration = iteration
                with flops.counting(iteration == 2), watch:
                    for micro in range(setup.accumulation):
                        vp.micro = micro
                        tracker.step, tracker.phase, tracker.network_hint = f"it{iteration}", Phase.DATA, "data"
                        try:
                            b = _call(sf, "batch", values, batch_size)
                            if iteration == 1 and micro == 0:
                                _refuse_empty(setup, "batch()", _tensors(b))
                            if setup.precision in ("fp16", "bf16"):
                                b = _cast(b, _HALF[setup.precision])
                            tracker.step, tracker.phase, tracker.network_hint = f"it{iteration}", Phase.FORWARD, "losses"
                            sf.fn("step")(nets, opts, b, vp)
                        except PlannerError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - the user's step: one line naming it
                            untraceable = explain(exc, site, origin="step")
                            raise (untraceable or _step_error(exc, tracker.phase, setup.precision, setup.strategy)) from None
            tracker.phase = Phase.SETUP
        _check_used(setup, rn)
        rec: StepRecord = record(tracker, log, roots, it2)
    info = {
        "step": f"step file {setup.path}",
        "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(values.items())},
        "batch_size": batch_size,
        "accumulation": setup.accumulation,
        "effective_batch": batch_size * setup.accumulation * setup.gpus,
        "precision": _precision_text(setup, cast, own_autocast),
        "checkpoint": list(ckpt),
        "sdpa": setup.sdpa,
        "optimizers": {n: type(o).__name__ for n, o in opts.items()},
        "backend": backend,
        "parameter_dtypes": _dtype_counts(nets),
    }
    if wrapped is not None:
        info.update(wrapped.info())
        info["per_rank"] += f"; batch {batch_size} per rank"
    if count_flops:
        info["flops_iteration2"] = flops.total
    return replace(rec, setup=info)


def _zero(value: Any) -> bool:
    return value in ("", ()) or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)


def _refuse_empty(setup: StepSetup, where: str, tensors: Any) -> None:
    """A knob given as 0 or empty that leaves the step a tensor with no elements (``--knob width=0``:
    a 0 x 0 weight) is bad input: a trace of empty tensors measures nothing. A step whose own
    defaults make an empty tensor is left alone (its design)."""
    zero = [f"{k}={show_value(v)}" for k, v in setup.knobs if _zero(v)]
    if not zero:
        return
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() == 0:
            raise PlannerError(
                f"--knob {', '.join(zero)}: {where} in '{setup.path}' made an empty tensor with it ({name}, shape "
                f"{list(t.shape)}); a trace of empty tensors measures nothing (valid: a value that leaves every "
                f"parameter and batch tensor elements)")


def _tensors(b: Any) -> list[tuple[str, Any]]:
    from torch.utils._pytree import tree_flatten_with_path, keystr

    leaves, _ = tree_flatten_with_path(b)
    return [("batch" + keystr(path), leaf) for path, leaf in leaves]


def _collect_young_garbage_per_op(tracker: Any) -> None:
    """Collect the youngest generation of cyclic garbage after every op, with the automatic
    collector off. Tracing makes reference cycles that a CUDA run does not (the fake-tensor
    dispatcher's closures and caught exceptions); a storage they hold was freed at whatever op
    the automatic collector happened to run, which moved from trace to trace (a checkpointed
    block's recomputed activation lived to op 739, 757 or 870 of the same stream at batch 2, 3
    and 4). Collected per op it dies at the op that dropped its last real reference, as on CUDA,
    and every trace of a step is the same stream (batch derivation needs that)."""
    orig = tracker._note_peak

    def note_peak(op: str) -> None:
        gc.collect(0)
        orig(op)

    tracker._note_peak = note_peak


@contextlib.contextmanager
def _restore_gc(enabled: bool) -> Iterator[None]:
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _precision_text(setup: StepSetup, cast: dict[str, bool], own: Any) -> str:
    from planner.step_setup import PRECISION_HELP

    text = PRECISION_HELP[setup.precision]
    own_cast = [n for n, c in cast.items() if not c]
    if own_cast:
        text += f" ({', '.join(own_cast)} half by its own code)"
    if own.dtypes:
        text += "; the step's own autocast(cuda) regions"
    return text


def _dtype_counts(nets: dict[str, torch.nn.Module]) -> dict[str, int]:
    from planner.measure.recording import param_counts

    total: dict[str, int] = {}
    for net in nets.values():
        for k, v in param_counts(net).items():
            total[k] = total.get(k, 0) + v
    return total


def _cast(x: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in a (nested) tuple, list or dict cast to ``dtype``; the rest as is."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


def _strip_wrapper_names(modules: Any) -> None:
    """Module paths as the user's model names them: without checkpoint_wrapper's inner attribute."""
    tag = "._checkpoint_wrapped_module"
    modules.names = {k: (r, p.replace(tag, ""), a) for k, (r, p, a) in modules.names.items()}


def _check_used(setup: StepSetup, rn: _Run) -> None:
    """A knob the step never gives vramplan a chance to apply is an error, not a silent no-op."""
    if "backward" not in rn.used:
        raise PlannerError("step: the step never calls vp.backward(loss, opt), so vramplan cannot apply "
                           "accumulation or loss scaling; call it instead of loss.backward()")
    if setup.precision.startswith("amp") and "autocast" not in rn.used:
        raise PlannerError(f"--precision {setup.precision}: the step never enters vp.autocast(); wrap its forward "
                           f"passes in `with vp.autocast():`")
    missing = [n for n, o in rn.opts.items() if id(o) not in rn.stepped]
    if missing:
        raise PlannerError(f"step: optimizer '{missing[0]}' is never stepped with vp.step(opt)")


_DTYPE_MISMATCH = re.compile(r"(Half|BFloat16|half|bfloat16).*(should be the same|same dtype|expected)|"
                             r"(should be the same|same dtype|expected).*(Half|BFloat16|half|bfloat16)")


def _step_error(exc: BaseException, phase: Any, precision: str = "fp32", strategy: str = "none") -> PlannerError:
    from planner.measure.user_code import cuda_error, describe, uses_cuda

    if uses_cuda(exc):
        return cuda_error(exc, "step")
    where = {Phase.DATA: "batch()", Phase.BACKWARD: "step()'s backward"}.get(phase, "step()")
    hint = ""
    if precision in ("fp16-master", "bf16-master", "fp16", "bf16") and _DTYPE_MISMATCH.search(str(exc)):
        hint = (f"; --precision {precision} casts only forward()'s inputs to half (apex O2): cast them where the "
                "step calls another method")
    if strategy != "none":
        from planner.measure.distributed import error_hint

        hint += error_hint(exc, strategy)
    return PlannerError(f"step: {where} raised {describe(exc)}{hint}")


@contextlib.contextmanager
def _sdpa(backend: str) -> Iterator[None]:
    if backend == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "math": SDPBackend.MATH}[backend]
    with sdpa_kernel([chosen]):
        yield


def _declared(sf: StepFile) -> contextlib.AbstractContextManager:
    from planner.measure.declared_ops import DeclaredOps, declared_for

    table = declared_for(sf.module, "step")
    return DeclaredOps(table, "step") if table else contextlib.nullcontext()


class _FlopCount:
    """Matmul/conv/attention FLOPs of iteration 2 (forward, backward and recomputation), by
    torch.utils.flop_counter's formulas (``flop_registry``, keyed by op packet) on every op
    the dispatcher runs.

    Not torch's FlopCounterMode: its ModuleTracker registers multi-grad hooks on every
    module's inputs and outputs, and a checkpointed block's recomputed outputs keep theirs
    (and the tensors) past their backward: counting would leak one micro-batch's recomputed
    activations into the next (seen: +435 MB per micro-batch on the transformer example at
    micro-batch 2, fp32, checkpointed). It also decomposes ops it has no formula for, which
    would change the op stream being measured. Counting here changes nothing the tracker
    sees."""

    def __init__(self, enabled: bool, tracker: Any) -> None:
        self.enabled, self.tracker = enabled, tracker
        self.total = 0

    @contextlib.contextmanager
    def counting(self, on: bool) -> Iterator[None]:
        """Counts the ops the tracker sees (``on_op``: every op below the op-site mode, the same
        ones a dispatch mode of its own above it saw, for a quarter of a trace's CPU less)."""
        if not (self.enabled and on):
            yield
            return
        from torch.utils.flop_counter import flop_registry

        def count(func: Any, args: tuple, kwargs: dict, out: Any) -> None:
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))

        self.total = 0
        self.tracker.on_op = count
        try:
            yield
        finally:
            self.tracker.on_op = None
