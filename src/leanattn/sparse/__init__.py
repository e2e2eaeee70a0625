"""Sparse causal flash attention (SCFA, Pagliardini et al., arXiv 2306.01160).

qk_sparse_attention     causal attention with per-(batch, head) dropped queries and keys
hash_sparse_attention   causal attention within hash buckets
lsh_buckets             angular LSH bucket ids (one random rotation per head)
"""
from .api import hash_sparse_attention, qk_sparse_attention
from .lsh import lsh_buckets

__all__ = ["qk_sparse_attention", "hash_sparse_attention", "lsh_buckets"]
