"""The user's own model under the tracer (``vramplan profile --model``).

Loading the factory (``package.module:factory`` importable from the current
directory, or ``path/to/file.py:factory``), calling it, and turning whatever goes
wrong in the user's code into one line that names the real cause and the user's
``file:line`` instead of a traceback.

Two things that ordinary model code does break a naive trace on a CPU-only torch:

* ``.half()`` / ``.float()`` / ``.to(dtype)`` / ``.cuda()`` on a module: for fake
  parameters ``nn.Module._apply`` always swaps the tensors
  (``torch.utils.swap_tensors``), which refuses a tensor that has a weak reference,
  and FakeTensorMode's converter keeps a weak reference (its ``tensor_memo``) to every
  tensor it wraps from a meta result — ``Parameter(...)``'s ``detach`` among them.
  While the factory runs the memo is a plain dict (strong references, no weak ones),
  and is dropped afterwards; see :func:`swappable_fake_params`.
* ``.cuda()``, ``.to("cuda")`` and ``device="cuda"``: a CPU-only build cannot make a
  CUDA tensor, fake or not (ops with a CUDA device guard abort the process, see
  ``shared/design.md``). The trace's CPU tensors *are* the emulated CUDA device, so
  :class:`CudaAsTracedDevice` maps those requests onto it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from planner.errors import PlannerError
from planner.measure.isolate import short_path as _short

MAX_USER_MESSAGE = 200
"""Characters of the user's exception message quoted in the one-line error."""

_SHAPE_WORDS = re.compile(
    r"shape|size|channel|dimension|\bdims?\b|cannot be multiplied|expected input|must match|out of range",
    re.IGNORECASE,
)
_CUDA_WORDS = re.compile(
    r"not compiled with cuda|not linked with support for cuda|cuda driver|no cuda|"
    r"(device.*cuda|cuda.*device)",
    re.IGNORECASE,
)


# --- loading ---------------------------------------------------------------------------------



@contextlib.contextmanager
def quiet_fake_tensor_log() -> Iterator[None]:
    """Silence torch's fake-tensor logger (and DDP's layout warning) while a trace runs: when a meta kernel rejects the
    user's op (a shape mismatch in their code) torch logs the whole traceback at ERROR level
    (``torch/_subclasses/fake_tensor.py`` ``_dispatch_impl``, "failed while attempting to run
    meta for ...") before raising; the trace turns the exception into one line."""
    import logging

    import warnings

    log = logging.getLogger("torch._subclasses.fake_tensor")
    was = log.disabled
    log.disabled = True
    try:
        with warnings.catch_warnings():
            # DDP's reducer (torch/csrc/distributed/c10d/reducer.cpp) warns when a gradient's
            # strides differ from its bucket view's, which the emulated cuDNN layouts of 1x1x1
            # conv weights do on size-1 dimensions; a performance note about the traced run,
            # not about the user's setup, and it would land in --json's stderr
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            # torch.nn.init on a 0-element weight (a knob of 0): the trace refuses it in one line
            # (stepfile._refuse_empty), the warning would be a second
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
            yield
    finally:
        log.disabled = was

def check_source_encoding(path: Path, spec: str) -> None:
    """Refuse a source file Python itself would not run: its bytes must decode in its declared
    encoding, UTF-8 by default (PEP 263). ``compile()`` of the bytes, as importlib does, lets an
    undecodable byte through inside a comment (CPython 3.11's string tokenizer does not check
    comments), where ``python file.py`` stops with "SyntaxError: Non-UTF-8 code starting with ..."."""
    import io
    import tokenize

    try:
        data = path.read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        data.decode(encoding)
    except OSError as exc:
        raise PlannerError(f"--model: cannot read '{path}' ({exc.strerror or exc})") from None
    except SyntaxError as exc:  # an unknown coding declaration
        raise PlannerError(f"--model: '{spec}': {exc.msg if hasattr(exc, 'msg') else exc}") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PlannerError(
            f"--model: '{_short(str(path))}' line {line}: byte 0x{data[exc.start]:02x} is not {encoding} "
            f"(Python refuses to run it: SyntaxError, PEP 263); save the file as UTF-8 or declare its encoding "
            f"in a '# -*- coding: ... -*-' line") from None


def _import_module(mod_part: str, spec: str) -> Any:
    """``package.module`` (the current directory first, as ``python -m`` does) or a ``.py`` path."""
    is_path = mod_part.endswith(".py") or "/" in mod_part or os.sep in mod_part
    if is_path:
        path = Path(mod_part).expanduser()
        if not path.is_file():
            raise PlannerError(f"--model: no such file '{mod_part}' (in '{spec}')")
        path = path.resolve()
        check_source_encoding(path, spec)
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # its sibling modules import as they would from a script
        name = path.stem
        if not name.isidentifier() or name in sys.modules:
            name = f"vramplan_user_{abs(hash(str(path)))}"
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise PlannerError(f"--model: cannot load '{mod_part}' as a Python module")
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[name] = mod
        try:
            mspec.loader.exec_module(mod)
        except Exception as exc:  # noqa: BLE001 - the user's module: one line
            sys.modules.pop(name, None)
            raise PlannerError(f"--model: importing '{mod_part}' failed: {describe(exc)}") from None
        return mod
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # a console script's sys.path[0] is its bin folder, not the cwd
    try:
        found = importlib.util.find_spec(mod_part)
    except Exception:  # noqa: BLE001 - import_module below says what is wrong
        found = None
    if found is not None and found.origin and found.origin.endswith(".py"):
        check_source_encoding(Path(found.origin), spec)
    try:
        return importlib.import_module(mod_part)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_part == exc.name or mod_part.startswith(exc.name + ".")):
            raise PlannerError(
                f"--model: no module '{exc.name}' in the current directory ({cwd}) or the installed packages; "
                f"give a file instead: --model path/to/file.py:factory"
            ) from None
        raise PlannerError(f"--model: importing '{mod_part}' failed: {describe(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module: one line
        raise PlannerError(f"--model: importing '{mod_part}' failed: {describe(exc)}") from None


def load_factory(spec: str) -> Callable[[], torch.nn.Module]:
    """The callable named by ``--model``; checked to be callable with no arguments."""
    mod_part, sep, attr = spec.rpartition(":")
    if not sep or not mod_part or not attr:
        raise PlannerError(f"--model: '{spec}' must look like package.module:factory or path/to/file.py:factory")
    mod = _import_module(mod_part, spec)
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise PlannerError(f"--model: '{mod_part}' has no callable '{attr}'")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        return fn
    P = inspect.Parameter
    kinds = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
    required = [p.name for p in sig.parameters.values() if p.default is P.empty and p.kind in kinds]
    if required:
        names = ", ".join(required)
        raise PlannerError(
            f"--model: factory '{spec}' has required parameter{'s' if len(required) > 1 else ''} {names}, "
            f"but vramplan calls it with no arguments; give {'them' if len(required) > 1 else 'it'} a default "
            f"or point --model at a function that takes none"
        )
    return fn


# --- tracing user code -----------------------------------------------------------------------


def _cuda_device(d: Any) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.split(":")[0].strip().lower() == "cuda"
    return isinstance(d, int) and not isinstance(d, bool)  # device=0 means cuda:0


class CudaAsTracedDevice(TorchFunctionMode):
    """``.cuda()``, ``.to("cuda")``, ``device="cuda"`` -> the traced device (CPU tensors
    standing for CUDA ones). A CPU-only build cannot make a CUDA tensor, fake or not."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            # already on the (emulated) device; only a memory_format request changes anything
            fmt = kwargs.get("memory_format")
            return args[0] if fmt is None else args[0].contiguous(memory_format=fmt)
        if "device" in kwargs and _cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": self.device}
        if func is torch.Tensor.to and len(args) > 1 and _cuda_device(args[1]):
            args = (args[0], self.device, *args[2:])
        return func(*args, **kwargs)


class _CudaOpsAsTracedDevice(TorchDispatchMode):
    """The dispatcher-level half of :class:`CudaAsTracedDevice`: ``device=cuda`` on aten
    ops (factories, ``_to_copy``). A TorchFunctionMode is not active while autograd
    runs backward, so a ``torch.utils.checkpoint`` recomputation reaches only this."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if "device" in kwargs and _cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": self.device}
        return func(*args, **kwargs)


class CudaAutocastAsTraced:
    """The model's own ``torch.autocast("cuda", ...)`` / ``torch.cuda.amp.autocast()`` regions
    run as the trace's autocast (the CPU autocast key, carrying CUDA's cast policy), instead
    of being disabled with a warning on a CPU-only build. ``dtypes`` records the enabled ones,
    so the report can say the model autocasts by itself."""

    def __init__(self, force: tuple[bool, torch.dtype | None] | None = None) -> None:
        self.dtypes: set[torch.dtype] = set()
        self.force = force
        """(enabled, dtype) that replaces what the model's own CUDA regions ask for (``vramplan run --precision``)."""
        self.regions = 0
        """CUDA autocast regions the model's code made (enabled or not)."""

    @contextlib.contextmanager
    def active(self) -> Iterator["CudaAutocastAsTraced"]:
        cls = torch.amp.autocast_mode.autocast
        original = cls.__init__
        seen = self.dtypes
        outer = self

        def __init__(
            self_: Any, device_type: str, dtype: Any = None, enabled: bool = True, cache_enabled: Any = None
        ) -> None:
            if device_type == "cuda":
                outer.regions += 1
                if outer.force is not None:
                    enabled, dtype = outer.force[0], outer.force[1] or dtype
                dtype = torch.get_autocast_dtype("cuda") if dtype is None else dtype  # fp16 by default, as on CUDA
                if enabled:
                    seen.add(dtype)
                device_type = "cpu"
            original(self_, device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

        cls.__init__ = __init__  # type: ignore[method-assign]
        try:
            yield self
        finally:
            cls.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def cuda_as_traced_device(device: torch.device, autocast: CudaAutocastAsTraced | None = None) -> Iterator[None]:
    """Map the user's CUDA requests onto the traced device, at both levels, and its CUDA
    autocast regions onto the traced autocast."""
    with CudaAsTracedDevice(device), _CudaOpsAsTracedDevice(device), (autocast or CudaAutocastAsTraced()).active():
        yield


@contextlib.contextmanager
def swappable_fake_params() -> Iterator[None]:
    """Let ``nn.Module._apply`` (``.half()``, ``.to(dtype)``, ``.cuda()``) swap fake parameters.

    The active FakeTensorMode's converter memo holds weak references to the tensors it
    wraps, and ``torch.utils.swap_tensors`` refuses a tensor with a weak reference. While
    the factory runs the memo is a plain dict; afterwards the original (weak) memo is
    back and the factory's entries are dropped, so nothing is kept alive."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode()
    conv = getattr(getattr(mode, "fake_tensor_converter", None), "meta_converter", None)
    if conv is None or not hasattr(conv, "tensor_memo"):
        yield
        return
    saved = conv.tensor_memo
    conv.tensor_memo = {}
    try:
        yield
    finally:
        conv.tensor_memo = saved


def _library_dirs() -> tuple[str, ...]:
    """Not the user's code: vramplan, the standard library, installed packages, torch wherever it is."""
    from planner.measure.isolate import library_dirs

    return library_dirs() + (str(Path(torch.__file__).resolve().parent) + os.sep,)


def user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in the user's own code (not torch, not
    vramplan, not an installed package or the standard library)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_short(exc.filename)}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    lib = _library_dirs()
    ours = [f for f in frames if not f.filename.startswith("<") and not str(Path(f.filename).resolve()).startswith(lib)]
    return f"{_short(ours[-1].filename)}:{ours[-1].lineno}" if ours else ""


def message(exc: BaseException) -> str:
    """The exception's message: its first non-empty line, at most MAX_USER_MESSAGE characters."""
    text = str(exc.msg if isinstance(exc, SyntaxError) else exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > MAX_USER_MESSAGE:
        first = first[: MAX_USER_MESSAGE - 1] + "…"
    return first


def describe(exc: BaseException) -> str:
    """``KeyError: 'x' (models.py:38)``."""
    msg = message(exc)
    where = user_frame(exc)
    return f"{type(exc).__name__}" + (f": {msg}" if msg else "") + (f" ({where})" if where else "")


def uses_cuda(exc: BaseException) -> bool:
    return bool(_CUDA_WORDS.search(str(exc))) or (isinstance(exc, AssertionError) and "cuda" in str(exc).lower())


def cuda_error(exc: BaseException, where: str) -> PlannerError:
    return PlannerError(
        f"--model: the {where} calls CUDA ({describe(exc)}), which this CPU-only torch cannot trace: "
        f".cuda(), .to('cuda') and device='cuda' are mapped to the traced device, other torch.cuda calls "
        f"must go (or use --backend cuda on a GPU)"
    )


def forward_error(exc: BaseException, input_shape: tuple[int, ...], phase: str = "forward") -> PlannerError:
    """One line for an exception raised while the model ran (``phase``: forward or backward)."""
    if uses_cuda(exc):
        return cuda_error(exc, "model")
    shape_like = isinstance(exc, (RuntimeError, ValueError, IndexError)) and _SHAPE_WORDS.search(message(exc))
    if phase == "forward" and shape_like:
        return PlannerError(f"--input: the model rejects shape {list(input_shape)}: {describe(exc)}")
    return PlannerError(f"--model: the model's {phase} raised {describe(exc)}")


def build(spec: str) -> torch.nn.Module:
    """Import and call the factory; one line for anything that goes wrong."""
    fn = load_factory(spec)
    try:
        with swappable_fake_params():
            model = fn()
    except PlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory: one line
        if uses_cuda(exc):
            raise cuda_error(exc, "factory") from None
        raise PlannerError(f"--model: factory '{spec}' raised {describe(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise PlannerError(f"--model: '{spec}' returned {type(model).__name__}, not an nn.Module")
    return model
