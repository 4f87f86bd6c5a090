"""Data for the scaling and timeline figures."""

from __future__ import annotations

from dataclasses import replace

from planner.errors import PlannerError
from planner.spec import DataSpec, TrainingSetup

SCALES = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0)
BATCHES = (1, 2, 4, 8, 16)


def _voxel_variants(setup: TrainingSetup) -> list[tuple[int, ...]]:
    step = 16  # keeps AutoencoderKL's and the discriminator's size constraints for 3-4 levels
    out = []
    for s in SCALES:
        v = tuple(max(32, int(round(d * s / step)) * step) for d in setup.data.voxel_size)
        if v not in out:
            out.append(v)
    return out


def scaling_series(rows, x: str) -> tuple[dict[str, tuple[list[float], list[float]]], str]:
    from planner.analytic.estimate import estimate

    if x not in ("voxel", "batch"):
        raise PlannerError(f"--x: '{x}' (valid: voxel, batch)")
    series = {}
    for label, setup in rows:
        name = ", ".join(f"{k}={v}" for k, v in label.items()) or "config"
        xs, ys = [], []
        if x == "voxel":
            for v in _voxel_variants(setup):
                try:
                    s = replace(setup, data=DataSpec(voxel_size=v, in_channels=setup.data.in_channels))
                except PlannerError:
                    continue
                n = 1
                for d in v:
                    n *= d
                xs.append(float(n))
                ys.append(float(estimate(s).device_total_bytes))
        else:
            for b in BATCHES:
                if setup.kind == "ldm-stage1":
                    tr = replace(setup.autoencoder.training, batch_size=b)
                    s = replace(setup, autoencoder=replace(setup.autoencoder, training=tr))
                else:
                    tr = replace(setup.diffusion.training, batch_size=b)
                    s = replace(setup, diffusion=replace(setup.diffusion, training=tr))
                xs.append(float(b))
                ys.append(float(estimate(s).device_total_bytes))
        series[name] = (xs, ys)
    return series, ("voxels per volume (H x W x D)" if x == "voxel" else "batch size")


def timeline_data(setup: TrainingSetup):
    from planner.measure.builtin_trace import run_step
    from planner.measure.tracker import category_of
    from planner.report.plot import timeline_points

    rec = run_step(setup, "fake", keep_timeline=False)
    info = rec.info

    def categorize(uid: int) -> str:
        return category_of(info[uid]).value

    def info_of(uid: int) -> tuple[str, str]:
        i = info[uid]
        return i.step.replace("it2.", ""), i.phase.value

    return timeline_points(rec.events, info_of, categorize, rec.iteration2_start)
