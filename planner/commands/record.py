"""`vramplan record`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.commands.app import command, out
from planner.commands.options import AccumOpt, AllocConfOpt, AmpOpt, AttentionOpt, Backend, BatchOpt, ChannelsOpt, CheckpointOpt, CkptOpt, ConfigOpt, FlashOpt, JsonOpt, KindOpt, KnobOpt, OptimOpt, PrecisionOpt, SdpaOpt, StepOpt, VoxelOpt
from planner.errors import PlannerError
from planner.setup_flags import builtin_setup


@command()
def record(
    out_file: Annotated[Path, typer.Option("--out", help="The run file to write (JSON, schema vramplan-run/1).")],
    config: ConfigOpt = None,
    kind: KindOpt = None,
    voxel: VoxelOpt = None,
    batch: BatchOpt = None,
    channels: ChannelsOpt = None,
    attention: AttentionOpt = None,
    amp: AmpOpt = None,
    checkpointing: CkptOpt = None,
    flash_attention: FlashOpt = None,
    accum: AccumOpt = None,
    optimizer: OptimOpt = None,
    alloc_conf: AllocConfOpt = None,
    step: StepOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    backend: Annotated[Backend, typer.Option("--backend", help="cuda (your GPU) or fake (checks the pipeline).")] = Backend.cuda,
    as_json: JsonOpt = False,
) -> None:
    """Run two iterations of a setup on your GPU and record its real counters with the setup in a run file.

    In your own loop: `with planner.record.record("run.json", step=..., steps=3) as rec:` and
    `rec.step()` after each optimizer step (LightningRecorder / HFRecorder for callbacks).

    Example: vramplan record --step examples/steps/rgbd_policy.py --precision amp-bf16 --out runs/rgbd.json
    """
    from planner.config import check_cuda_backend
    from planner.record import record_command

    if backend == Backend.cpu:
        raise PlannerError("--backend: got 'cpu', valid: cuda, fake (record measures a GPU or checks the pipeline)")
    check_cuda_backend(backend, valid="fake")
    record_command(locals(), None if step else builtin_setup(locals()), out)
