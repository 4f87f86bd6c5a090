"""MONAI AutoencoderKL with a PatchDiscriminator, as MONAI's generation/3d_autoencoderkl tutorial
trains it after the adversarial warm-up: L1 reconstruction, KL, PatchAdversarialLoss
(least squares) for the generator and the discriminator (no perceptual loss: its LPIPS weights
are a download; examples/steps/ldm_stage1.py has it with frozen weights).

    vramplan profile --step examples/zoo/monai_autoencoderkl.py --precision amp-fp16
    full size (benchmarks/bench_zoo.py --full): --knob channels=32,64,64 --knob norm_num_groups=32
        --knob disc_channels=32 --knob roi=96,96,64 --batch 1
"""

import torch

from _zoo import adamw as optimizers, autoencoder_gan

MODEL = "AutoencoderKL + PatchDiscriminator"
FULL = {"channels": (32, 64, 64), "norm_num_groups": 32, "disc_channels": 32, "roi": (96, 96, 64)}
FULL_BATCH = 1
KL_WEIGHT, ADV_WEIGHT = 1e-6, 0.01


def networks(channels: tuple = (8, 16, 16), norm_num_groups: int = 8, disc_channels: int = 8):
    from monai.networks.nets import AutoencoderKL, PatchDiscriminator

    return {"autoencoder": AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                                         latent_channels=3, num_res_blocks=1, norm_num_groups=norm_num_groups,
                                         attention_levels=(False,) * (len(channels) - 1) + (True,)),
            "discriminator": PatchDiscriminator(spatial_dims=3, num_layers_d=3, channels=disc_channels,
                                                in_channels=1, out_channels=1)}


def batch(batch_size: int = 1, roi: tuple = (32, 32, 32)):
    return torch.randn(batch_size, 1, *roi, device="cuda")


def step(nets, opts, images, vp):
    autoencoder_gan(nets, opts, images, vp, kl_weight=KL_WEIGHT, adv_weight=ADV_WEIGHT)
