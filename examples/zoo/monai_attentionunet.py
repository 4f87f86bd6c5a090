"""MONAI AttentionUnet, trained with MONAI's TverskyLoss.

    vramplan profile --step examples/zoo/monai_attentionunet.py
    full size (benchmarks/bench_zoo.py --full): --knob channels=16,32,64,128,256 --knob roi=96,96,96 --batch 2
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "AttentionUnet"
FULL = {'channels': (16, 32, 64, 128, 256), 'roi': (96, 96, 96)}
FULL_BATCH = 2


def networks(channels: tuple = (4, 8, 16)):
    from monai.networks.nets import AttentionUnet

    return {"model": AttentionUnet(spatial_dims=3, in_channels=1, out_channels=2, channels=tuple(channels),
                                 strides=(2,) * (len(channels) - 1))}


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return segmentation_batch(batch_size, roi, classes=2, in_channels=1)


def step(nets, opts, batch, vp):
    from monai.losses import TverskyLoss

    supervised(nets, opts, batch, vp, TverskyLoss(to_onehot_y=True, softmax=True, alpha=0.3, beta=0.7))
