"""MONAI DiffusionModelUNet as MONAI's generation/3d_ddpm tutorial trains it: DDPMScheduler,
DiffusionInferer's noise prediction, MSE against the noise.

    vramplan profile --step examples/zoo/monai_diffusion_unet.py --precision amp-fp16
    full size (benchmarks/bench_zoo.py --full): --knob channels=256,256,512 --knob num_head_channels=0,0,512
        --knob num_res_blocks=2 --knob roi=64,64,64 --batch 2
"""

import torch
import torch.nn.functional as F

from _zoo import adamw as optimizers

MODEL = "DiffusionModelUNet"
FULL = {"channels": (256, 256, 512), "num_head_channels": (0, 0, 512), "num_res_blocks": 2, "roi": (64, 64, 64)}
FULL_BATCH = 2


def networks(channels: tuple = (8, 8, 16), num_head_channels: tuple = (0, 0, 16), num_res_blocks: int = 1):
    from monai.networks.nets import DiffusionModelUNet

    return {"model": DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                                        attention_levels=(False, False, True), num_head_channels=tuple(num_head_channels),
                                        num_res_blocks=num_res_blocks, norm_num_groups=8)}


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return torch.randn(batch_size, 1, *roi, device="cuda")


def step(nets, opts, images, vp):
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    inferer = DiffusionInferer(DDPMScheduler(num_train_timesteps=1000))
    vp.zero_grad(opts["model"])
    with vp.autocast():
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (images.shape[0],), device=images.device).long()
        pred = inferer(inputs=images, diffusion_model=nets["model"], noise=noise, timesteps=timesteps)
        vp.keep.loss = F.mse_loss(pred.float(), noise.float())
    vp.backward(vp.keep.loss, opts["model"])
    vp.step(opts["model"])
