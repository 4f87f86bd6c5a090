"""The training step of examples/scripts/monai_seg/train.py as a step file, line for line.

    vramplan estimate --step examples/steps/monai_seg.py --precision amp-fp16 --gpu 24GB
    vramplan run --gpu 24GB -- python examples/scripts/monai_seg/train.py     # the same step, from the script

DynUNet, DiceCELoss(to_onehot_y, softmax), AdamW, a batch of ``roi``-cubed crops. The script's
AMP (autocast fp16 + GradScaler) is ``--precision amp-fp16`` here. Variables live as in the
script: the batch until the next one is on the device, ``outputs`` and ``loss`` until they are
reassigned in the next step (``vp.keep``). tests/test_run_script.py checks that ``vramplan run``
on the script and a trace of this file give the same peak, to the byte.
"""

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet

LOSS = DiceCELoss(to_onehot_y=True, softmax=True)


def networks(filters=(32, 64, 128, 256, 320), classes=3):
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (len(filters) - 1)
    return {"model": DynUNet(spatial_dims=3, in_channels=1, out_channels=classes,
                             kernel_size=[[3, 3, 3]] * len(filters), strides=strides,
                             upsample_kernel_size=strides[1:], filters=list(filters), norm_name="instance")}


def optimizers(nets):
    return {"model": torch.optim.AdamW(nets["model"].parameters(), lr=1e-4, weight_decay=1e-5)}


def batch(batch_size=2, roi=96, classes=3, device="cuda"):
    images = torch.randn(batch_size, 1, roi, roi, roi, device=device)
    labels = torch.randint(0, classes, (batch_size, 1, roi, roi, roi), device=device)
    return images, labels


def step(nets, opts, batch, vp):
    inputs, labels = batch
    opt = opts["model"]
    vp.zero_grad(opt)
    with vp.autocast():
        vp.keep.outputs = nets["model"](inputs)
        vp.keep.loss = LOSS(vp.keep.outputs, labels)
    vp.backward(vp.keep.loss, opt)
    vp.step(opt)
