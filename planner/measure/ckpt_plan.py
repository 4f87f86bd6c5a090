"""Choosing what to checkpoint, per module, from one trace (``--checkpoint auto``).

One trace of the step without checkpointing (``planner/measure/stepfile.py`` ``run`` with an
observer) records, for every module instance that runs forward with grad in iteration 2
(nested modules, modules inside ``nn.Sequential``, repeated classes: each instance by its
qualified name ``network.path``):

* the storages it allocates in its forward, less those it returns (its outputs stay alive as
  the next module's input whether it is checkpointed or not; its inputs were allocated outside
  it and are kept by the checkpoint either way);
* when each of them is freed, and when the module's backward starts (the first of them freed
  in the backward phase): checkpointing the module removes each such storage from the end of
  the module's forward until its backward, where the recomputation rebuilds it. Storages the
  forward freed itself (transients) are unchanged;
* its forward FLOPs (``torch.utils.flop_counter.flop_registry``, as ``seconds_per_sample``
  counts them) and the bytes its ops write: the work a recomputation redoes, in seconds by the
  time model (``planner.analytic.cost.roofline_seconds``). Non-reentrant checkpointing stops
  recomputing once the last saved tensor exists (``torch/utils/checkpoint.py``
  ``set_checkpoint_early_stop``), so this is an upper bound.

Candidates are the user's own module classes and any module with children (``nn.Sequential``,
``TransformerEncoderLayer``); torch's leaf layers (Linear, Conv3d, LayerNorm) alone hold little
beyond the output they return, and are left to their parents.

The live bytes after every op of iteration 2 (``L(t)``) and those windows predict the peak of a
plan: ``max_t L(t) - sum over chosen modules of their removed bytes live at t``.

The choice is a knapsack over the module tree (a module and one of its ancestors are never both
chosen: the ancestor's checkpoint already recomputes it): least recompute seconds such that the
bytes removed at the peak reach what the budget needs. It is solved exactly by merging Pareto
frontiers (bytes removed, seconds) bottom-up; a frontier of more than ``FRONTIER`` points is
thinned to ``FRONTIER`` points on an even grid of bytes (said in the plan when it happens); for a
budget, bytes beyond the need count as the need, which keeps most frontiers small. The prediction is
then checked at the trace's other high points; where another moment becomes the peak, that moment
joins the first and the frontier is solved over all of them at once (``frontier_at``: a point is
dropped only when another removes as much at every moment for no more recompute), up to ``ROUNDS``
moments. (Raising the need at the first moment instead, as before, cost up to 2.3x the least
recompute on examples/steps/template.py; found by the comparison with torch's SAC MILP,
``benchmarks/bench_sac_milp.py``.) The plan is verified by tracing it.

Budget: with a card (``recommend``), its capacity less the margin, on the device total (the
reserved and context overhead of the plan taken as the unchecked step's); without one, the
least recompute whose predicted peak is within ``NEAR_MIN`` of the lowest peak any plan
reaches at the trace's peak ("minimise the peak, then the recompute").

Torch's own solver for this choice is ``torch/distributed/_tools/sac_ilp.py`` ``sac_milp``
(a MILP over ``sac_estimator.py``'s per-module statistics; needs ``pulp`` and ``pwlf``, in the
``test`` extra, not a runtime dependency): ``benchmarks/bench_sac_milp.py`` runs it on the same
step and budget; ``benchmarks/bench_ckpt.py`` compares against an exhaustive search on the same
numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from planner.check import fmt_bytes
from planner.errors import PlannerError

FRONTIER = 4096  # most Pareto points kept per module (see the module docstring)
ROUNDS = 6  # most moments a budget plan is solved for at once (another moment became the peak)
NEAR_MIN = 0.01  # no budget: within 1 % of the lowest reachable peak
HIGH_POINTS = 512  # local maxima of L(t) where a plan's peak is checked
DEFAULT_CARD = "A100 80GB"  # the time model's card when none is given (ratios only)


# --- selective activation checkpointing -----------------------------------------------------------

# What selective checkpointing (``sac:`` in --checkpoint) keeps: the outputs of the ops that cost
# FLOPs (matmuls, convolutions, attention); everything else (pointwise, norms, reshapes) is
# recomputed. torch.utils.checkpoint.create_selective_checkpoint_contexts with this policy, as in
# torch's own example (``torch/utils/checkpoint.py`` create_selective_checkpoint_contexts docstring)
# and the matmul/attention ops ``torch/distributed/_tools/sac_estimator.py`` treats as compute-bound.
SAC_SAVE = frozenset((
    "mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_convolution", "cudnn_convolution",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward",
    "_scaled_dot_product_flash_attention_for_cpu",
))


def sac_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """MUST_SAVE for SAC_SAVE ops, PREFER_RECOMPUTE for the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    name = str(op.overloadpacket.__name__) if hasattr(op, "overloadpacket") else str(op)
    return CheckpointPolicy.MUST_SAVE if name in SAC_SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def sac_context() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(sac_policy)


# --- the probe: one trace, per module -----------------------------------------------------------


@dataclass
class ModuleStats:
    path: str
    cls: str
    parent: str | None  # nearest ancestor that ran forward with grad (None: a network's top)
    own_class: bool  # a class of the user's (not torch.*): class rules are written with these
    has_children: bool = False
    flops: int = 0
    written: int = 0
    sac_flops: int = 0  # of the ops selective checkpointing recomputes (not in SAC_SAVE)
    sac_written: int = 0
    calls: int = 0
    # (uid, end of the forward call that allocated it); windows are computed after the run
    held: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ProbeResult:
    live: list[int]  # L(t): live bytes after each op of iteration 2
    modules: dict[str, ModuleStats]
    nbytes: dict[int, int]  # uid -> rounded bytes
    saved_op: dict[int, bool]  # uid -> made by a SAC_SAVE op (selective checkpointing keeps it)
    freed: dict[int, tuple[int, bool]]  # uid -> (op index, freed in backward)
    instances: dict[str, list[str]]  # class name -> every instance path in the networks
    flops_total: int = 0


class _Probe:
    """The observer (``stepfile.run(observer=...)``): entered around each iteration; records
    iteration 2 only."""

    def __init__(self, nets: dict[str, Any]) -> None:
        self.paths: dict[int, tuple[str, str, bool, bool]] = {}
        self.instances: dict[str, list[str]] = {}
        for root, net in nets.items():
            for name, mod in net.named_modules():
                if not name:
                    continue  # a network itself cannot be wrapped in place
                cls = type(mod)
                own = not cls.__module__.startswith("torch.")
                self.paths[id(mod)] = (f"{root}.{name}", cls.__name__, own, next(mod.children(), None) is not None)
                self.instances.setdefault(cls.__name__, []).append(f"{root}.{name}")
        self.iteration = 0
        self.result: ProbeResult | None = None
        self._exit: contextlib.ExitStack | None = None

    def __enter__(self) -> "_Probe":
        self.iteration += 1
        if self.iteration == 2:
            self._exit = contextlib.ExitStack()
            self._exit.__enter__()
            self._start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._exit is not None:
            self._exit.__exit__(*exc)
            self._exit = None

    def _start(self) -> None:
        import torch
        from torch.nn.modules import module as m
        from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
        from torch.utils._pytree import tree_flatten
        from torch.utils.flop_counter import flop_registry

        from planner.measure.tracker import LiveStorageTracker, Phase

        tracker = next((md for md in _get_current_dispatch_mode_stack() if isinstance(md, LiveStorageTracker)), None)
        if tracker is None:
            raise PlannerError("--checkpoint auto: the planning trace found no storage tracker")
        res = ProbeResult([], {}, {}, {}, {}, self.instances)
        self.result = res
        frames: list[tuple[str, list[int]]] = []  # modules running forward with grad, outermost first
        outputs: dict[int, set[int]] = {}
        probe = self

        def pre(mod: Any, *_: Any) -> None:
            info = probe.paths.get(id(mod))
            if info is None or not torch.is_grad_enabled() or tracker.phase != Phase.FORWARD:
                return
            path, cls, own, kids = info
            st = res.modules.get(path)
            if st is None:
                parent = next((f[0] for f in reversed(frames)), None)
                st = res.modules[path] = ModuleStats(path, cls, parent, own, kids)
            st.calls += 1
            frames.append((path, []))
            outputs[id(mod)] = set()

        def post(mod: Any, _args: Any, out: Any) -> None:
            info = probe.paths.get(id(mod))
            if info is None or not frames or frames[-1][0] != info[0]:
                return
            path, uids = frames.pop()
            kept = {tracker._by_obj.get(id(t.untyped_storage())) for t in tree_flatten(out)[0]
                    if isinstance(t, torch.Tensor)}
            end = len(res.live)
            res.modules[path].held.extend((u, end) for u in uids if u not in kept)

        reg, rel = tracker._register, tracker._release

        def register(st: Any, op: str) -> int:
            before = len(tracker.info)
            uid = reg(st, op)
            if len(tracker.info) > before:
                nbytes = res.nbytes[uid] = tracker.info[uid].nbytes
                res.saved_op[uid] = op in SAC_SAVE
                for path, uids in frames:
                    uids.append(uid)
                    # the bytes the time model counts as written: allocations, as seconds_per_sample
                    # sums them (views write nothing)
                    st = res.modules[path]
                    st.written += nbytes
                    if op not in SAC_SAVE:
                        st.sac_written += nbytes
            return uid

        def release(key: int, uid: int) -> None:
            res.freed.setdefault(uid, (len(res.live), tracker.phase == Phase.BACKWARD))
            rel(key, uid)

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
                res.flops_total += flops
                if frames and flops:
                    recomputed = str(func.overloadpacket.__name__) not in SAC_SAVE
                    for path, _ in frames:
                        st = res.modules[path]
                        st.flops += flops
                        if recomputed:
                            st.sac_flops += flops
                res.live.append(tracker.current)
                return out

        tracker._register, tracker._release = register, release  # type: ignore[method-assign]
        handles = [m.register_module_forward_pre_hook(pre), m.register_module_forward_hook(post, always_call=True)]
        assert self._exit is not None
        self._exit.callback(lambda: [h.remove() for h in handles])
        self._exit.callback(lambda: (setattr(tracker, "_register", reg), setattr(tracker, "_release", rel)))
        self._exit.enter_context(_Mode())


def probe(setup: Any) -> tuple[ProbeResult, Any]:
    """The planning trace: ``setup`` without checkpointing, fake backend, with the probe.
    Returns the probe's figures and the StepRecord."""
    from planner.measure.stepfile import run

    holder: list[_Probe] = []

    def observer(nets: dict, _opts: dict) -> _Probe:
        holder.append(_Probe(nets))
        return holder[-1]

    record = run(replace(setup, checkpoint=()), "fake", keep_timeline=False, count_flops=True, observer=observer)
    res = holder[0].result if holder else None
    if res is None or not res.live:
        raise PlannerError("--checkpoint auto: the planning trace recorded no iteration 2")
    return res, record


# --- per-module figures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    path: str
    cls: str
    parent: str | None
    own_class: bool
    saved: int  # bytes removed at the traced peak
    seconds: float  # recompute seconds per step by the time model
    flops: int
    written: int
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()
    kept: tuple[bool, ...] = ()  # per window: made by a SAC_SAVE op (selective checkpointing keeps it)
    sac_saved: int = 0
    sac_seconds: float = 0.0
    # selective checkpointing also keeps SAC_SAVE outputs the plain forward freed early (fc1's output
    # that relu consumed): alive from their free until the backward, windows that add bytes
    extra: tuple[tuple[int, int, int], ...] = ()

    def removed_at(self, t: int, sac: bool = False) -> int:
        gone = sum(b for s, e, b, k in zip(self.starts, self.ends, self.sizes, self.kept)
                   if s <= t < e and not (sac and k))
        return gone - sum(b for s, e, b in self.extra if s <= t < e) if sac else gone


def candidates(res: ProbeResult, seconds: Callable[[int, int], float]) -> tuple[list[Candidate], int]:
    """Every module's figures at the peak op ``t*`` (returned with them)."""
    peak_t = max(range(len(res.live)), key=res.live.__getitem__)
    out = []
    for st in res.modules.values():
        if not st.own_class and not st.has_children:
            continue  # a torch layer alone (Linear, Conv3d, LayerNorm): what it holds beyond its output is small
        never = len(res.live) + 1
        back = min((res.freed[u][0] for u, _ in st.held if u in res.freed and res.freed[u][1]), default=never)
        starts, ends, sizes, kept, extra = [], [], [], [], []
        for u, end in st.held:
            free = res.freed.get(u, (never, False))[0]
            stop = min(free, back)
            if stop > end:
                starts.append(end)
                ends.append(stop)
                sizes.append(res.nbytes[u])
                kept.append(res.saved_op.get(u, False))
            elif res.saved_op.get(u, False) and back < never and free < back:
                extra.append((free, back, res.nbytes[u]))
        c = Candidate(st.path, st.cls, st.parent, st.own_class, 0, seconds(st.flops, st.written), st.flops, st.written,
                      tuple(starts), tuple(ends), tuple(sizes), tuple(kept),
                      sac_seconds=seconds(st.sac_flops, st.sac_written), extra=tuple(extra))
        out.append(replace(c, saved=c.removed_at(peak_t), sac_saved=c.removed_at(peak_t, sac=True)))
    return out, peak_t


# --- the exact choice ------------------------------------------------------------------------------

Point = tuple[int, float, tuple[str, ...]]  # (bytes removed at the peak, recompute seconds, modules)


def _prune(points: list[Point], cap: int | None = None) -> tuple[list[Point], bool]:
    """The Pareto frontier (more bytes for less time), by bytes ascending. With ``cap`` (the bytes
    a query needs), bytes beyond it count as ``cap``: every point reaching it collapses into the
    cheapest, which keeps the answer for that need exact. Beyond FRONTIER points it is thinned on
    an even grid of bytes, keeping each cell's cheapest and largest point."""
    best: list[Point] = []
    for p in sorted(points, key=lambda p: (-min(p[0], cap) if cap is not None else -p[0], p[1], len(p[2]))):
        if not best or p[1] < best[-1][1]:
            best.append(p)
    best.reverse()
    if len(best) <= FRONTIER:
        return best, False
    top = best[-1][0] if cap is None else min(best[-1][0], cap)
    width = max(1, top // (FRONTIER // 2))
    cells: dict[int, list[Point]] = {}
    for p in best:
        cells.setdefault(min(p[0], top) // width, []).append(p)
    kept = sorted({q for c in cells.values() for q in (c[0], c[-1])}, key=lambda p: p[0])
    return kept, True


def frontier(cands: list[Candidate], cap: int | None = None) -> tuple[list[Point], bool]:
    """The module tree's Pareto frontier: each module either checkpointed itself or left to its
    children's choices (``cap``: see :func:`_prune`)."""
    by_path = {c.path: c for c in cands}
    children: dict[str | None, list[str]] = {}
    for c in cands:
        children.setdefault(c.parent if c.parent in by_path else None, []).append(c.path)
    thinned = False

    def merge(fronts: list[list[Point]]) -> list[Point]:
        nonlocal thinned
        acc: list[Point] = [(0, 0.0, ())]
        for f in fronts:
            acc, t = _prune([(a[0] + b[0], a[1] + b[1], a[2] + b[2]) for a in acc for b in f], cap)
            thinned |= t
        return acc

    def solve(path: str) -> list[Point]:
        c = by_path[path]
        below = merge([solve(k) for k in children.get(path, [])])
        pts = below + ([(c.saved, c.seconds, (path,))] if c.saved > 0 else [])
        pts += [(c.sac_saved, c.sac_seconds, (SAC + path,))] if c.sac_saved > 0 else []
        f, t = _prune(pts, cap)
        nonlocal thinned
        thinned |= t
        return f

    return merge([solve(p) for p in children.get(None, [])]), thinned


def most_removed(cands: list[Candidate]) -> int:
    """The most bytes any plan removes at the peak: the largest point of :func:`frontier` (each
    module the most of itself whole, itself selective, or its children's together; thinning keeps
    the largest point), without building the frontier."""
    by_path = {c.path: c for c in cands}
    children: dict[str | None, list[str]] = {}
    for c in cands:
        children.setdefault(c.parent if c.parent in by_path else None, []).append(c.path)

    def most(path: str) -> int:
        c = by_path[path]
        return max(sum(most(k) for k in children.get(path, [])), c.saved, c.sac_saved)

    return sum(most(p) for p in children.get(None, []))


def cheapest(front: list[Point], need: int) -> Point | None:
    """The least recompute removing at least ``need`` bytes at the peak (None: none does)."""
    ok = [p for p in front if p[0] >= need]
    return min(ok, key=lambda p: (p[1], -p[0], len(p[2]))) if ok else None


VFRONTIER = 128  # most points kept per module by frontier_at (its cross products grow as the square)
VectorPoint = tuple[tuple[int, ...], float, tuple[str, ...]]  # (bytes removed at each moment, seconds, modules)


def frontier_at(cands: list[Candidate], moments: list[int], needs: list[int]) -> tuple[list[VectorPoint], bool]:
    """The module tree's frontier over several moments of the step at once: a point is kept unless
    another removes at least as much at *every* moment (each capped at its need) for no more
    recompute. At one moment this is :func:`frontier` with a cap; at several it keeps the plans a
    one-moment frontier drops (checkpointing a whole ``nn.Sequential`` removes more at the first
    peak than checkpointing its blocks, then recomputes all of them at once where the peak moved).
    Beyond VFRONTIER points a node's frontier is thinned on an even grid of bytes (said in the plan)."""
    by_path = {c.path: c for c in cands}
    children: dict[str | None, list[str]] = {}
    for c in cands:
        children.setdefault(c.parent if c.parent in by_path else None, []).append(c.path)
    caps = tuple(needs)
    thinned = False

    def capped(v: Any) -> tuple[int, ...]:
        return tuple(min(x, n) for x, n in zip(v, caps))

    def prune(points: list[VectorPoint]) -> list[VectorPoint]:
        nonlocal thinned
        import numpy as np

        cheapest: dict[tuple[int, ...], VectorPoint] = {}
        for p in points:
            q = cheapest.get(p[0])
            if q is None or (p[1], len(p[2])) < (q[1], len(q[2])):
                cheapest[p[0]] = p
        pts = sorted(cheapest.values(), key=lambda p: (p[1], len(p[2])))
        vec = np.asarray([p[0] for p in pts], dtype=np.int64).reshape(len(pts), len(caps))
        kept: list[int] = []
        for i in range(len(pts)):
            if not kept or not (vec[kept] >= vec[i]).all(axis=1).any():
                kept.append(i)
        out = [pts[i] for i in kept]
        if len(out) > VFRONTIER:
            # thinned on an even grid of the bytes summed over the moments (each capped at its
            # need): each cell's cheapest and largest point
            thinned = True
            total = [sum(p[0]) for p in out]
            width = max(1, max(total) // (VFRONTIER // 2))
            cells: dict[int, list[int]] = {}
            for i, t in enumerate(total):
                cells.setdefault(t // width, []).append(i)
            keep = {j for c in cells.values() for j in (c[0], max(c, key=total.__getitem__))}
            out = [out[i] for i in sorted(keep)]
        return out

    def merge(fronts: list[list[VectorPoint]]) -> list[VectorPoint]:
        acc: list[VectorPoint] = [(tuple(0 for _ in caps), 0.0, ())]
        for f in fronts:
            acc = prune([(capped(a + b for a, b in zip(x[0], y[0])), x[1] + y[1], x[2] + y[2]) for x in acc for y in f])
        return acc

    def solve(path: str) -> list[VectorPoint]:
        c = by_path[path]
        pts = merge([solve(k) for k in children.get(path, [])])
        for sac, secs, name in ((False, c.seconds, path), (True, c.sac_seconds, SAC + path)):
            if sac and c.sac_saved <= 0:
                continue  # as in frontier (and choose(selective=False) sets it to 0)
            v = tuple(c.removed_at(t, sac) for t in moments)
            if max(v) > 0:
                pts.append((capped(v), secs, (name,)))
        return prune(pts)

    return merge([solve(p) for p in children.get(None, [])]), thinned


def high_points(live: list[int]) -> list[int]:
    """Op indices of L(t)'s local maxima, the HIGH_POINTS highest."""
    n = len(live)
    peaks = [t for t in range(n) if (t == 0 or live[t] >= live[t - 1]) and (t == n - 1 or live[t] >= live[t + 1])]
    return sorted(peaks, key=lambda t: -live[t])[:HIGH_POINTS]


SAC = "sac:"  # --checkpoint sac:NAME: selective checkpointing of NAME (a class or a module path)


def _members(by_path: dict[str, Candidate], names: tuple[str, ...]) -> list[tuple[Candidate, bool]]:
    return [(by_path[n.removeprefix(SAC)], n.startswith(SAC)) for n in names]


def predicted_peak(live: list[int], chosen: list[tuple[Candidate, bool]], times: list[int],
                   cache: dict | None = None) -> tuple[int, int]:
    """(peak, op index) of the plan (candidates, selective or not) over ``times``; ``cache`` keeps
    each candidate's removed bytes at ``times`` between calls on the same times."""
    import numpy as np

    cache = {} if cache is None else cache
    at = np.asarray(times, dtype=np.int64)
    level = np.asarray([live[t] for t in times], dtype=np.int64)
    for c, sac in chosen:
        key = (c.path, sac)
        if key not in cache:
            removed = np.zeros(len(times), dtype=np.int64)
            rows = [(s, e, b) for s, e, b, k in zip(c.starts, c.ends, c.sizes, c.kept) if not (sac and k)]
            if rows:
                s_, e_, b_ = (np.asarray(x, dtype=np.int64)[:, None] for x in zip(*rows))
                removed += (((s_ <= at) & (at < e_)) * b_).sum(axis=0)
            if sac and c.extra:
                s_, e_, b_ = (np.asarray(x, dtype=np.int64)[:, None] for x in zip(*c.extra))
                removed -= (((s_ <= at) & (at < e_)) * b_).sum(axis=0)
            cache[key] = removed
        level = level - cache[key]
    i = int(level.argmax())
    return int(level[i]), times[i]


MIN_PEAK_SAMPLES = 128  # frontier points whose peak is predicted when minimising the peak


# --- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    modules: tuple[str, ...]
    """Instance paths chosen (network.path)."""
    checkpoint: tuple[str, ...]
    """What --checkpoint is given: class names where every instance of the class is chosen,
    instance paths for the rest."""
    peak: int
    predicted_peak: int
    saved: int
    recompute_seconds: float
    step_seconds: float
    budget: int | None
    """Bytes the peak must reach (None: minimise the peak)."""
    reason: str
    thinned: bool
    card: str
    table: tuple[Candidate, ...] = ()
    classes: tuple[str, ...] | None = None
    """The least-recompute rule of whole classes for the same need (None: no class rule reaches it)."""
    class_seconds: float = 0.0
    class_predicted_peak: int = 0

    @property
    def step_increase(self) -> float:
        return self.recompute_seconds / self.step_seconds if self.step_seconds else 0.0

    def rule(self) -> str:
        return ",".join(self.checkpoint) if self.checkpoint else "(nothing)"

    def short(self) -> str:
        """The rule's classes and how many single modules besides (a table cell)."""
        classes = [n for n in self.checkpoint if "." not in n]
        rest = len(self.checkpoint) - len(classes)
        return ",".join(classes) + (f"{' + ' if classes else ''}{rest} module{'s' if rest != 1 else ''}" if rest else "")

    def summary(self) -> str:
        """One line: what was chosen and why."""
        if not self.modules:
            return f"--checkpoint auto: nothing checkpointed ({self.reason})"
        classes = [n for n in self.checkpoint if "." not in n]
        paths = [n for n in self.checkpoint if "." in n]
        def count(c: str) -> int:
            prefix = SAC if c.startswith(SAC) else ""
            return sum(1 for m in self.table if m.cls == c.removeprefix(SAC) and prefix + m.path in self.modules)

        what = ", ".join([f"{count(c)} {c}" for c in classes] + paths)
        by_path = {m.path: m for m in self.table}
        flops = sum(by_path[n.removeprefix(SAC)].flops for n in self.modules if not n.startswith(SAC))
        return (f"--checkpoint auto: checkpoint {what} (--checkpoint {self.rule()}): {fmt_bytes(self.saved)} "
                f"less at the peak, predicted peak {fmt_bytes(self.predicted_peak)} (from "
                f"{fmt_bytes(self.peak)}); +{100 * self.step_increase:.1f} % step time recomputing "
                f"{flops / 1e9:.1f} GFLOP (whole modules) by the time model "
                f"({self.card}); {self.reason}{self.class_text()}")

    def class_text(self) -> str:
        if self.classes is None or set(self.classes) == set(self.checkpoint):
            return ""
        if not self.classes:
            return "; no rule of whole classes reaches it"
        return (f"; as a rule of whole classes: --checkpoint {','.join(self.classes)} (predicted peak "
                f"{fmt_bytes(self.class_predicted_peak)}, +{100 * self.class_seconds / self.step_seconds:.1f} % step time)"
                if self.step_seconds else "")

    def to_json(self) -> dict:
        return {"modules": list(self.modules), "checkpoint": list(self.checkpoint), "peak_bytes": self.peak,
                "predicted_peak_bytes": self.predicted_peak, "saved_bytes": self.saved,
                "recompute_seconds": self.recompute_seconds, "step_seconds": self.step_seconds,
                "step_time_increase": self.step_increase, "budget_bytes": self.budget, "reason": self.reason,
                "card": self.card}


CLASS_CHOICES = 12  # classes searched exhaustively for the class-level rule (2**12 subsets)
CLASS_SLACK = 0.02  # a rule of whole classes is applied when it recomputes at most 2 % of the step more


def class_plan(table: list[Candidate], instances: dict[str, list[str]], need: int) -> Point | None:
    """The least-recompute rule of whole classes (every instance that ran checkpointed) removing
    ``need`` bytes at the peak: exhaustive over the CLASS_CHOICES classes that remove the most;
    a class nested in another chosen one is redundant and such sets are skipped."""
    ran = {c.path: c for c in table}
    groups: dict[str, list[Candidate]] = {}
    for c in table:
        if c.own_class:
            groups.setdefault(c.cls, []).append(c)
    rows = sorted(((k, sum(c.saved for c in v), sum(c.seconds for c in v), {c.path for c in v}) for k, v in groups.items()
                   if sum(c.saved for c in v) > 0), key=lambda r: -r[1])[:CLASS_CHOICES]

    def nested(a: set[str], b: set[str]) -> bool:
        return any(x.startswith(y + ".") for x in a for y in b)

    best: Point | None = None
    for mask in range(1 << len(rows)):
        chosen = [rows[i] for i in range(len(rows)) if mask >> i & 1]
        saved = sum(r[1] for r in chosen)
        if saved < need:
            continue
        cost = sum(r[2] for r in chosen)
        if best is not None and (cost, -saved) >= (best[1], -best[0]):
            continue
        if any(nested(a[3], b[3]) for a in chosen for b in chosen if a is not b):
            continue
        best = (saved, cost, tuple(r[0] for r in chosen))
    del ran, instances
    return best


def class_rule(modules: tuple[str, ...], res_instances: dict[str, list[str]], table: list[Candidate]) -> tuple[str, ...]:
    """Class names for the user's classes every instance of which is chosen (instances that never
    ran forward with grad do not count against it), instance paths for the rest."""
    ran = {c.path: c for c in table}
    names: list[str] = []
    covered: set[str] = set()
    for prefix in ("", SAC):
        order = [p.removeprefix(prefix) for p in modules if p.startswith(SAC) == bool(prefix)]
        chosen = set(order)
        # in the modules' order: a set's order changes with the interpreter's string hashing, and the
        # rule is the checkpoint candidate's label and its traces' cache key
        for cls in dict.fromkeys(ran[p].cls for p in order if ran[p].own_class):
            inst = [p for p in res_instances.get(cls, []) if p in ran]
            if inst and all(p in chosen for p in inst):
                names.append(prefix + cls)
                covered |= {prefix + p for p in inst}
    return tuple(names) + tuple(p for p in modules if p not in covered)


def choose(res: ProbeResult, record: Any, gpu: Any = None, budget: int | None = None, half: bool = False,
           selective: bool = True) -> Plan:
    """The plan for ``budget`` bytes of peak allocation (None: minimise the peak); ``selective``:
    selective checkpointing among the candidates."""
    from planner.analytic.cost import roofline_seconds
    from planner.gpus import parse_gpu

    card = gpu or parse_gpu(DEFAULT_CARD)

    def secs(f: int, w: int) -> float:
        return roofline_seconds(f, w, card, half=half)

    written = sum(d for _, d in record.events[record.iteration2_start:] if d > 0)
    step_seconds = secs(res.flops_total, written)
    table, peak_t = candidates(res, secs)
    if not selective:
        table = [replace(c, sac_saved=0) for c in table]
    peak = res.live[peak_t]
    by_path = {c.path: c for c in table}
    times = high_points(res.live)
    best_reachable = most_removed(table)
    front, thinned = frontier(table) if budget is None else ([], False)  # a budget queries its own (capped)
    cache: dict = {}
    if budget is None:
        # the lowest predicted peak over (a sample of) the frontier, then the cheapest point within
        # NEAR_MIN of it; the frontier is by recompute ascending
        n = len(front)
        sample = front if n <= MIN_PEAK_SAMPLES else [front[round(i * (n - 1) / (MIN_PEAK_SAMPLES - 1))]
                                                      for i in range(MIN_PEAK_SAMPLES)]
        preds = [predicted_peak(res.live, _members(by_path, p[2]), times, cache)[0] for p in sample]
        low = min(preds)
        first = next(p for p, v in zip(sample, preds) if v <= low + NEAR_MIN * peak)
        need, goal = first[0], peak
        why = (f"no card given: the least recompute within {NEAR_MIN:.0%} of the peak of the lowest predicted peak "
               f"({fmt_bytes(low)})")
        if low >= peak:
            need = 0
            why = ("no card given, and no plan lowers the predicted peak (another moment, or the recomputation "
                   "itself, reaches it again)")
    else:
        need, goal = max(0, peak - budget), budget
        why = f"the least recompute that brings the peak to {fmt_bytes(budget)}"
    pick: Point | None = (0, 0.0, ())
    pred = (peak, peak_t)
    moments = [peak_t]  # the moments a plan must lower; where its predicted peak moves, that moment joins
    for _ in range(ROUNDS):
        if budget is None:
            pick = cheapest(front, need)
        elif len(moments) == 1:
            query, thin = frontier(table, need)
            thinned |= thin
            pick = cheapest(query, need)
        else:
            # what every moment seen so far needs, at once (a point of the one-moment frontier can
            # be beaten where the peak moved by one it dominates at the first moment)
            needs = [res.live[t] - goal for t in moments]
            vfront, thin = frontier_at(table, moments, needs)
            thinned |= thin
            ok = [p for p in vfront if all(x >= n for x, n in zip(p[0], needs))]
            best_v = min(ok, key=lambda p: (p[1], len(p[2]))) if ok else None
            pick = None if best_v is None else (
                sum(by_path[n.removeprefix(SAC)].removed_at(peak_t, n.startswith(SAC)) for n in best_v[2]),
                best_v[1], best_v[2])
        if pick is None:
            break
        pred = predicted_peak(res.live, _members(by_path, pick[2]), times, cache)
        if pred[0] <= goal or budget is None or pred[1] in moments:
            break
        moments.append(pred[1])
    if pick is None:
        if not front:
            front, thin = frontier(table)
            thinned |= thin
        best = cheapest(front, best_reachable)
        assert best is not None
        pick = best
        pred = predicted_peak(res.live, _members(by_path, pick[2]), times, cache)
        why = (f"the budget {fmt_bytes(goal)} is out of reach by checkpointing alone (lowest predicted peak "
               f"{fmt_bytes(pred[0])}): the plan that removes the most")
    if peak_t >= len(res.live) - 1 or best_reachable == 0:
        why = "the peak holds no activation that checkpointing would remove (it is not between a forward and its backward)"
    order = list(by_path)
    modules = tuple(sorted(pick[2], key=lambda p: order.index(p.removeprefix(SAC))))
    rule = class_plan(table, res.instances, pick[0])
    rule_peak = 0
    if rule is not None:
        members = [(c, False) for c in table if c.cls in rule[2] and c.own_class]
        rule_peak = predicted_peak(res.live, members, times, cache)[0]
        near = rule[1] <= pick[1] + CLASS_SLACK * step_seconds and (
            rule_peak <= max(goal, pred[0]) if budget is not None else rule_peak <= pred[0] + NEAR_MIN * peak)
        lower = budget is None and rule_peak < pred[0] - NEAR_MIN * peak  # minimising: a lower peak wins
        if rule[2] and (near or lower) and set(rule[2]) != set(class_rule(modules, res.instances, table)):
            # the rule users write down, nearly as cheap: applied instead of the instance list
            why += (f"; the rule of whole classes is applied: {'its predicted peak is lower' if lower else ''}"
                    f"{'' if lower else f'it recomputes at most {CLASS_SLACK:.0%} of the step more'} "
                    f"than the per-instance plan ({len(modules)} modules, "
                    f"{sum(1 for m in modules if m.startswith(SAC))} of them selective: "
                    f"+{100 * pick[1] / step_seconds:.1f} %)")
            modules = tuple(c.path for c, _ in members)
            pick, pred = (rule[0], rule[1], modules), (rule_peak, pred[1])
    return Plan(modules, class_rule(modules, res.instances, table), peak, pred[0], pick[0], pick[1], step_seconds,
                budget, why, thinned, card.name, tuple(table), None if rule is None else rule[2],
                rule[1] if rule else 0.0, rule_peak)


SAC_TOLERANCE = 0.02  # a selective plan traced more than 2 % of the peak above its prediction is replaced


def verified(p: Plan, replan: Callable[[], Plan], trace: Callable[[Plan], Any]) -> tuple[Plan, Any, str]:
    """The plan traced (``trace(plan)`` -> StepRecord). A plan with selective checkpointing whose
    trace fails (torch's SAC cache replays the forward's op stream; seen to miss an autocast
    ``_to_copy`` on ldm_stage1) or peaks more than SAC_TOLERANCE of the peak above its prediction
    (the selective model is the rougher one) is replaced by ``replan()`` (without it) and traced.
    Returns (plan, record, what happened)."""
    selective = any(n.startswith(SAC) for n in p.checkpoint)
    try:
        record = trace(p)
    except PlannerError as exc:
        if not selective:
            raise
        why = f"selective checkpointing failed in the trace ({str(exc)[:160]})"
    else:
        got = record.tracker.peak_bytes
        if not selective or got <= p.predicted_peak + SAC_TOLERANCE * p.peak:
            return p, record, ""
        why = f"the selective plan traced at {fmt_bytes(got)}, over its prediction {fmt_bytes(p.predicted_peak)}"
    p = replan()
    return p, trace(p), f"; {why}: planned without selective checkpointing"


def auto_for_card(gpu_text: str, margin: float) -> tuple[str, ...]:
    """``--checkpoint auto`` with ``--gpu``: ``auto:BYTES``, the card's capacity less the margin
    (the device total the plan must reach), carried in the setup to the trace."""
    from planner.gpus import parse_gpu

    return (f"auto:{int(parse_gpu(gpu_text).capacity_bytes * (1 - margin))}",)


def _budget(setup: Any, record: Any, total: int, capacity: int | None = None) -> tuple[int | None, bool]:
    """(peak-allocation budget, fits as is) for ``total`` bytes of device total: the reserved and
    context overhead above the peak allocation taken as the unchecked step's."""
    from planner.measure.profile import report_from

    rep = report_from(record, "fake", setup.alloc_conf, 0.0, capacity_bytes=capacity)
    fits = rep.device_total_bytes <= total
    return (None if fits else total - (rep.device_total_bytes - rep.peak_allocated_bytes)), fits


def run_auto(setup: Any, backend: str, **kw: Any) -> Any:
    """``stepfile.run`` for ``--checkpoint auto`` (``auto:BYTES``: for that device total): the plan,
    then the plan traced (its verification); the record's notes say what was chosen and what the
    trace found."""
    from planner.measure.stepfile import run

    total = int(setup.checkpoint[0][5:]) if setup.checkpoint[0].startswith("auto:") else None
    res, probed = probe(setup)
    half = setup.precision != "fp32"
    budget, fits = _budget(setup, probed, total) if total is not None else (None, False)

    def plan(selective: bool = True) -> Plan:
        p = choose(res, probed, None, budget, half=half, selective=selective)
        return replace(p, reason=p.reason.replace("no card given", f"it fits {fmt_bytes(total)} as is")) if fits else p

    p, record, fallback = verified(plan(), lambda: plan(False),
                                   lambda q: run(replace(setup, checkpoint=q.checkpoint), backend, **kw))
    got = record.tracker.peak_bytes
    text = (p.summary() + f"; traced with it: peak {fmt_bytes(got)} "
            f"({'as predicted' if got == p.predicted_peak else f'{(got - p.predicted_peak) / 2**20:+.1f} MiB from the prediction'})"
            + fallback)
    info = dict(record.setup, checkpoint_plan=p.to_json())
    return replace(record, setup=info, tracker=replace(record.tracker, notes=list(record.tracker.notes) + [text]))


# --- recommend: the plan for a card, and why the winner wins ----------------------------------------


def _card_plan(item: tuple) -> tuple[Plan, list[tuple[Any, Any]]]:
    """In a worker: the plan for ``gpu`` less ``margin`` on the device total (the reserved and
    context overhead above the peak allocation taken as the unchecked step's); where the step
    fits already, the least-recompute plan minimising the peak (a candidate for the search). With
    it the traces the search takes of both (setup, StepRecord): the planning trace, which is the
    unchecked step's own (the probe only watches), and the step with the plan (``trace_plan``:
    the search's checkpoint candidate, or its input under ``--checkpoint auto``); both cached."""
    setup, gpu, margin, trace_plan = item
    res, record = probe(setup)
    from planner.measure import traces

    record = replace(record, tracker=replace(record.tracker, timeline=[]))
    traces._store(setup, record)
    budget, fits = _budget(setup, record, int(gpu.capacity_bytes * (1 - margin)), gpu.capacity_bytes)
    half = setup.precision != "fp32"
    p = choose(res, record, gpu, budget, half=half)
    if fits:
        p = replace(p, reason=p.reason.replace("no card given", f"the step fits {gpu.name} as is, so for the search"))
    out = [(setup, record)]
    checked = None
    if any(n.startswith(SAC) for n in p.checkpoint):
        # a selective plan is traced here (and cached: it is the search's own candidate), see verified
        p, checked, _ = verified(p, lambda: choose(res, record, gpu, budget, half=half, selective=False),
                                 lambda q: traces._traced((replace(setup, checkpoint=q.checkpoint), True)))
    elif p.checkpoint and trace_plan:
        checked = traces._traced((replace(setup, checkpoint=p.checkpoint), True))
    if checked is not None:
        out.append((replace(setup, checkpoint=p.checkpoint), checked))
    return p, out


def card_plan_call(setup: Any, gpu: Any, margin: float, trace_plan: bool = True) -> Any:
    """:func:`_card_plan` as a call into the user's code (``traces.SideCall``: run in a worker
    process under the timeout, beside the traces of a round); its ``result`` is (plan, traces)."""
    from planner.measure import traces

    s = replace(setup, checkpoint=())
    return traces.SideCall(_card_plan, (s, gpu, margin, trace_plan), f"planning checkpoints for {s.label()}")


def why(best: Any, ordered: list, as_is: Any, budget: float) -> str | None:
    """One line: the winner's step time against the fitting alternatives' (the time model, relative
    to the input setup), e.g. "chosen micro-batch 2 x accumulation 2: +1 % step time | fitting
    alternatives: checkpoint Block (per-module plan): +24 % step time | ..."."""
    base = as_is.seconds_per_sample if as_is is not None else None
    if best is None or not base:
        return None

    def cost(c: Any) -> str:
        return f"{100 * (c.seconds / base - 1):+.0f} % step time"

    others, seen = [], {tuple(d for d, _ in best.parts)}
    for c in ordered:
        dims = tuple(d for d, _ in c.parts)
        if c is best or c.report is None or c.fit_total > budget or dims in seen or c.seconds_per_sample is None:
            continue
        seen.add(dims)
        others.append(f"{'; '.join(c.changes) or 'as is'}: {cost(c)}")
        if len(others) == 3:
            break
    head = f"why (time model, relative to the input): chosen {'; '.join(best.changes) or 'as is'}: {cost(best)}"
    return head + (" | fitting alternatives: " + " | ".join(others) if others else " | no other kind of change fits (verified)")
