"""One vocabulary for the setup flags of every command, and one rule for what a step can take.

Every command that plans a step takes the same flags, parsed here once into ``SetupFlags``:

- the step: ``--step FILE`` (a step file), or none (the built-in MONAI step, ``ldm-stage1`` or
  ``ldm-stage2``, answered by its torch-free analytic engine);
- the step's own knobs: ``--knob NAME=VALUE``; ``--kind``, ``--voxel``, ``--channels``,
  ``--attention``, ``--perceptual/--no-perceptual``, ``--disc-layers``, ``--disc-channels`` and
  ``--no-discriminator`` are aliases that set the knob of that name (the built-in step has
  them all; a step file whose ``networks()``/``batch()`` take ``voxel`` takes ``--voxel`` too);
- vramplan's knobs: ``--batch``, ``--accum``, ``--precision`` (alias ``--amp/--no-amp``),
  ``--checkpoint`` (alias ``--checkpointing/--no-checkpointing``), ``--sdpa`` (alias
  ``--flash-attention/--no-flash-attention``), ``--optimizer``, ``--alloc-conf``, ``--gpus``,
  ``--strategy``.

A knob or a value that a step cannot take is refused by one rule (``refuse``), naming the
flag, the step and what it takes. Torch-free: the analytic path imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlannerError, quote

# knob name -> the alias flag that sets it
KNOB_ALIASES: dict[str, str] = {
    "kind": "--kind", "voxel": "--voxel", "channels": "--channels", "attention": "--attention",
    "perceptual": "--perceptual", "disc_layers": "--disc-layers", "disc_channels": "--disc-channels",
    "discriminator": "--no-discriminator",
}
BUILTIN_STEP = "the built-in step"
BUILTIN_KNOBS = tuple(KNOB_ALIASES)
# vramplan's knobs whose values the built-in step's engine (planner/spec.py) can express:
# AMP fp16/bf16 or fp32 (device.mixed_precision, device.amp_dtype); MONAI's use_checkpoint on
# the autoencoder (auto) or none; attention through SDPA with CUDA's choice (auto) or explicit
# scores (none). The other precisions, class lists and forced backends need a step file
# (examples/steps/ldm_stage1.py is the same step, to the byte).
BUILTIN_VALUES: dict[str, tuple[str, ...]] = {
    "precision": ("fp32", "amp-fp16", "amp-bf16"),
    "checkpoint": ("auto", "none"),
    "sdpa": ("auto", "none"),
}
ENGINES = ("analytic", "trace")


def refuse(flag: str, step: str, what: str, valid: Any) -> PlannerError:
    """The one rule's message: ``--voxel: the step 'x.py' has no knob 'voxel' (valid: width)``."""
    shown = ", ".join(valid) if isinstance(valid, (tuple, list)) else str(valid)
    return PlannerError(f"{flag}: {step} {what} (valid: {shown or 'none'})")


def step_name(path: str | None) -> str:
    if path is None:
        return BUILTIN_STEP
    from planner.stepfiles import MODEL_STEP  # --model's plain MSE step (planner/stepfiles/model_step.py)

    return "the --model step" if path == MODEL_STEP else f"the step {quote(path)}"


def split_knob(text: str) -> tuple[str, str]:
    """``width=64`` -> ('width', '64'); the name checked, the value as typed."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name.isidentifier():
        raise PlannerError(f"--knob: {quote(text)} must look like name=value, e.g. --knob width=64")
    return name, raw.strip()


@dataclass(frozen=True)
class SetupFlags:
    """The setup flags of one command line, in one vocabulary (aliases resolved)."""

    step: str | None = None
    config: Path | None = None
    knobs: tuple[tuple[str, str, str], ...] = ()
    """(name, value as typed, the flag that gave it)."""
    batch: int | None = None
    accum: int | None = None
    precision: str | None = None
    checkpoint: str | None = None
    sdpa: str | None = None
    optimizer: str | None = None
    alloc_conf: str | None = None
    gpus: int | None = None
    strategy: str | None = None
    flag_of: tuple[tuple[str, str], ...] = ()
    """vramplan knob -> the flag that set it (--amp for precision, ...), for messages."""

    # ---- parsing ------------------------------------------------------------------------
    @classmethod
    def from_params(cls, p: dict[str, Any]) -> "SetupFlags":
        """The flags of a command's parameters (absent keys: not given)."""
        def val(key: str) -> Any:
            v = p.get(key)
            return getattr(v, "value", v)  # typer Enums

        knobs: list[tuple[str, str, str]] = []
        for text in p.get("knob") or []:
            name, raw = split_knob(text)
            knobs.append((name, raw, "--knob"))
        for key, flag in KNOB_ALIASES.items():
            v = val({"discriminator": "no_discriminator"}.get(key, key))
            if key == "discriminator":
                v = False if v else None
            if v is None:
                continue
            raw = ("true" if v else "false") if isinstance(v, bool) else str(v)
            knobs.append((key, raw, ("--no-" + flag[2:] if v is False and key == "perceptual" else flag)))
        seen: dict[str, str] = {}
        for name, _, flag in knobs:
            if name in seen:
                raise PlannerError(f"{flag}: knob '{name}' given twice ({seen[name]} and {flag}); give it once")
            seen[name] = flag
        flag_of: dict[str, str] = {}

        def one(canon: str, key: str, alias: str, from_alias: Any) -> str | None:
            """--precision and its alias --amp/--no-amp (etc.): one of them, or both agreeing."""
            given, a = val(key), val(alias)
            if a is None:
                if given is not None:
                    flag_of[key] = f"--{canon}"
                return given
            flag = f"--{alias.replace('_', '-')}" if a else f"--no-{alias.replace('_', '-')}"
            if given is not None and given != from_alias(a):
                raise PlannerError(f"{flag}: conflicts with --{canon} {given}; give one")
            flag_of[key] = flag
            return from_alias(a)

        precision = one("precision", "precision", "amp", lambda a: "amp-fp16" if a else "fp32")
        checkpoint = one("checkpoint", "checkpoint", "checkpointing", lambda a: "auto" if a else "none")
        sdpa = one("sdpa", "sdpa", "flash_attention", lambda a: "auto" if a else "none")
        step = p.get("step")
        return cls(step=None if step is None else str(step), config=p.get("config"), knobs=tuple(knobs),
                   batch=p.get("batch"), accum=p.get("accum"), precision=precision, checkpoint=checkpoint,
                   sdpa=sdpa, optimizer=val("optimizer"), alloc_conf=p.get("alloc_conf"), gpus=p.get("gpus"),
                   strategy=val("strategy"), flag_of=tuple(flag_of.items()))

    def flag(self, knob: str) -> str:
        return dict(self.flag_of).get(knob, f"--{knob}")

    def _check_value(self, knob: str, value: str | None, step: str, valid: tuple[str, ...]) -> None:
        if value is not None and value not in valid:
            raise refuse(self.flag(knob) if self.flag(knob) != f"--{knob}" else f"--{knob} {value}", step,
                         f"cannot take {knob} {quote(value)}", valid)

    def _checkpoint_tuple(self) -> tuple[str, ...]:
        raw = self.checkpoint
        if raw is None or raw == "none":
            return ()
        names = tuple(c.strip() for c in raw.split(",") if c.strip())
        if not names:
            raise PlannerError(f"--checkpoint: {quote(raw)} names no class (valid: auto, none or ClassName[,ClassName])")
        if ("auto" in names or "none" in names) and len(names) > 1:
            raise PlannerError("--checkpoint: 'auto' and 'none' stand alone (valid: auto, none or ClassName[,ClassName])")
        return names

    # ---- the built-in step ----------------------------------------------------------------
    def builtin_setup(self) -> Any:
        """The built-in step's setup (planner/spec.py ``TrainingSetup``): default <- the
        environment's allocator settings <- --config YAML <- these flags."""
        from planner.config import resolve_setup

        return resolve_setup(self.config, self.builtin_overrides())

    def builtin_overrides(self) -> Any:
        """These flags as the built-in step's overrides (planner/config.py ``Overrides``)."""
        from planner.config import Overrides, parse_bool

        kw: dict[str, Any] = {}
        for name, raw, flag in self.knobs:
            shown = flag if flag != "--knob" else f"--knob {name}"
            if name not in BUILTIN_KNOBS:
                raise refuse(shown, BUILTIN_STEP, f"has no knob '{name}'", BUILTIN_KNOBS)
            if name == "voxel":
                kw["voxel"] = raw.replace(",", "x")
            elif name in ("perceptual", "discriminator"):
                on = parse_bool(raw, shown)
                if name == "perceptual":
                    kw["perceptual"] = on
                else:
                    kw["no_discriminator"] = not on
            elif name in ("disc_layers", "disc_channels"):
                try:
                    kw[name] = int(raw)
                except ValueError:
                    raise PlannerError(f"{shown}: expected an integer, got {quote(raw)}") from None
            else:  # kind, channels, attention: as typed
                kw[name] = raw
        for knob, valid in BUILTIN_VALUES.items():
            self._check_value(knob, getattr(self, knob), BUILTIN_STEP, valid)
        if self.precision is not None:
            kw["amp"] = self.precision != "fp32"
            if self.precision != "fp32":
                kw["amp_dtype"] = "bfloat16" if self.precision == "amp-bf16" else "float16"
        if self.checkpoint is not None:
            kw["checkpointing"] = self.checkpoint == "auto"
        if self.sdpa is not None:
            kw["flash_attention"] = self.sdpa == "auto"
        return Overrides(batch=self.batch, accum=self.accum, optimizer=self.optimizer, alloc_conf=self.alloc_conf,
                         gpus=self.gpus, strategy=self.strategy, **kw)

    # ---- a step file ------------------------------------------------------------------------
    def knob_values(self) -> dict[str, Any]:
        """The step file's knob values: --knob's as parsed by ``planner.steps.parse_value``; an
        alias's as the built-in step writes it (256x256x64, F,F,T) made the step file's tuple."""
        from planner.config import parse_bool_list, parse_shape
        from planner.steps import parse_value

        out: dict[str, Any] = {}
        for name, raw, flag in self.knobs:
            if flag == "--knob":
                out[name] = parse_value(raw)
            elif name == "voxel":
                out[name] = parse_shape(raw.replace(",", "x"), flag)
            elif name == "attention":
                out[name] = parse_bool_list(raw, flag)
            else:
                out[name] = parse_value(raw)
        return out

    def alias_flags(self) -> dict[str, str]:
        """knob name -> alias flag, for the knobs an alias set (the step-file loader's messages)."""
        return {name: flag for name, _, flag in self.knobs if flag != "--knob"}

    def step_setup(self, sweeping_parallel: bool = False) -> Any:
        """The step file's setup (planner/steps.py ``StepSetup``)."""
        from planner.config import environment_alloc_conf
        from planner.steps import PRECISIONS, SDPA_BACKENDS, StepSetup

        assert self.step is not None
        step = step_name(self.step)
        if self.config is not None:
            raise refuse("--config", step, "is its own setup (a --config YAML sets the built-in step)",
                         ["--knob NAME=VALUE and the setup flags"])
        self._check_value("sdpa", self.sdpa, step, SDPA_BACKENDS)
        self._check_value("precision", self.precision, step, PRECISIONS)
        gpus, strategy = (1, "none") if sweeping_parallel else (self.gpus, self.strategy)
        return StepSetup(
            path=self.step, knobs=tuple(self.knob_values().items()), batch_size=self.batch,
            accumulation=self.accum or 1, precision=self.precision or "fp32", checkpoint=self._checkpoint_tuple(),
            sdpa=self.sdpa or "auto", optimizer=self.optimizer,
            alloc_conf=self.alloc_conf or environment_alloc_conf(),
            gpus=1 if gpus is None else gpus, strategy=strategy or "none",
        )

    def as_args(self) -> list[str]:
        """These flags in the one vocabulary, as a command line takes them (the knobs as
        --knob NAME=VALUE)."""
        args: list[str] = []
        if self.step is not None:
            args += ["--step", self.step]
        if self.config is not None:
            args += ["--config", str(self.config)]
        for name, raw, flag in self.knobs:  # as given: --knob name=value, or the alias
            if flag == "--knob":
                args += ["--knob", f"{name}={raw}"]
            else:
                args += [flag] if name in ("perceptual", "discriminator") else [flag, raw]
        aliases = dict(self.flag_of)
        for knob in ("batch", "accum", "precision", "checkpoint", "sdpa", "optimizer", "alloc_conf", "gpus", "strategy"):
            value = getattr(self, knob)
            if value is not None:  # an alias --amp/--no-checkpointing/... is a flag alone
                alias = aliases.get(knob, f"--{knob}")
                args += [alias] if alias != f"--{knob}" else [alias.replace("_", "-"), str(value)]
        return args
