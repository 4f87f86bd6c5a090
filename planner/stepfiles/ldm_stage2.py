"""The built-in ``ldm-stage2`` step written as a step file (MONAI's generation/3d_ddpm tutorial
step on the stage-1 latent: DiffusionModelUNet, DDPMScheduler, DiffusionInferer noise prediction,
MSE; see shared/design.md).

    vramplan estimate --kind ldm-stage2 --engine trace   # this file, traced, from the built-in's YAML setup
    vramplan estimate --step ldm-stage2 --engine trace   # this file, traced (AMP fp16, the built-in's default)
    vramplan profile --step examples/steps/ldm_stage2.py --precision amp-fp16   # the same file, linked

Knobs, with the built-in's defaults (``planner/spec.py`` ``DiffusionSpec``,
``TrainingSetup.unet_input_shape``): ``latent`` is the spatial size the UNet denoises, the
stage-1 latent (the default 96x96x64 volume / 2**(3-1) = 24x24x16; two sizes for 2D);
``latent_channels`` is the UNet's in and out channels (the autoencoder's latent_channels; for
diffusion on the image itself, ``diffusion.input: image``, give the voxel size and the image's
channels: ``--knob latent=96,96,64 --knob latent_channels=1``); ``channels``, ``attention``,
``num_head_channels``, ``num_res_blocks``, ``norm_num_groups`` and ``flash_attention`` are
DiffusionModelUNet's; the batch is ``--batch`` (16 by default); the built-in's optimizer choice
is ``--optimizer``, its ``gradient_accumulation_steps`` ``--accum``, its mixed precision
``--precision amp-fp16`` (``amp_dtype: bfloat16``: ``amp-bf16``; no AMP: ``fp32``).

The noise schedule. ``DiffusionInferer`` calls ``DDPMScheduler.add_noise``, which moves the
scheduler's ``alphas_cumprod`` (1000 fp32) to the batch's device and keeps it there: the one
scheduler tensor the step holds on the GPU, a ``parameters`` tensor from the start. The scheduler
(a MONAI ``Scheduler`` is an ``nn.Module``) is returned by ``networks()`` as a second, frozen
network, ``"scheduler"``, with ``alphas_cumprod`` re-registered as its buffer (the same tensor
``add_noise`` reads), so it is tracked from the start; its other tensors (betas, alphas,
timesteps) stay on the host, as in the tutorial. Not a buffer of the UNet: under ``--gpus N
--strategy ddp`` torch's DDP broadcasts a wrapped network's buffers before every forward
(``broadcast_buffers=True``), a collective the tutorial's step does not make (with this one buffer
the broadcast happens to allocate nothing: the same bytes either way), and ``--precision
fp16``/``bf16``/``*-master`` would cast it with the UNet. A network without trainable parameters
is not wrapped by DDP or FSDP, nor cast by --precision, and the UNet keeps no buffer at all.

This file is the only tracer of the built-in step: ``vramplan profile --kind ldm-stage2`` and
``estimate --engine trace`` map the YAML setup (planner/spec.py) onto its knobs (planner/stepfiles
``step_setup_of``). Equal to the analytic engine (``tests/test_ldm_stage2_step.py``): the peak,
where it is taken and the bytes of every category at it, in fp32, amp-fp16 and amp-bf16; under
``--gpus 2 --strategy ddp`` the peak grows by exactly DDP's gradient bucket. The 4 KiB of
``alphas_cumprod`` are listed under network "scheduler". With ``--accum`` > 1 the step divides its
loss as the tutorial's script would (``loss = loss / accum``, keeping only the quotient;
``vp.backward(..., divided=True)``).

Every tensor the script keeps in a variable is kept on ``vp.keep``, so the previous
iteration's noise, timesteps, prediction and loss stay alive until reassigned, as in the script.
"""

import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000


def networks(latent: tuple = (24, 24, 16), latent_channels: int = 3, channels: tuple = (64, 64, 128),
             attention: tuple = (False, False, True), num_head_channels: tuple = (0, 0, 128),
             num_res_blocks: tuple = (2, 2, 2), norm_num_groups: int = 32, flash_attention: bool = False):
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    unet = DiffusionModelUNet(spatial_dims=len(latent), in_channels=latent_channels, out_channels=latent_channels,
                              channels=tuple(channels), attention_levels=tuple(attention),
                              num_head_channels=tuple(num_head_channels), num_res_blocks=tuple(num_res_blocks),
                              norm_num_groups=norm_num_groups, use_flash_attention=flash_attention)
    unet.train()
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, schedule="scaled_linear_beta",
                              beta_start=0.0015, beta_end=0.0195)
    alphas_cumprod = scheduler.alphas_cumprod
    del scheduler.alphas_cumprod  # a plain attribute: re-registered as a buffer, the same tensor
    scheduler.register_buffer("alphas_cumprod", alphas_cumprod)
    return {"unet": unet, "scheduler": scheduler}


def optimizers(nets):
    return {"unet": torch.optim.Adam(nets["unet"].parameters(), lr=1e-4)}


def batch(batch_size: int = 16, latent: tuple = (24, 24, 16), latent_channels: int = 3):
    return torch.randn(batch_size, latent_channels, *latent, device="cuda")


def step(nets, opts, images, vp):
    from monai.inferers import DiffusionInferer

    unet, scheduler = nets["unet"], nets["scheduler"]
    inferer = DiffusionInferer(scheduler)  # holds the scheduler, allocates nothing
    k = vp.keep
    vp.zero_grad(opts["unet"])
    with vp.autocast():
        k.noise = torch.randn_like(images)
        k.timesteps = torch.randint(0, scheduler.num_train_timesteps, (images.shape[0],), device=images.device).long()
        k.noise_pred = inferer(inputs=images, diffusion_model=unet, noise=k.noise, timesteps=k.timesteps)
        k.loss = F.mse_loss(k.noise_pred.float(), k.noise.float())
        if vp.accumulation > 1:
            k.loss = k.loss / vp.accumulation
    vp.backward(k.loss, opts["unet"], divided=True)
    vp.step(opts["unet"])
