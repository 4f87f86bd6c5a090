"""`vramplan record`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planner.commands.app import command, out
from planner.commands.options import takes_setup, Backend, JsonOpt
from planner.errors import PlannerError
from planner.setup_flags import SetupFlags, builtin_setup, step_params


@command()
@takes_setup
def record(
    out_file: Annotated[Path, typer.Option("--out", help="The run file to write (JSON, schema vramplan-run/1).")],
    backend: Annotated[Backend, typer.Option("--backend", help="cuda (your GPU) or fake (checks the pipeline).")] = Backend.cuda,
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
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
    assert flags is not None  # takes_setup
    record_command(lambda: step_params(flags, "record") or builtin_setup(flags, backend=backend), out_file=out_file,
                   backend=backend.value, as_json=as_json, out=out)
