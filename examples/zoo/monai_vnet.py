"""MONAI VNet, trained with MONAI's DiceFocalLoss (VNet has no width parameter: only the volume changes).

    vramplan profile --step examples/zoo/monai_vnet.py
    full size (benchmarks/bench_zoo.py --full): --knob roi=128,128,64 --batch 1
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "VNet"
FULL = {'roi': (128, 128, 64)}
FULL_BATCH = 1


def networks():
    from monai.networks.nets import VNet

    return {"model": VNet(spatial_dims=3, in_channels=1, out_channels=2)}


def batch(batch_size: int = 1, roi: tuple = (32, 32, 32)):
    return segmentation_batch(batch_size, roi, classes=2, in_channels=1)


def step(nets, opts, batch, vp):
    from monai.losses import DiceFocalLoss

    supervised(nets, opts, batch, vp, DiceFocalLoss(to_onehot_y=True, softmax=True))
