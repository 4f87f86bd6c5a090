"""Factories for `vramplan profile --model` tests."""

import torch


def tiny_conv_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1),
        torch.nn.GroupNorm(2, 8),
        torch.nn.SiLU(),
        torch.nn.Conv3d(8, 1, 3, padding=1),
    )


def not_a_module():
    return 42
