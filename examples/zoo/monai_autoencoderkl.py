"""MONAI AutoencoderKL with a PatchDiscriminator, as MONAI's generation/3d_autoencoderkl tutorial
trains it after the adversarial warm-up: L1 reconstruction, KL, PatchAdversarialLoss
(least squares) for the generator and the discriminator (no perceptual loss: its LPIPS weights
are a download; examples/steps/ldm_stage1.py has it with frozen weights).

    vramplan profile --step examples/zoo/monai_autoencoderkl.py --precision amp-fp16
    full size (benchmarks/bench_zoo.py --full): --knob channels=32,64,64 --knob norm_num_groups=32
        --knob disc_channels=32 --knob roi=96,96,64 --batch 1
"""

import torch
import torch.nn.functional as F

from _zoo import adamw

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


def optimizers(nets):
    return adamw(nets)


def batch(batch_size: int = 1, roi: tuple = (32, 32, 32)):
    return torch.randn(batch_size, 1, *roi, device="cuda")


def step(nets, opts, images, vp):
    from monai.losses import PatchAdversarialLoss

    adv = PatchAdversarialLoss(criterion="least_squares")
    ae, disc, k = nets["autoencoder"], nets["discriminator"], vp.keep
    vp.zero_grad(opts["autoencoder"])
    with vp.autocast():
        k.reconstruction, z_mu, z_sigma = ae(images)
        logits_fake = disc(k.reconstruction.contiguous().float())[-1]
        recons_loss = F.l1_loss(k.reconstruction.float(), images.float())
        kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=[1, 2, 3, 4])
        kl = torch.sum(kl) / kl.shape[0]
        k.loss_g = recons_loss + KL_WEIGHT * kl + ADV_WEIGHT * adv(logits_fake, target_is_real=True,
                                                                   for_discriminator=False)
    vp.backward(k.loss_g, opts["autoencoder"])
    vp.step(opts["autoencoder"])
    vp.zero_grad(opts["discriminator"])
    with vp.autocast():
        fake = adv(disc(k.reconstruction.contiguous().detach())[-1], target_is_real=False, for_discriminator=True)
        real = adv(disc(images.contiguous().detach())[-1], target_is_real=True, for_discriminator=True)
        k.loss_d = ADV_WEIGHT * (fake + real) * 0.5
    vp.backward(k.loss_d, opts["discriminator"])
    vp.step(opts["discriminator"])
