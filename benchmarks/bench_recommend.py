"""Speed of `vramplan recommend` on the seed-004 scenario.

    python benchmarks/bench_recommend.py [--check]

Seed 004's "默认" configuration (batch 4, no AMP, perceptual on) at 256x256x64 on a
24 GB card: wall time of the whole command (fresh process) and candidates per second
of the search in-process, and the wall time as a ratio to the fresh-process reference
of benchmarks/speed.py timed interleaved (median of 5; that ratio is gated by
benchmarks/run.py against its baseline, never the seconds). --check: at least
10,000 candidates considered (a count, not a time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402

TARGET_CANDIDATES = 10_000
ARGS = ["recommend", "--voxel", "256x256x64", "--batch", "4", "--no-amp", "--gpu", "24GB", "--json"]


def run() -> dict:
    exe = Path(sys.executable).with_name("vramplan")
    cmd = [str(exe), *ARGS] if exe.exists() else [sys.executable, "-m", "planner.cli", *ARGS]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    data = json.loads(proc.stdout)
    return {"wall_s": round(wall, 3), "search_s": data["seconds"], "considered": data["considered"],
            "verified": data["verified"], "candidates_per_s": round(data["considered"] / data["seconds"], 1),
            "recommended": data["recommended"]["changes"] if data["recommended"] else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    r = run()
    ratio = speed.interleaved("cli_recommend", speed.vramplan_cmd(*ARGS), runs=5)
    ok = r["considered"] >= TARGET_CANDIDATES
    print(f"recommend (seed-004 default at 256x256x64, 24GB): {r['considered']:,} candidates considered "
          f"(target >= {TARGET_CANDIDATES:,}), {r['verified']} estimated exactly, {r['candidates_per_s']:,.0f} candidates/s; "
          f"recommended: {', '.join(r['recommended'] or ['nothing fits'])}")
    print(f"  {ratio.line()}")
    print(json.dumps({"benchmark": "recommend", **r, "ratio": ratio.to_json(), "ok": ok}))
    return 0 if (ok or not a.check) else 1


if __name__ == "__main__":
    sys.exit(main())
