"""``vramplan run -- python train.py ARGS``: the user's own training script, unchanged, under the tracer.

The script runs (``runpy``, as ``python`` would run it) in the isolated worker
(``planner/measure/isolate.py``: timeout, exits, stdout on stderr) with everything a step-file
trace has -- FakeTensorMode with known values (``values.py``), CUDA's kernel choices and autocast
lists (``cuda_emulation.py``), ``.cuda()``/``.to("cuda")``/``device="cuda"`` and the script's own
``torch.autocast("cuda")`` mapped onto the traced device (``user_code.py``), the live-storage
tracker (``tracker.py``) -- and, at the boundary a script has and a step file does not:

* **the data pipeline is real, on the CPU.** ``DataLoader`` iteration runs outside every mode
  (real tensors, the Dataset's own code and files); a batch becomes device memory where the
  script moves it (``.to("cuda")``/``.cuda()`` of a real tensor: a fake copy the tracker counts,
  as ``_to_copy`` allocates on the device). DataLoader workers are forced to 0 in the traced
  process and ``pin_memory`` off (the workers would fork a process holding the fake modes; pinned
  memory needs a real CUDA); both noted.
* **torch.cuda answers from the trace**: ``is_available()`` true, one device named and sized by
  ``--gpu``, ``memory_allocated``/``max_memory_allocated``/``reset_peak_memory_stats``/
  ``memory_summary``/``mem_get_info`` from the tracker; ``synchronize`` does nothing;
  ``empty_cache`` is an event in the allocation stream that the allocator model replays
  (``allocator.release_cached_blocks``: whole cached segments released).
* **GradScaler** (``torch.amp`` and ``torch.cuda.amp``) allocates as ``step.EmulatedGradScaler``
  (torch's own would read ``found_inf`` with ``.item()``, a stand-in, and skip the step).
* **the stop**: optimizer steps are counted with torch's global hooks
  (``torch.optim.optimizer.register_optimizer_step_pre_hook``/``..._post_hook``); after ``--steps``
  of them the script is stopped by an exception it cannot catch with ``except Exception``.
* **what else a script does**: forward passes of a network with gradients off or in eval mode
  (validation, sliding-window inference) are measured as their own part of the run;
  ``torch.save`` writes nothing, ``torch.compile`` returns the model (eager); each noted with the
  script's line.
* **knobs from outside**: ``--precision`` replaces the dtype of the script's own CUDA autocast
  regions (fp32 disables them and its GradScaler) or, where it has none, enters autocast around
  each network's forward; ``--checkpoint`` wraps module classes (``stepfile.apply_checkpointing``)
  when a network is first called; ``--sdpa`` (``stepfile._sdpa``); ``--batch`` sets ``batch_size`` of
  the training DataLoaders (those that shuffle: ``shuffle=True`` or a ``RandomSampler``).

Networks are found where the script calls them: a module with parameters called outside any
other tracked module becomes a network named by its class.
"""

from __future__ import annotations

import contextlib
import gc
import os
import runpy
import sys
import traceback
from dataclasses import replace
from typing import Any, Iterator

import torch

from planner.errors import PlannerError
from planner.measure.isolate import EXIT_ENDED, UserCodeEnded
from planner.measure.tracker import Category, LiveStorageTracker, ModuleContext, Phase
from planner.script_setup import ScriptRun, ScriptSetup, Segment

_AUTOCAST = {"fp32": (False, None), "amp-fp16": (True, torch.float16), "amp-bf16": (True, torch.bfloat16)}


class _Stop(BaseException):
    """Raised from the optimizer step post-hook after --steps steps: not an Exception, so a
    script's ``except Exception`` does not swallow it."""


# --- the run -----------------------------------------------------------------------------------


def _site() -> str:
    """``file:line`` of the script's innermost frame on the current stack (not vramplan, torch,
    the standard library or an installed package), with the library line that called us."""
    from planner.measure.values import user_and_library_lines

    user, lib = user_and_library_lines(traceback.extract_stack()[:-2])
    return user + (f" via {lib}" if lib and user else lib)


@contextlib.contextmanager
def _real() -> Iterator[None]:
    """Outside every mode (fake tensors, the tracker, CUDA mapping) and autocast: real CPU tensors."""
    from torch.overrides import _pop_mode, _push_mode
    from torch.utils._python_dispatch import _disable_current_modes

    fn_modes = [_pop_mode() for _ in range(torch._C._len_torch_function_stack())]
    try:
        with _disable_current_modes(), torch.autocast("cpu", enabled=False):
            yield
    finally:
        for m in reversed(fn_modes):
            _push_mode(m)


class _State:
    """The run's bookkeeping: networks found, steps counted, parts of the run, notes."""

    def __init__(self, setup: ScriptSetup, tracker: LiveStorageTracker, modules: "_ScriptModules") -> None:
        self.setup, self.tracker, self.modules = setup, tracker, modules
        self.steps = 0
        self.segments: dict[str, Segment] = {}
        self.notes: list[str] = []
        self.max_since_reset = 0
        self.networks: dict[str, torch.nn.Module] = {}
        self.first_call: dict[str, str] = {}
        self.owner: dict[int, str] = {}  # id(parameter) -> network
        self.wrapped: set[str] = set()
        self.batch_applied: list[str] = []
        self.optimizers: dict[str, str] = {}
        self.added_autocast: list[Any] = []
        self.autocast: Any = None  # user_code.CudaAutocastAsTraced
        self.log: Any = None  # recording.EventLog: the allocation stream the allocator model replays
        # what `recommend` on a script needs to say a change in the script's own terms (ScriptRun.facts)
        self.options: list[dict] = []  # int-valued argparse options as parsed: options, dest, value, default
        self.loaders: list[dict] = []  # DataLoaders made: site, batch_size, training (shuffles)
        self.autocast_sites: list[str] = []  # where the script made CUDA autocast regions
        self.scaler_sites: list[str] = []  # where it made a GradScaler
        self.work: dict[str, list[int]] = {}  # part of the run -> [matmul/conv/attention FLOPs, bytes written]
        self.sdpa_calls = 0
        self.ddp: list[str] = []  # networks the script wrapped in DistributedDataParallel
        self.stack: contextlib.ExitStack | None = None  # the DDPs' attribution, undone after the run

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # -- peaks per part of the run
    def on_peak(self) -> None:
        tr = self.tracker
        cur = tr.current
        self.max_since_reset = max(self.max_since_reset, cur)
        label = tr.step or "setup"
        seg = self.segments.get(label)
        if seg is None:
            seg = self.segments[label] = Segment(label)
        if cur > seg.peak_bytes:
            seg.peak_bytes = cur
            seg.where = f"{tr.phase.value}" + (f" in {self.modules.current()[1]}" if self.modules.current()[1] else "")

    # -- networks
    def discover(self, mod: torch.nn.Module) -> tuple[str, str, bool] | None:
        if not any(True for _ in mod.parameters()):
            return None
        from torch.nn.parallel import DistributedDataParallel

        from planner.measure.recording import attention_types, track_network
        from planner.measure.stepfile import apply_checkpointing

        outer = mod
        if isinstance(mod, DistributedDataParallel):  # named and tracked as the module it wraps (no "module.")
            mod = mod.module

        want = [c for c in self.setup.checkpoint if any(type(m).__name__ == c for m in mod.modules())]
        if want:
            apply_checkpointing({"net": mod}, tuple(want))
            self.wrapped.update(want)
        base = type(mod).__name__
        name, k = base, 2
        while name in self.networks:
            name, k = f"{base}#{k}", k + 1
        self.networks[name] = mod
        self.first_call[name] = _site()
        att = attention_types()
        tag = "._checkpoint_wrapped_module"
        for sub_name, sub in mod.named_modules():
            path = (f"{name}.{sub_name}" if sub_name else name).replace(tag, "")
            self.modules.names[id(sub)] = (name, path, bool(att) and isinstance(sub, att))
        for p in mod.parameters():
            self.owner.setdefault(id(p), name)
        track_network(self.tracker, name, mod)
        self.modules.names[id(outer)] = self.modules.names[id(mod)]
        return self.modules.names[id(mod)]

    def enter_forward(self, mod: torch.nn.Module) -> None:
        """A network's outermost forward begins: which part of the run this is."""
        tr = self.tracker
        training = torch.is_grad_enabled() and mod.training
        if training:
            tr.step = f"step {self.steps + 1}"
        else:
            tr.step = f"evaluation after step {self.steps}" if self.steps else "evaluation before step 1"
        tr.phase, tr.network_hint = Phase.FORWARD, "losses"
        force = _AUTOCAST.get(self.setup.precision or "")
        if force and force[0] and self.autocast.regions == 0 and not torch.is_autocast_enabled("cpu"):
            ctx = torch.autocast("cpu", dtype=force[1])
            ctx.__enter__()
            self.added_autocast.append(ctx)
            self.note(f"--precision {self.setup.precision}: the script has no CUDA autocast region; autocast "
                      f"({str(force[1]).replace('torch.', '')}) entered around each network's forward")
        else:
            self.added_autocast.append(None)

    def leave_forward(self) -> None:
        if self.added_autocast:
            ctx = self.added_autocast.pop()
            if ctx is not None:
                ctx.__exit__(None, None, None)

    # -- optimizer steps
    def network_of(self, opt: torch.optim.Optimizer) -> str:
        for g in opt.param_groups:
            for p in g["params"]:
                if id(p) in self.owner:
                    return self.owner[id(p)]
        return "other"

    def pre_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        from planner.measure.stepfile import _emulate_cuda_foreach

        _emulate_cuda_foreach(opt)  # torch.optim resolves foreach=None to True on CUDA
        self.tracker.phase = Phase.OPTIMIZER
        self.tracker.host_scalars = True

    def post_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        from planner.measure.recording import tag_optimizer_state

        tr = self.tracker
        tr.host_scalars = False
        network = self.network_of(opt)
        tag_optimizer_state(tr, opt, network)
        self.optimizers[network] = type(opt).__name__
        tr.phase = Phase.FORWARD
        self.steps += 1
        if self.steps >= self.setup.steps:
            raise _Stop


class _ScriptModules(ModuleContext):
    """ModuleContext whose networks are found as the script calls them (``_State.discover``)."""

    def __init__(self) -> None:
        super().__init__({})
        self.state: _State | None = None
        self._plain: set[int] = set()
        self.depth = 0  # forwards of any module running (a loss module's too)

    def __enter__(self) -> "_ScriptModules":
        from torch.nn.modules import module as m

        def pre(mod: torch.nn.Module, *_: Any) -> None:
            self.depth += 1
            info = self.names.get(id(mod))
            if info is None and not self.stack and id(mod) not in self._plain:
                info = self.state.discover(mod)
                if info is None:
                    self._plain.add(id(mod))
            if info is not None:
                if not self.stack:
                    self.state.enter_forward(mod)
                self.stack.append(info)

        def post(mod: torch.nn.Module, *_: Any) -> None:
            self.depth -= 1
            if id(mod) in self.names and self.stack:
                self.stack.pop()
                if not self.stack:
                    self.state.leave_forward()

        self._handles = [m.register_module_forward_pre_hook(pre), m.register_module_forward_hook(post, always_call=True)]
        return self


# --- what torch answers inside the script ------------------------------------------------------


class _DeviceProperties:
    def __init__(self, setup: ScriptSetup) -> None:
        self.name = setup.gpu_name
        self.total_memory = setup.gpu_total
        self.major, self.minor = setup.gpu_capability
        self.multi_processor_count = 108
        self.is_integrated = False
        self.is_multi_gpu_board = False

    def __repr__(self) -> str:
        return (f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor={self.minor}, "
                f"total_memory={self.total_memory // 2**20}MB (emulated by vramplan run))")


def _cuda_answers(state: _State) -> dict[str, Any]:
    """torch.cuda functions -> what they answer during the run (from the trace)."""
    setup, tr = state.setup, state.tracker

    def reset_peak(device: Any = None) -> None:
        state.max_since_reset = tr.current

    def empty_cache() -> None:
        from planner.allocator import EMPTY_CACHE

        state.log.events.append((EMPTY_CACHE, 0))  # replayed: whole cached segments released (allocator.py)
        state.note(f"torch.cuda.empty_cache() at {_site()}: the allocator replay releases the cached segments "
                   f"there (with expandable_segments it keeps them: peak_reserved is then an upper bound)")

    def summary(device: Any = None, abbreviated: bool = False) -> str:
        return (f"vramplan run: emulated {setup.gpu_name}, traced (not measured)\n"
                f"allocated now: {tr.current:,} B; peak since reset: {state.max_since_reset:,} B; "
                f"peak of the run: {tr.peak:,} B\n")

    def stats(device: Any = None) -> dict:
        return {"allocated_bytes.all.current": tr.current, "allocated_bytes.all.peak": state.max_since_reset,
                "reserved_bytes.all.current": tr.current, "reserved_bytes.all.peak": state.max_since_reset}

    return {
        "is_available": lambda: True,
        "device_count": lambda: setup.gpus,
        "current_device": lambda: 0,
        "set_device": lambda device: None,
        "get_device_name": lambda device=None: setup.gpu_name,
        "get_device_properties": lambda device=None: _DeviceProperties(setup),
        "get_device_capability": lambda device=None: setup.gpu_capability,
        "is_bf16_supported": lambda including_emulation=True: setup.gpu_capability >= (8, 0),
        "synchronize": lambda device=None: None,
        "empty_cache": empty_cache,
        "memory_allocated": lambda device=None: tr.current,
        "max_memory_allocated": lambda device=None: state.max_since_reset,
        # reserved is modelled after the run (the allocator replay); during it, allocated is the answer
        "memory_reserved": lambda device=None: tr.current,
        "max_memory_reserved": lambda device=None: state.max_since_reset,
        "reset_peak_memory_stats": reset_peak,
        "reset_max_memory_allocated": reset_peak,
        "memory_summary": summary,
        "memory_stats": stats,
        "mem_get_info": lambda device=None: (setup.gpu_total - tr.current, setup.gpu_total),
    }


def _grad_scaler_classes(state: _State) -> tuple[type, type]:
    from planner.measure.recording import EmulatedGradScaler

    class GradScaler:
        """torch.amp.GradScaler as a script calls it; allocates as EmulatedGradScaler
        (``torch/amp/grad_scaler.py``) and always takes the step (grads assumed finite)."""

        def __init__(self, device: str = "cuda", init_scale: float = 2.0**16, growth_factor: float = 2.0,
                     backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True) -> None:
            state.scaler_sites.append(_site())
            if state.setup.precision == "fp32" and enabled:
                enabled = False
                state.note("--precision fp32: the script's GradScaler disabled")
            self._enabled = enabled
            self._init_scale = init_scale
            self._emu = EmulatedGradScaler(init_scale)
            self._unscaled: set[int] = set()
            self._network = "other"

        def is_enabled(self) -> bool:
            return self._enabled

        def scale(self, outputs: Any) -> Any:
            if not self._enabled:
                return outputs
            if isinstance(outputs, torch.Tensor):
                return self._emu.scale(outputs)
            return type(outputs)(self.scale(o) for o in outputs)

        def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
            if not self._enabled or id(optimizer) in self._unscaled:
                return
            state.tracker.phase = Phase.OPTIMIZER
            if self._emu._scale is None:
                raise RuntimeError("unscale_() called before scale()")  # as torch's _check_scale_growth_tracker
            self._emu.unscale_(optimizer)
            self._unscaled.add(id(optimizer))
            self._network = state.network_of(optimizer)

        def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if not self._enabled:
                return optimizer.step(*args, **kwargs)
            self.unscale_(optimizer)
            return optimizer.step(*args, **kwargs)

        def update(self, new_scale: Any = None) -> None:
            if not self._enabled:
                return
            self._emu.update()
            self._unscaled.clear()
            state.tracker.tag(self._emu.state_tensors(), Category.OPTIMIZER_STATE, self._network)

        def get_scale(self) -> float:
            return float(self._init_scale) if self._enabled else 1.0

        def state_dict(self) -> dict:
            return {"scale": self.get_scale(), "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                    "_growth_tracker": 0} if self._enabled else {}

        def load_state_dict(self, state_dict: dict) -> None:
            pass

    class CudaGradScaler(GradScaler):
        """torch.cuda.amp.GradScaler(init_scale, growth_factor, backoff_factor, growth_interval, enabled)."""

        def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                     growth_interval: int = 2000, enabled: bool = True) -> None:
            super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval, enabled)

    return GradScaler, CudaGradScaler


_FACTORIES = frozenset(getattr(torch, n) for n in (
    "randn", "rand", "randint", "randperm", "zeros", "ones", "empty", "full", "arange", "linspace", "logspace",
    "eye", "tensor", "as_tensor", "empty_strided", "normal", "bernoulli", "multinomial"))
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _host_site(state: "_State") -> bool:
    """The script's own top-level code (not a forward, backward or optimizer step, not a module's
    constructor, not vramplan's code): where a tensor made without a device is host memory."""
    if state.modules.depth or state.tracker.phase in (Phase.BACKWARD, Phase.OPTIMIZER):
        return False
    f = caller = sys._getframe(2)
    while caller is not None and caller.f_code.co_filename.startswith(_TORCH_DIR):
        caller = caller.f_back
    if caller is None or caller.f_code.co_filename.startswith(_OURS):
        return False
    depth = 0
    while f is not None and depth < 64:
        if f.f_code.co_name == "__init__" and isinstance(f.f_locals.get("self"), torch.nn.Module):
            return False  # parameters and buffers: fake, whatever device they are made on
        f, depth = f.f_back, depth + 1
    return True


class _HostAndDevice:
    """A TorchFunctionMode, entered above the CUDA mapping, that keeps the host side of a script real.

    * A tensor the script's own top-level code makes without a device (``torch.randn(64, 256)``
      for an in-memory dataset, ``torch.tensor([...])``) or with ``device="cpu"``, and what it
      computes from real tensors only, are real CPU tensors: host memory on a GPU too, so not
      counted (``_host_site``). ``device=x.device`` is not host: in the trace every device tensor
      says cpu, so a ``torch.device`` object is taken to be the device (MONAI's sliding window
      makes its output buffers this way).
      Parameters and buffers stay fake (made in a module's ``__init__``), as do tensors made in a
      forward, backward or optimizer step.
    * ``.to("cuda")``/``.cuda()`` of a real tensor (a batch from the DataLoader, numpy, the host
      tensors above) is a fake copy on the traced device, counted as the copy a GPU makes.
    * ``pin_memory()`` of a real tensor is the tensor (the host side is not traced)."""

    def __new__(cls, state: "_State") -> Any:
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_flatten

        from planner.measure.user_code import _cuda_device

        def to_device(func: Any, t: torch.Tensor, args: tuple, kwargs: dict) -> Any:
            if func is torch.Tensor.cuda:
                dev, dtype, nb, fmt = "cuda", None, kwargs.get("non_blocking", False), kwargs.get("memory_format")
            else:
                dev, dtype, nb, _, fmt = _parse_to(*args[1:], **kwargs)
            if dev is None or not _cuda_device(dev):
                return None
            plain = t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t
            return plain.to(device="cpu", dtype=dtype or t.dtype, non_blocking=nb, copy=True,
                            memory_format=fmt or torch.preserve_format)

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
                kwargs = kwargs or {}
                t = args[0] if args else None
                real = isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor)
                if real and func is torch.Tensor.pin_memory:
                    return t
                if real and (func is torch.Tensor.cuda or func is torch.Tensor.to):
                    out = to_device(func, t, args, kwargs)
                    if out is not None:
                        return out
                if kwargs.get("device") in (None, "cpu"):  # not device=x.device: a fake tensor's, cpu in the trace
                    tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
                    host = (all(not isinstance(x, FakeTensor) for x in tensors) if tensors else func in _FACTORIES)
                    if host and _host_site(state):
                        with _real():
                            return func(*args, **kwargs)
                return func(*args, **kwargs)

        return Mode()


def _parse_to(*args: Any, **kwargs: Any) -> tuple[Any, Any, bool, bool, Any]:
    """(device, dtype, non_blocking, copy, memory_format) of a ``Tensor.to`` call."""
    copy = kwargs.pop("copy", False)
    if args and isinstance(args[0], torch.Tensor):
        other = args[0]
        return other.device, other.dtype, kwargs.get("non_blocking", False), copy, kwargs.get("memory_format")
    device, dtype, nb, fmt = torch._C._nn._parse_to(*args, **kwargs)
    return device, dtype, nb, copy, fmt


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    had = name in vars(obj) if isinstance(obj, type) else hasattr(obj, name)
    old = getattr(obj, name, None)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


def _forget_fake_memo(module: torch.nn.Module) -> None:
    """Drop the fake-tensor converter's memo entries (weak references) for ``module``'s tensors, so
    that ``nn.Module._apply`` can swap them (``torch.utils.swap_tensors`` refuses a tensor with a weak
    reference; ``user_code.swappable_fake_params`` covers only tensors made inside it, and a script
    makes its networks anywhere)."""
    from torch._guards import detect_fake_mode

    conv = getattr(getattr(detect_fake_mode(), "fake_tensor_converter", None), "meta_converter", None)
    memo = getattr(conv, "tensor_memo", None)
    if memo is None:
        return
    mine = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    mine |= {id(p.grad) for p in module.parameters() if p.grad is not None}
    for key, value in list(memo.items()):
        if id(value) in mine:
            del memo[key]


@contextlib.contextmanager
def _boundary(state: _State) -> Iterator[None]:
    """Every patch of the run: torch.cuda answers, GradScaler, DataLoader, save, compile,
    backward's phase, the optimizer hooks. All undone on exit."""
    import inspect

    import torch.utils.data.dataloader as dl
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    setup, tr = state.setup, state.tracker
    patches: list[tuple[Any, str, Any]] = [(torch.cuda, k, v) for k, v in _cuda_answers(state).items()]
    scaler, cuda_scaler = _grad_scaler_classes(state)
    from torch.amp import grad_scaler as amp_scaler
    from torch.cuda import amp as cuda_amp
    from torch.cuda.amp import grad_scaler as cuda_amp_scaler

    patches += [(torch.amp, "GradScaler", scaler), (amp_scaler, "GradScaler", scaler),
                (cuda_amp, "GradScaler", cuda_scaler), (cuda_amp_scaler, "GradScaler", cuda_scaler)]

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        state.note(f"torch.save at {_site()}: nothing written (vramplan run)")

    def compile_(model: Any = None, *args: Any, **kwargs: Any) -> Any:
        state.note(f"torch.compile at {_site()}: runs eagerly under vramplan run (a compiled graph may use less "
                   f"memory: fused kernels keep fewer temporaries)")
        return model if model is not None else (lambda m: m)

    patches += [(torch, "save", save), (torch, "compile", compile_)]

    import argparse

    parse_known = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self_: Any, args: Any = None, namespace: Any = None) -> Any:
        """The script's command line as argparse parsed it: its int options, for ``recommend`` to say a
        DataLoader's batch size as the option that gave it."""
        ns, rest = parse_known(self_, args, namespace)
        if args is None:  # sys.argv, not a list the script built
            for act in self_._actions:
                v = getattr(ns, act.dest, None) if act.option_strings else None
                if isinstance(v, int) and not isinstance(v, bool):
                    d = act.default
                    state.options.append({"options": list(act.option_strings), "dest": act.dest, "value": v,
                                          "default": d if isinstance(d, int) and not isinstance(d, bool) else None})
        return ns, rest

    patches.append((argparse.ArgumentParser, "parse_known_args", parse_known_args))
    autocast_cls = torch.amp.autocast_mode.autocast
    traced_autocast = autocast_cls.__init__  # user_code.CudaAutocastAsTraced's, entered before

    def autocast_init(self_: Any, device_type: str, *args: Any, **kwargs: Any) -> None:
        if device_type == "cuda":
            site = _site()
            if site not in state.autocast_sites:
                state.autocast_sites.append(site)
        traced_autocast(self_, device_type, *args, **kwargs)

    patches.append((autocast_cls, "__init__", autocast_init))

    from planner.measure.user_code import swappable_fake_params

    apply = torch.nn.Module._apply

    def module_apply(self_: Any, *args: Any, **kwargs: Any) -> Any:  # .cuda(), .to(), .half() on fake parameters
        _forget_fake_memo(self_)
        with swappable_fake_params():
            return apply(self_, *args, **kwargs)

    patches.append((torch.nn.Module, "_apply", module_apply))

    backward = torch.autograd.backward

    def traced_backward(*args: Any, **kwargs: Any) -> Any:
        phase, hint = tr.phase, tr.network_hint
        tr.phase, tr.network_hint = Phase.BACKWARD, "backward"
        try:
            return backward(*args, **kwargs)
        finally:
            tr.phase, tr.network_hint = Phase.FORWARD if phase == Phase.BACKWARD else phase, hint

    patches.append((torch.autograd, "backward", traced_backward))

    init = dl.DataLoader.__init__
    sig = inspect.signature(init)

    def loader_init(self_: Any, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self_, *args, **kwargs)
        a = bound.arguments
        where = _site()
        if a.get("num_workers", 0):
            state.note(f"DataLoader at {where}: num_workers={a['num_workers']} run as 0 in the traced process "
                       f"(the data pipeline is real, on the CPU; the figures do not depend on it)")
            a["num_workers"] = 0
        for key, off in (("pin_memory", False), ("persistent_workers", False), ("prefetch_factor", None),
                         ("multiprocessing_context", None)):
            if a.get(key):
                a[key] = off
        sampler = a.get("sampler")
        training = bool(a.get("shuffle")) or isinstance(sampler, (torch.utils.data.RandomSampler,
                                                                   torch.utils.data.distributed.DistributedSampler))
        if setup.batch is not None and a.get("batch_sampler") is None:
            if training and a.get("batch_size", 1) is not None:
                state.batch_applied.append(f"{where} (batch_size {a.get('batch_size', 1)} -> {setup.batch})")
                a["batch_size"] = setup.batch
        batch_size = a.get("batch_size", 1)
        state.loaders.append({"site": where, "batch_size": batch_size if a.get("batch_sampler") is None else None,
                              "training": training})
        init(*bound.args, **bound.kwargs)

    loader_iter = dl.DataLoader.__iter__
    loader_next = dl._BaseDataLoaderIter.__next__

    def iter_(self_: Any) -> Any:
        with _real():
            return loader_iter(self_)

    def next_(self_: Any) -> Any:
        tr.phase, tr.network_hint = Phase.DATA, "data"
        with _real():
            return loader_next(self_)

    patches += [(dl.DataLoader, "__init__", loader_init), (dl.DataLoader, "__iter__", iter_),
                (dl._BaseDataLoaderIter, "__next__", next_)]
    with contextlib.ExitStack() as stack:
        for obj, name, value in patches:
            stack.enter_context(_patched(obj, name, value))
        h1 = register_optimizer_step_pre_hook(state.pre_step)
        h2 = register_optimizer_step_post_hook(state.post_step)
        stack.callback(h1.remove)
        stack.callback(h2.remove)
        yield


@contextlib.contextmanager
def _counting_work(state: _State) -> Iterator[None]:
    """Matmul/conv/attention FLOPs (torch.utils.flop_counter's ``flop_registry``, as
    ``stepfile._FlopCount`` counts them) and the bytes each op writes, per part of the run, and the
    SDPA calls: the time model of ``recommend`` on a script. Innermost mode: it sees every op first
    and changes nothing the tracker sees."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    tr = state.tracker

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            work = state.work.setdefault(tr.step or "setup", [0, 0])
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                work[0] += int(formula(*args, **kwargs, out_val=out))
            if func._overloadpacket.__name__.startswith("_scaled_dot_product"):
                state.sdpa_calls += 1
            work[1] += sum(t.untyped_storage().nbytes() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)
                           and not t._is_view())
            return out

    with _Count():
        yield


def _facts(state: _State, own: Any) -> dict:
    """What ``recommend`` on a script (planner/script_search.py) reads off a run: plain data."""
    from planner.measure.isolate import short_path
    from planner.measure.stepfile import repeated_blocks

    blocks = []
    classes = {type(m).__name__: type(m) for net in state.networks.values() for m in net.modules()}
    for name, count, params in repeated_blocks(state.networks):
        # the `class Name` line above its forward (inspect.getsourcelines cannot find a class of the
        # script's __main__, which runpy has replaced by now)
        code = getattr(getattr(classes[name], "forward", None), "__code__", None)
        where = ""
        if code is not None:
            where = f"{short_path(code.co_filename)}:{code.co_firstlineno}"
            try:
                with open(code.co_filename, encoding="utf-8") as f:
                    lines = f.read().splitlines()[:code.co_firstlineno]
                line = next(i for i in range(len(lines), 0, -1) if lines[i - 1].lstrip().startswith(f"class {name}"))
                where = f"{short_path(code.co_filename)}:{line}"
            except (OSError, StopIteration, UnicodeDecodeError):
                pass
        blocks.append({"class": name, "instances": count, "parameters": params, "defined_at": where})
    if state.setup.precision is not None:
        precision = state.setup.precision
    else:
        dtypes = {str(d).replace("torch.", "") for d in own.dtypes}
        precision = "amp-bf16" if dtypes == {"bfloat16"} else "amp-fp16" if dtypes else "fp32"
    return {"options": state.options, "loaders": state.loaders, "autocast_sites": state.autocast_sites,
            "scaler_sites": state.scaler_sites, "blocks": blocks, "precision": precision,
            "sdpa_calls": state.sdpa_calls, "work": {k: tuple(v) for k, v in state.work.items()},
            "networks": dict(state.first_call)}


@contextlib.contextmanager
def _distributed(state: _State) -> Iterator[None]:
    """The ranks (``--gpus N`` / a torchrun launch): torchrun's environment for rank 0 of N
    (``torch/distributed/run.py``: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT,
    TORCHELASTIC_RUN_ID); the script's ``init_process_group`` answered by torch's fake process group
    (``planner/measure/distributed.py`` ``fake_group``: FakeStore, backend "fake", rank 0 of N); each
    DistributedDataParallel it makes constructed as a step file's is (``constructing_ddp``, ``ddp_made``:
    no shape all-gather or broadcast of data, the in-place allreduce hook) with ``device_ids`` dropped
    (the traced device is the CPU), and attributed while it trains (``track_ddp``: buckets as
    ``communication``, the bucket rebuild traced). The group is destroyed after the run."""
    import inspect

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from planner.measure.distributed import check_internals, constructing_ddp, ddp_made, track_ddp

    setup, world = state.setup, state.setup.gpus
    env: dict[str, str] = {}
    if world > 1 or setup.launcher == "torchrun":
        env = {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
               "TORCHELASTIC_RUN_ID": "vramplan"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    init_pg = dist.init_process_group

    def init_process_group(backend: Any = None, init_method: Any = None, timeout: Any = None, world_size: int = -1,
                           rank: int = -1, *args: Any, **kwargs: Any) -> None:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        if world_size not in (-1, None, world):
            raise PlannerError(f"run: the script's init_process_group(world_size={world_size}) at {_site()} is not the "
                               f"{world} ranks of --gpus / torchrun (valid: the same number)")
        state.note(f"torch.distributed.init_process_group({backend!r}) at {_site()}: answered by torch's fake process "
                   f"group, rank 0 of {world} (collectives move no data; the buffers DDP makes for them are counted)")
        with _real():
            init_pg("fake", store=FakeStore(), rank=0, world_size=world)

    ddp_init = DistributedDataParallel.__init__
    sig = inspect.signature(ddp_init)

    def ddp_init_traced(self_: Any, *args: Any, **kwargs: Any) -> None:
        check_internals("ddp")
        bound = sig.bind(self_, *args, **kwargs)
        a = bound.arguments
        if a.get("device_ids") or a.get("output_device") is not None:
            state.note(f"DistributedDataParallel at {_site()}: device_ids={a.get('device_ids')} dropped (rank 0's device "
                       f"is the traced one)")
        a["device_ids"], a["output_device"] = None, None
        with constructing_ddp() as capture:
            ddp_init(*bound.args, **bound.kwargs)
        ddp_made(self_, capture)
        info = state.discover(self_)
        if info is not None and state.stack is not None:
            state.ddp.append(info[0])
            track_ddp(state.tracker, self_, info[0], state.stack)

    try:
        with contextlib.ExitStack() as stack:
            state.stack = stack
            stack.enter_context(_patched(dist, "init_process_group", init_process_group))
            stack.enter_context(_patched(DistributedDataParallel, "__init__", ddp_init_traced))
            yield
    finally:
        state.stack = None
        if dist.is_available() and dist.is_initialized():
            with _real():
                dist.destroy_process_group()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _script_argv(setup: ScriptSetup) -> Iterator[None]:
    old_argv, old_path = list(sys.argv), list(sys.path)
    if setup.argv[0] == "-m":
        sys.argv = [setup.argv[1], *setup.argv[2:]]
        sys.path.insert(0, os.getcwd())
    else:
        sys.argv = list(setup.argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(setup.argv[0])))
    try:
        yield
    finally:
        sys.argv, sys.path[:] = old_argv, old_path


def _run_script(setup: ScriptSetup) -> None:
    if setup.argv[0] == "-m":
        runpy.run_module(setup.argv[1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(setup.argv[0], run_name="__main__")


def _ended(setup: ScriptSetup, state: _State, how: str) -> UserCodeEnded:
    return UserCodeEnded(f"run: the script {how} after {state.steps} optimizer step{'s' if state.steps != 1 else ''} "
                         f"(--steps {setup.steps}: vramplan counts optimizer.step() calls with torch.optim's step "
                         f"hooks){'' if state.steps else '; nothing was stepped, so there is no training peak'} "
                         f"(exit code {EXIT_ENDED})")


def _script_error(exc: BaseException, setup: ScriptSetup, state: _State) -> PlannerError:
    from planner.measure.declared_ops import explain
    from planner.measure.user_code import describe, uses_cuda

    untraceable = explain(exc, None, origin="step")
    if untraceable is not None:
        text = str(untraceable).replace("step: ", "run: the script: ", 1)
        return UserCodeEnded(text + f" (after {state.steps} optimizer steps; exit code {EXIT_ENDED})")
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or ""
        return UserCodeEnded(f"run: the script imports {name or 'a module'} that cannot be loaded here "
                             f"({describe(exc)}); a GPU-only library (flash_attn, apex, xformers, bitsandbytes ...) "
                             f"cannot be traced on the CPU: guard its import or use the torch equivalent "
                             f"(exit code {EXIT_ENDED})")
    if uses_cuda(exc):
        return UserCodeEnded(f"run: the script calls CUDA in a way the emulation does not answer ({describe(exc)}); "
                             f"torch.cuda queries, .cuda(), .to('cuda'), autocast and GradScaler are emulated "
                             f"(exit code {EXIT_ENDED})")
    return UserCodeEnded(f"run: the script raised {describe(exc)} after {state.steps} optimizer step"
                         f"{'s' if state.steps != 1 else ''} (exit code {EXIT_ENDED})")


def trace(setup: ScriptSetup) -> ScriptRun:
    """Run the script under the tracer until ``setup.steps`` optimizer steps; the peak over the run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from planner.measure.cuda_emulation import CudaEmulation
    from planner.measure.isolate import user_site
    from planner.measure.recording import EventLog, record as record_of
    from planner.measure.stepfile import _collect_young_garbage_per_op, _restore_gc, _sdpa
    from planner.measure.user_code import CudaAutocastAsTraced, cuda_as_traced_device, quiet_fake_tensor_log
    from planner.measure.values import fake_mode_with_values

    if setup.cwd:
        os.chdir(setup.cwd)
    modules = _ScriptModules()
    tracker = LiveStorageTracker(modules, keep_timeline=False)
    log = EventLog(tracker)
    _collect_young_garbage_per_op(tracker)
    state = _State(setup, tracker, modules)
    state.log = log
    modules.state = state
    note_peak = tracker._note_peak

    def note_and_segment(op: str) -> None:
        note_peak(op)
        state.on_peak()

    tracker._note_peak = note_and_segment  # type: ignore[method-assign]
    own = CudaAutocastAsTraced(force=_AUTOCAST.get(setup.precision or ""))
    state.autocast = own
    gc_was = gc.isenabled()
    stopped = False
    with quiet_fake_tensor_log(), fake_mode_with_values(FakeTensorMode(allow_non_fake_inputs=True)), \
            CudaEmulation(sdpa=True, cudnn_layout=True), cuda_as_traced_device(torch.device("cpu"), own), \
            _HostAndDevice(state), _sdpa(setup.sdpa), _boundary(state), _script_argv(setup), modules, tracker, \
            _distributed(state), _restore_gc(gc_was), _counting_work(state):
        gc.disable()  # collected per op instead (stepfile._collect_young_garbage_per_op)
        try:
            _run_script(setup)
        except _Stop:
            stopped = True
        except SystemExit as exc:
            where = user_site("\n".join(f'  File "{f.filename}", line {f.lineno} in {f.name}'
                                        for f in reversed(traceback.extract_tb(exc.__traceback__))))
            raise _ended(setup, state, f"called sys.exit({exc.code!r})" + (f" at {where}" if where else "")) from None
        except KeyboardInterrupt:
            raise _ended(setup, state, "raised KeyboardInterrupt") from None
        except PlannerError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's script: one line
            raise _script_error(exc, setup, state) from None
        if not stopped:
            raise _ended(setup, state, f"ran to its end ({setup.script})")
        tracker.phase = Phase.SETUP
        record = record_of(tracker, log, dict(state.networks), 0)
    missing = [c for c in setup.checkpoint if c not in state.wrapped]
    if missing:
        from planner.measure.stepfile import repeated_blocks

        rows = repeated_blocks(state.networks)
        valid = ", ".join(r[0] for r in rows[:8]) or "none repeat"
        raise PlannerError(f"--checkpoint: no module of class '{missing[0]}' in the networks the script called "
                           f"(repeated blocks: {valid})")
    if setup.batch is not None and not state.batch_applied:
        raise PlannerError(f"--batch: the script made no training DataLoader (one that shuffles) whose batch_size "
                           f"vramplan could set; change the script's own batch-size argument instead")
    notes = list(state.notes)
    if setup.gpus > 1:
        from planner.measure.distributed import per_rank_note

        notes.insert(0, per_rank_note(setup.gpus, "ddp, the script's own DistributedDataParallel" if state.ddp else
                                      "the script made no DistributedDataParallel: no gradient buckets"))
    for where in state.batch_applied:
        notes.append(f"--batch {setup.batch}: DataLoader at {where}")
    if setup.checkpoint:
        notes.append(f"--checkpoint: {', '.join(setup.checkpoint)} wrapped in torch's non-reentrant checkpoint "
                     f"wrapper when the script first called its network")
    dtypes = ", ".join(sorted(str(d).replace("torch.", "") for d in own.dtypes))
    if setup.precision is None:
        precision = f"the script's own CUDA autocast ({dtypes})" if own.dtypes else "the script's own (no CUDA autocast)"
    elif setup.precision == "fp32":
        precision = "--precision fp32" + (" (the script's autocast regions disabled)" if own.regions else "")
    else:
        how = "the script's autocast regions" if own.regions else "autocast added around each network's forward"
        precision = f"--precision {setup.precision} ({how})"
    info = {
        "script": setup.label(),
        "networks": {n: state.first_call[n] for n in state.networks},
        "optimizer_steps": state.steps,
        "precision": precision,
        "checkpoint": list(setup.checkpoint),
        "sdpa": setup.sdpa,
        "optimizers": dict(state.optimizers),
        "backend": "fake",
    }
    if setup.gpus > 1:
        info.update(gpus=setup.gpus, strategy="ddp" if state.ddp else "no DDP")
    record = replace(record, setup=info)
    segments = sorted(state.segments.values(), key=lambda s: _segment_order(s.label))
    return ScriptRun(record, [s for s in segments if s.label != "setup"], notes, state.steps,
                     {n: state.first_call[n] for n in state.networks}, _facts(state, own))


def _segment_order(label: str) -> tuple[int, int]:
    """step 1, evaluation after step 1, step 2, ... (evaluation before step 1 first)."""
    words = label.split()
    n = int(words[-1]) if words and words[-1].isdigit() else 0
    if "before" in label:
        return (n - 1, 1)
    return (n, 0 if label.startswith("step") else 1)
