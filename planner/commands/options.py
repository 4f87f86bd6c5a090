"""The options every command shares, and the choices they take (one vocabulary: planner/setup_flags.py)."""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from planner.gpu_rule import GPU_HELP  # noqa: F401  (the commands quote it in --gpu help)


class Backend(str, Enum):
    fake = "fake"
    cpu = "cpu"
    cuda = "cuda"


class Engine(str, Enum):
    analytic = "analytic"
    trace = "trace"


ENGINE_TEXT = {
    "analytic": "analytic (the built-in step's torch-free transcription, exact against its trace)",
    "trace": "trace (the step run under FakeTensorMode on the CPU, CUDA emulated)",
}


class Kind(str, Enum):
    stage1 = "ldm-stage1"
    stage2 = "ldm-stage2"


class Optim(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Prefer(str, Enum):
    risk = "risk"
    speed = "speed"
    quality = "quality"


class Fmt(str, Enum):
    markdown = "markdown"
    csv = "csv"
    html = "html"
    latex = "latex"
    json = "json"


class PlotKind(str, Enum):
    breakdown = "breakdown"
    scaling = "scaling"
    timeline = "timeline"


# --- the options every setup-taking command shares -----------------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML training setup (seed-004 layout).")]


KindOpt = Annotated[Optional[Kind], typer.Option("--kind", help="Which reference step.")]


VoxelOpt = Annotated[Optional[str], typer.Option("--voxel", help="Volume size HxWxD, e.g. 256x256x64 (the knob voxel: --knob voxel=256x256x64).")]


BatchOpt = Annotated[Optional[int], typer.Option("--batch", min=1, help="Micro-batch size.")]


ChannelsOpt = Annotated[Optional[str], typer.Option("--channels", help="Channels per level, e.g. 32,64,64 (the knob channels).")]


AttentionOpt = Annotated[Optional[str], typer.Option("--attention", help="Attention per level, e.g. F,F,T (the knob attention).")]


AmpOpt = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Alias of --precision amp-fp16 / --precision fp32.")]


CkptOpt = Annotated[Optional[bool], typer.Option("--checkpointing/--no-checkpointing", help="Alias of --checkpoint auto / --checkpoint none.")]


FlashOpt = Annotated[Optional[bool], typer.Option("--flash-attention/--no-flash-attention", help="Alias of --sdpa auto / --sdpa none (explicit attention scores; the built-in step only).")]


PercOpt = Annotated[Optional[bool], typer.Option("--perceptual/--no-perceptual", help="2.5D LPIPS perceptual loss (the knob perceptual).")]


DiscLayersOpt = Annotated[Optional[int], typer.Option("--disc-layers", min=1, help="PatchDiscriminator layers (the knob disc_layers).")]


DiscChOpt = Annotated[Optional[int], typer.Option("--disc-channels", min=1, help="PatchDiscriminator first-layer channels (the knob disc_channels).")]


NoDiscOpt = Annotated[bool, typer.Option("--no-discriminator", help="Train without the adversarial discriminator (--knob discriminator=false).")]


AccumOpt = Annotated[Optional[int], typer.Option("--accum", min=1, help="Gradient accumulation steps.")]


OptimOpt = Annotated[Optional[Optim], typer.Option("--optimizer", help="Optimizer for every network.")]


AllocConfOpt = Annotated[Optional[str], typer.Option(
    "--alloc-conf", help="CUDA caching-allocator settings, PYTORCH_CUDA_ALLOC_CONF syntax (e.g. expandable_segments:True); "
    "default: that environment variable if set, else torch's defaults.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


EngineOpt = Annotated[Optional[Engine], typer.Option(
    "--engine", help="Who answers: analytic (the built-in step's torch-free transcription, exact against its trace; "
    "its default) or trace (the step run under FakeTensorMode, CUDA emulated; the only engine of a step file).")]


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Your own nn.Module: package.module:factory or path/to/file.py:factory, in a plain MSE step "
    "with Adam (AMP fp16 unless --precision says otherwise); takes every step-file flag.")]


InputOpt = Annotated[Optional[str], typer.Option("--input", help="Batch shape for --model, e.g. 2x1x96x96x64 (batch first).")]


StepOpt = Annotated[Optional[str], typer.Option(
    "--step", help="Your own training step: a step file (path/to/step.py or package.module), "
    "see examples/steps/template.py. Takes --knob, --batch, --accum, --precision, --checkpoint, --sdpa, --optimizer.")]


KnobOpt = Annotated[Optional[list[str]], typer.Option("--knob", help="A knob of the step, name=value (repeatable), e.g. --knob width=64; the built-in step's are kind, voxel, channels, attention, perceptual, disc_layers, disc_channels, discriminator.")]


PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="fp32, amp-fp16 (autocast + GradScaler), amp-bf16, fp16-master / bf16-master "
    "(half networks, fp32 master weights), fp16 / bf16 (plain .half()); the built-in step takes the first three.")]


CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", help="none, auto (step files: the repeated block holding the most parameters; the built-in "
    "step: MONAI's use_checkpoint) or ClassName[,ClassName] (step files: wrapped in torch's non-reentrant checkpoint).")]


SdpaOpt = Annotated[Optional[str], typer.Option("--sdpa", help="auto (CUDA's choice), or the only SDPA backend enabled: flash, efficient, math (step files); none: explicit attention scores (the built-in step).")]


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


# Every setup flag, in the one vocabulary (planner/setup_flags.py), with its option: what a
# command decorated with ``takes_setup`` gets, parsed once into ``flags: SetupFlags``.
SETUP_OPTIONS: dict[str, tuple[Any, Any]] = {
    "step": (StepOpt, None), "model": (ModelOpt, None), "input_shape": (InputOpt, None), "config": (ConfigOpt, None),
    "knob": (KnobOpt, None), "kind": (KindOpt, None), "voxel": (VoxelOpt, None), "channels": (ChannelsOpt, None),
    "attention": (AttentionOpt, None), "perceptual": (PercOpt, None), "disc_layers": (DiscLayersOpt, None),
    "disc_channels": (DiscChOpt, None), "no_discriminator": (NoDiscOpt, False), "batch": (BatchOpt, None),
    "accum": (AccumOpt, None), "precision": (PrecisionOpt, None), "amp": (AmpOpt, None),
    "checkpoint": (CheckpointOpt, None), "checkpointing": (CkptOpt, None), "sdpa": (SdpaOpt, None),
    "flash_attention": (FlashOpt, None), "optimizer": (OptimOpt, None), "alloc_conf": (AllocConfOpt, None),
    "gpus": (GpusOpt, None), "strategy": (StrategyOpt, None), "timeout": (TimeoutOpt, None),
}


STEP_FILE_FLAGS = ("search", "max_knob", "knob_step", "knob_min", "jobs")
"""Command flags only a step file's search takes (recommend, table, ...)."""


def takes_setup(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command every setup option (the same flags on every command); it receives them
    parsed once, as the keyword argument ``flags`` (``planner.setup_flags.SetupFlags``)."""
    from planner.setup_flags import SetupFlags

    sig = inspect.signature(fn, eval_str=True)  # typer reads the signature as given: no string annotations
    own = [p for p in sig.parameters.values() if p.name != "flags"]
    assert not set(SETUP_OPTIONS) & {p.name for p in own}, fn.__name__
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in SETUP_OPTIONS.items()]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        given = {name: kw.pop(name, default) for name, (_, default) in SETUP_OPTIONS.items()}
        # a built-in step named as its step file (--step ldm-stage1) goes to the engine that answers
        # it: the tracer where the command's own flags are a step file's (--search, --max-knob, --jobs)
        engine = kw.get("engine") or ("trace" if any(kw.get(k) for k in STEP_FILE_FLAGS) else None)
        return fn(*args, flags=SetupFlags.from_params(given).for_engine(engine), **kw)

    wrapper.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    return wrapper
