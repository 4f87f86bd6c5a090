"""vramplan's checkpoint plan (planner/measure/ckpt_plan.py) against torch's own SAC MILP, same step, same budget.

    python benchmarks/bench_sac_milp.py [--steps NAME,...] [--json FILE] [--check]

Needs ``pulp`` (``torch/distributed/_tools/sac_ilp.py`` imports it; the ``test`` extra installs
pulp==3.3.2). For each step (small knobs, so the whole run takes minutes on 2 cores):

* **vramplan**: the planning trace (``ckpt_plan.probe``), then ``ckpt_plan.choose`` at budgets
  that ask for 25 %, 50 % and 90 % of the most checkpointing removes at the peak; each plan is
  traced (the tool's verification).
* **torch**: the same step file, same setup, traced once more on the fake backend with torch's
  three tools entered around iteration 2, as ``torch/distributed/_tools/ilp_utils.py``
  ``aggregate_stats`` expects them: ``MemTracker`` (per-module activation memory; counting as
  vramplan's tracker does, ``benchmarks/zoo_harness.py``), ``RuntimeEstimator`` (per-module
  forward time) and ``SACEstimator`` (per-op memory/time trade-off curves of every non-leaf
  module), then ``parse_module_info`` and ``sac_milp``. Torch's two runtime modes need CUDA
  (``RuntimeEstimator._roofline_estimate`` asserts ``torch.cuda.is_available()`` for the
  device's peak rates; ``_benchmark_estimate`` times kernels), so every op's time is fed to both
  estimators from **vramplan's own roofline** (``planner.analytic.cost.roofline_seconds``, the
  op's FLOPs by ``torch.utils.flop_counter`` and the bytes of the storages it creates, on the
  A100 80GB that ``choose`` uses without a card): one time model for both solvers.
* **same budget**: torch's MILP models memory its own way (parameters + gradients + activations
  at each module's end of forward; ``sac_ilp.py``), so it is given its own baseline peak
  (``get_peak_memory_runtime_baseline``) less the bytes vramplan's budget asks to remove. Its
  answer ({module: fraction of activation memory discarded}) is then judged in vramplan's
  world: modules discarded whole (fraction 1) are traced as ``--checkpoint`` paths, and their
  recompute is their forward time by the same per-op roofline. A fraction below 1 is torch's
  *selective* checkpointing of that module (``get_optimal_checkpointing_policy_per_module``
  picks the ops); such a plan is not traced here (vramplan's ``sac:`` has one fixed policy) and
  only torch's own figures are shown for it.

Columns: need (bytes to remove at the peak) and budget, each plan's recompute (% of the step by
the time model), the traced peaks against the budget, why they differ; then each plan's modules
(torch's with the fraction discarded). ``--check`` exits 1 where vramplan recomputes more than
torch and none of the known reasons holds (torch discarding part of a module, torch's plan traced
over the budget): a defect to look at. Results and what was not compared: docs/checkpointing.md,
"Against torch's SAC MILP" (14 min for all steps on 2 shared cores; CBC runs minutes per budget
on ldm_stage2, under torch's 180 s limit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WHOLE = 0.999  # a MILP fraction at least this: the module's activations discarded whole

from bench_ckpt import FRACTIONS, STEPS  # noqa: E402  the same steps, sizes and budgets as the exhaustive reference


@dataclass
class TorchStats:
    """torch's tools on iteration 2 of the step."""

    graph: Any  # ilp_utils.Graph
    path: dict[str, str]  # torch fqn (``Net.blocks.0``) -> vramplan path (``net.blocks.0``)
    fw_seconds: dict[str, float]  # vramplan path -> forward seconds (RuntimeEstimator, per-op roofline)
    baseline: int  # torch's baseline peak (bytes), get_peak_memory_runtime_baseline
    vramplan_peak: int  # vramplan's tracker peak in the same run (the tools change nothing it counts)
    unfit: list[str] = field(default_factory=list)  # non-leaf modules whose trade-off curve pwlf could not fit


def _op_seconds(card: Any, half: bool) -> Any:
    """(func, args, kwargs) -> (out, milliseconds): the op run, its time by vramplan's roofline
    (its FLOPs by flop_registry, the bytes of the storages it creates, 512-byte rounded as the
    tracker counts them; an output sharing an input's storage, or one this tool has seen, is a view
    or an in-place write: nothing new)."""
    import torch
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry
    from torch.utils.weak import WeakIdKeyDictionary

    from planner.analytic.cost import roofline_seconds

    seen: Any = WeakIdKeyDictionary()

    def estimate(func: Any, args: Any, kwargs: Any) -> tuple[Any, float]:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        written = 0
        inputs: Any = WeakIdKeyDictionary()
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                inputs[t.untyped_storage()] = True
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st not in seen and st not in inputs:  # a view (a weight's .t()) or an in-place write: nothing new
                    seen[st] = True
                    written += math.ceil(st.nbytes() / 512) * 512
        return out, 1e3 * roofline_seconds(flops, written, card, half)

    return estimate


def torch_stats(setup: Any, card: Any, half: bool) -> TorchStats:
    """The step traced with MemTracker, RuntimeEstimator and SACEstimator around iteration 2."""
    import torch
    from torch.distributed._tools.ilp_utils import aggregate_stats, get_peak_memory_runtime_baseline, parse_module_info
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed._tools.runtime_estimator import RuntimeEstimator
    from torch.distributed._tools.sac_estimator import SACEstimator

    from planner.measure.stepfile import run
    from zoo_harness import _rounded_everywhere

    held: dict[str, Any] = {}

    class Tools:
        def __init__(self, nets: dict, opts: dict) -> None:
            self.nets, self.opts, self.iteration = nets, opts, 0
            self.stack = contextlib.ExitStack()

        def __enter__(self) -> "Tools":
            self.iteration += 1
            if self.iteration == 2:
                mt = _SameRulesWithModules()
                mt.track_external(*self.nets.values(), *self.opts.values())
                rt = RuntimeEstimator()("operator-level-cost-model")
                # the per-op time of vramplan's roofline (torch's needs CUDA); one each (what an op
                # creates is judged by what that tool has seen)
                rt._estimate = _op_seconds(card, half)
                sac = SACEstimator()("operator-level-cost-model")
                sac._estimate_runtime = _op_seconds(card, half)
                held.update(mt=mt, rt=rt, sac=sac, nets=self.nets)
                # ModTracker keeps modules by weak reference and looks them up again in backward; a
                # module made inside a forward and dropped before its backward (MONAI's SwinUNETR)
                # would fail that lookup ("cannot create weak reference to 'NoneType'"): kept alive here
                alive: list = []
                from torch.nn.modules.module import register_module_forward_pre_hook

                hook = register_module_forward_pre_hook(lambda m, _i: alive.append(m))
                self.stack.callback(hook.remove)
                self.stack.callback(alive.clear)
                for tool in (mt, rt, sac):
                    self.stack.enter_context(tool)
            return self

        def __exit__(self, *exc: Any) -> None:
            self.stack.__exit__(*exc)

    with _rounded_everywhere(), contextlib.redirect_stdout(sys.stderr):  # RuntimeEstimator prints its total
        record = run(replace(setup, checkpoint=()), "fake", keep_timeline=False, observer=Tools)
    mt, rt, sac = held["mt"], held["rt"], held["sac"]
    # a non-leaf module whose ops take no time or write nothing (views, a wrapper around one cheap
    # op) divides by zero in SACEstimator._get_sac_tradeoff_pwlf_stats; it has nothing to discard
    # or to recompute, so it is made a leaf (never an AC unit), as aggregate_stats does without stats
    dropped = [f for f, st in sac.sac_mod_stats.items() if sum(st.runtimes) <= 0 or sum(st.memory) <= 0]
    for f in dropped:
        del sac.sac_mod_stats[f]
    from torch.distributed._tools.mem_tracker import _ModState

    # a module that ran forward but no backward (no grad through it) has no pre-backward snapshot
    # (aggregate_stats would fail on it) and nothing checkpointing could discard: left out
    no_bw = [m for m, st in mt.memory_tracking.items() if not st.snapshots.get(_ModState.PRE_BW)]
    for m in no_bw:
        del mt.memory_tracking[m]
    infos, path = [], {}
    import numpy as np

    # SACEstimator fits its trade-off curves with pwlf, whose two-segment fits run scipy's
    # differential evolution on numpy's global random state: seeded, so that a run repeats
    np.random.seed(0)
    for name, net in held["nets"].items():
        infos.append(aggregate_stats(net, mt, rt, sac, torch.device("cpu")))
        known = {id(m): rt._mod_tracker.get_known_fqn(m) for m in net.modules()}
        for sub, m in net.named_modules():
            if known.get(id(m)) is not None:
                path[known[id(m)]] = f"{name}.{sub}" if sub else name
    # one tree over every network: the MILP's figures are device-wide snapshots, the order the forward's
    # ModTracker names a module by its root's class (``UNetModel.input_blocks.0``): two networks of one
    # class (a model and its EMA copy) share names; the first network's statistics are kept
    stats = list({s["fqn"]: s for i in reversed(infos) for s in reversed(i["mod_stats"])}.values())[::-1]
    have = {s["fqn"] for s in stats}
    order = {k: list(dict.fromkeys(f for f in v if f in have)) for k, v in infos[0]["mod_order"].items()}
    info = {"mod_order": order, "mod_stats": [s for s in stats if s["fqn"] in set(order["fw_pre_order"])]}
    # pwlf can return NaN slopes for a curve it cannot fit (a RuntimeWarning; seen on SwinUNETR), and
    # pulp refuses NaN coefficients: such a module is made a leaf (never an AC unit) and counted
    unfit = [s["fqn"] for s in info["mod_stats"] if not s["is_leaf"] and not all(
        math.isfinite(x) for x in [*s["slopes"], *s["intercepts"]])]
    for s in info["mod_stats"]:
        if s["fqn"] in unfit:
            s.update(is_leaf=True, slopes=[], intercepts=[], n_segments=0)
    graph = parse_module_info(info)
    fw = {path[f]: v["fw"] / 1e3 for f, v in rt.mod_runtimes.items() if f in path}
    return TorchStats(graph, path, fw, get_peak_memory_runtime_baseline(graph)[0], record.tracker.peak_bytes, unfit)


def _SameRulesWithModules() -> Any:
    """zoo_harness's MemTracker rules (host-side step counters excluded), ModTracker on: the MILP
    needs its per-module snapshots."""
    from zoo_harness import _same_rules_tracker

    mt = _same_rules_tracker()
    from torch.distributed._tools.mod_tracker import ModTracker

    mt._mod_tracker = ModTracker()
    # MemTracker's pre-forward hook registers a gradient hook on every parameter of every module it
    # sees (_track_module_params_and_buffers), which raises on a frozen one (a perceptual network):
    # those are marked as hooked already, with handles that remove nothing
    track = mt._track_module_params_and_buffers

    class _NoHandle:
        def remove(self) -> None:
            pass

    def frozen_skipped(module: Any, install_grad_hooks: bool = True) -> Any:
        for p in module.parameters():
            if not p.requires_grad:
                mt._param_to_grad_hook_handles.setdefault(p, (_NoHandle(), _NoHandle()))
        return track(module, install_grad_hooks=install_grad_hooks)

    mt._track_module_params_and_buffers = frozen_skipped
    return mt


def milp(ts: TorchStats, need: int) -> tuple[dict[str, float], float, int]:
    """sac_milp for torch's baseline less ``need`` bytes: ({vramplan path: fraction discarded},
    recompute seconds (its objective, ms -> s), its peak bound (bytes; -1: no solution))."""
    import copy
    import logging

    from torch.distributed._tools.sac_ilp import sac_milp

    logging.getLogger("torch.distributed._tools.sac_ilp").setLevel(logging.ERROR)  # its ACM<IA notes
    decisions, _ms, peak = sac_milp(copy.deepcopy(ts.graph), memory_budget=(ts.baseline - need) / 2**30)
    # its objective is rounded to 0.01 ms (sac_ilp.py), coarse at these sizes: recomputed from the
    # decisions as the MILP defines it, rct_i = sac_runtime_i * max(0, max_s slope_s * r_i + intercept_s)
    ms = 0.0
    for f, r in decisions.items():
        node = ts.graph.name2node[f]
        ms += node["sac_runtime"] * max([0.0] + [a * r + b for a, b in zip(node["slopes"], node["intercepts"])])
    return {ts.path[f]: r for f, r in decisions.items()}, ms / 1e3, peak


def compare(setup: Any, fractions: tuple[float, ...] = FRACTIONS, trace: bool = True) -> dict:
    """Both plans at each budget; rows of figures (see the module docstring)."""
    from planner.gpus import parse_gpu
    from planner.measure import ckpt_plan
    from planner.measure.stepfile import run

    half = setup.precision != "fp32"
    card = parse_gpu(ckpt_plan.DEFAULT_CARD)
    t0 = time.perf_counter()
    res, record = ckpt_plan.probe(setup)
    plan0 = ckpt_plan.choose(res, record, half=half)
    table = {c.path: c for c in plan0.table}
    reach = max(p[0] for p in ckpt_plan.frontier(list(table.values()))[0])
    peak = record.tracker.peak_bytes
    ts = torch_stats(setup, card, half)
    times = ckpt_plan.high_points(res.live)
    # one time model: a module's forward seconds from the per-op roofline fed to torch's estimators
    # against vramplan's own figure for it (the same FLOPs and written bytes: equal up to rounding)
    common = [p for p in table if p in ts.fw_seconds and table[p].seconds > 0]
    agree = max((abs(ts.fw_seconds[p] / table[p].seconds - 1) for p in common), default=0.0)
    out = {"time_model_difference": agree, "peak": peak, "reach": reach, "step_seconds": plan0.step_seconds, "torch_baseline": ts.baseline,
           "torch_run_peak": ts.vramplan_peak, "torch_candidates": sum(1 for n in ts.graph.nodes if not n["is_leaf"]), "torch_unfit": len(ts.unfit),
           "vramplan_candidates": len(table), "stats_seconds": round(time.perf_counter() - t0, 1), "rows": []}

    def traced(ck: tuple[str, ...]) -> int | None:
        if not trace:
            return None
        return run(replace(setup, checkpoint=ck), "fake", keep_timeline=False).tracker.peak_bytes

    for f in fractions:
        need = int(f * reach)
        mine, note = ckpt_plan.choose(res, record, budget=peak - need, half=half), ""
        if trace:  # as the tool does: a selective plan traced over its prediction is replanned without
            mine, rec, note = ckpt_plan.verified(
                mine, lambda: ckpt_plan.choose(res, record, budget=peak - need, half=half, selective=False),
                lambda q: run(replace(setup, checkpoint=q.checkpoint), "fake", keep_timeline=False))
        dec, t_secs, t_peak = milp(ts, need)
        whole = tuple(sorted(p for p, r in dec.items() if r >= WHOLE))
        partial = {p: r for p, r in dec.items() if r < WHOLE}
        # torch's whole-module choices in vramplan's figures (the same per-op roofline)
        t_whole_secs = sum(ts.fw_seconds.get(p, 0.0) for p in whole)
        row = {"fraction": f, "need": need, "budget": peak - need,
               "vramplan_modules": list(mine.checkpoint), "vramplan_seconds": mine.recompute_seconds,
               "vramplan_predicted": mine.predicted_peak, "vramplan_traced": rec.tracker.peak_bytes if trace else None,
               "vramplan_note": note.lstrip("; "),
               "torch_decisions": dec, "torch_seconds": t_secs, "torch_peak_bound": t_peak,
               "torch_whole_seconds": t_whole_secs,
               "torch_traced": traced(whole) if dec and not partial else None,
               "torch_predicted": (ckpt_plan.predicted_peak(res.live, [(table[p], False) for p in whole], times)[0]
                                   if dec and not partial and all(p in table for p in whole) else None),
               "torch_not_candidates": [p for p in whole if p not in table]}
        out["rows"].append(row)
    return out


def explain(row: dict) -> str:
    """Why the two plans differ, from the row's figures ("unexplained": a defect to look at)."""
    if row["torch_peak_bound"] < 0:
        return "torch's MILP found no plan within its budget"
    partial = {p: r for p, r in row["torch_decisions"].items() if r < WHOLE}
    # torch's plan in the same time model: its objective where it discards part of a module (its
    # trade-off curve), else its modules' forward seconds (what a whole-module checkpoint recomputes)
    theirs = row["torch_seconds"] if partial else row["torch_whole_seconds"]
    if row["vramplan_seconds"] <= theirs * (1 + 1e-6) + 1e-12:
        return "vramplan recomputes no more"
    parts = []
    if partial:
        parts.append(f"torch discards part of {len(partial)} module(s), choosing ops inside them "
                     "(vramplan's selective checkpointing has one fixed policy: keep matmul/conv/attention outputs): "
                     + ", ".join(f"{p} {r:.0%}" for p, r in list(partial.items())[:3]))
    if row["torch_traced"] is not None and row["torch_traced"] > row["budget"]:
        parts.append(f"torch's plan traced at {row['torch_traced'] / 2**20:.1f} MiB, over the budget "
                     f"{row['budget'] / 2**20:.1f} MiB (its memory model is a snapshot per module, not per op)")
    return "; ".join(parts) or "unexplained"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", help="comma-separated step names (the first column) instead of all")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--check", action="store_true", help="exit 1 on an unexplained excess")
    a = ap.parse_args()
    from planner.step_setup import StepSetup

    names = a.steps.split(",") if a.steps else None
    results, ok = {}, True
    for name, path, knobs, batch, precision in STEPS:
        if names and name not in names:
            continue
        setup = StepSetup(str(ROOT / path), knobs=knobs, batch_size=batch, precision=precision)
        try:
            r = compare(setup)
        except Exception as exc:  # noqa: BLE001 - torch's tools on a step they do not take: said, not hidden
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"\n{name}: not compared: {results[name]['error']}", flush=True)
            continue
        results[name] = r
        step = r["step_seconds"]
        print(f"\n{name}: peak {r['peak'] / 2**20:.1f} MiB, checkpointing removes at most {r['reach'] / 2**20:.1f} MiB; "
              f"candidates: vramplan {r['vramplan_candidates']}, torch {r['torch_candidates']} non-leaf modules"
              f"{f' (and {u} whose trade-off curve pwlf could not fit)' if (u := r['torch_unfit']) else ''}; "
              f"torch baseline {r['torch_baseline'] / 2**20:.1f} MiB; module forward seconds, torch's estimator fed the "
              f"roofline vs vramplan's: within {100 * r['time_model_difference']:.2f} % ({r['stats_seconds']} s)", flush=True)
        for row in r["rows"]:
            why = explain(row)
            ok &= why != "unexplained"
            tt, vt, b = row["torch_traced"], row["vramplan_traced"], row["budget"]
            partial = any(x < WHOLE for x in row["torch_decisions"].values())
            theirs = row["torch_seconds"] if partial else row["torch_whole_seconds"]
            print(f"  need {row['need'] / 2**20:7.1f} MiB, budget {b / 2**20:7.1f} | vramplan "
                  f"+{100 * row['vramplan_seconds'] / step:5.1f}% traced {vt / 2**20:7.1f}{'' if vt <= b else ' (over)'} | "
                  + ("torch: no plan" if row["torch_peak_bound"] < 0 else
                     f"torch +{100 * theirs / step:5.1f}% "
                     + ("(its trade-off curves; selective: not traced)" if partial else
                        f"traced {tt / 2**20:7.1f}{'' if tt <= b else ' (over)'}"))
                  + f" | {why}")
            print(f"      vramplan: {','.join(row['vramplan_modules'])}"
                  + (f"  [{row['vramplan_note']}]" if row["vramplan_note"] else ""))
            if row["torch_decisions"]:
                print(f"      torch:    {', '.join(f'{p}:{r:.2f}' for p, r in row['torch_decisions'].items())}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if ok or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
