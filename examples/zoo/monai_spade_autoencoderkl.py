"""MONAI SPADEAutoencoderKL (a semantic-map-conditioned decoder) with a PatchDiscriminator, as
MONAI's generation/spade_ldm tutorial trains stage 1 (2D): L1 reconstruction, KL,
PatchAdversarialLoss (least squares).

    vramplan profile --step examples/zoo/monai_spade_autoencoderkl.py
    full size (benchmarks/bench_zoo.py --full): --knob channels=64,128,128,128 --knob norm_num_groups=32
        --knob roi=128,128 --batch 8
"""

from _zoo import adamw as optimizers, semantic_batch, autoencoder_gan

MODEL = "SPADEAutoencoderKL + PatchDiscriminator"
FULL = {"channels": (64, 128, 128, 128), "norm_num_groups": 32, "roi": (128, 128)}
FULL_BATCH = 8
LABELS = 6
KL_WEIGHT, ADV_WEIGHT = 1e-6, 0.01


def networks(channels: tuple = (8, 16, 16), norm_num_groups: int = 8):
    from monai.networks.nets import PatchDiscriminator, SPADEAutoencoderKL

    return {"autoencoder": SPADEAutoencoderKL(spatial_dims=2, label_nc=LABELS, in_channels=1, out_channels=1,
                                              channels=tuple(channels), latent_channels=3, num_res_blocks=1,
                                              norm_num_groups=norm_num_groups,
                                              attention_levels=(False,) * len(channels),
                                              with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
                                              spade_intermediate_channels=4 * channels[0]),
            "discriminator": PatchDiscriminator(spatial_dims=2, num_layers_d=3, channels=channels[0],
                                                in_channels=1, out_channels=1)}


def batch(batch_size: int = 2, roi: tuple = (32, 32)):
    return semantic_batch(batch_size, roi, 1, LABELS)


def step(nets, opts, batch, vp):
    images, seg = batch
    autoencoder_gan(nets, opts, images, vp, seg, kl_weight=KL_WEIGHT, adv_weight=ADV_WEIGHT)
