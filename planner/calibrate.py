"""``vramplan calibrate``: measure a grid, fit a device profile's residual terms.

For every configuration it runs the analytic estimate and a measuring backend
(``fake``: FakeTensorMode with CUDA emulation, reproducible anywhere; ``cuda``: a
real GPU), then fits by ordinary least squares:

* workspace: measured_allocated - estimated_allocated = w (an intercept);
* reserved:  measured_reserved = a * modelled_reserved + b;
* context:   the mean of the measured context shares (real GPU only; the fake
  backend cannot measure one and keeps the documented default).

The fits are closed-form (no numpy needed); residuals are reported per point and
summarised (max and RMS, bytes and percent).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from planner.config import setup_from_dict
from planner.errors import PlannerError, one_line, quote
from planner.profiles import DeviceProfile
from planner.result import DEFAULT_CONTEXT_BYTES, DEFAULT_CONTEXT_SOURCE
from planner.spec import spec_to_dict


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares y = a x + b; a single point or constant x fits slope 1."""
    n = len(xs)
    if n == 0:
        return 1.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return 1.0, my - mx
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return a, my - a * mx


def load_grid(path: str | Path | None) -> list[tuple[str, dict]]:
    if path is None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
        try:
            from grid import GRID  # type: ignore[import-not-found]
        except ImportError:
            raise PlannerError("--grid: the built-in grid (benchmarks/grid.py) is not available; give a YAML file") from None
        return list(GRID)
    from planner.config import parse_yaml_text, read_input_file

    raw = read_input_file(path, "--grid")
    what = f"--grid: {quote(str(path))}"
    data = parse_yaml_text(raw, what)
    if not isinstance(data, list) or not data:
        raise PlannerError(f"{what} must be a non-empty YAML list of configurations (mappings), got {quote(data)}")
    out = []
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise PlannerError(f"{what}: entry {i + 1} must be a mapping of keys, got {quote(d)}")
        d = dict(d)
        name = d.pop("name", f"config {i + 1}")
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise PlannerError(f"{what}: entry {i + 1}: 'name' must be a string, got {quote(name)}")
        label = one_line(str(name), 80)
        try:  # every entry is checked before the first (slow) measurement
            setup_from_dict(d)
        except PlannerError as exc:
            raise PlannerError(f"{what}: entry {i + 1} ({quote(label)}): {exc}") from None
        out.append((label, d))
    return out


def calibrate(
    name: str,
    grid: list[tuple[str, dict]],
    backend: str = "fake",
    gpu_key: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> DeviceProfile:
    from planner.analytic.estimate import estimate
    from planner.measure.profile import profile

    def pair(cfg: dict) -> tuple[dict, Any, Any]:
        setup = setup_from_dict(cfg)
        return spec_to_dict(setup), estimate(setup), profile(setup, backend)

    return _fitted(name, grid, pair, backend, gpu_key, progress, "analytic")


def calibrate_step(
    name: str,
    setups: list[tuple[str, Any]],
    backend: str = "fake",
    gpu_key: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> DeviceProfile:
    """``calibrate --step``: the step file's estimate (its fake-tensor trace, what
    ``estimate --step`` reports) against a run on ``backend`` for each StepSetup, fitted as
    :func:`calibrate` fits the analytic estimator (basis ``trace``). On the fake backend the
    run is a fresh trace of the same step, so the terms come out as the identity: it checks
    the pipeline and calibrates nothing; ``--backend cuda`` on a GPU measures."""
    from planner.measure import isolate, traces
    from planner.measure.profile import report_from

    def pair(s: Any) -> tuple[dict, Any, Any]:
        est = report_from(traces.trace(s), "fake", s.alloc_conf, 0.0)
        record, measured = isolate.run_step(s, backend, count_flops=False)  # in a worker process
        meas = measured if backend == "cuda" else report_from(record, backend, s.alloc_conf, 0.0)
        return {"step": s.to_json()}, est, meas

    return _fitted(name, setups, pair, backend, gpu_key, progress, "trace")


def _fitted(name: str, items: Sequence[tuple[str, Any]], pair: Callable[[Any], tuple[dict, Any, Any]], backend: str,
            gpu_key: str | None, progress: Callable[[int, int, str], None] | None, basis: str) -> DeviceProfile:
    """Each (label, item)'s estimate against its measurement (``pair``), as points, fitted."""
    points: list[dict[str, Any]] = []
    device: dict[str, Any] = {"backend": backend}
    for i, (label, item) in enumerate(items):
        if progress:
            progress(i, len(items), label)
        config, est, meas = pair(item)
        if backend == "cuda":
            device.update(meas.extra.get("device", {}))
        points.append({
            "name": label,
            "config": config,
            "estimated_allocated_bytes": est.peak_allocated_bytes,
            "modelled_reserved_bytes": est.peak_reserved_bytes,
            "measured_allocated_bytes": meas.peak_allocated_bytes,
            "measured_reserved_bytes": meas.peak_reserved_bytes,
            "measured_context_bytes": meas.context_bytes if backend == "cuda" else None,
        })
    if progress:
        progress(len(items), len(items), "fitting")
    if backend != "cuda":
        import platform

        import torch

        device.update({"name": "CPU, FakeTensorMode (CUDA emulated)", "torch": torch.__version__,
                       "machine": platform.machine()})
    return fit(name, device, points, hardware=backend == "cuda", gpu_key=gpu_key, basis=basis)


def fit(name: str, device: dict, points: list[dict], hardware: bool, gpu_key: str | None = None,
        basis: str = "analytic") -> DeviceProfile:
    if not points:
        raise PlannerError("calibrate: the grid is empty")
    diffs = [p["measured_allocated_bytes"] - p["estimated_allocated_bytes"] for p in points]
    workspace = int(round(sum(diffs) / len(diffs)))
    a, b = fit_line([p["modelled_reserved_bytes"] for p in points], [p["measured_reserved_bytes"] for p in points])
    ctx_pts = [p["measured_context_bytes"] for p in points if p.get("measured_context_bytes") is not None]
    if hardware and ctx_pts:
        context = int(round(sum(ctx_pts) / len(ctx_pts)))
        context_source = f"measured: mean of {len(ctx_pts)} mem_get_info readings on {device.get('name', 'the GPU')}"
    else:
        context, context_source = DEFAULT_CONTEXT_BYTES, DEFAULT_CONTEXT_SOURCE
    res_alloc, res_res = [], []
    for p in points:
        pa = p["estimated_allocated_bytes"] + workspace
        pr = a * p["modelled_reserved_bytes"] + b
        p["residual_allocated_bytes"] = p["measured_allocated_bytes"] - pa
        p["residual_reserved_bytes"] = int(round(p["measured_reserved_bytes"] - pr))
        res_alloc.append(p["residual_allocated_bytes"] / max(1, p["measured_allocated_bytes"]))
        res_res.append(p["residual_reserved_bytes"] / max(1, p["measured_reserved_bytes"]))

    def summary(rs: list[float]) -> dict[str, float]:
        return {
            "max_abs_pct": round(100 * max(abs(r) for r in rs), 4),
            "rms_pct": round(100 * math.sqrt(sum(r * r for r in rs) / len(rs)), 4),
        }

    return DeviceProfile(
        name=name,
        device=device,
        hardware=hardware,
        workspace_bytes=workspace,
        reserved_scale=round(a, 6),
        reserved_offset_bytes=int(round(b)),
        context_bytes=context,
        context_source=context_source,
        gpu_key=gpu_key,
        basis=basis,
        measurements=points,
        residuals={"allocated": summary(res_alloc), "reserved": summary(res_res), "points": len(points)},
    )


def summary_lines(prof: DeviceProfile) -> list[str]:
    """The fitted terms and residuals of a profile, as calibrate prints them (every form)."""
    r = prof.residuals
    return [f"workspace {prof.workspace_bytes:,} B; reserved = {prof.reserved_scale:.4f} x model + "
            f"{prof.reserved_offset_bytes:,} B; context {prof.context_bytes:,} B ({prof.context_source})",
            f"residuals: allocated max {r['allocated']['max_abs_pct']:.3f}% rms {r['allocated']['rms_pct']:.3f}%; "
            f"reserved max {r['reserved']['max_abs_pct']:.3f}% rms {r['reserved']['rms_pct']:.3f}%"]


def save_and_report(prof: DeviceProfile, as_json: bool, out: Any, headline: Callable[[Path], str]) -> bool:
    """Save the profile under profiles/; print its JSON (returns True) or ``headline(path)`` and
    :func:`summary_lines` (returns False: the caller may add its own lines)."""
    from planner import profiles
    from planner.report.text import print_json as _print_json

    path = profiles.save(prof)
    if as_json:
        _print_json({"path": str(path), **prof.to_json()})
        return True
    out.print(headline(path), markup=False)
    for line in summary_lines(prof):
        out.print(line, markup=False)
    return False
