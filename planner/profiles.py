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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
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
    measurements: list[dict[str, Any]] = field(default_factory=list)
    residuals: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        how = "calibrated on real hardware" if self.hardware else "not calibrated on real hardware"
        return f"{self.name} ({how})"

    def apply(self, report: MemoryReport) -> MemoryReport:
        """The estimate with this profile's residual terms added."""
        allocated = report.peak_allocated_bytes + self.workspace_bytes
        reserved = int(round(self.reserved_scale * report.peak_reserved_bytes + self.reserved_offset_bytes))
        reserved = max(reserved, allocated)
        notes = tuple(n for n in report.notes if not n.startswith(("peak_reserved", "device_total")))
        basis = "fitted on" if self.hardware else "fake-backend profile, not calibrated on"
        return replace(
            report,
            peak_allocated_bytes=allocated,
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
    def from_json(cls, data: dict[str, Any]) -> "DeviceProfile":
        t = data.get("terms", {})
        return cls(
            name=data["name"],
            device=data.get("device", {}),
            hardware=bool(data.get("hardware", False)),
            workspace_bytes=int(t.get("workspace_bytes", 0)),
            reserved_scale=float(t.get("reserved_scale", 1.0)),
            reserved_offset_bytes=int(t.get("reserved_offset_bytes", 0)),
            context_bytes=int(t.get("context_bytes", DEFAULT_CONTEXT_BYTES)),
            context_source=str(t.get("context_source", DEFAULT_CONTEXT_SOURCE)),
            gpu_key=data.get("gpu_key"),
            measurements=list(data.get("measurements", [])),
            residuals=dict(data.get("residuals", {})),
        )


def _dir(directory: Path | None) -> Path:
    return directory if directory is not None else PROFILE_DIR


def available(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in _dir(directory).glob("*.json"))


def load(name: str, directory: Path | None = None) -> DeviceProfile:
    directory = _dir(directory)
    path = directory / f"{name}.json"
    if not path.is_file():
        names = available(directory)
        raise PlannerError(f"--profile: unknown profile '{name}' (available: {', '.join(names) or 'none'})")
    try:
        return DeviceProfile.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError) as exc:
        raise PlannerError(f"--profile: '{path}' is not a valid profile ({exc})") from None


def for_gpu(gpu_key: str, directory: Path | None = None) -> DeviceProfile | None:
    """The hardware profile measured on this catalog card, if one exists."""
    for name in available(directory):
        prof = load(name, directory)
        if prof.hardware and prof.gpu_key == gpu_key:
            return prof
    return None


def save(profile: DeviceProfile, directory: Path | None = None) -> Path:
    directory = _dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile.name}.json"
    path.write_text(json.dumps(profile.to_json(), indent=1) + "\n")
    return path
