"""Speed as a ratio to a reference timed in the same run, never as absolute wall time.

A shared 2-core machine's wall clock moves by 2x from one minute to the next (the
same `vramplan estimate` took 0.40-0.70 s within one day), so every speed check here
times its command interleaved with a fixed reference workload, one after the other,
and compares medians: the load that slows one slows the other.

    python benchmarks/speed.py                 # the CLI ratios, printed
    python benchmarks/speed.py --runs 9 --json out.json

Reference for fresh-process commands: `python -c "sum(i*i for i in range(3_000_000))"`
in a fresh interpreter (the one issue 9 names), so interpreter start-up is on both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REFERENCE_CMD = [sys.executable, "-c", "sum(i*i for i in range(3_000_000))"]
REFERENCE_LABEL = 'python -c "sum(i*i for i in range(3_000_000))" (fresh process)'


def vramplan_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("vramplan")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "planner.cli", *args]


@dataclass(frozen=True)
class Ratio:
    """Median wall time of a command over the median of the reference, interleaved."""

    name: str
    command: str
    runs: int
    median_s: float
    reference_median_s: float
    pair_ratios: tuple[float, ...]
    """Each run's time over the reference run just before it: their spread shows the noise."""

    @property
    def ratio(self) -> float:
        return self.median_s / self.reference_median_s

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.pair_ratios), max(self.pair_ratios)

    def to_json(self) -> dict:
        lo, hi = self.spread
        return {"name": self.name, "command": self.command, "runs": self.runs, "ratio": round(self.ratio, 4),
                "pair_ratio_min": round(lo, 4), "pair_ratio_max": round(hi, 4),
                "median_s": round(self.median_s, 4), "reference_median_s": round(self.reference_median_s, 4),
                "reference": REFERENCE_LABEL}

    def line(self) -> str:
        lo, hi = self.spread
        return (f"{self.name}: ratio {self.ratio:.3f} (pairs {lo:.2f}-{hi:.2f}; {self.median_s:.3f} s vs "
                f"reference {self.reference_median_s:.3f} s, median of {self.runs}, interleaved)")


def _wall(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")


def interleaved(name: str, cmd: Sequence[str], runs: int = 7, warmup: int = 1) -> Ratio:
    """Time ``cmd`` and the reference alternately, ``runs`` times each (after ``warmup``
    unrecorded pairs, which fill the file cache and write .pyc files)."""
    for _ in range(warmup):
        _run(REFERENCE_CMD)
        _run(cmd)
    ref, mine = [], []
    for _ in range(runs):
        ref.append(_wall(lambda: _run(REFERENCE_CMD)))
        mine.append(_wall(lambda: _run(cmd)))
    return Ratio(name, " ".join(cmd[1:] if cmd[0].endswith("vramplan") else cmd), runs,
                 statistics.median(mine), statistics.median(ref), tuple(m / r for m, r in zip(mine, ref)))


def interleaved_inprocess(name: str, fn: Callable[[], object], reference: Callable[[], object], runs: int = 5) -> Ratio:
    """The same, for work done inside this process (no interpreter start-up)."""
    fn()
    ref, mine = [], []
    for _ in range(runs):
        ref.append(_wall(reference))
        mine.append(_wall(fn))
    return Ratio(name, name, runs, statistics.median(mine), statistics.median(ref),
                 tuple(m / r for m, r in zip(mine, ref)))


def reference_work() -> int:
    """In-process reference: the same loop as the fresh-process reference."""
    return sum(i * i for i in range(3_000_000))


CLI_CHECKS: dict[str, tuple[list[str], float]] = {
    # name: (vramplan arguments, the largest ratio to the reference that passes)
    # Issue 9: the main job answers no slower than the reference (ratio <= 1.0).
    "cli_estimate": (["estimate", "--voxel", "256x256x64", "--gpu", "24GB"], 1.0),
    # --help renders without importing the estimator; bound set at 1.0 as well.
    "cli_help": (["--help"], 1.0),
    "cli_estimate_help": (["estimate", "--help"], 1.0),
}


def cli_ratios(runs: int = 7, names: Sequence[str] | None = None) -> list[Ratio]:
    return [interleaved(n, vramplan_cmd(*CLI_CHECKS[n][0]), runs) for n in (names or CLI_CHECKS)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", action="append", choices=sorted(CLI_CHECKS))
    ap.add_argument("--json")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio exceeds its bound")
    a = ap.parse_args()
    results = cli_ratios(a.runs, a.only)
    bad = []
    for r in results:
        bound = CLI_CHECKS[r.name][1]
        print(f"{r.line()}; bound {bound}")
        if r.ratio > bound:
            bad.append(r.name)
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_json() for r in results], indent=2))
    for b in bad:
        print(f"REGRESSION: {b} ratio above its bound")
    return 1 if (bad and a.check) else 0


if __name__ == "__main__":
    sys.exit(main())
