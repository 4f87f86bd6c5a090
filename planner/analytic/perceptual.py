"""MONAI's 2.5D LPIPS PerceptualLoss, lowered to symbolic ops.

Mirrors :mod:`planner.measure.perceptual` (``monai.losses.perceptual.PerceptualLoss``
of MONAI 1.6.1 for the LPIPS network types) and :mod:`planner.measure.lpips_nets`
(``lpips.LPIPS`` 0.1: ScalingLayer, the squeeze/alex/vgg trunks sliced as
``lpips.pretrained_networks``, ``normalize_tensor``, ``NetLinLayer``,
``spatial_average``) statement by statement, with the same local variables and
containers, so tensors live exactly as long as in the real code:

* per spatial axis: ``x.float().permute(...).contiguous()`` (a copy unless the
  permutation is already contiguous, e.g. moving a size-1 channel axis), ``view``,
  ``torch.randperm(B*S)[:int(B*S*ratio)]`` and ``index_select`` of the input, then of
  the target; only the number of slices matters for memory;
* the trunk is frozen (requires_grad False): under autocast its weights are cast
  again at every call (autocast caches only weights that require grad) and the
  convolutions on the input path keep their fp16 weight copy for backward;
* the lin layers (1x1 convs, no bias) require grad (lpips freezes only the trunk,
  MONAI freezes nothing) but are in no optimizer: their ``.grad`` accumulates;
* LPIPS is in eval mode: its Dropout layers are the identity;
* ReLUs are in place; max pools return indices (CUDA's max_pool2d_with_indices).
"""

from __future__ import annotations

from planner.analytic import ops as O
from planner.analytic import ops_extra as X
from planner.analytic.engine import Sim, T
from planner.analytic.nn import Mod

LPIPS_CHANNELS: dict[str, list[int]] = {
    "vgg": [64, 128, 256, 512, 512],
    "alex": [64, 192, 384, 256, 256],
    "squeeze": [64, 128, 256, 384, 384, 512, 512],
}


# --- layers ------------------------------------------------------------------------------------


class Conv2d(Mod):
    """nn.Conv2d; ``trainable=False`` for the frozen trunk."""

    def __init__(self, sim: Sim, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True, trainable: bool = True):
        super().__init__()
        self.weight = self.param(sim, (cout, cin, k, k), trainable)
        self.bias = self.param(sim, (cout,), trainable) if bias else None
        self.stride, self.padding = stride, padding

    def forward(self, x: T) -> T:
        return X.conv(x, self.weight, self.bias, self.stride, self.padding)


class ReLU(Mod):
    """nn.ReLU(inplace=True)."""

    def forward(self, x: T) -> T:
        return O.relu_(x)


class MaxPool2d(Mod):
    def __init__(self, k: int, s: int, ceil_mode: bool = False):
        super().__init__()
        self.k, self.s, self.ceil_mode = k, s, ceil_mode

    def forward(self, x: T) -> T:
        return X.max_pool2d(x, self.k, self.s, 0, self.ceil_mode)


class Dropout(Mod):
    """nn.Dropout in eval mode: the input itself."""

    def forward(self, x: T) -> T:
        return x


class Sequential(Mod):
    def __init__(self, items: list[tuple[str, Mod]]):
        super().__init__()
        self.items = []
        for name, m in items:
            self.add(name, m)
            self.items.append(m)

    def forward(self, input: T) -> T:  # noqa: A002 - as nn.Sequential
        for module in self.items:
            input = module(input)
        return input


class Fire(Mod):
    """torchvision.models.squeezenet.Fire."""

    fsdp_unit = True  # squeeze: the repeated block with the most parameters (stepfile.repeated_blocks)

    def __init__(self, sim: Sim, inplanes: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = self.add("squeeze", Conv2d(sim, inplanes, squeeze, 1, trainable=False))
        self.squeeze_activation = self.add("squeeze_activation", ReLU())
        self.expand1x1 = self.add("expand1x1", Conv2d(sim, squeeze, e1, 1, trainable=False))
        self.expand1x1_activation = self.add("expand1x1_activation", ReLU())
        self.expand3x3 = self.add("expand3x3", Conv2d(sim, squeeze, e3, 3, padding=1, trainable=False))
        self.expand3x3_activation = self.add("expand3x3_activation", ReLU())

    def forward(self, x: T) -> T:
        x = self.squeeze_activation(self.squeeze(x))
        return O.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


# --- trunks (torchvision feature stacks, sliced as lpips.pretrained_networks) -------------------


def _squeezenet_features(sim: Sim) -> list[Mod]:
    return [
        Conv2d(sim, 3, 64, 3, stride=2, trainable=False),
        ReLU(),
        MaxPool2d(3, 2, ceil_mode=True),
        Fire(sim, 64, 16, 64, 64),
        Fire(sim, 128, 16, 64, 64),
        MaxPool2d(3, 2, ceil_mode=True),
        Fire(sim, 128, 32, 128, 128),
        Fire(sim, 256, 32, 128, 128),
        MaxPool2d(3, 2, ceil_mode=True),
        Fire(sim, 256, 48, 192, 192),
        Fire(sim, 384, 48, 192, 192),
        Fire(sim, 384, 64, 256, 256),
        Fire(sim, 512, 64, 256, 256),
    ]


def _alexnet_features(sim: Sim) -> list[Mod]:
    # features[12] (the last MaxPool2d) is not used by lpips; it has no parameters
    return [
        Conv2d(sim, 3, 64, 11, stride=4, padding=2, trainable=False),
        ReLU(),
        MaxPool2d(3, 2),
        Conv2d(sim, 64, 192, 5, padding=2, trainable=False),
        ReLU(),
        MaxPool2d(3, 2),
        Conv2d(sim, 192, 384, 3, padding=1, trainable=False),
        ReLU(),
        Conv2d(sim, 384, 256, 3, padding=1, trainable=False),
        ReLU(),
        Conv2d(sim, 256, 256, 3, padding=1, trainable=False),
        ReLU(),
    ]


_VGG16_CFG: list = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]  # "M" #30 unused


def _vgg16_features(sim: Sim) -> list[Mod]:
    layers: list[Mod] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(MaxPool2d(2, 2))
        else:
            layers += [Conv2d(sim, cin, v, 3, padding=1, trainable=False), ReLU()]
            cin = v
    return layers


_TRUNKS = {
    "squeeze": (_squeezenet_features, [(0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)]),
    "alex": (_alexnet_features, [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]),
    "vgg": (_vgg16_features, [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]),
}


class Trunk(Mod):
    """lpips.pretrained_networks.{squeezenet, alexnet, vgg16}: sliceK hold features[a:b]."""

    def __init__(self, sim: Sim, net: str):
        super().__init__()
        build, bounds = _TRUNKS[net]
        features = build(sim)  # parameters are made in features order, as torchvision
        self.slices = []
        for k, (a, b) in enumerate(bounds, start=1):
            sl = Sequential([(str(i), features[i]) for i in range(a, b)])
            self.add(f"slice{k}", sl)
            self.slices.append(sl)

    def forward(self, inp: T) -> tuple:
        # lpips: h = self.slice1(X); h_relu1 = h; h = self.slice2(h); ...; a namedtuple of the taps
        h = inp
        taps = []
        for sl in self.slices:
            h = sl(h)
            taps.append(h)
        out = tuple(taps)
        del taps, h
        return out


class ScalingLayer(Mod):
    def __init__(self) -> None:
        super().__init__()
        self.shift: T | None = None
        self.scale: T | None = None

    def make_buffers(self, sim: Sim) -> None:
        # registered buffers (1, 3, 1, 1) fp32; the profiler tracks parameters, then buffers
        self.shift = self.buffer(sim, (1, 3, 1, 1))
        self.scale = self.buffer(sim, (1, 3, 1, 1))

    def forward(self, inp: T) -> T:
        return X.div(X.sub(inp, self.shift), self.scale)


class NetLinLayer(Mod):
    """Dropout (eval: identity) then a 1x1 conv to one channel, no bias; requires grad."""

    def __init__(self, sim: Sim, chn_in: int):
        super().__init__()
        self.model = self.add("model", Sequential([("0", Dropout()), ("1", Conv2d(sim, chn_in, 1, 1, bias=False))]))

    def forward(self, x: T) -> T:
        return self.model(x)


def normalize_tensor(in_feat: T, eps: float = 1e-10) -> T:
    norm_factor = X.sqrt(X.sum_dim(X.pow_scalar(in_feat, 2), [1], keepdim=True))
    return X.div(in_feat, O.add(norm_factor, eps))


def spatial_average(in_tens: T, keepdim: bool = True) -> T:
    return O.mean_dims(in_tens, [2, 3], keepdim=keepdim)


class LPIPS(Mod):
    def __init__(self, sim: Sim, net: str):
        super().__init__()
        self.scaling_layer = self.add("scaling_layer", ScalingLayer())
        self.chns = LPIPS_CHANNELS[net]
        self.L = len(self.chns)
        self.net = self.add("net", Trunk(sim, net))
        self.lins = [self.add(f"lin{k}", NetLinLayer(sim, c)) for k, c in enumerate(self.chns)]
        if net != "squeeze":  # alex, vgg: no Fire; the lin layers are the repeated block with the most parameters
            for lin in self.lins:
                lin.fsdp_unit = True
        self.scaling_layer.make_buffers(sim)

    def forward(self, in0: T, in1: T) -> T:
        in0_input, in1_input = (self.scaling_layer(in0), self.scaling_layer(in1))
        outs0, outs1 = self.net.forward(in0_input), self.net.forward(in1_input)
        feats0: dict = {}
        feats1: dict = {}
        diffs: dict = {}

        for kk in range(self.L):
            feats0[kk], feats1[kk] = normalize_tensor(outs0[kk]), normalize_tensor(outs1[kk])
            diffs[kk] = X.pow_scalar(X.sub(feats0[kk], feats1[kk]), 2)

        res = [spatial_average(self.lins[kk](diffs[kk]), keepdim=True) for kk in range(self.L)]

        # ``val = 0; val += res[0]`` is ``0 + res[0]`` (a new tensor), later ``+=`` in place
        val = None
        for l in range(self.L):  # noqa: E741
            val = O.add(res[l], 0.0) if val is None else X.add_(val, res[l])
        return val


# --- the loss ----------------------------------------------------------------------------------


class PerceptualLoss(Mod):
    def __init__(self, sim: Sim, setup) -> None:
        super().__init__()
        p = setup.autoencoder.training.perceptual
        net = str(p.network_type).lower()
        if net not in LPIPS_CHANNELS:
            raise ValueError(f"perceptual network_type {p.network_type!r}: not one of squeeze, alex, vgg")
        self.spatial_dims = setup.data.spatial_dims
        self.perceptual_function = self.add("perceptual_function", LPIPS(sim, net))
        self.is_fake_3d = self.spatial_dims == 3
        self.fake_3d_ratio = p.fake_3d_ratio

    def _calculate_axis_loss(self, input: T, target: T, spatial_axis: int) -> T:  # noqa: A002
        def batchify_axis(x: T, fake_3d_perm: tuple) -> T:
            perm = (0,) + fake_3d_perm
            f = O.to_copy(x, "f32") if x.dtype != "f32" else x  # x.float()
            if X.permute_is_contiguous(f, perm):
                slices = X.permute(f, perm)  # .contiguous() returns the view itself
            else:
                slices = O.contiguous_copy(X.permute(f, perm))
            del f
            c, h, w = x.shape[fake_3d_perm[1]], x.shape[fake_3d_perm[2]], x.shape[fake_3d_perm[3]]
            slices = O.view(slices, (slices.numel // (c * h * w), c, h, w))  # .view(-1, C, H, W)
            return slices

        preserved_axes = [2, 3, 4]
        preserved_axes.remove(spatial_axis)

        channel_axis = 1
        input_slices = batchify_axis(x=input, fake_3d_perm=(spatial_axis, channel_axis) + tuple(preserved_axes))
        n = input_slices.shape[0]
        indices = O.S.view(X.randperm(n), (int(n * self.fake_3d_ratio),))
        input_slices = X.index_select(input_slices, 0, indices)
        target_slices = batchify_axis(x=target, fake_3d_perm=(spatial_axis, channel_axis) + tuple(preserved_axes))
        target_slices = X.index_select(target_slices, 0, indices)

        axis_loss = O.mean_all(self.perceptual_function(input_slices, target_slices))

        return axis_loss

    def forward(self, input: T, target: T) -> T:  # noqa: A002
        if self.spatial_dims == 3 and self.is_fake_3d:
            loss_sagittal = self._calculate_axis_loss(input, target, spatial_axis=2)
            loss_coronal = self._calculate_axis_loss(input, target, spatial_axis=3)
            loss_axial = self._calculate_axis_loss(input, target, spatial_axis=4)
            loss = O.add(O.add(loss_sagittal, loss_axial), loss_coronal)
        else:
            loss = self.perceptual_function(input, target)

        loss = O.mean_all(loss)

        return loss
