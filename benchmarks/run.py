"""All benchmarks, and the regression check CI holds the project to.

    python benchmarks/run.py [--check] [--update-baseline] [--json out.json] [--skip-accuracy]

Accuracy suite: estimate vs the fake-backend profiler over benchmarks/grid.py, and
estimate (with the profile's terms) vs every raw point of each real-GPU profile in
profiles/. Speed suite: `vramplan estimate --voxel 256x256x64 --gpu 24GB` wall time
(fresh process), estimates per second in-process, and the in-process wall time of
`profile --voxel 256x256x64` (stage-1 defaults, fake backend).

The in-process speed figures are also expressed as a ratio to a fixed reference
computation timed in the same run, so a slower or busier machine does not flap.

--check fails (exit 1) when, against benchmarks/baseline.json:
  * the median or worst absolute accuracy error grows by more than 0.5 percentage points;
  * an in-process speed ratio grows by more than 30 %;
  * an absolute target is missed (CLI estimate <= 0.5 s, profile at 256x256x64 < 20 s,
    median error <= 2 %, worst <= 5 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import accuracy  # noqa: E402
import bench_estimate  # noqa: E402

BASELINE = HERE / "baseline.json"
ACCURACY_SLACK_PP = 0.5
SPEED_SLACK = 1.30
TARGETS = {"cli_estimate_s": 0.5, "profile_256_s": 20.0,
           "median_abs_error_pct": accuracy.TARGET_MEDIAN_PCT, "worst_abs_error_pct": accuracy.TARGET_WORST_PCT}


def reference_seconds(repeats: int = 5) -> float:
    """A fixed pure-Python workload (dict and list churn like the simulator's), median time."""

    def work() -> int:
        d: dict[int, tuple[int, int]] = {}
        acc = 0
        for i in range(300_000):
            d[i] = (i, i * 3)
            if i % 3 == 0:
                acc += d.pop(i - 3, (0, 0))[1]
        return acc + len(sorted(d, reverse=True))

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seconds_per_estimate() -> float:
    from planner.analytic.estimate import estimate
    from planner.config import Overrides, resolve_setup

    setup = resolve_setup(None, Overrides(voxel="256x256x64"))
    estimate(setup)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        estimate(setup)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_seconds() -> float:
    from planner.config import Overrides, resolve_setup
    from planner.measure.profile import profile

    setup = resolve_setup(None, Overrides(voxel="256x256x64"))
    t0 = time.perf_counter()
    profile(setup, "fake")
    return time.perf_counter() - t0


def hardware_accuracy() -> list[dict]:
    from planner import profiles
    from planner.analytic.estimate import estimate
    from planner.config import setup_from_dict

    rows = []
    for name in profiles.available():
        prof = profiles.load(name)
        if not prof.hardware:
            continue
        for p in prof.measurements:
            est = prof.apply(estimate(setup_from_dict(p["config"])))
            m = p["measured_allocated_bytes"]
            rows.append({"profile": name, "name": p["name"], "measured_bytes": m,
                         "estimate_bytes": est.peak_allocated_bytes,
                         "error_pct": round(100 * (est.peak_allocated_bytes - m) / m, 4)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--update-baseline", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--skip-accuracy", action="store_true", help="speed suite only (no regression check on accuracy)")
    a = ap.parse_args()

    figures: dict = {}
    if not a.skip_accuracy:
        acc = accuracy.run()
        print(accuracy.render(acc))
        figures["accuracy"] = acc["summary"]
        figures["accuracy_rows"] = acc["rows"]
        hw = hardware_accuracy()
        if hw:
            for r in hw:
                print(f"[{r['profile']}] {r['name']:<40} measured {r['measured_bytes'] / 2**30:.3f} GiB "
                      f"estimate {r['estimate_bytes'] / 2**30:.3f} GiB {r['error_pct']:+.2f}%")
        else:
            print("real-GPU profiles: none in profiles/ (no GPU was available to calibrate one)")
        figures["hardware_accuracy"] = hw
    ref = reference_seconds()
    spe = seconds_per_estimate()
    prof_s = profile_seconds()
    cli = bench_estimate.cli_wall()
    speed = {
        "reference_s": round(ref, 4),
        "estimate_s": round(spe, 4),
        "estimates_per_s": round(1 / spe, 2),
        "estimate_ratio": round(spe / ref, 4),
        "profile_256_s": round(prof_s, 3),
        "profile_ratio": round(prof_s / ref, 3),
        "cli_estimate_s": round(cli, 4),
    }
    figures["speed"] = speed
    print(f"speed: reference {ref:.3f} s; estimate(256x256x64) {spe * 1000:.1f} ms ({1 / spe:.1f}/s, ratio {spe / ref:.3f}); "
          f"profile 256x256x64 {prof_s:.2f} s (ratio {prof_s / ref:.2f}); CLI estimate {cli:.3f} s")

    failures: list[str] = []
    base = json.loads(BASELINE.read_text()) if BASELINE.is_file() else None
    if "accuracy" in figures:
        s = figures["accuracy"]
        for k in ("median_abs_error_pct", "worst_abs_error_pct"):
            if s[k] > TARGETS[k]:
                failures.append(f"{k} {s[k]:.3f}% misses the target {TARGETS[k]}%")
            if base and s[k] > base["accuracy"][k] + ACCURACY_SLACK_PP:
                failures.append(f"{k} {s[k]:.3f}% > baseline {base['accuracy'][k]:.3f}% + {ACCURACY_SLACK_PP} pp")
    for k in ("cli_estimate_s", "profile_256_s"):
        if speed[k] > TARGETS[k]:
            failures.append(f"{k} {speed[k]:.3f} s misses the target {TARGETS[k]} s")
    if base:
        for k in ("estimate_ratio", "profile_ratio"):
            if speed[k] > base["speed"][k] * SPEED_SLACK:
                failures.append(f"{k} {speed[k]:.3f} > baseline {base['speed'][k]:.3f} x {SPEED_SLACK}")
    summary = {"benchmark": "all", "accuracy": figures.get("accuracy"), "speed": speed, "failures": failures}
    print(json.dumps(summary))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
    if a.update_baseline:
        new = {"accuracy": {k: figures["accuracy"][k] for k in ("median_abs_error_pct", "worst_abs_error_pct")}
               if "accuracy" in figures else (base or {}).get("accuracy"),
               "speed": {k: speed[k] for k in ("estimate_ratio", "profile_ratio")},
               "measured": {"speed": speed, "accuracy": figures.get("accuracy")}}
        BASELINE.write_text(json.dumps(new, indent=2) + "\n")
        print(f"wrote {BASELINE}")
    if failures:
        for f in failures:
            print(f"REGRESSION: {f}")
    return 1 if (failures and a.check) else 0


if __name__ == "__main__":
    sys.exit(main())
