"""The example step files' model factories, from ``examples/<name>.py`` by path: a plain
``import rgbd_policy`` from a step file finds the step file itself (the same name)."""

import importlib.util
from pathlib import Path


def example(name: str):
    path = Path(__file__).resolve().parent.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"vramplan_example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
