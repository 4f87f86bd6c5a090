"""Step files that ship with vramplan (``MODEL_STEP``: the step behind ``--model``)."""

from pathlib import Path

MODEL_STEP = str(Path(__file__).resolve().parent / "model_step.py")
