"""The checkpoint loader round-trips models that transformers saves (config.json + safetensors)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from leanattn.models import LlamaConfig, load_model
from leanattn.models.llama import rope_inv_freq

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, head_dim=64,
             initializer_range=0.1)


def roundtrip(model, path, tokens):
    model.eval().save_pretrained(path)
    ours = load_model(str(path), device=DEV)
    assert ours.dtype == torch.float32
    with torch.no_grad():
        ref = model.to(DEV)(tokens.to(DEV)).logits.float()
    torch.testing.assert_close(ours(tokens.to(DEV)), ref, rtol=1e-4, atol=1e-4)
    return ours


def test_llama_gqa_llama3_rope(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    cfg = transformers.LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, rope_parameters=rope)
    model = transformers.LlamaForCausalLM(cfg)
    # positions past the original context, where the llama3 bands differ from plain RoPE
    tokens = torch.randint(0, 96, (2, 150))
    ours = roundtrip(model, tmp_path, tokens)
    assert ours.config.rope_scaling["rope_type"] == "llama3"
    plain = rope_inv_freq(LlamaConfig(**{k: v for k, v in SMALL.items() if k != "initializer_range"},
                                      num_attention_heads=4, rope_theta=5000.0))
    assert not torch.allclose(ours.inv_freq.cpu(), plain)


def test_qwen2_biases_tied_embeddings(tmp_path):
    cfg = transformers.Qwen2Config(**SMALL, num_attention_heads=2, num_key_value_heads=2,
                                   tie_word_embeddings=True, max_position_embeddings=256)
    model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # non-zero biases, so that a dropped bias shows
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.1)
            layer.self_attn.k_proj.bias.normal_(0, 0.1)
    ours = roundtrip(model, tmp_path, torch.randint(0, 96, (1, 12)))
    assert ours.lm_head is ours.embed


def test_mistral_sliding_window(tmp_path):
    # a window of 8 keys over 30 tokens: our forward as transformers' Mistral computes it, which differs from full
    # attention (checked), so the window is read from config.json and applied as transformers means it
    cfg = transformers.MistralConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                                     max_position_embeddings=256)
    model = transformers.MistralForCausalLM(cfg)
    tokens = torch.randint(0, 96, (2, 30))
    ours = roundtrip(model, tmp_path, tokens)
    assert ours.config.sliding_window == 8
    window = ours(tokens.to(DEV))
    ours.config.sliding_window = None
    assert not torch.allclose(ours(tokens.to(DEV)), window, rtol=1e-3, atol=1e-3)


def test_phi3_sliding_window(tmp_path):
    # Phi-3 (fused QKV and gate/up, split on load) with a window of 8 keys over 30 tokens, as transformers computes it
    small = {k: v for k, v in SMALL.items() if k != "head_dim"}
    cfg = transformers.Phi3Config(**small, num_attention_heads=1, num_key_value_heads=1, sliding_window=8,
                                  max_position_embeddings=256, pad_token_id=0)
    ours = roundtrip(transformers.Phi3ForCausalLM(cfg), tmp_path, torch.randint(0, 96, (2, 30)))
    assert ours.config.sliding_window == 8


def test_qwen2_sliding_window(tmp_path):
    # Qwen2 names a window it does not use unless use_sliding_window, and then only in some layers: refused
    cfg = transformers.Qwen2Config(**SMALL, num_attention_heads=2, num_key_value_heads=2, sliding_window=8,
                                   use_sliding_window=False, max_position_embeddings=256)
    ours = roundtrip(transformers.Qwen2ForCausalLM(cfg), tmp_path, torch.randint(0, 96, (1, 20)))
    assert ours.config.sliding_window is None
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, use_sliding_window=True)))
    with pytest.raises(ValueError, match="use_sliding_window"):
        load_model(str(tmp_path), device=DEV)


def test_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type"):
        load_model(str(tmp_path))
    cfg = transformers.LlamaConfig(**SMALL, num_attention_heads=2)
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    with pytest.raises(ValueError, match="safetensors"):
        load_model(str(tmp_path))
    from safetensors.torch import save_file
    save_file({"model.embed_tokens.weight": torch.zeros(96, 64)}, os.path.join(tmp_path, "model.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        load_model(str(tmp_path))
    save_file({"model.embed_tokens.weight": torch.zeros(96, 32)}, os.path.join(tmp_path, "model.safetensors"))
    with pytest.raises(ValueError, match=r"^model.safetensors: tensor 'model.embed_tokens.weight': expected shape "
                                         r"\(96, 64\), got \(96, 32\)$"):
        load_model(str(tmp_path))
    # a bias in a checkpoint whose config has none (attention_bias false)
    save_file({"model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}, os.path.join(tmp_path, "model.safetensors"))
    with pytest.raises(ValueError, match="^model.safetensors: tensor 'model.layers.0.self_attn.q_proj.bias' has no "
                                         "place in this config"):
        load_model(str(tmp_path))
    small = {k: v for k, v in SMALL.items() if k != "initializer_range"}
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match=rf"^sliding_window: expected None or an int >= 1, got {bad!r}$"):
            LlamaConfig(**small, num_attention_heads=2, sliding_window=bad)
    with pytest.raises(ValueError, match=r"^num_key_value_heads: expected a divisor of num_attention_heads \(4\), "
                                         "got 3$"):
        LlamaConfig(**small, num_attention_heads=4, num_key_value_heads=3)
    yarn = LlamaConfig(**small, num_attention_heads=2, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="^rope_scaling: expected rope_type None, 'default', 'linear' or 'llama3', "
                                         "got 'yarn'$"):
        rope_inv_freq(yarn)
