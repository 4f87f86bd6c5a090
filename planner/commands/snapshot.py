"""`vramplan snapshot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.commands.app import command, out
from planner.commands.options import takes_setup, JsonOpt
from planner.setup_flags import SetupFlags, builtin_setup, step_params


@command()
@takes_setup
def snapshot(
    out_file: Annotated[Path, typer.Option("--out", help="The snapshot to write: .pickle (PyTorch's viewers) or .json.")],
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
) -> None:
    """Export the traced step as a PyTorch memory snapshot (torch.cuda.memory._snapshot format).

    A step file with its knobs, or a built-in configuration (--config YAML). Open the .pickle at
    https://pytorch.org/memory_viz or with torch.cuda._memory_viz.

    Example: vramplan snapshot --step examples/steps/rgbd_policy.py --out rgbd.pickle
    """
    from planner.snapshot import snapshot_command

    assert flags is not None  # takes_setup
    snapshot_command(lambda: step_params(flags, "snapshot") or builtin_setup(flags), out_file=out_file,
                     as_json=as_json, out=out)
