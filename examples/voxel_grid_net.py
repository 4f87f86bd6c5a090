"""A 3D network over a voxel grid whose resolution is the knob (users' seed 000).

Profile it with the ``--model`` MSE step::

    vramplan profile --model examples/voxel_grid_net.py:make_voxel_net --input 1x4x64x64x64

The input is ``B x in_channels x R x R x R`` with ``R == resolution`` (default 64,
``in_channels`` 4); the output has the input's shape, which is what the ``--model``
step needs (it takes the MSE of the output against a random target of the output's
shape).

What comes from the note (``seeds/000``, a StyleGaussian / ``train_3dgdm.py`` memory
guide, in Chinese):

- the memory knob is the voxel resolution ``--voxel_resolution`` (12, 16, 24, 32
  in the note's commands and its GPU table; a cubic ``R x R x R`` grid, e.g.
  "16x16x16", and a curriculum that grows it 16 -> 24 -> 32);
- batch 1 to 4 (the note's hardware table);
- gradient checkpointing with ``torch.utils.checkpoint`` ("已实现", already
  implemented): ``checkpointing=True`` wraps each residual block in it;
- mixed precision with autocast + GradScaler: that is vramplan's ``--amp`` (the
  default), nothing in the model.

What was chosen here (the note shows no network code at all):

- a learned feature volume ``grid`` of shape ``(1, channels, R, R, R)`` (a
  parameter, so the resolution also sizes the parameters, their gradients and
  Adam's two moments: ``4 * channels * R**3`` bytes each in fp32), added to the
  embedded input, as the voxel-feature grids of grid-based 3D style/radiance
  methods do;
- a small 3D UNet over it: a 3x3x3 stem to ``channels``, ``levels`` encoder levels
  of residual blocks (GroupNorm(8), SiLU, Conv3d, twice, plus the skip) with a
  stride-2 3x3x3 convolution between levels (channels doubling, capped at
  ``4 * channels``), a residual bottleneck, a mirrored decoder (nearest x2
  upsampling + 3x3x3 conv, concatenation with the encoder's skip, a residual
  block), and GroupNorm + SiLU + a 3x3x3 conv back to ``in_channels``;
- ``resolution`` must be divisible by ``2**levels`` (all of the note's 12, 16, 24 and
  32 are, with the default ``levels=2``); the default 64 is above the note's largest
  (32) so that the example shows where the memory goes; ``in_channels=4`` and
  ``channels=32`` are my picks.

Plain torch; no MONAI needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["VoxelGridNet", "make_voxel_net"]


def _norm(ch: int, groups: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, ch), ch, eps=1e-6)


class ResBlock3D(nn.Module):
    """GroupNorm -> SiLU -> Conv3d, twice, plus a (1x1x1-projected when widths differ) skip."""

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


class VoxelGridNet(nn.Module):
    """A learned ``R^3`` feature grid plus a 3D UNet; output shape == input shape."""

    def __init__(
        self, *, resolution: int, channels: int, in_channels: int, levels: int, checkpointing: bool
    ) -> None:
        super().__init__()
        if resolution % (2**levels):
            raise ValueError(f"resolution {resolution} must be divisible by 2**levels = {2 ** levels}")
        self.resolution = resolution
        self.checkpointing = checkpointing
        self.stem = nn.Conv3d(in_channels, channels, 3, padding=1)
        self.grid = nn.Parameter(torch.zeros(1, channels, resolution, resolution, resolution))
        nn.init.normal_(self.grid, std=0.02)
        widths = [min(channels * 2**i, channels * 4) for i in range(levels + 1)]
        self.enc = nn.ModuleList(ResBlock3D(widths[i], widths[i]) for i in range(levels))
        self.down = nn.ModuleList(nn.Conv3d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels))
        self.mid = ResBlock3D(widths[-1], widths[-1])
        self.up = nn.ModuleList(nn.Conv3d(widths[i + 1], widths[i], 3, padding=1) for i in range(levels))
        self.dec = nn.ModuleList(ResBlock3D(2 * widths[i], widths[i]) for i in range(levels))
        self.norm_out = _norm(channels)
        self.head = nn.Conv3d(channels, in_channels, 3, padding=1)

    def _block(self, block: nn.Module, *xs: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training:
            return checkpoint(block, *xs, use_reentrant=False)
        return block(*xs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (self.resolution,) * 3:
            raise ValueError(
                f"expected a {self.resolution}^3 voxel grid (B, C, {self.resolution}, {self.resolution}, "
                f"{self.resolution}), got {tuple(x.shape)}"
            )
        h = self.stem(x) + self.grid
        skips = []
        for block, down in zip(self.enc, self.down):
            h = self._block(block, h)
            skips.append(h)
            h = down(h)
        h = self._block(self.mid, h)
        for i in reversed(range(len(self.dec))):
            h = self.up[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = self._block(self.dec[i], torch.cat([h, skips[i]], dim=1))
        return self.head(F.silu(self.norm_out(h)))


def make_voxel_net(
    resolution: int = 64,
    channels: int = 32,
    *,
    in_channels: int = 4,
    levels: int = 2,
    checkpointing: bool = False,
) -> nn.Module:
    """The voxel-grid network for a ``resolution^3`` grid of ``in_channels`` features.

    ``resolution``: the voxel resolution (the note's ``--voxel_resolution``; divisible
    by ``2**levels``). ``channels``: width of the first level (doubling per level,
    capped at 4x). ``in_channels``: input/output feature channels. ``levels``: number
    of stride-2 downsamplings. ``checkpointing``: wrap each residual block in
    ``torch.utils.checkpoint`` (the note's gradient checkpointing).
    """
    return VoxelGridNet(
        resolution=resolution, channels=channels, in_channels=in_channels, levels=levels, checkpointing=checkpointing
    )
