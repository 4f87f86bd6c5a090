"""MONAI VQVAE as MONAI's generation/3d_vqvae tutorial trains it (L1 reconstruction plus the
quantiser's commitment loss; the codebook is updated by exponential moving averages), with
MONAI's SSIMLoss added to the reconstruction term.

    vramplan profile --step examples/zoo/monai_vqvae.py
    full size (benchmarks/bench_zoo.py --full): --knob channels=256,256 --knob num_res_channels=256
        --knob embedding_dim=32 --knob roi=96,96,96 --batch 2
"""

import torch
import torch.nn.functional as F

from _zoo import adamw as optimizers

MODEL = "VQVAE"
FULL = {"channels": (256, 256), "num_res_channels": 256, "embedding_dim": 32, "roi": (96, 96, 96)}
FULL_BATCH = 2


def networks(channels: tuple = (8, 8), num_res_channels: int = 8, embedding_dim: int = 4):
    from monai.networks.nets import VQVAE

    return {"model": VQVAE(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(channels),
                           num_res_channels=num_res_channels, num_res_layers=2,
                           downsample_parameters=((2, 4, 1, 1),) * len(channels),
                           upsample_parameters=((2, 4, 1, 1, 0),) * len(channels),
                           num_embeddings=256, embedding_dim=embedding_dim)}


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return torch.rand(batch_size, 1, *roi, device="cuda")


def step(nets, opts, images, vp):
    from monai.losses import SSIMLoss

    ssim = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=7)
    vp.zero_grad(opts["model"])
    with vp.autocast():
        reconstruction, quantization_loss = nets["model"](images=images)
        recons = F.l1_loss(reconstruction.float(), images.float()) + ssim(reconstruction.float(), images.float())
        vp.keep.loss = recons + quantization_loss
    vp.backward(vp.keep.loss, opts["model"])
    vp.step(opts["model"])
