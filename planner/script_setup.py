"""What ``vramplan run`` traces and what comes back: torch-free (the command's side of the worker;
the tracing is ``planner/measure/script_run.py``)."""

from __future__ import annotations

import os
from dataclasses import field
from typing import Any

from planner.records import dataclass
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
    gpus: int = 1
    """Data-parallel ranks: rank 0 of them is traced, its ``init_process_group`` answered by a fake group."""
    launcher: str = "python"
    """``python`` or ``torchrun`` (then LOCAL_RANK/RANK/WORLD_SIZE are set as torchrun sets them)."""

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
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise PlannerError(f"--gpus: {self.gpus!r} is not a positive number of ranks")

    @property
    def script(self) -> str:
        return self.argv[1] if self.argv[0] == "-m" else self.argv[0]

    def command_words(self) -> list[str]:
        """The command as the user launches it: ``python ARGV`` or ``torchrun --nproc-per-node N ARGV``."""
        launch = ["torchrun", "--nproc-per-node", str(self.gpus)] if self.launcher == "torchrun" else ["python"]
        return [*launch, *self.argv]

    def label(self) -> str:
        cmd = " ".join(self.command_words())
        knobs = [f"--steps {self.steps}"] + ([f"--gpus {self.gpus}"] if self.gpus > 1 else [])
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
                 checkpoint: str | None = None, sdpa: str | None = None, batch: int | None = None,
                 gpus: int | None = None, strategy: str | None = None) -> ScriptSetup:
    """The ScriptSetup of a command line (``run``, ``recommend -- python train.py``): the command after
    ``--``, the card to emulate, the knobs applied from outside, the ranks (``--gpus`` or torchrun's
    ``--nproc-per-node`` x ``--nnodes``), each checked."""
    argv, world = parse_launch(words or [], gpus)
    if world is not None and gpus is not None and gpus != world:
        raise PlannerError(f"--gpus {gpus}: torchrun launches {world} processes (--nproc-per-node x --nnodes); "
                           f"give the same number or leave --gpus out")
    ranks = gpus or world or 1
    if strategy is not None:
        if strategy != "ddp":
            raise PlannerError(f"--strategy {strategy}: a script's own wrapping is what is traced (valid for a script: "
                               f"ddp, its DistributedDataParallel; FSDP plans come from a step file)")
        if ranks < 2:
            raise PlannerError("--strategy ddp: needs --gpus N (N >= 2) or a torchrun launch of N processes")
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
    return ScriptSetup(argv=argv, steps=steps, precision=precision, checkpoint=classes, sdpa=sdpa, batch=batch,
                       cwd=os.getcwd(), gpus=ranks, launcher="torchrun" if world is not None else "python", **kw)


# torchrun's options (torch/distributed/run.py get_args_parser), '_' spelled '-': those taking a value,
# and the flags; -m/--module and --no-python change what follows
_TORCHRUN_VALUE = frozenset((
    "--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--rdzv-backend",
    "--rdzv-endpoint", "--rdzv-id", "--rdzv-conf", "--max-restarts", "--monitor-interval", "--start-method",
    "--role", "--log-dir", "-r", "--redirects", "-t", "--tee", "--local-addr", "--logs-specs",
    "--local-ranks-filter", "--event-log-handler", "--numa-binding", "--signals-to-handle", "--duplicate-stdout-filters",
    "--duplicate-stderr-filters", "--virtual-local-rank"))
_TORCHRUN_FLAGS = frozenset(("--standalone", "--run-path", "--use-env", "--no-python"))


def parse_launch(words: list[str], gpus: int | None = None) -> tuple[tuple[str, ...], int | None]:
    """The command after ``--`` -> (argv as for ``python``, the world torchrun launches or None).
    ``torchrun [OPTS] train.py ARGS`` (or ``python -m torch.distributed.run``): its processes per node
    times its nodes are the world (``--nproc-per-node gpu``/``auto``: one per GPU, ``gpus`` of them, on
    one node); the script runs as rank 0."""
    words = list(words)
    if words and os.path.basename(words[0]).startswith("python") and words[1:3] == ["-m", "torch.distributed.run"]:
        words = ["torchrun", *words[3:]]
    if not words or os.path.basename(words[0]) != "torchrun":
        return parse_command(words), None
    opts: dict[str, str] = {}
    module = False
    i = 1
    while i < len(words) and words[i].startswith("-"):
        name, eq, value = words[i].partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")
        if name in ("-m", "--module"):
            module, i = True, i + 1
            continue
        if name in _TORCHRUN_FLAGS:
            if name == "--no-python":
                raise PlannerError("run: torchrun --no-python launches a program that is not a Python script; "
                                   "valid: torchrun [OPTIONS] train.py ARGS")
            i += 1
            continue
        if name not in _TORCHRUN_VALUE:
            raise PlannerError(f"run: torchrun option '{words[i]}' is not known (valid: --nproc-per-node N, --nnodes N, "
                               f"--standalone, the rendezvous options, -m module)")
        if not eq:
            if i + 1 >= len(words):
                raise PlannerError(f"run: torchrun {name} needs a value")
            value, i = words[i + 1], i + 1
        opts[name] = value
        i += 1
    rest = words[i:]
    if not rest:
        raise PlannerError("run: no script after torchrun's options (valid: torchrun --nproc-per-node N train.py ARGS)")
    argv = parse_command(["-m", *rest] if module else rest)
    counts = []
    if opts.get("--nproc-per-node") in ("gpu", "auto", "cuda") and gpus and opts.get("--nnodes", "1") == "1":
        opts["--nproc-per-node"] = str(gpus)  # torch/distributed/run.py determine_local_world_size: one per device
    for name, default in (("--nproc-per-node", "1"), ("--nnodes", "1")):
        text = opts.get(name, default)
        if not text.isdigit() or int(text) < 1:
            raise PlannerError(f"run: torchrun {name} {text} (valid: a positive number, or gpu/auto with vramplan's "
                               f"--gpus N on one node; an elastic range is not a fixed world)")
        counts.append(int(text))
    return argv, counts[0] * counts[1]


def parse_command(words: list[str]) -> tuple[str, ...]:
    """``python train.py ARGS`` / ``python -m pkg.mod ARGS`` (``python`` may be left out) -> argv."""
    words = list(words)
    if words and os.path.basename(words[0]).startswith("python") and not words[0].endswith(".py"):
        words = words[1:]
    if not words:
        raise PlannerError("run: no script after -- (valid: vramplan run [OPTIONS] -- python train.py ARGS)")
    first = words[0]
    if first in ("accelerate", "deepspeed", "torchrun") or os.path.basename(first) in ("torchrun",):
        raise PlannerError(f"run: '{first}' launches are not traced (valid: -- python train.py ARGS or "
                           f"-- torchrun --nproc-per-node N train.py ARGS)")
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
                         warm=TRACING + ("planner.measure.recording", "planner.measure.script_run"))
