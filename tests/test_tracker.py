"""The live-storage tracker against byte counts derived by hand."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from planner.measure.cuda_emulation import CudaEmulation  # noqa: E402
from planner.measure.tracker import Category, LiveStorageTracker, round_alloc  # noqa: E402


def test_round_alloc_is_the_caching_allocators_512_byte_block():
    assert round_alloc(0) == 0
    assert round_alloc(1) == 512
    assert round_alloc(512) == 512
    assert round_alloc(513) == 1024
    # 8 fp32 values = 32 bytes -> one 512-byte block
    assert round_alloc(32) == 512


def _conv_gn_silu_step(fake: bool, amp: bool) -> LiveStorageTracker:
    ctx = FakeTensorMode() if fake else contextlib.nullcontext()
    with ctx, CudaEmulation(sdpa=False):
        torch.manual_seed(0)
        conv = torch.nn.Conv3d(4, 8, 3, padding=1)
        gn = torch.nn.GroupNorm(2, 8)
        act = torch.nn.SiLU()
        params = list(conv.parameters()) + list(gn.parameters())
        opt = torch.optim.SGD(params, lr=0.1, foreach=True)
        tracker = LiveStorageTracker()
        tracker.track(params, Category.PARAMETERS)
        with tracker:
            x = torch.randn(1, 4, 8, 8, 8)
            with torch.autocast("cpu", dtype=torch.float16) if amp else contextlib.nullcontext():
                loss = act(gn(conv(x))).float().sum()
            loss.backward()
            opt.step()
            tracker.after_step = tracker.current  # before the locals die
        return tracker


@pytest.mark.parametrize("fake", [False, True], ids=["real-cpu", "fake"])
def test_conv3d_groupnorm_silu_step_fp32(fake):
    tr = _conv_gn_silu_step(fake, amp=False)
    # Parameters: conv weight 8*4*3*3*3 = 864 fp32 = 3456 B -> 3584 (7 blocks of 512);
    # conv bias 8 fp32 = 32 B -> 512; GroupNorm weight and bias -> 512 each. Sum 5120.
    params = 3584 + 512 + 512 + 512
    x = 1 * 4 * 8 * 8 * 8 * 4  # 8192 B, a multiple of 512
    act_bytes = 1 * 8 * 8 * 8 * 8 * 4  # one (1, 8, 8, 8, 8) fp32 activation: 16384 B
    # Forward keeps: x, y = conv(x) (saved by group_norm), mean and rstd (N*G = 2 floats
    # -> 512 each), h = group_norm(y) (saved by silu), then silu's output until .sum()
    # reads it, and the 4-byte loss (-> 512). Backward: the ones seed (512) lives until
    # backward() returns (torch.autograd.backward holds grad_tensors); silu_backward makes
    # dh (16384); silu's saved h is released after its node runs; native_group_norm_backward
    # then allocates dy (16384) and the weight/bias grads (512 + 512) while y, mean, rstd,
    # dh are still alive. That is the peak:
    peak = params + x + act_bytes + 512 + 512 + 512 + 512 + act_bytes + act_bytes + 512 + 512
    #      params   x   y          mean  rstd  loss  seed  dh          dy          dgamma dbeta
    assert peak == 65536
    assert tr.peak == peak
    # After the step: params, x, loss and the four grads (3584 + 512 + 512 + 512).
    assert tr.after_step == params + x + 512 + (3584 + 512 + 512 + 512)


def test_conv3d_groupnorm_silu_step_amp_keeps_fp16_copies():
    # fake only: fp16 conv3d backward has no real CPU kernel
    tr = _conv_gn_silu_step(True, amp=True)
    # Under CUDA autocast conv3d runs in fp16: x and the weight are cast (x16 = 4096 B;
    # w16 = 864 * 2 = 1728 -> 2048, kept by the weight-cast cache and saved by the conv;
    # b16 = 16 B -> 512, not saved, freed after the conv). y16 = conv output (8192 B) is
    # not saved either: group_norm is on the fp32 list, so y16 is cast to y32 (16384) and
    # native_group_norm saves y32, then y16 dies. Its output h is fp32 (16384) and silu
    # keeps it; .float() of fp32 is a no-op. After the forward, live:
    params = 5120
    x = 8192
    fwd_live = params + x + 4096 + 2048 + 16384 + 512 + 512 + 16384 + 512
    #                    x16    w16    y32     mean  rstd  h       loss
    # The peak is again in group_norm's backward: h released by silu's node, the seed
    # (512), dh (16384), dy32 (16384), dgamma and dbeta (512 each) live:
    peak = fwd_live - 16384 + 512 + 16384 + 16384 + 512 + 512
    assert peak == 71680
    assert tr.peak == peak
    # fp32 would peak at 65536: autocast *adds* memory here (the fp16 copies of x and w
    # and the fp32 copy of y for group_norm), as it does for GroupNorm-heavy 3D nets.
