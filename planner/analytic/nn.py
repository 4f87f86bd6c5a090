"""Symbolic modules: parameters and forward code that mirror the torch modules line by line.

Local variables in ``forward`` live exactly as long as in the real code, so the
liveness of activations comes out of CPython's reference counting. Module paths
match ``named_modules()`` of the real networks (the profiler reports the same names).
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Iterator, Sequence

from planner.analytic import ops as O
from planner.analytic.engine import Sim, T


class Mod:
    attention = False  # counts as the 'attention' network in the breakdown

    def __init__(self) -> None:
        self.path = ""
        self.root = ""
        self.children: dict[str, Mod] = {}
        self._params: list[T] = []
        self._buffers: list[T] = []

    # -- structure
    def add(self, name: str, m: "Mod") -> "Mod":
        self.children[name] = m
        return m

    def param(self, sim: Sim, shape: Sequence[int], trainable: bool = True) -> T:
        t = sim.new(shape, "f32", "external")
        t.requires_grad = trainable
        t.is_param = True
        self._params.append(t)
        return t

    def buffer(self, sim: Sim, shape: Sequence[int], dtype: str = "f32") -> T:
        t = sim.new(shape, dtype, "external")
        self._buffers.append(t)
        return t

    def name_tree(self, root: str, path: str = "") -> None:
        self.root = root
        self.path = path or root
        for k, c in self.children.items():
            c.name_tree(root, f"{self.path}.{k}")

    def modules(self) -> Iterator["Mod"]:
        yield self
        for c in self.children.values():
            yield from c.modules()

    def parameters(self) -> list[T]:
        return [p for m in self.modules() for p in m._params]

    def buffers(self) -> list[T]:
        return [b for m in self.modules() for b in m._buffers]

    # -- calling
    def __call__(self, *args: Any, **kw: Any) -> Any:
        stack = O.S.mem.module_stack
        stack.append((self.root, self.path, self.attention or (bool(stack) and stack[-1][2])))
        try:
            return self.forward(*args, **kw)
        finally:
            stack.pop()

    def forward(self, *args: Any, **kw: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class Identity(Mod):
    def forward(self, x: T) -> T:
        return x


class ConvNd(Mod):
    def __init__(self, sim: Sim, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True, dims: int = 3, trainable: bool = True):
        super().__init__()
        self.weight = self.param(sim, (cout, cin, *([k] * dims)), trainable)
        self.bias = self.param(sim, (cout,), trainable) if bias else None
        self.stride, self.padding = stride, padding
        self.cout = cout

    def forward(self, x: T) -> T:
        return O.conv(x, self.weight, self.bias, self.stride, self.padding)


class MonaiConvolution(Mod):
    """monai.networks.blocks.Convolution, conv_only (the conv is the child 'conv')."""

    def __init__(self, sim: Sim, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True, dims: int = 3):
        super().__init__()
        self.conv = self.add("conv", ConvNd(sim, cin, cout, k, stride, padding, bias, dims))

    def forward(self, x: T) -> T:
        return self.conv(x)


class GroupNorm(Mod):
    def __init__(self, sim: Sim, groups: int, channels: int):
        super().__init__()
        self.groups = groups
        self.weight = self.param(sim, (channels,))
        self.bias = self.param(sim, (channels,))

    def forward(self, x: T) -> T:
        return O.group_norm(x, self.groups, self.weight, self.bias)


class Linear(Mod):
    def __init__(self, sim: Sim, cin: int, cout: int, bias: bool = True):
        super().__init__()
        self.weight = self.param(sim, (cout, cin))
        self.bias = self.param(sim, (cout,)) if bias else None

    def forward(self, x: T, contiguous: bool = True) -> T:
        return O.linear(x, self.weight, self.bias, contiguous)


class BatchNorm(Mod):
    def __init__(self, sim: Sim, channels: int):
        super().__init__()
        self.weight = self.param(sim, (channels,))
        self.bias = self.param(sim, (channels,))
        self.running = [self.buffer(sim, (channels,)), self.buffer(sim, (channels,))]
        self.num_batches = self.buffer(sim, (), "i64")

    def forward(self, x: T) -> T:
        return O.batch_norm(x, self.weight, self.bias, self.running)


def numel(shape: Sequence[int]) -> int:
    return prod(shape)


Fn = Callable[..., Any]
