"""Hugging Face ViT (``ViTForImageClassification``) built from a ``ViTConfig`` (no download),
trained on its own classification loss (``labels=``). ``attn_implementation``: "sdpa" or "eager".

    vramplan profile --step examples/zoo/hf_vit.py
    full size, ViT-B/16 at 224 (benchmarks/bench_zoo.py --full): --knob num_hidden_layers=12 --knob hidden_size=768
        --knob num_attention_heads=12 --knob intermediate_size=3072 --knob image_size=224 --knob patch_size=16 --batch 32
"""

import torch

from _zoo import adamw as optimizers, model_loss as step

MODEL = "ViT"
FULL = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
        "image_size": 224, "patch_size": 16}
FULL_BATCH = 32
VARIANTS = [{"attn_implementation": "eager"}]


def networks(num_hidden_layers: int = 2, hidden_size: int = 32, num_attention_heads: int = 2,
             intermediate_size: int = 64, image_size: int = 32, patch_size: int = 8, attn_implementation: str = "sdpa"):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
                       num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                       image_size=image_size, patch_size=patch_size, num_labels=10,
                       attn_implementation=attn_implementation)
    return {"model": ViTForImageClassification(config)}


def batch(batch_size: int = 2, image_size: int = 32):
    return {"pixel_values": torch.randn(batch_size, 3, image_size, image_size, device="cuda"),
            "labels": torch.randint(0, 10, (batch_size,), device="cuda")}
