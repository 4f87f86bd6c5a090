"""A 3D VAE for radar volumes built from ResBlock3D blocks (users' seed 001).

Profile it with the ``--model`` MSE step::

    vramplan profile --model examples/radar_vae.py:make_radar_vae --input 1x1x64x64x32 --no-amp

The input is ``B x in_channels x H x W x D`` with every spatial size divisible by
``2**(len(channel_mult) - 1)``; ``forward`` returns the reconstruction, with the
input's shape, because the ``--model`` step is an MSE on one output tensor. The VAE's
KL term is not in that step: :meth:`RadarVAE.encode` gives ``(mu, logvar)`` and
:func:`kl_loss` the KL, and the step file of issue 10 is what will add
``kl_weight * KL`` to the loss.

What comes from the note (``seeds/001``, "显存优化最终方案总结", in Chinese):

- a 3D VAE whose encoder and decoder (``VAE3DEncoder`` / ``VAE3DDecoder``) are made
  of ``ResBlock3D`` blocks, with a KL loss;
- the standard configuration ``base_channels=32, channel_mult=(1, 2, 4)`` (the
  defaults here) and the "ultra lightweight" one ``base_channels=16,
  channel_mult=(1, 2, 2)``; ``num_res_blocks=1`` (the note suggests "1 -> 0" next);
- the note's parameter counts, 7.65M (standard) and 0.69M (ultra lightweight);
- gradient checkpointing "for ResBlock3D, VAE3DEncoder, VAE3DDecoder"
  (``use_checkpoint``): ``use_checkpoint=True`` wraps each ResBlock3D and each
  attention block in ``torch.utils.checkpoint``;
- AMP with autocast: vramplan's ``--amp`` (the default), nothing in the model.

What the note does NOT show, and so what was chosen here:

- the note has no model code. The attention at the bottom follows issue 9's
  description of such a VAE ("attention transposes q/k/v before
  scaled_dot_product_attention"), in the common latent-diffusion ``AttnBlock``
  style: q, k and v from 1x1x1 ``Conv3d``\\s, then
  ``F.scaled_dot_product_attention`` on views made by ``reshape`` + ``transpose``
  of the channels-first tensor. Those views have a last-dimension stride of
  ``N`` (the number of voxels), not 1, so on CUDA neither flash nor memory-efficient
  attention accepts them and torch runs the math kernel, which materialises the
  ``B x heads x N x N`` scores (fp32 even under fp16 autocast). That is
  deliberate: it is the layout that makes such VAEs run out of memory, and what
  vramplan's SDPA emulation is there to show. Do not ``.contiguous()`` it here;
- ResBlock3D: GroupNorm(8 groups) -> SiLU -> Conv3d 3x3x3, twice, plus the skip
  (a 1x1x1 Conv3d when the width changes). 8 groups, not 32, because the note's
  ultra-lightweight 16-channel configuration must build;
- downsampling: a stride-2 3x3x3 Conv3d between levels (``len(channel_mult) - 1``
  of them); upsampling: nearest x2 + 3x3x3 Conv3d;
- encoder: conv_in, per level ``num_res_blocks`` ResBlock3D (+ downsample), a
  middle ResBlock3D -> attention -> ResBlock3D at the bottom, GroupNorm + SiLU +
  Conv3d to ``2 * latent_channels`` (mu, logvar); the decoder mirrors it
  (conv_in from the latent, the same middle, the levels in reverse, GroupNorm +
  SiLU + Conv3d to ``in_channels``);
- ``latent_channels=4``, one attention head. With these choices the standard
  configuration has 6.62M parameters (6,617,449) and the ultra-lightweight one 0.58M
  (575,833); the note says 7.65M and 0.69M. Its code is not in the note, so the counts
  are close but not matched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["RadarVAE", "ResBlock3D", "SelfAttention3D", "kl_loss", "make_radar_vae"]


def _norm(ch: int, groups: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, ch), ch, eps=1e-6)


def _maybe_checkpoint(use: bool, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if use and module.training:
        return checkpoint(module, x, use_reentrant=False)
    return module(x)


class ResBlock3D(nn.Module):
    """GroupNorm -> SiLU -> Conv3d, twice, plus the residual (1x1x1-projected when widths differ)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention3D(nn.Module):
    """Self-attention over all voxels: 1x1x1 Conv3d q/k/v, SDPA on reshape+transpose views.

    ``q.reshape(b, heads, c // heads, n).transpose(-1, -2)`` is a ``(b, heads, n, d)``
    view whose last dimension has stride ``n``: CUDA's fused kernels reject it and the
    math kernel runs (see the module docstring).
    """

    def __init__(self, ch: int, heads: int = 1) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention: {ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = _norm(ch)
        self.q = nn.Conv3d(ch, ch, 1)
        self.k = nn.Conv3d(ch, ch, 1)
        self.v = nn.Conv3d(ch, ch, 1)
        self.proj_out = nn.Conv3d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        n = 1
        for s in spatial:
            n *= s
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        # (b, c, X, Y, Z) -> (b, heads, d, n) -> (b, heads, n, d): a transposed view, not a copy
        q, k, v = (t.reshape(b, self.heads, c // self.heads, n).transpose(-1, -2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, *spatial)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Middle(nn.Module):
    """ResBlock3D -> (attention) -> ResBlock3D at the bottom of the encoder or decoder."""

    def __init__(self, ch: int, attention: bool, heads: int, use_checkpoint: bool) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.block1 = ResBlock3D(ch, ch)
        self.attn = SelfAttention3D(ch, heads) if attention else None
        self.block2 = ResBlock3D(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _maybe_checkpoint(self.use_checkpoint, self.block1, x)
        if self.attn is not None:
            x = _maybe_checkpoint(self.use_checkpoint, self.attn, x)
        return _maybe_checkpoint(self.use_checkpoint, self.block2, x)


class VAE3DEncoder(nn.Module):
    def __init__(
        self, in_channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
        latent_channels: int, attention: bool, heads: int, use_checkpoint: bool,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.conv_in = nn.Conv3d(in_channels, base_channels, 3, padding=1)
        layers: list[nn.Module] = []
        ch = base_channels
        for i, mult in enumerate(channel_mult):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                layers.append(ResBlock3D(ch, out))
                ch = out
            if i != len(channel_mult) - 1:
                layers.append(Downsample(ch))
        self.down = nn.ModuleList(layers)
        self.mid = _Middle(ch, attention, heads, use_checkpoint)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv3d(ch, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for layer in self.down:
            h = _maybe_checkpoint(self.use_checkpoint and isinstance(layer, ResBlock3D), layer, h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE3DDecoder(nn.Module):
    def __init__(
        self, out_channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
        latent_channels: int, attention: bool, heads: int, use_checkpoint: bool,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        ch = base_channels * channel_mult[-1]
        self.conv_in = nn.Conv3d(latent_channels, ch, 3, padding=1)
        self.mid = _Middle(ch, attention, heads, use_checkpoint)
        layers: list[nn.Module] = []
        for i in reversed(range(len(channel_mult))):
            out = base_channels * channel_mult[i]
            for _ in range(num_res_blocks):
                layers.append(ResBlock3D(ch, out))
                ch = out
            if i != 0:
                layers.append(Upsample(ch))
        self.up = nn.ModuleList(layers)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv3d(ch, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for layer in self.up:
            h = _maybe_checkpoint(self.use_checkpoint and isinstance(layer, ResBlock3D), layer, h)
        return self.conv_out(F.silu(self.norm_out(h)))


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1) over the
    non-batch dims, summed over the batch and divided by the batch size."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    return kl.sum(dim=tuple(range(1, mu.dim()))).sum() / mu.shape[0]


class RadarVAE(nn.Module):
    """Encoder -> (mu, logvar) -> reparameterised z -> decoder. ``forward`` returns the
    reconstruction only (the ``--model`` MSE step needs one tensor)."""

    def __init__(
        self, *, in_channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
        latent_channels: int, attention: bool, heads: int, use_checkpoint: bool,
    ) -> None:
        super().__init__()
        args = (base_channels, tuple(channel_mult), num_res_blocks, latent_channels, attention, heads, use_checkpoint)
        self.factor = 2 ** (len(channel_mult) - 1)
        self.encoder = VAE3DEncoder(in_channels, *args)
        self.decoder = VAE3DDecoder(in_channels, *args)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if any(s % self.factor for s in x.shape[2:]):
            raise ValueError(f"spatial sizes {tuple(x.shape[2:])} must be divisible by {self.factor}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward_with_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar): what a VAE training step with a KL term uses."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z), mu, logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_posterior(x)[0]


def make_radar_vae(
    base_channels: int = 32,
    channel_mult: tuple = (1, 2, 4),
    attention: bool = True,
    in_channels: int = 1,
    *,
    num_res_blocks: int = 1,
    latent_channels: int = 4,
    heads: int = 1,
    use_checkpoint: bool = False,
) -> nn.Module:
    """The radar 3D VAE. Defaults: the note's standard configuration (32, (1, 2, 4));
    ``make_radar_vae(16, (1, 2, 2))`` is its ultra-lightweight one. ``attention``: the
    self-attention block in the encoder's and decoder's middle; ``use_checkpoint``:
    gradient checkpointing of every ResBlock3D and attention block."""
    return RadarVAE(
        in_channels=in_channels, base_channels=base_channels, channel_mult=channel_mult,
        num_res_blocks=num_res_blocks, latent_channels=latent_channels, attention=attention, heads=heads,
        use_checkpoint=use_checkpoint,
    )
