"""Seed 003 as a step file: guided-diffusion's UNet trained as its ``TrainLoop`` does.

The note's question (``shared/seeds/003``, a memory guide for ``cell_train.py`` / ``Cell_Unet``,
in Chinese): which ``--batch_size`` / ``--microbatch`` / ``--use_fp16`` fit a card; its table
pairs 8 GB with batch 16, microbatch 4, fp16; 12 GB with 32 / 8; 16 GB+ with 64 / 16.

guided-diffusion's ``--batch_size B --microbatch m`` runs ``B / m`` micro-batches of ``m``
samples per optimizer step: in vramplan's terms ``--batch m --accum B/m``. This file's default
micro-batch is the note's 16 GB+ row's microbatch 16; give ``--accum 4`` for its batch 64::

    vramplan estimate --step examples/steps/guided_unet.py --gpu 24GB --batch 16 --accum 4
    vramplan estimate --step examples/steps/guided_unet.py --gpu 16GB --batch 16 --accum 4
    vramplan estimate --step examples/steps/guided_unet.py --gpu 8GB --batch 4 --accum 4 \\
        --knob use_fp16=true --precision fp16-master
    vramplan recommend --step examples/steps/guided_unet.py --gpu 8GB
    vramplan table --step examples/steps/guided_unet.py --sweep batch=4,8,16 --accum 4

The UNet is ``examples/guided_unet.py`` (``make_guided_unet``, guided-diffusion's
``create_model`` for a 64x64 image: ``model_channels=128``, ``channel_mult=(1, 2, 3, 4)``,
attention at 16x16 and 8x8, 4 heads, scale-shift norm; its attention blocks are always
checkpointed, as guided-diffusion's are). ``--knob use_fp16=true`` is guided-diffusion's
``--use_fp16``: the factory converts the torso's convolutions to fp16 and the model casts its
input itself; use it with ``--precision fp16-master``, which is guided-diffusion's
``MixedPrecisionTrainer``: fp32 master copies of the parameters for AdamW, the fp16 gradients
kept between steps (``zero_grad`` zeroes them in place), loss scale 2**20.
``--checkpoint ResBlock`` is its ``--use_checkpoint``. (With ``use_fp16=false`` the half
precisions fail: vramplan halves the whole UNet, and the model's own ``h = x.type(self.dtype)``
casts the input back to fp32 before an fp16 convolution; that is guided-diffusion's code, not
vramplan's.)

The step (``TrainLoop.forward_backward`` with ``GaussianDiffusion.training_losses``, loss type
MSE, ``learn_sigma=False``): the batch holds the images and, as the ``UniformSampler`` draws
them, one integer timestep per sample; ``q_sample`` noises the image,
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, with the linear schedule of 1000 steps
gathered by ``t`` (``_extract_into_tensor``); the model predicts eps and the loss is the mean
squared error per sample (``mean_flat``), averaged. After the optimizer step (the last
micro-batch), the EMA is updated: ``ema_params`` are copies of the (master) parameters, on the
GPU, fp32 even under ``use_fp16``; here they are the third network ``ema``, an fp32 UNet of the
same shape with ``requires_grad_(False)``, updated as ``update_ema`` does
(``targ.mul_(rate).add_(src, alpha=1 - rate)``, rate 0.9999). The optimizer is
guided-diffusion's: ``AdamW(lr=1e-4, weight_decay=0.0)``.

Parameters of the default: model 92,025,731, EMA 92,025,731 (frozen): 184,051,462 in all.
"""

from __future__ import annotations

import torch

from _examples import example  # examples/<name>.py by path (this file has its name)


make_guided_unet = example("guided_unet").make_guided_unet

DIFFUSION_STEPS = 1000  # guided-diffusion's --diffusion_steps default, --noise_schedule linear
EMA_RATE = 0.9999


# recommendations in guided-diffusion's own flags (planner/terms.py)
TERMS = {
    "fp16-master": "--use_fp16 True (with --knob use_fp16=true)",
    "checkpoint": "--use_checkpoint True",
    "accumulation": "--batch_size {effective} --microbatch {batch}",
}


def networks(image_size: int = 64, model_channels: int = 128, num_res_blocks: int = 2,
             channel_mult: tuple = (1, 2, 3, 4), attention_resolutions: tuple = (16, 8), use_fp16: bool = False):
    kw = dict(image_size=image_size, model_channels=model_channels, num_res_blocks=num_res_blocks,
              channel_mult=tuple(channel_mult), attention_resolutions=tuple(attention_resolutions))
    model = make_guided_unet(**kw, use_fp16=use_fp16)
    ema = make_guided_unet(**kw, use_fp16=False)  # copies of the fp32 master parameters
    ema.load_state_dict(model.state_dict())
    return {"model": model, "ema": ema.requires_grad_(False)}


def optimizers(nets):
    return {"model": torch.optim.AdamW(nets["model"].parameters(), lr=1e-4, weight_decay=0.0)}


def batch(batch_size: int = 16, image_size: int = 64):
    return {"x": torch.randn(batch_size, 3, image_size, image_size, device="cuda"),
            "t": torch.randint(0, DIFFUSION_STEPS, (batch_size,), device="cuda")}


def _extract(arr: torch.Tensor, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """guided-diffusion's ``_extract_into_tensor``: ``arr[t]`` as fp32, broadcast to ``shape``."""
    res = arr.to(device=t.device)[t].float()
    while res.dim() < len(shape):
        res = res[..., None]
    return res.expand(shape)


def step(nets, opts, batch, vp):
    model, ema, opt = nets["model"], nets["ema"], opts["model"]
    x0, t = batch["x"], batch["t"]
    vp.zero_grad(opt)
    # q_sample with the linear schedule (get_named_beta_schedule("linear", 1000), float64)
    betas = torch.linspace(1e-4, 0.02, DIFFUSION_STEPS, dtype=torch.float64, device=x0.device)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    noise = torch.randn_like(x0)
    x_t = _extract(alphas_cumprod.sqrt(), t, x0.shape) * x0 + _extract((1.0 - alphas_cumprod).sqrt(), t, x0.shape) * noise
    with vp.autocast():
        out = model(x_t, t)
        # mean_flat((target - model_output) ** 2), target = noise; the UniformSampler's weights are 1
        loss = ((noise - out.float()) ** 2).mean(dim=(1, 2, 3)).mean()
    vp.backward(loss, opt)
    vp.step(opt)
    if vp.last_micro:  # took_step -> _update_ema
        with torch.no_grad():
            for targ, src in zip(ema.parameters(), model.parameters()):
                targ.mul_(EMA_RATE).add_(src, alpha=1 - EMA_RATE)
