"""The analytic diffusion UNet step (planner.analytic.unet) against the profiler.

End to end: for the stage-2 step (DiffusionInferer + DDPMScheduler noise prediction,
MSE, GradScaler, optimizer; two iterations, peak over the second) the estimator's
peak equals the fake-tensor profiler's peak to the byte, in fp32 and AMP, with the
explicit-score and the SDPA (flash / memory-efficient) attention paths, one and
several heads, latent and image input.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner.config import Overrides, resolve_setup, setup_from_dict

CASES = {
    # default UNet (64, 64, 128), attention at the last level, one 128-channel head
    "fp32-b2": Overrides(kind="ldm-stage2", voxel="64x64x32", batch=2, amp=False),
    "amp-b2-flash": Overrides(kind="ldm-stage2", voxel="64x64x32", batch=2, amp=True, flash_attention=True),
    # fp32 + flash flag: CUDA picks the memory-efficient kernel
    "fp32-b1-efficient-sgd": Overrides(
        kind="ldm-stage2", voxel="64x64x32", batch=1, amp=False, flash_attention=True, optimizer="sgd"
    ),
    "amp-b2-ch32-64-64-attFTT": Overrides(
        kind="ldm-stage2", voxel="64x64x64", batch=2, amp=True, channels="32,64,64", attention="F,T,T"
    ),
    # two heads per attention block, diffusion on the image itself, gradient accumulation
    "amp-2heads-image-accum2": setup_from_dict({
        "kind": "ldm-stage2",
        "data": {"voxel_size": [32, 32, 32]},
        "diffusion": {
            "input": "image",
            "num_channels": [32, 64, 64],
            "attention_levels": [False, True, True],
            "num_head_channels": [0, 32, 32],
            "training": {"batch_size": 2, "gradient_accumulation_steps": 2},
        },
        "device": {"mixed_precision": True},
    }),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unet_step_peak_matches_profiler(name):
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from planner.analytic.simulate import simulate
    from planner.measure.builtin_trace import run_step

    case = CASES[name]
    setup = case if not isinstance(case, Overrides) else resolve_setup(None, case)
    rec = run_step(setup, "fake", keep_timeline=False)
    est = simulate(setup)
    assert est.peak_bytes == rec.tracker.peak_bytes
    assert est.params == rec.params
    tr = rec.tracker
    assert est.peak_where == (tr.peak_op, tr.peak_phase, tr.peak_step, tr.peak_module)


def test_unet_estimator_is_torch_free():
    code = (
        "import sys\n"
        "from planner.config import Overrides, resolve_setup\n"
        "from planner.analytic.simulate import simulate\n"
        "s = resolve_setup(None, Overrides(kind='ldm-stage2', voxel='64x64x32', batch=1))\n"
        "assert simulate(s).peak_bytes > 0\n"
        "assert 'torch' not in sys.modules, 'the estimator imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
