"""LPIPS (Zhang et al. 2018) in plain torch, without torchvision or weight files.

``vramplan`` measures the memory of MONAI's ``PerceptualLoss``, which for the
``"alex"``, ``"vgg"`` and ``"squeeze"`` network types wraps ``lpips.LPIPS``
(pip package ``lpips``, metric version ``'0.1'``, ``lpips=True``,
``spatial=False``). That class builds its trunk from torchvision feature
stacks and downloads weights; neither is available (or wanted) here. This
module rebuilds the same modules, with the same layer types, ``inplace`` flags,
``ceil_mode``, padding, module order and module names (so the state-dict keys
match ``lpips``' and the autograd op sequence, hence memory, is identical),
with randomly initialised weights.

Sources followed (read via the code index):

* ``richzhang/PerceptualSimilarity`` ``lpips/lpips.py`` (commit c82f1ed, the
  ``lpips`` 0.1.x code: ``LPIPS``, ``ScalingLayer``, ``NetLinLayer``,
  ``spatial_average``, ``self.lins = nn.ModuleList(...)``, ``val = 0`` sum);
* ``richzhang/PerceptualSimilarity`` ``lpips/pretrained_networks.py`` (commit
  9606c35: ``squeezenet``/``alexnet``/``vgg16`` slice boundaries and
  ``requires_grad=False`` for the trunk);
* ``richzhang/PerceptualSimilarity`` ``lpips/__init__.py`` (``normalize_tensor``:
  eps added *outside* the sqrt, unlike MONAI's own ``normalize_tensor``);
* ``pytorch/vision`` ``torchvision/models/squeezenet.py`` (``Fire``,
  ``SqueezeNet(version="1_1").features`` and its conv init),
  ``torchvision/models/alexnet.py`` (``AlexNet.features``, default init) and
  ``torchvision/models/vgg.py`` (``make_layers(cfgs["D"])`` and
  ``VGG._initialize_weights``).

Everything here is constructible and runnable under
``torch._subclasses.fake_tensor.FakeTensorMode``: no ``.item()``, no
data-dependent control flow, no file I/O.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.init as init

__all__ = [
    "LPIPS",
    "LPIPS_CHANNELS",
    "Fire",
    "NetLinLayer",
    "ScalingLayer",
    "alexnet",
    "alexnet_features",
    "normalize_tensor",
    "spatial_average",
    "squeezenet",
    "squeezenet1_1_features",
    "vgg16",
    "vgg16_features",
]

# Channels of the tapped feature maps, as ``LPIPS.__init__`` sets ``self.chns``.
LPIPS_CHANNELS: dict[str, list[int]] = {
    "vgg": [64, 128, 256, 512, 512],
    "alex": [64, 192, 384, 256, 256],
    "squeeze": [64, 128, 256, 384, 384, 512, 512],
}


# --------------------------------------------------------------------------
# torchvision feature stacks (randomly initialised, as torchvision does with
# ``weights=None``)
# --------------------------------------------------------------------------


class Fire(nn.Module):
    """``torchvision.models.squeezenet.Fire``, same attribute names and forward."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


def squeezenet1_1_features() -> nn.Sequential:
    """``torchvision.models.squeezenet1_1(weights=None).features`` (13 modules).

    Init as ``SqueezeNet.__init__``: ``kaiming_uniform_`` on every conv weight
    of the features, biases zero (the differently initialised ``final_conv``
    lives in the classifier, which LPIPS does not use).
    """
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=3, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 16, 64, 64),
        Fire(128, 16, 64, 64),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(128, 32, 128, 128),
        Fire(256, 32, 128, 128),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(256, 48, 192, 192),
        Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256),
        Fire(512, 64, 256, 256),
    )
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                init.constant_(m.bias, 0)
    return features


def alexnet_features() -> nn.Sequential:
    """``torchvision.models.alexnet(weights=None).features`` (13 modules).

    torchvision's ``AlexNet`` applies no custom init, so the ``nn.Conv2d``
    defaults stand.
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


# torchvision/models/vgg.py ``cfgs["D"]`` (VGG16, no batch norm).
_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features() -> nn.Sequential:
    """``torchvision.models.vgg16(weights=None).features`` (31 modules).

    Built by ``make_layers(cfgs["D"], batch_norm=False)``; init as
    ``VGG._initialize_weights`` (``kaiming_normal_(fan_out, relu)``, bias 0).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for v in _VGG16_CFG:
        if isinstance(v, int):
            conv2d = nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1)
            layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
        else:
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
    features = nn.Sequential(*layers)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
    return features


# --------------------------------------------------------------------------
# lpips/pretrained_networks.py: the sliced trunks
# --------------------------------------------------------------------------


def _fill_slices(owner: nn.Module, features: nn.Sequential, bounds: list[tuple[int, int]]) -> None:
    """``for x in range(a, b): self.sliceK.add_module(str(x), features[x])``."""
    for k, (start, stop) in enumerate(bounds, start=1):
        sl = nn.Sequential()
        for x in range(start, stop):
            sl.add_module(str(x), features[x])
        setattr(owner, f"slice{k}", sl)


def _freeze(module: nn.Module, requires_grad: bool) -> None:
    if not requires_grad:
        for param in module.parameters():
            param.requires_grad = False


class squeezenet(nn.Module):  # noqa: N801 - name as in lpips
    """``lpips.pretrained_networks.squeezenet``: 7 slices of squeezenet1_1.features."""

    # features[12] is the last module: all 13 are used.
    BOUNDS = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)]

    def __init__(self, requires_grad: bool = False) -> None:
        super().__init__()
        _fill_slices(self, squeezenet1_1_features(), self.BOUNDS)
        self.N_slices = 7
        _freeze(self, requires_grad)

    def forward(self, X: torch.Tensor):  # noqa: N803 - name as in lpips
        h = self.slice1(X)
        h_relu1 = h
        h = self.slice2(h)
        h_relu2 = h
        h = self.slice3(h)
        h_relu3 = h
        h = self.slice4(h)
        h_relu4 = h
        h = self.slice5(h)
        h_relu5 = h
        h = self.slice6(h)
        h_relu6 = h
        h = self.slice7(h)
        h_relu7 = h
        return _SqueezeOutputs(h_relu1, h_relu2, h_relu3, h_relu4, h_relu5, h_relu6, h_relu7)


class alexnet(nn.Module):  # noqa: N801 - name as in lpips
    """``lpips.pretrained_networks.alexnet``: 5 slices of alexnet.features[:12]."""

    # features[12] (the last MaxPool2d) is not used by lpips.
    BOUNDS = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]

    def __init__(self, requires_grad: bool = False) -> None:
        super().__init__()
        _fill_slices(self, alexnet_features(), self.BOUNDS)
        self.N_slices = 5
        _freeze(self, requires_grad)

    def forward(self, X: torch.Tensor):  # noqa: N803
        h = self.slice1(X)
        h_relu1 = h
        h = self.slice2(h)
        h_relu2 = h
        h = self.slice3(h)
        h_relu3 = h
        h = self.slice4(h)
        h_relu4 = h
        h = self.slice5(h)
        h_relu5 = h
        return _AlexnetOutputs(h_relu1, h_relu2, h_relu3, h_relu4, h_relu5)


class vgg16(nn.Module):  # noqa: N801 - name as in lpips
    """``lpips.pretrained_networks.vgg16``: 5 slices of vgg16.features[:30]."""

    # features[30] (the last MaxPool2d) is not used by lpips.
    BOUNDS = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]

    def __init__(self, requires_grad: bool = False) -> None:
        super().__init__()
        _fill_slices(self, vgg16_features(), self.BOUNDS)
        self.N_slices = 5
        _freeze(self, requires_grad)

    def forward(self, X: torch.Tensor):  # noqa: N803
        h = self.slice1(X)
        h_relu1_2 = h
        h = self.slice2(h)
        h_relu2_2 = h
        h = self.slice3(h)
        h_relu3_3 = h
        h = self.slice4(h)
        h_relu4_3 = h
        h = self.slice5(h)
        h_relu5_3 = h
        return _VggOutputs(h_relu1_2, h_relu2_2, h_relu3_3, h_relu4_3, h_relu5_3)


# lpips builds these namedtuple classes inside forward; defining them once is
# behaviourally identical (a tuple of the same tensors).
_SqueezeOutputs = namedtuple("SqueezeOutputs", ["relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7"])
_AlexnetOutputs = namedtuple("AlexnetOutputs", ["relu1", "relu2", "relu3", "relu4", "relu5"])
_VggOutputs = namedtuple("VggOutputs", ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"])


# --------------------------------------------------------------------------
# lpips/__init__.py and lpips/lpips.py
# --------------------------------------------------------------------------


def normalize_tensor(in_feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``lpips.normalize_tensor``: eps is added to the norm, outside the sqrt.

    (MONAI's ``monai.losses.perceptual.normalize_tensor`` puts eps inside the
    sqrt, but the LPIPS path of MONAI's loss uses lpips' own function.)
    """
    norm_factor = torch.sqrt(torch.sum(in_feat**2, dim=1, keepdim=True))
    return in_feat / (norm_factor + eps)


def spatial_average(in_tens: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    return in_tens.mean([2, 3], keepdim=keepdim)


class ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.Tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.Tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        # A 1-channel input broadcasts to 3 channels here (MONAI relies on it).
        return (inp - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """A single linear layer which does a 1x1 conv (lpips.lpips.NetLinLayer)."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers += [nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


_TRUNKS = {"vgg": vgg16, "vgg16": vgg16, "alex": alexnet, "squeeze": squeezenet}


class LPIPS(nn.Module):
    """``lpips.LPIPS`` for ``version='0.1'``, ``lpips=True``, ``spatial=False``.

    Defaults as lpips: ``pnet_tune=False`` (trunk frozen), ``use_dropout=True``
    (a Dropout in front of every lin layer), ``eval_mode=True`` (the
    constructor calls ``self.eval()``, so that Dropout is inactive unless a
    parent later calls ``.train()``). The lin layers keep
    ``requires_grad=True``: lpips freezes only the trunk, and MONAI's
    ``PerceptualLoss`` does not freeze anything on the LPIPS path.

    Weights are random (lpips would load ImageNet trunk weights and the
    calibrated lin weights from ``weights/v0.1/<net>.pth``; shapes are the same).
    """

    def __init__(
        self,
        net: str = "alex",
        pnet_tune: bool = False,
        use_dropout: bool = True,
        eval_mode: bool = True,
    ) -> None:
        super().__init__()
        if net not in _TRUNKS:
            raise ValueError(f"LPIPS net {net!r} is not one of 'alex', 'vgg', 'squeeze'")
        self.pnet_type = net
        self.pnet_tune = pnet_tune
        self.pnet_rand = True  # no pretrained trunk weights here
        self.spatial = False
        self.lpips = True
        self.version = "0.1"
        self.scaling_layer = ScalingLayer()

        self.chns = list(LPIPS_CHANNELS["vgg" if net == "vgg16" else net])
        self.L = len(self.chns)

        self.net = _TRUNKS[net](requires_grad=self.pnet_tune)

        self.lin0 = NetLinLayer(self.chns[0], use_dropout=use_dropout)
        self.lin1 = NetLinLayer(self.chns[1], use_dropout=use_dropout)
        self.lin2 = NetLinLayer(self.chns[2], use_dropout=use_dropout)
        self.lin3 = NetLinLayer(self.chns[3], use_dropout=use_dropout)
        self.lin4 = NetLinLayer(self.chns[4], use_dropout=use_dropout)
        lins = [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]
        if self.pnet_type == "squeeze":  # 7 layers for squeezenet
            self.lin5 = NetLinLayer(self.chns[5], use_dropout=use_dropout)
            self.lin6 = NetLinLayer(self.chns[6], use_dropout=use_dropout)
            lins += [self.lin5, self.lin6]
        # lpips registers the same modules twice (linK and lins.K); the
        # parameters are shared, parameters() yields each once.
        self.lins = nn.ModuleList(lins)

        if eval_mode:
            self.eval()

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: bool = False, normalize: bool = False):  # noqa: N803
        if normalize:  # turn on this flag if input is [0,1] so it can be adjusted to [-1, +1]
            in0 = 2 * in0 - 1
            in1 = 2 * in1 - 1

        # version '0.1': inputs go through the scaling layer
        in0_input, in1_input = (self.scaling_layer(in0), self.scaling_layer(in1))
        outs0, outs1 = self.net.forward(in0_input), self.net.forward(in1_input)
        feats0, feats1, diffs = {}, {}, {}

        for kk in range(self.L):
            feats0[kk], feats1[kk] = normalize_tensor(outs0[kk]), normalize_tensor(outs1[kk])
            diffs[kk] = (feats0[kk] - feats1[kk]) ** 2

        # lpips=True, spatial=False
        res = [spatial_average(self.lins[kk](diffs[kk]), keepdim=True) for kk in range(self.L)]

        # As lpips 0.1.x: ``0 + res[0]`` allocates a fresh tensor, the later
        # ``+=`` are in place on it (res[0] itself is not modified).
        val = 0
        for l in range(self.L):  # noqa: E741
            val += res[l]

        if retPerLayer:
            return (val, res)
        else:
            return val
