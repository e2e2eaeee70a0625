"""New keys and values written into a decode cache at each sequence's length, as ``flash_attn_with_kvcache(k=, v=)``.

Torch index writes, one per cache: the positions come from the lengths on the device, so there is no host sync and a
captured CUDA graph writes where the lengths of each replay say.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks

__all__ = ["check_new_kv", "lengths_after", "append_kv", "new_positions"]


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
    B, Hkv, D = q.shape[0], k_cache.shape[2], k_cache.shape[3]
    if cache_seqlens.shape[0] != B:
        raise ValueError(f"cache_seqlens: expected shape ({B},) (batch size of q), got {tuple(cache_seqlens.shape)}")
    for name, x in (("k", k), ("v", v)):
        checks.check_same(name, x, "k_cache", k_cache)
        if x.shape[0] != B or x.shape[2] != Hkv or x.shape[3] != D:
            raise ValueError(f"{name}: expected shape ({B}, T, {Hkv}, {D}) (batch of q, kv heads and head dim of "
                             f"k_cache), got {tuple(x.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (as k), got {tuple(v.shape)}")


def lengths_after(k, v, q, k_cache, cache_seqlens, cu_seqlens_q):
    """:func:`check_new_kv`, then the lengths the query attends, ``cache_seqlens + T`` with new tokens, and their name
    in the errors of the value checks."""
    check_new_kv(k, v, q, k_cache, cache_seqlens, cu_seqlens_q)
    if k is None:
        return cache_seqlens, "cache_seqlens"
    return cache_seqlens + k.shape[1], "cache_seqlens + k.shape[1]"


def _check_append_values(k, cache_seqlens, k_cache, block_table) -> None:
    """The lengths before the new tokens ``k`` ``>= 0``, and the pages they go to holding valid ids, whatever window
    the query attends (the op's own checks, after :func:`lengths_after`, cover the lengths after them and the pages
    that window reads). A device sync."""
    lo = int(cache_seqlens.min())
    if lo < 0:
        raise ValueError(f"cache_seqlens: expected lengths >= 0, got a minimum of {lo}")
    if block_table is not None:
        page = k_cache.shape[1]
        used = ((cache_seqlens.long() + k.shape[1] + page - 1) // page).clamp(max=block_table.shape[1])
        checks.pages_in_use("block_table", block_table, cache_seqlens.long() // page, used, k_cache.shape[0])


def new_positions(cache_seqlens: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, count)`` int64 positions ``cache_seqlens[b] + t`` of the new tokens of each sequence: where
    :func:`append_kv` writes them and where rotary embedding turns them (``ops/rotary.py``)."""
    return cache_seqlens.long()[:, None] + torch.arange(count, device=cache_seqlens.device)[None, :]


def append_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
              cache_seqlens: torch.Tensor, block_table: Optional[torch.Tensor], validate) -> None:
    """Write token ``t`` of ``k, v (B, T, Hkv, D)`` (checked by :func:`lengths_after`; None: nothing to write) at
    position ``cache_seqlens[b] + t`` of sequence ``b``: row ``b`` of a contiguous cache ``(B, N, Hkv, D)``, or the
    page ``block_table[b, pos // page_size]`` of a paged one. Where values are checked (``validate``, as
    ``checks.value_checks`` takes it), the lengths before the new tokens and the pages they go to are checked first;
    the positions must lie within the capacity (the op's checks of the lengths after them)."""
    if k is None or k.shape[0] == 0 or k.shape[1] == 0:
        return
    B, T = k.shape[:2]
    if checks.value_checks(validate, cache_seqlens, block_table):
        _check_append_values(k, cache_seqlens, k_cache, block_table)
    if not torch.compiler.is_compiling():
        # new tokens held in the cache itself (a view of it): read before any is written over
        caches = {k_cache.untyped_storage().data_ptr(), v_cache.untyped_storage().data_ptr()}
        k = k.clone() if k.untyped_storage().data_ptr() in caches else k
        v = v.clone() if v.untyped_storage().data_ptr() in caches else v
    pos = new_positions(cache_seqlens, T)
    if block_table is None:
        rows = torch.arange(B, device=k.device)[:, None].expand(B, T)
        slots = pos
    else:
        page_size = k_cache.shape[1]
        rows = block_table.long().gather(1, pos // page_size)
        slots = pos % page_size
    with torch.no_grad():  # a cache is state, never a node of autograd's graph (a k that requires grad)
        k_cache[rows, slots] = k
        v_cache[rows, slots] = v
