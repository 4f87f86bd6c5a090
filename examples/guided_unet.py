"""A guided-diffusion UNet, the model of the users' note seed 003.

From the note (``shared/seeds/003_*.txt``, a memory guide for a ``cell_train.py`` /
``Cell_Unet`` diffusion training script): the flags ``--batch_size``, ``--microbatch`` and
``--use_fp16`` and the evaluation helper ``calc_bpd_loop`` are those of openai's
improved-/guided-diffusion training scripts, so the model is that code base's ``UNetModel``
(``guided_diffusion/unet.py``); the note's table pairs batch 16/32/64 with microbatch
4/8/16, fp16 on an 8 GB card. The note gives no image size or widths.

Written here after ``guided_diffusion/unet.py`` (same structure and parameter names, so
the parameter count is that of ``UNetModel``):

* sinusoidal ``timestep_embedding`` (cos | sin, max period 10000) -> ``time_embed``
  (Linear, SiLU, Linear; 4 x model_channels);
* ``input_blocks``: a 3x3 conv, then per level ``num_res_blocks`` ResBlocks (+ an
  AttentionBlock where the resolution is in ``attention_resolutions``) and a Downsample
  (a strided conv, or a ``down`` ResBlock with ``resblock_updown``); ``middle_block``:
  ResBlock, AttentionBlock, ResBlock; ``output_blocks``: ``num_res_blocks + 1`` ResBlocks
  per level on the concatenated skip, attention as on the way down, an Upsample (nearest
  + conv); ``out``: GroupNorm, SiLU, zero-initialised 3x3 conv;
* ResBlock: GroupNorm32(32) (computed in fp32), SiLU, conv; the timestep embedding added
  (or FiLM scale/shift with ``use_scale_shift_norm``); GroupNorm, SiLU, dropout,
  zero-initialised conv; 1x1 conv skip when the width changes;
* AttentionBlock: GroupNorm, 1x1 Conv1d qkv, ``QKVAttentionLegacy`` (two einsums, the
  softmax in fp32), zero-initialised 1x1 Conv1d projection; guided-diffusion always
  checkpoints it (``checkpoint(self._forward, ..., True)``) -> ``checkpoint_attention=True``;
  ``use_checkpoint`` checkpoints the ResBlocks too. Checkpointing is
  ``torch.utils.checkpoint(use_reentrant=False)`` instead of guided-diffusion's own
  ``CheckpointFunction`` (same memory behaviour: nothing inside is saved);
* ``use_fp16`` does ``convert_to_fp16``: the convolutions of the input, middle and output
  blocks become fp16 and the torso runs in fp16 (``h = x.type(self.dtype)``), while
  ``time_embed`` and ``out`` stay fp32. The fp32 master copies and the microbatch loop of
  guided-diffusion's ``MixedPrecisionTrainer`` / ``TrainLoop`` belong to the training step,
  not the model (issue 10's step files).

Chosen here: the defaults are guided-diffusion's ``create_model`` ones for a 64x64 image
(``channel_mult=(1, 2, 3, 4)``, ``attention_resolutions`` given as resolutions "16,8" and
turned into downsample rates image_size // res), ``model_channels=128``,
``num_res_blocks=2``, ``num_heads=4``, ``use_scale_shift_norm=True`` (guided-diffusion's
default), ``learn_sigma=False`` (3 output channels; 6 with it), no class conditioning
(``num_classes=None``).

``forward(x, t=None)``: without timesteps it uses zeros (int64, one per sample), so the
plain MSE step of ``vramplan profile --model examples/guided_unet.py:make_guided_unet
--input 16x3x64x64`` can call it with one tensor. With ``use_fp16=True`` use ``--no-amp``
(GradScaler refuses fp16 gradients).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) sinusoidal embeddings, cos then sin (guided-diffusion's nn.py)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def _maybe_checkpoint(fn, flag: bool, *args: torch.Tensor) -> torch.Tensor:
    return checkpoint(fn, *args, use_reentrant=False) if flag and torch.is_grad_enabled() else fn(*args)


class TimestepEmbedSequential(nn.Sequential):
    """Passes the timestep embedding to the children that take one (ResBlocks)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, use_checkpoint: bool = False,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        out = out_channels or channels
        self.use_checkpoint, self.use_scale_shift_norm = use_checkpoint, use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(normalization(out), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out, out, 3, padding=1)))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self._forward, self.use_checkpoint, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[-1](self.h_upd(self.in_layers[:-1](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
    """Heads split before q/k/v; the scaled scores' softmax in fp32 (guided-diffusion)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = True) -> None:
        super().__init__()
        if num_head_channels != -1:
            assert channels % num_head_channels == 0, f"channels {channels} % num_head_channels {num_head_channels}"
            num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttentionLegacy(num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self._forward, self.use_checkpoint, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


def _convert_module_to_f16(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


class UNetModel(nn.Module):
    """guided-diffusion's UNetModel (2-D); ``attention_ds`` are downsample rates."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_ds: tuple[int, ...], dropout: float = 0.0,
                 channel_mult: tuple[int, ...] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: int | None = None, use_checkpoint: bool = False, checkpoint_attention: bool = True,
                 use_fp16: bool = False, num_heads: int = 1, num_head_channels: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False) -> None:
        super().__init__()
        self.image_size, self.model_channels, self.num_classes = image_size, model_channels, num_classes
        self.dtype = torch.float16 if use_fp16 else torch.float32
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, use_checkpoint, **kw)

        def attn(ch_: int) -> AttentionBlock:
            return AttentionBlock(ch_, num_heads, num_head_channels, use_checkpoint or checkpoint_attention)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))
        if use_fp16:  # convert_to_fp16: the torso's convolutions
            for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
                blocks.apply(_convert_module_to_f16)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:  # the --model step passes one tensor: timestep 0 for every sample
            t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        assert (y is not None) == (self.num_classes is not None), "y if and only if the model is class-conditional"
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


def make_guided_unet(
    image_size: int = 64,
    model_channels: int = 128,
    num_res_blocks: int = 2,
    attention_resolutions: tuple = (16, 8),
    channel_mult: tuple = (1, 2, 3, 4),
    num_heads: int = 4,
    num_head_channels: int = -1,
    in_channels: int = 3,
    learn_sigma: bool = False,
    num_classes: int | None = None,
    dropout: float = 0.0,
    use_scale_shift_norm: bool = True,
    resblock_updown: bool = False,
    use_checkpoint: bool = False,
    checkpoint_attention: bool = True,
    use_fp16: bool = False,
) -> UNetModel:
    """guided-diffusion's ``create_model``: ``attention_resolutions`` are resolutions (16 -> 16x16)."""
    attention_ds = tuple(image_size // int(res) for res in attention_resolutions)
    return UNetModel(
        image_size, in_channels, model_channels, in_channels * (2 if learn_sigma else 1), num_res_blocks,
        attention_ds, dropout, tuple(channel_mult), True, num_classes, use_checkpoint, checkpoint_attention,
        use_fp16, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown,
    )
