"""The ``vramplan`` console script: start-up tuned for the main job, then :func:`planner.cli.main`.

Short analytic commands (``estimate`` without ``--compare``, ``gpus``, ``profiles``,
``--help``) run with Python's cyclic garbage collector off: importing typer, rich
and the estimator makes tens of thousands of objects, and the collector's passes
over them cost ~12 % of `vramplan estimate --voxel 256x256x64` (interleaved runs on
the 2-core build machine: median 280 ms with it, 245 ms without). The estimator
frees storages by reference counting alone, so the figures are unchanged. Commands
that trace with torch or run thousands of estimates (profile, recommend, table,
plot, calibrate) keep the collector.
"""

from __future__ import annotations

import gc
import sys

_SHORT = ("estimate", "gpus", "profiles")


def _short_lived(argv: list[str]) -> bool:
    first = argv[1] if len(argv) > 1 else None
    if first is None or first in ("--help", "-h"):
        return True
    return first in _SHORT and "--compare" not in argv


def main() -> None:
    if _short_lived(sys.argv):
        gc.disable()
    from planner.cli import main as cli_main

    cli_main()


if __name__ == "__main__":  # pragma: no cover
    main()
