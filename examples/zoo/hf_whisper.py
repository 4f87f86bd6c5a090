"""Hugging Face Whisper (``WhisperForConditionalGeneration``) built from a ``WhisperConfig`` (no
download), trained on its own speech-to-text loss (``labels=``; log-mel features of
2 x max_source_positions frames in). ``attn_implementation``: "sdpa" or "eager".

    vramplan profile --step examples/zoo/hf_whisper.py
    full size, whisper-base (benchmarks/bench_zoo.py --full): --knob layers=6 --knob d_model=512 --knob heads=8
        --knob ffn=2048 --knob num_mel_bins=80 --knob max_source_positions=1500 --knob vocab_size=51865
        --knob target=64 --batch 16
"""

import torch

from _zoo import adamw as optimizers, model_loss as step

MODEL = "Whisper"
FULL = {"layers": 6, "d_model": 512, "heads": 8, "ffn": 2048, "num_mel_bins": 80, "max_source_positions": 1500,
        "vocab_size": 51865, "target": 64}
FULL_BATCH = 16
VARIANTS = [{"attn_implementation": "eager"}]


def networks(layers: int = 2, d_model: int = 32, heads: int = 2, ffn: int = 64, num_mel_bins: int = 16,
             max_source_positions: int = 32, vocab_size: int = 128, attn_implementation: str = "sdpa"):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(encoder_layers=layers, decoder_layers=layers, d_model=d_model,
                           encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                           decoder_ffn_dim=ffn, num_mel_bins=num_mel_bins, max_source_positions=max_source_positions,
                           max_target_positions=448, vocab_size=vocab_size, pad_token_id=0, bos_token_id=1,
                           eos_token_id=1, decoder_start_token_id=1, attn_implementation=attn_implementation)
    return {"model": WhisperForConditionalGeneration(config)}


def batch(batch_size: int = 2, num_mel_bins: int = 16, max_source_positions: int = 32, target: int = 16,
          vocab_size: int = 128):
    return {"input_features": torch.randn(batch_size, num_mel_bins, 2 * max_source_positions, device="cuda"),
            "labels": torch.randint(2, vocab_size, (batch_size, target), device="cuda")}
