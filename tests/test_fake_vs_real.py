"""The fake backend's peak equals the same step's peak on real CPU tensors.

Both runs use the same tracker and the same CUDA emulation (minus the SDPA kernels,
which exist only as fake-tensor meta kernels), fp32 and small volumes, so the only
difference is FakeTensorMode itself: its meta kernels must produce the same
storages, sizes, aliasing and lifetimes as the real kernels.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from planner.config import Overrides, resolve_setup  # noqa: E402
from planner.measure.step import run_step  # noqa: E402

CASES = {
    # the tutorial model at 32^3: autoencoder + discriminator + squeeze perceptual, Adam
    "stage1-default": Overrides(voxel="32x32x32", amp=False),
    "stage1-checkpointing-adamw": Overrides(voxel="32x32x32", amp=False, checkpointing=True, optimizer="adamw"),
    "stage1-no-perc-no-attn-sgd": Overrides(voxel="48x48x32", amp=False, perceptual=False, attention="F,F,F", optimizer="sgd"),
    "stage1-batch2-accum2": Overrides(voxel="32x32x32", amp=False, batch=2, accum=2),
    "stage2-unet": Overrides(kind="ldm-stage2", voxel="64x64x64", amp=False, batch=2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fake_peak_equals_real_cpu_peak(name):
    setup = resolve_setup(None, CASES[name])
    fake = run_step(setup, "fake", keep_timeline=False).tracker
    real = run_step(setup, "cpu", keep_timeline=False).tracker
    # exact for stage 1; stage 2 differs by a few scalar storages (DDPM scheduler
    # bookkeeping), well inside the 1% the issue allows
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)
    if name.startswith("stage1"):
        assert fake.peak_bytes == real.peak_bytes
    assert (fake.peak_op, fake.peak_step) == (real.peak_op, real.peak_step)
