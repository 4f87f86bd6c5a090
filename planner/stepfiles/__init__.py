"""Step files that ship with vramplan, and the engines registered for them. Torch-free.

- ``MODEL_STEP``: the plain MSE step behind ``--model``.
- ``ldm_stage1.py`` / ``ldm_stage2.py``: the built-in MONAI steps (shared/design.md) as the step
  files they are, ``--step ldm-stage1`` / ``--step ldm-stage2`` (equal to the built-in step to the
  byte: tests/test_one_world.py, tests/test_ldm_stage2_step.py). A registered analytic engine
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
    "ldm-stage1": ("voxel", "channels", "attention", "perceptual", "disc_layers", "disc_channels"),
    "ldm-stage2": ("channels", "attention"),
}
"""The step file's knobs the analytic engine takes, each the built-in step's knob of the same
name and values (planner/setup_flags.py ``BUILTIN_KNOBS``); the file's other knobs
(``latent_channels``; stage 2's ``latent``, ``num_head_channels``, ...) are traced."""


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
