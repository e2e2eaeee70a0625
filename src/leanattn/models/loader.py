"""Build a :class:`LlamaModel` from a local checkpoint directory or a named shape.

A checkpoint directory holds ``config.json`` and ``*.safetensors`` (one file or shards) in the
Hugging Face naming. Supported ``model_type``: ``llama``, ``mistral`` (full attention),
``qwen2`` (Q/K/V biases) and ``phi3`` (fused ``qkv_proj`` / ``gate_up_proj``).
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional, Union

import torch

from .llama import LlamaConfig, LlamaModel
from .shapes import SHAPES, shape_config

__all__ = ["load_model", "build_model", "load_config"]

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "phi3")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_config(path: str) -> LlamaConfig:
    """The :class:`LlamaConfig` of ``path/config.json``; raises ``ValueError`` for other families."""
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    kind = raw.get("model_type", "llama")
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"config.json: expected model_type in {SUPPORTED_TYPES}, got {kind!r}")
    if kind == "qwen2":
        raw.setdefault("attention_bias", True)  # Qwen2 always has Q/K/V biases
        # Qwen2 names a window it uses only with use_sliding_window, and then in some layers only
        if raw.get("use_sliding_window"):
            raise ValueError("config.json: expected use_sliding_window false for qwen2 (windows in some layers "
                             "only are not supported), got true")
        raw.pop("sliding_window", None)
    # a sliding_window (Mistral v0.1, Phi-3) applies to every layer: decode reads only each window
    return LlamaConfig.from_dict(raw)


def _target(name: str, n_layers: int):
    """``(layer index or None, our parameter name, slice kind)`` for a checkpoint tensor name."""
    top = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm", "lm_head.weight": "lm_head"}
    if name in top:
        return None, top[name], None
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if not m or int(m.group(1)) >= n_layers:
        return None, None, None
    i, rest = int(m.group(1)), m.group(2)
    table = {
        "input_layernorm.weight": ("attn_norm", None),
        "post_attention_layernorm.weight": ("mlp_norm", None),
        "self_attn.q_proj.weight": ("wqkv", 0), "self_attn.k_proj.weight": ("wqkv", 1),
        "self_attn.v_proj.weight": ("wqkv", 2), "self_attn.qkv_proj.weight": ("wqkv", None),
        "self_attn.q_proj.bias": ("bqkv", 0), "self_attn.k_proj.bias": ("bqkv", 1),
        "self_attn.v_proj.bias": ("bqkv", 2),
        "self_attn.o_proj.weight": ("wo", None),
        "mlp.gate_proj.weight": ("w_gate_up", "gate"), "mlp.up_proj.weight": ("w_gate_up", "up"),
        "mlp.gate_up_proj.weight": ("w_gate_up", None), "mlp.down_proj.weight": ("w_down", None),
    }
    if rest not in table:
        return i, None, None
    return (i, *table[rest])


@torch.no_grad()
def load_model(path: str, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None) -> LlamaModel:
    """Load a Llama-family checkpoint directory (``config.json`` + safetensors).

    Parameters
    ----------
    path : str
        Directory with ``config.json`` and ``model.safetensors`` or ``model-*.safetensors`` shards.
    device : str or torch.device
        Where the weights go (read straight to it by ``safetensors``).
    dtype : torch.dtype, optional
        Weight dtype; default the checkpoint's ``dtype`` / ``torch_dtype``, else float32.

    Raises
    ------
    ValueError
        Unsupported family, no safetensors files, missing or mis-shaped tensors.
    ImportError
        When the ``safetensors`` package is not installed.
    """
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("leanattn.models.load_model needs the 'safetensors' package: pip install safetensors") from e
    config = load_config(path)
    if dtype is None:
        name = config.extra.get("dtype") or config.extra.get("torch_dtype") or "float32"
        dtype = _DTYPES.get(name, torch.float32)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"path: expected *.safetensors files in {path!r}, found none")
    device = torch.device(device)
    model = LlamaModel(config, device=device, dtype=dtype)
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    qkv_rows = {0: (0, q), 1: (q, q + kv), 2: (q + kv, q + 2 * kv)}
    mlp_rows = {"gate": (0, c.intermediate_size), "up": (c.intermediate_size, 2 * c.intermediate_size)}
    filled = set()
    for fname in files:
        with safe_open(os.path.join(path, fname), framework="pt", device=str(device)) as f:
            for key in f.keys():
                layer, attr, part = _target(key, c.num_hidden_layers)
                if attr is None:
                    continue
                owner = model if layer is None else model.layers[layer]
                dst = getattr(owner, attr)
                if dst is None:
                    raise ValueError(f"{fname}: tensor {key!r} has no place in this config (attention_bias?)")
                if part is not None:
                    lo, hi = (qkv_rows if isinstance(part, int) else mlp_rows)[part]
                    dst = dst[lo:hi]
                src = f.get_tensor(key)
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(f"{fname}: tensor {key!r}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
                dst.copy_(src)
                filled.add((layer, attr, part))
    need = {(None, "embed", None), (None, "norm", None)}
    if not c.tie_word_embeddings:
        need.add((None, "lm_head", None))
    for i in range(c.num_hidden_layers):
        need |= {(i, "attn_norm", None), (i, "mlp_norm", None), (i, "wo", None), (i, "w_down", None)}
        need |= {(i, "wqkv", None)} if (i, "wqkv", None) in filled else {(i, "wqkv", j) for j in range(3)}
        need |= {(i, "w_gate_up", None)} if (i, "w_gate_up", None) in filled else \
            {(i, "w_gate_up", "gate"), (i, "w_gate_up", "up")}
        if c.attention_bias:
            need |= {(i, "bqkv", j) for j in range(3)}
    missing = need - filled
    if missing:
        raise ValueError(f"path: checkpoint in {path!r} lacks {len(missing)} tensors, e.g. {sorted(map(str, missing))[:3]}")
    return model


def build_model(shape: str, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> LlamaModel:
    """A model of the named shape (see :data:`leanattn.models.SHAPES`) with random weights.

    Weights are drawn on ``device`` from a generator seeded with ``seed`` (reproducible per device).
    """
    config = LlamaConfig.from_dict(shape_config(shape))
    device = torch.device(device)
    model = LlamaModel(config, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    return model.init_random(generator=gen)


def get_model(name_or_path: str, device="cpu", dtype: Optional[torch.dtype] = None, seed: int = 0) -> LlamaModel:
    """:func:`load_model` for a directory, :func:`build_model` for a shape name."""
    if os.path.isdir(name_or_path):
        return load_model(name_or_path, device, dtype)
    if name_or_path in SHAPES:
        return build_model(name_or_path, device, dtype or torch.bfloat16, seed)
    raise ValueError(f"model: expected a checkpoint directory or a shape in {sorted(SHAPES)}, got {name_or_path!r}")
