"""The analytic LPIPS perceptual loss (planner.analytic.perceptual) against the profiler.

End to end: the estimator's peak equals the fake-tensor profiler's peak, to the byte,
for the stage-1 step with the 2.5D perceptual loss on (the three LPIPS trunks, fp32
and AMP). Plus a hand-derived check of the op that makes the frozen trunk special
under autocast: its weight casts are not cached.
"""

from __future__ import annotations

import pytest

from planner.analytic import ops as O
from planner.analytic.engine import Sim
from planner.analytic.perceptual import Conv2d
from planner.config import setup_from_dict


def _setup(voxel, net: str, amp: bool, ratio: float = 0.2, disc: bool = False):
    return setup_from_dict(
        {
            "data": {"voxel_size": list(voxel)},
            "autoencoder": {
                "training": {
                    "use_perceptual_loss": True,
                    "perceptual": {"network_type": net, "fake_3d_ratio": ratio},
                    "discriminator": {"enabled": disc},
                }
            },
            "device": {"mixed_precision": amp},
        }
    )


@pytest.mark.parametrize(
    "voxel,net,amp",
    [
        ((32, 32, 32), "squeeze", False),
        ((64, 64, 32), "squeeze", True),
        ((32, 32, 32), "alex", True),
        ((32, 32, 32), "vgg", False),
    ],
    ids=["squeeze-fp32-32", "squeeze-amp-64x64x32", "alex-amp-32", "vgg-fp32-32"],
)
def test_perceptual_step_peak_matches_profiler(voxel, net, amp):
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from planner.analytic.simulate import simulate
    from planner.measure.builtin_trace import run_step

    setup = _setup(voxel, net, amp)
    rec = run_step(setup, "fake", keep_timeline=False)
    est = simulate(setup)
    assert est.peak_bytes == rec.tracker.peak_bytes
    assert est.params["perceptual"] == rec.params["perceptual"]


# --- a frozen conv under autocast ------------------------------------------------------------
#
# Conv2d(4, 8, 3, padding=1) with requires_grad=False parameters, input (2, 4, 8, 8) fp32
# that requires grad (not a leaf: x = 2 * x0, as the trunk's input is the scaling
# layer's output), fp16 autocast, two calls in the same autocast region:
#   x0 leaf:        2*4*8*8 = 512 fp32 = 2048 B
#   x = x0 * 2:     2048 B (MulBackward0 saves nothing for a scalar)
#   per call:       x16 = 512 fp16 = 1024 B   (saved by ConvolutionBackward0)
#                   w16 = 8*4*3*3 = 288 fp16 = 576 B -> 1024 B (saved)
#                   b16 = 8 fp16 = 16 B -> 512 B (freed when the conv returns)
#                   y   = 2*8*8*8 = 1024 fp16 = 2048 B
# autocast caches only fp32 leaves that require grad (autocast_mode.cpp cached_cast), so
# the frozen weight and bias are cast again at the second call: each call leaves
# 1024 + 1024 + 2048 = 4096 B, and the peak is during the second call, with its bias copy:
#   after:  2048 + 2048 + 2 * 4096 = 12288 B
#   peak:   12288 + 512 = 12800 B (all above the parameters: w 1152 B -> 1536, b 32 B -> 512)
# With trainable weights (a lin layer's) the second call would reuse the cached w16 and b16.

PARAMS = 1536 + 512
AFTER = 2048 + 2048 + 2 * (1024 + 1024 + 2048)


def test_frozen_conv_casts_its_weight_at_every_call():
    sim = Sim()
    O.use(sim)
    conv = Conv2d(sim, 4, 8, 3, padding=1, trainable=False)
    assert sim.mem.current == PARAMS
    prev = sim.enter_autocast(True)
    x0 = O.randn((2, 4, 8, 8))
    x0.requires_grad = True
    x = O.mul(x0, 2.0)
    y1 = conv(x)
    y2 = conv(x)
    assert sim.mem.current - PARAMS == AFTER == 12288
    assert sim.mem.peak - PARAMS == AFTER + 512 == 12800
    assert y1.dtype == y2.dtype == "f16"
    assert id(conv.weight) not in sim.cast_cache and id(conv.bias) not in sim.cast_cache
    sim.exit_autocast(prev)

    # the same layer with trainable weights: the second call reuses the cached casts
    sim = Sim()
    O.use(sim)
    lin = Conv2d(sim, 4, 8, 3, padding=1, trainable=True)
    prev = sim.enter_autocast(True)
    x0 = O.randn((2, 4, 8, 8))
    x0.requires_grad = True
    x = O.mul(x0, 2.0)
    y1 = lin(x)
    mid = sim.mem.current
    y2 = lin(x)
    assert sim.mem.current - mid == 1024 + 2048  # x16 and y only
    sim.exit_autocast(prev)


def test_frozen_conv_matches_torch():
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from planner.measure.cuda_emulation import CudaEmulation
    from planner.measure.tracker import Category, LiveStorageTracker

    with FakeTensorMode(), CudaEmulation():
        conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        conv.requires_grad_(False)
        tr = LiveStorageTracker()
        tr.track(list(conv.parameters()), Category.PARAMETERS)
        assert tr.current == PARAMS
        with tr:
            x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
            x = x0 * 2.0
            with torch.autocast("cpu", dtype=torch.float16):
                y1 = conv(x)
                y2 = conv(x)
            assert tr.current - PARAMS == AFTER
            assert tr.peak - PARAMS == AFTER + 512
            assert y1.dtype == y2.dtype == torch.float16
