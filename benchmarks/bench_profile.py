"""Wall time of `vramplan profile --voxel 256x256x64` (stage 1, defaults, fake backend).

Prints the figure as a line and as JSON. Target: under 20 s on the 2-core build
machine. `--check` exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 20.0
CMD = ["profile", "--voxel", "256x256x64", "--backend", "fake", "--json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if the wall time exceeds the target")
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("vramplan")
    cmd = [str(exe), *CMD] if exe.exists() else [sys.executable, "-m", "planner.cli", *CMD]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return 1
    report = json.loads(proc.stdout)
    ok = wall <= TARGET_S
    print(
        f"profile 256x256x64 (stage 1 defaults, fake backend): wall {wall:.2f} s "
        f"(target <= {TARGET_S:.0f} s: {'ok' if ok else 'MISSED'}); "
        f"peak_allocated {report['peak_allocated_bytes'] / 2**30:.3f} GiB"
    )
    print(json.dumps({"benchmark": "profile_wall_256x256x64", "wall_s": round(wall, 3), "target_s": TARGET_S,
                      "peak_allocated_bytes": report["peak_allocated_bytes"], "ok": ok}))
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
