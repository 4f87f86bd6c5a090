"""Accuracy: `vramplan estimate` vs the fake-backend profiler over the grid.

    python benchmarks/accuracy.py [--check] [--json out.json] [--only s2]

For each configuration of benchmarks/grid.py it runs the profiler (FakeTensorMode,
CUDA emulated) and the analytic estimator and prints peak_allocated from both and
the error (estimate - profile) / profile. Summary: median and worst absolute error,
and the worst underestimate and overestimate separately (an underestimate is worse:
it says a run fits when it does not). Targets (issue 3): median <= 2 %, worst <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import GRID  # noqa: E402

from planner.config import setup_from_dict  # noqa: E402

TARGET_MEDIAN_PCT = 2.0
TARGET_WORST_PCT = 5.0


def run(only: str | None = None, progress: bool = True) -> dict:
    from planner.analytic.estimate import estimate
    from planner.measure.profile import profile

    rows = []
    for i, (name, cfg) in enumerate(GRID):
        if only and only not in name:
            continue
        setup = setup_from_dict(cfg)
        t0 = time.perf_counter()
        prof = profile(setup, "fake")
        t1 = time.perf_counter()
        est = estimate(setup)
        t2 = time.perf_counter()
        err = 100.0 * (est.peak_allocated_bytes - prof.peak_allocated_bytes) / prof.peak_allocated_bytes
        rows.append({
            "name": name,
            "profile_bytes": prof.peak_allocated_bytes,
            "estimate_bytes": est.peak_allocated_bytes,
            "error_pct": round(err, 4),
            "profile_s": round(t1 - t0, 2),
            "estimate_ms": round(1000 * (t2 - t1), 1),
        })
        if progress:
            sys.stderr.write(f"\r[{i + 1}/{len(GRID)}] {name:<40}")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    errs = [r["error_pct"] for r in rows]
    under = [e for e in errs if e < 0]
    over = [e for e in errs if e > 0]
    summary = {
        "configurations": len(rows),
        "median_abs_error_pct": round(statistics.median(abs(e) for e in errs), 4) if errs else None,
        "worst_abs_error_pct": round(max(abs(e) for e in errs), 4) if errs else None,
        "worst_underestimate_pct": round(min(under), 4) if under else 0.0,
        "worst_overestimate_pct": round(max(over), 4) if over else 0.0,
        "underestimates": len(under),
        "overestimates": len(over),
        "exact": sum(1 for e in errs if e == 0),
    }
    return {"rows": rows, "summary": summary}


def render(result: dict) -> str:
    lines = [f"{'configuration':<40} {'profile GiB':>12} {'estimate GiB':>13} {'error':>9}"]
    for r in result["rows"]:
        lines.append(
            f"{r['name']:<40} {r['profile_bytes'] / 2**30:>12.3f} {r['estimate_bytes'] / 2**30:>13.3f} {r['error_pct']:>+8.2f}%"
        )
    s = result["summary"]
    lines.append(
        f"{s['configurations']} configurations: median |error| {s['median_abs_error_pct']:.2f}% (target <= {TARGET_MEDIAN_PCT}%), "
        f"worst {s['worst_abs_error_pct']:.2f}% (target <= {TARGET_WORST_PCT}%); "
        f"worst underestimate {s['worst_underestimate_pct']:+.2f}% ({s['underestimates']} under), "
        f"worst overestimate {s['worst_overestimate_pct']:+.2f}% ({s['overestimates']} over), {s['exact']} exact"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--json", help="also write the rows and summary to this file")
    ap.add_argument("--only", help="run only configurations whose name contains this")
    a = ap.parse_args()
    result = run(a.only)
    print(render(result))
    print(json.dumps({"benchmark": "accuracy", **result["summary"]}))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    s = result["summary"]
    ok = s["median_abs_error_pct"] <= TARGET_MEDIAN_PCT and s["worst_abs_error_pct"] <= TARGET_WORST_PCT
    return 0 if (ok or not a.check) else 1


if __name__ == "__main__":
    sys.exit(main())
