"""A user's own training step (a *step file*) as a setup: what to trace and with which knobs. Torch-free.

A step file is a short Python file (see ``examples/steps/template.py``) defining
``networks(**knobs)``, ``optimizers(nets)``, ``batch(batch_size, **knobs)`` and
``step(nets, opts, batch, vp)``. The keyword arguments of ``networks`` and ``batch``
are the file's own knobs (widths, depths, voxel resolution, sequence length);
:class:`StepSetup` holds their values beside vramplan's knobs, which are applied
around the user's code without editing it (``planner/measure/stepfile.py``).

This module is imported by the CLI before anything is traced, so it stays free of
torch: it validates flags and makes the cache key.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from planner.records import dataclass
from planner.errors import PlannerError, quote

PRECISIONS = ("fp32", "amp-fp16", "amp-bf16", "fp16-master", "bf16-master", "fp16", "bf16")
"""fp32; CUDA autocast fp16 with a GradScaler per optimizer; autocast bf16 (no scaler);
half-precision networks with fp32 master weights (guided-diffusion ``use_fp16``, apex O2)
in fp16 (static loss scale) or bf16; plain ``.half()`` / ``.to(torch.bfloat16)`` networks
with half optimizer state."""
PRECISION_HELP = {
    "fp32": "fp32",
    "amp-fp16": "autocast fp16 + GradScaler",
    "amp-bf16": "autocast bf16",
    "fp16-master": "fp16 networks, fp32 master weights, loss scaling",
    "bf16-master": "bf16 networks, fp32 master weights",
    "fp16": "fp16 networks and optimizer state (.half())",
    "bf16": "bf16 networks and optimizer state",
}
SDPA_BACKENDS = ("auto", "flash", "efficient", "math")
STRATEGIES = ("none", "ddp", "fsdp", "fsdp-grad-op")
"""Data parallelism over --gpus N (planner/measure/distributed.py): none (one GPU); DDP;
FSDP2 fully_shard with reshard_after_forward=True (ZeRO-3) or False (~ZeRO-2)."""
STRATEGY_HELP = {
    "ddp": "DDP",
    "fsdp": "FSDP (ZeRO-3)",
    "fsdp-grad-op": "FSDP no reshard after forward (~ZeRO-2)",
}
MAX_GPUS = 4096
OPTIMIZERS = ("adam", "adamw", "sgd")
MAX_BATCH = 2**20
MAX_ACCUM = 4096


def parse_knob(text: str) -> tuple[str, Any]:
    """``width=64`` -> ('width', 64); ``mult=1,2,4`` -> ('mult', (1, 2, 4)); values: int, float,
    true/false, comma lists of those, else a string. Checked against the factory's
    defaults when the file is loaded."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name.isidentifier():
        raise PlannerError(f"--knob: {quote(text)} must look like name=value, e.g. --knob width=64")
    return name, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    if "," in raw:
        return tuple(parse_value(p.strip()) for p in raw.split(",") if p.strip())
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _file_digest(path: str) -> str:
    p = Path(path)
    if p.is_file():
        import hashlib  # here, not at the top: the estimate CLI imports this module (start-up)

        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return ""


@dataclass(frozen=True)
class StepSetup:
    """One traced configuration of a step file."""

    path: str
    """The step file: path/to/step.py or an importable package.module."""
    knobs: tuple[tuple[str, Any], ...] = ()
    """Values for the file's own knobs (keyword arguments of networks/batch), sorted by name."""
    batch_size: int | None = None
    """Micro-batch size passed to ``batch()``; None: that function's default."""
    accumulation: int = 1
    """Micro-batches per optimizer step (the effective batch is batch_size x accumulation)."""
    precision: str = "fp32"
    """One of PRECISIONS."""
    checkpoint: tuple[str, ...] = ()
    """Module class names to wrap in torch's non-reentrant checkpoint wrapper; ('auto',):
    the repeated block class holding the most parameters."""
    sdpa: str = "auto"
    """SDPA backend: auto (CUDA's own choice) or the only one enabled (sdpa_kernel)."""
    optimizer: str | None = None
    """Replace every optimizer's class (keeping its options that apply), or None: the file's own."""
    alloc_conf: str = ""
    """CUDA caching-allocator settings (PYTORCH_CUDA_ALLOC_CONF syntax) for the reserved figure."""
    gpus: int = 1
    """Data-parallel ranks; every figure is per rank (one rank traced: ranks are symmetric)."""
    strategy: str = "none"
    """One of STRATEGIES; anything but none needs gpus > 1, and gpus > 1 needs one."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise PlannerError("--step: give a step file, e.g. --step examples/steps/rgbd_policy.py")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or not 1 <= self.batch_size <= MAX_BATCH):
            raise PlannerError(f"--batch: must be an integer in 1..{MAX_BATCH:,}, got {quote(self.batch_size)}")
        if isinstance(self.accumulation, bool) or not isinstance(self.accumulation, int) or not 1 <= self.accumulation <= MAX_ACCUM:
            raise PlannerError(f"--accum: must be an integer in 1..{MAX_ACCUM}, got {quote(self.accumulation)}")
        if self.precision not in PRECISIONS:
            raise PlannerError(f"--precision: got {quote(self.precision)}, valid: {', '.join(PRECISIONS)}")
        if self.sdpa not in SDPA_BACKENDS:
            raise PlannerError(f"--sdpa: got {quote(self.sdpa)}, valid: {', '.join(SDPA_BACKENDS)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise PlannerError(f"--optimizer: got {quote(self.optimizer)}, valid: {', '.join(OPTIMIZERS)}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or not 1 <= self.gpus <= MAX_GPUS:
            raise PlannerError(f"--gpus: must be an integer in 1..{MAX_GPUS}, got {quote(self.gpus)}")
        if self.strategy not in STRATEGIES:
            raise PlannerError(f"--strategy: got {quote(self.strategy)}, valid: {', '.join(STRATEGIES[1:])}")
        if self.gpus > 1 and self.strategy == "none":
            raise PlannerError(f"--gpus {self.gpus}: give --strategy {'|'.join(STRATEGIES[1:])} (how the ranks share the model)")
        if self.gpus == 1 and self.strategy != "none":
            raise PlannerError(f"--strategy {self.strategy}: needs --gpus 2 or more (one GPU has nothing to share)")
        for name in self.checkpoint:
            if name.startswith("auto:") and name[5:].isdigit() and len(self.checkpoint) == 1:
                continue  # auto for a budget of that many bytes of device total (planner/measure/ckpt_plan.py)
            bare = name.removeprefix("sac:")  # selective checkpointing (planner/measure/ckpt_plan.py)
            if not bare.isidentifier() and not all(part.isidentifier() or part.isdigit() for part in bare.split(".")):
                raise PlannerError(f"--checkpoint: {quote(name)} is neither a class name nor a module path "
                                   f"(valid: auto, ClassName[,ClassName], network.module.path, each optionally "
                                   f"sac:NAME for selective checkpointing)")
        object.__setattr__(self, "knobs", tuple(sorted(self.knobs)))

    @property
    def knob_dict(self) -> dict[str, Any]:
        return dict(self.knobs)

    def with_knobs(self, **values: Any) -> "StepSetup":
        merged = {**self.knob_dict, **values}
        return replace(self, knobs=tuple(sorted(merged.items())))

    def label(self) -> str:
        """One line: the setup this figure describes."""
        parts = [Path(self.path).name if self.path.endswith(".py") else self.path]
        parts += [f"{k}={show_value(v)}" for k, v in self.knobs]
        parts.append(f"batch {self.batch_size if self.batch_size is not None else 'default'}"
                     + (f" x accum {self.accumulation}" if self.accumulation > 1 else ""))
        parts.append(PRECISION_HELP[self.precision])
        if self.checkpoint:
            parts.append("checkpoint " + ",".join(self.checkpoint))
        if self.sdpa != "auto":
            parts.append(f"sdpa {self.sdpa}")
        if self.optimizer:
            parts.append(f"optimizer {self.optimizer}")
        if self.alloc_conf:
            parts.append(f"alloc_conf {self.alloc_conf}")
        if self.gpus > 1:
            parts.append(f"{self.gpus} GPUs {STRATEGY_HELP[self.strategy]}, per rank")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"step_file": self.path, "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.knobs},
                "batch_size": self.batch_size, "accumulation": self.accumulation, "precision": self.precision,
                "checkpoint": list(self.checkpoint), "sdpa": self.sdpa, "optimizer": self.optimizer,
                "alloc_conf": self.alloc_conf, "gpus": self.gpus, "strategy": self.strategy}

    def cache_key(self, versions: str = "") -> str:
        """The trace cache's key: the step file's content and every knob (the allocator
        settings are not part of the trace, they act on its replay)."""
        data = self.to_json()
        data.pop("alloc_conf")
        data["file_sha256"] = _file_digest(self.path)
        # a knob naming a file (--model's path/to/nets.py:factory) keys the trace by that file's content too
        data["knob_files"] = {k: _file_digest(v.split(":")[0]) for k, v in self.knobs
                              if isinstance(v, str) and v.split(":")[0].endswith(".py")}
        data["versions"] = versions
        import hashlib
        import json

        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def show_value(v: Any, empty: str = "") -> str:
    """A knob's value as the command line takes it (a tuple comma-separated; ``empty`` for ())."""
    return (",".join(str(x) for x in v) or empty) if isinstance(v, tuple) else str(v)
