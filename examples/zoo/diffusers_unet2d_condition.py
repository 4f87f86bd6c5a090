"""diffusers ``UNet2DConditionModel`` (Stable Diffusion's denoiser) built from its config (no
download), trained as diffusers' text-to-image example does on latents with text embeddings:
``DDPMScheduler.add_noise``, noise prediction with cross-attention, MSE against the noise.

    vramplan profile --step examples/zoo/diffusers_unet2d_condition.py --precision amp-fp16
    full size, Stable Diffusion 1.x's UNet (benchmarks/bench_zoo.py --full):
        --knob layers_per_block=2 --knob block_out_channels=320,640,1280,1280 --knob cross_attention_dim=768 --knob attention_head_dim=8
        --knob latent=64 --knob norm_num_groups=32 --batch 4
"""

import torch

from _zoo import adamw as optimizers, noise_prediction

MODEL = "UNet2DConditionModel"
FULL = {"layers_per_block": 2, "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
        "latent": 64, "norm_num_groups": 32}
FULL_BATCH = 4
TOKENS = 77


def networks(layers_per_block: int = 1, block_out_channels: tuple = (16, 32), cross_attention_dim: int = 16, attention_head_dim: int = 2,
             norm_num_groups: int = 8, latent: int = 8):
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    return {"model": UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
                                          block_out_channels=tuple(block_out_channels),
                                          down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                                          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
                                          cross_attention_dim=cross_attention_dim,
                                          attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups)}


def batch(batch_size: int = 2, latent: int = 8, cross_attention_dim: int = 16):
    return (torch.randn(batch_size, 4, latent, latent, device="cuda"),
            torch.randn(batch_size, TOKENS, cross_attention_dim, device="cuda"))


def step(nets, opts, batch, vp):
    from diffusers import DDPMScheduler

    latents, text = batch
    noise_prediction(nets, opts, vp, latents, DDPMScheduler(num_train_timesteps=1000),
                     lambda noisy, t: nets["model"](noisy, t, encoder_hidden_states=text).sample)
