"""Debugging aid: estimator vs profiler, allocation by allocation.

    python benchmarks/diff_events.py --voxel 32x32x32 --no-amp [--context 15]

Prints both peaks and the first place where the two alloc/free streams differ
(op name and bytes), with some context around it. Same flags as `vramplan profile`.
"""

from __future__ import annotations

import argparse
import sys

from planner.config import Overrides, resolve_setup


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", help="YAML config (flags override it), e.g. to pick the perceptual network")
    ap.add_argument("--voxel")
    ap.add_argument("--kind")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--channels")
    ap.add_argument("--attention")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--checkpointing", action="store_true", default=None)
    ap.add_argument("--flash-attention", action="store_true", default=None)
    ap.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--no-discriminator", action="store_true")
    ap.add_argument("--accum", type=int)
    ap.add_argument("--optimizer")
    ap.add_argument("--context", type=int, default=12)
    ap.add_argument("--min-bytes", type=int, default=0, help="ignore allocations smaller than this")
    ap.add_argument("--iteration2", action="store_true", help="diff from iteration 2's start")
    a = ap.parse_args()
    ov = Overrides(kind=a.kind, voxel=a.voxel, batch=a.batch, channels=a.channels, attention=a.attention, amp=a.amp,
                   checkpointing=a.checkpointing, flash_attention=a.flash_attention, perceptual=a.perceptual,
                   no_discriminator=a.no_discriminator, accum=a.accum, optimizer=a.optimizer)
    setup = resolve_setup(a.config, ov)
    from planner.measure.builtin_trace import run_step
    from planner.analytic.simulate import simulate

    rec = run_step(setup, "fake", keep_timeline=False)
    est = simulate(setup)
    print(f"profile peak  {rec.tracker.peak_bytes:>16,}  at {rec.tracker.peak_step} {rec.tracker.peak_phase} {rec.tracker.peak_op} {rec.tracker.peak_module}")
    print(f"estimate peak {est.peak_bytes:>16,}  at {est.peak_where}")
    err = (est.peak_bytes - rec.tracker.peak_bytes) / rec.tracker.peak_bytes
    print(f"error {100 * err:+.3f}%")
    ps = [(d, rec.info[u].op if u in rec.info else "?") for u, d in rec.events]
    es = [(d, est_op) for (u, d), est_op in zip(est.events, est.event_ops)]
    start_p = rec.iteration2_start if a.iteration2 else 0
    start_e = est.iteration2_start if a.iteration2 else 0
    ps, es = ps[start_p:], es[start_e:]
    ps = [x for x in ps if abs(x[0]) >= a.min_bytes]
    es = [x for x in es if abs(x[0]) >= a.min_bytes]
    n = min(len(ps), len(es))
    for i in range(n):
        if ps[i][0] != es[i][0]:
            lo = max(0, i - a.context)
            print(f"first difference at event {i + start_p} / {i + start_e} (profile {len(ps)} events, estimate {len(es)})")
            for j in range(lo, min(n, i + a.context)):
                mark = ">>" if j == i else "  "
                print(f"{mark} {j:6d} profile {ps[j][0]:>14,} {ps[j][1]:<40} estimate {es[j][0]:>14,} {es[j][1]}")
            return 1
    print(f"streams agree on the first {n} events (profile {len(ps)}, estimate {len(es)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
