"""YAML files and CLI flags -> :class:`planner.spec.TrainingSetup`.

The YAML layout is the one users already write (their seed-004 notes)::

    kind: ldm-stage1
    data: {voxel_size: [256, 256, 64], in_channels: 1}
    autoencoder:
      num_channels: [32, 64, 64]
      training: {batch_size: 1, discriminator: {num_layers_d: 3}}
    device: {mixed_precision: true}

Every key is optional. An unknown key, a value of the wrong type, or an
impossible combination raises :class:`PlannerError` with one line naming the
key. Flags override the file (``merge_overrides``). Torch-free.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from planner import spec as S
from planner.errors import PlannerError



def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PlannerError(f"{path or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise PlannerError(f"unknown key '{full}' (valid here: {', '.join(names)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, full)
        elif typing.get_origin(hint) is tuple:
            if key == "num_res_blocks" and isinstance(value, int) and not isinstance(value, bool):
                levels = data.get("num_channels")
                n = len(levels) if isinstance(levels, (list, tuple)) else len(getattr(cls(), "num_channels"))
                value = [value] * n
            if not isinstance(value, (list, tuple)):
                raise PlannerError(f"{full}: expected a list, got {value!r}")
            kwargs[key] = tuple(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = float(value)
        else:
            kwargs[key] = value
    # num_channels given alone: keep per-level defaults consistent in length.
    if "num_channels" in kwargs and cls in (S.AutoencoderSpec, S.DiffusionSpec):
        n = len(kwargs["num_channels"])
        default = cls()
        if "num_res_blocks" not in kwargs:
            kwargs["num_res_blocks"] = (default.num_res_blocks[0],) * n
        if "attention_levels" not in kwargs and len(default.attention_levels) != n:
            kwargs["attention_levels"] = (False,) * (n - 1) + (True,)
        if cls is S.DiffusionSpec and "num_head_channels" not in kwargs:
            att = kwargs.get("attention_levels", default.attention_levels)
            # the UNet's middle block always has attention with the last level's head size
            last = len(kwargs["num_channels"]) - 1
            kwargs["num_head_channels"] = tuple(
                c if (a or i == last) else 0 for i, (c, a) in enumerate(zip(kwargs["num_channels"], att))
            )
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a wrong type deep inside a comparison
        raise PlannerError(f"{path or 'config'}: {exc}") from None


def setup_from_dict(data: dict | None) -> S.TrainingSetup:
    """Build and validate a setup from a nested mapping (YAML layout)."""
    return _build(S.TrainingSetup, data or {}, "")


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise PlannerError(f"--config: no such file '{path}'")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise PlannerError(f"--config: '{path}' is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlannerError(f"--config: '{path}' must hold a mapping of keys at the top level")
    return data


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# -- flag parsing --------------------------------------------------------------


def parse_shape(text: str, flag: str = "--voxel", min_len: int = 2, max_len: int = 3) -> tuple[int, ...]:
    """'256x256x64' -> (256, 256, 64)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise PlannerError(f"{flag}: '{text}' is not a shape like 256x256x64") from None
    if not min_len <= len(dims) <= max_len or any(d < 1 for d in dims):
        want = "HxW or HxWxD" if (min_len, max_len) == (2, 3) else f"{min_len} to {max_len} positive sizes"
        raise PlannerError(f"{flag}: '{text}' must be {want} with positive sizes")
    return dims


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise PlannerError(f"{flag}: '{text}' is not a comma-separated list of integers like 32,64,64") from None
    if not vals:
        raise PlannerError(f"{flag}: '{text}' is empty")
    return vals


_TRUE = {"t", "true", "1", "y", "yes", "on"}
_FALSE = {"f", "false", "0", "n", "no", "off"}


def parse_bool_list(text: str, flag: str) -> tuple[bool, ...]:
    out = []
    for p in text.split(","):
        p = p.strip().lower()
        if p in _TRUE:
            out.append(True)
        elif p in _FALSE:
            out.append(False)
        else:
            raise PlannerError(f"{flag}: '{text}' must be a list of T/F like F,F,T")
    return tuple(out)


@dataclasses.dataclass
class Overrides:
    """The CLI flags shared by every command; None means 'not given'."""

    kind: str | None = None
    voxel: str | None = None
    batch: int | None = None
    channels: str | None = None
    attention: str | None = None
    amp: bool | None = None
    checkpointing: bool | None = None
    flash_attention: bool | None = None
    perceptual: bool | None = None
    disc_layers: int | None = None
    disc_channels: int | None = None
    no_discriminator: bool = False
    accum: int | None = None
    optimizer: str | None = None

    def to_dict(self, kind: str) -> dict:
        """Nested override mapping for the model of ``kind``."""
        out: dict = {}

        def put(path: str, value: Any) -> None:
            node = out
            *head, last = path.split(".")
            for h in head:
                node = node.setdefault(h, {})
            node[last] = value

        model = "autoencoder" if kind == "ldm-stage1" else "diffusion"
        if self.kind is not None:
            put("kind", self.kind)
        if self.voxel is not None:
            put("data.voxel_size", list(parse_shape(self.voxel)))
        if self.batch is not None:
            put(f"{model}.training.batch_size", self.batch)
        if self.channels is not None:
            put(f"{model}.num_channels", list(parse_int_list(self.channels, "--channels")))
        if self.attention is not None:
            put(f"{model}.attention_levels", list(parse_bool_list(self.attention, "--attention")))
        if self.amp is not None:
            put("device.mixed_precision", self.amp)
        if self.flash_attention is not None:
            put(f"{model}.use_flash_attention", self.flash_attention)
        if self.accum is not None:
            put(f"{model}.training.gradient_accumulation_steps", self.accum)
        if self.optimizer is not None:
            put(f"{model}.training.optimizer", self.optimizer.lower())
        stage1_only = {
            "--checkpointing": self.checkpointing,
            "--perceptual/--no-perceptual": self.perceptual,
            "--disc-layers": self.disc_layers,
            "--disc-channels": self.disc_channels,
            "--no-discriminator": self.no_discriminator or None,
        }
        if kind != "ldm-stage1":
            given = [k for k, v in stage1_only.items() if v is not None]
            if given:
                raise PlannerError(f"{given[0]}: applies to kind ldm-stage1 only (this config is {kind})")
            return out
        if self.checkpointing is not None:
            put("autoencoder.training.use_gradient_checkpointing", self.checkpointing)
        if self.perceptual is not None:
            put("autoencoder.training.use_perceptual_loss", self.perceptual)
        if self.disc_layers is not None:
            put("autoencoder.training.discriminator.num_layers_d", self.disc_layers)
        if self.disc_channels is not None:
            put("autoencoder.training.discriminator.num_channels", self.disc_channels)
        if self.no_discriminator:
            put("autoencoder.training.discriminator.enabled", False)
        return out


def resolve_setup(config: str | Path | None = None, overrides: Overrides | None = None) -> S.TrainingSetup:
    """The setup a command runs on: built-in default <- YAML file <- flags."""
    data = load_yaml(config) if config else {}
    ov = overrides or Overrides()
    kind = ov.kind or data.get("kind", S.TrainingSetup().kind)
    if kind not in S.KINDS:
        raise PlannerError(f"kind: got {kind!r}, valid: {', '.join(S.KINDS)}")
    return setup_from_dict(deep_merge(data, ov.to_dict(kind)))
