"""`vramplan compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.commands.app import command, out
from planner.commands.options import JsonOpt


@command()
def compare(
    run: Annotated[Path, typer.Argument(help="A run file written by vramplan record (or planner.record).")],
    profile_name: Annotated[Optional[str], typer.Option("--profile", help="Device profile to apply to the estimate.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate vs measured per figure (allocated, reserved, context, device) and category for a recorded run.

    Example: vramplan compare runs/rgbd.json --json
    """
    from planner.compare import compare_command

    compare_command(locals(), out)
