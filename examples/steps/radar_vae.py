"""Seed 001 as a step file: the radar ResBlock3D VAE with its KL and 3D perceptual losses.

The note's question (``shared/seeds/001``, "显存优化最终方案总结", in Chinese): the VAE of
``train_latent_diffusion.py --mode train_vae`` needed 21.43 GB of a 23.64 GB card at the
standard configuration (``base_channels=32, channel_mult=(1, 2, 4)``, batch 8); the fixes were
the "ultra lightweight" configuration (``16, (1, 2, 2)``), batch 1 with gradient accumulation
8, AMP and gradient checkpointing of ResBlock3D. Which of them are needed, on which card::

    vramplan estimate --step examples/steps/radar_vae.py --gpu 24GB
    vramplan estimate --step examples/steps/radar_vae.py --gpu 24GB --precision amp-fp16 --checkpoint ResBlock3D
    vramplan estimate --step examples/steps/radar_vae.py --gpu 12GB --knob base_channels=16 \\
        --knob channel_mult=1,2,2 --batch 1 --accum 8 --precision amp-fp16
    vramplan recommend --step examples/steps/radar_vae.py --gpu 24GB
    vramplan table --step examples/steps/radar_vae.py --sweep base_channels=16,32 --sweep attention=true,false

The VAE is ``examples/radar_vae.py`` (``make_radar_vae``; its docstring says what comes from
the note and what was chosen: ResBlock3D encoder/decoder, a stride-2 conv per level, one
self-attention block in the middle of the encoder and of the decoder whose transposed q/k/v
views make CUDA run the math SDPA kernel). Its ``use_checkpoint`` flag stays False:
``--checkpoint ResBlock3D`` (or ``ResBlock3D,SelfAttention3D``) is the note's
``use_checkpoint=True`` done by vramplan.

The step, one micro-batch: ``forward_with_posterior`` (encode -> mu, logvar -> reparameterised
z -> decode), then

* the reconstruction loss, L1;
* the KL term (``kl_loss`` of the factory: 0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1), summed
  per sample, averaged over the batch), weight 1e-6;
* the note's ``Perceptual3DLoss`` ("LPIPS不适配3D ... 创建Perceptual3DLoss": LPIPS does not fit
  3D, so a 3D perceptual loss was written). Its network is not in the note; here it is a small
  frozen 3D conv feature net (three Conv3d + ReLU stages, 16/32/64 channels, the last two
  stride 2), in eval mode with ``requires_grad_(False)`` and no downloaded weights, a network
  of its own (``perceptual``; ``--knob perceptual=false`` drops it). The loss is LPIPS's form:
  per stage, features unit-normalised over channels, squared difference, mean; summed over
  stages; weight 0.1.

Adam (lr 1e-4) over the VAE. The loss weights and the optimizer are my picks (the note gives
none); they do not change the memory. Defaults: the note's standard configuration with
attention, batch 8 (its "标准配置 batch=8", the one that ran out of memory) and a volume of
``128 x 128 x 32`` voxels. The note does not give the radar volume's size: this one was chosen
because with it the standard configuration at batch 8 in fp32 traces to 21.49e9 bytes, the
note's "需要21.43GB" (64 x 64 x 32 gives 4.6e9). Every side must be divisible by
``2 ** (len(channel_mult) - 1)``; the attention's math-kernel scores grow with the square of
the bottom's voxel count, ``(H W D / 64)**2`` per sample.

Parameters of the default: VAE 6,617,449 (the note says 7.65M for its own code, see the
factory), perceptual net 69,664 (frozen): 6,687,113 in all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from _examples import example  # examples/<name>.py by path (this file has its name)


_vae = example("radar_vae")
make_radar_vae, kl_loss = _vae.make_radar_vae, _vae.kl_loss

KL_WEIGHT = 1e-6
PERCEPTUAL_WEIGHT = 0.1


class Perceptual3D(nn.Module):
    """A frozen 3D conv feature net and LPIPS's distance on its features (Perceptual3DLoss)."""

    def __init__(self, in_channels: int = 1, widths: tuple = (16, 32, 64)) -> None:
        super().__init__()
        stages, ch = [], in_channels
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(nn.Conv3d(ch, w, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()))
            ch = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = x.new_zeros(())
        for stage in self.stages:
            x, y = stage(x), stage(y)
            fx = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fy = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            loss = loss + (fx - fy).pow(2).sum(dim=1).mean()
        return loss


def networks(base_channels: int = 32, channel_mult: tuple = (1, 2, 4), attention: bool = True,
             perceptual: bool = True, latent_channels: int = 4):
    nets = {"vae": make_radar_vae(base_channels, tuple(channel_mult), attention, latent_channels=latent_channels)}
    if perceptual:
        nets["perceptual"] = Perceptual3D().eval().requires_grad_(False)
    return nets


def optimizers(nets):
    return {"vae": torch.optim.Adam(nets["vae"].parameters(), lr=1e-4)}


def batch(batch_size: int = 8, volume: tuple = (128, 128, 32)):
    return torch.randn(batch_size, 1, *volume, device="cuda")


def step(nets, opts, volume, vp):
    vae, opt, perceptual = nets["vae"], opts["vae"], nets.get("perceptual")
    vp.zero_grad(opt)
    with vp.autocast():
        recon, mu, logvar = vae.forward_with_posterior(volume)
        loss = F.l1_loss(recon.float(), volume) + KL_WEIGHT * kl_loss(mu.float(), logvar.float())
        if perceptual is not None:
            loss = loss + PERCEPTUAL_WEIGHT * perceptual(recon.float(), volume)
    vp.backward(loss, opt)
    vp.step(opt)
