"""vramplan: a VRAM budget planner and profiler for PyTorch training."""

__version__ = "0.1.0"
