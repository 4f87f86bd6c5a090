"""diffusers ``DiTTransformer2DModel`` (a class-conditional diffusion transformer, DiT) built from
its config (no download), trained on latents as DiT is: ``DDPMScheduler.add_noise``, noise
prediction given the timestep and the class label, MSE against the noise (the learned-sigma
half of the output is split off).

    vramplan profile --step examples/zoo/diffusers_dit.py
    full size, DiT-XL/2 on 256-pixel images' 32x32 latents (benchmarks/bench_zoo.py --full):
        --knob num_layers=28 --knob num_attention_heads=16 --knob attention_head_dim=72 --knob latent=32 --batch 8
"""

import torch

from _zoo import adamw as optimizers, noise_prediction

MODEL = "DiTTransformer2DModel"
FULL = {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72, "latent": 32}
FULL_BATCH = 8


def networks(num_layers: int = 2, num_attention_heads: int = 2, attention_head_dim: int = 8, latent: int = 8):
    from diffusers import DiTTransformer2DModel

    return {"model": DiTTransformer2DModel(num_attention_heads=num_attention_heads,
                                           attention_head_dim=attention_head_dim, in_channels=4, out_channels=8,
                                           num_layers=num_layers, sample_size=latent, patch_size=2,
                                           num_embeds_ada_norm=1000)}


def batch(batch_size: int = 2, latent: int = 8):
    return (torch.randn(batch_size, 4, latent, latent, device="cuda"),
            torch.randint(0, 1000, (batch_size,), device="cuda"))


def step(nets, opts, batch, vp):
    from diffusers import DDPMScheduler

    latents, labels = batch
    noise_prediction(nets, opts, vp, latents, DDPMScheduler(num_train_timesteps=1000),
                     lambda noisy, t: nets["model"](noisy, timestep=t, class_labels=labels).sample.chunk(2, dim=1)[0])
