"""Hugging Face BERT (``BertForMaskedLM``) built from a ``BertConfig`` (no download), trained on
its own masked-LM loss (``labels``: the token at 15 % of positions, -100 elsewhere).
``attn_implementation``: "sdpa" or "eager".

    vramplan profile --step examples/zoo/hf_bert.py
    full size, BERT-base (benchmarks/bench_zoo.py --full): --knob num_hidden_layers=12 --knob hidden_size=768
        --knob num_attention_heads=12 --knob intermediate_size=3072 --knob vocab_size=30522 --knob seq=512 --batch 16
"""

import torch

from _zoo import adamw as optimizers, model_loss as step

MODEL = "BERT"
FULL = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
        "vocab_size": 30522, "seq": 512}
FULL_BATCH = 16
VARIANTS = [{"attn_implementation": "eager"}]


def networks(num_hidden_layers: int = 2, hidden_size: int = 32, num_attention_heads: int = 2,
             intermediate_size: int = 64, vocab_size: int = 128, seq: int = 32, attn_implementation: str = "sdpa"):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
                        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                        vocab_size=vocab_size, max_position_embeddings=seq, pad_token_id=0,
                        attn_implementation=attn_implementation)
    return {"model": BertForMaskedLM(config)}


def batch(batch_size: int = 2, seq: int = 32, vocab_size: int = 128):
    ids = torch.randint(1, vocab_size, (batch_size, seq), device="cuda")
    masked = torch.rand(batch_size, seq, device="cuda") < 0.15
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.where(masked, ids, -100)}
