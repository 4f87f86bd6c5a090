"""Values that do not depend on data stay real values in a trace without data.

A trace runs on fake tensors: shapes, no values. Library code also inspects tensors it built
from Python numbers -- MONAI's ``SwinUNETR.__init__`` reads ``torch.linspace(0, rate, depth)``
with ``.item()``, MONAI's Dice losses reduce over ``torch.arange(2, ndim).tolist()``,
transformers build position ids with ``torch.arange`` -- and a real run has those values.
:class:`KnownValues` keeps them.

* **Known values.** Beside every fake tensor whose value follows from Python numbers alone
  (factories with no random draw: ``arange``, ``linspace``, ``tensor``, ``ones``/``zeros``/
  ``full``, ``eye`` ...; then any deterministic op whose tensor inputs are all known:
  arithmetic, indexing, views, reductions, ``nonzero``, ``unique``), a real CPU tensor holds
  its value, computed by running the same aten op on the real inputs. The fake tensor is
  still made by FakeTensorMode, so the byte count is the trace's as before: such a tensor
  costs device memory where the real run allocates it on the device. Views of a known tensor
  are real views of its value, so an in-place write with known inputs updates every alias;
  a write whose inputs are not all known makes every tensor on that storage unknown (the
  bookkeeping torch's own ``FakeTensorConverter.invalidate_constant_aliases`` does for its
  numel-1 constants, ``torch/_subclasses/fake_tensor.py``). A whole overwrite (``fill_``,
  ``zero_``, ``copy_`` from a known source) makes its target known. Values are kept up to
  :data:`VALUE_LIMIT` elements; a larger tensor is left without one.
* **Reading a known value** (``.item()``, ``.tolist()``, ``int(t)``, ``bool(t)``, an ``if`` on a
  tensor: all ``aten::_local_scalar_dense``) gives the real value, and ops whose output *shape*
  depends on values (``nonzero``, ``unique``, ``masked_select``, ``x[mask]``, ``equal``) run on
  the known values and return a fake tensor of the real shape.
* **Stand-ins.** A value that really depends on data (``loss.item()`` for logging, an
  ``isnan`` check, a random draw tested in an initialisation loop) gets a stand-in --
  ``False`` for a boolean (``True`` where it comes from ``all``/``isfinite``/``equal``/
  ``allclose``: the healthy answer of a check), ``1`` for an integer, ``1.0`` for a float --
  and :meth:`KnownValues.notes` names each line that used one (the user's line and the
  library's). A *shape* that depends on data stays a stop (``declared_ops.explain``).

Enter it directly after (inside) ``FakeTensorMode``, below every other mode, so that it sees
every op that reaches the fake kernels, including ``torch.utils.checkpoint``'s recomputation.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
)
from torch.utils._mode_utils import no_dispatch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

VALUE_LIMIT = 1 << 20
"""The largest tensor (elements) whose value is kept: 8 MB of int64 on the host. Position
tables and masks built from Python numbers are far smaller (SwinUNETR's 7x7x7 window index:
343**2 = 117,649); a larger constant is left without a value."""

_TRUE_WHEN_UNKNOWN = frozenset({"all", "isfinite", "equal", "allclose", "is_nonzero"})
"""Producers whose stand-in is True: the answer of a check on a healthy run."""

_OURS = str(Path(__file__).resolve().parents[1]) + "/"
_TORCH = str(Path(torch.__file__).resolve().parent) + "/"
_TORCH_API = ("nn/init.py", "nn/functional.py", "nn/utils/", "nn/modules/loss.py", "optim/", "functional.py",
              "distributions/", "amp/", "utils/checkpoint.py", "distributed/")
"""torch's own code a stand-in can be read in (a library line worth naming); the rest of torch is
the dispatch machinery between the user's line and this mode."""
_VALUE, _PRODUCER = "_vramplan_value", "_vramplan_producer"  # attributes on a fake tensor: its real
# value; the op that made a one-element tensor without one (for its stand-in)
_SCALAR = torch.ops.aten._local_scalar_dense.default
_OVERWRITES = frozenset({"fill_", "zero_", "copy_", "full_like", "fill"})


_WRITES: dict[Any, tuple[tuple[int, str, bool], ...]] = {}
_UNKNOWN_OUTPUT: dict[Any, bool] = {}
_UNINITIALISED = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                            "empty_permuted"})
_METADATA = frozenset({torch.ops.prim.device.default, torch.ops.aten.sym_size.int, torch.ops.aten.sym_stride.int,
                       torch.ops.aten.sym_numel.default, torch.ops.aten.sym_storage_offset.default})


def _leaves(value: Any, out: list) -> list:
    """The tensors in an op's arguments (tensors, lists and tuples of them, a dict of kwargs)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _leaves(v, out)
    return out


def _map(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _schema_writes(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors ``func`` writes to (``Tensor(a!)`` arguments, ``out=``)."""
    spec = _WRITES.get(func)
    if spec is None:
        schema = getattr(func, "_schema", None)
        spec = tuple(
            (i, a.name, a.kwarg_only) for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        ) if schema is not None and schema.is_mutable else ()
        _WRITES[func] = spec
    written: list[torch.Tensor] = []
    for i, name, kwarg_only in spec:
        _leaves(kwargs.get(name) if kwarg_only or i >= len(args) else args[i], written)
    return written


def _unknown_output(func: Any) -> bool:
    """Ops whose output values do not follow from their inputs: random draws, uninitialised memory."""
    hit = _UNKNOWN_OUTPUT.get(func)
    if hit is None:
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else ""
        hit = torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()) or name in _UNINITIALISED
        _UNKNOWN_OUTPUT[func] = hit
    return hit


class KnownValues(TorchDispatchMode):
    """Real values beside fake tensors whose value follows from Python numbers (module doc)."""

    def __init__(self, declared: Any = ()) -> None:
        super().__init__()
        # the user's DECLARE answers instead of a stand-in
        self._declared = any(str(k).startswith("aten::_local_scalar_dense") for k in declared)
        # id(fake storage) -> its write generation: a value is valid while the generation it was
        # taken at is current (no reference to any tensor is kept: a weakref would stop
        # torch.utils.swap_tensors, which .half()/.to() use on parameters)
        self._generation: dict[int, int] = {}
        self.standins: Counter[tuple[str, str, str]] = Counter()  # (user line, library line, value) -> uses
        self.last_int: DataInt | None = None  # the latest integer stand-in (SizeGuard marks what Python got)

    # -- bookkeeping -----------------------------------------------------------------------
    def value(self, t: Any) -> torch.Tensor | None:
        """The real value of ``t`` (a fake tensor this mode saw made, or a real tensor), or None."""
        if not isinstance(t, torch.Tensor):
            return None
        if isinstance(t, FakeTensor):
            entry = getattr(t, _VALUE, None)
            if entry is None:
                return None
            key, generation, real = entry
            st = id(t.untyped_storage())
            ok = key == st and generation == self._generation.get(st, 0) and real.dtype == t.dtype
            return real if ok else None
        # a plain tensor is its own value; a wrapper subclass (DTensor, a functional tensor) is not
        # computed on (no_dispatch on a wrapper subclass can crash the process)
        return t if type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" else None

    def _set(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        if not isinstance(fake, FakeTensor) or real.numel() > VALUE_LIMIT or fake.shape != real.shape:
            return
        st = id(fake.untyped_storage())
        setattr(fake, _VALUE, (st, self._generation.get(st, 0), real))

    def _forget(self, fake: torch.Tensor) -> None:
        """``fake`` and every tensor sharing its storage lose their values."""
        if isinstance(fake, FakeTensor):
            st = id(fake.untyped_storage())
            self._generation[st] = self._generation.get(st, 0) + 1

    # -- dispatch ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is _SCALAR:
            return self._scalar(args[0])
        if func in _METADATA:
            return func(*args, **kwargs)
        tensors = _leaves(kwargs, _leaves(args, []))
        known = not _unknown_output(func) and all(self.value(t) is not None for t in tensors)
        try:
            out = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            if not (known and tensors):
                raise
            return self._from_values(func, args, kwargs, tensors)
        written = _schema_writes(func, args, kwargs)
        if known and self._small(out):
            self._compute(func, args, kwargs, out, written)
            return out
        for t in written:
            self._forget(t)
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else ""
        if name in _OVERWRITES and written and all(
            self.value(t) is not None for t in tensors if not any(t is w for w in written)
        ):
            self._overwrite(func, args, kwargs, written[0])  # overwritten whole from known inputs
        elif isinstance(out, FakeTensor) and out.numel() == 1:
            setattr(out, _PRODUCER, name)
        return out

    @staticmethod
    def _small(out: Any) -> bool:
        return all(t.numel() <= VALUE_LIMIT for t in _leaves(out, []))

    def _real_args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs = _map((args, kwargs), self.value)
        if isinstance(kwargs.get("device"), (torch.device, str)):
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return args, kwargs

    def _run_real(self, func: Any, args: tuple, kwargs: dict) -> Any:
        real_args, real_kwargs = self._real_args(args, kwargs)
        with no_dispatch(), torch.no_grad():
            return func(*real_args, **real_kwargs)

    def _compute(self, func: Any, args: tuple, kwargs: dict, out: Any, written: list[torch.Tensor]) -> None:
        try:
            real_out = self._run_real(func, args, kwargs)
        except Exception:  # noqa: BLE001 - a value we cannot compute is simply not known
            for t in written:
                self._forget(t)
            return
        fakes, reals = _leaves(out, []), _leaves(real_out, [])
        if len(fakes) != len(reals):
            return
        for f, r in zip(fakes, reals):
            if isinstance(f, FakeTensor) and isinstance(r, torch.Tensor) and self.value(f) is None:
                self._set(f, r)

    def _overwrite(self, func: Any, args: tuple, kwargs: dict, target: torch.Tensor) -> None:
        if not isinstance(target, FakeTensor) or target.numel() > VALUE_LIMIT:
            return
        with no_dispatch():
            blank = torch.empty(target.shape, dtype=target.dtype)
        self._set(target, blank)  # the prior value does not matter: it is overwritten whole
        try:
            self._run_real(func, args, kwargs)
        except Exception:  # noqa: BLE001
            self._forget(target)

    def _from_values(self, func: Any, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> Any:
        """An op whose output shape (or value) depends on values, run on the known values."""
        real_out = self._run_real(func, args, kwargs)
        mode = next((t.fake_mode for t in tensors if isinstance(t, FakeTensor)), None)
        if mode is None:
            return real_out

        def fake(r: torch.Tensor) -> torch.Tensor:
            with no_dispatch():
                copy = r.clone()
            f = mode.fake_tensor_converter.from_real_tensor(mode, copy)
            self._set(f, r)
            return f

        return _map(real_out, fake)

    # -- reading values ---------------------------------------------------------------------
    def _scalar(self, t: torch.Tensor) -> Any:
        v = self.value(t)
        if v is not None:
            with no_dispatch():
                return v.item()
        if self._declared:
            raise DataDependentOutputException(_SCALAR)
        user, lib = self._lines()
        if t.dtype == torch.bool:
            stand_in: Any = getattr(t, _PRODUCER, None) in _TRUE_WHEN_UNKNOWN
        elif t.dtype.is_floating_point or t.dtype.is_complex:
            stand_in = 1.0
        else:
            stand_in = self.last_int = DataInt(1, " via ".join(p for p in (user, lib) if p))
        self.standins[(user, lib, repr(stand_in))] += 1
        return stand_in

    def _lines(self) -> tuple[str, str]:
        """(the user's innermost line, the innermost library line below it) at this call."""
        return user_and_library_lines(traceback.extract_stack())

    def notes(self) -> list[str]:
        """One line per place that used a stand-in value, for the report."""
        out = []
        for (user, lib, value), n in sorted(self.standins.items(), key=lambda kv: -kv[1]):
            where = " via ".join(p for p in (user, lib) if p) or "an unknown line"
            times = f" ({n} reads)" if n > 1 else ""
            out.append(f"stand-in value {value} for a tensor value that depends on data, read at {where}{times}: "
                       f"the trace has no data; memory does not depend on it unless a shape does")
        return out


class DataInt(int):
    """An integer stand-in for a value read from data. Arithmetic keeps the mark, so that
    :class:`SizeGuard` sees it where the code then uses it as a size."""

    read_at: str

    def __new__(cls, value: int, read_at: str = "") -> "DataInt":
        obj = super().__new__(cls, value)
        obj.read_at = read_at
        return obj

    def __repr__(self) -> str:
        return int.__repr__(self)

    def _wrap(self, value: Any) -> Any:
        return DataInt(value, self.read_at) if type(value) is int else value


def _keep_mark(name: str) -> Any:
    base = getattr(int, name)

    def op(self: DataInt, *other: Any) -> Any:
        return self._wrap(base(self, *other))

    op.__name__ = name
    return op


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__rfloordiv__",
              "__mod__", "__rmod__", "__pow__", "__neg__", "__pos__", "__abs__", "__lshift__", "__rshift__"):
    setattr(DataInt, _name, _keep_mark(_name))


class DataDependentSize(RuntimeError):
    """A size computed from a stand-in (:class:`DataInt`) reached a torch function."""

    def __init__(self, func: str, read_at: str) -> None:
        super().__init__(f"{func} got a size computed from a value read from data at {read_at or 'an unknown line'}")
        self.func, self.read_at = func, read_at


_VALUE_USES = frozenset({
    # torch functions that take a Python number as a value, never as a size or an index
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow", "rsub", "clamp", "clip",
    "clamp_min", "clamp_max", "maximum", "minimum", "where", "masked_fill", "fill_", "fill", "full_like", "lerp",
    "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt", "ge", "tensor", "as_tensor", "scalar_tensor", "isclose",
    "add_", "sub_", "mul_", "div_", "pow_", "clamp_", "masked_fill_", "lerp_", "addcmul_", "addcdiv_",
})


_READS = frozenset({torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__index__})
"""Where Python gets a tensor's value and keeps the int it was given (``int(t)`` converts a subclass
of int back to a plain int, so a size made with ``int(t)`` is not caught: the stand-in note names
the line all the same)."""


class SizeGuard(TorchFunctionMode):
    """Stops where a :class:`DataInt` reaches a torch function as anything but a value (a size,
    a shape, a dimension, an index): memory would follow the stand-in, not the data.

    The mark is put on where Python reads the value (``.item()``, ``.tolist()``, ``__index__``):
    the dispatcher's own return goes through a C++ scalar and would lose it (``int(t)`` turns a
    subclass of int back into a plain int, so it keeps no mark)."""

    def __init__(self, values: KnownValues) -> None:
        super().__init__()
        self.values = values

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _READS:
            before = self.values.last_int
            out = func(*args, **kwargs)
            mark = self.values.last_int
            if mark is not before and mark is not None:
                return _map_ints(out, mark.read_at)
            return out
        mark = _data_int(args)
        if mark is None:  # (a DataInt of 0 is falsy: no `or` here)
            mark = _data_int(kwargs)
        if mark is not None:
            name = getattr(func, "__name__", str(func))
            if name.startswith("__"):  # Tensor.__mul__ / __rmul__ ...: the operator's name
                op = name.strip("_")
                name = op if op in _VALUE_USES else op.removeprefix("r")
            if name not in _VALUE_USES:
                raise DataDependentSize(getattr(func, "__name__", str(func)), mark.read_at)
        return func(*args, **kwargs)


def _map_ints(value: Any, read_at: str) -> Any:
    if type(value) is int:
        return DataInt(value, read_at)
    if isinstance(value, list):
        return [_map_ints(v, read_at) for v in value]
    return value


def _data_int(value: Any, depth: int = 0) -> DataInt | None:
    if isinstance(value, DataInt):
        return value
    if isinstance(value, slice):
        return _data_int((value.start, value.stop, value.step), depth)
    if depth < 2 and isinstance(value, (list, tuple)):
        return next((m for v in value if (m := _data_int(v, depth + 1)) is not None), None)
    if depth < 2 and isinstance(value, dict):
        return next((m for v in value.values() if (m := _data_int(v, depth + 1)) is not None), None)
    return None


def user_and_library_lines(frames: list) -> tuple[str, str]:
    """(the user's innermost ``file:line``, the innermost installed-library line below it) among
    ``frames`` (outermost first: ``traceback.extract_stack()``/``extract_tb``); vramplan's frames and
    torch's dispatch machinery (modes, fake tensors, dynamo wrappers) are passed over, torch's own
    API files (``nn/init.py``, ``nn/functional.py`` ...) count as a library."""
    from planner.measure.user_code import _library_dirs, _short

    lib_dirs = _library_dirs()
    user = lib = ""
    for f in reversed(frames):
        if f.filename.startswith("<frozen"):
            continue
        path = f.filename if f.filename.startswith("<") else str(Path(f.filename).resolve())
        if path.startswith(_OURS) or (path.startswith(_TORCH) and not path[len(_TORCH):].startswith(_TORCH_API)):
            continue
        if path.startswith(lib_dirs) and not path.startswith("<"):
            lib = lib or f"{_short(f.filename)}:{f.lineno}"
        else:
            user = f"{_short(f.filename)}:{f.lineno}"
            break
    return user, lib


def active_notes() -> list[str]:
    """The stand-in notes of the :class:`KnownValues` mode on the dispatch-mode stack (none: [])."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return [n for m in _get_current_dispatch_mode_stack() if isinstance(m, KnownValues) for n in m.notes()]


@contextlib.contextmanager
def fake_mode_with_values(fake: Any, declared: Any = None) -> Iterator[Any]:
    """``fake`` (a FakeTensorMode) with :class:`KnownValues` directly inside it; ``declared``: the
    step file's DECLARE table (a declared ``aten::_local_scalar_dense`` answers instead of a stand-in)."""
    values = KnownValues(declared or ())
    with fake, values, SizeGuard(values):
        yield fake
