"""`vramplan snapshot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.commands.app import command, out
from planner.commands.options import AccumOpt, BatchOpt, CheckpointOpt, ConfigOpt, JsonOpt, KnobOpt, PrecisionOpt, SdpaOpt, StepOpt
from planner.setup_flags import builtin_setup


@command()
def snapshot(
    out_file: Annotated[Path, typer.Option("--out", help="The snapshot to write: .pickle (PyTorch's viewers) or .json.")],
    step: StepOpt = None,
    knob: KnobOpt = None,
    batch: BatchOpt = None,
    accum: AccumOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the traced step as a PyTorch memory snapshot (torch.cuda.memory._snapshot format).

    A step file with its knobs, or a built-in configuration (--config YAML). Open the .pickle at
    https://pytorch.org/memory_viz or with torch.cuda._memory_viz.

    Example: vramplan snapshot --step examples/steps/rgbd_policy.py --out rgbd.pickle
    """
    from planner.snapshot import snapshot_command

    snapshot_command(locals(), None if step else builtin_setup(locals()), out)
