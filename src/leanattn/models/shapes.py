"""Named model shapes for random-weight models (benchmarks, smoke runs, tests).

Each entry holds the fields of a Llama-family ``config.json`` that decide the compute and memory of
a forward pass. Phi-3-medium is Llama-shaped once its fused ``qkv_proj`` / ``gate_up_proj`` are
split (which the loader does for real checkpoints), so it is listed here as a Llama shape.
"""
from __future__ import annotations

import copy

__all__ = ["SHAPES", "shape_config"]

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

SHAPES: dict[str, dict] = {
    # 8B, 32 layers, GQA 32/8, D=128, 16 GB of bf16 weights; 128 KiB of KV per token
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                       rms_norm_eps=1e-5, max_position_embeddings=8192),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=131072, rope_scaling=_LLAMA3_ROPE),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
                         rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),
    "llama-3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
                         rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, head_dim=128, rope_theta=10000.0,
                       rms_norm_eps=1e-5, max_position_embeddings=4096),
    "mistral-7b": dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                       rms_norm_eps=1e-5, max_position_embeddings=32768),
    # Phi-3-medium (14B): 40 layers, GQA 40/10, D=128
    "phi-3-medium": dict(vocab_size=32064, hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
                         num_attention_heads=40, num_key_value_heads=10, head_dim=128, rope_theta=10000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=4096),
    # test sizes: head dim 64 is the smallest the decode kernels take
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=10000.0,
                 rms_norm_eps=1e-5, max_position_embeddings=4096),
    "tiny-mha": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, head_dim=64, rope_theta=10000.0,
                     rms_norm_eps=1e-5, max_position_embeddings=4096),
}


def shape_config(name: str) -> dict:
    """A copy of the ``config.json`` fields of the named shape.

    Raises
    ------
    ValueError
        When ``name`` is not one of :data:`SHAPES`.
    """
    if name not in SHAPES:
        raise ValueError(f"shape: expected one of {sorted(SHAPES)}, got {name!r}")
    return copy.deepcopy(SHAPES[name])
