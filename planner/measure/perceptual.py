"""MONAI's ``PerceptualLoss`` for the LPIPS network types, without downloads.

Mirrors ``monai.losses.perceptual.PerceptualLoss`` from MONAI 1.6.1
(``monai/losses/perceptual.py`` as installed in this project's venv) for
``network_type`` in ``{"squeeze", "alex", "vgg"}``, with
``planner.measure.lpips_nets.LPIPS`` in place of ``lpips.LPIPS`` (random
weights; same modules and op sequence). The forward keeps MONAI's exact tensor
ops and their order: ``.float()`` -> ``permute`` -> ``.contiguous()`` ->
``view`` per axis, ``torch.randperm`` on the CPU then ``.to(device)``, the input
is batchified and ``index_select``-ed before the target is batchified, the
three axis losses are summed as ``sagittal + axial + coronal`` and the result
goes through ``torch.mean``. Those choices decide which copies exist at the
same time, so they decide the memory.

Not mirrored (not reachable with the LPIPS types or not relevant to memory):
``cache_dir``/``pretrained``/``pretrained_path`` (no downloads here),
``channel_wise`` (MONAI rejects it for non-MedicalNet networks), and the
MedicalNet / RadImageNet / torchvision-ResNet50 networks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from planner.errors import PlannerError
from planner.measure.lpips_nets import LPIPS

__all__ = ["PERCEPTUAL_NETWORK_TYPES", "PerceptualLoss"]

PERCEPTUAL_NETWORK_TYPES = ("squeeze", "alex", "vgg")


class PerceptualLoss(nn.Module):
    """2D / 2.5D ("fake 3D") LPIPS perceptual loss, as MONAI 1.6.1 computes it.

    Args:
        spatial_dims: 2 or 3.
        network_type: "squeeze", "alex" or "vgg" (case-insensitive, as MONAI).
            Note MONAI's own default is "alex"; the default here is "squeeze".
        is_fake_3d: with ``spatial_dims=3`` use the 2.5D approach (required for
            the LPIPS networks: MONAI would otherwise pick a MedicalNet model).
        fake_3d_ratio: fraction of the ``B*S`` slices of each axis used.
    """

    def __init__(
        self,
        spatial_dims: int,
        network_type: str = "squeeze",
        is_fake_3d: bool = True,
        fake_3d_ratio: float = 0.5,
    ) -> None:
        super().__init__()

        if spatial_dims not in [2, 3]:
            raise PlannerError(f"perceptual loss spatial_dims={spatial_dims!r} is not supported; valid: 2, 3")

        network_type = str(network_type).lower()
        if network_type not in PERCEPTUAL_NETWORK_TYPES:
            raise PlannerError(
                f"unknown perceptual network_type {network_type!r}; valid: {', '.join(PERCEPTUAL_NETWORK_TYPES)}"
            )
        if spatial_dims == 3 and is_fake_3d is False:
            # MONAI would build MedicalNetPerceptualSimilarity(net=network_type),
            # which rejects the LPIPS names.
            raise PlannerError(
                f"perceptual network_type {network_type!r} with spatial_dims=3 needs is_fake_3d=True "
                "(only MedicalNet networks are truly 3D)"
            )

        self.spatial_dims = spatial_dims
        self.perceptual_function: nn.Module
        # VGG, AlexNet and SqueezeNet are independently handled by LPIPS
        # (MONAI: ``LPIPS(pretrained=pretrained, net=network_type, verbose=False)``,
        # i.e. lpips defaults: eval_mode=True, use_dropout=True, pnet_tune=False).
        self.perceptual_function = LPIPS(net=network_type)

        self.is_fake_3d = is_fake_3d
        self.fake_3d_ratio = fake_3d_ratio
        self.channel_wise = False

    def _calculate_axis_loss(self, input: torch.Tensor, target: torch.Tensor, spatial_axis: int) -> torch.Tensor:
        """Perceptual loss over 2D slices along one spatial axis (input is BNHWD)."""

        def batchify_axis(x: torch.Tensor, fake_3d_perm: tuple) -> torch.Tensor:
            """Transform slices from one spatial axis into different instances in the batch."""
            slices = x.float().permute((0,) + fake_3d_perm).contiguous()
            slices = slices.view(-1, x.shape[fake_3d_perm[1]], x.shape[fake_3d_perm[2]], x.shape[fake_3d_perm[3]])

            return slices

        preserved_axes = [2, 3, 4]
        preserved_axes.remove(spatial_axis)

        channel_axis = 1
        input_slices = batchify_axis(x=input, fake_3d_perm=(spatial_axis, channel_axis) + tuple(preserved_axes))
        indices = torch.randperm(input_slices.shape[0])[: int(input_slices.shape[0] * self.fake_3d_ratio)].to(
            input_slices.device
        )
        input_slices = torch.index_select(input_slices, dim=0, index=indices)
        target_slices = batchify_axis(x=target, fake_3d_perm=(spatial_axis, channel_axis) + tuple(preserved_axes))
        target_slices = torch.index_select(target_slices, dim=0, index=indices)

        axis_loss = torch.mean(self.perceptual_function(input_slices, target_slices))

        return axis_loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: BNHW[D], same shape."""
        if target.shape != input.shape:
            raise PlannerError(f"ground truth has differing shape ({target.shape}) from input ({input.shape})")

        if self.spatial_dims == 3 and self.is_fake_3d:
            # Compute 2.5D approach
            loss_sagittal = self._calculate_axis_loss(input, target, spatial_axis=2)
            loss_coronal = self._calculate_axis_loss(input, target, spatial_axis=3)
            loss_axial = self._calculate_axis_loss(input, target, spatial_axis=4)
            loss = loss_sagittal + loss_axial + loss_coronal
        else:
            # 2D case
            loss = self.perceptual_function(input, target)

        # channel_wise is always False for the LPIPS networks
        loss = torch.mean(loss)

        return loss
