"""MONAI ViT in 3D as a volume classifier (``classification=True``), trained with cross-entropy.

    vramplan profile --step examples/zoo/monai_vit.py
    full size (benchmarks/bench_zoo.py --full): --knob hidden_size=768 --knob mlp_dim=3072 --knob num_layers=12
        --knob num_heads=12 --knob roi=96,96,96 --batch 2
"""

import torch

from _zoo import adamw

MODEL = "ViT (3D)"
FULL = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12, "roi": (96, 96, 96)}
FULL_BATCH = 2


def networks(roi: tuple = (32, 32, 32), hidden_size: int = 48, mlp_dim: int = 96, num_layers: int = 2,
             num_heads: int = 4):
    from monai.networks.nets import ViT

    return {"model": ViT(in_channels=1, img_size=tuple(roi), patch_size=(16, 16, 16), hidden_size=hidden_size,
                         mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, classification=True,
                         num_classes=2)}


def optimizers(nets):
    return adamw(nets)


def batch(batch_size: int = 2, roi: tuple = (32, 32, 32)):
    return torch.randn(batch_size, 1, *roi, device="cuda"), torch.randint(0, 2, (batch_size,), device="cuda")


def step(nets, opts, batch, vp):
    image, label = batch
    vp.zero_grad(opts["model"])
    with vp.autocast():
        logits, _hidden = nets["model"](image)
        vp.keep.loss = torch.nn.CrossEntropyLoss()(logits, label)
    vp.backward(vp.keep.loss, opts["model"])
    vp.step(opts["model"])
