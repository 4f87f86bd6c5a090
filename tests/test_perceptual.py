"""Tests for planner.measure.lpips_nets (LPIPS in plain torch) and
planner.measure.perceptual (MONAI's PerceptualLoss, LPIPS network types)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from planner.errors import PlannerError
from planner.measure.lpips_nets import LPIPS, LPIPS_CHANNELS, ScalingLayer
from planner.measure.perceptual import PerceptualLoss

NETS = ["squeeze", "alex", "vgg"]


def _conv(cin: int, cout: int, k: int) -> int:
    """Parameters of a Conv2d with bias: weight cout*cin*k*k plus bias cout."""
    return cout * cin * k * k + cout


def _fire(cin: int, s: int, e1: int, e3: int) -> int:
    """torchvision Fire: squeeze 1x1 (cin->s), expand1x1 (s->e1), expand3x3 (s->e3)."""
    return _conv(cin, s, 1) + _conv(s, e1, 1) + _conv(s, e3, 3)


# ---------------------------------------------------------------------------
# Parameter counts of the feature stacks (all of them: the modules lpips leaves
# out, alexnet.features[12] and vgg16.features[30], are MaxPools, no params).
#
# alexnet().features, conv by conv (weight cout*cin*k*k + bias cout):
#   3->64   k11:     3*64*121 + 64  =    23_232 +  64 =    23_296
#   64->192 k5 :   64*192*25 + 192  =   307_200 + 192 =   307_392
#   192->384 k3:  192*384*9 + 384   =   663_552 + 384 =   663_936
#   384->256 k3:  384*256*9 + 256   =   884_736 + 256 =   884_992
#   256->256 k3:  256*256*9 + 256   =   589_824 + 256 =   590_080
#   total                                               = 2_469_696
#
# vgg16().features (cfg "D", all 3x3, padding 1):
#   3->64     1_728 +  64 =     1_792
#   64->64   36_864 +  64 =    36_928
#   64->128  73_728 + 128 =    73_856
#   128->128 147_456 + 128 =   147_584
#   128->256 294_912 + 256 =   295_168
#   256->256 589_824 + 256 =   590_080  (x2)
#   256->512 1_179_648 + 512 = 1_180_160
#   512->512 2_359_296 + 512 = 2_359_808 (x5: conv4_2, conv4_3, conv5_1..3)
#   total = 1_792+36_928+73_856+147_584+295_168+2*590_080+1_180_160+5*2_359_808
#         = 14_714_688
#
# squeezenet1_1().features: conv 3->64 k3 = 1_728+64 = 1_792, then Fire(cin,s,e1,e3)
#   = (cin*s + s) + (s*e1 + e1) + (s*e3*9 + e3):
#   Fire(64,16,64,64)     =  1_040 +  1_088 +   9_280 =  11_408
#   Fire(128,16,64,64)    =  2_064 +  1_088 +   9_280 =  12_432
#   Fire(128,32,128,128)  =  4_128 +  4_224 +  36_992 =  45_344
#   Fire(256,32,128,128)  =  8_224 +  4_224 +  36_992 =  49_440
#   Fire(256,48,192,192)  = 12_336 +  9_408 +  83_136 = 104_880
#   Fire(384,48,192,192)  = 18_480 +  9_408 +  83_136 = 111_024
#   Fire(384,64,256,256)  = 24_640 + 16_640 + 147_712 = 188_992
#   Fire(512,64,256,256)  = 32_832 + 16_640 + 147_712 = 197_184
#   total = 1_792 + 720_704 = 722_496
#   (cross-check: torchvision's SqueezeNet1_1 num_params 1_235_496 minus the
#    classifier conv 512*1000 + 1000 = 513_000 gives 722_496)
#
# LPIPS lin layers: one 1x1 conv, no bias, chn -> 1, per tapped layer:
#   alex    64+192+384+256+256             = 1_152
#   vgg     64+128+256+512+512             = 1_472
#   squeeze 64+128+256+384+384+512+512     = 2_240
# ---------------------------------------------------------------------------
TRUNK_PARAMS = {
    "alex": _conv(3, 64, 11) + _conv(64, 192, 5) + _conv(192, 384, 3) + _conv(384, 256, 3) + _conv(256, 256, 3),
    "vgg": (
        _conv(3, 64, 3) + _conv(64, 64, 3) + _conv(64, 128, 3) + _conv(128, 128, 3)
        + _conv(128, 256, 3) + 2 * _conv(256, 256, 3)
        + _conv(256, 512, 3) + 5 * _conv(512, 512, 3)
    ),
    "squeeze": _conv(3, 64, 3)
    + _fire(64, 16, 64, 64)
    + _fire(128, 16, 64, 64)
    + _fire(128, 32, 128, 128)
    + _fire(256, 32, 128, 128)
    + _fire(256, 48, 192, 192)
    + _fire(384, 48, 192, 192)
    + _fire(384, 64, 256, 256)
    + _fire(512, 64, 256, 256),
}
LIN_PARAMS = {"alex": 1_152, "vgg": 1_472, "squeeze": 2_240}


@pytest.fixture(scope="module")
def lpips_nets() -> dict[str, LPIPS]:
    torch.manual_seed(0)
    return {n: LPIPS(net=n) for n in NETS}


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def test_trunk_param_counts_match_torchvision(lpips_nets):
    assert TRUNK_PARAMS == {"alex": 2_469_696, "vgg": 14_714_688, "squeeze": 722_496}
    for n, m in lpips_nets.items():
        assert _numel(m.net.parameters()) == TRUNK_PARAMS[n], n


def test_lin_param_counts(lpips_nets):
    for n, m in lpips_nets.items():
        assert _numel(m.lins.parameters()) == LIN_PARAMS[n] == sum(LPIPS_CHANNELS[n]), n
        assert len(m.lins) == len(LPIPS_CHANNELS[n]) == m.L
        # lins.K and linK are the same modules (as lpips registers them)
        assert m.lins[0] is m.lin0
        # everything is the trunk, the lins, or the (buffer-only) scaling layer
        assert _numel(m.parameters()) == TRUNK_PARAMS[n] + LIN_PARAMS[n]


def test_grad_flags_and_eval_mode(lpips_nets):
    for m in lpips_nets.values():
        # lpips: trunk frozen (pnet_tune=False) ...
        assert not any(p.requires_grad for p in m.net.parameters())
        # ... lin layers left trainable (lpips does not freeze them, MONAI neither)
        assert all(p.requires_grad for p in m.lins.parameters())
        # eval_mode=True: constructor calls self.eval(), so the lin Dropouts are off
        assert not m.training
        assert all(not mod.training for mod in m.modules())
        assert isinstance(m.lin0.model[0], nn.Dropout) and isinstance(m.lin0.model[1], nn.Conv2d)
        assert m.lin0.model[1].bias is None
    loss = PerceptualLoss(spatial_dims=3, network_type="alex")
    # MONAI's PerceptualLoss itself stays in train mode; only its LPIPS child is eval
    assert loss.training and not loss.perceptual_function.training


def test_module_structure_matches_torchvision_layout(lpips_nets):
    sq = lpips_nets["squeeze"].net
    # slice names keep torchvision's feature indices (lpips: add_module(str(x), ...))
    assert [list(getattr(sq, f"slice{k}")._modules) for k in range(1, 8)] == [
        ["0", "1"], ["2", "3", "4"], ["5", "6", "7"], ["8", "9"], ["10"], ["11"], ["12"]
    ]
    pools = [m for m in sq.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.ceil_mode and p.kernel_size == 3 and p.stride == 2 for p in pools)
    relus = [m for m in sq.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 3 * 8 and all(r.inplace for r in relus)

    al = lpips_nets["alex"].net
    assert [list(getattr(al, f"slice{k}")._modules) for k in range(1, 6)] == [
        ["0", "1"], ["2", "3", "4"], ["5", "6", "7"], ["8", "9"], ["10", "11"]
    ]
    assert all(not p.ceil_mode for p in al.modules() if isinstance(p, nn.MaxPool2d))

    vg = lpips_nets["vgg"].net
    assert [len(getattr(vg, f"slice{k}")) for k in range(1, 6)] == [4, 5, 7, 7, 7]
    assert sum(isinstance(m, nn.Conv2d) for m in vg.modules()) == 13
    assert all(r.inplace for r in vg.modules() if isinstance(r, nn.ReLU))

    sd = lpips_nets["squeeze"].state_dict()
    for key in ("scaling_layer.shift", "net.slice2.3.expand3x3.weight", "lin6.model.1.weight", "lins.6.model.1.weight"):
        assert key in sd


# ---------------------------------------------------------------------------
# Slice output shapes for a 1x3x64x64 input. out = floor((in + 2p - k) / s) + 1,
# with ceil instead of floor for ceil_mode pools.
#
# alex:  conv k11 s4 p2: floor((64+4-11)/4)+1 = 14+1 = 15      -> 64x15x15
#        pool k3 s2: floor((15-3)/2)+1 = 7; conv k5 p2 keeps 7  -> 192x7x7
#        pool: floor((7-3)/2)+1 = 3; conv k3 p1 keeps 3          -> 384x3x3
#        conv k3 p1                                              -> 256x3x3
#        conv k3 p1 (final pool features[12] is not used)        -> 256x3x3
# vgg:   3x3 p1 convs keep the size, each slice after the first starts with a
#        2x2/2 pool: 64 -> 32 -> 16 -> 8 -> 4
#        -> 64x64x64, 128x32x32, 256x16x16, 512x8x8, 512x4x4
# squeeze: conv k3 s2 p0: floor((64-3)/2)+1 = 30+1 = 31          -> 64x31x31
#        pool (ceil): ceil((31-3)/2)+1 = 15, 2 Fires             -> 128x15x15
#        pool: ceil((15-3)/2)+1 = 7, 2 Fires                     -> 256x7x7
#        pool: ceil((7-3)/2)+1 = 3, Fire(256,48,192,192)         -> 384x3x3
#        Fire(384,48,..) 384x3x3; Fire(384,64,..) 512x3x3; Fire(512,64,..) 512x3x3
# (64 divides evenly, so ceil_mode changes nothing there; 66 shows it below.)
# ---------------------------------------------------------------------------
SHAPES_64 = {
    "alex": [(64, 15, 15), (192, 7, 7), (384, 3, 3), (256, 3, 3), (256, 3, 3)],
    "vgg": [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)],
    "squeeze": [(64, 31, 31), (128, 15, 15), (256, 7, 7), (384, 3, 3), (384, 3, 3), (512, 3, 3), (512, 3, 3)],
}


@pytest.mark.parametrize("net", NETS)
def test_slice_shapes_64(lpips_nets, net):
    m = lpips_nets[net]
    with torch.no_grad():
        outs = m.net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, *s) for s in SHAPES_64[net]]
    assert [o.shape[1] for o in outs] == m.chns


def test_squeeze_ceil_mode_66(lpips_nets):
    # 66: conv floor((66-3)/2)+1 = 32; pool ceil((32-3)/2)+1 = ceil(14.5)+1 = 16
    # (floor would give 15); ceil((16-3)/2)+1 = 8 (floor: 7); ceil((8-3)/2)+1 = 4 (floor: 3)
    with torch.no_grad():
        outs = lpips_nets["squeeze"].net(torch.randn(1, 3, 66, 66))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32), (16, 16), (8, 8), (4, 4), (4, 4), (4, 4), (4, 4)]


def test_lpips_forward_semantics(lpips_nets):
    m = lpips_nets["vgg"]
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        val, res = m(x, y, retPerLayer=True)
        assert val.shape == (2, 1, 1, 1) and len(res) == 5
        assert torch.allclose(val, sum(res))
        assert torch.equal(m(x, y), val)  # eval mode: Dropout inactive, deterministic
        assert torch.equal(m(x, x), torch.zeros_like(val))
        # 1-channel input broadcasts to 3 channels in the scaling layer
        g = torch.rand(2, 1, 32, 32)
        assert torch.allclose(m(g, y), m(g.expand(2, 3, 32, 32), y))
        # normalize=True maps [0,1] to [-1,1] first
        assert torch.allclose(m(x, y, normalize=True), m(2 * x - 1, 2 * y - 1))
    sl = ScalingLayer()
    assert torch.allclose(sl(torch.zeros(1, 3, 1, 1)).flatten(), torch.tensor([0.030 / 0.458, 0.088 / 0.448, 0.188 / 0.450]))


# ---------------------------------------------------------------------------
# PerceptualLoss
# ---------------------------------------------------------------------------
# Smallest slices each trunk accepts: alex needs >= 31 (conv1 output >= 7 so both
# pools leave >= 1), squeeze >= 17 (three ceil-mode pools), vgg >= 16 (four /2 pools).
REAL_SIZES = {"squeeze": 20, "alex": 32, "vgg": 16}


@pytest.mark.parametrize("net", NETS)
def test_perceptual_loss_real_3d(net):
    torch.manual_seed(0)
    s = REAL_SIZES[net]
    loss_fn = PerceptualLoss(spatial_dims=3, network_type=net, is_fake_3d=True, fake_3d_ratio=0.5)
    x = torch.rand(1, 1, s, s, s, requires_grad=True)
    y = torch.rand(1, 1, s, s, s)
    loss = loss_fn(x, y)
    # (random lin weights can be negative, so the sign of the value is arbitrary)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_perceptual_loss_2d():
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(spatial_dims=2, network_type="ALEX")  # case-insensitive, as MONAI
    loss = loss_fn(torch.rand(2, 1, 40, 40), torch.rand(2, 1, 40, 40))
    assert loss.dim() == 0 and math.isfinite(loss.item())


@pytest.mark.parametrize("net", NETS)
def test_perceptual_loss_fake_tensor_mode(net):
    with FakeTensorMode():
        loss_fn = PerceptualLoss(spatial_dims=3, network_type=net, is_fake_3d=True, fake_3d_ratio=0.5)
        x = torch.randn(1, 1, 64, 64, 32, requires_grad=True)
        y = torch.randn(1, 1, 64, 64, 32)
        loss = loss_fn(x, y)
        assert isinstance(loss, FakeTensor)
        assert loss.shape == () and loss.dtype == torch.float32
        loss.backward()
        assert isinstance(x.grad, FakeTensor) and x.grad.shape == x.shape


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_same_values_and_ops_as_monai(monkeypatch):
    """MONAI's own PerceptualLoss, with lpips.LPIPS swapped for our LPIPS
    instance, gives the same loss and the same aten op sequence as ours."""
    monai_perceptual = pytest.importorskip("monai.losses.perceptual")
    torch.manual_seed(0)
    ours = PerceptualLoss(spatial_dims=3, network_type="squeeze", fake_3d_ratio=0.5)
    monkeypatch.setattr(monai_perceptual, "LPIPS", lambda **kwargs: ours.perceptual_function)
    theirs = monai_perceptual.PerceptualLoss(spatial_dims=3, network_type="squeeze", fake_3d_ratio=0.5)
    assert theirs.perceptual_function is ours.perceptual_function

    x = torch.rand(1, 1, 20, 24, 18)
    y = torch.rand(1, 1, 20, 24, 18)
    results = []
    for fn in (theirs, ours):
        torch.manual_seed(123)  # same randperm draws
        # the lin weights require grad (as in lpips), so clear what the last
        # backward accumulated, else the second run adds add_ ops
        ours.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with _OpLog() as log:
            loss = fn(xi, y)
            loss.backward()
        results.append((loss.detach(), xi.grad, log.ops))
    (l_m, g_m, ops_m), (l_o, g_o, ops_o) = results
    assert ops_o == ops_m
    for op in ("aten.randperm.default", "aten.index_select.default", "aten.clone.default", "aten.convolution.default"):
        assert op in ops_o
    assert torch.equal(l_o, l_m) and torch.equal(g_o, g_m)


def test_bad_inputs_raise_planner_error():
    with pytest.raises(PlannerError, match=r"'resnet18'.*squeeze, alex, vgg"):
        PerceptualLoss(spatial_dims=3, network_type="resnet18")
    with pytest.raises(PlannerError, match="spatial_dims"):
        PerceptualLoss(spatial_dims=1)
    with pytest.raises(PlannerError, match="is_fake_3d"):
        PerceptualLoss(spatial_dims=3, network_type="vgg", is_fake_3d=False)
    loss_fn = PerceptualLoss(spatial_dims=2, network_type="vgg")
    with pytest.raises(PlannerError, match="differing shape"):
        loss_fn(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 32))
