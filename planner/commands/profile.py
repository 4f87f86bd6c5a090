"""`vramplan profile`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from planner.commands.app import command, err, out, print_json
from planner.commands.estimate import estimate_step_file
from planner.commands.options import AccumOpt, AllocConfOpt, AmpOpt, AttentionOpt, Backend, BatchOpt, ChannelsOpt, CheckpointOpt, CkptOpt, ConfigOpt, DiscChOpt, DiscLayersOpt, FlashOpt, GpusOpt, JsonOpt, KindOpt, KnobOpt, NoDiscOpt, OptimOpt, PercOpt, PrecisionOpt, SdpaOpt, StepOpt, StrategyOpt, TimeoutOpt, VoxelOpt
from planner.commands.render import default_backend, library_terms_json, print_library_terms
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP
from planner.setup_flags import builtin_setup, reject_unused_for_model, step_params


@command()
def profile(
    config: ConfigOpt = None,
    kind: KindOpt = None,
    voxel: VoxelOpt = None,
    batch: BatchOpt = None,
    channels: ChannelsOpt = None,
    attention: AttentionOpt = None,
    amp: AmpOpt = None,
    checkpointing: CkptOpt = None,
    flash_attention: FlashOpt = None,
    perceptual: PercOpt = None,
    disc_layers: DiscLayersOpt = None,
    disc_channels: DiscChOpt = None,
    no_discriminator: NoDiscOpt = False,
    accum: AccumOpt = None,
    optimizer: OptimOpt = None,
    alloc_conf: AllocConfOpt = None,
    backend: Annotated[
        Optional[Backend],
        typer.Option("--backend", help="fake: FakeTensorMode on the CPU (default without CUDA); cpu: real CPU tensors; cuda: a GPU."),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Profile your own nn.Module: package.module:factory or path/to/file.py:factory "
                     "(plain MSE step; takes --input, --amp/--no-amp, --optimizer, --backend)."),
    ] = None,
    input_shape: Annotated[Optional[str], typer.Option("--input", help="Batch shape for --model, e.g. 2x1x96x96x64.")] = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    gpus: GpusOpt = None,
    strategy: StrategyOpt = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help=f"--step: card to check against. {GPU_HELP}")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure the peak memory of two iterations of the reference training step, or of your own (--step).

    Example: vramplan profile --voxel 256x256x64 --no-perceptual --json
    Example: vramplan profile --step examples/steps/rgbd_policy.py --precision amp-bf16 --gpu 24GB
    """
    p = step_params(locals(), "profile")
    if p is not None:
        estimate_step_file(p, out, err, fresh=True)
        return
    if gpu is not None:
        raise PlannerError("--gpu: profile takes it with --step; for the built-in steps use `vramplan estimate --gpu`")
    if model:
        reject_unused_for_model(locals())
    setup = builtin_setup(locals())
    from planner.config import parse_shape

    shape = parse_shape(input_shape, "--input", 2, 6) if input_shape else None
    if input_shape and not model:
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

            isolate.set_timeout(timeout)
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
