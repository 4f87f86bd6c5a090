"""One rank of a data-parallel step: torch.distributed's own DDP and FSDP2 under a fake process group.

``vramplan ... --step FILE --gpus N --strategy ddp|fsdp|fsdp-grad-op`` traces the step file's
step as rank 0 of N (ranks are symmetric: every rank runs the same step on its own micro-batch
and holds the same share). The networks are wrapped by torch's own code, not modelled:

* ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` with torch's defaults (25 MiB
  buckets, a 1 MiB first bucket ``dist._DEFAULT_FIRST_BUCKET_BYTES``,
  ``gradient_as_bucket_view=False``, ``broadcast_buffers=True``); its C++ Reducer allocates the
  gradient buckets through the trace (``aten::empty`` + ``as_strided`` views), rebuilds them in
  gradient-ready order before the second iteration's forward, and copies each gradient into
  its bucket in backward;
* ``fsdp``: ``torch.distributed.fsdp.fully_shard`` (FSDP2) on each instance of the network's
  repeated block (the class ``--checkpoint auto`` picks), then on the network,
  ``reshard_after_forward=True`` (ZeRO-3); ``fsdp-grad-op``: the same with
  ``reshard_after_forward=False`` (parameters stay unsharded from forward to the end of
  backward, ~ZeRO-2). Each parameter is sharded on dim 0, padded to a multiple of the world
  size (``torch/distributed/fsdp/_fully_shard/_fsdp_param.py`` ``FSDPParam._init_sharded_param``:
  ``torch.chunk`` then ``new_zeros(chunks[0].size())``).

Frozen networks (no parameter that requires grad: an EMA copy, a frozen backbone) stay unwrapped:
every rank holds them whole. A network with any parameter that requires grad is wrapped, whether or
not an optimizer steps it (MONAI's perceptual loss: its LPIPS lin layers require grad).

The process group is torch's ``"fake"`` backend (``torch.testing._internal.distributed.fake_pg``):
collectives complete without moving data, which a trace without data does not need; the
buffers they read and write are allocated by DDP and FSDP themselves and are counted.

Attribution (``planner/measure/tracker.py`` ``Category``): DDP's buckets, FSDP's all-gather
and reduce-scatter buffers are ``communication``; FSDP's sharded parameters and the unsharded
(all-gathered) ones are ``parameters``, the unsharded gradients autograd makes and the sharded
gradients the reduce-scatter writes are ``gradients``, optimizer state (over the sharded
parameters) is ``optimizer_state``. NCCL's own buffers are not traced (NCCL allocates them outside
the caching allocator); the notes give planner/workspaces.py ``nccl_term`` (sourced, uncalibrated).

Patches, each only while it is needed (file and function of torch 2.13 each replaces or wraps):

* ``torch/nn/parallel/distributed.py``: ``_verify_param_shape_across_processes`` and
  ``_sync_module_states`` (module attributes, imported from ``torch/distributed/utils.py``)
  are no-ops while ``DistributedDataParallel.__init__`` runs: they all-gather the parameter
  shapes and broadcast rank 0's parameters, reading tensor data a fake tensor has not;
  ranks are symmetric, so neither changes what rank 0 holds.
* DDP's communication hook (``DistributedDataParallel.register_comm_hook``): returns a
  completed future holding ``bucket.buffer()``, which is what NCCL's in-place allreduce
  gives the Reducer (``torch/csrc/distributed/c10d/reducer.cpp``: ``finalize_backward``
  views the future's tensor as ``bucket_views_out``; the default hook, ``_AllReduceBySumCommHook``
  in ``default_comm_hooks.cpp``, returns the allreduced bucket tensor itself). The fake
  group's allreduce future holds no tensor. With a hook the Reducer copies each gradient into
  its bucket (``bucket_view.copy_``) instead of ``mul_out`` by 1/world: no other allocation.
* ``DistributedDataParallel._pre_forward`` (per wrapped instance): the Reducer's bucket
  rebuild (``reducer.cpp`` ``Reducer::rebuild_buckets`` -> ``sync_bucket_indices``) writes the
  new assignment into int32 CPU tensors through an accessor; inside ``_pre_forward`` those
  few-byte index tensors are made real (outside the trace), and every storage newly allocated
  there (the rebuilt buckets, the flat copy ``broadcast_buffers`` broadcasts) is tagged
  ``communication``.
* ``torch/distributed/fsdp/_fully_shard/_fsdp_param.py``: ``alloc_storage`` /
  ``free_storage`` resize an unsharded parameter's storage in place
  (``UntypedStorage.resize_``, no aten op): wrapped so the tracker sees each as a free or a
  new allocation; ``FSDPParam.init_all_gather_outputs`` / ``init_unsharded_param`` wrapped to
  tag the unsharded parameters and their gradients;
  ``_fsdp_collectives.py`` ``DefaultAllocMixin.allocate`` (the all-gather and reduce-scatter
  buffers) wrapped to tag ``communication``.

FSDP2 itself needs no patch under FakeTensorMode; its DeviceMesh is made before the trace
(``fake_group``). Its sharded parameters, gradients and optimizer state are DTensors, counted
by their local shard (``LiveStorageTracker.dtensors``); FSDP2 assigns each sharded gradient
and then calls the parameter's post-accumulate-grad hooks (``_fsdp_collectives.py``
``foreach_reduce``), where it is tagged ``gradients``.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from planner.analytic.parallel import FROZEN, layout_text
from planner.errors import PlannerError
from planner.measure.tracker import Category

STRATEGIES = ("ddp", "fsdp", "fsdp-grad-op")


@contextlib.contextmanager
def fake_group(world: int) -> Iterator[Any]:
    """The fake process group (``world`` ranks, this process rank 0) and a 1-D CPU device mesh
    over it, destroyed on exit; ``None`` (nothing created) for one GPU. Enter it outside
    FakeTensorMode: ``DeviceMesh.__init__`` reads its rank map (``tolist``)."""
    if world <= 1:
        yield None
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise PlannerError("--gpus: this torch build has no torch.distributed")
    if dist.is_initialized():
        raise PlannerError("--gpus: a torch.distributed process group is already initialized in this process")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


@dataclass
class Wrapped:
    """The networks as the step sees them, and what each rank holds."""

    nets: dict[str, torch.nn.Module]
    """What ``step(nets, ...)`` and ``optimizers(nets)`` get: the DDP / FSDP-wrapped networks."""
    roots: dict[str, torch.nn.Module]
    """The same networks for naming and tracking (DDP's inner module: paths without ``.module``)."""
    strategy: str
    world: int
    layout: dict[str, str] = field(default_factory=dict)
    """Per network: how it is held (replicated / sharded, and the sharded blocks)."""
    ddp: dict[str, Any] = field(default_factory=dict)
    fsdp: dict[str, torch.nn.Module] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """What a trace's record says about the ranks (``StepRecord.setup``; built-in and step files)."""
        return {"gpus": self.world, "strategy": self.strategy, "layout": dict(self.layout),
                "per_rank": (f"figures are per rank: rank 0 of {self.world} traced under a fake process group "
                             f"({self.strategy}, torch.distributed's own code; ranks are symmetric)"),
                "not_counted": ("NCCL's own buffers (outside the caching allocator; given in the notes, "
                                "uncalibrated) and communicator state")}


# The torch internals the attribution patches (module docstring), by strategy: (module, attribute).
INTERNALS = {
    "ddp": (("torch.nn.parallel.distributed", "_verify_param_shape_across_processes"),
            ("torch.nn.parallel.distributed", "_sync_module_states"),
            ("torch.nn.parallel.distributed", "DistributedDataParallel._pre_forward")),
    "fsdp": (("torch.distributed.fsdp._fully_shard._fsdp_param", "alloc_storage"),
             ("torch.distributed.fsdp._fully_shard._fsdp_param", "free_storage"),
             ("torch.distributed.fsdp._fully_shard._fsdp_param", "FSDPParam.init_all_gather_outputs"),
             ("torch.distributed.fsdp._fully_shard._fsdp_param", "FSDPParam.init_unsharded_param"),
             ("torch.distributed.fsdp._fully_shard._fsdp_collectives", "DefaultAllocMixin.allocate"),
             ("torch.distributed.fsdp._fully_shard._fsdp_param_group", "foreach_all_gather"),
             ("torch.distributed.fsdp._fully_shard._fsdp_param_group", "foreach_reduce")),
}


def check_internals(strategy: str) -> None:
    """One line naming what this torch lacks, instead of a traceback mid-trace, when a torch
    release moves an internal the patches wrap (written against torch 2.13)."""
    import importlib

    for mod_name, attr in INTERNALS["ddp" if strategy == "ddp" else "fsdp"]:
        try:
            obj: Any = importlib.import_module(mod_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise PlannerError(f"--strategy {strategy}: this torch ({torch.__version__}) has no {mod_name}.{attr}, which "
                               "the per-rank trace wraps (planner/measure/distributed.py, written against torch 2.13); "
                               "use torch 2.13 or an estimate without --gpus") from None


def _trainable(net: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in net.parameters())


def wrap(nets: dict[str, torch.nn.Module], strategy: str, world: int, mesh: Any = None) -> Wrapped:
    """Wrap each trainable network for ``strategy`` on ``world`` ranks (inside the trace's
    FakeTensorMode, after precision casting and checkpoint wrapping, before ``optimizers``)."""
    if strategy not in STRATEGIES:
        raise PlannerError(f"--strategy: got {strategy!r}, valid: {', '.join(STRATEGIES)}")
    check_internals(strategy)
    out = Wrapped(dict(nets), dict(nets), strategy, world)
    for name, net in nets.items():
        if not _trainable(net):
            out.layout[name] = FROZEN
            continue
        if strategy == "ddp":
            d = _ddp(net)
            out.nets[name] = d
            out.ddp[name] = d
            out.layout[name] = layout_text(strategy, world)
        else:
            blocks = _shard(name, net, mesh, reshard=(strategy == "fsdp"))
            out.fsdp[name] = net
            out.layout[name] = layout_text(strategy, world, blocks)
    return out


# --- DDP ------------------------------------------------------------------------------------


def _inplace_allreduce(_state, bucket):  # noqa: ANN001, ANN202 - DDP's _check_comm_hook reads the annotations
    """NCCL's allreduce reduces the bucket in place and its future holds the bucket tensor
    (torch/csrc/distributed/c10d/reducer.cpp ``finalize_backward``: ``bucket_views_out`` are
    views of the future's value; ``default_comm_hooks.cpp`` ``_AllReduceBySumCommHook``). The
    fake group's allreduce future holds no tensor (without this hook backward fails the
    ``result.isTensor()`` assertion of ``c10d/comm.cpp`` ``parseCppCommHookResult``), so the hook
    hands back the buffer itself."""
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _ddp(net: torch.nn.Module) -> Any:
    import torch.nn.parallel.distributed as ddp_mod

    with constructing_ddp() as capture:
        wrapped = ddp_mod.DistributedDataParallel(net)  # torch's defaults
    return ddp_made(wrapped, capture)


@contextlib.contextmanager
def constructing_ddp() -> Iterator["_Allocations"]:
    """While a DistributedDataParallel is constructed (by vramplan for a step file, by the user's script
    under ``vramplan run --gpus``): what it allocates, recorded."""
    import torch.nn.parallel.distributed as ddp_mod

    saved = ddp_mod._verify_param_shape_across_processes, ddp_mod._sync_module_states
    # torch/nn/parallel/distributed.py DistributedDataParallel.__init__: both read data (an
    # all-gather of parameter shapes; rank 0's parameters and buffers broadcast); no-ops while
    # constructing, ranks being symmetric.
    ddp_mod._verify_param_shape_across_processes = lambda *a, **k: None
    ddp_mod._sync_module_states = lambda *a, **k: None
    capture = _Allocations()
    try:
        with capture:
            yield capture
    finally:
        ddp_mod._verify_param_shape_across_processes, ddp_mod._sync_module_states = saved


def ddp_made(wrapped: Any, capture: "_Allocations") -> Any:
    """A DDP just constructed (``constructing_ddp``): the in-place allreduce hook registered and its
    first buckets kept (weakly) for the tracker."""
    wrapped.register_comm_hook(None, _inplace_allreduce)
    # The Reducer's first buckets (one per dtype: before the first backward DDP does not
    # bucket by size, torch/nn/parallel/distributed.py _BucketCapacityConfig.compute_bucket_size_limits),
    # made before the tracker exists (a step file): tracked when it starts, freed by the rebuild.
    wrapped._vramplan_buckets = capture.made
    return wrapped


class _Allocations(TorchDispatchMode):
    """Weak references to the tensors allocated while it is active (DDP's constructor)."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[Any] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        import weakref

        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.empty.memory_format and isinstance(out, torch.Tensor):
            self.made.append(weakref.ref(out))
        return out


class _DDPPreForward(TorchDispatchMode):
    """Active during ``DistributedDataParallel._pre_forward`` (see the module docstring)."""

    def __init__(self, tracker: Any, network: str, fake: bool) -> None:
        super().__init__()
        self.tracker, self.network, self.fake = tracker, network, fake

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils._pytree import tree_flatten

        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        index_empty = func is torch.ops.aten.empty.memory_format and kwargs.get("dtype") == torch.int32
        if self.fake and (index_empty or (tensors and not any(isinstance(t, FakeTensor) for t in tensors))):
            # Reducer::sync_bucket_indices: int32 index tensors read through an accessor
            with _disable_current_modes():
                return func(*args, **kwargs)
        known = len(self.tracker.info)  # uids count up from 1: a larger one is new in this op
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            uid = self.tracker.uid_of(t) if isinstance(t, torch.Tensor) else None
            if uid is not None and uid > known:  # not the buffers the broadcast writes back into
                self.tracker.tag([t], Category.COMMUNICATION, self.network)
        return out


def _pre_forward_traced(orig: Any, tracker: Any, network: str, fake: bool, *inputs: Any, **kwargs: Any) -> Any:
    with _DDPPreForward(tracker, network, fake):
        return orig(*inputs, **kwargs)


# --- FSDP2 ----------------------------------------------------------------------------------


def _shard(name: str, net: torch.nn.Module, mesh: Any, reshard: bool) -> tuple[str, int] | None:
    """fully_shard each repeated block (torchtitan's order: checkpoint wrapper outside, FSDP on
    the wrapper) and then the network. Returns (block class, instances) or None."""
    from torch.distributed.fsdp import fully_shard

    from planner.measure.stepfile import repeated_blocks

    rows = repeated_blocks({name: net})
    block = rows[0][0] if rows else None
    units: list[torch.nn.Module] = []
    if block is not None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

        for mod in net.modules():
            if isinstance(mod, CheckpointWrapper) and type(mod._checkpoint_wrapped_module).__name__ == block:
                units.append(mod)
            elif type(mod).__name__ == block and not _inside(mod, units):
                units.append(mod)
        units = [u for u in units if not any(u is not o and _contains(o, u) for o in units)]
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(net, mesh=mesh, reshard_after_forward=reshard)
    return (block, len(units)) if units else None


def _contains(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return any(m is inner for m in outer.modules() if m is not outer)


def _inside(mod: torch.nn.Module, units: list[torch.nn.Module]) -> bool:
    return any(_contains(u, mod) for u in units)


# --- attribution while tracing --------------------------------------------------------------


def per_rank_note(world: int, strategy: str) -> str:
    from planner.workspaces import nccl_term

    nccl = nccl_term(world)
    return (f"per rank: rank 0 of {world} traced ({strategy}, torch.distributed's own code under a fake process "
            f"group; ranks are symmetric); NCCL's own buffers are outside the caching allocator and not in these "
            f"figures: {nccl.bytes / 2**20:.2f} MiB ({nccl.note}; sourced, uncalibrated: {nccl.source})")


def track_ddp(tracker: Any, d: Any, name: str, stack: contextlib.ExitStack) -> None:
    """A DDP's attribution while tracing: its first buckets tracked (or, made under the tracker, tagged)
    as ``communication``; its ``_pre_forward`` (the bucket rebuild) traced; undone by ``stack``."""
    tracker.track([t for t in (r() for r in d._vramplan_buckets) if t is not None], Category.COMMUNICATION,
                  network=name)  # no reference kept: the rebuild frees them
    orig = d._pre_forward
    fake = any(type(p).__name__ == "FakeTensor" for p in d.module.parameters())
    d._pre_forward = functools.partial(_pre_forward_traced, orig, tracker, name, fake)
    stack.callback(_restore_attr, d, "_pre_forward")


@contextlib.contextmanager
def tracing(wrapped: Wrapped | None, tracker: Any) -> Iterator[None]:
    """Install the attribution for the iterations of the trace; undo on exit."""
    if wrapped is None:
        yield
        return
    tracker.notes.append(per_rank_note(wrapped.world, wrapped.strategy))
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # _fsdp_state.py _register_pre_backward_hook: a module returning a view; about in-place
        # ops on it in the user's code, not about memory
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        for name, d in wrapped.ddp.items():
            track_ddp(tracker, d, name, stack)
        if wrapped.fsdp:
            tracker.dtensors = True
            stack.enter_context(_fsdp_attribution(tracker, wrapped))
        yield


def _restore_attr(obj: Any, name: str) -> None:
    obj.__dict__.pop(name, None)


@contextlib.contextmanager
def _fsdp_attribution(tracker: Any, wrapped: Wrapped) -> Iterator[None]:
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives, _fsdp_param, _fsdp_param_group

    owner: dict[int, str] = {}
    for name, net in wrapped.fsdp.items():
        for p in net.parameters():
            owner[id(p)] = name
            if p.requires_grad:
                # FSDP2 assigns the sharded gradient itself and then calls the parameter's
                # post-accumulate-grad hooks (_fsdp_collectives.py foreach_reduce)
                p.register_post_accumulate_grad_hook(
                    lambda param, _n=name: tracker.tag([param.grad], Category.GRADIENTS, _n))

    saved_alloc, saved_free = _fsdp_param.alloc_storage, _fsdp_param.free_storage
    saved_outputs = _fsdp_param.FSDPParam.init_all_gather_outputs
    saved_unsharded = _fsdp_param.FSDPParam.init_unsharded_param
    saved_allocate = _fsdp_collectives.DefaultAllocMixin.allocate

    def alloc_storage(tensor: torch.Tensor) -> None:
        saved_alloc(tensor)
        tracker.storage_resized(tensor.untyped_storage())

    def free_storage(tensor: torch.Tensor) -> None:
        saved_free(tensor)
        tracker.storage_resized(tensor.untyped_storage())

    def init_all_gather_outputs(self: Any, *args: Any, **kwargs: Any) -> None:
        saved_outputs(self, *args, **kwargs)
        net = owner.get(id(self.sharded_param), "")
        for t in self.all_gather_outputs:
            tracker.tag([t], Category.PARAMETERS, net)

    def init_unsharded_param(self: Any) -> None:
        saved_unsharded(self)
        p = getattr(self, "_unsharded_param", None)
        if p is not None and p.requires_grad and not getattr(p, "_vramplan_hooked", False):
            net = owner.get(id(self.sharded_param), "")
            p.register_post_accumulate_grad_hook(
                lambda param, _n=net: tracker.tag([param.grad], Category.GRADIENTS, _n))
            p._vramplan_hooked = True

    # The all-gather and reduce-scatter buffers belong to the network whose parameters they carry:
    # FSDPParamGroup calls foreach_all_gather(fsdp_params, ...) and foreach_reduce(fsdp_params, ...)
    # (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py, the names it imports from
    # _fsdp_collectives), which allocate them through DefaultAllocMixin.allocate.
    carrying: list[str] = [""]
    saved_gather, saved_reduce = _fsdp_param_group.foreach_all_gather, _fsdp_param_group.foreach_reduce

    def carried_by(collective: Any) -> Any:
        @functools.wraps(collective)
        def call(fsdp_params: Any, *args: Any, **kwargs: Any) -> Any:
            first = next(iter(fsdp_params), None)
            carrying.append(owner.get(id(getattr(first, "sharded_param", None)), ""))
            try:
                return collective(fsdp_params, *args, **kwargs)
            finally:
                carrying.pop()
        return call

    def allocate(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        t = saved_allocate(self, *args, **kwargs)
        tracker.tag([t], Category.COMMUNICATION, carrying[-1])
        return t

    _fsdp_param.alloc_storage, _fsdp_param.free_storage = alloc_storage, free_storage
    _fsdp_param.FSDPParam.init_all_gather_outputs = init_all_gather_outputs
    _fsdp_param.FSDPParam.init_unsharded_param = init_unsharded_param
    _fsdp_collectives.DefaultAllocMixin.allocate = allocate
    _fsdp_param_group.foreach_all_gather = carried_by(saved_gather)
    _fsdp_param_group.foreach_reduce = carried_by(saved_reduce)
    try:
        yield
    finally:
        _fsdp_param_group.foreach_all_gather, _fsdp_param_group.foreach_reduce = saved_gather, saved_reduce
        _fsdp_param.alloc_storage, _fsdp_param.free_storage = saved_alloc, saved_free
        _fsdp_param.FSDPParam.init_all_gather_outputs = saved_outputs
        _fsdp_param.FSDPParam.init_unsharded_param = saved_unsharded
        _fsdp_collectives.DefaultAllocMixin.allocate = saved_allocate


def error_hint(exc: BaseException, strategy: str) -> str:
    """What the wrapping changed for a step that fails under it (appended to the one line)."""
    text = str(exc)
    if strategy == "ddp" and isinstance(exc, AttributeError) and "DistributedDataParallel" in text:
        return "; DDP runs forward() only: call the network, or its .module for another method"
    if strategy.startswith("fsdp") and "DTensor" in text:
        return (f"; under {strategy} the trained parameters are sharded DTensors outside forward() "
                "(a method other than forward, an EMA update)")
    if strategy.startswith("fsdp") and "uniform original parameter dtype" in text:
        return f"; under {strategy} each sharded unit needs one parameter dtype (FSDP2)"
    return ""
