"""One vocabulary for the setup flags of every command, and one rule for what a step can take.

Every command that plans a step takes the same flags, parsed here once into ``SetupFlags``:

- the step: ``--step FILE`` (a step file), or none (the built-in MONAI step, ``ldm-stage1`` or
  ``ldm-stage2``, answered by its torch-free analytic engine); ``--step ldm-stage1`` names the
  built-in step as the step file it ships as (planner/stepfiles): its analytic engine answers
  what it can express, the tracer the rest (``SetupFlags.for_engine``);
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

from dataclasses import replace
from pathlib import Path
from typing import Any

from planner.records import dataclass
from planner.errors import PlannerError, quote
from planner.step_setup import PRECISIONS, SDPA_BACKENDS, StepSetup, parse_value

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
    from planner.stepfiles import MODEL_STEP, packaged_kind  # --model's plain MSE step (planner/stepfiles/model_step.py)

    if path == MODEL_STEP:
        return "the --model step"
    kind = packaged_kind(path)
    return f"the step {quote(kind)} (its step file)" if kind else f"the step {quote(path)}"


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
    model: str | None = None
    """--model FACTORY (with --input): a plain MSE step on the user's module (``as_model_step``)."""
    input_shape: str | None = None
    timeout: float | None = None
    """Seconds each call into the user's code may take (planner/measure/isolate.py)."""
    given: tuple[tuple[str, Any], ...] = ()
    """The setup flags given on the command line (parameter name, value), for the rules that
    refuse a flag a command or a step does not take."""
    as_flag: str = "--step"
    """How the step was given: --step, or --model (then the step is planner/stepfiles/model_step.py)."""

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
        given = tuple((k, v) for k, v in p.items()
                      if v is not None and v != [] and not (k == "no_discriminator" and v is False))
        return cls(step=None if step is None else str(step), config=p.get("config"), knobs=tuple(knobs),
                   batch=p.get("batch"), accum=p.get("accum"), precision=precision, checkpoint=checkpoint,
                   sdpa=sdpa, optimizer=val("optimizer"), alloc_conf=p.get("alloc_conf"), gpus=p.get("gpus"),
                   strategy=val("strategy"), flag_of=tuple(flag_of.items()), model=p.get("model"),
                   input_shape=p.get("input_shape"), timeout=p.get("timeout"), given=given)

    def step_flags(self, jobs: int = 0) -> dict[str, Any]:
        """The flags as the mapping ``vramplan check`` applies to every step file it is given
        (planner/check.py STEP_FLAGS; the knobs as --knob NAME=VALUE)."""
        return {"batch": self.batch, "accum": self.accum, "precision": self.precision, "checkpoint": self.checkpoint,
                "sdpa": self.sdpa, "optimizer": self.optimizer, "alloc_conf": self.alloc_conf, "gpus": self.gpus,
                "strategy": self.strategy, "knob": self.knob_texts() or None,
                "jobs": jobs, "timeout": self.timeout}

    def is_given(self, name: str) -> bool:
        return any(k == name for k, _ in self.given)

    def as_model_step(self) -> "SetupFlags":
        """``--model FACTORY --input BxS...`` as the step file it is (planner/stepfiles/
        model_step.py): knobs model=FACTORY and input=S..., batch B, AMP fp16 unless
        --precision/--amp say otherwise (as ``profile --model``). Unchanged without --model."""
        if not self.model:
            if self.input_shape:
                raise PlannerError("--input: only used with --model package.module:factory")
            return self
        if self.step is not None:
            raise PlannerError("--model: give either --step (a step file) or --model (a module factory), not both")
        if not self.input_shape:
            raise PlannerError("--input: give the batch shape with --model, e.g. --input 2x1x96x96x64")
        from planner.config import parse_shape
        from planner.stepfiles import MODEL_STEP

        dims = parse_shape(self.input_shape, "--input", 2, 6)
        if self.batch not in (None, dims[0]):
            raise PlannerError(f"--batch: with --model the batch is --input's first dimension ({dims[0]}); "
                               f"change --input, or use recommend --max-batch")
        knobs = (*self.knobs, ("model", self.model, "--model"), ("input", "x".join(map(str, dims[1:])), "--input"))
        return replace(self, step=MODEL_STEP, knobs=knobs, batch=dims[0], precision=self.precision or "amp-fp16",
                       model=None, input_shape=None, as_flag="--model")

    def for_engine(self, engine: Any = None) -> "SetupFlags":
        """A built-in step named as its step file (``--step ldm-stage1``; planner/stepfiles): the
        built-in step with its analytic engine where that engine can express the setup (unless
        ``engine`` is trace), else the packaged step file traced, at the built-in's default
        precision. ``--engine analytic`` on a setup it cannot express is refused by the one rule.
        Any other step: unchanged."""
        if self.step is None:  # the built-in step: nothing to resolve (every command's start-up)
            return self
        from planner.stepfiles import PACKAGED_PRECISION, packaged_kind, packaged_path

        kind = packaged_kind(self.step)
        if kind is None:
            return self
        want = getattr(engine, "value", engine)
        why = None if want == "trace" else self._not_analytic(kind)
        if want != "trace" and why is None:
            # the step file's --sdpa picks CUDA's kernel for its SDPA calls, which the built-in
            # step's flash_attention does not mean: the analytic step keeps its own attention
            return replace(self, step=None, knobs=(("kind", kind, "--step"), *self.knobs), sdpa=None)
        if want == "analytic":
            raise refuse("--engine analytic", step_name(kind), f"has no analytic engine for {why}", ["trace"])
        return replace(self, step=packaged_path(kind), precision=self.precision or PACKAGED_PRECISION)

    def _not_analytic(self, kind: str) -> str | None:
        """What of these flags the analytic engine of the built-in step ``kind`` cannot express."""
        from planner.stepfiles import ANALYTIC_KNOBS

        for name, _, _ in self.knobs:
            if name not in ANALYTIC_KNOBS[kind]:
                return f"knob {quote(name)} (it takes {', '.join(ANALYTIC_KNOBS[kind])})"
        if self.precision not in (None, *BUILTIN_VALUES["precision"]):
            return f"precision {quote(self.precision)}"
        if self.checkpoint not in (None, "none"):  # a step file's auto is its per-module plan
            return f"--checkpoint {self.checkpoint}"
        if kind == "ldm-stage2" and self.sdpa not in (None, "auto"):
            return f"--sdpa {self.sdpa}"
        if self.timeout is not None:
            return "--timeout (it stops a traced step's code)"
        return None

    def flag(self, knob: str) -> str:
        return dict(self.flag_of).get(knob, f"--{knob}")

    def _check_value(self, knob: str, value: str | None, step: str, valid: tuple[str, ...]) -> None:
        if value is not None and value not in valid:
            raise refuse(self.flag(knob), step, f"cannot take {knob} {quote(value)}", valid)

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
        """The step file's knob values: --knob's as parsed by ``planner.step_setup.parse_value``; an
        alias's as the built-in step writes it (256x256x64, F,F,T) made the step file's tuple."""
        from planner.config import parse_bool_list, parse_shape
        from planner.step_setup import parse_value

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

    def knob_texts(self) -> list[str]:
        """The knobs as --knob NAME=VALUE: --knob's as typed, an alias's value as the step file
        takes it (``--voxel 64x64x32`` -> ``voxel=64,64,32``, ``--attention F,F,T`` ->
        ``attention=False,False,True``), so a consumer that parses --knob gets the same values."""
        from planner.step_setup import show_value

        values = self.knob_values()
        return [f"{name}={raw}" if flag == "--knob" else f"{name}={show_value(values[name])}"
                for name, raw, flag in self.knobs]

    def alias_flags(self) -> dict[str, str]:
        """knob name -> alias flag, for the knobs an alias set (the step-file loader's messages)."""
        return {name: flag for name, _, flag in self.knobs if flag != "--knob"}

    def step_setup(self, sweeping_parallel: bool = False) -> Any:
        """The step file's setup (planner/step_setup.py ``StepSetup``)."""
        from planner.config import environment_alloc_conf
        from planner.step_setup import PRECISIONS, SDPA_BACKENDS, StepSetup

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


# ---- from a command's parameters to its setup ------------------------------------------------
# (the commands' parameters as typer gives them: planner/commands/*; each read once, here)


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


def reject_unused_for_model(flags: SetupFlags) -> None:
    """A built-in-step flag given with profile --model is an error naming it (it would change nothing)."""
    given = []
    for key, flag, why in _NOT_FOR_MODEL:
        if flags.is_given(key):
            value = dict(flags.given)[key]
            given.append(("--no-" + flag[2:] if value is False else flag, why))  # --no-checkpointing etc.
    if given:
        (flag, why), rest = given[0], [f for f, _ in given[1:]]
        also = f"; nor do {', '.join(rest)}" if rest else ""
        raise PlannerError(f"{flag}: does not apply to --model ({why}){also}")


def builtin_setup(flags: SetupFlags, **command_flags: Any) -> Any:
    """The built-in step's setup from the flags; the command's other flags that can be wrong
    whatever the work (``command_flags``: empty --gpu, an unusable --write file, --backend cpu
    under AMP; planner/config.py ``check_command_flags``) are checked here, before any work."""
    from planner.config import check_command_flags

    setup = flags.builtin_setup()
    check_command_flags(command_flags, setup)
    return setup


def step_params(flags: SetupFlags, command: str, *, engine: Any = None, jobs: int = 0, sweep: Any = (),
                refused: dict[str, Any] | None = None, gpu: str | None = None, margin: float | None = None,
                max_gpus: int | None = None) -> StepSetup | None:
    """The setup of the command's step-file form when --step (or --model, as the step file it
    is) is given; None for the built-in step, after refusing what only a step file takes
    (--timeout, --jobs). ``refused``: the command's flags of the built-in engine only
    (BUILTIN_ONLY), by parameter name. ``--checkpoint auto`` with a card (``gpu``, one GPU) plans
    for that card less the margin (planner/measure/ckpt_plan.py ``auto_for_card``: auto:BYTES)."""
    if command != "profile":
        flags = flags.as_model_step()
    if flags.step is not None:
        if getattr(engine, "value", engine) == "analytic":
            raise refuse("--engine analytic", step_name(flags.step), "has no analytic engine registered", ["trace"])
        ss = _step_setup(flags, refused or {}, sweep)
        if ss.checkpoint == ("auto",) and gpu and not max_gpus:  # issue 21: auto plans for the card
            from planner.measure.ckpt_plan import auto_for_card

            ss = replace(ss, checkpoint=auto_for_card(gpu, 0.05 if margin is None else margin))
        return ss
    if flags.timeout is not None and not flags.model:
        raise PlannerError("--timeout: only with --step or --model (it stops your code; the built-in steps run none)")
    if jobs:
        raise PlannerError("--jobs: only with --step")
    return None


# Command flags that only the built-in step's engine has, and what a step file uses instead. (The
# setup flags are one vocabulary for every step: planner/setup_flags.py.)
BUILTIN_ONLY: tuple[tuple[str, str, str], ...] = (
    ("model", "--model", "give either --step or --model"),
    ("input_shape", "--input", "the step file's batch() makes the batch"),
    ("compare", "--compare", "a step file's estimate is already a trace"),
    ("max_voxel", "--max-voxel", "use --max-knob NAME for the step file's size knob"),
    ("write", "--write", "the step file is the configuration; the recommendation prints its flags"),
    ("configs", "--configs", "rows of a step file come from --sweep"),
    ("measure", "--measure", "a step file's rows are traces already"),
    ("seed004", "--seed004", "seed 004's table is of the built-in step"),
)


# knob name -> the alias flag that set it, for the step file's own knob check (_load)
_alias_flags: dict[str, str] = {}


def _step_setup(flags: SetupFlags, refused: dict[str, Any], sweep: Any = ()) -> StepSetup:
    """The StepSetup of the flags (one vocabulary, one rule); the command's flags of the built-in
    engine only (``refused``) are errors naming them. Sets the --timeout for the user's code
    (``planner/measure/isolate.py``)."""
    from planner.measure.isolate import set_timeout

    set_timeout(flags.timeout)
    for key, flag, why in BUILTIN_ONLY:
        v = refused.get(key)
        if key in ("model", "input_shape"):
            v = dict(flags.given).get(key) if flags.as_flag == "--step" else None
        if v is None or v is False or v == []:
            continue
        raise PlannerError(f"{flag}: does not apply to {flags.as_flag} ({why})")
    _alias_flags.clear()
    _alias_flags.update(flags.alias_flags())
    return flags.step_setup(sweeping_parallel=any(n in ("gpus", "strategy") for n in sweep_names(sweep)))


def step_setup(p: dict[str, Any]) -> StepSetup:
    """The StepSetup of a mapping of setup flags (planner/check.py: the flags ``check`` applies
    to every step file, ``SetupFlags.step_flags``; a built-in step named as its step file is
    traced)."""
    return _step_setup(SetupFlags.from_params(p).for_engine("trace"), p, p.get("sweep") or ())


def sweep_names(sweep: Any) -> list[str]:
    return [t.partition("=")[0].strip().replace("-", "_") for t in sweep or []]


def load_step(ss: StepSetup) -> Any:
    """The step file's knobs, default batch and TERMS, read in a worker process (its import
    runs the user's code: ``planner/measure/isolate.py``); the knobs checked before any tracing."""
    from planner.measure import isolate

    try:
        return isolate.load_step(ss)
    except PlannerError as exc:  # a knob set by an alias (--voxel): the message names that flag
        for name, flag in _alias_flags.items():
            if str(exc).startswith("--knob:") and f"has no knob '{name}'" in str(exc):
                raise PlannerError(flag + str(exc)[len("--knob"):]) from None
        raise


def filled(ss: StepSetup, sf: Any) -> StepSetup:
    if ss.batch_size is None:
        if sf.batch_default is None:
            raise PlannerError(f"--batch: '{ss.path}' batch() has no default batch_size; give --batch")
        ss = replace(ss, batch_size=sf.batch_default)
    return ss


VRAMPLAN_KNOBS = ("batch", "accum", "precision", "checkpoint", "sdpa", "optimizer", "gpus", "strategy")


PARALLEL_KNOBS = ("gpus", "strategy")


def sweep_setups(ss: StepSetup, sf: Any, sweeps: list[str],
                 parallel: tuple[Any, str | None] = (None, None)) -> list[tuple[dict[str, Any], StepSetup]]:
    """--sweep knob=v1,v2 over vramplan's knobs and the file's own (the product of all sweeps).
    ``gpus`` and ``strategy`` are set together once every sweep is applied (``parallel``: the
    --gpus / --strategy flags, for the one not swept); a row of 1 GPU has no strategy."""
    rows: list[tuple[dict[str, Any], StepSetup, dict[str, str]]] = [({}, ss, {})]
    for text in sweeps:
        name, _, raw = text.partition("=")
        name = name.strip().replace("-", "_")
        values = [v.strip() for v in raw.split(",") if v.strip()] if name in VRAMPLAN_KNOBS else \
            [v.strip() for v in raw.split("/" if "/" in raw else ",") if v.strip()]
        if not values:
            raise PlannerError(f"--sweep: {text!r} must be knob=v1,v2 (valid knobs: {', '.join(VRAMPLAN_KNOBS + tuple(sorted(sf.knobs)))})")
        if name in PARALLEL_KNOBS:
            _check_parallel(name, values)
        new = []
        for label, s, par in rows:
            for v in values:
                if name in PARALLEL_KNOBS:
                    new.append(({**label, name: v}, s, {**par, name: v}))
                else:
                    new.append(({**label, name: v}, _set(s, sf, name, v), par))
        rows = new
    out: list[tuple[dict[str, Any], StepSetup]] = []
    seen: set[StepSetup] = set()
    for label, s, par in rows:
        if par:
            try:
                s = _parallel(s, par, parallel)
            except PlannerError as exc:
                raise PlannerError(f"--sweep {', '.join(f'{k}={v}' for k, v in par.items())}: {exc}") from None
            if s.gpus == 1 and "strategy" in label:
                label = {**label, "strategy": "none"}
            if s in seen:  # gpus=1 under each swept strategy: one row
                continue
            seen.add(s)
        out.append((label, s))
    if len(out) > 200:
        raise PlannerError(f"--sweep: {len(out)} rows (valid: at most 200)")
    return out


def _check_parallel(name: str, values: list[str]) -> None:
    from planner.step_setup import STRATEGIES

    for v in values:
        if name == "strategy" and v not in STRATEGIES[1:]:
            raise PlannerError(f"--sweep strategy: got {v!r}, valid: {', '.join(STRATEGIES[1:])}")
        if name == "gpus" and not (v.isdigit() and int(v) >= 1):
            raise PlannerError(f"--sweep gpus: {v!r} is not a positive integer")


def _parallel(s: StepSetup, swept: dict[str, str], given: tuple[Any, str | None]) -> StepSetup:
    gpus = int(swept["gpus"]) if "gpus" in swept else (1 if given[0] is None else given[0])
    strategy = swept.get("strategy", given[1]) or "none"
    if "gpus" in swept and gpus == 1:
        strategy = "none"  # the one-GPU row of a gpus sweep
    return replace(s, gpus=gpus, strategy=strategy)


# --sweep's aliases (the built-in step's table names): name -> (vramplan knob, value for on, for off)
SWEEP_ALIASES = {"amp": ("precision", "amp-fp16", "fp32"), "checkpointing": ("checkpoint", "auto", "none"),
                 "flash": ("sdpa", "auto", "none")}


def _set(s: StepSetup, sf: Any, name: str, v: str) -> StepSetup:
    if name in SWEEP_ALIASES and name not in sf.knobs:
        from planner.config import parse_bool

        knob, on, off = SWEEP_ALIASES[name]
        name, v = knob, on if parse_bool(v, f"--sweep {name}") else off
        if knob == "sdpa" and v == "none":
            raise refuse("--sweep flash=off", step_name(s.path), "cannot take sdpa 'none'", SDPA_BACKENDS)

    def pos_int(flag: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise PlannerError(f"--sweep {flag}: {v!r} is not a positive integer") from None
        return n

    if name == "batch":
        return replace(s, batch_size=pos_int("batch"))
    if name == "accum":
        return replace(s, accumulation=pos_int("accum"))
    if name == "precision":
        if v not in PRECISIONS:
            raise PlannerError(f"--sweep precision: got {v!r}, valid: {', '.join(PRECISIONS)}")
        return replace(s, precision=v)
    if name == "checkpoint":
        return replace(s, checkpoint=() if v in ("off", "none") else tuple(v.split("+")))
    if name == "sdpa":
        if v not in SDPA_BACKENDS:
            raise refuse(f"--sweep sdpa={v}", step_name(s.path), f"cannot take sdpa {quote(v)}", SDPA_BACKENDS)
        return replace(s, sdpa=v)
    if name == "optimizer":
        return replace(s, optimizer=v)
    if name not in sf.knobs:
        valid = ", ".join(VRAMPLAN_KNOBS + tuple(sorted(sf.knobs)))
        raise PlannerError(f"--sweep: '{name}' is not a knob (valid: {valid})")
    from planner.measure.stepfile import _check_knob

    value = _check_knob(sf, name, parse_value(v.replace("+", ",")))
    return s.with_knobs(**{name: value})
