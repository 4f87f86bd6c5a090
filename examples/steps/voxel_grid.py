"""Seed 000 as a step file: the voxel-grid 3D network of a StyleGaussian ``train_3dgdm.py`` run.

The note's question (``shared/seeds/000``, a memory guide in Chinese): which voxel resolution
(``--voxel_resolution`` 12 / 16 / 24 / 32, grown 16 -> 24 -> 32 by a curriculum) and batch
(1 to 4) fit a 4 / 6 / 8 / 12 GB card, with autocast + GradScaler and gradient
checkpointing ("已实现", already implemented, with ``torch.utils.checkpoint``)::

    vramplan estimate --step examples/steps/voxel_grid.py --gpu 24GB
    vramplan estimate --step examples/steps/voxel_grid.py --gpu 8GB --precision amp-fp16 --knob resolution=24
    vramplan estimate --step examples/steps/voxel_grid.py --gpu 6GB --precision amp-fp16 --checkpoint ResBlock3D
    vramplan recommend --step examples/steps/voxel_grid.py --gpu 8GB --max-knob resolution --knob-step 4
    vramplan table --step examples/steps/voxel_grid.py --sweep resolution=12,16,24,32 --sweep precision=fp32,amp-fp16

The network is ``examples/voxel_grid_net.py`` (``make_voxel_net``: a learned ``R^3`` feature
grid, a parameter, plus a two-level 3D UNet of ResBlock3D blocks; its docstring says what is
from the note and what was chosen). The note's ``checkpointing`` flag of that factory stays
False here: ``--checkpoint ResBlock3D`` is the same wrapping, done by vramplan.

The step (the note shows no training code, so this is what such a system plainly does): the
batch is the scene voxelised into ``in_channels`` features per voxel (RGB + density) and a
target view; the network's output grid is

* reconstructed against the input grid (MSE), and
* rendered along the last axis by front-to-back alpha compositing (density -> alpha,
  transmittance by a cumulative product, weights x colour summed over the ray) and compared
  with the target view (L1), the rendering loss of grid-based radiance / style methods.

Adam (lr 1e-3, as 3D Gaussian splatting code bases use) over every parameter. Defaults:
``resolution=32`` and batch 2, the note's "理想配置" (12 GB+: 32x32x32, batch 2-4);
``channels=32``, ``levels=2``, ``in_channels=4`` as in the factory (``resolution`` must be a
multiple of ``2**levels``, ``in_channels`` at least 4: colour and density are rendered).

Parameters of the default (resolution 32, channels 32, levels 2, in_channels 4): 3,197,220,
of which 1,048,576 are the feature grid ``32 * 32**3`` (the rest, 2,148,644, does not depend on
the resolution). This network alone, at the note's largest resolution and batch 2, peaks at
about 0.25 GiB in fp32: the 4 to 12 GB of the note's table are not spent by a grid network of
this size but by parts of the pipeline the note does not show (the scene's Gaussians, the style
images and whatever extracts their features are guesses); ``--max-knob resolution`` shows how
far the grid itself can grow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _examples import example  # examples/<name>.py by path (this file has its name)


make_voxel_net = example("voxel_grid_net").make_voxel_net

RENDER_WEIGHT = 1.0


def networks(resolution: int = 32, channels: int = 32, levels: int = 2, in_channels: int = 4):
    return {"net": make_voxel_net(resolution, channels, in_channels=in_channels, levels=levels)}


def optimizers(nets):
    return {"net": torch.optim.Adam(nets["net"].parameters(), lr=1e-3)}


def batch(batch_size: int = 2, resolution: int = 32, in_channels: int = 4):
    return {
        "grid": torch.randn(batch_size, in_channels, resolution, resolution, resolution, device="cuda"),
        "view": torch.rand(batch_size, 3, resolution, resolution, device="cuda"),
    }


def render(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, R, R, R) -> (B, 3, R, R): channels 0-2 colour, channel 3 density; the rays run
    along the last axis, front to back."""
    rgb = torch.sigmoid(grid[:, :3])
    sigma = F.softplus(grid[:, 3:4])
    alpha = 1.0 - torch.exp(-sigma / grid.shape[-1])
    trans = torch.cumprod(1.0 - alpha + 1e-10, dim=-1)
    trans = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)  # light reaching each sample
    return (alpha * trans * rgb).sum(dim=-1)


def step(nets, opts, batch, vp):
    net, opt = nets["net"], opts["net"]
    vp.zero_grad(opt)
    with vp.autocast():
        out = net(batch["grid"])
        recon = F.mse_loss(out.float(), batch["grid"])
        rendered = render(out.float())
        loss = recon + RENDER_WEIGHT * F.l1_loss(rendered, batch["view"])
    vp.backward(loss, opt)
    vp.step(opt)
