"""MONAI DynUNet (nnU-Net's network) with deep supervision, trained with MONAI's DiceCELoss as
MONAI's dynunet_pipeline does: in training the network returns the full-resolution output and the
``deep_supr_num`` deeper ones stacked on dim 1, each upsampled to the label's size; the loss is
their weighted sum (weights 0.5**i, normalised).

    vramplan profile --step examples/zoo/monai_dynunet.py
    full size (benchmarks/bench_zoo.py --full): --knob filters=32,64,128,256,320 --knob roi=128,128,128 --batch 2
"""

import torch

from _zoo import segmentation_batch

MODEL = "DynUNet"
FULL = {"filters": (32, 64, 128, 256, 320), "roi": (128, 128, 128)}
FULL_BATCH = 2


def networks(filters: tuple = (4, 8, 16, 16)):
    from monai.networks.nets import DynUNet

    levels = len(filters)
    strides = [(1, 1, 1)] + [(2, 2, 2)] * (levels - 1)
    return {"model": DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[(3, 3, 3)] * levels,
                             strides=strides, upsample_kernel_size=strides[1:], filters=list(filters),
                             norm_name="instance", deep_supervision=True, deep_supr_num=2, res_block=True)}


def optimizers(nets):
    return {"model": torch.optim.SGD(nets["model"].parameters(), lr=1e-2, momentum=0.99, weight_decay=3e-5,
                                     nesterov=True)}


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return segmentation_batch(batch_size, roi, classes=2)


def step(nets, opts, batch, vp):
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    image, label = batch
    vp.zero_grad(opts["model"])
    with vp.autocast():
        preds = torch.unbind(nets["model"](image), dim=1)
        weights = [0.5**i for i in range(len(preds))]
        vp.keep.loss = sum(w * loss_fn(p, label) for w, p in zip(weights, preds)) / sum(weights)
    vp.backward(vp.keep.loss, opts["model"])
    vp.step(opts["model"])
