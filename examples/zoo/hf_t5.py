"""Hugging Face T5 (``T5ForConditionalGeneration``) built from a ``T5Config`` (no download),
trained on its own sequence-to-sequence loss (``labels=``; the decoder input is the shifted
labels). ``attn_implementation``: "sdpa" or "eager".

    vramplan profile --step examples/zoo/hf_t5.py
    full size, t5-small (benchmarks/bench_zoo.py --full): --knob num_layers=6 --knob d_model=512 --knob d_ff=2048
        --knob num_heads=8 --knob d_kv=64 --knob vocab_size=32128 --knob seq=512 --knob target=128 --batch 16
"""

import torch

from _zoo import adamw as optimizers, model_loss as step

MODEL = "T5"
FULL = {"num_layers": 6, "d_model": 512, "d_ff": 2048, "num_heads": 8, "d_kv": 64, "vocab_size": 32128,
        "seq": 512, "target": 128}
FULL_BATCH = 16
VARIANTS = [{"attn_implementation": "eager"}]


def networks(num_layers: int = 2, d_model: int = 32, d_ff: int = 64, num_heads: int = 4, d_kv: int = 8,
             vocab_size: int = 128, attn_implementation: str = "sdpa"):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(num_layers=num_layers, d_model=d_model, d_ff=d_ff, num_heads=num_heads, d_kv=d_kv,
                      vocab_size=vocab_size, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      attn_implementation=attn_implementation)
    return {"model": T5ForConditionalGeneration(config)}


def batch(batch_size: int = 2, seq: int = 32, target: int = 16, vocab_size: int = 128):
    return {"input_ids": torch.randint(2, vocab_size, (batch_size, seq), device="cuda"),
            "labels": torch.randint(2, vocab_size, (batch_size, target), device="cuda")}
