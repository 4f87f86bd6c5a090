"""Spec defaults, YAML loading, flag overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.config import Overrides, parse_bool_list, parse_shape, resolve_setup, setup_from_dict
from planner.errors import PlannerError
from planner.spec import TrainingSetup

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_default_mirrors_the_monai_3d_autoencoderkl_tutorial():
    s = TrainingSetup()
    assert s.kind == "ldm-stage1"
    assert s.data.voxel_size == (96, 96, 64)  # CenterSpatialCropd(roi_size=(96, 96, 64))
    ae = s.autoencoder
    assert ae.num_channels == (32, 64, 64)
    assert ae.latent_channels == 3
    assert ae.num_res_blocks == (1, 1, 1)
    assert ae.norm_num_groups == 16
    assert ae.attention_levels == (False, False, True)
    d = ae.training.discriminator
    assert (d.enabled, d.num_layers_d, d.num_channels) == (True, 3, 32)
    assert ae.training.perceptual.network_type == "squeeze"
    assert ae.training.perceptual.fake_3d_ratio == 0.2
    assert ae.training.batch_size == 1
    assert s.device.mixed_precision is True


def test_yaml_in_the_users_layout_loads(tmp_path):
    s = resolve_setup(EXAMPLES / "seed004_high_res.yaml")
    assert s.data.voxel_size == (256, 256, 64)
    assert s.autoencoder.num_channels == (16, 32, 64)
    assert s.autoencoder.training.gradient_accumulation_steps == 4
    assert s.autoencoder.training.discriminator.num_layers_d == 2
    assert s.autoencoder.training.use_gradient_checkpointing is True


def test_flags_override_the_file():
    ov = Overrides(voxel="128x128x64", batch=2, channels="32,64,128", attention="F,T,T", amp=False)
    s = resolve_setup(EXAMPLES / "seed004_high_res.yaml", ov)
    assert s.data.voxel_size == (128, 128, 64)
    assert s.autoencoder.training.batch_size == 2
    assert s.autoencoder.num_channels == (32, 64, 128)
    assert s.autoencoder.attention_levels == (False, True, True)
    assert s.device.mixed_precision is False
    # untouched keys keep the file's values
    assert s.autoencoder.norm_num_groups == 8


def test_int_num_res_blocks_applies_to_every_level():
    s = setup_from_dict({"autoencoder": {"num_channels": [32, 64, 64, 64], "num_res_blocks": 2,
                                          "attention_levels": [False, False, False, True]}})
    assert s.autoencoder.num_res_blocks == (2, 2, 2, 2)


def test_stage2_latent_shape():
    s = setup_from_dict({"kind": "ldm-stage2", "data": {"voxel_size": [256, 256, 64]}})
    # AutoencoderKL with 3 levels downsamples by 2**2 = 4: 256x256x64 -> 64x64x16, 3 latent channels
    assert s.unet_input_shape == (16, 3, 64, 64, 16)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"autoencoder": {"num_chanels": [1]}}, "unknown key 'autoencoder.num_chanels'"),
        ({"autoencoder": {"training": {"discriminator": {"layers": 2}}}},
         "unknown key 'autoencoder.training.discriminator.layers'"),
        ({"autoencoder": {"num_channels": [24, 48, 64], "norm_num_groups": 16}}, "not divisible by norm_num_groups=16"),
        ({"data": {"voxel_size": [250, 256, 64]}}, "data.voxel_size: [250, 256, 64] must be divisible by 4"),
        ({"data": {"voxel_size": [0, 256, 64]}}, "data.voxel_size: must be a positive integer"),
        ({"kind": "ldm-stage3"}, "kind: got 'ldm-stage3', valid: ldm-stage1, ldm-stage2"),
        ({"autoencoder": {"attention_levels": [False, True]}}, "autoencoder.attention_levels: needs 3 entries"),
        ({"autoencoder": {"training": {"optimizer": "lion"}}}, "valid: adam, adamw, sgd"),
        ({"data": {"voxel_size": [32, 32, 32]}, "autoencoder": {"training": {"discriminator": {"num_layers_d": 4}}}},
         "autoencoder.training.discriminator.num_layers_d: 4 layers shrink"),
        ({"device": {"mixed_precision": "yes"}}, "device.mixed_precision: must be true or false"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(data, fragment):
    with pytest.raises(PlannerError) as exc:
        setup_from_dict(data)
    msg = str(exc.value)
    assert fragment in msg
    assert "\n" not in msg


def test_flag_parsers():
    assert parse_shape("256x256x64") == (256, 256, 64)
    assert parse_shape("96×96×64") == (96, 96, 64)
    assert parse_bool_list("F,f,T,true,0", "--attention") == (False, False, True, True, False)
    for bad in ("256x256x", "256", "1x2x3x4", "-1x2x3"):
        with pytest.raises(PlannerError, match="--voxel"):
            parse_shape(bad)
    with pytest.raises(PlannerError, match="--attention"):
        parse_bool_list("F,maybe", "--attention")


def test_stage1_only_flags_are_rejected_for_stage2():
    with pytest.raises(PlannerError, match="--checkpointing: applies to kind ldm-stage1 only"):
        resolve_setup(None, Overrides(kind="ldm-stage2", checkpointing=True))


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(PlannerError, match="no such file"):
        resolve_setup(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("autoencoder: [1, 2\n")
    with pytest.raises(PlannerError, match="not valid YAML"):
        resolve_setup(bad)
