"""Checkpoint plans (planner/measure/ckpt_plan.py) against a reference solver, and issue 21's speed targets.

    python benchmarks/bench_ckpt.py [--quick] [--speed] [--check]

Plans: for each example step (small knobs where the default is heavy, so the whole run takes
minutes on 2 cores) one planning trace, then at three budgets -- the traced peak less 25 %, 50 %
and 90 % of the most that checkpointing removes at the peak -- vramplan's choice (the tree
knapsack over every module, whole or selective) against a reference on the same per-module
numbers. The reference is an exhaustive search over the REFERENCE_MODULES candidates that remove
the most at the peak (every assignment whole / selective / off with no module and its ancestor both
chosen); torch's own ``sac_milp`` on the same steps is benchmarks/bench_sac_milp.py. vramplan's plan
over all modules must recompute no more than the reference's over its subset, and the knapsack
restricted to that subset must equal it exactly (--check: exit 1 otherwise). The 50 % plan is
traced (its verification): the predicted and traced peaks are printed.

--speed: issue 21's targets for ``recommend`` on the SwinUNETR step at batch 4 on 16 GB (250x) and
on the transformer example (rgbd_policy, rtx4090; 170x) as benchmarks/bench_step_search.py times
them (which also has the third, ``--max-gpus 8`` on seed 004's step). Not gated here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE_MODULES = 9  # 3**9 = 19,683 assignments per budget
FRACTIONS = (0.25, 0.5, 0.9)

STEPS = [  # (name, step file, knobs, batch, precision)
    ("template (transformer)", "examples/steps/template.py", (), None, "fp32"),
    ("rgbd_policy (transformer)", "examples/steps/rgbd_policy.py", (("depth", 4), ("image_size", 112)), 4, "amp-bf16"),
    ("voxel_grid", "examples/steps/voxel_grid.py", (), None, "fp32"),
    ("guided_unet", "examples/steps/guided_unet.py", (("image_size", 32), ("model_channels", 64)), 4, "fp32"),
    ("radar_vae", "examples/steps/radar_vae.py", (("base_channels", 16),), 2, "amp-fp16"),
    ("ldm_stage1", "examples/steps/ldm_stage1.py", (("voxel", (48, 48, 32)),), 1, "amp-fp16"),
    ("ldm_stage2", "examples/steps/ldm_stage2.py", (), 4, "amp-fp16"),
    ("swin_unetr", "examples/steps/swin_unetr.py", (("size", 64),), 1, "amp-fp16"),
]
QUICK = ("template (transformer)", "voxel_grid", "swin_unetr")


def _reference(cands: list, need: int) -> tuple[float | None, tuple[str, ...]]:
    """Exhaustive: least seconds removing >= need bytes at the peak over ``cands``."""
    by = {c.path: c for c in cands}

    def ancestors(p: str):
        while by[p].parent is not None and by[p].parent in by:
            p = by[p].parent
            yield p

    best: tuple[float | None, tuple[str, ...]] = (None, ())
    for pick in itertools.product((0, 1, 2), repeat=len(cands)):
        names = [c.path for c, k in zip(cands, pick) if k]
        if any(a in names for n in names for a in ancestors(n)):
            continue
        saved = sum(c.saved if k == 1 else c.sac_saved for c, k in zip(cands, pick) if k)
        if saved < need:
            continue
        cost = sum(c.seconds if k == 1 else c.sac_seconds for c, k in zip(cands, pick) if k)
        if best[0] is None or cost < best[0]:
            best = (cost, tuple(("sac:" if k == 2 else "") + c.path for c, k in zip(cands, pick) if k))
    return best


def plans(names: tuple[str, ...] | None) -> tuple[list[dict], bool]:
    from planner.errors import PlannerError
    from planner.measure import ckpt_plan
    from planner.measure.stepfile import run
    from planner.step_setup import StepSetup

    rows, ok = [], True
    print(f"reference: exhaustive search over the {REFERENCE_MODULES} modules removing the most (whole / selective / off)")
    print(f"{'step':28} {'budget':>9} {'vramplan s':>11} {'+step':>7} {'ref s':>11} {'+step':>7} {'same K':>6}  modules")
    for name, path, knobs, batch, precision in STEPS:
        if names and name not in names:
            continue
        setup = StepSetup(path, knobs=knobs, batch_size=batch, precision=precision)
        t0 = time.perf_counter()
        res, record = ckpt_plan.probe(setup)
        plan0 = ckpt_plan.choose(res, record, half=precision != "fp32")
        table = list(plan0.table)
        front, _ = ckpt_plan.frontier(table)
        reach = max(p[0] for p in front)
        top = sorted(table, key=lambda c: -max(c.saved, c.sac_saved))[:REFERENCE_MODULES]
        top_paths = {c.path for c in top}
        parent = {c.path: c.parent for c in table}

        def nearest(p: str | None) -> str | None:  # the nearest ancestor among the subset
            while p is not None and p not in top_paths:
                p = parent.get(p)
            return p

        sub = [replace(c, parent=nearest(c.parent)) for c in top]
        sub_front, _ = ckpt_plan.frontier(sub)
        probe_s = time.perf_counter() - t0
        for f in FRACTIONS:
            need = int(f * reach)
            mine = ckpt_plan.cheapest(ckpt_plan.frontier(table, need)[0], need)
            ref_cost, ref_mods = _reference(sub, need)
            same = ckpt_plan.cheapest(sub_front, need)
            exact = (same is None) == (ref_cost is None) and (ref_cost is None or abs(same[1] - ref_cost) <= 1e-12 + 1e-9 * ref_cost)
            better = ref_cost is None or (mine is not None and mine[1] <= ref_cost * (1 + 1e-9))
            ok &= exact and better
            step = plan0.step_seconds
            row = {"step": name, "fraction": f, "need_bytes": need, "vramplan_seconds": mine[1] if mine else None,
                   "vramplan_modules": list(mine[2]) if mine else None, "reference_seconds": ref_cost,
                   "reference_modules": list(ref_mods), "same_subset_exact": exact, "probe_seconds": round(probe_s, 1)}
            if f == 0.5 and mine is not None:
                ck = ckpt_plan.class_rule(tuple(mine[2]), res.instances, table)
                try:
                    traced = run(replace(setup, checkpoint=ck), "fake", keep_timeline=False).tracker.peak_bytes
                except PlannerError as exc:
                    traced = -1
                    print(f"  {name}: the plan's trace failed: {str(exc)[:200]}")
                pred = ckpt_plan.predicted_peak(res.live, ckpt_plan._members({c.path: c for c in table}, mine[2]),
                                                ckpt_plan.high_points(res.live))[0]
                row.update(predicted_peak=pred, traced_peak=traced, peak=record.tracker.peak_bytes)
            rows.append(row)

            def pct(x: float | None) -> str:
                return "-" if x is None else f"+{100 * x / step:.1f}%"

            print(f"{name:28} {f:>8.0%} {mine[1] if mine else float('nan'):>11.3e} {pct(mine[1] if mine else None):>7} "
                  f"{ref_cost if ref_cost is not None else float('nan'):>11.3e} {pct(ref_cost):>7} {'yes' if exact else 'NO':>6}  "
                  f"{len(mine[2]) if mine else 0}"
                  + (f"  (peak {row['peak'] / 2**20:.1f} MiB: predicted {row['predicted_peak'] / 2**20:.1f}, traced "
                     f"{row['traced_peak'] / 2**20:.1f})" if "traced_peak" in row else ""), flush=True)
    return rows, ok


def speed_rows() -> list[dict]:
    """Issue 21's two recommend targets, as benchmarks/bench_step_search.py times them (its
    ``swin_unetr`` and ``recommend`` searches)."""
    import bench_step_search as b

    rows = []
    for s in b.SEARCHES:
        if s.name in ("swin_unetr", "recommend"):
            rows.append({"name": s.name, **b.run(s, [])})
            print(b.line(s, rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--speed", action="store_true", help="also the recommend timings (minutes each)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a plan recomputes more than the reference")
    ap.add_argument("--steps", help="comma-separated step names (the first column) instead of all")
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args()
    rows, ok = plans(QUICK if a.quick else tuple(a.steps.split(",")) if a.steps else None)
    out = {"plans": rows}
    if a.speed:
        out["speed"] = speed_rows()
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    print("every plan recomputes no more than the reference, and equals it on the same modules" if ok
          else "A PLAN RECOMPUTES MORE THAN THE REFERENCE, or differs from it on the same modules")
    return 0 if ok or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
