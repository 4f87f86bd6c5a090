"""planner/records.py's dataclass behaves as the standard library's (it only compiles fewer methods)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from planner import records


def _pair(**kw):
    """The same class body made by the standard dataclass and by records.dataclass."""

    def body():
        class Point:
            x: int
            y: str = "a"
            hidden: int = dataclasses.field(default=0, repr=False)
            loose: float = dataclasses.field(default=0.0, compare=False)
            unhashed: int = dataclasses.field(default=0, hash=False)

        return Point

    return dataclasses.dataclass(**kw)(body()), records.dataclass(**kw)(body())


@pytest.mark.parametrize("kw", [{}, {"frozen": True}, {"eq": False}, {"frozen": True, "eq": False},
                                {"unsafe_hash": True}, {"repr": False}])
def test_records_dataclass_behaves_as_the_standard_one(kw):
    std, ours = _pair(**kw)
    for a, b in [((1, "b", 5, 2.5, 7), (1, "b", 6, 9.5, 8)), ((1,), (2,))]:
        s1, s2, o1, o2 = std(*a), std(*b), ours(*a), ours(*b)
        if kw.get("repr", True):  # Point(x=1, y='b', loose=2.5, unhashed=7): `hidden` has repr=False
            assert repr(o1) == repr(s1)
        else:  # object's repr, with the address
            assert repr(o1).startswith("<") and " object at 0x" in repr(o1)
        assert (o1 == o2) == (s1 == s2)
        assert (o1 == ours(*a)) == (s1 == std(*a))
        assert (o1 != o2) == (s1 != s2)
        assert o1.__eq__("other") is s1.__eq__("other")  # NotImplemented with eq, else object's
        assert (std.__hash__ is None) == (ours.__hash__ is None)
        if std.__hash__ is not None and std.__hash__ is not object.__hash__:
            assert hash(o1) == hash(s1)  # the same tuple of the same fields
    if std.__hash__ is not None and std.__hash__ is not object.__hash__:
        # hashed: x, y, hidden; not `loose` (compare=False) nor `unhashed` (hash=False)
        assert hash(ours(1, "b", 5, 2.5, 7)) == hash(ours(1, "b", 5, 99.0, -5)) == hash((1, "b", 5))
        assert hash(ours(1, "b", 5)) != hash(ours(1, "b", 6))
    assert dataclasses.is_dataclass(ours)
    assert [f.name for f in dataclasses.fields(ours)] == [f.name for f in dataclasses.fields(std)]
    o = ours(3)
    assert dataclasses.asdict(o) == dataclasses.asdict(std(3))
    assert dataclasses.replace(o, x=4).x == 4
    if kw.get("frozen"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            o.x = 5  # type: ignore[misc]
    params_std, params_ours = std.__dataclass_params__, ours.__dataclass_params__
    for name in ("init", "repr", "eq", "order", "unsafe_hash", "frozen"):
        assert getattr(params_ours, name) == getattr(params_std, name), name


def test_records_dataclass_keeps_what_the_class_defines_and_guards_recursion():
    @records.dataclass(frozen=True)
    class Own:
        a: int

        def __repr__(self) -> str:
            return "own"

        def __hash__(self) -> int:
            return 7

    assert repr(Own(1)) == "own" and hash(Own(1)) == 7 and Own(1) == Own(1) and Own(1) != Own(2)

    @records.dataclass
    class Node:
        child: object = None

    n = Node()
    n.child = n
    assert repr(n).endswith(".Node(child=...)")  # reprlib.recursive_repr, as dataclass's own __repr__

    @records.dataclass(frozen=True)
    class Base:
        a: int

    class Sub(Base):  # not decorated: inherits Base's methods, as with the standard dataclass
        pass

    assert repr(Sub(1)).endswith(".Sub(a=1)") and Sub(1) != Base(1) and Sub(1) == Sub(1)
    with pytest.raises(TypeError, match="Cannot overwrite attribute __hash__"):
        records.dataclass(unsafe_hash=True)(type("H", (), {"__annotations__": {"a": "int"}, "__hash__": lambda s: 1}))


def test_a_project_setup_made_by_records_pickles_compares_and_hashes():
    """The worker pool (planner/measure/isolate.py) sends setups to its processes by pickle."""
    from planner.config import Overrides, resolve_setup

    setup = resolve_setup(None, Overrides(voxel="64x64x32"))
    back = pickle.loads(pickle.dumps(setup))
    assert back == setup and hash(back) == hash(setup)
    assert dataclasses.replace(setup, kind="ldm-stage2") != setup
    assert repr(setup).startswith("TrainingSetup(kind='ldm-stage1', ")
