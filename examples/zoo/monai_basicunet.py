"""MONAI BasicUNet, trained with MONAI's DiceCELoss (features: the library's default at full size).

    vramplan profile --step examples/zoo/monai_basicunet.py
    full size (benchmarks/bench_zoo.py --full): --knob features=32,32,64,128,256,32 --knob roi=96,96,96 --batch 2
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "BasicUNet"
FULL = {'features': (32, 32, 64, 128, 256, 32), 'roi': (96, 96, 96)}
FULL_BATCH = 2


def networks(features: tuple = (4, 4, 8, 8, 16, 4)):
    from monai.networks.nets import BasicUNet

    return {"model": BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=tuple(features))}


def batch(batch_size: int = 1, roi: tuple = (32, 32, 32)):
    return segmentation_batch(batch_size, roi, classes=2, in_channels=1)


def step(nets, opts, batch, vp):
    from monai.losses import DiceCELoss

    supervised(nets, opts, batch, vp, DiceCELoss(to_onehot_y=True, softmax=True))
