"""Live-storage tracker: the peak of what ``torch.cuda.max_memory_allocated`` would report.

A ``TorchDispatchMode`` sees every aten op below autograd, including the ops the
autograd engine runs in backward and those ``torch.utils.checkpoint`` recomputes.
Each new storage an op returns is registered with its size rounded up to the
CUDA caching allocator's 512-byte block (``kMinBlockSize = 512`` and
``round_size()`` in ``c10/cuda/CUDACachingAllocator.cpp``; the same constant as
``_PYTORCH_MIN_ALLOCATE`` in ``torch/distributed/_tools/mem_tracker.py``), and a
weakref finalizer releases it when the storage dies. The peak is taken after
every op, not per module.

It works the same on fake tensors (FakeTensorMode: nothing is allocated) and on
real CPU tensors, which is how the fake backend is checked.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from planner.result import Category  # noqa: F401  (one vocabulary; re-exported for the tracer's users)

# c10/cuda/CUDACachingAllocator.cpp: constexpr size_t kMinBlockSize = 512; every
# allocation is rounded up to a multiple of it (round_size).
CUDA_BLOCK_BYTES = 512


def round_alloc(nbytes: int) -> int:
    """Bytes the caching allocator accounts for one storage of ``nbytes``."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


class Phase(str, Enum):
    SETUP = "setup"
    DATA = "data"
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


@dataclass
class StorageInfo:
    uid: int
    nbytes: int
    phase: Phase
    network: str
    module: str
    op: str
    step: str
    category: Category | None = None  # explicit tag; else derived from phase/module
    raw: int = 0  # the storage's own bytes, before the 512-byte rounding (batch derivation fits these)


@dataclass
class TimelinePoint:
    op_index: int
    live_bytes: int
    phase: str
    step: str


@dataclass
class TrackerResult:
    peak_bytes: int
    peak_op: str
    peak_phase: str
    peak_step: str
    peak_module: str
    live_at_peak: list[StorageInfo] = field(default_factory=list)
    timeline: list[TimelinePoint] = field(default_factory=list)
    untracked_host_bytes: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. SDPA math fallbacks (cuda_emulation)
    conv_io_max: int = 0
    attention_calls: tuple = ()


class ModuleContext:
    """Which module is running: global forward hooks push/pop a stack of names."""

    def __init__(self, roots: dict[str, torch.nn.Module], attention_types: tuple[type, ...] = ()) -> None:
        self.names: dict[int, tuple[str, str, bool]] = {}
        for root_name, root in roots.items():
            for name, mod in root.named_modules():
                path = f"{root_name}.{name}" if name else root_name
                is_att = bool(attention_types) and isinstance(mod, attention_types)
                self.names[id(mod)] = (root_name, path, is_att)
        self.stack: list[tuple[str, str, bool]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "ModuleContext":
        from torch.nn.modules import module as m

        def pre(mod: torch.nn.Module, *_: Any) -> None:
            info = self.names.get(id(mod))
            if info is not None:
                self.stack.append(info)

        def post(mod: torch.nn.Module, *_: Any) -> None:
            if id(mod) in self.names and self.stack:
                self.stack.pop()

        self._handles = [m.register_module_forward_pre_hook(pre), m.register_module_forward_hook(post, always_call=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def current(self) -> tuple[str, str]:
        """(network, module path) of the innermost running module."""
        if not self.stack:
            return "", ""
        root, path, _ = self.stack[-1]
        network = "attention" if any(s[2] for s in self.stack) else root
        return network, path


class LiveStorageTracker(TorchDispatchMode):
    """Counts live storages (512-byte rounded) after every op; keeps the peak's contents."""

    def __init__(self, modules: ModuleContext | None = None, keep_timeline: bool = True) -> None:
        super().__init__()
        self.modules = modules
        self.keep_timeline = keep_timeline
        self.phase = Phase.SETUP
        self.step = ""
        self.network_hint = ""  # e.g. "losses" for ops outside any module
        self._uids = itertools.count(1)
        self._by_obj: dict[int, int] = {}  # id(untyped storage) -> uid
        self.info: dict[int, StorageInfo] = {}  # every storage ever seen (uid -> info)
        self.live: dict[int, int] = {}  # uid -> rounded bytes
        self.current = 0
        self.peak = 0
        self._peak_live: dict[int, int] = {}
        self._peak_where = ("", "", "", "")
        self.timeline: list[TimelinePoint] = []
        self._op_index = 0
        self.host_bytes = 0
        self.host_scalars = False  # inside optimizer.step(): 0-dim outputs live on the host
        self.device_type: str | None = None  # on a real GPU: count only storages on this device
        self.notes: list[str] = []  # what the report must say (cuda_emulation files SDPA math fallbacks here)
        # what the library workspaces scale with (planner/workspaces.py), as the estimator
        # records them: the largest convolution's input + output bytes, each fused SDPA call
        self.conv_io_max = 0
        self.attention_calls: list[tuple] = []
        self.dtensors = False  # FSDP (planner/measure/distributed.py): count DTensor outputs by their local shard
        self.on_op: Callable[[Any, tuple, dict, Any], None] | None = None
        """Called with (op, args, kwargs, output) after each op (stepfile.py's FLOP count: one call
        here instead of a dispatch mode of its own around every op)."""

    # -- registration ------------------------------------------------------------
    def _register(self, st: torch.UntypedStorage, op: str) -> int:
        key = id(st)
        uid = self._by_obj.get(key)
        if uid is not None:
            return uid
        uid = next(self._uids)
        nbytes = round_alloc(st.nbytes())
        network, module = self.modules.current() if self.modules else ("", "")
        if not network:
            network = self.network_hint
        self.info[uid] = StorageInfo(uid, nbytes, self.phase, network, module, op, self.step, raw=st.nbytes())
        self._by_obj[key] = uid
        self.live[uid] = nbytes
        self.current += nbytes
        weakref.finalize(st, self._release, key, uid)
        return uid

    def _release(self, key: int, uid: int) -> None:
        self._by_obj.pop(key, None)
        nbytes = self.live.pop(uid, None)
        if nbytes is not None:
            self.current -= nbytes

    def track(self, tensors: Iterable[torch.Tensor], category: Category, network: str = "") -> None:
        """Register tensors made outside the mode (parameters, buffers) and tag them."""
        for t in tensors:
            if t is None:
                continue
            uid = self._register(_local(t).untyped_storage(), "external")
            info = self.info[uid]
            info.category = category
            if network:
                info.network = network
        self._note_peak("external")

    def uid_of(self, t: torch.Tensor) -> int | None:
        """The tracked storage behind ``t`` (a DTensor's: its local shard's), or None."""
        return self._by_obj.get(id(_local(t).untyped_storage()))

    def tag(self, tensors: Iterable[torch.Tensor | None], category: Category | None, network: str = "") -> None:
        """File tracked tensors under ``category`` (None: keep theirs) and, when given, ``network``.
        A DTensor (FSDP2's sharded parameters, gradients, optimizer state) is its local shard's
        storage, the one :meth:`track` and the op-by-op registration count."""
        for t in tensors:
            if t is None:
                continue
            uid = self.uid_of(t)
            if uid is not None:
                if category is not None:
                    self.info[uid].category = category
                if network:
                    self.info[uid].network = network

    def untrack_host(self, tensors: Iterable[torch.Tensor | None]) -> None:
        """Storages that live in host memory on a real CUDA run (Adam's ``step`` counters)."""
        for t in tensors:
            if t is None:
                continue
            uid = self.uid_of(t)
            if uid is not None and uid in self.live:
                nbytes = self.live.pop(uid)
                self.current -= nbytes
                self.host_bytes += nbytes

    def storage_resized(self, st: torch.UntypedStorage, op: str = "resize_") -> None:
        """A tracked storage resized in place (``UntypedStorage.resize_``, which is no aten op:
        FSDP2 frees and re-allocates its unsharded parameters this way). To the caching
        allocator that is a free and a new allocation, and it is recorded as both; the new
        allocation keeps the storage's category and network."""
        key = id(st)
        uid = self._by_obj.get(key)
        if uid is None:
            return
        nbytes = round_alloc(st.nbytes())
        if self.live.get(uid, 0) == nbytes and (nbytes or uid not in self.live):
            return
        old = self.info[uid]
        if uid in self.live:
            self._release(key, uid)
        self._by_obj.pop(key, None)
        if nbytes == 0:
            self._by_obj[key] = uid  # freed; found again when it is re-allocated
        else:
            new = self.info[self._register(st, op)]
            new.category, new.network, new.module = old.category, old.network, old.module
        self._note_peak(op)

    # -- peak --------------------------------------------------------------------
    def reset_peak(self) -> None:
        self.peak = self.current
        self._peak_live = dict(self.live)
        self._peak_where = ("reset", self.phase.value, self.step, "")

    def _note_peak(self, op: str) -> None:
        if self.current > self.peak:
            self.peak = self.current
            self._peak_live = dict(self.live)
            module = self.modules.current()[1] if self.modules else ""
            self._peak_where = (op, self.phase.value, self.step, module)
        if self.keep_timeline:
            self.timeline.append(TimelinePoint(self._op_index, self.current, self.phase.value, self.step))
        self._op_index += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
        rule = REDUCED_LOSSES.get(name) if self.device_type is None else None
        if rule is not None and _reduction(func, args, kwargs or {}) == 0:
            rule = None  # reduction="none": the output is the unreduced loss itself
        transient = None
        if rule is not None:
            shape = torch.broadcast_shapes(args[0].shape, args[1].shape) if rule.broadcast else args[0].shape
            full = math.prod(int(d) for d in shape)
            if rule.transient:  # the impl's own unreduced TensorIterator output, freed when the op returns
                transient = args[0].new_empty((full,), dtype=torch.result_type(args[0], args[1]))
                self._register(transient.untyped_storage(), name)
        out = func(*args, **(kwargs or {}))
        if rule is not None:
            out = _with_unreduced_storage(out, full)
        if self.on_op is not None:
            self.on_op(func, args, kwargs or {}, out)
        in_optimizer_scalar = self.host_scalars
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                if self.dtensors:
                    t = _local(t)
                st = t.untyped_storage()
                if id(st) in self._by_obj:
                    continue
                if self.device_type is not None and t.device.type != self.device_type:
                    continue
                if in_optimizer_scalar and t.dim() == 0:
                    # torch/optim/adam.py (_multi_tensor_adam, capturable=False): the 'step'
                    # counters and the `torch.tensor(1.0, device="cpu")` added to them are
                    # host tensors on a CUDA run; the only 0-dim tensors an optimizer step makes.
                    continue
                self._register(st, name)
        self._note_peak(name)
        if name in _WORKSPACE_OPS:
            self._note_workspace_op(name, args, out)
        return out

    def _note_workspace_op(self, name: str, args: tuple, out: Any) -> None:
        if name == "convolution":
            io = args[0].numel() * args[0].element_size()
            io += out.numel() * out.element_size()
            self.conv_io_max = max(self.conv_io_max, io)
        elif torch.is_grad_enabled():  # a call with a backward (the estimator: an input requires grad)
            q, k = args[0], args[1]
            backend = "flash" if name == "_scaled_dot_product_flash_attention" else "efficient"
            dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(q.dtype, "float32")
            self.attention_calls.append((int(q.shape[0]), int(q.shape[1]), int(q.shape[2]), int(k.shape[2]),
                                         int(q.shape[3]), dtype, backend))

    # -- result ------------------------------------------------------------------
    def result(self) -> TrackerResult:
        live = [self.info[uid] for uid in self._peak_live]
        op, phase, step, module = self._peak_where
        return TrackerResult(
            peak_bytes=self.peak,
            peak_op=op,
            peak_phase=phase,
            peak_step=step,
            peak_module=module,
            live_at_peak=live,
            timeline=list(self.timeline),
            untracked_host_bytes=self.host_bytes,
            notes=list(self.notes),
            conv_io_max=self.conv_io_max,
            attention_calls=tuple(self.attention_calls),
        )


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2's sharded parameters, gradients and optimizer state are
    DTensors: the memory on this rank is the local tensor's storage; the DTensor's own
    ``untyped_storage()`` has the global size). Any other tensor as is."""
    local = getattr(t, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else t


@dataclass(frozen=True)
class ReducedLoss:
    broadcast: bool  # the unreduced size is broadcast(input, target) (else input's)
    transient: bool  # the impl allocates a second unreduced tensor while it runs


REDUCED_LOSSES = {
    # Losses whose reduced (0-dim) result keeps the storage of the unreduced loss, on every device
    # (measured on real CPU tensors: mse_loss of a 1000x1000 fp32 input -> a 0-dim result with a
    # 4,000,000-byte storage), where FakeTensorMode makes a 4-byte one. aten/src/ATen/native/Loss.cpp:
    # TORCH_META_FUNC(mse_loss) / TORCH_META_FUNC(smooth_l1_loss) size the output as the broadcast
    # binary op (build_borrowing_binary_op) and then resize_({}) it, which never shrinks a storage;
    # their TORCH_IMPL_FUNC(..._out) compute into a second unreduced TensorIterator output and
    # mean_out/sum_out it into the result. soft_margin_loss_out: neg_out(output, input) ... then
    # output.resize_({}). binary_cross_entropy_cuda (aten/src/ATen/native/cuda/Loss.cu; the CPU one
    # in Loss.cpp alike): loss = at::empty_like(input), then loss.resize_as_(loss_reduced).
    "mse_loss": ReducedLoss(broadcast=True, transient=True),
    "smooth_l1_loss": ReducedLoss(broadcast=True, transient=True),
    "soft_margin_loss": ReducedLoss(broadcast=False, transient=False),
    "binary_cross_entropy": ReducedLoss(broadcast=False, transient=False),
}


def _reduction(func: Any, args: tuple, kwargs: dict) -> int:
    """The op's ``reduction`` argument (0 none, 1 mean, 2 sum; mean when not given)."""
    if "reduction" in kwargs:
        return int(kwargs["reduction"])
    for i, a in enumerate(func._schema.arguments):
        if a.name == "reduction":
            return int(args[i]) if i < len(args) else 1
    return 0


def _with_unreduced_storage(out: Any, numel: int) -> Any:
    """``out`` (0-dim) holding a storage of ``numel`` elements, as the real kernels leave it."""
    if not isinstance(out, torch.Tensor) or out.untyped_storage().nbytes() >= numel * out.element_size():
        return out  # a real kernel did it already
    held = out.new_empty((numel,))
    held.resize_(())
    return held


_WORKSPACE_OPS = frozenset(("convolution", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention"))


def category_of(info: StorageInfo) -> Category:
    """See :func:`planner.result.category_for`."""
    from planner.result import category_for

    explicit = info.category.value if info.category is not None else None
    return Category(category_for(explicit, info.phase.value, info.module))
