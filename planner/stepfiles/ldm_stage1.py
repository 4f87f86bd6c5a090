"""The built-in ``ldm-stage1`` step, as a step file (MONAI's generation/3d_autoencoderkl
tutorial loop after the adversarial warm-up; see shared/design.md).

    vramplan estimate --engine trace                      # this file, traced, from the built-in's YAML setup
    vramplan estimate --step ldm-stage1 --engine trace    # this file, traced (AMP fp16, the built-in's default)
    vramplan profile --step examples/steps/ldm_stage1.py --precision amp-fp16   # the same file, linked

This file is the only tracer of the built-in step: ``vramplan profile`` / ``estimate --engine
trace`` without ``--step`` map the YAML setup (planner/spec.py) onto its knobs
(planner/stepfiles ``step_setup_of``). Knobs, each a YAML setting of the built-in step:
``voxel`` and ``in_channels`` (``data.*``; 2 or 3 sizes, 2D or 3D), ``channels``,
``latent_channels``, ``num_res_blocks``, ``norm_num_groups``, ``attention``,
``encoder_nonlocal_attn``, ``decoder_nonlocal_attn``, ``flash_attention`` (MONAI's
``use_flash_attention``) and ``use_checkpoint`` (MONAI's own: encoder and decoder each one
checkpointed segment; vramplan's ``--checkpoint CLASS`` wraps classes instead) are
AutoencoderKL's; ``perceptual``, ``perceptual_network``, ``fake_3d_ratio`` the 2.5D LPIPS loss;
``discriminator``, ``disc_layers``, ``disc_channels``, ``disc_norm`` the PatchDiscriminator.
The batch is ``--batch``, ``gradient_accumulation_steps`` ``--accum``, the optimizer
``--optimizer``, the mixed precision ``--precision``.

Every tensor the tutorial's script keeps in a variable is kept on ``vp.keep``, so the previous
iteration's reconstruction and losses stay alive until reassigned, as in the script; with
accumulation the script divides its losses (``loss_g = loss_g / accum``) and keeps only the
quotient (``vp.backward(..., divided=True)``).
"""

import torch
import torch.nn.functional as F

ADV_WEIGHT = 0.01
PERCEPTUAL_WEIGHT = 0.001
KL_WEIGHT = 1e-6
LR = 1e-4


def networks(voxel: tuple = (96, 96, 64), in_channels: int = 1, channels: tuple = (32, 64, 64),
             latent_channels: int = 3, num_res_blocks: tuple = (1, 1, 1), norm_num_groups: int = 16,
             attention: tuple = (False, False, True), encoder_nonlocal_attn: bool = True,
             decoder_nonlocal_attn: bool = True, flash_attention: bool = False, use_checkpoint: bool = False,
             discriminator: bool = True, disc_channels: int = 32, disc_layers: int = 3, disc_norm: str = "batch",
             perceptual: bool = True, perceptual_network: str = "squeeze", fake_3d_ratio: float = 0.2):
    from monai.networks.nets import AutoencoderKL, PatchDiscriminator

    from planner.measure.perceptual import PerceptualLoss  # MONAI's 2.5D LPIPS loss, frozen weights, no download

    dims = len(voxel)
    nets = {
        "autoencoder": AutoencoderKL(spatial_dims=dims, in_channels=in_channels, out_channels=in_channels,
                                     channels=tuple(channels), latent_channels=latent_channels,
                                     num_res_blocks=tuple(num_res_blocks), norm_num_groups=norm_num_groups,
                                     attention_levels=tuple(attention),
                                     with_encoder_nonlocal_attn=encoder_nonlocal_attn,
                                     with_decoder_nonlocal_attn=decoder_nonlocal_attn,
                                     use_checkpoint=use_checkpoint, use_flash_attention=flash_attention),
    }
    if discriminator:
        nets["discriminator"] = PatchDiscriminator(spatial_dims=dims, num_layers_d=disc_layers, channels=disc_channels,
                                                   in_channels=in_channels, out_channels=1, norm=disc_norm.upper())
    if perceptual:
        nets["perceptual"] = PerceptualLoss(spatial_dims=dims, network_type=perceptual_network, is_fake_3d=dims == 3,
                                            fake_3d_ratio=fake_3d_ratio)
    # the tutorial calls autoencoder.train() and discriminator.train(); the perceptual loss keeps
    # LPIPS in the eval mode its constructor sets
    for name in ("autoencoder", "discriminator"):
        if name in nets:
            nets[name].train()
    return nets


def optimizers(nets):
    opts = {"generator": torch.optim.Adam(nets["autoencoder"].parameters(), lr=LR)}
    if "discriminator" in nets:
        opts["discriminator"] = torch.optim.Adam(nets["discriminator"].parameters(), lr=LR)
    return opts


def batch(batch_size: int = 1, voxel: tuple = (96, 96, 64), in_channels: int = 1):
    return torch.randn(batch_size, in_channels, *voxel, device="cuda")


def step(nets, opts, images, vp):
    from monai.losses import PatchAdversarialLoss

    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    ae, disc, perceptual = nets["autoencoder"], nets.get("discriminator"), nets.get("perceptual")
    accum = vp.accumulation
    k = vp.keep
    # ---- generator half
    vp.section("generator")
    vp.zero_grad(opts["generator"])
    with vp.autocast():
        k.reconstruction, k.z_mu, k.z_sigma = ae(images)
        if disc is not None:
            k.logits_fake = disc(k.reconstruction.contiguous().float())[-1]
        k.recons_loss = F.l1_loss(k.reconstruction.float(), images.float())
        if perceptual is not None:
            k.p_loss = perceptual(k.reconstruction.float(), images.float())
        if disc is not None:
            k.generator_loss = adv_loss(k.logits_fake, target_is_real=True, for_discriminator=False)
        k.kl_loss = 0.5 * torch.sum(k.z_mu.pow(2) + k.z_sigma.pow(2) - torch.log(k.z_sigma.pow(2)) - 1,
                                    dim=list(range(1, images.ndim)))
        k.kl_loss = torch.sum(k.kl_loss) / k.kl_loss.shape[0]
        k.loss_g = k.recons_loss + KL_WEIGHT * k.kl_loss
        if perceptual is not None:
            k.loss_g = k.loss_g + PERCEPTUAL_WEIGHT * k.p_loss
        if disc is not None:
            k.loss_g = k.loss_g + ADV_WEIGHT * k.generator_loss
        if accum > 1:
            k.loss_g = k.loss_g / accum
    vp.backward(k.loss_g, opts["generator"], divided=True)
    vp.step(opts["generator"])
    if disc is None:
        return
    # ---- discriminator half
    vp.section("discriminator")
    vp.zero_grad(opts["discriminator"])
    with vp.autocast():
        k.logits_fake = disc(k.reconstruction.contiguous().detach())[-1]
        k.loss_d_fake = adv_loss(k.logits_fake, target_is_real=False, for_discriminator=True)
        k.logits_real = disc(images.contiguous().detach())[-1]
        k.loss_d_real = adv_loss(k.logits_real, target_is_real=True, for_discriminator=True)
        k.discriminator_loss = (k.loss_d_fake + k.loss_d_real) * 0.5
        k.loss_d = ADV_WEIGHT * k.discriminator_loss
        if accum > 1:
            k.loss_d = k.loss_d / accum
    vp.backward(k.loss_d, opts["discriminator"], divided=True)
    vp.step(opts["discriminator"])
