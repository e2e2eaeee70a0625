"""leanattn: exact attention kernels for long-context inference and training.

Public API
----------
decode            stream-K (LeanAttention) decode over contiguous or paged, ragged, GQA caches
merge_states      exact merge of partial attention states (out, lse)
reference         float64 references of every op
"""
from . import reference
from .merges import merge_states
from .ops.decode import decode

__version__ = "0.1.0"
__all__ = ["decode", "merge_states", "reference", "__version__"]
