"""The ``vramplan`` command line. Thin: parse, call the library, render.

Torch is imported only inside the commands that measure (``profile``).
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from planner.errors import PlannerError, one_line, usage_message
from planner.gpu_rule import GPU_HELP

try:  # typer >= 0.16 vendors click; older ones depend on it
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as _UsageError

app = typer.Typer(
    name="vramplan",
    help="VRAM budget planner and profiler for PyTorch training of 3D generative models.\n\n"
    "Example: vramplan estimate --voxel 256x256x64 --gpu 24GB",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help formatter: typer's rich help costs ~0.15 s per --help here
    rich_markup_mode=None,
)


def _console(**kwargs: Any) -> Any:
    # Markup strings and the report's text tables print without rich; a rich Console
    # is made on first use for anything else (tables of other commands, spinners).
    from planner.report.text import PlainConsole

    return PlainConsole(**kwargs)


out: Any = _console(highlight=False, soft_wrap=False, width=140)
err: Any = _console(stderr=True, highlight=False)


class Backend(str, Enum):
    fake = "fake"
    cpu = "cpu"
    cuda = "cuda"


class Kind(str, Enum):
    stage1 = "ldm-stage1"
    stage2 = "ldm-stage2"


class Optim(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """PlannerError -> one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PlannerError as exc:
            sys.stderr.write(f"error: {one_line(str(exc))}\n")
            raise typer.Exit(exc.exit_code) from None  # 2; 3 and 4 for user code stopped or ended (isolate.py)

    return wrapper


# --- the options every setup-taking command shares -----------------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML training setup (seed-004 layout).")]
KindOpt = Annotated[Optional[Kind], typer.Option("--kind", help="Which reference step.")]
VoxelOpt = Annotated[Optional[str], typer.Option("--voxel", help="Volume size HxWxD, e.g. 256x256x64.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", min=1, help="Micro-batch size.")]
ChannelsOpt = Annotated[Optional[str], typer.Option("--channels", help="Channels per level, e.g. 32,64,64.")]
AttentionOpt = Annotated[Optional[str], typer.Option("--attention", help="Attention per level, e.g. F,F,T.")]
AmpOpt = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="CUDA autocast fp16 + GradScaler.")]
CkptOpt = Annotated[Optional[bool], typer.Option("--checkpointing/--no-checkpointing", help="Gradient checkpointing (stage 1).")]
FlashOpt = Annotated[Optional[bool], typer.Option("--flash-attention/--no-flash-attention", help="SDPA instead of explicit scores.")]
PercOpt = Annotated[Optional[bool], typer.Option("--perceptual/--no-perceptual", help="2.5D LPIPS perceptual loss.")]
DiscLayersOpt = Annotated[Optional[int], typer.Option("--disc-layers", min=1, help="PatchDiscriminator layers.")]
DiscChOpt = Annotated[Optional[int], typer.Option("--disc-channels", min=1, help="PatchDiscriminator first-layer channels.")]
NoDiscOpt = Annotated[bool, typer.Option("--no-discriminator", help="Train without the adversarial discriminator.")]
AccumOpt = Annotated[Optional[int], typer.Option("--accum", min=1, help="Gradient accumulation steps.")]
OptimOpt = Annotated[Optional[Optim], typer.Option("--optimizer", help="Optimizer for every network.")]
AllocConfOpt = Annotated[Optional[str], typer.Option(
    "--alloc-conf", help="CUDA caching-allocator settings, PYTORCH_CUDA_ALLOC_CONF syntax (e.g. expandable_segments:True); "
    "default: that environment variable if set, else torch's defaults.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Your own nn.Module: package.module:factory or path/to/file.py:factory, in a plain MSE step "
    "with Adam (AMP fp16 unless --precision says otherwise); takes every step-file flag.")]
InputOpt = Annotated[Optional[str], typer.Option("--input", help="Batch shape for --model, e.g. 2x1x96x96x64 (batch first).")]
StepOpt = Annotated[Optional[str], typer.Option(
    "--step", help="Your own training step: a step file (path/to/step.py or package.module), "
    "see examples/steps/template.py. Takes --knob, --batch, --accum, --precision, --checkpoint, --sdpa, --optimizer.")]
KnobOpt = Annotated[Optional[list[str]], typer.Option("--knob", help="--step: a knob of the step file, name=value (repeatable), e.g. --knob width=64.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="--step: fp32, amp-fp16 (autocast + GradScaler), amp-bf16, fp16-master / bf16-master "
    "(half networks, fp32 master weights), fp16 / bf16 (plain .half()).")]
CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", help="--step: wrap these module classes in torch's non-reentrant checkpoint wrapper: "
    "ClassName[,ClassName] or auto (the repeated block holding the most parameters).")]
SdpaOpt = Annotated[Optional[str], typer.Option("--sdpa", help="--step: the only SDPA backend enabled: flash, efficient, math (default auto: CUDA's choice).")]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", help=(
    "--step/--model: seconds each call into your code (import, one trace) may take; then it is stopped, naming the "
    "file:line it was at, exit code 3 (exit 4: your code ended the trace without a result, e.g. sys.exit). "
    "Default 600."))]
JobsOpt = Annotated[int, typer.Option("--jobs", min=0, help="--step: trace in this many processes (0: one per core).")]
GpusOpt = Annotated[Optional[int], typer.Option(
    "--gpus", help="Data-parallel ranks (needs --strategy); every figure is per rank, --batch is per rank.")]
StrategyOpt = Annotated[Optional[str], typer.Option(
    "--strategy", help="With --gpus N: ddp (DistributedDataParallel), fsdp (FSDP2 fully_shard, ZeRO-3) or "
    "fsdp-grad-op (no reshard after forward, ~ZeRO-2); torch.distributed's own code, traced under a fake "
    "process group (profile, --step) or transcribed (estimate).")]

_STEP_ONLY = (("knob", "--knob"), ("precision", "--precision"), ("checkpoint", "--checkpoint"), ("sdpa", "--sdpa"))


def _model_as_step(params: dict[str, Any]) -> dict[str, Any]:
    """``--model FACTORY --input BxS...`` as the step file it is (planner/stepfiles/model_step.py):
    ``--knob model=FACTORY --knob input=S... --batch B``, AMP fp16 unless --precision/--amp say
    otherwise (as ``profile --model``)."""
    model, shape = params.get("model"), params.get("input_shape")
    if not model:
        if shape:
            raise PlannerError("--input: only used with --model package.module:factory")
        return params
    if params.get("step") is not None:
        raise PlannerError("--model: give either --step (a step file) or --model (a module factory), not both")
    if not shape:
        raise PlannerError("--input: give the batch shape with --model, e.g. --input 2x1x96x96x64")
    from planner.config import parse_shape
    from planner.stepfiles import MODEL_STEP

    dims = parse_shape(shape, "--input", 2, 6)
    if params.get("batch") not in (None, dims[0]):
        raise PlannerError(f"--batch: with --model the batch is --input's first dimension ({dims[0]}); "
                           f"change --input, or use recommend --max-batch")
    knobs = [*(params.get("knob") or []), f"model={model}", f"input={'x'.join(map(str, dims[1:]))}"]
    precision = params.get("precision")
    if precision is None and params.get("amp") is None:
        precision = "amp-fp16"
    return {**params, "step": MODEL_STEP, "knob": knobs, "batch": dims[0], "precision": precision,
            "model": None, "input_shape": None, "as_flag": "--model"}


def _step_command(params: dict[str, Any], name: str) -> bool:
    """Run the --step form of command ``name`` when --step (or --model) is given (True);
    step-only flags without --step are errors naming them."""
    if name != "profile":
        params = _model_as_step(params)
    if params.get("step") is not None:
        from planner import stepcmds

        fn = stepcmds.estimate if name in ("estimate", "profile") else getattr(stepcmds, name)
        if name == "profile":
            fn(params, out, err, fresh=True)
        else:
            fn(params, out, err)
        return True
    for key, flag in _STEP_ONLY:
        if params.get(key) is not None:
            raise PlannerError(f"{flag}: only with --step (a step file); the built-in steps use their own flags")
    if params.get("timeout") is not None and not params.get("model"):
        raise PlannerError("--timeout: only with --step or --model (it stops your code; the built-in steps run none)")
    if params.get("jobs"):
        raise PlannerError("--jobs: only with --step")
    return False


def _overrides(**kw: Any):
    from planner.config import Overrides

    kind = kw.pop("kind", None)
    opt = kw.pop("optimizer", None)
    return Overrides(kind=kind.value if kind else None, optimizer=opt.value if opt else None, **kw)


_SETUP_FLAGS = ("kind", "voxel", "batch", "channels", "attention", "amp", "checkpointing", "flash_attention",
                "perceptual", "disc_layers", "disc_channels", "no_discriminator", "accum", "optimizer", "alloc_conf",
                "gpus", "strategy")


def _setup(params: dict[str, Any]):
    """The setup a command runs on, from its --config and the shared setup flags; the
    command's other flags that can be wrong whatever the work (empty --gpu, an unusable
    --write file, --backend cpu under AMP) are checked here, before any work."""
    from planner.config import check_command_flags, resolve_setup

    setup = resolve_setup(params.get("config"), _overrides(**{k: params[k] for k in _SETUP_FLAGS if k in params}))
    check_command_flags(params, setup)
    return setup


# Built-in-step flags that --model's plain MSE step does not use, and what sets that instead.
# (--amp/--no-amp, --optimizer, --backend, --input and --json do apply to it.)
_NOT_FOR_MODEL: tuple[tuple[str, str, str], ...] = (
    ("config", "--config", "only --amp/--no-amp, --optimizer and --backend set the --model step"),
    ("kind", "--kind", "--model runs a plain MSE step on your module, not a reference step"),
    ("voxel", "--voxel", "the volume is the trailing dimensions of --input"),
    ("batch", "--batch", "the batch is the first dimension of --input"),
    ("channels", "--channels", "the channels are your factory's"),
    ("attention", "--attention", "attention is whatever your module does"),
    ("checkpointing", "--checkpointing", "wrap blocks in torch.utils.checkpoint inside your module"),
    ("flash_attention", "--flash-attention", "attention is whatever your module does"),
    ("perceptual", "--perceptual", "the --model step has no perceptual loss"),
    ("disc_layers", "--disc-layers", "the --model step has no discriminator"),
    ("disc_channels", "--disc-channels", "the --model step has no discriminator"),
    ("no_discriminator", "--no-discriminator", "the --model step has no discriminator"),
    ("accum", "--accum", "the --model step is one batch per optimizer step"),
    ("gpus", "--gpus", "the --model step runs on one GPU; write a step file (--step) for more"),
    ("strategy", "--strategy", "the --model step runs on one GPU; write a step file (--step) for more"),
)


def _reject_unused_for_model(params: dict[str, Any]) -> None:
    """A built-in-step flag given with --model is an error naming it (it would change nothing)."""
    given = []
    for key, flag, why in _NOT_FOR_MODEL:
        value = params.get(key)
        if value is None or (key == "no_discriminator" and not value):
            continue
        given.append(("--no-" + flag[2:] if value is False else flag, why))  # --no-checkpointing etc.
    if given:
        (flag, why), rest = given[0], [f for f, _ in given[1:]]
        also = f"; nor do {', '.join(rest)}" if rest else ""
        raise PlannerError(f"{flag}: does not apply to --model ({why}){also}")


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@app.command()
@fail_cleanly
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
    if _step_command(locals(), "profile"):
        return
    if gpu is not None:
        raise PlannerError("--gpu: profile takes it with --step; for the built-in steps use `vramplan estimate --gpu`")
    if model:
        _reject_unused_for_model(locals())
    setup = _setup(locals())
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
    chosen = backend.value if backend else _default_backend()
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
            data["library_terms"] = _library_terms_json(report, None)
            from planner.band import band_json

            data["device_band"] = band_json(report, None)
        _print_json(data)
        return
    from planner.report.terminal import render_report

    render_report(report, None if model else setup, out, title=f"vramplan profile ({chosen} backend)")
    if chosen != "cuda":
        _print_library_terms(report, None)
    out.print(f"[dim]{report.wall_seconds:.1f} s[/dim]")


def _library_terms_json(report: Any, card: Any) -> dict:
    from planner.analytic.estimate import library_terms

    terms = library_terms(report, card)
    return {
        "included_in_device_total": False,
        "basis": "sourced, uncalibrated (planner/workspaces.py); a GPU profile measures them",
        "terms": [{"name": t.name, "bytes": t.bytes, "source": t.source, "calibrated": t.calibrated,
                   "note": t.note} for t in terms],
        "total_bytes": sum(t.bytes for t in terms),
    }


def _print_library_terms(report: Any, card: Any) -> None:
    from planner.analytic.estimate import library_terms
    from planner.band import band_line
    from planner.workspaces import render_lines

    out.print("Outside the trace (sourced, uncalibrated; listed, not added to device_total; "
              "the context line is the generation's reading where known):")
    for line in render_lines(library_terms(report, card)):
        out.print(f"  {line}", markup=False)  # sources quote file paths and URLs
    out.print(band_line(report, card), markup=False)


@app.command()
@fail_cleanly
def estimate(
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
    gpu: Annotated[
        Optional[str], typer.Option("--gpu", help=f"Card to check against. {GPU_HELP}")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also run the profiler (fake backend) and show the error per category.")
    ] = False,
    profile_name: Annotated[
        Optional[str], typer.Option("--profile", help="Device profile from profiles/ (see `vramplan profiles`).")
    ] = None,
    model: ModelOpt = None,
    input_shape: InputOpt = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    gpus: GpusOpt = None,
    strategy: StrategyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate where every byte of the reference training step goes, and whether it fits. No GPU, no torch.
    With --step, your own step, by trace (cached).

    Example: vramplan estimate --voxel 256x256x64 --gpu 24GB
    Example: vramplan estimate --step examples/steps/template.py --knob width=256 --precision amp-bf16 --gpu 8GB
    Example: vramplan estimate --model nets.py:make_net --input 2x1x96x96x96 --gpu 24GB
    """
    if _step_command(locals(), "estimate"):
        return
    from planner.analytic.estimate import estimate as run_estimate
    from planner.analytic.estimate import verdict
    from planner.gpus import parse_gpu

    setup = _setup(locals())
    from planner import profiles

    card = parse_gpu(gpu) if gpu else None
    prof = profiles.load_for(profile_name, "analytic") if profile_name else (profiles.for_gpu(card.key) if card else None)
    report = run_estimate(setup, card.capacity_bytes if card else None)
    if prof is not None:
        report = prof.apply(report)
    def _recommend_command() -> str:
        import shlex

        args = ["vramplan", "recommend"]
        given = {"config": config, "kind": kind.value if kind else None, "voxel": voxel, "batch": batch,
                 "channels": channels, "attention": attention, "disc_layers": disc_layers,
                 "disc_channels": disc_channels, "accum": accum, "optimizer": optimizer.value if optimizer else None,
                 "alloc_conf": alloc_conf}
        for name, value in given.items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        for name, value in {"amp": amp, "checkpointing": checkpointing, "flash-attention": flash_attention,
                            "perceptual": perceptual}.items():
            if value is not None:
                args.append(f"--{name}" if value else f"--no-{name}")
        if no_discriminator:
            args.append("--no-discriminator")
        args += ["--gpu", gpu]
        return " ".join(shlex.quote(a) for a in args)

    v = verdict(report, card, setup, _recommend_command()) if card else None
    measured = None
    if compare:
        try:
            from planner.measure.profile import profile as run_profile
        except ImportError as exc:
            raise PlannerError(f"--compare needs the measuring extra ({exc.name} is missing): pip install 'vramplan[profile]'") from None
        with err.status("profiling (fake backend) for --compare"):
            measured = run_profile(setup, "fake")
    if as_json:
        data = report.to_json()
        data["fits"] = v.fits if v else None
        data["gpu"] = v.to_json() if v else None
        data["next_step"] = v.next_step if v and not v.fits else None
        data["library_terms"] = _library_terms_json(report, card)
        from planner.band import band_json

        data["device_band"] = band_json(report, card)
        from planner.report.terminal import setup_line
        from planner.spec import spec_to_dict

        # what was estimated: the one-line summary the text prints, and the full setup
        data["setup"] = {"summary": setup_line(setup), "config": spec_to_dict(setup)}
        data["profile"] = (
            {"name": prof.name, "calibrated": prof.hardware, "device": prof.device.get("name", ""),
             "context_bytes": report.context_bytes, "source": report.context_basis}
            if prof is not None
            else {"name": "default", "calibrated": False, "context_bytes": report.context_bytes,
                  "source": report.context_basis}
        )
        if measured is not None:
            data["compare"] = measured.to_json()
        _print_json(data)
        return
    from planner.report.terminal import render_comparison, render_report

    render_report(report, setup, out, title="vramplan estimate")
    if v is not None:
        style = "bold green" if v.fits else "bold red"
        plabel = prof.label if prof is not None else "default, uncalibrated"
        out.print(f"[{style}]{v.sentence()}[/{style}] (device_total {report.device_total_bytes / 2**30:.2f} GiB; profile: {plabel})")
        out.print(f"[dim]{card.capacity_note()}[/dim]")
        for line in v.next_lines():
            out.print(line)
    _print_library_terms(report, card)
    if measured is not None:
        render_comparison(report, measured, out)


@app.command()
@fail_cleanly
def calibrate(
    name: Annotated[str, typer.Option("--name", help="Profile name: writes profiles/<name>.json.")] = "fake",
    grid: Annotated[Optional[Path], typer.Option("--grid", help="YAML list of configurations (default: benchmarks/grid.py).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="fake (anywhere) or cuda (a real GPU).")] = Backend.fake,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="With --backend cuda: the card from `vramplan gpus` this profile is for (--gpu NAME then picks it).")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Use only grid entries whose name contains this.")] = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    sweep: Annotated[Optional[list[str]], typer.Option(
        "--sweep", help="--step: the points to measure, knob=v1,v2 (repeatable; batch, accum, precision, checkpoint, "
        "sdpa, optimizer and the step file's knobs).")] = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    batch: BatchOpt = None,
    accum: AccumOpt = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Fit on recorded run files (vramplan record), e.g. --from runs/*.json.")] = None,
    runs: Annotated[Optional[list[str]], typer.Argument(help="More run files after --from (as the shell expands runs/*.json).", show_default=False)] = None,
    validate: Annotated[Optional[str], typer.Option("--validate", help="--from: check this existing profile on the runs instead of fitting one.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure a grid of configurations and fit a device profile's residual terms by least squares.

    With --step: the step file's trace (what estimate --step reports) against a run on --backend
    for each --sweep point; the profile (basis "trace") then corrects --step estimates given
    --profile NAME. On the fake backend that run is the trace itself: the terms come out as the
    identity (a pipeline check); --backend cuda on a GPU measures.

    Example: vramplan calibrate --name fake --backend fake

    Example: vramplan calibrate --step examples/steps/template.py --sweep batch=8,16,32 --name mine --backend cuda --gpu rtx4090

    Example: vramplan calibrate --from runs/*.json --name my-a100   (runs written by vramplan record)
    """
    if from_ is not None or runs or validate:
        from planner.compare import calibrate_command

        for key, flag in (("step", "--step"), ("grid", "--grid"), ("only", "--only"), ("sweep", "--sweep")):
            if locals()[key]:
                raise PlannerError(f"{flag}: does not apply to --from (each run file holds its own setup)")
        calibrate_command(locals(), out)
        return
    if step:
        from planner import stepcmds

        if grid is not None or only is not None:
            raise PlannerError(f"{'--grid' if grid is not None else '--only'}: does not apply to --step "
                               "(the points are the step file's --sweep rows)")
        stepcmds.calibrate(locals(), out, err)
        return
    for key, flag in (("sweep", "--sweep"), ("knob", "--knob"), ("precision", "--precision"),
                      ("checkpoint", "--checkpoint"), ("batch", "--batch"), ("accum", "--accum")):
        if locals()[key]:
            raise PlannerError(f"{flag}: only with --step (the built-in calibration's points are its --grid)")
    from rich.progress import Progress

    from planner import profiles
    from planner.calibrate import calibrate as run_calibrate
    from planner.calibrate import load_grid
    from planner.gpus import calibration_card

    from planner.config import check_cuda_backend, check_gpu_flag

    if backend == Backend.cpu:
        raise PlannerError("--backend: calibrate takes fake or cuda")
    check_cuda_backend(backend, valid="fake")
    profiles.check_name(name)  # before the measurements: the file it will write
    check_gpu_flag(gpu)
    card = calibration_card(gpu, backend.value)
    entries = load_grid(grid)
    if only is not None:
        if not only.strip():
            raise PlannerError("--only: empty value (valid: a part of a grid entry's name)")
        entries = [e for e in entries if only in e[0]]
        if not entries:
            raise PlannerError(f"--only: no grid entry's name contains {one_line(repr(only), 80)}")
    with Progress(console=getattr(err, "rich", err), transient=True) as bar:
        task = bar.add_task("calibrating", total=len(entries))

        def tick(i: int, n: int, label: str) -> None:
            bar.update(task, completed=i, description=f"calibrating: {label}")

        try:
            prof = run_calibrate(name, entries, backend.value, card.key if card else None, tick)
        except ImportError as exc:
            raise PlannerError(f"calibrate needs the measuring extra ({exc.name} is missing)") from None
    from planner.calibrate import save_and_report

    save_and_report(prof, as_json, out, lambda path: f"wrote {path}: {len(prof.measurements)} measurements on "
                    f"{prof.device.get('name', backend.value)}")


@app.command()
@fail_cleanly
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
    record_command(locals(), None if step else _setup(locals()), out)


@app.command()
@fail_cleanly
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


@app.command()
@fail_cleanly
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

    snapshot_command(locals(), None if step else _setup(locals()), out)


@app.command(name="profiles")
@fail_cleanly
def list_profiles(as_json: JsonOpt = False) -> None:
    """List the device profiles and what each was measured on.

    Example: vramplan profiles
    """
    from rich.table import Table

    from planner import profiles

    rows = []
    for n in profiles.available():
        p = profiles.load(n)
        rows.append({"name": p.name, "device": p.device.get("name", ""), "hardware": p.hardware,
                     "gpu_key": p.gpu_key, "measurements": len(p.measurements),
                     "torch": p.device.get("torch", ""), "residuals": p.residuals})
    if as_json:
        _print_json(rows)
        return
    t = Table(title="Device profiles (profiles/*.json)", title_justify="left")
    for col in ("name", "measured on", "real GPU", "points", "torch", "allocated residual (max %)"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["device"], "yes" if r["hardware"] else "no", str(r["measurements"]), r["torch"],
                  f"{r['residuals'].get('allocated', {}).get('max_abs_pct', '-')}")
    out.print(t)
    if not any(r["hardware"] for r in rows):
        out.print("[dim]no profile was measured on a real GPU yet: estimates use the uncalibrated defaults[/dim]")


class Prefer(str, Enum):
    risk = "risk"
    speed = "speed"
    quality = "quality"


def _builtin_max_gpus(setup: Any, card: Any, margin: float, limit: int, as_json: bool, band_kw: dict) -> None:
    """recommend --max-gpus on a built-in step (planner/recommend.py ``max_gpus``)."""
    from planner import gpusearch as G
    from planner.recommend import max_gpus
    from planner.report.terminal import setup_line

    answer, tried, verdict, seconds = max_gpus(setup, card, margin, limit, **band_kw)
    budget = card.capacity_bytes * (1 - margin)
    if as_json:
        from planner.spec import spec_to_dict

        _print_json({"gpu": {"key": card.key, "name": card.name, **card.capacity_json()}, "budget_bytes": int(budget),
                     "input": spec_to_dict(setup), "answer": answer.to_json() if answer else None,
                     "tried": [o.to_json() for o in tried], "verdict": verdict, "seconds": round(seconds, 2),
                     "not_counted": G.NOT_COUNTED})
        return
    G.render(out, f"vramplan recommend --max-gpus {limit}", setup_line(setup), budget, card.capacity_bytes, margin,
             card.name, answer, tried, verdict, "estimated: DDP / FSDP2 transcribed, exact against their trace",
             f"{len(tried)} estimates, {seconds:.1f} s")
    out.print(f"[dim]{card.capacity_note()}[/dim]")


@app.command()
@fail_cleanly
def recommend(
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
    gpu: Annotated[str, typer.Option("--gpu", help=f"Card to fit. {GPU_HELP}")] = "24GB",
    margin: Annotated[float, typer.Option("--margin", help="Safety margin as a fraction of the card.")] = 0.05,
    prefer: Annotated[Prefer, typer.Option("--prefer", help="risk (default): lowest quality risk, then fastest; speed; quality.")] = Prefer.risk,
    freeze: Annotated[Optional[str], typer.Option("--freeze", help="Knobs not to touch, e.g. channels,attention.")] = None,
    max_batch: Annotated[bool, typer.Option("--max-batch", help="Only report the largest batch that fits this configuration.")] = False,
    max_voxel: Annotated[bool, typer.Option("--max-voxel", help="Only report the largest volume (same aspect) that fits.")] = False,
    write: Annotated[Optional[Path], typer.Option("--write", help="Write the recommended full configuration as YAML.")] = None,
    model: ModelOpt = None,
    input_shape: InputOpt = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    gpus: GpusOpt = None,
    strategy: StrategyOpt = None,
    jobs: JobsOpt = 0,
    search: Annotated[Optional[list[str]], typer.Option("--search", help="--step: also search a knob of the step file, knob=v1/v2 (repeatable).")] = None,
    max_knob: Annotated[Optional[str], typer.Option("--max-knob", help="--step: only report the largest value of this integer knob that fits.")] = None,
    max_gpus: Annotated[Optional[int], typer.Option("--max-gpus", min=2, help="The fewest GPUs (up to this many) and the DDP/FSDP strategy whose per-rank step fits, at the input's global batch (batch x accumulation).")] = None,
    knob_step: Annotated[Optional[int], typer.Option("--knob-step", min=1, help="--max-knob: search multiples of this (e.g. 16 for a resolution that must divide by 16).")] = None,
    knob_min: Annotated[Optional[int], typer.Option("--knob-min", min=1, help="--max-knob: the smallest value to try (default: the step's own value, rounded down to --knob-step).")] = None,
    # issue 24 (band): where in the device_total band a plan must fit; a GPU profile collapses the band
    fit_at: Annotated[str, typer.Option("--fit-at", help="high (default): a plan fits when the top of its device_total band does (planner/band.py); point: the point figure.")] = "high",
    profile_name: Annotated[Optional[str], typer.Option("--profile", help="Device profile to apply to every estimate (default for the built-in kinds: the GPU-measured profile of --gpu, if any).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The cheapest configuration that fits a GPU, with what each change saves.

    Example: vramplan recommend --voxel 256x256x64 --gpu 24GB
    Example: vramplan recommend --step examples/steps/rgbd_policy.py --gpu 24GB
    Example: vramplan recommend --model nets.py:make_net --input 2x1x96x96x96 --gpu 24GB --max-batch

    Example: vramplan recommend --voxel 256x256x64 --batch 4 --max-gpus 8 --gpu 80GB
    Example: vramplan recommend --step examples/steps/ldm_stage1.py --knob voxel=256,256,64 --batch 4 --max-gpus 8 --gpu 80GB
    """
    if _step_command(locals(), "recommend"):
        return
    for value, flag in ((search, "--search"), (max_knob, "--max-knob"), (knob_step, "--knob-step"), (knob_min, "--knob-min")):
        if value:
            raise PlannerError(f"{flag}: only with --step")
    from planner import recommend as R
    from planner.gpus import parse_gpu

    setup = _setup(locals())
    card = parse_gpu(gpu)
    from planner import profiles  # issue 24 (band): the profile as `estimate` picks it

    prof = profiles.load_for(profile_name, "analytic") if profile_name else profiles.for_gpu(card.key)
    band_kw = {"fit_at": fit_at, "profile": prof}
    if max_gpus:
        if max_batch or max_voxel:
            raise PlannerError("--max-gpus: give it alone, not with --max-batch/--max-voxel")
        _builtin_max_gpus(setup, card, margin, max_gpus, as_json, band_kw)
        return
    if max_batch or max_voxel:
        cap_json = {"key": card.key, "name": card.name, "memory_bytes": card.memory_bytes, **card.capacity_json()}
        if max_batch:
            res = R.max_batch(setup, card, margin, **band_kw)
            rep, b = res.report, res.value
            result = {"max_batch": b, "device_total_bytes": rep.device_total_bytes if rep else None,
                      "capped": res.capped, "search_cap": res.cap, "smaller_not_fitting": res.smaller_not_fitting}
            if rep is None:
                line = f"even batch 1 does not fit {card.name}"
            elif res.capped:
                line = (f"batch {b} (the search cap) still fits {card.name} (device_total {rep.device_total_bytes / 2**30:.2f} GiB): "
                        f"the largest batch is at least {b}, not found")
            else:
                line = f"largest batch that fits {card.name}: {b} (device_total {rep.device_total_bytes / 2**30:.2f} GiB)"
            bad_small = [str(x) for x in res.smaller_not_fitting]
        else:
            res = R.max_voxel(setup, card, margin, **band_kw)
            rep, v = res.report, res.value
            cons = res.constraints
            result = {"max_voxel": list(v) if v else None, "device_total_bytes": rep.device_total_bytes if rep else None,
                      "capped": res.capped, "search_cap": list(res.cap) if res.cap else None,
                      "smaller_not_fitting": [list(x) for x in res.smaller_not_fitting],
                      "step": cons["step"], "min_side": cons["min_side"],
                      "constraints": {k: {"step": c["step"], "min_side": c["min_side"], "why": c["why"]}
                                      for k, c in cons["networks"].items()}}
            why = "; ".join(c["why"] + (f", side >= {c['min_side']}" if c["step"] == 1 else "") for c in cons["networks"].values())
            if rep is None:
                line = (f"even the smallest valid volume does not fit {card.name} (sizes step by {cons['step']} from "
                        f"{cons['min_side']} on the smallest side: {why})")
            elif res.capped:
                line = (f"{'x'.join(map(str, v))} (the search cap) still fits {card.name} "
                        f"(device_total {rep.device_total_bytes / 2**30:.2f} GiB): the largest volume is at least that")
            else:
                line = (f"largest volume that fits {card.name}: {'x'.join(map(str, v))} (device_total {rep.device_total_bytes / 2**30:.2f} GiB; "
                        f"sizes step by {cons['step']}: {why})")
            bad_small = ["x".join(map(str, x)) for x in res.smaller_not_fitting]
        result["gpu"] = cap_json
        result["budget_bytes"] = int(card.capacity_bytes * (1 - margin))
        if as_json:
            _print_json(result)
        else:
            out.print(line)
            if bad_small:
                out.print(f"[yellow]note: smaller sizes that do NOT fit (memory is not monotone in the size): "
                          f"{', '.join(bad_small)}[/yellow]")
            out.print(f"[dim]{card.capacity_note()}; margin {margin:.0%}[/dim]")
        return
    frozen = {f.strip() for f in (freeze or "").split(",") if f.strip()}
    known = {"amp", "batch", "checkpointing", "flash", "attention", "nonlocal", "perceptual", "discriminator", "channels", "patch", "optimizer", "allocator"}
    bad = frozen - known
    if bad:
        raise PlannerError(f"--freeze: unknown knob '{sorted(bad)[0]}' (valid: {', '.join(sorted(known))})")
    with err.status("searching"):
        rec = R.recommend(setup, card, margin, prefer.value, frozen, **band_kw)
    best = rec.best
    if as_json:
        from planner.spec import spec_to_dict

        def cand(c):
            return {"changes": c.labels, "tier": R.TIER_NAMES[c.tier], "device_total_bytes": c.exact.device_total_bytes,
                    "seconds_per_sample": c.seconds, "diff": R.yaml_diff(setup, c.setup)}
        _print_json({
            "gpu": {"key": card.key, "name": card.name, "memory_bytes": card.memory_bytes, **card.capacity_json()},
            "budget_bytes": rec.budget_bytes,
            "input": spec_to_dict(setup),
            "input_device_total_bytes": rec.base.device_total_bytes,
            "input_fits": rec.input_fits,
            "headroom_bytes": rec.headroom_bytes if rec.input_fits else None,
            "faster_that_fit": [dict(cand(c), speedup=(rec.base_seconds / c.seconds) if c.seconds and rec.base_seconds else None)
                                for c in rec.faster],
            "recommended": cand(best) if best else None,
            "slowdown": (best.seconds / rec.base_seconds) if best and best.seconds and rec.base_seconds else None,
            "savings_alone_bytes": rec.savings,
            "alternatives": [cand(c) for c in rec.alternatives],
            "considered": rec.considered, "verified": rec.verified, "seconds": round(rec.seconds, 3),
            "nothing_fits": best is None,
            "smallest_device_total_bytes": rec.smallest.exact.device_total_bytes if rec.smallest else None,
            "card_needed": rec.needed_gpu.key if rec.needed_gpu else None,
            "band_margin": rec.margin_json(best) if best else None,  # issue 24 (band)
        })
        if best and write:
            _write_setup(write, best.setup)
        return
    from rich.table import Table

    from planner.report.terminal import render_report, setup_line

    out.print(f"[bold]vramplan recommend[/bold] for {card.name} ({card.capacity_bytes / 2**30:.2f} GiB CUDA-reported, margin {margin:.0%}: "
              f"budget {rec.budget_bytes / 2**30:.2f} GiB); input needs {rec.base.device_total_bytes / 2**30:.2f} GiB"
              + (" per rank" if setup.parallel.gpus > 1 else ""))
    out.print("input: " + setup_line(setup), markup=False)
    out.print(f"[dim]{card.capacity_note()}[/dim]")
    out.print(f"[dim]{rec.considered:,} candidates considered, {rec.verified} estimated exactly, {rec.seconds:.2f} s[/dim]")
    if rec.input_fits:
        out.print(f"[bold green]The input already fits {card.name}[/bold green]: device total "
                  f"{rec.base.device_total_bytes / 2**30:.2f} GiB of the {rec.budget_bytes / 2**30:.2f} GiB budget, "
                  f"{rec.headroom_bytes / 2**30:.2f} GiB headroom "
                  f"({'below the top of its band' if rec.fit_at == 'high' else 'below its point'}). Nothing needs to change.")
        out.print("Band: " + rec.margin_line(best), markup=False)  # issue 24 (band)
        if rec.faster:
            fast = Table(title="Faster settings that still fit (estimated, roofline model, uncalibrated)", title_justify="left")
            for col in ("changes", "risk", "device total GiB", "headroom GiB", "time/sample vs input"):
                fast.add_column(col)
            for c in rec.faster:
                rel = f"{c.seconds / rec.base_seconds:.2f}x" if c.seconds and rec.base_seconds else "-"
                fast.add_row(", ".join(c.labels), R.TIER_NAMES[c.tier], f"{c.exact.device_total_bytes / 2**30:.2f}",
                             f"{(rec.budget_bytes - c.exact.device_total_bytes) / 2**30:.2f}", rel)
            out.print(fast)
            out.print(f"YAML diff of the first ({', '.join(rec.faster[0].labels)}): "
                      + "; ".join(R.yaml_diff(setup, rec.faster[0].setup)))
        else:
            out.print("No faster setting in the search space fits.")
        if write:
            _write_setup(write, best.setup)
            out.print(f"wrote {write} (the input, unchanged)")
        return
    if best is None:
        s = rec.smallest
        need = rec.needed_gpu
        out.print(f"[bold red]Nothing fits.[/bold red] The smallest configuration ({', '.join(s.labels) or 'as is'}) needs "
                  f"{s.exact.device_total_bytes / 2**30:.2f} GiB" + (f"; it would fit a {need.name} ({need.capacity_bytes / 2**30:.2f} GiB CUDA-reported)." if need else "; no catalog card is that large."))
        return
    if not best.labels:
        out.print("[bold green]The input already fits; nothing to change.[/bold green]")
    else:
        out.print("[bold]Recommended changes[/bold] (YAML diff against the input):")
        for line in R.yaml_diff(setup, best.setup):
            out.print(f"  {line}")
        why = Table(title="Why each change (allocated peak saved by the change alone)", title_justify="left")
        why.add_column("change")
        why.add_column("risk")
        why.add_column("saves GiB", justify="right")
        for st in best.settings:
            if st.label != "as is":
                why.add_row(st.label, R.TIER_NAMES[st.tier], f"{rec.savings.get(st.label, 0) / 2**30:.2f}")
        out.print(why)
    if best.seconds and rec.base_seconds:
        out.print(f"estimated time per effective sample: {best.seconds / rec.base_seconds:.2f}x the input's (roofline model, uncalibrated)")
    render_report(best.exact, best.setup, out, title="recommended configuration")
    out.print(f"[bold green]FITS[/bold green] {card.name}: {best.exact.device_total_bytes / 2**30:.2f} of {card.capacity_bytes / 2**30:.2f} GiB (CUDA-reported)")
    out.print("Band: " + rec.margin_line(best), markup=False)  # issue 24 (band)
    if rec.alternatives:
        alt = Table(title="Next alternatives", title_justify="left")
        for col in ("changes", "risk", "device total GiB", "time/sample vs input"):
            alt.add_column(col)
        for c in rec.alternatives:
            rel = f"{c.seconds / rec.base_seconds:.2f}x" if c.seconds and rec.base_seconds else "-"
            alt.add_row(", ".join(c.labels) or "as is", R.TIER_NAMES[c.tier], f"{c.exact.device_total_bytes / 2**30:.2f}", rel)
        out.print(alt)
    if write:
        _write_setup(write, best.setup)
        out.print(f"wrote {write}")


def _write_setup(path: Path, setup: Any) -> None:
    """recommend --write: the full configuration as YAML; a write error is one line."""
    import yaml

    from planner.report.table import write_text
    from planner.spec import spec_to_dict

    write_text(path, yaml.safe_dump(spec_to_dict(setup), sort_keys=False), "--write")


class Fmt(str, Enum):
    markdown = "markdown"
    csv = "csv"
    html = "html"
    latex = "latex"
    json = "json"


@app.command()
@fail_cleanly
def table(
    config: ConfigOpt = None,
    kind: KindOpt = None,
    voxel: VoxelOpt = None,
    batch: BatchOpt = None,
    sweep: Annotated[
        Optional[list[str]],
        typer.Option("--sweep", help="knob=v1,v2 (repeatable; list knobs channels/attention separate values with '/').\n"
                     "Knobs: batch voxel amp checkpointing flash perceptual discriminator disc_layers disc_channels accum optimizer kind channels attention."),
    ] = None,
    configs: Annotated[Optional[list[Path]], typer.Option("--configs", help="One row per YAML file (repeatable).")] = None,
    gpu: Annotated[Optional[list[str]], typer.Option("--gpu", help=f"Add a 'fits' column per card (repeatable). {GPU_HELP}")] = None,
    measure: Annotated[Optional[Backend], typer.Option("--measure", help="Also profile each row (fake or cuda backend).")] = None,
    seed004: Annotated[bool, typer.Option("--seed004", help="Seed 004's comparison table, with real figures.")] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.markdown,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the table to this file.")] = None,
    model: ModelOpt = None,
    input_shape: InputOpt = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    gpus: GpusOpt = None,
    strategy: StrategyOpt = None,
    jobs: JobsOpt = 0,
    accum: AccumOpt = None,
    optimizer: OptimOpt = None,
    alloc_conf: AllocConfOpt = None,
) -> None:
    """Comparison table of configurations: peak memory, device total, fits per GPU, relative speed.
    With --step, --sweep takes batch, accum, precision, checkpoint, sdpa, optimizer, gpus, strategy and the step file's knobs.

    Example: vramplan table --sweep batch=1,2,4 --sweep amp=on,off --voxel 96x96x64 --gpu 24GB
    Example: vramplan table --step examples/steps/template.py --sweep width=64,256 --sweep precision=fp32,amp-bf16 --gpu 8GB
    Example: vramplan table --model nets.py:make_net --input 2x1x96x96x96 --sweep batch=1,2,4 --gpu 24GB
    """
    if out_file is not None:
        from planner.config import check_output_path

        check_output_path(out_file, "--out")
    if _step_command(locals(), "table"):
        return
    for value, flag in ((accum, "--accum"), (optimizer, "--optimizer"), (alloc_conf, "--alloc-conf")):
        if value is not None:
            raise PlannerError(f"{flag}: table takes it with --step; for the built-in steps use --sweep")
    from planner.config import check_cuda_backend, check_gpu_flag, check_output_path
    from planner.gpus import parse_gpu
    from planner.report import table as T

    if out_file is not None:  # before the work, not after it
        check_output_path(out_file, "--out")
    check_gpu_flag(gpu)
    cards = [parse_gpu(g) for g in (gpu or [])]
    speed_gpu = cards[0] if cards else parse_gpu("rtx4090")
    if seed004:
        given = [flag for value, flag in ((config, "--config"), (kind, "--kind"), (voxel, "--voxel"), (batch, "--batch"),
                                          (sweep, "--sweep"), (configs, "--configs"), (gpus, "--gpus"),
                                          (strategy, "--strategy")) if value]
        if given:
            raise PlannerError(f"{given[0]}: not with --seed004 (its table is seed 004's own configurations; "
                               "it takes --gpu, --measure, --format and --out)")
        from planner.config import setup_from_dict, with_environment
        from planner.report.seed004 import seed004_configs

        rows = [(meta, setup_from_dict(with_environment(cfg))) for meta, cfg in seed004_configs()]
    else:
        if voxel and sweep and any(s.split("=")[0].strip() == "voxel" for s in sweep):
            raise PlannerError("--voxel: also swept by --sweep voxel=...; give one of them")
        rows = T.build_rows(config, _overrides(kind=kind, voxel=voxel, batch=batch, gpus=gpus, strategy=strategy),
                            list(sweep or []), list(configs or []))
    if measure == Backend.cpu:
        raise PlannerError("--measure: fake or cuda")
    check_cuda_backend(measure, valid="fake", flag="--measure")
    with err.status("estimating") as status:
        evaluated = T.evaluate(rows, speed_gpu, measure.value if measure else None,
                               lambda i, n: status.update(f"row {i}/{n}"))
    df = T.frame(evaluated, cards)
    if seed004:  # the users' guesses beside the figures they guessed
        guessed_mem = df.pop("seed 004 guessed memory")
        guessed_speed = df.pop("seed 004 guessed speed")
        df.insert(df.columns.get_loc("device total (GiB)") + 1, "seed 004 guessed memory", guessed_mem)
        if "relative speed (est.)" in df.columns:
            df.insert(df.columns.get_loc("relative speed (est.)") + 1, "seed 004 guessed speed", guessed_speed)
    text = T.render(df, fmt.value)
    if out_file is not None:
        T.write_text(out_file, text, "--out")
        err.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


class PlotKind(str, Enum):
    breakdown = "breakdown"
    scaling = "scaling"
    timeline = "timeline"


@app.command()
@fail_cleanly
def plot(
    what: Annotated[PlotKind, typer.Argument(help="breakdown, scaling or timeline.")],
    config: ConfigOpt = None,
    kind: KindOpt = None,
    voxel: VoxelOpt = None,
    batch: BatchOpt = None,
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="knob=v1,v2 as for `vramplan table` (breakdown: one bar per row; scaling: one line per row).")] = None,
    gpu: Annotated[Optional[list[str]], typer.Option("--gpu", help=f"Draw this card's capacity (repeatable). {GPU_HELP}")] = None,
    x: Annotated[Optional[str], typer.Option("--x", help="scaling: 'voxel' (cubes 32..256 at the config's aspect, the default) or 'batch'.")] = None,
    out_file: Annotated[Path, typer.Option("--out", help="Output file (.png or .svg).")] = Path("vramplan.png"),
    model: ModelOpt = None,
    input_shape: InputOpt = None,
    step: StepOpt = None,
    timeout: TimeoutOpt = None,
    knob: KnobOpt = None,
    precision: PrecisionOpt = None,
    checkpoint: CheckpointOpt = None,
    sdpa: SdpaOpt = None,
    gpus: GpusOpt = None,
    strategy: StrategyOpt = None,
    jobs: JobsOpt = 0,
    accum: AccumOpt = None,
    optimizer: OptimOpt = None,
) -> None:
    """Figures: memory breakdown per configuration, scaling with size, or the live-memory timeline of a step.

    Example: vramplan plot breakdown --sweep amp=on,off --voxel 128x128x64 --gpu 24GB --out breakdown.png
    Example: vramplan plot breakdown --step examples/steps/template.py --sweep precision=fp32,amp-bf16 --out b.png
    """
    if out_file.suffix.lower() not in (".png", ".svg"):
        raise PlannerError(f"--out: {one_line(repr(str(out_file)), 80)} must end in .png or .svg")
    if x is not None and (step or what != PlotKind.scaling):
        raise PlannerError(f"--x: only for `plot scaling` of the built-in steps (got plot {what.value}"
                           f"{' --step' if step else ''})")
    if _step_command(locals(), "plot"):
        return
    for value, flag in ((accum, "--accum"), (optimizer, "--optimizer")):
        if value is not None:
            raise PlannerError(f"{flag}: plot takes it with --step; for the built-in steps use --sweep")
    from planner.gpus import parse_gpu
    from planner.report import plot as P
    from planner.report import table as T

    from planner.config import check_gpu_flag, check_output_path

    if out_file.suffix.lower() not in (".png", ".svg"):
        raise PlannerError(f"--out: {one_line(repr(str(out_file)), 80)} must end in .png or .svg")
    check_output_path(out_file, "--out")  # before the work, not after it
    check_gpu_flag(gpu)
    cards = [parse_gpu(g) for g in (gpu or [])]
    rows = T.build_rows(config, _overrides(kind=kind, voxel=voxel, batch=batch, gpus=gpus, strategy=strategy),
                        list(sweep or []), [])
    if len(rows) > P.MAX_SERIES:
        raise PlannerError(f"--sweep: {len(rows)} configurations (valid: at most {P.MAX_SERIES} in one figure)")
    from planner.analytic.estimate import estimate as run_estimate

    per_rank = any(s.parallel.gpus > 1 for _, s in rows)
    if what == PlotKind.breakdown:
        labels = [(", ".join(f"{k}={v}" for k, v in lab.items()) or "config")
                  + (f" {s.parallel.strategy}" if s.parallel.gpus > 1 and "strategy" not in lab else "")
                  for lab, s in rows]
        fig = P.breakdown_figure(labels, [run_estimate(s) for _, s in rows], cards,
                                 "Memory of one training step by category (device total"
                                 + (", per rank)" if per_rank else ")"))
    elif what == PlotKind.scaling:
        from planner.report.scaling import scaling_series

        series, xlabel = scaling_series(rows, x or "voxel")
        fig = P.scaling_figure(series, cards, xlabel, "Peak memory against problem size"
                               + (" (per rank: " + ", ".join(sorted({f"{s.parallel.gpus} GPUs {s.parallel.strategy}"
                                                                    for _, s in rows if s.parallel.gpus > 1})) + ")"
                                  if per_rank else ""))
    else:
        if len(rows) != 1:
            raise PlannerError("--sweep: the timeline shows one configuration")
        from planner.report.scaling import timeline_data

        with err.status("profiling the step (fake backend)"):
            points, phases, peak_i = timeline_data(rows[0][1])
        fig = P.timeline_figure(points, phases, peak_i, gpus=cards)
    P.save(fig, out_file, "--out")
    err.print(f"wrote {out_file}")


@app.command()
@fail_cleanly
def oom(
    message: Annotated[
        Optional[str], typer.Argument(help="The out-of-memory message (or a whole traceback); '-' or none: read stdin.")
    ] = None,
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
    gpu: Annotated[
        Optional[str], typer.Option("--gpu", help=f"With a setup: card to recommend for (default: the message's capacity, less other processes). {GPU_HELP}")
    ] = None,
    margin: Annotated[Optional[float], typer.Option(
        "--margin", help="With a setup: safety margin of the recommendation, a fraction of the card (default 0.05).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Explain a CUDA out-of-memory message; with a setup (--config or setup flags), name the tensor it was and what fits.

    Example: vramplan oom "$(tail -n 30 train.log)" --config examples/seed004_high_res.yaml
    """
    from planner import oom as O

    if message is None or message == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise PlannerError("MESSAGE: none given: give the message as an argument or pipe it in "
                               "(e.g. tail -n 30 train.log | vramplan oom)")
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        text = stream.read(O.MAX_INPUT_BYTES + 1)
    else:
        text = message
    report = O.parse_oom(text)
    params = locals()
    given = config is not None or any(
        params.get(k) is not None and not (k == "no_discriminator" and not params[k]) for k in _SETUP_FLAGS)
    if gpu is not None and not gpu.strip():
        raise PlannerError("--gpu: empty value (valid: a size as sold like 24GB, an exact capacity like exact:23.55GiB, or a name from `vramplan gpus`)")
    if margin is not None and not 0 <= margin < 1:
        raise PlannerError(f"--margin: {margin} must be in [0, 1)")
    for value, flag in ((gpu, "--gpu"), (margin, "--margin")):
        if value is not None and not given:
            raise PlannerError(f"{flag}: only used with a setup (--config CFG.yaml or the setup flags), for the recommendation")
    margin = 0.05 if margin is None else margin
    data = O.explain_json(report)
    lines = list(data["explanation"])
    setup_data: dict[str, Any] | None = None
    if given:
        from planner.analytic.estimate import estimate as run_estimate
        from planner.analytic.step import simulate
        from planner.gpus import parse_gpu
        from planner.report.terminal import setup_line

        setup = _setup(params)
        sim = simulate(setup)
        matches = O.match_request(report, sim.mem)
        card = parse_gpu(gpu) if gpu else O.recommendation_card(report)
        est = run_estimate(setup, card.capacity_bytes if card else None)
        setup_data = {
            "summary": setup_line(setup),
            "request_matches": [m.to_json() for m in matches],
            "estimate": {"peak_allocated_bytes": est.peak_allocated_bytes, "peak_reserved_bytes": est.peak_reserved_bytes,
                         "device_total_bytes": est.device_total_bytes},
            "gpu": None, "recommendation": None,
        }
        if card is not None:
            from planner import recommend as R

            with err.status("searching for a configuration that fits"):
                rec = R.recommend(setup, card, margin, "risk", set())
            best = rec.best
            setup_data["gpu"] = {"key": card.key, "name": card.name, **card.capacity_json()}
            setup_data["recommendation"] = {
                "budget_bytes": rec.budget_bytes, "input_fits": rec.input_fits,
                "changes": best.labels if best else None,
                "device_total_bytes": best.exact.device_total_bytes if best else None,
                "diff": R.yaml_diff(setup, best.setup) if best else None,
                "nothing_fits": best is None,
                "card_needed": rec.needed_gpu.key if best is None and rec.needed_gpu else None,
            }
    if as_json:
        if setup_data is not None:
            data["setup"] = setup_data
        _print_json(data)
        return
    out.print("[bold]vramplan oom[/bold]")
    for line in lines:
        out.print(line)
    if setup_data is None:
        out.print("[dim]Give the setup (--config CFG.yaml or the setup flags) to name the tensor and get a "
                  "configuration that fits.[/dim]")
        return
    out.print(f"[bold]Setup:[/bold] {setup_data['summary']}")
    ms = setup_data["request_matches"]
    if ms:
        first = O.TensorMatch(**ms[0])
        out.print(f"Most likely: {first.sentence(report.request_text)}.")
        for m in ms[1:]:
            out.print(f"  or: {O.TensorMatch(**m).sentence(report.request_text)}")
        if report.request_bytes <= (20 << 20) and first.how == "segment":
            out.print("[dim]  A 2 or 20 MiB segment serves any small tensor: these are named by where the step "
                      "first runs out of room (capacity - outside PyTorch), not by their size.[/dim]")
    else:
        out.print(f"No allocation of this setup's step asks for {report.request_text}: the OOM came from another "
                  "setup, or outside the reference step.")
    e = setup_data["estimate"]
    out.print(f"vramplan's estimate of this step: peak allocated {O.fmt(e['peak_allocated_bytes'])}, device total "
              f"{O.fmt(e['device_total_bytes'])}" + (f" vs the card's {report.capacity_text}." if report.capacity_text else "."))
    r = setup_data["recommendation"]
    if r is None:
        out.print("[dim]No capacity in the message and no --gpu: no recommendation.[/dim]")
    elif r["input_fits"]:
        out.print(f"[bold green]This setup fits {setup_data['gpu']['name']}[/bold green] by the estimate "
                  f"(budget {O.fmt(r['budget_bytes'])}, margin {margin:.0%}): the OOM is not this step's peak "
                  "(another setup, other processes, or fragmentation, above).")
    elif r["nothing_fits"]:
        need = f"; it would take a {r['card_needed']}" if r["card_needed"] else ""
        if O.diagnosis(report) == "other_memory":  # a larger card is not the answer to memory others hold
            need = f"; {O.fmt(report.elsewhere_bytes)} of the card is held outside this process: free that first"
        out.print(f"[bold red]Nothing in the search space fits {setup_data['gpu']['name']}[/bold red]{need}.")
    else:
        out.print(f"[bold]Recommended for {setup_data['gpu']['name']}[/bold] (budget {O.fmt(r['budget_bytes'])}, "
                  f"margin {margin:.0%}): {', '.join(r['changes'])}; device total {O.fmt(r['device_total_bytes'])}.")
        for line in r["diff"]:
            out.print(f"  {line}")


@app.command()
@fail_cleanly
def check(
    gpu: Annotated[str, typer.Option("--gpu", help=f"Card to fit. {GPU_HELP}")],
    setups: Annotated[Optional[list[str]], typer.Argument(
        metavar="CONFIG_OR_STEP...", show_default=False,
        help="Setups to check: built-in config YAMLs (analytic, no torch) and step files .py (traced, cached).")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Safety margin: the budget is capacity x (1 - margin).")] = 0.05,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Baseline JSON: also fail when a peak grows by more than --tolerance.")] = None,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="Growth allowed against --baseline, a fraction (default 0.02).")] = None,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Merge these setups' figures into --baseline instead of comparing: adds new setups, replaces checked ones, keeps the others; says what it added, changed and kept.")] = False,
    prune_baseline: Annotated[bool, typer.Option("--prune-baseline", help="With --update-baseline: also remove the baseline's setups not checked now.")] = False,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Step files: micro-batch size.")] = None,
    accum: Annotated[Optional[int], typer.Option("--accum", min=1, help="Step files: gradient accumulation steps.")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="Step files: fp32, amp-fp16, amp-bf16, fp16-master, bf16-master, fp16, bf16.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Step files: checkpoint these module classes (ClassName[,ClassName] or auto).")] = None,
    knob: Annotated[Optional[list[str]], typer.Option("--knob", help="Step files: a knob, name=value (repeatable).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=0, help="Step files: trace in this many processes (0: one per core).")] = 0,
    timeout: TimeoutOpt = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write a JUnit XML file (one test case per setup).")] = None,
    model: ModelOpt = None,
    input_shape: InputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fail (exit 1) when a setup does not fit the GPU with the margin, or grew against a baseline
    (exit 2 when a setup cannot be measured; the others are still checked and reported).

    Step flags apply to every step file given. On GitHub Actions (GITHUB_ACTIONS=true) failures
    are also ::error annotations, and a table is appended to $GITHUB_STEP_SUMMARY when set.

    Example: vramplan check examples/seed004_high_res.yaml --gpu 24GB --baseline vram.json

    Example: vramplan check cfg.yaml steps/train.py --knob width=64 --gpu 24GB --junit vram.xml

    Example: vramplan check --model nets.py:make_net --input 2x1x96x96x96 --gpu 24GB
    """
    import os

    from planner import check as C
    from planner.config import check_output_path

    if junit is not None:
        check_output_path(junit, "--junit")
    flags = {"batch": batch, "accum": accum, "precision": precision, "checkpoint": checkpoint, "knob": knob, "jobs": jobs,
             "timeout": timeout}
    if model or input_shape:
        if setups:
            raise PlannerError("--model: check takes either setups (configs, step files) or --model, not both")
        as_step = _model_as_step({**flags, "model": model, "input_shape": input_shape})
        flags = {k: as_step[k] for k in flags}
        setups = [as_step["step"]]
    if not setups:
        raise PlannerError("check: give the setups to check (config .yaml or step file .py), or --model FACTORY --input SHAPE")
    kw = dict(gpu=gpu, margin=margin, baseline=baseline, tolerance=tolerance, update_baseline=update_baseline,
              prune_baseline=prune_baseline, flags=flags, jobs=jobs)
    if any(str(s).lower().endswith(".py") for s in setups) and sys.stderr.isatty():  # CI logs: no progress bar
        from planner.stepcmds import _progress

        prog, tick = _progress(err, "tracing")
        with prog:
            res = C.run(setups, progress=tick, **kw)
    else:
        res = C.run(setups, **kw)
    if junit is not None:
        junit.write_bytes(C.junit_xml(res.outcomes, res.card, margin, res.tolerance, res.baseline_path))
    notes = C.github_annotations(res.outcomes, res.card, margin) if os.environ.get("GITHUB_ACTIONS") == "true" else []
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(C.summary_markdown(res.outcomes, res.card, margin, res.tolerance, res.baseline_path))
        except OSError as exc:
            raise PlannerError(f"GITHUB_STEP_SUMMARY: {summary!r} cannot be written ({exc.strerror or exc})") from None
    if as_json:
        data = res.to_json()
        if notes:
            data["github_annotations"] = notes
        _print_json(data)
        for line in notes:  # stdout holds the JSON
            sys.stderr.write(line + "\n")
    else:
        for line in res.text_lines():
            out.print(line, markup=False)
        for line in notes:
            sys.stdout.write(line + "\n")
    for o in res.errors:  # bad input, as any: one line each on stderr (the report says the rest)
        sys.stderr.write(f"error: {one_line(o.error or '')}\n")
    if res.exit_code:
        raise typer.Exit(res.exit_code)


def _default_backend() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "fake"


@app.command()
@fail_cleanly
def gpus(as_json: JsonOpt = False) -> None:
    """List the GPU catalog that --gpu names come from (memory, bf16, peak TFLOP/s, bandwidth, source).

    Example: vramplan gpus --json
    """
    from planner.gpus import catalog_rows

    rows = catalog_rows()
    if as_json:
        _print_json(rows)
        return
    from planner.report.terminal import render_gpus

    render_gpus(rows, out)


@app.callback()
def _root() -> None:
    """VRAM budget planner and profiler for PyTorch training of 3D generative models.

    Example: vramplan estimate --voxel 256x256x64 --gpu 24GB
    """


def _command_name(info: Any) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def main() -> None:
    """Console-script entry: usage errors become one line and exit code 2.

    When the first argument names a command, only that command is built: typer turns
    every registered command's signature into click parameters before parsing, and the
    other seven cost ~10 ms of the main job's start-up (the root callback keeps the
    command group, so usage and errors read the same).
    """
    registered = app.registered_commands
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    only = [c for c in registered if _command_name(c) == wanted]
    try:
        if len(only) == 1:
            app.registered_commands = only
        rv = app(standalone_mode=False)
    except _UsageError as exc:
        msg = exc.format_message()
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vramplan` alone: the help, as click prints it
            sys.stderr.write(msg + "\n")
        else:
            sys.stderr.write(f"error: {usage_message(msg)}\n")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    finally:
        app.registered_commands = registered
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
