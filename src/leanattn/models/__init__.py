"""Compact Llama-family models for ``leanattn.generate``: config, weights, loader, named shapes."""
from .kv_cache import PagedKVCache
from .llama import LlamaConfig, LlamaModel
from .loader import build_model, get_model, load_config, load_model
from .shapes import SHAPES

__all__ = ["LlamaConfig", "LlamaModel", "PagedKVCache", "SHAPES", "build_model", "get_model", "load_config",
           "load_model"]
