"""New keys and values written into a decode cache at each sequence's length, as ``flash_attn_with_kvcache(k=, v=)``.

Torch index writes, one per cache: the positions come from the lengths on the device, so there is no host sync and a
captured CUDA graph writes where the lengths of each replay say.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks

__all__ = ["check_new_kv", "lengths_after", "append_kv"]


def check_new_kv(k, v, q, k_cache, cache_seqlens, cu_seqlens_q) -> None:
    """``k, v (B, T, Hkv, D)`` to append: both or neither, the caches' dtype, kv heads and head dim, ``q``'s batch and
    device; they need ``cache_seqlens`` (where to write) and a query of one row a sequence (not packed)."""
    if (k is None) != (v is None):
        missing, given = ("v", "k") if v is None else ("k", "v")
        raise ValueError(f"{missing}: expected a tensor when {given} is given (new keys and values come together), "
                         "got None")
    if k is None:
        return
    checks.check_tensor("k", k, 4)
    checks.check_tensor("v", v, 4)
    if cache_seqlens is None:
        raise ValueError("cache_seqlens: expected the lengths before the new tokens when k and v are given (where "
                         "to write them), got None")
    checks.check_index("cache_seqlens", cache_seqlens, 1, q.device)
    checks.check_tensor("k_cache", k_cache, 4)
    if cu_seqlens_q is not None:
        raise ValueError("k: expected None with a packed query (cu_seqlens_q): the new tokens of a sequence are "
                         "(B, T, Hkv, D), one T for every sequence")
    B, Hkv, D = cache_seqlens.shape[0], k_cache.shape[2], k_cache.shape[3]
    for name, x in (("k", k), ("v", v)):
        if x.dtype != k_cache.dtype:
            raise TypeError(f"{name}: expected dtype {k_cache.dtype} (as k_cache), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} (as q), got {x.device}")
        if x.shape[0] != B or x.shape[2] != Hkv or x.shape[3] != D:
            raise ValueError(f"{name}: expected shape ({B}, T, {Hkv}, {D}) (batch of cache_seqlens, kv heads and "
                             f"head dim of k_cache), got {tuple(x.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (as k), got {tuple(v.shape)}")


def lengths_after(k, v, q, k_cache, cache_seqlens, cu_seqlens_q):
    """:func:`check_new_kv`, then the lengths the query attends, ``cache_seqlens + T`` with new tokens, and their name
    in the errors of the value checks."""
    check_new_kv(k, v, q, k_cache, cache_seqlens, cu_seqlens_q)
    if k is None:
        return cache_seqlens, "cache_seqlens"
    return cache_seqlens + k.shape[1], "cache_seqlens + k.shape[1]"


def append_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              cache_seqlens: torch.Tensor, block_table: Optional[torch.Tensor]) -> None:
    """Write token ``t`` of ``k, v (B, T, Hkv, D)`` at position ``cache_seqlens[b] + t`` of sequence ``b``: row ``b``
    of a contiguous cache ``(B, N, Hkv, D)``, or the page ``block_table[b, pos // page_size]`` of a paged one. The
    positions must lie within the capacity (``decode`` checks them when it validates values)."""
    B, T = k.shape[:2]
    if B == 0 or T == 0:
        return
    pos = cache_seqlens.long()[:, None] + torch.arange(T, device=k.device)[None, :]        # (B, T)
    if block_table is None:
        rows = torch.arange(B, device=k.device)[:, None].expand(B, T)
        slots = pos
    else:
        page_size = k_cache.shape[1]
        rows = block_table.long().gather(1, pos // page_size)
        slots = pos % page_size
    k_cache[rows, slots] = k
    v_cache[rows, slots] = v
