"""A SwinUNETR segmentation step (issue 21's "SwinUNETR-class" example): MONAI's ``SwinUNETR``
(feature size 48: 62,187,296 parameters), 96^3 patches of one channel, 14 classes,
``DiceCELoss(to_onehot_y=True, softmax=True)``, AdamW (lr 1e-4, weight decay 1e-5), AMP
(``--precision amp-fp16``: autocast fp16 + GradScaler), as MONAI's BTCV tutorial
(``3d_segmentation/swin_unetr_btcv_segmentation_3d``) trains it. MONAI's own
``use_checkpoint=True`` checkpoints the Swin transformer blocks; here the factory's flag stays
off and ``--checkpoint`` (or ``--checkpoint auto``) decides::

    vramplan estimate --step examples/steps/swin_unetr.py --precision amp-fp16 --batch 4 --gpu 16GB
    vramplan estimate --step examples/steps/swin_unetr.py --precision amp-fp16 --batch 4 --checkpoint auto
    vramplan recommend --step examples/steps/swin_unetr.py --precision amp-fp16 --batch 4 --gpu 16GB

Knobs: ``size`` (the cubic patch edge, a multiple of 32), ``feature_size`` (a multiple of 12),
``classes``.
"""

from __future__ import annotations

import torch


def networks(feature_size: int = 48, classes: int = 14):
    from monai.networks.nets import SwinUNETR

    return {"model": SwinUNETR(in_channels=1, out_channels=classes, feature_size=feature_size, use_checkpoint=False)}


def optimizers(nets):
    return {"model": torch.optim.AdamW(nets["model"].parameters(), lr=1e-4, weight_decay=1e-5)}


def batch(batch_size: int = 2, size: int = 96, classes: int = 14):
    image = torch.randn(batch_size, 1, size, size, size, device="cuda")
    label = torch.randint(0, classes, (batch_size, 1, size, size, size), device="cuda")
    return image, label


def step(nets, opts, b, vp):
    from monai.losses import DiceCELoss

    image, label = b
    vp.zero_grad(opts["model"])
    with vp.autocast():
        logits = nets["model"](image)
        loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, label)
    vp.backward(loss, opts["model"])
    vp.step(opts["model"])
