"""MONAI ControlNet as MONAI's generation/2d_controlnet tutorial trains it: a frozen, trained
DiffusionModelUNet, a ControlNet initialised from its weights (``load_state_dict(strict=False)``),
a conditioning mask, ControlNetDiffusionInferer's noise prediction, MSE against the noise.

    vramplan profile --step examples/zoo/monai_controlnet.py
    full size (benchmarks/bench_zoo.py --full): --knob channels=128,256,256 --knob num_head_channels=256
        --knob roi=64,64 --batch 16
"""

import torch
import torch.nn.functional as F

from _zoo import adamw as optimizers

MODEL = "ControlNet + frozen DiffusionModelUNet"
FULL = {"channels": (128, 256, 256), "num_head_channels": 256, "roi": (64, 64)}
FULL_BATCH = 16


def networks(channels: tuple = (8, 16), num_head_channels: int = 16):
    from monai.networks.nets import ControlNet, DiffusionModelUNet

    kw = dict(spatial_dims=2, in_channels=1, num_res_blocks=1, channels=tuple(channels),
              attention_levels=(False,) + (True,) * (len(channels) - 1), num_head_channels=num_head_channels, norm_num_groups=8)
    model = DiffusionModelUNet(out_channels=1, **kw)
    model.requires_grad_(False)
    controlnet = ControlNet(conditioning_embedding_num_channels=(16,), **kw)
    controlnet.load_state_dict(model.state_dict(), strict=False)
    return {"controlnet": controlnet, "unet": model}


def batch(batch_size: int = 2, roi: tuple = (16, 16)):
    return torch.randn(batch_size, 1, *roi, device="cuda"), (torch.rand(batch_size, 1, *roi, device="cuda") > 0.5).float()


def step(nets, opts, batch, vp):
    from monai.inferers import ControlNetDiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    images, masks = batch
    inferer = ControlNetDiffusionInferer(DDPMScheduler(num_train_timesteps=1000))
    vp.zero_grad(opts["controlnet"])
    with vp.autocast():
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (images.shape[0],), device=images.device).long()
        pred = inferer(inputs=images, diffusion_model=nets["unet"], controlnet=nets["controlnet"], noise=noise,
                       timesteps=timesteps, cn_cond=masks)
        vp.keep.loss = F.mse_loss(pred.float(), noise.float())
    vp.backward(vp.keep.loss, opts["controlnet"])
    vp.step(opts["controlnet"])
