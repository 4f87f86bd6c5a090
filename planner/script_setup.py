"""What ``vramplan run`` traces and what comes back: torch-free (the command's side of the worker;
the tracing is ``planner/measure/script_run.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from planner.errors import PlannerError

PRECISIONS = ("fp32", "amp-fp16", "amp-bf16")


@dataclass(frozen=True)
class ScriptSetup:
    """What ``vramplan run`` traces: the command after ``--`` and the knobs applied from outside."""

    argv: tuple[str, ...]
    """``("train.py", args...)`` or ``("-m", "package.module", args...)``: what follows ``python``."""
    steps: int = 2
    """Optimizer steps to run before the script is stopped."""
    precision: str | None = None
    """None: the script's own; else one of PRECISIONS."""
    checkpoint: tuple[str, ...] = ()
    """Module classes wrapped in torch's non-reentrant checkpoint wrapper."""
    sdpa: str = "auto"
    batch: int | None = None
    """batch_size of the training DataLoaders; None: the script's own."""
    gpu_name: str = "NVIDIA A100 SXM4 80GB"
    gpu_total: int = 85094039552
    gpu_capability: tuple[int, int] = (8, 0)
    cwd: str = ""

    def __post_init__(self) -> None:
        if not self.argv or (self.argv[0] == "-m" and len(self.argv) < 2):
            raise PlannerError("run: no script given (valid: vramplan run [OPTIONS] -- python train.py ARGS "
                               "or -- python -m package.module ARGS)")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise PlannerError(f"--steps: {self.steps!r} is not a positive number of optimizer steps")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise PlannerError(f"--precision: {self.precision!r} cannot be applied to a script from outside "
                               f"(valid: {', '.join(PRECISIONS)}; half networks with master weights change the "
                               f"script's own optimizer: write a step file for them)")
        if self.batch is not None and (isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1):
            raise PlannerError(f"--batch: {self.batch!r} is not a positive batch size")

    @property
    def script(self) -> str:
        return self.argv[1] if self.argv[0] == "-m" else self.argv[0]

    def label(self) -> str:
        cmd = "python " + " ".join(self.argv)
        knobs = [f"--steps {self.steps}"]
        if self.precision:
            knobs.append(f"--precision {self.precision}")
        if self.checkpoint:
            knobs.append(f"--checkpoint {','.join(self.checkpoint)}")
        if self.sdpa != "auto":
            knobs.append(f"--sdpa {self.sdpa}")
        if self.batch is not None:
            knobs.append(f"--batch {self.batch}")
        return f"{cmd} ({', '.join(knobs)})"


def script_setup(words: list[str] | None, *, steps: int = 2, card: Any = None, precision: str | None = None,
                 checkpoint: str | None = None, sdpa: str | None = None, batch: int | None = None) -> ScriptSetup:
    """The ScriptSetup of a command line (``run``, ``recommend -- python train.py``): the command after
    ``--``, the card to emulate, the knobs applied from outside, each checked."""
    classes: tuple[str, ...] = ()
    if checkpoint is not None:
        classes = tuple(c.strip() for c in checkpoint.split(",") if c.strip())
        if not classes or "auto" in classes or "none" in classes:
            raise PlannerError(f"--checkpoint: {checkpoint!r} (valid for a script: ClassName[,ClassName], the module "
                               f"classes to wrap)")
    sdpa = sdpa or "auto"
    if sdpa not in ("auto", "flash", "efficient", "math"):
        raise PlannerError(f"--sdpa: {sdpa!r} (valid: flash, efficient, math, auto)")
    kw: dict[str, Any] = {}
    if card is not None:
        cc = card.compute_capability or "8.0"
        kw = {"gpu_name": card.name, "gpu_total": card.capacity_bytes,
              "gpu_capability": tuple(int(x) for x in cc.split(".")[:2])}
    return ScriptSetup(argv=parse_command(words or []), steps=steps, precision=precision, checkpoint=classes,
                       sdpa=sdpa, batch=batch, cwd=os.getcwd(), **kw)


def parse_command(words: list[str]) -> tuple[str, ...]:
    """``python train.py ARGS`` / ``python -m pkg.mod ARGS`` (``python`` may be left out) -> argv."""
    words = list(words)
    if words and os.path.basename(words[0]).startswith("python") and not words[0].endswith(".py"):
        words = words[1:]
    if not words:
        raise PlannerError("run: no script after -- (valid: vramplan run [OPTIONS] -- python train.py ARGS)")
    first = words[0]
    if first in ("torchrun", "accelerate", "deepspeed") or os.path.basename(first) in ("torchrun",):
        raise PlannerError(f"run: '{first}' launches are not traced (valid: -- python train.py ARGS, one process; "
                           f"per-rank figures of DDP/FSDP come from a step file with --gpus N --strategy)")
    if first == "-m":
        if len(words) < 2 or words[1].startswith("-"):
            raise PlannerError("run: -m needs a module name (valid: -- python -m package.module ARGS)")
        return tuple(words)
    if first.startswith("-"):
        raise PlannerError(f"run: python option '{first}' is not supported (valid: -- python train.py ARGS or "
                           f"-- python -m package.module ARGS)")
    if not os.path.isfile(first):
        raise PlannerError(f"run: no such script '{first}' (valid: a .py file, or -m package.module)")
    return tuple(words)


# --- results -----------------------------------------------------------------------------------


@dataclass
class Segment:
    """A part of the run: ``step k`` (training) or an evaluation pass; its own peak."""

    label: str
    peak_bytes: int = 0
    where: str = ""

    def to_json(self) -> dict:
        return {"label": self.label, "peak_allocated_bytes": self.peak_bytes, "where": self.where}


@dataclass
class ScriptRun:
    record: Any  # step.StepRecord, the peak over the whole run
    segments: list[Segment]
    notes: list[str]
    steps: int
    networks: dict[str, str] = field(default_factory=dict)  # name -> where the script first called it
    facts: dict[str, Any] = field(default_factory=dict)
    """What ``recommend`` reads off the run (planner/measure/script_run.py ``_facts``): the int argparse
    options, the DataLoaders (site, batch_size, training), the autocast and GradScaler sites, the
    repeated blocks, the effective precision, SDPA calls, FLOPs and bytes written per part of the run."""


def _trace(setup: ScriptSetup) -> ScriptRun:
    from planner.measure.script_run import trace

    return trace(setup)


def trace_in_worker(setup: ScriptSetup) -> ScriptRun:
    """The script traced in the isolated worker (``planner/measure/isolate.py``: the timeout, the
    script's exits, its stdout on stderr); torch is imported there, not here."""
    from planner.measure.isolate import TRACING, shared

    return shared().call(_trace, setup, lambda s: f"running {s.script}",
                         warm=TRACING + ("planner.measure.builtin_trace", "planner.measure.script_run"))
