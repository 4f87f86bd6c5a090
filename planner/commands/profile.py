"""`vramplan profile`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from planner.commands.app import command, err, out, print_json
from planner.commands.estimate import estimate_step_file
from planner.commands.options import takes_setup, Backend, JsonOpt
from planner.commands.render import default_backend, library_terms_json, print_library_terms
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP
from planner.setup_flags import SetupFlags, builtin_setup, reject_unused_for_model, step_params


@command()
@takes_setup
def profile(
    backend: Annotated[
        Optional[Backend],
        typer.Option("--backend", help="fake: FakeTensorMode on the CPU (default without CUDA); cpu: real CPU tensors; cuda: a GPU."),
    ] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help=f"--step: card to check against. {GPU_HELP}")] = None,
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
) -> None:
    """Measure the peak memory of two iterations of the reference training step, or of your own (--step).

    Example: vramplan profile --voxel 256x256x64 --no-perceptual --json

    Example: vramplan profile --step examples/steps/rgbd_policy.py --precision amp-bf16 --gpu 24GB
    """
    assert flags is not None  # takes_setup
    ss = step_params(flags, "profile", gpu=gpu)
    if ss is not None:
        estimate_step_file(ss, gpu=gpu, profile_name=None, backend=backend.value if backend else "fake",
                           as_json=as_json, fresh=True)
        return
    if gpu is not None:
        raise PlannerError("--gpu: profile takes it with --step; for the built-in steps use `vramplan estimate --gpu`")
    model = flags.model
    if model:
        reject_unused_for_model(flags)
    setup = builtin_setup(flags, backend=backend)
    from planner.config import parse_shape

    shape = parse_shape(flags.input_shape, "--input", 2, 6) if flags.input_shape else None
    if flags.input_shape and not model:
        raise PlannerError("--input: only used with --model package.module:factory")
    try:
        from planner.measure.profile import profile as run_profile
    except ImportError as exc:
        raise PlannerError(
            f"profile needs the measuring extra ({exc.name} is missing): pip install torch==2.13.0 'vramplan[profile]'"
        ) from None
    chosen = backend.value if backend else default_backend()
    with err.status(f"profiling on the {chosen} backend") as status:
        if model:  # the user's factory runs in a worker process, under --timeout
            from planner.measure import isolate

            isolate.set_timeout(flags.timeout)
            report = isolate.profile_model(setup, chosen, custom_model=model, custom_input=shape)
        else:
            report = run_profile(setup, chosen, progress=lambda msg: status.update(f"profiling on the {chosen} backend: {msg}"))
    if as_json:
        data = report.to_json()
        if chosen != "cuda":  # on a GPU the allocator already holds these buffers
            data["library_terms"] = library_terms_json(report, None)
            from planner.band import band_json

            data["device_band"] = band_json(report, None)
        print_json(data)
        return
    from planner.report.terminal import render_report

    render_report(report, None if model else setup, out, title=f"vramplan profile ({chosen} backend)")
    if chosen != "cuda":
        print_library_terms(report, None, out)
    out.print(f"[dim]{report.wall_seconds:.1f} s[/dim]")
