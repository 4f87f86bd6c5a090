"""A torch-free symbolic autograd engine that counts bytes.

Tensors here are shapes and dtypes (:class:`T`) backed by :class:`Storage` objects
whose lifetime is CPython's reference counting, exactly as a training script's
tensors are. Each aten-level op is a rule (:mod:`planner.analytic.ops`) that
allocates its outputs, records what autograd saves for backward
(``tools/autograd/derivatives.yaml``) and how its backward allocates. The backward
pass follows ``torch/csrc/autograd/engine.cpp`` on one device: a node runs when all
its gradient inputs are in; among ready nodes the highest sequence number runs first
(AccumulateGrad at once); a node's gradient inputs die after it runs and its saved
tensors are released (retain_graph=False); gradients for the same tensor are summed
in place when the buffer owns its storage alone, else out of place
(``InputBuffer::accumulate``); AccumulateGrad steals a dense gradient and clones an
expanded one (``accumulate_grad.h``). Non-reentrant gradient checkpointing
(``torch/utils/checkpoint.py``) stores holders instead of tensors and recomputes the
region when backward first needs one, stopping early once every holder is filled.

The memory accountant mirrors :mod:`planner.measure.tracker`: 512-byte rounding,
peak after every op, categories and networks for the breakdown.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from math import prod
from typing import Any, Callable, Iterable, Sequence

ITEMSIZE = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "u8": 1, "b8": 1, "u64": 8}
FLOAT = ("f64", "f32", "f16", "bf16")
BLOCK = 512  # c10/cuda/CUDACachingAllocator.cpp kMinBlockSize


def rounded(nbytes: int) -> int:
    return 0 if nbytes <= 0 else -(-nbytes // BLOCK) * BLOCK


# --- memory ------------------------------------------------------------------------------


class AllocInfo:
    """What one allocation was: its bytes (512-rounded) and where the step made it.

    A plain ``__slots__`` class (not a dataclass): the simulation makes one per
    allocation, ~6,400 per stage-1 estimate, and this is the cheapest to construct."""

    __slots__ = ("uid", "nbytes", "op", "phase", "network", "module", "step", "category")

    def __init__(self, uid: int, nbytes: int, op: str, phase: str, network: str, module: str, step: str,
                 category: str | None = None) -> None:
        self.uid = uid
        self.nbytes = nbytes
        self.op = op
        self.phase = phase
        self.network = network
        self.module = module
        self.step = step
        self.category = category

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"AllocInfo({self.uid}, {self.nbytes}, op={self.op!r}, phase={self.phase!r}, "
                f"network={self.network!r}, module={self.module!r}, category={self.category!r})")


class Memory:
    """Live bytes after every op; the peak's contents reconstructed from the event log."""

    def __init__(self) -> None:
        self._uids = itertools.count(1)
        self.current = 0
        self.peak = 0
        self.peak_event = -1
        self.events: list[tuple[int, int]] = []  # (uid, +bytes | -bytes)
        self.info: dict[int, AllocInfo] = {}
        self.peak_where = ("", "", "", "")
        self.measuring = False
        self.written = 0  # every byte allocated (the roofline model's memory traffic)
        # context for tags
        self.phase = "setup"
        self.step = ""
        self.network_hint = ""
        self.module_stack: list[tuple[str, str, bool]] = []
        self.op = ""

    def where(self) -> tuple[str, str]:
        if not self.module_stack:
            return self.network_hint, ""
        # entries carry the flag "this module or one around it is attention" (nn.Mod.__call__)
        root, path, att = self.module_stack[-1]
        return ("attention" if att else root), path

    def alloc(self, nbytes: int) -> int:
        # the hottest function of an estimate: rounded() and where() inlined
        uid = next(self._uids)
        b = 0 if nbytes <= 0 else -(-nbytes // BLOCK) * BLOCK
        stack = self.module_stack
        if stack:
            root, mod, att = stack[-1]
            net = "attention" if att else root
        else:
            net, mod = self.network_hint, ""
        self.info[uid] = AllocInfo(uid, b, self.op, self.phase, net, mod, self.step)
        if b:
            self.written += b
            events = self.events
            events.append((uid, b))
            cur = self.current = self.current + b
            if cur > self.peak:
                self.peak = cur
                self.peak_event = len(events) - 1
                self.peak_where = (self.op, self.phase, self.step, mod)
        return uid

    def free(self, uid: int) -> None:
        b = self.info[uid].nbytes
        if b:
            self.events.append((uid, -b))
            self.current -= b

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_event = len(self.events) - 1
        self.peak_where = ("reset", self.phase, self.step, "")

    def live_at_peak(self) -> list[AllocInfo]:
        live: dict[int, int] = {}
        for uid, d in self.events[: self.peak_event + 1]:
            if d > 0:
                live[uid] = d
            else:
                live.pop(uid, None)
        return [self.info[u] for u in live]


class Storage:
    __slots__ = ("mem", "uid", "nbytes", "__weakref__")

    def __init__(self, mem: Memory, nbytes: int) -> None:
        self.mem = mem
        self.nbytes = nbytes
        self.uid = mem.alloc(nbytes)

    def __del__(self) -> None:
        self.mem.free(self.uid)

    def resize(self, nbytes: int) -> None:
        """``UntypedStorage.resize_`` (FSDP2's free_storage / alloc_storage): the bytes go, or
        come back as a new allocation made now; every tensor on this storage sees it."""
        self.mem.free(self.uid)
        self.nbytes = nbytes
        self.uid = self.mem.alloc(nbytes)


# --- tensors ---------------------------------------------------------------------------


class T:
    """A symbolic tensor: shape, dtype, storage, autograd links."""

    __slots__ = ("shape", "dtype", "st", "requires_grad", "grad_fn", "out_nr", "grad", "dense", "contig", "cl", "is_param", "name", "__weakref__")

    def __init__(self, shape: Sequence[int], dtype: str, st: Storage | None, requires_grad: bool = False, dense: bool = True):
        self.shape = shape if type(shape) is tuple else tuple(shape)
        self.dtype = dtype
        self.st = st
        self.requires_grad = requires_grad
        self.grad_fn: Node | None = None
        self.out_nr = 0
        self.grad: T | None = None
        self.dense = dense  # False for expanded (stride-0) views
        self.contig = dense  # False for permuted/transposed views
        self.cl = False  # channels-last layout (what cuDNN, TensorIterator and pad propagate)
        self.is_param = False
        self.name = ""

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"T({list(self.shape)}, {self.dtype}{', grad' if self.requires_grad else ''})"


# --- autograd graph --------------------------------------------------------------------


class Node:
    __slots__ = ("name", "seq", "next_edges", "saved", "bwd", "holders", "frame", "meta", "pre_hooks", "__weakref__")

    def __init__(self, name: str, seq: int, next_edges: list, bwd: Callable, saved: tuple) -> None:
        self.meta: list = []  # per input: dtype the gradient must have (engine validate_outputs)
        self.name = name
        self.seq = seq
        self.next_edges = next_edges  # per differentiable input: (Node, out_nr) or None
        self.bwd = bwd
        self.saved = saved
        self.holders: list | None = None  # checkpointed: indices into the frame's holders
        self.frame: CheckpointFrame | None = None
        self.pre_hooks: list[Callable[[], None]] | None = None
        """``Tensor.register_hook`` on an output of this node: run when the node is about to run."""


class AccumulateGrad:
    __slots__ = ("var", "seq", "__weakref__")
    name = "AccumulateGrad"

    def __init__(self, var: T) -> None:
        self.var = var
        self.seq = 1 << 62  # UINT64_MAX in torch: runs as soon as it is ready


class CheckpointFrame:
    """torch.utils.checkpoint's _CheckpointFrame (non-reentrant, early stop)."""

    def __init__(self, recompute: Callable[[], Any], autocast: bool) -> None:
        self.recompute = recompute
        self.autocast = autocast  # the forward's autocast state, re-entered for recomputation
        self.holders: list[Any] = []  # filled by recomputation; None until then
        self.n_packed = 0
        self.recomputed = False


class _StopRecompute(Exception):
    pass


class Sim:
    """Global simulation state: memory, grad mode, autocast, checkpointing."""

    def __init__(self) -> None:
        self.mem = Memory()
        self.flops = 0  # conv/matmul/attention floating-point operations, forward + backward
        self.seq = itertools.count()
        self.grad_enabled = True
        self.autocast = False
        self.autocast_dtype = "f16"
        self.cast_cache: dict[int, tuple[T, T]] = {}
        self.autocast_depth = 0
        self.frame: CheckpointFrame | None = None  # forward inside a checkpoint region
        self.recompute_frame: CheckpointFrame | None = None  # recomputing a region
        self.accum_hooks: list[Callable[[T], None]] = []
        self.in_backward = False
        """A backward graph task is running (torch._C._current_graph_task_id() != -1)."""
        self.final_callbacks: list[Callable[[], None]] = []
        """``Variable._execution_engine.queue_callback``: run once the current backward's graph is done."""
        self.device_accumulate: Callable[[T], None] | None = None
        # what the library workspaces scale with (planner/workspaces.py): the largest
        # convolution's input + output bytes, and every SDPA call
        self.conv_io_max = 0
        self.attention_calls: list[tuple] = []

    # -- storage
    def new(self, shape: Sequence[int], dtype: str, op: str | None = None) -> T:
        mem = self.mem
        if op is not None:
            mem.op = op
        t = T(shape, dtype, None)
        t.st = Storage(mem, prod(t.shape) * ITEMSIZE[dtype])
        return t

    def view(self, x: T, shape: Sequence[int] | None = None, dense: bool = True, dtype: str | None = None) -> T:
        v = T(x.shape if shape is None else shape, dtype or x.dtype, x.st, dense=dense and x.dense)
        return v

    # -- autocast region (torch.autocast __enter__/__exit__)
    def enter_autocast(self, enabled: bool = True) -> tuple:
        prev = (self.autocast,)
        self.autocast = enabled
        self.autocast_depth += 1
        return prev

    def exit_autocast(self, prev: tuple) -> None:
        (self.autocast,) = prev
        self.autocast_depth -= 1
        if self.autocast_depth == 0:
            self.cast_cache.clear()  # torch.clear_autocast_cache() at the outermost exit

    # -- recording an op's autograd node
    def record(
        self, name: str, inputs: Sequence[T | None], outputs: Sequence[T], bwd: Callable, saved: tuple = (),
        save_outputs: tuple[int, ...] = (),
    ) -> None:
        """Attach a backward node to ``outputs`` if grad mode is on and an input requires grad.

        ``saved``: input tensors autograd keeps; ``save_outputs``: indices of outputs it
        keeps (stored without their grad_fn, as SavedVariable does).
        """
        if not self.grad_enabled or not any(x is not None and x.requires_grad for x in inputs):
            return
        if save_outputs:
            saved = tuple(saved) + tuple(detached(outputs[i]) for i in save_outputs)
        edges = [gradient_edge(x) if x is not None and x.requires_grad else None for x in inputs]
        node = Node(name, next(self.seq), edges, bwd, ())
        node.meta = [x.dtype if x is not None and x.requires_grad else None for x in inputs]
        frame = self.frame
        if self.recompute_frame is not None:
            # recomputing a checkpointed region: fill the original nodes' holders, in order
            rf = self.recompute_frame
            for s in saved:
                if rf.n_packed < len(rf.holders):
                    rf.holders[rf.n_packed] = s
                rf.n_packed += 1
            saved = ()
            if rf.n_packed >= len(rf.holders):
                node.saved = ()
                for i, o in enumerate(outputs):
                    o.requires_grad = True
                    o.grad_fn, o.out_nr = node, i
                raise _StopRecompute
        elif frame is not None and saved:
            node.holders = list(range(len(frame.holders), len(frame.holders) + len(saved)))
            node.frame = frame
            frame.holders.extend([None] * len(saved))
            saved = ()
        node.saved = saved
        for i, o in enumerate(outputs):
            o.requires_grad = True
            o.grad_fn, o.out_nr = node, i

    # -- backward
    def backward(self, root: T, seed: T) -> None:
        engine_run(self, root, seed)


def gradient_edge(x: T) -> tuple:
    if x.grad_fn is not None:
        return (x.grad_fn, x.out_nr)
    acc = getattr_acc(x)
    return (acc, 0)


_ACC: dict[int, AccumulateGrad] = {}


def getattr_acc(x: T) -> AccumulateGrad:
    # one AccumulateGrad per leaf, kept alive by the graph (torch: grad_accumulator weak ref)
    acc = _ACC.get(id(x))
    if acc is None or acc.var is not x:
        acc = AccumulateGrad(x)
        _ACC[id(x)] = acc
    return acc


def detached(x: T) -> T:
    """What SavedVariable keeps of an output: the data without the grad_fn (no cycle)."""
    v = T(x.shape, x.dtype, x.st, dense=x.dense)
    return v


# --- the engine ------------------------------------------------------------------------


def _accumulate(sim: Sim, buf: list, pos: int, g: T) -> None:
    old = buf[pos]
    if old is None:
        buf[pos] = g
        return
    # InputBuffer::accumulate: buffer[pos] = old_var + var. (It may add in place when it
    # holds the last reference, but the measured streams on both FakeTensor and real CPU
    # tensors show the out-of-place sum for every accumulation in these graphs.)
    sim.mem.op = "add"
    new = sim.new(old.shape if old.dense else g.shape, old.dtype)
    buf[pos] = new


def engine_run(sim: Sim, root: T, seed: T) -> None:
    """engine.cpp's execute() on the simulated graph. Every reference is dropped where the
    engine drops it (storages are freed by reference counting), so the ``del``s matter."""
    sim.in_backward = True
    try:
        _engine_run(sim, root, seed)
    finally:
        sim.in_backward = False


def _engine_run(sim: Sim, root: T, seed: T) -> None:
    start = root.grad_fn
    if start is None:
        return
    # dependencies (engine.cpp compute_dependencies)
    deps: dict[int, int] = {}
    seen = {id(start)}
    stack = [start]
    while stack:
        n = stack.pop()
        if type(n) is AccumulateGrad:
            continue
        for e in n.next_edges:
            if e is None:
                continue
            key = id(e[0])
            deps[key] = deps.get(key, 0) + 1
            if key not in seen:
                seen.add(key)
                stack.append(e[0])
    buffers: dict[int, list] = {}
    ready: list[tuple[int, int, Any]] = []
    tie = itertools.count()
    heappush, heappop = heapq.heappush, heapq.heappop
    buffers[id(start)] = [None] * 8
    _accumulate(sim, buffers[id(start)], root.out_nr, seed)
    heappush(ready, (-start.seq, next(tie), start))
    del start
    while ready:
        _, _, fn = heappop(ready)
        inputs = buffers.pop(id(fn))
        if type(fn) is AccumulateGrad:
            _accumulate_grad(sim, fn.var, inputs[0])
            del inputs, fn
            continue
        if fn.pre_hooks:
            for hook in fn.pre_hooks:
                hook()
        outputs = call_node(sim, fn, inputs)
        del inputs
        n_out = len(outputs)
        # validate_outputs(): a gradient whose dtype differs from its input's is cast
        for i, want in enumerate(fn.meta):
            if want is not None and i < n_out:
                o = outputs[i]
                if o is not None and o.dtype != want:
                    sim.mem.op = "_to_copy"
                    outputs[i] = sim.new(o.shape, want)
                del o
        # release_variables(): saved tensors (or holders) go, in the order the node
        # declares them (a tuple would drop them last to first)
        if fn.saved:
            released = list(fn.saved)
            fn.saved = ()
            for i in range(len(released)):
                released[i] = None
            del released
        if fn.holders is not None and fn.frame is not None:
            fh = fn.frame.holders
            for h in fn.holders:
                fh[h] = None
            del fh
        edges = fn.next_edges
        for i, e in enumerate(edges):
            if e is None:
                continue
            nxt = e[0]
            key = id(nxt)
            buf = buffers.get(key)
            if buf is None:
                buf = buffers[key] = [None] * 8
            if i < n_out:
                g = outputs[i]
                if g is not None:
                    _accumulate(sim, buf, e[1], g)
                del g
            del buf
            left = deps[key] - 1
            deps[key] = left
            if left == 0:
                heappush(ready, (-nxt.seq, next(tie), nxt))
            del nxt
        del outputs, edges, fn
    while sim.final_callbacks:
        sim.final_callbacks.pop(0)()


def call_node(sim: Sim, fn: Node, inputs: list) -> list:
    if fn.holders is not None and fn.frame is not None:
        frame = fn.frame
        if not frame.recomputed:
            _recompute(sim, frame)
        saved = tuple(frame.holders[h] for h in fn.holders)
    else:
        saved = fn.saved
    sim.mem.op = fn.name
    return fn.bwd(sim, inputs, saved)


def _recompute(sim: Sim, frame: CheckpointFrame) -> None:
    frame.recomputed = True
    frame.n_packed = 0
    prev_grad, prev_rf = sim.grad_enabled, sim.recompute_frame
    sim.grad_enabled = True
    sim.recompute_frame = frame
    prev_phase_module = list(sim.mem.module_stack)
    ac = sim.enter_autocast(frame.autocast)  # a fresh outermost autocast region: new cast cache
    try:
        frame.recompute()
    except _StopRecompute:
        pass
    finally:
        sim.exit_autocast(ac)
        sim.grad_enabled = prev_grad
        sim.recompute_frame = prev_rf
        sim.mem.module_stack[:] = prev_phase_module


def _accumulate_grad(sim: Sim, var: T, g: T | None) -> None:
    if g is None:
        return
    if var.grad is None:
        if g.dense and g.dtype == var.dtype and g.shape == var.shape:
            var.grad = T(g.shape, g.dtype, g.st)  # steal (new_grad.detach())
        else:
            sim.mem.op = "clone"
            var.grad = sim.new(var.shape, var.dtype)
    else:
        sim.mem.op = "add_"  # variable_grad += new_grad (in place)
    for hook in sim.accum_hooks:
        hook(var)


def zeros_grad_none(params: Iterable[T]) -> None:
    for p in params:
        p.grad = None


def checkpoint(sim: Sim, fn: Callable[..., Any], *args: Any) -> Any:
    """torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)."""
    frame = CheckpointFrame(lambda: fn(*args), sim.autocast)
    prev = sim.frame
    sim.frame = frame
    try:
        return fn(*args)
    finally:
        sim.frame = prev
