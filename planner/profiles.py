"""Device profiles: what shapes alone cannot tell the estimator. Torch-free.

A profile (``profiles/<name>.json``) holds the device it was measured on, every
raw measurement (configuration, estimated and measured bytes), and terms fitted
by least squares (:mod:`planner.calibrate`):

* ``workspace_bytes`` — measured allocated minus estimated allocated (cuDNN/cuBLAS
  workspaces and kernel-internal buffers that go through the caching allocator);
* ``reserved_scale``, ``reserved_offset_bytes`` — measured reserved as a linear
  function of the caching-allocator model's reserved figure;
* ``context_bytes`` — CUDA context and library share: (total - free) - reserved.

Without a profile, or with one fitted on the fake backend, the terms are the
identity plus the documented context default, and the output says "uncalibrated".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import field, replace
from pathlib import Path
from typing import Any

from planner.records import dataclass
from planner.errors import NotData, PlannerError, parse_json, quote
from planner.result import DEFAULT_CONTEXT_BYTES, DEFAULT_CONTEXT_SOURCE, MemoryReport

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    """File stem under profiles/."""
    device: dict[str, Any]
    """What it was measured on: name, memory, driver, torch version, backend."""
    hardware: bool
    """True only when the measurements come from a real GPU."""
    workspace_bytes: int = 0
    reserved_scale: float = 1.0
    reserved_offset_bytes: int = 0
    context_bytes: int = DEFAULT_CONTEXT_BYTES
    context_source: str = DEFAULT_CONTEXT_SOURCE
    gpu_key: str | None = None
    """Catalog key of the card (so --gpu can pick this profile)."""
    basis: str = "analytic"
    """What the terms correct: ``analytic`` (the built-in kinds' estimator, ``calibrate``) or
    ``trace`` (a step file's fake-tensor trace, ``calibrate --step``)."""
    measurements: list[dict[str, Any]] = field(default_factory=list)
    residuals: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        how = "calibrated on real hardware" if self.hardware else "not calibrated on real hardware"
        return f"{self.name} ({how})"

    def apply(self, report: MemoryReport) -> MemoryReport:
        """The estimate with this profile's residual terms added."""
        allocated = max(0, report.peak_allocated_bytes + self.workspace_bytes)
        reserved = int(round(self.reserved_scale * report.peak_reserved_bytes + self.reserved_offset_bytes))
        reserved = max(reserved, allocated)
        notes = tuple(n for n in report.notes if not n.startswith(("peak_reserved", "device_total")))
        basis = "fitted on" if self.hardware else "fake-backend profile, not calibrated on"
        return replace(
            report,
            peak_allocated_bytes=allocated,
            breakdown=report.breakdown.with_profile_term(allocated - report.peak_allocated_bytes),
            peak_reserved_bytes=reserved,
            device_total_bytes=reserved + self.context_bytes,
            context_bytes=self.context_bytes,
            context_basis=self.context_source,
            reserved_basis=f"allocator model x {self.reserved_scale:.4f} + {self.reserved_offset_bytes:,} B "
            f"(profile {self.name}, {basis} a GPU)",
            notes=notes
            + (
                f"profile: {self.label}; workspace term {self.workspace_bytes:,} B",
                f"device_total: reserved + context {self.context_bytes:,} B ({self.context_source})",
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": self.device,
            "hardware": self.hardware,
            "gpu_key": self.gpu_key,
            "basis": self.basis,
            "terms": {
                "workspace_bytes": self.workspace_bytes,
                "reserved_scale": self.reserved_scale,
                "reserved_offset_bytes": self.reserved_offset_bytes,
                "context_bytes": self.context_bytes,
                "context_source": self.context_source,
            },
            "residuals": self.residuals,
            "measurements": self.measurements,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "profile") -> "DeviceProfile":
        """A profile from its JSON form; PlannerError naming ``where`` and the field on
        anything malformed (wrong type, missing name, negative context, ...)."""
        if not isinstance(data, dict):
            raise PlannerError(f"{where}: must hold a JSON object, got {quote(data)}")
        t = _field(data, "terms", dict, {}, where)
        name = _field(data, "name", str, None, where)
        if not name:
            raise PlannerError(f"{where}: 'name' must be a non-empty string")
        device = _field(data, "device", dict, {}, where)
        for key in device:
            kind = str if key in ("name", "torch", "backend") else (str, int, float, bool, type(None))
            _field(device, key, kind, None, where, "device.")
        residuals = _field(data, "residuals", dict, {}, where)
        for key in residuals:
            if key == "points":
                _count(residuals, key, where, "residuals.")
                continue
            part = _field(residuals, key, dict, {}, where, "residuals.")
            for k in part:
                _field(part, k, float, None, where, f"residuals.{key}.")
        measurements = _field(data, "measurements", list, [], where)
        for i, m in enumerate(measurements):
            _measurement(m, f"measurements[{i}]", where)
        scale = _field(t, "reserved_scale", float, 1.0, where, "terms.")
        if not 0 < scale <= 1e3:
            raise PlannerError(f"{where}: 'terms.reserved_scale' must be in (0, 1000], got {quote(scale)}")
        basis = _field(data, "basis", str, "analytic", where)
        if basis not in BASES:
            raise PlannerError(f"{where}: 'basis' must be one of {', '.join(BASES)}, got {quote(basis)}")
        return cls(
            name=name,
            basis=basis,
            device=device,
            hardware=_field(data, "hardware", bool, False, where),
            workspace_bytes=_bytes(t, "workspace_bytes", 0, where, -MAX_TERM_BYTES),
            reserved_scale=scale,
            reserved_offset_bytes=_bytes(t, "reserved_offset_bytes", 0, where, -MAX_TERM_BYTES),
            context_bytes=_bytes(t, "context_bytes", DEFAULT_CONTEXT_BYTES, where, 0),
            context_source=_field(t, "context_source", str, DEFAULT_CONTEXT_SOURCE, where, "terms."),
            gpu_key=_field(data, "gpu_key", (str, type(None)), None, where),
            measurements=measurements,
            residuals=residuals,
        )


BASES = ("analytic", "trace")
MAX_TERM_BYTES = 2**50
"""Largest magnitude of a fitted byte term (1 PiB, thousands of times any card)."""
MAX_PROFILE_BYTES = 64 << 20
"""Largest profile file read (a 46-point profile is ~40 KB)."""

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false", float: "a number",
               int: "an integer"}


def _field(obj: dict, key: str, kind: Any, default: Any, where: str, prefix: str = "") -> Any:
    """obj[key] (or default when absent) if it has the JSON type ``kind``."""
    if key not in obj:
        if default is None and kind is str:
            raise PlannerError(f"{where}: missing key '{prefix}{key}'")
        return default
    v = obj[key]
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PlannerError(f"{where}: '{prefix}{key}' must be a finite number, got {quote(v)}")
        return float(v)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (bool not in kinds and isinstance(v, bool)):
        want = " or ".join("null" if k is type(None) else _TYPE_NAMES[k] for k in kinds)
        raise PlannerError(f"{where}: '{prefix}{key}' must be {want}, got {quote(v)}")
    return v


def _count(obj: dict, key: str, where: str, prefix: str, lo: int = 0) -> int:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_TERM_BYTES:
        raise PlannerError(f"{where}: '{prefix}{key}' must be a whole number in {lo:,}..{MAX_TERM_BYTES:,}, "
                           f"got {quote(v)}")
    return v


def _measurement(m: Any, at: str, where: str) -> None:
    """One calibration point: an object with a 'name', a 'config' object (the setup measured),
    and byte counts (``*_bytes``: a whole number, >= 0 but for the fit's ``residual_*``, or null
    where not measured)."""
    if not isinstance(m, dict):
        raise PlannerError(f"{where}: '{at}' must be an object, got {quote(m)}")
    for key, v in m.items():
        if key.endswith("_bytes"):
            if v is not None:
                _count(m, key, where, f"{at}.", -MAX_TERM_BYTES if key.startswith("residual_") else 0)
        elif key == "config":
            _field(m, key, dict, None, where, f"{at}.")
        else:
            _field(m, key, (str, int, float, bool, type(None)), None, where, f"{at}.")
    if not isinstance(m.get("name"), str):
        raise PlannerError(f"{where}: '{at}.name' must be a string, got {quote(m.get('name'))}")


def _bytes(terms: dict, key: str, default: int, where: str, lo: int) -> int:
    """A byte count in [lo, MAX_TERM_BYTES]; a float with an integral value is accepted."""
    v = terms.get(key, default)
    ok_float = isinstance(v, float) and math.isfinite(v) and v.is_integer()
    if isinstance(v, bool) or not (isinstance(v, int) or ok_float) or not lo <= v <= MAX_TERM_BYTES:
        valid = f"{lo:,}..{MAX_TERM_BYTES:,}"
        raise PlannerError(f"{where}: 'terms.{key}' must be a whole number of bytes, got {quote(v)} (valid: {valid})")
    return int(v)


def _dir(directory: Path | None) -> Path:
    return directory if directory is not None else PROFILE_DIR


def available(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in _dir(directory).glob("*.json"))


def _path_of(name: str, directory: Path | None) -> Path:
    """--profile NAME is profiles/NAME.json; a value ending in .json or holding a path
    separator is a file path."""
    if name.endswith(".json") or "/" in name or "\\" in name:
        return Path(name)
    return _dir(directory) / f"{name}.json"


def load(name: str, directory: Path | None = None) -> DeviceProfile:
    if not isinstance(name, str) or not name.strip():
        raise PlannerError(f"--profile: empty name (valid: {', '.join(available(directory)) or 'none'} or a .json file)")
    path = _path_of(name, directory)
    try:
        found = path.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        names = available(directory)
        raise PlannerError(f"--profile: unknown profile {quote(name)} (available: {', '.join(names) or 'none'}, "
                           f"or a path to a .json file)")
    where = f"--profile: {quote(str(path))}"
    data = read_json_file(path, where, MAX_PROFILE_BYTES, "a profile")
    return DeviceProfile.from_json(data, where)


def read_json_file(path: Path, where: str, limit: int, what: str) -> Any:
    """The JSON value a data file holds (never code), or one PlannerError line naming ``where``:
    unreadable, over ``limit`` bytes, not UTF-8, not JSON, nested too deeply."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlannerError(f"{where} cannot be read ({exc.strerror})") from None
    if len(raw) > limit:
        raise PlannerError(f"{where} is {len(raw):,} bytes (valid: {what} under {limit:,} bytes)")
    try:
        return parse_json(raw, what)
    except NotData as exc:
        raise PlannerError(f"{where} is {exc}") from None


def for_gpu(gpu_key: str, directory: Path | None = None, basis: str = "analytic") -> DeviceProfile | None:
    """The hardware profile measured on this catalog card for this basis, if one exists."""
    for name in available(directory):
        prof = load(name, directory)
        if prof.hardware and prof.gpu_key == gpu_key and prof.basis == basis:
            return prof
    return None


def load_for(name: str, basis: str, directory: Path | None = None) -> DeviceProfile:
    """``--profile NAME`` for a command whose estimate has this basis; a profile fitted for the
    other estimator is refused (its terms correct a different figure)."""
    prof = load(name, directory)
    if prof.basis != basis:
        fitted = "the built-in kinds' analytic estimator (vramplan calibrate)" if prof.basis == "analytic" else \
            "step-file traces (vramplan calibrate --step)"
        use = "a profile from `vramplan calibrate --step`" if basis == "trace" else "a profile from `vramplan calibrate`"
        raise PlannerError(f"--profile: {quote(name)} was fitted for {fitted}; here use {use}")
    return prof


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, directory: Path | None = None) -> Path:
    """The file ``calibrate --name NAME`` will write, checked before any measurement."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".json"):
        raise PlannerError(f"--name: {quote(name)} is not a profile name (valid: 1-64 letters, digits, '.', '_' "
                           f"or '-', starting with a letter or digit, without .json)")
    path = _dir(directory) / f"{name}.json"
    if path.parent.exists():
        from planner.config import check_output_path

        check_output_path(path, "--name")
    return path


def save(profile: DeviceProfile, directory: Path | None = None) -> Path:
    directory = _dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile.name}.json"
    path.write_text(json.dumps(profile.to_json(), indent=1) + "\n")
    return path
