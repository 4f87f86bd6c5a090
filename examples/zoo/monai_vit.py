"""MONAI ViT in 3D as a volume classifier (``classification=True``), trained with cross-entropy.

    vramplan profile --step examples/zoo/monai_vit.py
    full size (benchmarks/bench_zoo.py --full): --knob hidden_size=768 --knob mlp_dim=3072 --knob num_layers=12
        --knob num_heads=12 --knob roi=96,96,96 --batch 2
"""

from _zoo import adamw as optimizers, classification_batch, classify

MODEL = "ViT (3D)"
FULL = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12, "roi": (96, 96, 96)}
FULL_BATCH = 2


def networks(roi: tuple = (32, 32, 32), hidden_size: int = 48, mlp_dim: int = 96, num_layers: int = 2,
             num_heads: int = 4):
    from monai.networks.nets import ViT

    return {"model": ViT(in_channels=1, img_size=tuple(roi), patch_size=(16, 16, 16), hidden_size=hidden_size,
                         mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, classification=True,
                         num_classes=2)}


def batch(batch_size: int = 2, roi: tuple = (32, 32, 32)):
    return classification_batch(batch_size, roi)


def step(nets, opts, batch, vp):
    classify(nets, opts, batch, vp, logits=lambda out: out[0])
