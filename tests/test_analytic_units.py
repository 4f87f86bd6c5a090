"""Op rules of the analytic estimator against bytes derived by hand.

Where torch is installed each derivation is also checked against the live-storage
tracker running the real module on fake tensors (the same CUDA emulation as
`vramplan profile`), so a rule that disagrees with torch fails here.
"""

from __future__ import annotations

import contextlib

import pytest

from planner.analytic import ops as O
from planner.analytic.engine import Sim
from planner.analytic.models import SpatialAttentionBlock
from planner.analytic.nn import ConvNd, GroupNorm, Linear
from planner.analytic.optim import Optimizer


def _sim(autocast: bool = False) -> Sim:
    sim = Sim()
    O.use(sim)
    if autocast:
        sim.enter_autocast(True)
    return sim


def _tracker_run(build, run, amp: bool = False):
    """Peak and post-forward live bytes of `run(*build())` under the real tracker."""
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from planner.measure.cuda_emulation import CudaEmulation
    from planner.measure.tracker import Category, LiveStorageTracker

    with FakeTensorMode(), CudaEmulation():
        mods, inputs = build(torch)
        tr = LiveStorageTracker()
        tr.track([p for m in mods for p in m.parameters()], Category.PARAMETERS)
        with tr:
            x = inputs()
            with torch.autocast("cpu", dtype=torch.float16) if amp else contextlib.nullcontext():
                out = run(mods, x)
            after_forward = tr.current
            out.float().sum().backward() if out.dtype != torch.float32 else out.sum().backward()
        return tr.peak, after_forward


def test_conv3d_rule():
    sim = _sim()
    conv = ConvNd(sim, 4, 8, 3, 1, 1)
    x = O.randn((1, 4, 8, 8, 8))
    y = O.conv(x, conv.weight, conv.bias, 1, 1)
    loss = O.sum_all(y)
    sim.backward(loss, sim.new((), "f32", "ones_like"))
    # weight 8*4*27 fp32 = 3456 B -> 3584; bias 8 fp32 = 32 B -> 512; x 4*8^3*4 = 8192;
    # y 8*8^3*4 = 16384 (saved: x and weight, not y; y is a live Python variable here);
    # loss and the ones seed 512 each; backward: x needs no grad, so convolution_backward
    # allocates grad_weight (3584) and grad_bias (512), stolen by AccumulateGrad.
    assert sim.mem.peak == 3584 + 512 + 8192 + 16384 + 512 + 512 + 3584 + 512 == 33792
    assert conv.weight.grad is not None and conv.weight.grad.nbytes == 3456


def test_conv3d_rule_matches_torch():
    def build(torch):
        conv = torch.nn.Conv3d(4, 8, 3, padding=1)
        return [conv], lambda: torch.randn(1, 4, 8, 8, 8)

    peak, _ = _tracker_run(build, lambda m, x: m[0](x))
    # same derivation as test_conv3d_rule, except that y is freed by `out.sum()` only
    # after the sum: the seed and grads come while y is alive (the closure holds it)
    assert peak == 33792


def test_group_norm_rule():
    sim = _sim()
    gn = GroupNorm(sim, 2, 8)
    x = O.randn((1, 8, 4, 4, 4))
    x.requires_grad = True
    out = O.group_norm(x, 2, gn.weight, gn.bias)
    loss = O.sum_all(out)
    sim.backward(loss, sim.new((), "f32", "ones_like"))
    # params: weight and bias, 8 fp32 each -> 512 + 512; x 8*64*4 = 2048 (a leaf that
    # requires grad); out 2048, mean and rstd (N*G = 2 fp32) 512 each; loss 512; seed 512.
    # Backward: sum's gradient is an expanded view of the seed, so native_group_norm's
    # formula grad.contiguous() copies it (2048), then grad_input 2048, grad_weight and
    # grad_bias 512 each.
    assert sim.mem.peak == 1024 + 2048 + 2048 + 512 + 512 + 512 + 512 + 2048 + 2048 + 512 + 512 == 12288


def test_group_norm_rule_matches_torch():
    def build(torch):
        gn = torch.nn.GroupNorm(2, 8)
        return [gn], lambda: torch.randn(1, 8, 4, 4, 4, requires_grad=True)

    peak, _ = _tracker_run(build, lambda m, x: m[0](x))
    assert peak == 12288


def test_fp16_cast_and_weight_cache():
    sim = _sim(autocast=True)
    conv = ConvNd(sim, 4, 8, 3, 1, 1)
    x = O.randn((1, 4, 8, 8, 8))
    before = sim.mem.current
    y1 = O.conv(x, conv.weight, conv.bias, 1, 1)
    # x16: 2048 values * 2 B = 4096; w16: 864 * 2 = 1728 -> 2048 (cached); b16: 16 B -> 512
    # (cached too: a leaf that requires grad); y1 fp16 8*512*2 = 8192
    assert sim.mem.current - before == 4096 + 2048 + 512 + 8192
    mid = sim.mem.current
    y2 = O.conv(x, conv.weight, conv.bias, 1, 1)
    # second call in the same region: x is cast again (not a leaf that requires grad),
    # weight and bias come from the cache: x16 4096 + y2 8192
    assert sim.mem.current - mid == 4096 + 8192
    assert y1.dtype == y2.dtype == "f16"


def test_attention_block_explicit_scores_are_quadratic():
    sim = _sim()
    blk = SpatialAttentionBlock(sim, 8, 4, flash=False)
    blk.name_tree("attn")
    params = sim.mem.current
    # GroupNorm 2 x 512; four Linear(8, 8): weight 256 B -> 512, bias 32 B -> 512
    assert params == 2 * 512 + 4 * (512 + 512) == 5120
    x = O.randn((1, 8, 4, 4, 4))
    x.requires_grad = True
    out = blk(x)
    # N = 64 positions, C = 8, fp32. Live after the forward:
    #   x 2048; norm out 2048 (kept: the q/k/v matmuls save the view of it), mean, rstd 512 each;
    #   q, k, v (64 x 8) 2048 each (bmm saves q, k; the second bmm saves v);
    #   softmax output 64 x 64 x 4 = 16384 (saved by softmax backward and the second bmm);
    #   second bmm output 2048 (saved by out_proj's addmm); block output 2048.
    # The scores before the scale (16384) and the out_proj output died on the way.
    assert sim.mem.current - params == 2048 + 2048 + 512 + 512 + 3 * 2048 + 16384 + 2048 + 2048 == 31744
    del out


def test_attention_block_flash_is_linear():
    sim = _sim()
    blk = SpatialAttentionBlock(sim, 8, 4, flash=True)
    blk.name_tree("attn")
    params = sim.mem.current
    x = O.randn((1, 8, 4, 4, 4))
    x.requires_grad = True
    out = blk(x)
    # fp32 -> CUDA picks the memory-efficient kernel: it keeps q, k, v, its output
    # (64 x 8 x 4 = 2048), the logsumexp (1 x 1 x 64 fp32 = 256 B -> 512) and two int64
    # philox scalars (512 each); no 64 x 64 scores.
    assert sim.mem.current - params == 2048 + 2048 + 512 + 512 + 3 * 2048 + 2048 + 512 + 512 + 512 + 2048 == 16896
    del out


@pytest.mark.parametrize("flash, expected", [(False, 31744), (True, 16896)])
def test_attention_block_matches_torch(flash, expected):
    def build(torch):
        from monai.networks.blocks import SpatialAttentionBlock as Real

        blk = Real(spatial_dims=3, num_channels=8, norm_num_groups=4, use_flash_attention=flash)
        return [blk], lambda: torch.randn(1, 8, 4, 4, 4, requires_grad=True)

    pytest.importorskip("monai")
    _, after_forward = _tracker_run(build, lambda m, x: m[0](x))
    assert after_forward == 5120 + expected


def test_adam_state_and_foreach_temporaries():
    sim = _sim()
    lin = Linear(sim, 8, 8)
    params = lin.parameters()
    for p in params:
        p.grad = sim.new(p.shape, p.dtype, "grad")
    opt = Optimizer(sim, "adam", params, "model")
    base = sim.mem.current  # params 2 x 512 + grads 2 x 512
    assert base == 2048
    opt.step()
    # state: exp_avg and exp_avg_sq per parameter (4 x 512), created by the first step;
    # _foreach_sqrt(exp_avg_sqs) is one temporary per parameter (2 x 512) during the step
    assert sim.mem.peak == base + 4 * 512 + 2 * 512
    assert sim.mem.current == base + 4 * 512
    opt.step()  # the second step adds no state
    assert sim.mem.current == base + 4 * 512
