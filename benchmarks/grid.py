"""The configuration grid the accuracy benchmark and calibration run over.

Each entry is (name, YAML-layout mapping). Together they span every knob: voxel
sizes from 32^3 to 256x256x64, channel sets and levels, residual blocks, attention
levels and non-local attention, flash attention, checkpointing, the perceptual
network and its ratio, discriminator layers and channels, batch 1-4 (16 for stage
2), accumulation, AMP fp16 / bf16 / off, and each optimizer. Add a configuration by
appending a line here.
"""

from __future__ import annotations


def _s1(voxel=(96, 96, 64), amp=True, **kw):
    ae = {
        k: kw.pop(k)
        for k in list(kw)
        if k in ("num_channels", "norm_num_groups", "attention_levels", "num_res_blocks",
                 "with_encoder_nonlocal_attn", "with_decoder_nonlocal_attn", "use_flash_attention", "latent_channels")
    }
    training = {}
    for k in list(kw):
        if k in ("batch_size", "gradient_accumulation_steps", "use_gradient_checkpointing", "use_perceptual_loss", "optimizer"):
            training[k] = kw.pop(k)
    if "perceptual" in kw:
        training["perceptual"] = kw.pop("perceptual")
    if "discriminator" in kw:
        training["discriminator"] = kw.pop("discriminator")
    dev = {"mixed_precision": bool(amp)}
    if amp == "bf16":
        dev["amp_dtype"] = "bfloat16"
    assert not kw, kw
    ae["training"] = training
    return {"kind": "ldm-stage1", "data": {"voxel_size": list(voxel)}, "autoencoder": ae, "device": dev}


def _s2(voxel=(256, 256, 64), amp=True, **kw):
    d = {k: kw.pop(k) for k in list(kw) if k in ("num_channels", "attention_levels", "num_head_channels",
                                                   "num_res_blocks", "use_flash_attention", "input")}
    training = {k: kw.pop(k) for k in list(kw) if k in ("batch_size", "gradient_accumulation_steps", "optimizer")}
    dev = {"mixed_precision": bool(amp)}
    if amp == "bf16":
        dev["amp_dtype"] = "bfloat16"
    assert not kw, kw
    d["training"] = training
    return {"kind": "ldm-stage2", "data": {"voxel_size": list(voxel)}, "diffusion": d, "device": dev}


GRID: list[tuple[str, dict]] = [
    # ---- stage 1: the tutorial model and its knobs
    ("s1 tutorial default 96x96x64", _s1()),
    ("s1 32^3 fp32", _s1((32, 32, 32), amp=False)),
    ("s1 64^3", _s1((64, 64, 64))),
    ("s1 128x128x64", _s1((128, 128, 64))),
    ("s1 256x256x64", _s1((256, 256, 64))),
    ("s1 256x256x64 flash", _s1((256, 256, 64), use_flash_attention=True)),
    ("s1 256x256x64 flash+ckpt", _s1((256, 256, 64), use_flash_attention=True, use_gradient_checkpointing=True)),
    ("s1 128x128x64 ckpt", _s1((128, 128, 64), use_gradient_checkpointing=True)),
    ("s1 ch 16,32,64 g8", _s1((128, 128, 64), num_channels=[16, 32, 64], norm_num_groups=8)),
    ("s1 ch 32,64,128 att FTT", _s1((64, 64, 64), num_channels=[32, 64, 128], attention_levels=[False, True, True])),
    ("s1 ch 24,48,64 g8", _s1((96, 96, 64), num_channels=[24, 48, 64], norm_num_groups=8)),
    ("s1 res blocks 2", _s1((96, 96, 64), num_res_blocks=2)),
    ("s1 4 levels FFTT", _s1((128, 128, 64), num_channels=[32, 64, 64, 64], attention_levels=[False, False, True, True])),
    ("s1 no attention at all", _s1((128, 128, 64), attention_levels=[False, False, False],
                                   with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)),
    ("s1 no non-local attention", _s1((96, 96, 64), with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)),
    ("s1 latent 8", _s1((96, 96, 64), latent_channels=8)),
    ("s1 no perceptual", _s1((128, 128, 64), use_perceptual_loss=False)),
    ("s1 alex ratio 0.5", _s1((96, 96, 64), perceptual={"network_type": "alex", "fake_3d_ratio": 0.5})),
    ("s1 vgg ratio 0.1", _s1((96, 96, 64), perceptual={"network_type": "vgg", "fake_3d_ratio": 0.1})),
    ("s1 squeeze ratio 1.0", _s1((64, 64, 64), perceptual={"network_type": "squeeze", "fake_3d_ratio": 1.0})),
    ("s1 disc 2x16", _s1((96, 96, 64), discriminator={"num_layers_d": 2, "num_channels": 16})),
    ("s1 disc 4x64", _s1((128, 128, 64), discriminator={"num_layers_d": 4, "num_channels": 64})),
    ("s1 no discriminator", _s1((96, 96, 64), discriminator={"enabled": False})),
    ("s1 disc instance norm", _s1((96, 96, 64), discriminator={"norm": "instance"})),
    ("s1 batch 2", _s1((96, 96, 64), batch_size=2)),
    ("s1 batch 4", _s1((64, 64, 32), batch_size=4)),
    ("s1 accum 4", _s1((96, 96, 64), gradient_accumulation_steps=4)),
    ("s1 batch 2 accum 2", _s1((64, 64, 64), batch_size=2, gradient_accumulation_steps=2)),
    ("s1 fp32 96x96x64", _s1((96, 96, 64), amp=False)),
    ("s1 fp32 ckpt", _s1((96, 96, 64), amp=False, use_gradient_checkpointing=True)),
    ("s1 fp32 flash", _s1((96, 96, 64), amp=False, use_flash_attention=True)),
    ("s1 bf16", _s1((96, 96, 64), amp="bf16")),
    ("s1 adamw", _s1((96, 96, 64), optimizer="adamw")),
    ("s1 sgd", _s1((96, 96, 64), optimizer="sgd")),
    ("s1 seed004 combo A", _s1((256, 256, 64), num_channels=[16, 32, 64], norm_num_groups=8, use_perceptual_loss=False,
                               use_gradient_checkpointing=True, gradient_accumulation_steps=4,
                               discriminator={"num_layers_d": 2, "num_channels": 16})),
    # ---- stage 2: diffusion UNet
    ("s2 latent of 256x256x64 b16", _s2()),
    ("s2 latent of 128x128x64 b4", _s2((128, 128, 64), batch_size=4)),
    ("s2 flash b16", _s2(use_flash_attention=True)),
    ("s2 fp32 b4", _s2((128, 128, 64), amp=False, batch_size=4)),
    ("s2 image 64^3 b2", _s2((64, 64, 64), input="image", batch_size=2)),
    ("s2 ch 32,64,64 FTT", _s2((128, 128, 64), num_channels=[32, 64, 64], attention_levels=[False, True, True],
                                num_head_channels=[0, 32, 32], batch_size=4)),
    ("s2 sgd", _s2((128, 128, 64), optimizer="sgd", batch_size=4)),
    ("s2 accum 2", _s2((128, 128, 64), gradient_accumulation_steps=2, batch_size=4)),
    ("s2 b1 latent of 64^3", _s2((64, 64, 64), batch_size=1)),
    ("s2 bf16", _s2((128, 128, 64), amp="bf16", batch_size=4)),
    ("s2 res blocks 1", _s2((128, 128, 64), num_res_blocks=1, batch_size=4)),
]
