"""diffusers ``UNet2DModel`` built from its config (no download), trained as diffusers'
unconditional-image-generation example does: ``DDPMScheduler.add_noise``, noise prediction,
MSE against the noise.

    vramplan profile --step examples/zoo/diffusers_unet2d.py
    full size, the example's 128-pixel model (benchmarks/bench_zoo.py --full):
        --knob layers_per_block=2 --knob block_out_channels=128,128,256,256,512,512 --knob resolution=128 --batch 16
"""

import torch

from _zoo import adamw as optimizers, noise_prediction

MODEL = "UNet2DModel"
FULL = {"layers_per_block": 2, "block_out_channels": (128, 128, 256, 256, 512, 512), "resolution": 128}
FULL_BATCH = 16


def networks(layers_per_block: int = 1, block_out_channels: tuple = (8, 16), resolution: int = 16):
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    down = ("DownBlock2D",) * (levels - 2) + ("AttnDownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * (levels - 2)
    return {"model": UNet2DModel(sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=layers_per_block,
                                 block_out_channels=tuple(block_out_channels), norm_num_groups=8,
                                 down_block_types=down[-levels:], up_block_types=up[:levels])}


def batch(batch_size: int = 2, resolution: int = 16):
    return torch.randn(batch_size, 3, resolution, resolution, device="cuda")


def step(nets, opts, images, vp):
    from diffusers import DDPMScheduler

    noise_prediction(nets, opts, vp, images, DDPMScheduler(num_train_timesteps=1000),
                     lambda noisy, t: nets["model"](noisy, t).sample)
