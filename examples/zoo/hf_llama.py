"""Hugging Face Llama (``LlamaForCausalLM``) built from a ``LlamaConfig`` (no download; grouped-query
attention, rotary embeddings), trained on its own causal-LM loss (``labels=input_ids``).
``attn_implementation``: "sdpa" or "eager".

    vramplan profile --step examples/zoo/hf_llama.py
    full size, Llama-3.2-1B's shape with LlamaConfig's untied embeddings (1.50 B parameters; the released
    model ties them: 1.24 B) (benchmarks/bench_zoo.py --full): --knob num_hidden_layers=16 --knob hidden_size=2048
        --knob intermediate_size=8192 --knob num_attention_heads=32 --knob num_key_value_heads=8 --knob vocab_size=128256
        --knob seq=2048 --batch 1
"""

from _zoo import adamw as optimizers, causal_lm_batch, model_loss as step

MODEL = "Llama"
FULL = {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "seq": 2048}
FULL_BATCH = 1
VARIANTS = [{"attn_implementation": "eager"}]


def networks(num_hidden_layers: int = 2, hidden_size: int = 32, intermediate_size: int = 64,
             num_attention_heads: int = 4, num_key_value_heads: int = 2, vocab_size: int = 128, seq: int = 32,
             attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_key_value_heads, vocab_size=vocab_size,
                         max_position_embeddings=seq, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                         attn_implementation=attn_implementation)
    return {"model": LlamaForCausalLM(config)}


def batch(batch_size: int = 2, seq: int = 32, vocab_size: int = 128):
    return causal_lm_batch(batch_size, seq, vocab_size)
