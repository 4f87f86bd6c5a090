"""The step behind ``--model FACTORY --input BxCx...`` on every command: your module, an MSE loss
against a random target of its output's shape, Adam over its trainable parameters.

    vramplan estimate --model nets.py:make --input 2x1x96x96x96 --gpu 24GB

is this step file with ``--knob model=nets.py:make --knob input=1x96x96x96 --batch 2``: the
batch is ``--input``'s first dimension, the rest is one sample. Every step-file flag applies
(``--precision``, ``--checkpoint``, ``--accum``, ``--optimizer``, ``--gpus``, ``recommend
--max-batch``, ``table --sweep``). A factory that makes a half module (``.half()``) is fed
batches of its dtype (made in fp32 and cast, as a loader's ``.to(dtype)`` does).
"""

import torch
import torch.nn.functional as F


def networks(model: str = "", input: str = ""):
    from planner.measure.user_code import build

    if not model:
        raise ValueError("give the factory with --model, e.g. --model nets.py:make_net")
    return {"model": build(model)}


def optimizers(nets):
    return {"model": torch.optim.Adam([p for p in nets["model"].parameters() if p.requires_grad])}


def batch(batch_size: int = 1, input: str = ""):
    from planner.config import parse_shape

    sample = parse_shape(str(input), "--input", 1, 5) if input else ()
    return torch.randn((batch_size, *sample), device="cuda")


def step(nets, opts, batch, vp):
    # a training loop's variables: each keeps its tensor into the next iteration, until reassigned
    model, keep = nets["model"], vp.keep
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), batch.dtype)
    x = batch if batch.dtype == dtype else batch.to(dtype)
    vp.zero_grad(opts["model"])
    with vp.autocast():
        keep.out = model(x)
        if not isinstance(keep.out, torch.Tensor):
            raise TypeError(f"the module returned {type(keep.out).__name__}; the --model step needs one tensor "
                            f"(write a step file, --step, for other outputs)")
        keep.target = torch.randn(keep.out.shape, device=keep.out.device)
        keep.loss = F.mse_loss(keep.out.float(), keep.target.float())
    vp.backward(keep.loss, opts["model"])
    vp.step(opts["model"])
