"""The tiny step file the step-file tests trace (tests/test_stepfile_knobs.py, tests/test_distributed.py):
``depth`` residual ``Block``s ``x + fc2(relu(fc1(x)))`` (fc1: width -> hidden, fc2: hidden -> width) and
a ``head`` Linear (width -> width, or width -> classes with a cross-entropy loss); AdamW (foreach, as on
CUDA); fp32. Parameter order: blocks.0.fc1.weight, .fc1.bias, .fc2.weight, .fc2.bias, blocks.1...,
head.weight, head.bias. With the helpers those tests share: the allocator's 512-byte rounding,
the tiny network's parameter shapes and their element counts."""

TINY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, width, hidden, depth, classes):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width, hidden) for _ in range(depth)])
        self.head = nn.Linear(width, classes or width)

    def forward(self, x):
        return self.head(self.blocks(x))


def networks(width: int = 128, hidden: int = 512, depth: int = 2, classes: int = 0):
    return {"net": Net(width, hidden, depth, classes)}


def optimizers(nets):
    return {"net": torch.optim.AdamW(nets["net"].parameters(), lr=1e-3)}


def batch(batch_size: int = 64, width: int = 128, classes: int = 0):
    x = torch.randn(batch_size, width, device="cuda")
    if classes:
        return {"x": x, "y": torch.randint(0, classes, (batch_size,), device="cuda")}
    return {"x": x, "y": torch.randn(batch_size, width, device="cuda")}


def step(nets, opts, b, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        out = nets["net"](b["x"])
        if b["y"].dtype == torch.long:
            loss = F.cross_entropy(out.float(), b["y"])
        else:
            loss = F.mse_loss(out.float(), b["y"])
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def rounded(nbytes: int) -> int:
    """The CUDA caching allocator's 512-byte rounding (kMinBlockSize)."""
    return -(-nbytes // 512) * 512


def shapes(width: int = 128, hidden: int = 512, depth: int = 2, classes: int = 0) -> list[tuple[int, ...]]:
    """The tiny network's parameter shapes, in parameter (module) order."""
    block = [(hidden, width), (hidden,), (width, hidden), (width,)]
    return block * depth + [(classes or width, width), (classes or width,)]


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
