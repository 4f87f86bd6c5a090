"""An RGB-D transformer navigation policy, the model of the users' note seed 002.

From the note (``shared/seeds/002_*.txt``, an OOM report of a ``navdp_configs.py`` /
``train.py`` Hugging Face Trainer run on a 24 GB card, 23.55 GiB total):

* batch 16; RGB + depth input (the debug print ``[16, 8, 256, 384]``);
* "Transformer序列长度: 512 (下采样后)": the transformer runs on 512 tokens after
  downsampling -> here ``queries=512``;
* "预测序列长度: 24": 24 predicted steps -> ``steps=24``;
* "模型参数: 82,190,602": the default here has 81,684,507 (0.6 % fewer);
* the fixes it proposes: ``bf16=True`` and ``gradient_checkpointing=True`` (Trainer flags;
  AdamW is the Trainer's optimizer).

Chosen here (the note gives no architecture):

* the input is one square RGB-D frame, ``(B, 4, S, S)`` (RGB + depth stacked as channels;
  the note's frames are 256x384 with 8 channels, e.g. two RGB-D frames, and 224 px is
  the usual backbone size) -> a ViT-style ``Conv2d(4, width, patch, stride=patch)`` patch
  embedding with a learned position embedding, ``(S / patch)**2`` tokens;
* the downsampling to 512 tokens is a resampler: ``queries`` learned queries cross-attend
  once to the patch tokens, so the encoder's sequence length is ``queries`` whatever S is,
  as in the note;
* the encoder: ``depth`` pre-norm blocks of width 768 / 12 heads (ViT-B's), self-attention
  through ``F.scaled_dot_product_attention`` on ``(B, H, L, d)`` views whose last
  dimension is contiguous, GELU MLP; ``mlp_ratio=3.5`` (not ViT-B's 4) is chosen so that
  the default lands at the note's ~82M parameters;
* the head: LayerNorm, ``Linear(width, action_dim)`` per query, then ``Linear(queries,
  steps)`` over the query axis: ``(B, steps, action_dim)``; ``action_dim=3`` (planar
  waypoint dx, dy, dyaw) is a guess;
* ``gradient_checkpointing=True`` checkpoints every encoder block (what a Trainer's
  ``gradient_checkpointing=True`` does to a transformer's layers), with
  ``torch.utils.checkpoint(use_reentrant=False)``, in training mode only.

Parameter count of the default (C = width 768, h = int(3.5 C) = 2688, p = 16,
N = (224 / 16)**2 = 196, Q = 512, T = 24, A = 3)::

    patch embedding   4 p^2 C + C                            787,200
    position + queries (N + Q) C                             543,744
    resampler         4 C^2 + 4 C  (+ 2 LayerNorms, 4 C)   2,365,440
    12 blocks         12 (4 C^2 + 4 C + 2 C h + h + C + 4 C) 77,971,968
    final norm + head 2 C + (C A + A) + (Q T + T)             16,155
    total                                                 81,684,507

``vramplan profile --model examples/rgbd_policy.py:make_rgbd_policy --input 16x4x224x224``
runs the plain MSE ``--model`` step on the ``(B, steps, action_dim)`` output (AMP: autocast
fp16 + GradScaler, not the note's bf16; ``--optimizer adamw`` for the Trainer's AdamW).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Multi-head self- (``ctx is None``) or cross-attention through SDPA."""

    def __init__(self, width: int, heads: int, cross: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        assert width % heads == 0, f"width {width} is not divisible by heads {heads}"
        self.heads, self.dropout = heads, dropout
        if cross:
            self.q, self.kv = nn.Linear(width, width), nn.Linear(width, 2 * width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        if ctx is None:  # (3, B, H, L, d) views, last dimension contiguous
            q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q(x).view(b, n, h, d).transpose(1, 2)
            k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer encoder block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RGBDPolicy(nn.Module):
    """(B, 4, S, S) RGB-D frame -> (B, steps, action_dim) predicted actions."""

    def __init__(self, image_size: int, width: int, depth: int, heads: int, queries: int, steps: int,
                 patch_size: int, mlp_ratio: float, action_dim: int, in_channels: int, dropout: float,
                 gradient_checkpointing: bool) -> None:
        super().__init__()
        assert image_size % patch_size == 0, f"image_size {image_size} is not a multiple of patch_size {patch_size}"
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2, width) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, queries, width) * 0.02)
        self.query_norm, self.token_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.resample = Attention(width, heads, cross=True, dropout=dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.action = nn.Linear(width, action_dim)
        self.to_steps = nn.Linear(queries, steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        q = self.queries.expand(x.shape[0], -1, -1)
        h = q + self.resample(self.query_norm(q), self.token_norm(tokens))  # (B, Q, C)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        a = self.action(self.norm(h))  # (B, Q, A)
        return self.to_steps(a.transpose(1, 2)).transpose(1, 2)  # (B, T, A)


def make_rgbd_policy(
    image_size: int = 224,
    width: int = 768,
    depth: int = 12,
    heads: int = 12,
    queries: int = 512,
    steps: int = 24,
    patch_size: int = 16,
    mlp_ratio: float = 3.5,
    action_dim: int = 3,
    in_channels: int = 4,
    dropout: float = 0.0,
    gradient_checkpointing: bool = False,
) -> RGBDPolicy:
    """The seed-002 policy; the default has 81,684,507 parameters (see the module docstring)."""
    return RGBDPolicy(image_size, width, depth, heads, queries, steps, patch_size, mlp_ratio, action_dim,
                      in_channels, dropout, gradient_checkpointing)
