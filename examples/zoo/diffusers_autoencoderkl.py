"""diffusers ``AutoencoderKL`` (Stable Diffusion's VAE) built from its config (no download),
trained on reconstruction MSE plus the posterior's KL (``vae.encode(x).latent_dist``, a sample,
``vae.decode``).

    vramplan profile --step examples/zoo/diffusers_autoencoderkl.py
    full size, Stable Diffusion's VAE at 256 pixels (benchmarks/bench_zoo.py --full):
        --knob layers_per_block=2 --knob block_out_channels=128,256,512,512 --knob norm_num_groups=32 --knob resolution=256 --batch 4
"""

import torch
import torch.nn.functional as F

from _zoo import adamw as optimizers

MODEL = "AutoencoderKL"
FULL = {"layers_per_block": 2, "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "resolution": 256}
FULL_BATCH = 4
KL_WEIGHT = 1e-6


def networks(layers_per_block: int = 1, block_out_channels: tuple = (8, 16), norm_num_groups: int = 8):
    from diffusers import AutoencoderKL

    levels = len(block_out_channels)
    return {"model": AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=layers_per_block,
                                   block_out_channels=tuple(block_out_channels), norm_num_groups=norm_num_groups,
                                   down_block_types=("DownEncoderBlock2D",) * levels,
                                   up_block_types=("UpDecoderBlock2D",) * levels)}


def batch(batch_size: int = 2, resolution: int = 16):
    return torch.randn(batch_size, 3, resolution, resolution, device="cuda")


def step(nets, opts, images, vp):
    vae = nets["model"]
    vp.zero_grad(opts["model"])
    with vp.autocast():
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        vp.keep.loss = F.mse_loss(reconstruction.float(), images.float()) + KL_WEIGHT * posterior.kl().mean()
    vp.backward(vp.keep.loss, opts["model"])
    vp.step(opts["model"])
