"""Step files that ship with vramplan, and the engines registered for them. Torch-free.

- ``MODEL_STEP``: the plain MSE step behind ``--model``.
- ``ldm_stage1.py`` / ``ldm_stage2.py``: the built-in MONAI steps (shared/design.md) as the step
  files they are, ``--step ldm-stage1`` / ``--step ldm-stage2``, and the only tracer of the built-in
  step: its YAML setup is mapped onto their knobs (``step_setup_of``; tests/test_one_world.py,
  tests/test_ldm_stage2_step.py). A registered analytic engine
  answers them (planner/analytic, the transcription of the same step, milliseconds) wherever the
  setup is one it can express (``ANALYTIC_KNOBS`` and the built-in step's values,
  planner/setup_flags.py ``BUILTIN_VALUES``), the tracer elsewhere; ``--engine`` chooses.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).absolute().parent
MODEL_STEP = str(HERE / "model_step.py")

PACKAGED: dict[str, str] = {"ldm-stage1": "ldm_stage1.py", "ldm-stage2": "ldm_stage2.py"}
"""--step NAME -> the packaged step file."""

PACKAGED_PRECISION = "amp-fp16"
"""The built-in steps' default precision (planner/spec.py ``DeviceSpec.mixed_precision``,
``amp_dtype``), also when traced as step files (a step file's own default is fp32)."""

ANALYTIC_KNOBS: dict[str, tuple[str, ...]] = {
    "ldm-stage1": ("voxel", "channels", "attention", "perceptual", "disc_layers", "disc_channels", "discriminator"),
    "ldm-stage2": ("channels", "attention"),
}
"""The step file's knobs the analytic engine takes, each the built-in step's knob of the same
name and values (planner/setup_flags.py ``BUILTIN_KNOBS``); the file's other knobs, the rest of
the YAML settings (``latent_channels``, ``num_res_blocks``, ``norm_num_groups``, ...; stage 2's
``latent``, ``num_head_channels``, ...), are traced."""


def packaged_kind(step: str | None) -> str | None:
    """The built-in step a --step names (``ldm-stage1``, or the packaged file's path), else None.
    A copy or a link elsewhere (examples/steps/ldm_stage1.py) is a step file like any other:
    traced, fp32 unless --precision says otherwise."""
    if step is None:
        return None
    if step in PACKAGED:
        return step
    try:
        path = Path(os.path.abspath(step))
    except (OSError, RuntimeError, ValueError):
        return None
    return next((kind for kind, name in PACKAGED.items() if path == HERE / name), None)


def packaged_path(kind: str) -> str:
    return str(HERE / PACKAGED[kind])


def step_setup_of(setup: "TrainingSetup") -> "StepSetup":  # noqa: F821 - planner/spec.py, planner/step_setup.py
    """The built-in step's YAML setup (planner/spec.py ``TrainingSetup``) as its packaged step file's
    setup: every YAML setting the step reads as the file's knob of that meaning, vramplan's as
    vramplan's knobs (batch, accumulation, precision, optimizer, allocator settings, GPUs and
    strategy). The one tracer of the built-in step is the step-file tracer on this setup
    (planner/measure/builtin_trace.py ``run_step``)."""
    from planner.step_setup import StepSetup

    if setup.kind == "ldm-stage1":
        ae = setup.autoencoder
        tr, disc, perc = ae.training, ae.training.discriminator, ae.training.perceptual
        knobs: dict = {
            "voxel": setup.data.voxel_size, "in_channels": setup.data.in_channels, "channels": ae.num_channels,
            "latent_channels": ae.latent_channels, "num_res_blocks": ae.num_res_blocks,
            "norm_num_groups": ae.norm_num_groups, "attention": ae.attention_levels,
            "encoder_nonlocal_attn": ae.with_encoder_nonlocal_attn,
            "decoder_nonlocal_attn": ae.with_decoder_nonlocal_attn, "flash_attention": ae.use_flash_attention,
            "use_checkpoint": tr.use_gradient_checkpointing, "discriminator": disc.enabled,
            "disc_layers": disc.num_layers_d, "disc_channels": disc.num_channels, "disc_norm": disc.norm,
            "perceptual": tr.use_perceptual_loss, "perceptual_network": perc.network_type,
            "fake_3d_ratio": float(perc.fake_3d_ratio),
        }
    else:
        d = setup.diffusion
        tr = d.training
        shape = setup.unet_input_shape
        knobs = {"latent": shape[2:], "latent_channels": shape[1], "channels": d.num_channels,
                 "attention": d.attention_levels, "num_head_channels": d.num_head_channels,
                 "num_res_blocks": d.num_res_blocks, "norm_num_groups": d.norm_num_groups,
                 "flash_attention": d.use_flash_attention}
    dev = setup.device
    precision = "fp32" if not dev.mixed_precision else ("amp-bf16" if dev.amp_dtype == "bfloat16" else "amp-fp16")
    return StepSetup(
        path=packaged_path(setup.kind), knobs=tuple(knobs.items()), batch_size=tr.batch_size,
        accumulation=tr.gradient_accumulation_steps, precision=precision,
        optimizer=None if tr.optimizer == "adam" else tr.optimizer,  # the file's own optimizers are Adam
        alloc_conf=dev.alloc_conf, gpus=setup.parallel.gpus, strategy=setup.parallel.strategy)
