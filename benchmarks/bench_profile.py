"""Wall time of `vramplan profile --voxel 256x256x64` (stage 1, defaults, fake backend).

Prints the wall time and its ratio to the fresh-process reference of
benchmarks/speed.py, timed interleaved (median of --runs), as a line and as JSON.
Nothing here is gated on seconds: benchmarks/run.py holds the in-process profile
ratio to its baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402

CMD = ["profile", "--voxel", "256x256x64", "--backend", "fake", "--json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cmd = speed.vramplan_cmd(*CMD)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return 1
    report = json.loads(proc.stdout)
    r = speed.interleaved("cli_profile_256", cmd, runs=args.runs, warmup=0)
    print(f"profile 256x256x64 (stage 1 defaults, fake backend): {r.line()}; "
          f"peak_allocated {report['peak_allocated_bytes'] / 2**30:.3f} GiB")
    print(json.dumps({"benchmark": "profile_256x256x64", **r.to_json(),
                      "peak_allocated_bytes": report["peak_allocated_bytes"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
