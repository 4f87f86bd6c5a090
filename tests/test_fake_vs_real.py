"""The fake backend's peak equals the same step's peak on real CPU tensors.

Both runs use the same tracker and the same CUDA emulation (minus the SDPA kernels
and cuDNN's conv layouts, which real CPU kernels cannot follow), fp32 and small
volumes, so the only
difference is FakeTensorMode itself: its meta kernels must produce the same
storages, sizes, aliasing and lifetimes as the real kernels.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from planner.config import Overrides, resolve_setup, setup_from_dict  # noqa: E402
from planner.measure.builtin_trace import run_step  # noqa: E402

# Known divergence, not a FakeTensorMode error: an attention block's output (x + residual,
# where x is a transposed view) is channels-last. cuDNN and the meta kernel keep a
# channels-last conv input channels-last; the real CPU conv3d kernels return contiguous
# outputs, and CUDA's group_norm then copies channels-last inputs to contiguous. Where
# such a tensor reaches a conv before a group_norm the real-CPU run is not a CUDA
# reference, so the attention-free case below turns off the non-local blocks as well.
NO_ATTENTION = setup_from_dict({
    "data": {"voxel_size": [48, 48, 32]},
    "autoencoder": {
        "attention_levels": [False, False, False],
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
        "training": {"use_perceptual_loss": False, "optimizer": "sgd"},
    },
    "device": {"mixed_precision": False},
})

CASES = {
    # the tutorial model at 32^3: autoencoder + discriminator + squeeze perceptual, Adam
    "stage1-default": Overrides(voxel="32x32x32", amp=False),
    "stage1-checkpointing-adamw": Overrides(voxel="32x32x32", amp=False, checkpointing=True, optimizer="adamw"),
    "stage1-no-perc-no-attn-sgd": NO_ATTENTION,
    "stage1-batch2-accum2": Overrides(voxel="32x32x32", amp=False, batch=2, accum=2),
    "stage2-unet": Overrides(kind="ldm-stage2", voxel="64x64x64", amp=False, batch=2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fake_peak_equals_real_cpu_peak(name):
    case = CASES[name]
    setup = case if not isinstance(case, Overrides) else resolve_setup(None, case)
    # cuDNN's channels-last conv layout is emulated only for fake tensors; the real CPU
    # kernels follow the CPU rule, so both sides use the CPU rule here
    fake = run_step(setup, "fake", keep_timeline=False, cudnn_layout=False).tracker
    real = run_step(setup, "cpu", keep_timeline=False).tracker
    # exact for stage 1; stage 2 differs by a few scalar storages (DDPM scheduler
    # bookkeeping), well inside the 1% the issue allows
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)
    if name.startswith("stage1"):
        assert fake.peak_bytes == real.peak_bytes
    assert (fake.peak_op, fake.peak_step) == (real.peak_op, real.peak_step)
