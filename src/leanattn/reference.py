"""Float64 PyTorch references for every public op: the tests' ground truth.

Written for clarity, not speed: explicit loops over sequences and kv heads, every score
materialised. All return float64 outputs and natural-log LSEs; a query that sees no key gives
zeros and ``lse = -inf``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["decode", "gather_kv", "merge_states", "attend"]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None):
    """Softmax attention of ``q [M, D]`` over ``k, v [N, D]`` in float64.

    ``mask [M, N]`` bool, True = attend. Returns ``(out [M, D], lse [M])``; rows with no key give
    zeros and ``-inf``.
    """
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.T) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1) if s.shape[-1] > 0 else torch.full(s.shape[:-1], float("-inf"), dtype=s.dtype,
                                                                        device=s.device)
    finite = torch.isfinite(lse)
    p = torch.where(finite[:, None], torch.exp(s - torch.where(finite, lse, 0.0)[:, None]), 0.0)
    return p @ v, lse


def gather_kv(cache: torch.Tensor, b: int, n: int, block_table: torch.Tensor | None) -> torch.Tensor:
    """The first ``n`` tokens of sequence ``b``: ``(n, kv_heads, D)``, from a contiguous or paged cache."""
    if block_table is None:
        return cache[b, :n]
    page_size = cache.shape[1]
    pages = block_table[b, : -(-n // page_size)].long()
    return cache[pages].reshape(-1, *cache.shape[2:])[:n]


def decode(q, k_cache, v_cache, cache_seqlens=None, block_table=None, softmax_scale=None):
    """Reference for :func:`leanattn.decode`: ``(out (B, Hq, D) float64, lse (B, Hq) float64)``."""
    B, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    group = Hq // Hkv
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    if cache_seqlens is None:
        cap = k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]
        lens = [cap] * B
    else:
        lens = cache_seqlens.tolist()
    out = torch.zeros(B, Hq, D, dtype=torch.float64, device=q.device)
    lse = torch.full((B, Hq), float("-inf"), dtype=torch.float64, device=q.device)
    for b in range(B):
        k = gather_kv(k_cache, b, lens[b], block_table)
        v = gather_kv(v_cache, b, lens[b], block_table)
        for h in range(Hkv):
            heads = slice(h * group, (h + 1) * group)
            out[b, heads], lse[b, heads] = attend(q[b, heads], k[:, h], v[:, h], scale)
    return out, lse


def merge_states(outs: torch.Tensor, lses: torch.Tensor):
    """Reference for :func:`leanattn.merge_states` over the leading axis: float64 ``(out, lse)``."""
    outs, lses = outs.double(), lses.double()
    lse = torch.logsumexp(lses, dim=0)
    finite = torch.isfinite(lse)
    w = torch.where(finite, torch.exp(lses - torch.where(finite, lse, 0.0)), 0.0)
    out = (w[..., None] * torch.where(w[..., None] > 0, outs, 0.0)).sum(0)
    return out, lse
