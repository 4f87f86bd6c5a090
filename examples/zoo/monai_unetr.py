"""MONAI UNETR as MONAI's BTCV tutorial builds it (perceptron patch embedding, instance norm,
residual blocks), trained with DiceCELoss.

    vramplan profile --step examples/zoo/monai_unetr.py
    full size (benchmarks/bench_zoo.py --full): --knob hidden_size=768 --knob mlp_dim=3072 --knob num_heads=12
        --knob feature_size=16 --knob roi=96,96,96 --batch 2
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "UNETR"
FULL = {"hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "feature_size": 16, "roi": (96, 96, 96)}
FULL_BATCH = 2


def networks(roi: tuple = (32, 32, 32), hidden_size: int = 48, mlp_dim: int = 96, num_heads: int = 4,
             feature_size: int = 4):
    from monai.networks.nets import UNETR

    return {"model": UNETR(in_channels=1, out_channels=14, img_size=tuple(roi), feature_size=feature_size,
                           hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, proj_type="perceptron",
                           norm_name="instance", res_block=True, dropout_rate=0.0)}


def batch(batch_size: int = 1, roi: tuple = (32, 32, 32)):
    return segmentation_batch(batch_size, roi, classes=14)


def step(nets, opts, batch, vp):
    from monai.losses import DiceCELoss

    supervised(nets, opts, batch, vp, DiceCELoss(to_onehot_y=True, softmax=True))
