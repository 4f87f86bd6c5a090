"""MONAI UNet, trained with MONAI's DiceFocalLoss (MONAI's spleen tutorial network).

    vramplan profile --step examples/zoo/monai_unet.py
    full size (benchmarks/bench_zoo.py --full): --knob channels=16,32,64,128,256 --knob roi=96,96,96 --batch 2
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "UNet"
FULL = {'channels': (16, 32, 64, 128, 256), 'roi': (96, 96, 96)}
FULL_BATCH = 2


def networks(channels: tuple = (4, 8, 16), num_res_units: int = 2):
    from monai.networks.nets import UNet

    return {"model": UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=tuple(channels), strides=(2,) * (len(channels) - 1),
                         num_res_units=num_res_units, norm="batch")}


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return segmentation_batch(batch_size, roi, classes=2, in_channels=1)


def step(nets, opts, batch, vp):
    from monai.losses import DiceFocalLoss

    supervised(nets, opts, batch, vp, DiceFocalLoss(to_onehot_y=True, softmax=True))
