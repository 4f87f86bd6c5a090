"""Speed as a ratio to a reference timed in the same run, never as absolute wall time.

A shared 2-core machine's wall clock moves by 2x from one minute to the next (the
same `vramplan estimate` took 0.40-0.70 s within one day), so every speed check here
times its command interleaved with a fixed reference workload, one after the other,
and compares medians: the load that slows one slows the other.

    python benchmarks/speed.py                 # the CLI ratios, printed
    python benchmarks/speed.py --runs 9 --json out.json
    python benchmarks/speed.py --breakdown     # where cli_estimate's time goes

Reference for fresh-process commands: `python -c "sum(i*i for i in range(3_000_000))"`
in a fresh interpreter (the one issue 9 names), so interpreter start-up is on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
    cpu_s: tuple[float, ...] = ()
    """Each run's CPU time (user + system; of the child process for a fresh-process command,
    of this process for in-process work): what the command did, whatever else the machine ran."""
    reference_cpu_s: tuple[float, ...] = ()
    wall_s: tuple[float, ...] = ()
    """Each run's wall time, and the reference's (in run order): the raw figures behind the medians."""
    reference_wall_s: tuple[float, ...] = ()

    @property
    def cpu_ratio(self) -> float | None:
        """Median CPU time over the reference's median CPU time (None: not recorded)."""
        if not self.cpu_s or not self.reference_cpu_s:
            return None
        return statistics.median(self.cpu_s) / statistics.median(self.reference_cpu_s)

    @property
    def ratio(self) -> float:
        return self.median_s / self.reference_median_s

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.pair_ratios), max(self.pair_ratios)

    @property
    def gate_ratio(self) -> float:
        """The figure CI gates: the CPU-time ratio where CPU times were recorded, else the wall
        ratio. CPU time is the work the command did; wall time adds whatever the scheduler gave
        the machine's other processes, which moved the wall ratio 0.82-1.61 between pairs with
        other load beside it (README, "Speed"). On a quiet machine the two agree for these
        single-threaded commands."""
        cpu = self.cpu_ratio
        return cpu if cpu is not None else self.ratio

    def to_json(self) -> dict:
        lo, hi = self.spread
        cpu = self.cpu_ratio
        return {"name": self.name, "command": self.command, "runs": self.runs, "ratio": round(self.ratio, 4),
                "pair_ratio_min": round(lo, 4), "pair_ratio_max": round(hi, 4),
                **({"cpu_ratio": round(cpu, 4), "cpu_median_s": round(statistics.median(self.cpu_s), 4),
                    "reference_cpu_median_s": round(statistics.median(self.reference_cpu_s), 4)} if cpu else {}),
                "raw": {"wall_s": [round(x, 4) for x in self.wall_s], "reference_wall_s": [round(x, 4) for x in self.reference_wall_s],
                        "cpu_s": [round(x, 4) for x in self.cpu_s], "reference_cpu_s": [round(x, 4) for x in self.reference_cpu_s]},
                "median_s": round(self.median_s, 4), "reference_median_s": round(self.reference_median_s, 4),
                "reference": REFERENCE_LABEL}

    def line(self) -> str:
        lo, hi = self.spread
        cpu = f"; CPU-time ratio {self.cpu_ratio:.3f}" if self.cpu_ratio else ""
        return (f"{self.name}: ratio {self.ratio:.3f} (pairs {lo:.2f}-{hi:.2f}; {self.median_s:.3f} s vs "
                f"reference {self.reference_median_s:.3f} s, median of {self.runs}, interleaved{cpu})")


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _run(cmd: Sequence[str]) -> tuple[float, float]:
    """Run ``cmd`` in a fresh process: (wall seconds, its CPU seconds, user + system, from
    ``wait4``'s resource usage of that child alone)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({code}): {err.read().decode(errors='replace').strip()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime


def interleaved(name: str, cmd: Sequence[str], runs: int = 7, warmup: int = 1) -> Ratio:
    """Time ``cmd`` and the reference alternately, ``runs`` times each (after ``warmup``
    unrecorded pairs, which fill the file cache and write .pyc files)."""
    for _ in range(warmup):
        _run(REFERENCE_CMD)
        _run(cmd)
    ref, mine = [_run(REFERENCE_CMD)], [_run(cmd)]
    for _ in range(runs - 1):
        ref.append(_run(REFERENCE_CMD))
        mine.append(_run(cmd))
    return _ratio(name, " ".join(cmd[1:] if cmd[0].endswith("vramplan") else cmd), mine, ref)


def _ratio(name: str, command: str, mine: list[tuple[float, float]], ref: list[tuple[float, float]]) -> Ratio:
    return Ratio(name, command, len(mine), statistics.median(w for w, _ in mine), statistics.median(w for w, _ in ref),
                 tuple(m[0] / r[0] for m, r in zip(mine, ref)), tuple(c for _, c in mine), tuple(c for _, c in ref),
                 tuple(w for w, _ in mine), tuple(w for w, _ in ref))


def interleaved_inprocess(name: str, fn: Callable[[], object], reference: Callable[[], object], runs: int = 5) -> Ratio:
    """The same, for work done inside this process (no interpreter start-up)."""
    fn()
    ref, mine = [], []
    for _ in range(runs):
        ref.append(_timed(reference))
        mine.append(_timed(fn))
    return _ratio(name, name, mine, ref)


def merge(rounds: Sequence[Ratio]) -> Ratio:
    """Several rounds of the same figure as one: every run's times, medians over all of them."""
    first = rounds[0]

    def cat(attr: str) -> tuple[float, ...]:
        return tuple(x for r in rounds for x in getattr(r, attr))

    walls, refs = cat("wall_s"), cat("reference_wall_s")
    return Ratio(first.name, first.command, sum(r.runs for r in rounds),
                 statistics.median(walls) if walls else statistics.median(r.median_s for r in rounds),
                 statistics.median(refs) if refs else statistics.median(r.reference_median_s for r in rounds),
                 cat("pair_ratios"), cat("cpu_s"), cat("reference_cpu_s"), walls, refs)


def instructions(cmd: Sequence[str]) -> int | None:
    """The instructions a fresh process of ``cmd`` executes in user space: valgrind's cachegrind
    "I refs" (``--cache-sim=no``: counting only), with PYTHONHASHSEED=0 so that the count repeats
    to the instruction (with a random seed it moves by 0.03 %). Unlike time, nothing else the
    machine runs changes it. None where valgrind is not installed. About 16 s per run of a
    0.2 s command (valgrind runs the code ~50x slower), so it is taken only when a time gate
    cannot decide (benchmarks/run.py ``confirm``)."""
    import shutil

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", *cmd],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr.splitlines():
        if "I   refs:" in line or "I refs:" in line:
            return int(line.rsplit(":", 1)[1].strip().replace(",", ""))
    raise SystemExit(f"valgrind {' '.join(cmd)}: no instruction count (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")


def instruction_ratios(cmds: dict[str, Sequence[str]]) -> dict[str, float]:
    """:func:`instructions` of each command over the reference's (counted once); {} without valgrind."""
    ref = instructions(REFERENCE_CMD)
    if not ref:
        return {}
    return {name: instructions(cmd) / ref for name, cmd in cmds.items()}  # type: ignore[operator]


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


# --- where a command's time goes (--breakdown) ------------------------------------------------


def imported_modules(args: Sequence[str]) -> list[str]:
    """The planner modules one run of ``vramplan args`` imports, read off a fresh process that
    runs it (its output discarded) and then lists ``sys.modules``."""
    code = ("import contextlib, io, sys\n"
            f"sys.argv = ['vramplan', *{list(args)!r}]\n"
            "from planner.entry import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main()\n    except SystemExit:\n        pass\n"
            "print('MODULES', *sorted(m for m in sys.modules if m.split('.')[0] == 'planner'), file=sys.__stdout__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[-1].split()[1:]


def breakdown_stages(args: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Fresh-process commands, each doing what the one before it did and more, up to the command
    itself: the interpreter, typer, every planner module the command imports, the command.
    The cyclic collector is off in the import stage, as planner/entry.py turns it off for the
    short commands."""
    mods = imported_modules(args)
    return [
        ("interpreter + site (python -c pass)", [sys.executable, "-c", "pass"]),
        ("+ import typer", [sys.executable, "-c", "import typer"]),
        (f"+ import the {len(mods)} planner modules it imports",
         [sys.executable, "-c", "import gc; gc.disable(); import typer, " + ", ".join(mods)]),
        (f"+ the work itself: vramplan {' '.join(args)}", vramplan_cmd(*args)),
    ]


def breakdown(args: Sequence[str], runs: int = 9) -> list[str]:
    """Each stage's median CPU time (user + system of the child), interleaved with the reference,
    as a ratio to the reference's median CPU time and as the step from the stage before."""
    stages = breakdown_stages(args)
    for _, cmd in stages:  # warm-up: file cache, .pyc files
        _run(cmd)
    ref: list[float] = []
    cpu: list[list[float]] = [[] for _ in stages]
    for _ in range(runs):
        ref.append(_run(REFERENCE_CMD)[1])
        for i, (_, cmd) in enumerate(stages):
            cpu[i].append(_run(cmd)[1])
    r = statistics.median(ref)
    lines = [f"CPU time, median of {runs} fresh processes each, interleaved; reference {REFERENCE_LABEL}: {1e3 * r:.1f} ms"]
    before = 0.0
    width = max(len(label) for label, _ in stages)
    for (label, _), c in zip(stages, cpu):
        m = statistics.median(c)
        lines.append(f"  {label:<{width}} {1e3 * m:7.1f} ms  ratio {m / r:.3f}  (+{(m - before) / r:.3f})")
        before = m
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", action="append", choices=sorted(CLI_CHECKS))
    ap.add_argument("--json")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio exceeds its bound")
    ap.add_argument("--breakdown", action="store_true",
                    help="where cli_estimate's time goes: interpreter, typer, planner's imports, the work (CPU time)")
    a = ap.parse_args()
    if a.breakdown:
        print("\n".join(breakdown(CLI_CHECKS["cli_estimate"][0], a.runs)))
        return 0
    results = cli_ratios(a.runs, a.only)
    bad = []
    for r in results:
        bound = CLI_CHECKS[r.name][1]
        print(f"{r.line()}; bound {bound}")
        if r.gate_ratio > bound:
            bad.append(r.name)
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_json() for r in results], indent=2))
    for b in bad:
        print(f"REGRESSION: {b} ratio above its bound")
    return 1 if (bad and a.check) else 0


if __name__ == "__main__":
    sys.exit(main())
