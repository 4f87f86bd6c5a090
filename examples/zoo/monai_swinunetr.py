"""MONAI SwinUNETR as MONAI's BTCV tutorial trains it: DiceCELoss, AdamW, gradient
checkpointing in the Swin stages (``use_checkpoint=True``), 14 organ classes.

    vramplan profile --step examples/zoo/monai_swinunetr.py --precision amp-fp16
    full size (benchmarks/bench_zoo.py --full): --knob feature_size=48 --knob roi=96,96,96 --batch 1
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "SwinUNETR"
FULL = {"feature_size": 48, "roi": (96, 96, 96)}
FULL_BATCH = 1


def networks(feature_size: int = 12):
    from monai.networks.nets import SwinUNETR

    return {"model": SwinUNETR(in_channels=1, out_channels=14, feature_size=feature_size, use_checkpoint=True)}


def batch(batch_size: int = 1, roi: tuple = (64, 64, 64)):  # 64: the bottleneck needs 2 voxels (5 halvings)
    return segmentation_batch(batch_size, roi, classes=14)


def step(nets, opts, batch, vp):
    from monai.losses import DiceCELoss

    supervised(nets, opts, batch, vp, DiceCELoss(to_onehot_y=True, softmax=True))
