"""`vramplan run` on the MONAI example script against a trace of its step file (issue 22).

    python benchmarks/bench_run.py [--small] [--json]

Times two whole commands, each in a fresh process (worker start-up included in both):
``vramplan run --json -- python examples/scripts/monai_seg/train.py ...`` (the script unchanged:
its data written on first run and loaded, its DataLoader, 2 optimizer steps) and
``vramplan profile --step examples/steps/monai_seg.py --precision amp-fp16 --json`` (the same step,
traced now, no cache). Prints the wall seconds of each, their ratio, and both peaks (the script's
is the step file's + 512 B: DynUNet's ``heads`` CPU tensor, see tests/test_run_script.py). The
volumes are written before timing (a first run's writing is the script's own cost, not vramplan's).
Not in CI (tests/test_run_script.py runs the small size there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples/scripts/monai_seg/train.py"
STEP = ROOT / "examples/steps/monai_seg.py"
SIZES = {  # name: (volume edge, roi, DynUNet filters)
    "small": (48, 32, "8,16,32,64"),
    "default": (128, 96, "32,64,128,256,320"),  # the script's own defaults
}


def _timed(cmd: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt, json.loads(p.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the test size (48^3 volumes, 32^3 crops, small DynUNet)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    size, roi, filters = SIZES["small" if a.small else "default"]
    vramplan = str(Path(sys.executable).with_name("vramplan"))
    with tempfile.TemporaryDirectory() as data:
        args = ["--data-dir", data, "--size", str(size), "--roi", str(roi), "--filters", filters, "--volumes", "4",
                "--val-every", "1000"]
        sys.path.insert(0, str(SCRIPT.parent))
        import train  # noqa: PLC0415 - the example's own writer, so the timing excludes the first run's files

        train.write_volumes(data, 4, size, 3)
        run_s, run = _timed([vramplan, "run", "--json", "--", sys.executable, str(SCRIPT), *args])
        step_s, step = _timed([vramplan, "profile", "--step", str(STEP), "--precision", "amp-fp16", "--batch", "2",
                               "--knob", f"roi={roi}", "--knob", f"filters={filters}", "--json"])
    row = {"size": f"{size}^3 volumes, {roi}^3 crops, filters {filters}", "run_seconds": round(run_s, 1),
           "step_file_seconds": round(step_s, 1), "ratio": round(run_s / step_s, 2),
           "run_peak_bytes": run["peak_allocated_bytes"], "step_file_peak_bytes": step["peak_allocated_bytes"],
           "difference_bytes": run["peak_allocated_bytes"] - step["peak_allocated_bytes"]}
    if a.json:
        print(json.dumps(row, indent=2))
    else:
        print("| example | run (s) | step file (s) | ratio | run peak (B) | step-file peak (B) | difference |")
        print("|---|---|---|---|---|---|---|")
        print(f"| MONAI DynUNet, {row['size']} | {row['run_seconds']} | {row['step_file_seconds']} | {row['ratio']} | "
              f"{row['run_peak_bytes']:,} | {row['step_file_peak_bytes']:,} | {row['difference_bytes']:+,} B |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
