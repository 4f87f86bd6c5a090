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
import os
import typing
from pathlib import Path
from typing import Any

from planner import records
from planner import spec as S
from planner.errors import PlannerError, one_line, quote

MAX_CONFIG_BYTES = 1 << 20
"""A training setup is a few hundred bytes of YAML; a file over 1 MiB is not one."""
MAX_YAML_DEPTH = 32
"""The setup nests four mappings deep; 32 leaves room for any list value and stops
documents nested hundreds deep before they reach the (recursive) YAML composer's limits."""


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PlannerError(f"{path or 'config'}: expected a mapping of keys, got {quote(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str) or key not in names:
            if isinstance(key, str):
                shown = f"'{one_line(full, 120)}'"
            else:
                shown = quote(key) + (f" under '{path}'" if path else "")
            raise PlannerError(f"unknown key {shown} (valid here: {', '.join(names)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, full)
        elif typing.get_origin(hint) is tuple:
            if key == "num_res_blocks" and isinstance(value, int) and not isinstance(value, bool):
                levels = data.get("num_channels")
                n = len(levels) if isinstance(levels, (list, tuple)) else len(getattr(cls(), "num_channels"))
                value = [value] * n
            if not isinstance(value, (list, tuple)):
                raise PlannerError(f"{full}: expected a list, got {quote(value)}")
            kwargs[key] = tuple(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
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


_LOADER: type | None = None


def _safe_loader() -> type:
    """yaml.SafeLoader that refuses aliases and documents nested deeper than MAX_YAML_DEPTH.

    An alias (``*name``) repeats a node without copying it: nine nested aliases of
    nine items each are 9**9 strings once built (the 'billion laughs' bomb, 76 s and
    8 GB in a 1 KB file). A training setup never needs one, so the composer stops
    at the first alias, before anything is expanded.
    """
    global _LOADER
    if _LOADER is None:
        import yaml
        from yaml.composer import ComposerError
        from yaml.constructor import ConstructorError
        from yaml.events import AliasEvent
        from yaml.nodes import ScalarNode

        class Loader(yaml.SafeLoader):
            _depth = 0

            def construct_mapping(self, node: Any, deep: bool = False) -> Any:
                seen = set()
                for key_node, _ in node.value:  # a repeated key would silently drop the first value
                    if isinstance(key_node, ScalarNode):
                        if (key_node.tag, key_node.value) in seen:
                            raise ConstructorError(None, None, f"the key {quote(key_node.value)} appears twice",
                                                   key_node.start_mark)
                        seen.add((key_node.tag, key_node.value))
                return super().construct_mapping(node, deep)

            def compose_node(self, parent: Any, index: Any) -> Any:
                if self.check_event(AliasEvent):
                    event = self.peek_event()
                    raise ComposerError(None, None, "YAML aliases (*name) are not supported in a config",
                                        event.start_mark)
                self._depth += 1
                try:
                    if self._depth > MAX_YAML_DEPTH:
                        event = self.peek_event()
                        raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                            event.start_mark)
                    return super().compose_node(parent, index)
                finally:
                    self._depth -= 1

        _LOADER = Loader
    return _LOADER


def parse_yaml_text(raw: bytes, what: str) -> Any:
    """Bytes of a YAML document -> Python data, or PlannerError naming ``what`` (the flag
    and file) on anything that is not a small, plain, UTF-8 YAML document."""
    import yaml

    if len(raw) > MAX_CONFIG_BYTES:
        raise PlannerError(f"{what} is {len(raw):,} bytes (valid: a YAML file under {MAX_CONFIG_BYTES:,} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlannerError(f"{what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_safe_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        why = f": {one_line(problem, 120)}" if isinstance(problem, str) else ""
        raise PlannerError(f"{what} is not valid YAML{where}{why}") from None
    except RecursionError:
        raise PlannerError(f"{what} is nested too deeply (valid: at most {MAX_YAML_DEPTH} levels)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar the constructor cannot build
        why = "a number of over 4,300 digits" if "digits" in str(exc) else one_line(str(exc), 120)
        raise PlannerError(f"{what} has a value YAML cannot read ({why})") from None


def read_input_file(path: str | Path, flag: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the file an input flag names, or one PlannerError line (missing, a
    directory, unreadable, a name the OS refuses, over ``limit`` bytes)."""
    shown = quote(str(path))
    try:
        p = Path(path)
        if not p.exists():
            raise PlannerError(f"{flag}: no such file {shown}")
        if not p.is_file():
            raise PlannerError(f"{flag}: {shown} is not a file")
        size = p.stat().st_size
        if size > limit:
            raise PlannerError(f"{flag}: {shown} is {size:,} bytes (valid: a file under {limit:,} bytes)")
        return p.read_bytes()
    except PlannerError:
        raise
    except (OSError, ValueError) as exc:  # a name too long, no permission, a NUL byte, ...
        why = getattr(exc, "strerror", None) or one_line(str(exc), 80)
        raise PlannerError(f"{flag}: {shown} cannot be read ({why})") from None


def load_yaml(path: str | Path, flag: str = "--config") -> dict:
    raw = read_input_file(path, flag)
    what = f"{flag}: {quote(str(path))}"
    data = parse_yaml_text(raw, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlannerError(f"{what} must hold a mapping of keys at the top level, got {quote(data)}")
    return data


def deep_merge(base: dict, extra: dict, path: str = "") -> dict:
    """``extra`` (the flags) over ``base`` (the file). A flag never hides a bad file
    value: a section the file gives as a non-mapping stays an error."""
    out = dict(base)
    for k, v in extra.items():
        full = f"{path}.{k}" if path else str(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, full)
        elif isinstance(v, dict) and out.get(k) is not None:
            raise PlannerError(f"{full}: expected a mapping of keys, got {quote(out[k])}")
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
        raise PlannerError(f"{flag}: {quote(text)} is not a shape like 256x256x64") from None
    if not min_len <= len(dims) <= max_len or any(d < 1 for d in dims):
        want = "HxW or HxWxD" if (min_len, max_len) == (2, 3) else f"{min_len} to {max_len} positive sizes"
        raise PlannerError(f"{flag}: {quote(text)} must be {want} with positive sizes")
    return dims


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise PlannerError(f"{flag}: {quote(text)} is not a comma-separated list of integers like 32,64,64") from None
    if not vals:
        raise PlannerError(f"{flag}: {quote(text)} is empty (valid: a list like 32,64,64)")
    return vals


_TRUE = {"t", "true", "1", "y", "yes", "on"}
_FALSE = {"f", "false", "0", "n", "no", "off"}


def parse_bool(text: str, flag: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE or low in _FALSE:
        return low in _TRUE
    raise PlannerError(f"{flag}: {quote(text)} is not true or false")


def parse_bool_list(text: str, flag: str) -> tuple[bool, ...]:
    out = []
    for p in text.split(","):
        p = p.strip().lower()
        if p in _TRUE:
            out.append(True)
        elif p in _FALSE:
            out.append(False)
        else:
            raise PlannerError(f"{flag}: {quote(text)} must be a list of T/F like F,F,T")
    return tuple(out)


@records.dataclass
class Overrides:
    """The CLI flags shared by every command; None means 'not given'."""

    kind: str | None = None
    voxel: str | None = None
    batch: int | None = None
    channels: str | None = None
    attention: str | None = None
    amp: bool | None = None
    amp_dtype: str | None = None
    checkpointing: bool | None = None
    flash_attention: bool | None = None
    perceptual: bool | None = None
    disc_layers: int | None = None
    disc_channels: int | None = None
    no_discriminator: bool = False
    accum: int | None = None
    optimizer: str | None = None
    alloc_conf: str | None = None
    gpus: int | None = None
    strategy: str | None = None

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
        if self.amp_dtype is not None:
            put("device.amp_dtype", self.amp_dtype)
        if self.flash_attention is not None:
            put(f"{model}.use_flash_attention", self.flash_attention)
        if self.accum is not None:
            put(f"{model}.training.gradient_accumulation_steps", self.accum)
        if self.optimizer is not None:
            put(f"{model}.training.optimizer", self.optimizer.lower())
        if self.alloc_conf is not None:
            put("device.alloc_conf", self.alloc_conf)
        if self.gpus is not None:
            put("parallel.gpus", self.gpus)
        if self.strategy is not None:
            put("parallel.strategy", self.strategy)
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


ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"


def with_environment(data: dict) -> dict:
    """A setup mapping under PYTORCH_CUDA_ALLOC_CONF from the environment (as torch reads
    it): the file's or the flags' device.alloc_conf still wins."""
    env_conf = environment_alloc_conf()
    if not env_conf:
        return data
    return deep_merge({"device": {"alloc_conf": env_conf}}, data)


def environment_alloc_conf() -> str:
    """PYTORCH_CUDA_ALLOC_CONF from the environment, checked ('' when unset)."""
    env_conf = os.environ.get(ALLOC_CONF_ENV, "").strip()
    if env_conf:
        from planner.allocator import parse_alloc_conf

        try:
            parse_alloc_conf(env_conf)
        except PlannerError as exc:
            raise PlannerError(f"{ALLOC_CONF_ENV} (environment): {exc}") from None
    return env_conf


def resolve_setup(
    config: str | Path | None = None, overrides: Overrides | None = None, flag: str = "--config"
) -> S.TrainingSetup:
    """The setup a command runs on: built-in default <- PYTORCH_CUDA_ALLOC_CONF (the
    environment, as torch reads it) <- YAML file <- flags."""
    data = with_environment(load_yaml(config, flag) if config else {})
    ov = overrides or Overrides()
    kind = ov.kind or data.get("kind", S.TrainingSetup().kind)
    if kind not in S.KINDS:
        raise PlannerError(f"kind: got {quote(kind)}, valid: {', '.join(S.KINDS)}")
    return setup_from_dict(deep_merge(data, ov.to_dict(kind)))


# -- flags checked before any work ----------------------------------------------------


def check_output_path(path: str | Path, flag: str) -> Path:
    """The file an output flag names, checked before the command does its work: not a
    directory, in a directory that exists and can be written."""
    import os

    p = Path(path)
    shown = quote(str(path))
    try:
        if "\0" in str(path):
            raise ValueError("a NUL character in the name")
        if p.is_dir() or str(path).endswith(("/", os.sep)) or not p.name:
            raise PlannerError(f"{flag}: {shown} is a directory (valid: a file path in an existing directory)")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist (create it first)"
            raise PlannerError(f"{flag}: the directory {quote(str(parent))} {what}")
        if p.exists() and not os.access(p, os.W_OK):
            raise PlannerError(f"{flag}: {shown} is not writable")
        if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
            raise PlannerError(f"{flag}: the directory {quote(str(parent))} is not writable")
    except PlannerError:
        raise
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, ...
        why = getattr(exc, "strerror", None) or one_line(str(exc), 80)
        raise PlannerError(f"{flag}: {shown} cannot be used as an output file ({why})") from None
    return p


def check_gpu_flag(gpu: Any, flag: str = "--gpu") -> None:
    """An empty --gpu value is an error, never 'no card given'; an unknown one names the flag."""
    for g in gpu if isinstance(gpu, (list, tuple)) else [gpu]:
        if g is None:
            continue
        if not str(g).strip():
            raise PlannerError(f"{flag}: empty value (valid: a size as sold like 24GB, an exact capacity like exact:23.55GiB, or a name from `vramplan gpus`)")
        from planner.gpus import parse_gpu

        try:  # the catalog's message, prefixed with the flag it came from
            parse_gpu(g)
        except PlannerError as exc:
            raise exc if str(exc).startswith(flag) else PlannerError(f"{flag}: {exc}") from None


def check_cuda_backend(backend: Any, valid: str = "fake, or cpu with --no-amp", flag: str = "--backend") -> None:
    """--backend cuda on a machine where torch sees no GPU: one line now, not a traceback
    from torch.cuda after the setup work."""
    if getattr(backend, "value", backend) != "cuda":
        return
    try:
        import torch
    except ImportError:
        return  # the command's own message names the missing measuring extra
    if not torch.cuda.is_available():
        raise PlannerError(f"{flag}: cuda needs a CUDA GPU and torch {torch.__version__} sees none "
                           f"(valid here: {valid})")


def check_command_flags(params: dict[str, Any], setup: S.TrainingSetup) -> None:
    """Flags a command can get wrong whatever its setup, checked before any work:
    empty --gpu or --profile, an unusable --write/--out file, --backend cpu under AMP."""
    if "gpu" in params:
        check_gpu_flag(params["gpu"])
    if params.get("profile_name") is not None and not params["profile_name"].strip():
        raise PlannerError("--profile: empty name (valid: a name from `vramplan profiles` or a .json file)")
    for name, flag in (("write", "--write"), ("out_file", "--out")):
        if params.get(name) is not None:
            check_output_path(params[name], flag)
    backend = params.get("backend")
    check_cuda_backend(backend)
    if getattr(backend, "value", backend) == "cpu" and setup.device.mixed_precision:
        raise PlannerError("--backend: cpu runs real fp16 kernels, and the CPU lacks some CUDA ones (softmax "
                           "fp16->fp32); add --no-amp, or use --backend fake to measure AMP (valid: fake, cuda, "
                           "or cpu with --no-amp)")
