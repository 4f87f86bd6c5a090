"""Seed 002 as a step file: the 82M-parameter RGB-D transformer policy under a Hugging Face Trainer.

The note's question (``shared/seeds/002``, in Chinese): batch 16 of RGB-D frames, a transformer
over 512 tokens predicting 24 steps, 82,190,602 parameters, ran out of memory on a 24 GB card
(23.55 GiB, 21.89 GiB allocated by PyTorch) at the first training step. Its proposals: bf16,
``gradient_checkpointing=True``, batch 8 x ``gradient_accumulation_steps=2``, or batch 12, or
batch 4 x 4. Which of them fit::

    vramplan estimate --step examples/steps/rgbd_policy.py --gpu 24GB
    vramplan estimate --step examples/steps/rgbd_policy.py --gpu 24GB --precision amp-bf16 --checkpoint Block
    vramplan estimate --step examples/steps/rgbd_policy.py --gpu 24GB --precision amp-bf16 --checkpoint Block --batch 8 --accum 2
    vramplan recommend --step examples/steps/rgbd_policy.py --gpu 24GB
    vramplan table --step examples/steps/rgbd_policy.py --sweep precision=fp32,amp-bf16 --batch 16

The policy is ``examples/rgbd_policy.py`` (``make_rgbd_policy``; its docstring says what comes
from the note and what was chosen: a square 4-channel RGB-D frame, a patch embedding, 512
learned queries cross-attending once to the patch tokens, 12 pre-norm blocks of width 768, a
head to 24 steps of 3-d waypoints). The factory's ``gradient_checkpointing`` flag stays False:
the Trainer's ``gradient_checkpointing=True`` is ``--checkpoint Block`` here, done by vramplan.
The Trainer's ``bf16=True`` is ``--precision amp-bf16`` (autocast bf16, fp32 weights, no
scaler), its ``fp16=True`` is ``--precision amp-fp16`` (autocast fp16 + GradScaler).

The step, one micro-batch as ``Trainer.training_step`` runs it: forward under autocast, the MSE
of the predicted waypoints ``(B, steps, 3)`` against the target, backward; the optimizer step
on the last micro-batch. The optimizer is the Trainer's default: ``torch.optim.AdamW`` with
``learning_rate=5e-5``, ``adam_beta1=0.9``, ``adam_beta2=0.999``, ``adam_epsilon=1e-8``,
``weight_decay=0.0``, and ``fused=True`` (``optim="adamw_torch_fused"``, the Trainer's default
with torch >= 2.8; with an older torch it is ``adamw_torch``, the foreach implementation, whose
step makes temporaries the size of the parameters: set ``fused=False`` below to see them). The
Trainer's two parameter groups (no decay for biases and norms) both have weight decay 0 here
and change nothing in memory, so there is one group.

Parameters of the default (image 224, width 768, depth 12, 512 queries, 24 steps): 81,684,507
(the note says 82,190,602 for its own code; see the factory's docstring for the count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from _examples import example  # examples/<name>.py by path (this file has its name)


make_rgbd_policy = example("rgbd_policy").make_rgbd_policy

ACTION_DIM = 3


# recommendations in the Hugging Face Trainer's own arguments (planner/terms.py)
TERMS = {
    "amp-bf16": "TrainingArguments(bf16=True)",
    "amp-fp16": "TrainingArguments(fp16=True)",
    "checkpoint": "TrainingArguments(gradient_checkpointing=True)",
    "accumulation": "TrainingArguments(per_device_train_batch_size={batch}, gradient_accumulation_steps={accum})",
}


def networks(image_size: int = 224, queries: int = 512, steps: int = 24, depth: int = 12, width: int = 768,
             heads: int = 12):
    return {"policy": make_rgbd_policy(image_size=image_size, width=width, depth=depth, heads=heads, queries=queries,
                                       steps=steps, action_dim=ACTION_DIM, gradient_checkpointing=False)}


def optimizers(nets):
    return {"policy": torch.optim.AdamW(nets["policy"].parameters(), lr=5e-5, betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=0.0, fused=True)}


def batch(batch_size: int = 16, image_size: int = 224, steps: int = 24):
    return {"rgbd": torch.randn(batch_size, 4, image_size, image_size, device="cuda"),
            "waypoints": torch.randn(batch_size, steps, ACTION_DIM, device="cuda")}


def step(nets, opts, batch, vp):
    policy, opt = nets["policy"], opts["policy"]
    vp.zero_grad(opt)
    with vp.autocast():
        pred = policy(batch["rgbd"])
        loss = F.mse_loss(pred.float(), batch["waypoints"])
    vp.backward(loss, opt)
    vp.step(opt)
