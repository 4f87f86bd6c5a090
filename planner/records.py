"""``dataclass`` with ``__repr__``, ``__eq__`` and ``__hash__`` shared instead of compiled per class.

Python 3.11's ``dataclasses.dataclass`` compiles each method it adds from source, one ``exec``
per method (``dataclasses.py`` ``_create_fn``); a frozen class gets six (``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``), about 0.15 ms each on
the build machine. ``vramplan estimate`` imports 29 dataclasses, and compiling their methods
was about 20 ms of its ~160 ms CPU time (``benchmarks/speed.py --breakdown``; issue 23, start-up).

:func:`dataclass` here is ``dataclasses.dataclass`` with ``repr=False, eq=False`` passed down (so
only ``__init__``, and for a frozen class ``__setattr__``/``__delattr__``, are compiled); it then
sets ``__repr__``, ``__eq__`` and ``__hash__`` to the shared functions below, which do what the
generated ones do (``dataclasses.py`` ``_repr_fn``, ``_cmp_fn``, ``_hash_fn`` and the
``_hash_action`` table): the fields with ``repr=True`` as ``Name(a=1, b='x')`` (guarded against
recursion), equality of the ``compare`` fields' tuples for two instances of the same class,
``__hash__`` of the hashed fields where the class is frozen, ``None`` (unhashable) where it is
not, and whatever the class defines itself kept. ``dataclasses.fields``, ``replace``, ``asdict``
and ``is_dataclass`` see an ordinary dataclass. Torch-free (the estimate CLI imports it).
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
from typing import Any, Callable


def dataclass(cls: type | None = None, /, *, repr: bool = True, eq: bool = True, frozen: bool = False,
              unsafe_hash: bool = False, **kw: Any) -> Any:
    """Drop-in for ``dataclasses.dataclass`` (same arguments; see the module's docstring)."""

    def wrap(c: type) -> type:
        # what dataclass would do for a __hash__ the class body sets (dataclasses.py _process_class:
        # a body that defines __eq__ alone gets __hash__ = None from Python, which is not explicit)
        body_hash = c.__dict__.get("__hash__", dataclasses.MISSING)
        explicit_hash = not (body_hash is dataclasses.MISSING or (body_hash is None and "__eq__" in c.__dict__))
        own_repr, own_eq = "__repr__" in c.__dict__, "__eq__" in c.__dict__
        c = dataclasses.dataclass(c, repr=False, eq=False, frozen=frozen, unsafe_hash=False, **kw)
        fields = dataclasses.fields(c)
        if repr and not own_repr:
            c.__record_repr__ = tuple(f.name for f in fields if f.repr)  # type: ignore[attr-defined]
            c.__repr__ = _repr  # type: ignore[method-assign]
        if eq and not own_eq:
            c.__record_key__ = _getter(tuple(f.name for f in fields if f.compare))  # type: ignore[attr-defined]
            c.__eq__ = _eq  # type: ignore[method-assign]
        # dataclasses.py _hash_action, keyed (unsafe_hash, eq, frozen, explicit hash)
        if unsafe_hash and explicit_hash:
            raise TypeError(f"Cannot overwrite attribute __hash__ in class {c.__name__}")
        if unsafe_hash or (eq and frozen and not explicit_hash):
            hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
            c.__record_hash__ = _getter(hashed)  # type: ignore[attr-defined]
            c.__hash__ = _hash  # type: ignore[method-assign]
        elif eq and not frozen and not explicit_hash:
            c.__hash__ = None  # type: ignore[assignment]
        params = c.__dataclass_params__  # type: ignore[attr-defined]
        params.repr, params.eq, params.unsafe_hash = repr, eq, unsafe_hash  # as dataclass records them
        return c

    return wrap if cls is None else wrap(cls)


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple]:
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        one = names[0]
        return lambda self: (getattr(self, one),)
    return lambda self: ()


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in type(self).__record_repr__)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        key = type(self).__record_key__
        return key(self) == key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(type(self).__record_hash__(self))
