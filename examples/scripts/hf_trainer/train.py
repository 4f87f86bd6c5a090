"""Causal-LM training with the Hugging Face Trainer, as its docs write it: a randomly initialised
GPT-2 from a config (nothing downloaded), TrainingArguments with bf16 and gradient checkpointing,
a small synthetic token dataset.

    python examples/scripts/hf_trainer/train.py --max-steps 10                   # trains (a GPU with bf16)
    vramplan run --gpu 24GB -- python examples/scripts/hf_trainer/train.py       # plans it without one
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class RandomTokens(Dataset):
    """``n`` sequences of ``length`` random token ids; the labels are the inputs (causal LM)."""

    def __init__(self, n: int, length: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "vramplan_hf_trainer"))
    args = p.parse_args()

    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.heads, n_positions=args.seq,
                        vocab_size=args.vocab, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config)
    training_args = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch, max_steps=args.max_steps, learning_rate=3e-4,
        bf16=True, gradient_checkpointing=True, logging_steps=1, save_strategy="no", report_to=[],
        dataloader_num_workers=2,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=RandomTokens(64 * args.batch, args.seq, args.vocab))
    trainer.train()


if __name__ == "__main__":
    main()
