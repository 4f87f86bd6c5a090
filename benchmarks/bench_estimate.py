"""Speed of the estimator.

    python benchmarks/bench_estimate.py [--check]

1. End-to-end wall time of `vramplan estimate --voxel 256x256x64 --gpu 24GB`
   (a fresh process each time, median of 5). Target: <= 0.5 s on the 2-core build machine.
2. Estimates per second in-process on the built-in default configuration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_CLI_S = 0.5
CMD = ["estimate", "--voxel", "256x256x64", "--gpu", "24GB"]


def cli_wall(runs: int = 5) -> float:
    exe = Path(sys.executable).with_name("vramplan")
    cmd = [str(exe), *CMD] if exe.exists() else [sys.executable, "-m", "planner.cli", *CMD]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    return statistics.median(times)


def estimates_per_second(seconds: float = 2.0) -> float:
    from planner.analytic.estimate import estimate
    from planner.spec import TrainingSetup

    setup = TrainingSetup()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        estimate(setup)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    wall = cli_wall()
    eps = estimates_per_second()
    ok = wall <= TARGET_CLI_S
    print(f"vramplan estimate --voxel 256x256x64 --gpu 24GB: median wall {wall:.3f} s over 5 runs "
          f"(target <= {TARGET_CLI_S} s: {'ok' if ok else 'MISSED'})")
    print(f"in-process estimates per second (default config): {eps:.1f}")
    print(json.dumps({"benchmark": "estimate_speed", "cli_wall_s": round(wall, 4), "target_s": TARGET_CLI_S,
                      "estimates_per_s": round(eps, 2), "ok": ok}))
    return 0 if (ok or not a.check) else 1


if __name__ == "__main__":
    sys.exit(main())
