"""Seed 004's "性能对比" table, as the users wrote it, to set beside real figures.

The rows and their guessed memory and relative speed are transcribed from the
users' notes (shared/seeds/004: 显存优化指南, 性能对比). Every other setting is the
built-in default (MONAI's 3D AutoencoderKL tutorial). Channel sets whose widths
are not divisible by 16 use norm_num_groups 8, as the notes' own combos do.
"""

from __future__ import annotations

SEED004_ROWS = [
    # label, voxel, batch, channels, norm groups, AMP, perceptual, checkpointing, guessed memory, guessed speed
    ("默认 default", (64, 64, 64), 4, (32, 64, 64), 16, False, True, False, "~8GB", "1.0x"),
    ("默认+AMP default+AMP", (64, 64, 64), 4, (32, 64, 64), 16, True, True, False, "~5GB", "1.1x"),
    ("高分辨率-激进 high-res aggressive", (256, 256, 64), 1, (16, 32, 64), 8, True, False, False, "~12GB", "0.3x"),
    ("高分辨率-平衡 high-res balanced", (256, 256, 64), 1, (24, 48, 64), 8, True, True, False, "~18GB", "0.25x"),
    ("高分辨率+检查点 high-res + checkpointing", (256, 256, 64), 1, (16, 32, 64), 8, True, False, True, "~9GB", "0.2x"),
]


def seed004_configs() -> list[tuple[dict[str, str], dict]]:
    out = []
    for label, voxel, batch, ch, groups, amp, perc, ckpt, mem, speed in SEED004_ROWS:
        cfg = {
            "data": {"voxel_size": list(voxel)},
            "autoencoder": {
                "num_channels": list(ch),
                "norm_num_groups": groups,
                "training": {"batch_size": batch, "use_perceptual_loss": perc, "use_gradient_checkpointing": ckpt},
            },
            "device": {"mixed_precision": amp},
        }
        meta = {
            "config": label,
            "resolution": "x".join(map(str, voxel)),
            "batch": str(batch),
            "channels": str(list(ch)),
            "AMP": "yes" if amp else "no",
            "perceptual": "yes" if perc else "no",
            "checkpointing": "yes" if ckpt else "no",
            "seed 004 guessed memory": mem,
            "seed 004 guessed speed": speed,
        }
        out.append((meta, cfg))
    return out
