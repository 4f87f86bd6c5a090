"""A vramplan step file: your own training step in a few lines of your own code.

    vramplan estimate --step examples/steps/template.py --gpu 24GB
    vramplan estimate --step examples/steps/template.py --knob width=256 --batch 32 --precision amp-bf16 --checkpoint auto
    vramplan recommend --step examples/steps/template.py --gpu 8GB
    vramplan table --step examples/steps/template.py --sweep width=64,128,256 --sweep precision=fp32,amp-fp16

Four functions, plus an optional DECLARE table:

* ``networks(**knobs)`` -> ``{name: nn.Module}``: every network of the step (a generator, a
  discriminator, a frozen perceptual net, an EMA copy: freeze with ``requires_grad_(False)``).
* ``optimizers(nets)`` -> ``{name: Optimizer}``: any ``torch.optim`` class with its options.
* ``batch(batch_size, **knobs)`` -> one micro-batch on the device: a tensor, a tuple, a dict,
  integer timesteps. ``device="cuda"`` and ``.cuda()`` work as in your script.
* ``step(nets, opts, batch, vp)``: one micro-batch of your step, your losses, your order.
  Where your script calls ``loss.backward()``, ``opt.step()`` and ``opt.zero_grad()``, call
  ``vp.backward(loss, opt)``, ``vp.step(opt)`` and ``vp.zero_grad(opt)``, and run forward passes
  inside ``with vp.autocast():``, so that vramplan can apply its knobs around your code:
  accumulation (the loss divided, zero_grad on the first micro-batch, step on the last),
  autocast fp16 with a GradScaler per optimizer or bf16, master weights, checkpointing,
  the SDPA backend, the optimizer class. ``vp.keep.<name> = tensor`` keeps a tensor alive
  into the next iteration, as a script's variables do (plain locals are freed when step
  returns). A script that divides its loss itself (``loss = loss / accum``, keeping only the
  quotient) writes that and calls ``vp.backward(loss, opt, divided=True)`` (``vp.accumulation``
  is the factor); ``vp.section("generator")`` names the part of the step that follows in the
  figures (``peak at it2.generator``).
* ``DECLARE = {"aten::nonzero": fn}`` (optional): the outputs of ops a trace without data
  cannot run (data-dependent shapes, CUDA extensions); vramplan names them when it meets one.

The keyword arguments of ``networks`` and ``batch`` (with their defaults) are the step's
knobs: ``--knob width=128`` sets one, ``table --sweep width=...`` sweeps it, ``recommend``
searches it and ``recommend --max-knob resolution`` maximises an integer one. A knob both
functions take (a resolution) gets the same value in both. ``batch_size``'s default is the
batch used when ``--batch`` is not given.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self, width: int, depth: int, features: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.out = nn.Linear(width, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


def networks(width: int = 128, depth: int = 4, features: int = 32):
    return {"net": Net(width, depth, features)}


def optimizers(nets):
    return {"net": torch.optim.AdamW(nets["net"].parameters(), lr=1e-4, weight_decay=0.01)}


def batch(batch_size: int = 16, tokens: int = 256, features: int = 32):
    x = torch.randn(batch_size, tokens, features, device="cuda")
    return {"x": x, "target": torch.randn_like(x)}


def step(nets, opts, batch, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        pred = nets["net"](batch["x"])
        loss = F.mse_loss(pred.float(), batch["target"])
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
