"""The training step of examples/scripts/hf_trainer/train.py as a step file: what the Hugging Face
Trainer (transformers 5.25, accelerate 1.15, as installed with the ``zoo`` extra) does per optimizer
step with that script's TrainingArguments.

    vramplan estimate --step examples/steps/hf_gpt2_trainer.py --precision amp-bf16 --gpu 24GB
    vramplan run --gpu 24GB -- python examples/scripts/hf_trainer/train.py     # the same step, from the script

The knobs are the script's arguments (``--layers --width --heads --seq --vocab --batch``). What the
Trainer does, read in the installed source, and where it is here:

* ``bf16=True`` is ``--precision amp-bf16``: accelerate's ``Accelerator.prepare_model``
  (accelerate/accelerator.py) wraps ``model.forward`` in ``torch.autocast(dtype=bfloat16)``
  (``get_mixed_precision_context_manager``) and then in ``convert_outputs_to_fp32``
  (accelerate/utils/operations.py ``ConvertOutputsToFp32``: every bf16 tensor of the output,
  the logits, gets a ``.float()`` copy outside the autocast region); no GradScaler for bf16.
* ``gradient_checkpointing=True``: ``Trainer.__init__`` (transformers/trainer.py) calls
  ``model.activation_checkpointing_enable(activation_checkpointing_kwargs=None, every_n_layers=1,
  offload=False)``; ``PreTrainedModel._activation_checkpointing_enable`` (transformers/modeling_utils.py)
  then uses ``{"use_reentrant": False}`` (torch's non-reentrant checkpoint around each ``GPT2Block``)
  and ``enable_input_require_grads()`` (a forward hook making the embedding output require grad).
  The model does its own checkpointing, so no ``--checkpoint`` here.
* the optimizer: ``TrainingArguments.optim`` defaults to ``"adamw_torch_fused"`` with torch >= 2.8
  (transformers/training_args.py), so ``trainer_optimizer._get_adamw_torch`` makes
  ``torch.optim.AdamW(..., betas=(0.9, 0.999), eps=1e-8, fused=True)``; ``Trainer.create_optimizer``
  gives it two parameter groups (``get_decay_parameter_names``: biases and LayerNorm weights without
  weight decay), both with weight decay 0.0 (the default ``weight_decay``).
* per step (``Trainer._run_epoch``, ``get_batch_samples``, ``training_step``, ``compute_loss``):
  ``num_items_in_batch = sum(labels[..., 1:].ne(-100).sum())`` on the device, divided by
  ``tp*cp*sp`` = 1 (the model accepts loss kwargs, so it gets it and sums its loss over tokens);
  ``loss = model(**inputs, num_items_in_batch=...).loss``, ``loss *= 1``
  (``average_tokens_across_devices`` on one process), ``outputs`` freed when ``compute_loss`` returns;
  ``accelerator.backward(loss)`` (``loss / gradient_accumulation_steps``, a new 0-dim tensor, then
  ``.backward()``); ``self._tr_loss += loss.detach()`` (a 0-dim device tensor made
  before training); ``max_grad_norm=1.0``: ``accelerator.clip_grad_norm_`` ->
  ``torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)``; ``optimizer.step()``;
  ``model.zero_grad()`` (set_to_none). Variables live as in the loop: the batch, ``num_items_in_batch``
  the step's detached loss and the clipped total norm until the next step's are made (``vp.keep``).

Left out, as they allocate nothing that is live at the peak: the per-step logging
(``logging_steps=1``: ``tr_loss.mean().item()``, ``tr_loss -= tr_loss``) and the NaN/inf filter's
``torch.isnan(loss)``/``torch.isinf(loss)`` reads (one-byte temporaries freed at once), the learning-rate
scheduler (Python floats). tests/test_run_examples.py compares this file's peak with ``vramplan run``
on the script at the same knobs.
"""

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.trainer_pt_utils import get_parameter_names


def networks(layers=12, width=768, heads=12, seq=1024, vocab=50257):
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=seq, vocab_size=vocab,
                        attn_implementation="sdpa")
    model = GPT2LMHeadModel(config)
    model.activation_checkpointing_enable()  # as Trainer.__init__ calls it: use_reentrant=False
    return {"model": model}


def optimizers(nets):
    model = nets["model"]
    # Trainer.get_decay_parameter_names, its patterns as written there
    decay = get_parameter_names(model, [nn.LayerNorm],
                                [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"])
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.0},
              {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]
    return {"model": torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)}


def batch(batch_size=8, seq=1024, vocab=50257, device="cuda"):
    # default_data_collator stacks input_ids and labels into two tensors; accelerate's DataLoaderShard
    # sends both to the device
    ids = torch.randint(0, vocab, (batch_size, seq), device=device)
    return {"input_ids": ids, "labels": torch.randint(0, vocab, (batch_size, seq), device=device)}


def _compute_loss(model, inputs, num_items_in_batch, vp):
    # Trainer.compute_loss: outputs is a local, gone when it returns; the loss keeps its graph
    with vp.autocast():
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
    logits = outputs.logits.float()  # accelerate's convert_outputs_to_fp32, outside the autocast region
    loss = outputs.loss
    del outputs, logits
    loss *= 1  # average_tokens_across_devices: loss *= num_processes // tp_size
    return loss


def step(nets, opts, batch, vp):
    model, opt = nets["model"], opts["model"]
    if not hasattr(vp.keep, "tr_loss"):
        vp.keep.tr_loss = torch.tensor(0.0, device="cuda")  # Trainer._inner_training_loop, before the first step
    # Trainer._get_num_items_in_batch (labels shifted: count labels[..., 1:])
    # the int64 count is rebound to the float quotient there, so only the quotient stays
    vp.keep.num_items_in_batch = sum(labels.ne(-100).sum() for labels in [batch["labels"][..., 1:]]) / 1
    model.train()
    loss = _compute_loss(model, batch, vp.keep.num_items_in_batch, vp)
    # Accelerator.backward: loss = loss / gradient_accumulation_steps (1), a new 0-dim tensor, then .backward()
    vp.backward(loss / 1, opt)
    vp.keep.tr_loss_step = loss.detach()  # training_step returns it; the loop holds it until the next one
    del loss
    vp.keep.tr_loss += vp.keep.tr_loss_step
    # accelerator.clip_grad_norm_ -> torch.nn.utils.clip_grad_norm_; the loop's `grad_norm` holds the total norm
    # until the next step's clipping
    vp.keep.grad_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    vp.step(opt)
    vp.zero_grad(opt)  # model.zero_grad() after the step (set_to_none)
