"""The built-in ``ldm-stage1`` step written as a step file (MONAI's generation/3d_autoencoderkl
tutorial loop after the adversarial warm-up; see shared/design.md).

    vramplan estimate --step ldm-stage1 --engine trace   # this file, traced (AMP fp16, the built-in's default)
    vramplan profile --step examples/steps/ldm_stage1.py --precision amp-fp16   # the same file, linked
    # equals, to the byte:  vramplan profile   (the built-in default setup)

Every tensor the tutorial's script keeps in a variable is kept on ``vp.keep``, so the previous
iteration's reconstruction and losses stay alive until reassigned, as in the script.
"""

import torch
import torch.nn.functional as F

ADV_WEIGHT = 0.01
PERCEPTUAL_WEIGHT = 0.001
KL_WEIGHT = 1e-6


def networks(voxel: tuple = (96, 96, 64), channels: tuple = (32, 64, 64), latent_channels: int = 3,
             attention: tuple = (False, False, True), disc_channels: int = 32, disc_layers: int = 3,
             perceptual: bool = True):
    from monai.networks.nets import AutoencoderKL, PatchDiscriminator

    from planner.measure.perceptual import PerceptualLoss  # MONAI's 2.5D LPIPS loss, frozen weights, no download

    nets = {
        "autoencoder": AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                                     latent_channels=latent_channels, num_res_blocks=1, norm_num_groups=16,
                                     attention_levels=tuple(attention)),
        "discriminator": PatchDiscriminator(spatial_dims=3, num_layers_d=disc_layers, channels=disc_channels,
                                            in_channels=1, out_channels=1, norm="BATCH"),
    }
    if perceptual:
        nets["perceptual"] = PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True, fake_3d_ratio=0.2)
    nets["autoencoder"].train()
    nets["discriminator"].train()
    return nets


def optimizers(nets):
    return {"generator": torch.optim.Adam(nets["autoencoder"].parameters(), lr=1e-4),
            "discriminator": torch.optim.Adam(nets["discriminator"].parameters(), lr=1e-4)}


def batch(batch_size: int = 1, voxel: tuple = (96, 96, 64)):
    return torch.randn(batch_size, 1, *voxel, device="cuda")


def step(nets, opts, images, vp):
    from monai.losses import PatchAdversarialLoss

    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    ae, disc, perceptual = nets["autoencoder"], nets["discriminator"], nets.get("perceptual")
    k = vp.keep
    # ---- generator half
    vp.zero_grad(opts["generator"])
    with vp.autocast():
        k.reconstruction, k.z_mu, k.z_sigma = ae(images)
        k.logits_fake = disc(k.reconstruction.contiguous().float())[-1]
        k.recons_loss = F.l1_loss(k.reconstruction.float(), images.float())
        if perceptual is not None:
            k.p_loss = perceptual(k.reconstruction.float(), images.float())
        k.generator_loss = adv_loss(k.logits_fake, target_is_real=True, for_discriminator=False)
        k.kl_loss = 0.5 * torch.sum(k.z_mu.pow(2) + k.z_sigma.pow(2) - torch.log(k.z_sigma.pow(2)) - 1, dim=[1, 2, 3, 4])
        k.kl_loss = torch.sum(k.kl_loss) / k.kl_loss.shape[0]
        k.loss_g = k.recons_loss + KL_WEIGHT * k.kl_loss
        if perceptual is not None:
            k.loss_g = k.loss_g + PERCEPTUAL_WEIGHT * k.p_loss
        k.loss_g = k.loss_g + ADV_WEIGHT * k.generator_loss
    vp.backward(k.loss_g, opts["generator"])
    vp.step(opts["generator"])
    # ---- discriminator half
    vp.zero_grad(opts["discriminator"])
    with vp.autocast():
        k.logits_fake = disc(k.reconstruction.contiguous().detach())[-1]
        k.loss_d_fake = adv_loss(k.logits_fake, target_is_real=False, for_discriminator=True)
        k.logits_real = disc(images.contiguous().detach())[-1]
        k.loss_d_real = adv_loss(k.logits_real, target_is_real=True, for_discriminator=True)
        k.discriminator_loss = (k.loss_d_fake + k.loss_d_real) * 0.5
        k.loss_d = ADV_WEIGHT * k.discriminator_loss
    vp.backward(k.loss_d, opts["discriminator"])
    vp.step(opts["discriminator"])
