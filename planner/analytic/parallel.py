"""One rank of a data-parallel step, simulated (no torch): DDP's gradient buckets and buffer
broadcasts, FSDP2's shards and all-gather / reduce-scatter buffers.

The transcription of what torch 2.13's own code allocates on rank 0 of N (ranks are symmetric),
as ``planner/measure/distributed.py`` traces it under a fake process group; exact against that
trace (``benchmarks/bench_parallel.py``, ``tests/test_analytic_parallel.py``). NCCL's own buffers
are not part of it (see ``nccl_note``).

DDP (``torch/nn/parallel/distributed.py`` ``DistributedDataParallel``, torch's defaults):

* construction: the Reducer's buckets, one flat gradient buffer per parameter dtype holding every
  trainable parameter (``_BucketCapacityConfig.compute_bucket_size_limits``: ``[sys.maxsize]``
  before the first backward when ``find_unused_parameters=False``), ``at::empty({numel})`` in
  ``torch/csrc/distributed/c10d/reducer.cpp`` ``Reducer::initialize_buckets``;
* backward: each gradient is copied into its bucket (``mark_variable_ready_dense``: ``copy_`` /
  ``mul_out`` into the bucket view): no allocation; ``gradient_as_bucket_view=False`` keeps
  ``param.grad`` as well;
* the first forward after a backward: ``_pre_forward`` -> ``Reducer::rebuild_buckets``: the old
  buckets go, new ones are made in gradient-ready order by
  ``compute_bucket_assignment_by_size(rebuilt_params_, [first_bucket_bytes_cap_ = 1 MiB
  (dist._DEFAULT_FIRST_BUCKET_BYTES), bucket_bytes_cap_ = 25 MiB])`` (ported in ``assign``);
* every forward under grad with buffers (``broadcast_buffers=True``): ``_sync_buffers`` ->
  ``dist._broadcast_coalesced(pg, buffers, 250 MiB, 0)`` (``torch/csrc/distributed/c10d/comm.cpp``
  ``broadcast_coalesced``): one flat ``cat`` per bucket of buffers (by dtype, sorted by first
  buffer), at most two in flight (``max_in_flight = 2``), each freed when its broadcast finishes.
"""

from __future__ import annotations

from typing import Any

from planner.analytic.engine import ITEMSIZE, Sim, T
from planner.analytic.nn import Mod

FIRST_BUCKET_BYTES = 1024 * 1024
"""torch.distributed._DEFAULT_FIRST_BUCKET_BYTES (torch/csrc/distributed/c10d/reducer.hpp
``kDefaultFirstBucketBytes``)."""
BUCKET_BYTES = 25 * 1024 * 1024
"""DistributedDataParallel's bucket_cap_mb default (torch/nn/parallel/distributed.py ``_DEFAULT_BUCKET_CAP_MB``)."""
BROADCAST_BUCKET_BYTES = 250 * 1024 * 1024
"""DistributedDataParallel.__init__: ``self.broadcast_bucket_size = 250 * 1024 * 1024``."""
NO_LIMIT = 2**63 - 1
"""sys.maxsize: the limit of the buckets DDP makes before the first backward."""


def assign(sizes: list[tuple[str, int]], limits: list[int], sort: bool) -> list[list[int]]:
    """``compute_bucket_assignment_by_size`` (torch/csrc/distributed/c10d/reducer.cpp): tensors
    given as (dtype, bytes) in order; a bucket per dtype collects tensors until its bytes reach
    its current limit, then closes (the next bucket of that dtype takes the next limit, the last
    one repeating); buckets still open are added at the end (torch: in its unordered_map's order;
    here first dtype first: the bytes of each bucket are the same); with ``sort`` (no ready order
    given) the buckets are sorted by their first tensor index."""
    result: list[list[int]] = []
    open_: dict[str, list[int]] = {}
    size: dict[str, int] = {}
    limit_at: dict[str, int] = {}
    for i, (dtype, nbytes) in enumerate(sizes):
        open_.setdefault(dtype, []).append(i)
        size[dtype] = size.get(dtype, 0) + nbytes
        k = limit_at.setdefault(dtype, 0)
        if size[dtype] >= limits[k]:
            result.append(open_.pop(dtype))
            size[dtype] = 0
            limit_at[dtype] = min(k + 1, len(limits) - 1)
    result.extend(b for b in open_.values() if b)
    if sort:
        result.sort(key=lambda b: b[0])
    return result


def _tag(sim: Sim, t: T, category: str, network: str) -> None:
    info = sim.mem.info[t.st.uid]
    info.category = category
    info.network = network
    info.module = ""


class DDP:
    """``DistributedDataParallel(net)`` around a simulated network (see the module docstring)."""

    def __init__(self, sim: Sim, name: str, net: Mod) -> None:
        self.sim, self.name, self.module = sim, name, net
        self.params = [p for p in net.parameters() if p.requires_grad]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.ready: list[int] = []
        self.rebuilt = False
        # the first buckets: one per dtype, every trainable parameter (the first backward's order
        # does not matter to their size); made before the trace starts, counted as it starts
        self.buckets = self._make(list(reversed(range(len(self.params)))), [NO_LIMIT], True, "external")
        sim.accum_hooks.append(self._mark_ready)

    def _make(self, order: list[int], limits: list[int], sort: bool, op: str) -> list[T]:
        """The buckets ``assign`` makes of the parameters taken in ``order``, allocated in turn."""
        sim = self.sim
        out = []
        for b in assign([(self.params[i].dtype, self.params[i].numel * ITEMSIZE[self.params[i].dtype]) for i in order],
                        limits, sort):
            t = sim.new((sum(self.params[order[i]].numel for i in b),), self.params[order[b[0]]].dtype, op)
            _tag(sim, t, "communication", self.name)
            out.append(t)
        return out

    def _mark_ready(self, var: T) -> None:
        """Reducer::mark_variable_ready: the order gradients become ready (rebuilt_params_)."""
        i = self._index.get(id(var))
        if i is not None and not self.rebuilt and i not in self.ready:
            self.ready.append(i)

    def __call__(self, *args: Any) -> Any:
        sim = self.sim
        if sim.grad_enabled and not self.rebuilt and self.ready:
            # Reducer::rebuild_buckets -> initialize_buckets: buckets_.clear() first
            self.buckets = []
            self.buckets = self._make(list(self.ready), [FIRST_BUCKET_BYTES, BUCKET_BYTES], False, "empty")
            self.rebuilt = True
        buffers = self.module.buffers()
        if sim.grad_enabled and buffers:
            sizes = [(b.dtype, b.numel * ITEMSIZE[b.dtype]) for b in buffers]
            in_flight: list[T] = []
            for b in assign(sizes, [BROADCAST_BUCKET_BYTES], True):
                if len(in_flight) >= 2:
                    in_flight.pop(0)
                flat = sim.new((sum(buffers[i].numel for i in b),), buffers[b[0]].dtype, "cat")
                _tag(sim, flat, "communication", self.name)
                in_flight.append(flat)
            del flat
            while in_flight:  # each finished and dropped in turn
                in_flight.pop(0)
        return self.module(*args)

    def parameters(self) -> list[T]:
        return self.module.parameters()


# --- FSDP2 ---------------------------------------------------------------------------------


class _Comm:
    """FSDPCommContext (one per root network, ``_fsdp_state.py`` ``_lazy_init``)."""

    def __init__(self) -> None:
        self.all_gather_state: T | None = None
        self.post_forward_order: list[_Unit] = []
        self.reduce_scatter_states: list[T] = []
        self.iter_forward_root: _Unit | None = None
        self.final_callback_queued = False
        self.units: list[_Unit] = []
        """``_state_ctx.all_states``: the root first, then the units in module order."""


class _Unit:
    """One ``fully_shard``-ed module: its FSDPState and its one FSDPParamGroup
    (torch/distributed/fsdp/_fully_shard/_fsdp_state.py, _fsdp_param_group.py, _fsdp_collectives.py)."""

    def __init__(self, sim: Sim, comm: _Comm, network: str, module: Mod, params: list[T], world: int,
                 reshard_after_forward: bool) -> None:
        self.sim, self.comm, self.network, self.module = sim, comm, network, module
        self.params, self.world, self.reshard_after_forward = params, world, reshard_after_forward
        # FSDPParam._init_sharded_param: torch.chunk on dim 0, padded to the first chunk's size
        self.shard_numel = [-(-p.shape[0] // world) * (p.numel // p.shape[0]) if p.shape else 1 for p in params]
        self.sharded: list[T] = []
        for p, n in zip(params, self.shard_numel):
            sh = sim.new((n,), p.dtype, "external")
            sh.requires_grad = True
            sh.is_param = True
            _tag(sim, sh, "parameters", network)
            self.sharded.append(sh)
            p.st.resize(0)  # the whole parameter is not kept
        self.unsharded = False
        self.outputs_made = False
        self.training = "idle"  # the FSDPParamGroup's _training_state
        self.state_training = "idle"  # the FSDPState's
        self.all_gather_result: T | None = None
        self.post_forward_indices: list[int] = []

    # -- all-gather (FSDPParamGroup.unshard / wait_for_unshard / reshard)
    def unshard(self) -> None:
        if self.all_gather_result is not None or self.unsharded:
            return
        sim = self.sim
        # foreach_all_gather: all_gather_output = (sum of the shards' numels * world,)
        out = sim.new((sum(self.shard_numel) * self.world,), self.params[0].dtype, "empty")
        _tag(sim, out, "communication", self.network)
        self.all_gather_result = out

    def wait_for_unshard(self) -> None:
        if self.all_gather_result is None:
            return
        sim = self.sim
        prev = None
        if self.training == "forward":
            prev = self.comm.all_gather_state  # freed when this function returns
            self.comm.all_gather_state = None
        # foreach_all_gather_copy_out: each parameter's padded all_gather_output
        # (init_all_gather_outputs: torch.empty the first time, alloc_storage after)
        sim.mem.op = "resize_" if self.outputs_made else "empty"
        for p, n in zip(self.params, self.shard_numel):
            p.st.resize(n * self.world * ITEMSIZE[p.dtype])
            _tag(sim, p, "parameters", self.network)
        self.outputs_made = True
        self.unsharded = True
        if self.training == "forward":
            self.comm.all_gather_state = self.all_gather_result  # freed after the next copy-out
        self.all_gather_result = None
        del prev

    def reshard(self) -> None:
        if self.training == "forward" and not self.reshard_after_forward:
            return
        if self.unsharded:
            self.sim.mem.op = "resize_"
            for p in self.params:
                p.st.resize(0)
            self.unsharded = False

    # -- forward (FSDPState._pre_forward / _post_forward)
    def pre_forward(self, args: tuple) -> tuple:
        if self.state_training == "pre_backward":  # recomputation after this unit's pre-backward
            if not self.unsharded:
                self.unshard()
                self.wait_for_unshard()
            return args
        first_in_pass = self.state_training != "forward"
        self.state_training = "forward"
        if first_in_pass and self.comm.iter_forward_root is None:
            # _root_pre_forward: the first unit to run forward in a pass (the root; in a
            # recomputation during backward, the first recomputed unit)
            self.comm.iter_forward_root = self
        entering = self.training != "forward"
        self.training = "forward"
        self.unshard()
        self.wait_for_unshard()
        if entering and self.sim.grad_enabled:
            args = self._register_post_backward(args)
        return args

    def post_forward(self, output: Any) -> Any:
        if self.state_training == "pre_backward":
            return output
        if not self.sim.in_backward:  # FSDPParamGroup.post_forward: `if not is_bw()`
            self.reshard()
            self.post_forward_indices.append(len(self.comm.post_forward_order))
            self.comm.post_forward_order.append(self)
        self.training = "idle"
        if self.sim.grad_enabled:
            for t in _tensors(output):
                if t.requires_grad and t.grad_fn is not None:
                    hooks = t.grad_fn.pre_hooks
                    if hooks is None:
                        hooks = t.grad_fn.pre_hooks = []
                    hooks.append(self.pre_backward)
        self.state_training = "idle"
        if self.comm.iter_forward_root is self:
            self.comm.all_gather_state = None
            self.comm.iter_forward_root = None
        return output

    def _register_post_backward(self, args: tuple) -> tuple:
        """RegisterPostBackwardFunction.apply(group, *inputs that require grad)."""
        sim = self.sim
        flat = [a for a in args if isinstance(a, T) and a.requires_grad]
        if not flat:
            return args
        outs = [sim.view(a) for a in flat]
        for a, o in zip(flat, outs):  # the Function returns its inputs as views: same strides
            o.contig, o.cl = a.contig, a.cl

        n = len(flat)

        def bwd(_sim: Sim, grads: list, _saved: tuple) -> list:  # keeps no tensor alive
            self.post_backward()
            return list(grads[:n])

        sim.record("RegisterPostBackwardFunctionBackward", flat, outs, bwd)
        it = iter(outs)
        return tuple(next(it) if isinstance(a, T) and a.requires_grad else a for a in args)

    # -- backward
    def pre_backward(self) -> None:
        """FSDPState._pre_backward (a hook on each output's gradient)."""
        self.state_training = "pre_backward"
        if not self.comm.final_callback_queued:
            self.comm.final_callback_queued = True
            self.sim.final_callbacks.append(self._final_callback)
        if self.training == "pre_backward":
            return
        self.training = "pre_backward"
        self.unshard()
        self.wait_for_unshard()
        # _backward_prefetch: the unit that ran forward before this one
        if self.post_forward_indices:
            i = self.post_forward_indices.pop()
            if i > 0:
                target = self.comm.post_forward_order[i - 1]
                saved, target.training = target.training, "pre_backward"
                target.unshard()
                target.training = saved

    def post_backward(self) -> None:
        sim = self.sim
        self.training = "post_backward"
        grads: list[T] = []
        with_grad: list[int] = []
        for i, p in enumerate(self.params):
            if p.grad is not None:
                with_grad.append(i)
                grads.append(p.grad)
                p.grad = None
        self.reshard()
        states = self.comm.reduce_scatter_states
        while states:  # reduce_scatter_max_input_buffers = 1
            states.pop(0)
        if not grads:
            return
        dtype = grads[0].dtype
        rs_in = sim.new((sum(self.shard_numel[i] for i in with_grad) * self.world,), dtype, "empty")
        _tag(sim, rs_in, "communication", self.network)
        grads.clear()  # foreach_reduce_scatter_copy_in, then unsharded_grads.clear() (last to first)
        rs_out = sim.new((sum(self.shard_numel[i] for i in with_grad),), dtype, "empty")
        _tag(sim, rs_out, "gradients", self.network)
        for i in with_grad:
            sh = self.sharded[i]
            if sh.grad is None:
                sh.grad = T((self.shard_numel[i],), dtype, rs_out.st)
            # else: sharded_param.grad._local_tensor += new_sharded_grad (in place)
        states.append(rs_in)
        del rs_out, rs_in

    def finalize_backward(self) -> None:
        self.all_gather_result = None
        self.post_forward_indices.clear()

    def _final_callback(self) -> None:
        """FSDPState._root_post_backward_final_callback."""
        comm = self.comm
        comm.iter_forward_root = None
        for unit in comm.units:
            if unit.training != "post_backward":
                unit.post_backward()
            unit.training = "idle"
            unit.state_training = "idle"
            unit.finalize_backward()
        comm.post_forward_order.clear()
        comm.reduce_scatter_states.clear()
        comm.final_callback_queued = False


def _tensors(x: Any) -> list[T]:
    if isinstance(x, T):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in _tensors(y)]
    return []


class FSDP:
    """``fully_shard`` on each unit block of a simulated network, then on the network."""

    def __init__(self, sim: Sim, name: str, net: Mod, world: int, reshard_after_forward: bool) -> None:
        self.module = net
        comm = _Comm()
        units = [m for m in net.modules() if getattr(m, "fsdp_unit", False) and m is not net]
        units = [u for u in units if not any(u is not o and u in list(o.modules()) for o in units)]
        owned: set[int] = set()
        made: list[_Unit] = []
        for mod in units:
            ps = [p for p in mod.parameters() if id(p) not in owned]
            owned.update(id(p) for p in ps)
            made.append(self._hook(_Unit(sim, comm, name, mod, ps, world, reshard_after_forward)))
        rest = [p for p in net.parameters() if id(p) not in owned]
        root = self._hook(_Unit(sim, comm, name, net, rest, world, reshard_after_forward))
        comm.units = [root, *made]
        self.units = comm.units
        shard_of = {id(p): sh for u in self.units for p, sh in zip(u.params, u.sharded)}
        self._sharded = [shard_of[id(p)] for p in net.parameters()]  # module order, as named_parameters
        self.blocks = (getattr(units[0], "torch_name", type(units[0]).__name__), len(units)) if units else None

    @staticmethod
    def _hook(unit: _Unit) -> _Unit:
        mod = unit.module
        orig = mod.forward

        def forward(*args: Any, **kw: Any) -> Any:
            args = unit.pre_forward(args)
            return unit.post_forward(orig(*args, **kw))

        mod.forward = forward  # type: ignore[method-assign]
        return unit

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.module(*args, **kw)

    def parameters(self) -> list[T]:
        return list(self._sharded)


FROZEN = "replicated (frozen: not wrapped)"


def layout_text(strategy: str, world: int, blocks: tuple[str, int] | None = None) -> str:
    """How one network is held on each rank (the same words for the trace and the estimate)."""
    if strategy == "ddp":
        return ("replicated (DDP): parameters, gradients and optimizer state whole on every rank, "
                "+ gradient buckets")
    what = f"each {blocks[0]} ({blocks[1]}) and the rest of the network" if blocks else "the whole network"
    mode = "ZeRO-3: reshard after forward" if strategy == "fsdp" else "ZeRO-2-like: no reshard after forward"
    return (f"sharded (FSDP2 fully_shard, {mode}) over {world} ranks: parameters, gradients and "
            f"optimizer state; all-gathered per unit: {what}")


def wrap_networks(sim: Sim, nets: dict[str, Mod | None], strategy: str, world: int,
                  layout: dict[str, str] | None = None) -> dict[str, Any]:
    """Each network with a parameter that requires grad wrapped for ``strategy`` on ``world`` ranks
    (planner/measure/distributed.py ``wrap``); frozen ones and absent ones (None) as they are.
    ``layout`` gets each network's ``layout_text``."""
    out: dict[str, Any] = {}
    layout = {} if layout is None else layout
    for name, net in nets.items():
        if net is None:
            out[name] = net
        elif not any(p.requires_grad for p in net.parameters()):
            out[name] = net
            layout[name] = FROZEN
        elif strategy == "ddp":
            out[name] = DDP(sim, name, net)
            layout[name] = layout_text(strategy, world)
        else:
            w = out[name] = FSDP(sim, name, net, world, reshard_after_forward=(strategy == "fsdp"))
            layout[name] = layout_text(strategy, world, w.blocks)
    return out
