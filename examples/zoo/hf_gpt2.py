"""Hugging Face GPT-2 (``GPT2LMHeadModel``) built from a ``GPT2Config`` (no download), trained on
its own causal-LM loss (``labels=input_ids``). ``attn_implementation``: "sdpa" (the library's
default where torch has it) or "eager".

    vramplan profile --step examples/zoo/hf_gpt2.py --knob attn_implementation=eager
    full size, GPT-2 small (benchmarks/bench_zoo.py --full): --knob n_layer=12 --knob n_embd=768 --knob n_head=12
        --knob vocab_size=50257 --knob seq=1024 --batch 8
"""

from _zoo import adamw as optimizers, causal_lm_batch, model_loss as step

MODEL = "GPT-2"
FULL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "seq": 1024}
FULL_BATCH = 8
VARIANTS = [{"attn_implementation": "eager"}]


def networks(n_layer: int = 2, n_embd: int = 32, n_head: int = 2, vocab_size: int = 128, seq: int = 32,
             attn_implementation: str = "sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size, n_positions=seq,
                        bos_token_id=0, eos_token_id=0, attn_implementation=attn_implementation)
    return {"model": GPT2LMHeadModel(config)}


def batch(batch_size: int = 2, seq: int = 32, vocab_size: int = 128):
    return causal_lm_batch(batch_size, seq, vocab_size)
