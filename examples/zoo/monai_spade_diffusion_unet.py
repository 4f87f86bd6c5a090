"""MONAI SPADEDiffusionModelUNet (a diffusion UNet conditioned on a semantic map through SPADE
normalisation) as MONAI's generation/spade_ldm tutorial trains stage 2 (2D): DDPMScheduler noise,
noise prediction given the map, MSE against the noise.

    vramplan profile --step examples/zoo/monai_spade_diffusion_unet.py
    full size (benchmarks/bench_zoo.py --full): --knob channels=128,256,512 --knob num_head_channels=32
        --knob roi=64,64 --batch 8
"""

from _zoo import adamw as optimizers, semantic_batch, noise_prediction

MODEL = "SPADEDiffusionModelUNet"
FULL = {"channels": (128, 256, 512), "num_head_channels": 32, "roi": (64, 64)}
FULL_BATCH = 8
LABELS = 6


def networks(channels: tuple = (8, 16), num_head_channels: int = 8):
    from monai.networks.nets import SPADEDiffusionModelUNet

    return {"model": SPADEDiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=3, label_nc=LABELS,
                                             channels=tuple(channels), attention_levels=(False,) + (True,) * (len(channels) - 1),
                                             num_res_blocks=1, num_head_channels=num_head_channels,
                                             norm_num_groups=8, spade_intermediate_channels=4 * channels[0])}


def batch(batch_size: int = 2, roi: tuple = (16, 16)):
    return semantic_batch(batch_size, roi, 3, LABELS)


def step(nets, opts, batch, vp):
    from monai.networks.schedulers import DDPMScheduler

    latents, seg = batch
    noise_prediction(nets, opts, vp, latents, DDPMScheduler(num_train_timesteps=1000),
                     lambda noisy, t: nets["model"](x=noisy, timesteps=t, seg=seg))
