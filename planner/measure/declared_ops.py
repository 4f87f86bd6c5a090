"""When the trace cannot run an op: one line naming it, and a way to declare its output.

A trace on fake tensors has shapes but no values, so some ops cannot be computed:
data-dependent shapes (``nonzero``, ``x[mask]``, ``unique``, ``masked_select``,
``repeat_interleave`` with tensor repeats), values read back into Python (``.item()``,
``bool(t)``, ``int(t)``: all ``aten::_local_scalar_dense``), and custom ops with no
fake (meta) kernel. Torch 2.13 raises, under ``FakeTensorMode`` without a ShapeEnv:

* ``DynamicOutputShapeException(func)`` (``torch/_subclasses/fake_impls.py``: ``nonzero``,
  ``masked_select``, ``_unique``, ``repeat_interleave_tensor``, ``bincount``, ``dyn_shape``
  for ops tagged ``dynamic_output_shape``). ``x[mask]`` is ``aten::index.Tensor``, whose
  meta kernel (``torch/_meta_registrations.py`` ``meta_index_Tensor``) calls ``nonzero``:
  the exception names ``aten::nonzero``, the op the user's code ran is ``aten::index``.
* ``DataDependentOutputException(func)`` (``fake_impls.py``: ``local_scalar_dense``;
  ``data_dep`` for ops tagged ``data_dependent_output``: ``aten::equal``, ``aten::allclose``).
* ``UnsupportedOperatorException(func)`` (``torch/_subclasses/fake_tensor.py``
  ``FakeTensorMode._dispatch_impl.maybe_run_unsafe_fallback``: an op without a meta kernel
  outside the namespaces the real-kernel fallback is allowed for, e.g. ``torch.library.define``
  + ``impl("cpu")``; also nested-tensor ops, ``fake_impls.py`` ``nested_tensors_unsupported``).
* ``RuntimeError("There was no fake impl registered for <CustomOpDef(ns::op)>...")``
  (``torch/_library/custom_ops.py`` ``CustomOpDef._register_fake_dispatcher_impl``): a
  ``torch.library.custom_op`` without ``register_fake``.
* ``NotImplementedError("Could not run 'ns::op' with arguments from the 'Meta' backend")``
  (``fake_tensor.py`` ``run_fallback_kernel`` re-raises it for ops it cannot fall back on).
* ``UnsupportedFakeTensorException(reason)`` (``fake_tensor.py``
  ``MetaConverter``/``from_real_tensor``: a real quantized tensor cannot be made fake).

"Cannot call numel() on tensor with symbolic sizes" and ``GuardOnDataDependentSymNode``
need a ShapeEnv, which the trace does not use. A compiled extension that checks for CUDA
fails with its own message (``x must be a CUDA tensor``) raised from the user's call.

:class:`DeclaredOps` takes a step file's ``DECLARE = {"aten::nonzero": fn, ...}``: where
the trace cannot compute a declared op, ``fn(*args, **kwargs)`` gives its output instead
(fake tensors made with ``torch.empty``/``x.new_empty``, or a Python number for
``_local_scalar_dense``). :class:`OpSite` remembers which op and module failed, and
:func:`explain` turns the exception into the one line. In a runner::

    site, declared = OpSite(modules), DeclaredOps(declared_for(step_module))
    with fake_mode, declared, modules, tracker, site:   # both inside FakeTensorMode, site last
        try: ...the user's step...
        except Exception as exc:
            if (err := explain(exc, site)) is not None: raise err from None
            raise
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedFakeTensorException,
    UnsupportedOperatorException,
)
from torch.utils._python_dispatch import TorchDispatchMode

from planner.errors import PlannerError, quote
from planner.measure.tracker import ModuleContext
from planner.measure.user_code import _library_dirs, describe, message, uses_cuda, user_frame

_KEY = re.compile(r"^(\w+)::(\w+)(?:\.(\w+))?$")
_NO_FAKE_IMPL = re.compile(r"no fake impl registered for <CustomOpDef\((\w+::\w+)\)>")
_NO_META = re.compile(r"Could not run '(\w+::\w+)(?:\.\w+)?' with arguments from the 'Meta' backend")
_CUDA_WORD = re.compile(r"\bcuda\b|nvidia", re.IGNORECASE)
_SITE = "_vramplan_site"  # (op, module) noted on the exception where it happened


def _op_name(func: Any) -> str:
    """``aten::nonzero`` for an OpOverload (the DECLARE key: every overload)."""
    return func._schema.name


def _untraceable(exc: BaseException) -> bool:
    """An op the trace could not compute for want of data or of a fake kernel."""
    if isinstance(exc, (DynamicOutputShapeException, DataDependentOutputException, UnsupportedOperatorException)):
        return True
    return isinstance(exc, (RuntimeError, NotImplementedError)) and bool(
        _NO_FAKE_IMPL.search(str(exc)) or _NO_META.search(str(exc))
    )


# --- declaring outputs ---------------------------------------------------------------------


def declared_for(obj: Any, origin: str = "step") -> dict:
    """The ``DECLARE`` dict of a step file's module, or of the module defining ``obj``
    (``--model``'s factory); ``{}`` when there is none."""
    mod = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
    table = getattr(mod, "DECLARE", None)
    if table is None:
        return {}
    if not isinstance(table, dict):
        where = Path(getattr(mod, "__file__", "") or "").name or getattr(mod, "__name__", "the module")
        raise PlannerError(
            f'{origin}: DECLARE in {where} is {type(table).__name__}; it must be a dict {{"namespace::op": fn}}'
        )
    return table


def _resolve(key: Any, origin: str) -> list[Any]:
    """The OpOverloads a DECLARE key names (all of a packet's, or the one given)."""
    m = _KEY.match(key) if isinstance(key, str) else None
    packet = overload = None
    if m:
        with contextlib.suppress(AttributeError, RuntimeError):
            packet = getattr(getattr(torch.ops, m.group(1)), m.group(2))
        if packet is not None and m.group(3):
            with contextlib.suppress(AttributeError, RuntimeError):
                overload = getattr(packet, m.group(3))
    if packet is not None and (overload is not None or not m.group(3)):
        return [overload] if overload is not None else [getattr(packet, o) for o in packet.overloads()]
    close = ""
    if isinstance(key, str):
        names = {n.split(".")[0] for n in torch._C._dispatch_get_all_op_names()}
        near = difflib.get_close_matches(key.split(".")[0], names, n=1)
        close = f" (did you mean {near[0]!r}?)" if near else ""
    what = "has no such overload" if packet is not None else "is not an operator"
    raise PlannerError(
        f'{origin}: DECLARE key {quote(key)} {what}{close}; valid: "namespace::op[.overload]", '
        f'e.g. "aten::nonzero", "aten::_local_scalar_dense" (.item()), "mylib::voxelize"'
    )


def _expected(ret_type: str) -> tuple[str, Callable[[Any], bool]] | None:
    if ret_type == "Tensor":
        return "a tensor", lambda v: isinstance(v, torch.Tensor)
    if ret_type in ("Tensor[]", "List[Tensor]"):
        return "a list of tensors", lambda v: isinstance(v, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in v)
    if ret_type in ("number", "Scalar", "int", "float", "bool", "SymInt", "SymFloat", "SymBool"):
        return "a Python number", lambda v: isinstance(v, (int, float, bool))
    return None  # anything rarer: not checked


class DeclaredOps(TorchDispatchMode):
    """Outputs the user declares for ops the trace cannot compute.

    ``declared``: ``{"namespace::op[.overload]": fn}``; ``fn(*args, **kwargs)`` gets the
    op's arguments (fake tensors) and returns its output. A declaration is used only where
    the op fails for want of data or of a fake kernel (``x[mask]`` is declared as
    ``aten::index``, which every other indexing still runs as usual). Enter it after
    ``FakeTensorMode``: the fn's ``torch.empty`` then makes fake tensors, and a tracker
    entered after this mode counts them under the op's name."""

    def __init__(self, declared: dict | None = None, origin: str = "step") -> None:
        super().__init__()
        self.origin = origin
        self._table: dict[Any, tuple[str, Callable[..., Any]]] = {}
        for key, fn in (declared or {}).items():
            ops = _resolve(key, origin)
            if not callable(fn):
                raise PlannerError(
                    f"{origin}: DECLARE[{quote(key)}] is {type(fn).__name__}, not a function; valid: a callable "
                    f"taking the op's arguments, e.g. lambda x: torch.empty(N, x.dim(), dtype=torch.long, device=x.device)"
                )
            for op in ops:
                if op not in self._table or "." in key:  # an overload's own entry wins over its packet's
                    self._table[op] = (key, fn)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        entry = self._table.get(func)
        if entry is None:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only the untraceable family is answered below
            if not _untraceable(exc):
                raise
        return self._declared(func, *entry, args, kwargs)

    def _declared(self, func: Any, key: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            out = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's declaration: one line
            raise PlannerError(f"{self.origin}: DECLARE[{quote(key)}] raised {describe(exc)}") from None
        returns = [str(r.type) for r in func._schema.returns]
        if not returns:
            return None
        checks = [_expected(t) for t in returns]
        if len(returns) > 1 and isinstance(out, (list, tuple)) and len(out) == len(returns):
            out, values = tuple(out), list(out)
        else:
            values = [out]
        if len(values) != len(returns) or any(c and not c[1](v) for c, v in zip(checks, values)):
            want = " and ".join(c[0] if c else t for c, t in zip(checks, returns)) or "nothing"
            if len(returns) > 1:
                want = f"a tuple of {want}"
            raise PlannerError(
                f"{self.origin}: DECLARE[{quote(key)}] returned {type(out).__name__}, but {_op_name(func)} "
                f"returns {want} (e.g. torch.empty(shape, dtype=..., device=x.device))"
            )
        return out


# --- where it failed -----------------------------------------------------------------------


def _note(exc: BaseException, op: str, module: str) -> None:
    if getattr(exc, _SITE, None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, _SITE, (op, module))


class OpSite(TorchDispatchMode):
    """Notes on an exception the op and the module it came from, before the module stack
    unwinds (ModuleContext's hooks pop it as the exception leaves each forward).

    An op that fails is noted with ``modules.current()``; an exception that does not come
    from an op (a compiled extension's own check) gets the innermost module it leaves,
    through a global forward hook that runs on the way out (``always_call``). Enter it
    last, so that it sees the op the user's code called (``aten::index`` for ``x[mask]``)."""

    def __init__(self, modules: ModuleContext | None = None) -> None:
        super().__init__()
        self.modules = modules
        self._hook: Any = None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        try:
            return func(*args, **(kwargs or {}))
        except Exception as exc:
            _note(exc, _op_name(func) if hasattr(func, "_schema") else str(func), self._module())
            raise

    def _module(self) -> str:
        return self.modules.current()[1] if self.modules is not None else ""

    def _leaving(self, mod: torch.nn.Module, *_: Any) -> None:
        exc = sys.exc_info()[1]  # set while _call_impl runs always_call hooks for an exception
        info = self.modules.names.get(id(mod)) if self.modules is not None else None
        if exc is not None and info is not None:
            _note(exc, "", info[1])

    def __enter__(self) -> "OpSite":
        from torch.nn.modules import module as m

        if self.modules is not None:
            self._hook = m.register_module_forward_hook(self._leaving, always_call=True)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        try:
            return super().__exit__(*exc)
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None


# --- the one line ---------------------------------------------------------------------------

_UNIQUE = "lambda x, *a, **k: (x.new_empty(N), x.new_empty(0).long(), x.new_empty(0).long())"
# op -> (what the user's code called, a declaration); N: a typical size
_HINTS = {
    "aten::nonzero": ("", "lambda x: torch.empty(N, x.dim(), dtype=torch.long, device=x.device)"),
    "aten::index": (" (boolean-mask indexing x[mask])", "lambda x, idx: x.new_empty(N, *x.shape[idx[0].dim():])"),
    "aten::masked_select": ("", "lambda x, mask: x.new_empty(N)"),
    "aten::repeat_interleave": (" (repeat_interleave with tensor repeats)", "lambda r, *a, **k: r.new_empty(N)"),
    "aten::_local_scalar_dense": (" (.item(), bool(t), int(t), float(t) or an if on a tensor)", "lambda x: 0"),
    "aten::_unique2": (" (torch.unique)", _UNIQUE),
    "aten::unique_dim": (" (torch.unique with dim)", _UNIQUE),
    "aten::unique_consecutive": ("", _UNIQUE),
}


def _schema_hint(op: str) -> str:
    """A declaration shaped like the op's returns: ``lambda x, *a, **k: x.new_empty(N)``."""
    returns = ["Tensor"]
    m = _KEY.match(op)
    with contextlib.suppress(AttributeError, RuntimeError, TypeError):
        packet = getattr(getattr(torch.ops, m.group(1)), m.group(2))  # type: ignore[union-attr]
        returns = [str(r.type) for r in getattr(packet, packet.overloads()[0])._schema.returns]
    values = ["x.new_empty(N)" if t == "Tensor" else "True" if t == "bool" else "0" for t in returns]
    body = values[0] if len(values) == 1 else f"({', '.join(values)})"
    return f"lambda x, *a, **k: {body}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _classify(exc: BaseException) -> tuple[str, str] | None:
    """(kind, op) for the exceptions of this family; op may be '' (not known)."""
    from planner.measure.values import DataDependentSize

    if isinstance(exc, DataDependentSize):
        return "size", "aten::_local_scalar_dense"
    if isinstance(exc, DynamicOutputShapeException):
        return "shape", _op_name(exc.func)
    if isinstance(exc, DataDependentOutputException):
        return "value", _op_name(exc.func)
    if isinstance(exc, UnsupportedOperatorException):
        return "kernel", _op_name(exc.func)
    if isinstance(exc, UnsupportedFakeTensorException):
        return "fake", ""
    if isinstance(exc, (RuntimeError, NotImplementedError)):
        m = _NO_FAKE_IMPL.search(str(exc)) or _NO_META.search(str(exc))
        if m:
            return "kernel", m.group(1)
    if (uses_cuda(exc) or _CUDA_WORD.search(message(exc))) and _raised_by_user_code(exc):
        return "cuda", ""
    return None


def _raised_by_user_code(exc: BaseException) -> bool:
    """The innermost Python frame is the user's: raised there, or by a compiled extension it
    called (torch's own CUDA errors come from torch's frames and are not this family)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or frames[-1].filename.startswith("<"):
        return False
    return not str(Path(frames[-1].filename).resolve()).startswith(_library_dirs())


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and not any(e is exc for e in seen) and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return seen


def explain(exc: BaseException, where: OpSite | str | None = None, origin: str = "step") -> PlannerError | None:
    """One line for an op the trace cannot run, or None when ``exc`` is something else.

    ``where``: the :class:`OpSite` that watched the run (it noted the op and module on the
    exception), or a module path to name. ``origin``: ``"step"`` or ``"--model"``, the
    message's prefix and where ``DECLARE`` goes."""
    chain = _chain(exc)
    found = next(((e, c) for e in chain if (c := _classify(e)) is not None), None)
    if found is None:
        return None
    err, (kind, op) = found
    site_op, module = next((getattr(e, _SITE) for e in (err, *chain) if getattr(e, _SITE, None)), ("", ""))
    if site_op and not site_op.startswith("prim::") and kind not in ("cuda", "size"):
        op = site_op  # what the user's code called: aten::index for x[mask], not its inner nonzero
    module = module or (where if isinstance(where, str) else "")
    line = user_frame(err) or user_frame(exc)
    at = ", ".join(p for p in (f"in {module}" if module else "", f"at {line}" if line else "") if p)
    at = f" ({at})" if at else ""
    declare_in = "the step file" if origin == "step" else "the model's file"
    what, hint = _HINTS.get(op, ("", None))
    name = op or "an operator"
    declare = f'DECLARE = {{"{op or "namespace::op"}": {hint or _schema_hint(op)}}}'
    if kind == "size":
        text = (f"a size computed from a value read from data (.item() at {err.read_at}) reaches {err.func}{at}, "
                f"and a trace without data cannot know it; declare a typical value in {declare_in}: "
                f'DECLARE = {{"aten::_local_scalar_dense": lambda x: N}}')
    elif kind == "shape":
        text = (f"{name}{what} has a data-dependent output shape, which a trace without data cannot know{at}; "
                f"declare its output (N: a typical size) in {declare_in}: {declare}")
    elif kind == "value" and op == "aten::_local_scalar_dense":
        text = (f"{name}{what} reads a tensor's value, which a trace without data does not have{at}; "
                f"declare a typical value in {declare_in}: {declare}")
    elif kind == "value":
        text = (f"{name}{what} returns a result computed from tensor values, which a trace without data does not "
                f"have{at}; declare a typical result in {declare_in}: {declare}")
    elif kind == "kernel":
        register = "" if op.startswith(("aten::", "prims::")) or not op else " or register one with torch.library.register_fake"
        text = f"{name} has no fake (meta) kernel{at}; declare its output (N: a typical size) in {declare_in}: {declare}{register}"
    elif kind == "fake":
        text = (f"a tensor cannot be traced without data ({quote(getattr(err, 'reason', ''))}){at}; "
                f"keep such tensors (quantized ones) out of the traced step, or create them inside it")
    else:  # cuda
        text = (f"the {'step' if origin == 'step' else 'model'} needs CUDA outside torch's operators "
                f"({type(err).__name__}: {_clip(message(err), 60)}), which this CPU-only trace cannot run{at}; "
                f"wrap the extension's call in a custom op (torch.library.custom_op) and declare that op's output "
                f"in {declare_in} (DECLARE), or use --backend cuda on a GPU")
    return PlannerError(f"{origin}: {text}")
