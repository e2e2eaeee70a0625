"""One-token pages laid over a KV tensor, so that :func:`leanattn.decode` reads any set of its tokens.

A ``(X, Y, Hkv, D)`` tensor (a contiguous cache ``(B, N, ...)``, a page pool ``(pages, page_size, ...)``, shared
prefixes ``(G, P, ...)``) is seen, without a copy where its strides allow, as a pool of pages of one token,
``(rows, 1, Hkv, D)``, token ``(x, y)`` being page ``x * step + y``. A page table over it names any tokens in any
order, and a sequence's length counts how many of them it attends: the attention over a run of tokens that ends
where it likes (a sliding window's part of a segment or a shard) is a table laid backwards from the run's end, its
length the run's (the order of its keys does not matter to attention).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks

__all__ = ["token_pool", "token_pages", "cache_rows_as_pages", "check_leftpad"]


def token_pool(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``k (X, Y, Hkv, D)`` as a pool of one-token pages ``(rows, 1, Hkv, D)`` and the step between its rows: token
    ``(x, y)`` is page ``x * step + y``. A view where the strides allow (``stride(0)`` a multiple of ``stride(1)``:
    contiguous, transposed ``(X, Hkv, Y, D)``, a slice of a larger tensor), else a contiguous copy."""
    X, Y, Hkv, D = k.shape
    if k.numel() == 0:  # nothing to attend: one page no length reaches
        return k.new_zeros(1, 1, Hkv, D), 0
    laid = _token_layout(k)
    if laid is None:
        return k.contiguous().view(X * Y, 1, Hkv, D), Y
    token, step = laid
    _, _, s2, s3 = k.stride()
    return k.as_strided(((X - 1) * step + Y, 1, Hkv, D), (token, token, s2, s3)), step  # (from k's storage offset)


def _token_layout(k: torch.Tensor) -> Optional[tuple[int, int]]:
    """``(token_stride, step)`` that lay the tokens of ``k (X, Y, ...)`` in one line, token ``(x, y)`` at ``(x * step
    + y) * token_stride`` from ``k``'s first, where its strides allow (``stride(0)`` a multiple of ``stride(1)``:
    contiguous, transposed ``(X, Hkv, Y, D)``, a slice of a larger tensor); else None."""
    X, Y = k.shape[:2]
    s0, s1 = k.stride()[:2]
    if Y == 1:  # a size-1 dimension's stride is arbitrary (even after .contiguous()): the step is the first one's
        return s0, 1
    if X == 1:
        return s1, Y
    return (s1, s0 // s1) if s1 > 0 and s0 % s1 == 0 else None


def token_pages(slots: torch.Tensor, step: int, block_table: Optional[torch.Tensor], rows: torch.Tensor,
                page_size: int) -> torch.Tensor:
    """int32 pages of :func:`token_pool` holding tokens ``slots`` (int64, any shape) of sequences ``rows`` (the same
    shape): of a contiguous cache (``block_table`` None, ``rows`` its first index), or of a paged one (each slot's
    page from ``block_table[rows, slot // page_size]``). Slots must be >= 0."""
    if block_table is None:
        return (rows * step + slots).to(torch.int32)
    if block_table.shape[1] == 0:  # no page: no length reaches a slot
        return torch.zeros(slots.shape, dtype=torch.int32, device=slots.device)
    page = block_table[rows, (slots // page_size).clamp(max=block_table.shape[1] - 1)].long()
    return (page * step + slots % page_size).to(torch.int32)


def cache_rows_as_pages(cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
                        k_cache: torch.Tensor, batch: Optional[int], validate: bool) -> Optional[torch.Tensor]:
    """The block table that reads row ``cache_batch_idx[b]`` of a contiguous cache ``(rows, N, Hkv, D)`` for sequence
    ``b`` (flash-attn's ``cache_batch_idx``): the cache seen as a pool of pages of ``N`` tokens, each sequence's table
    one page, ``cache_batch_idx[:, None]``; no copy. ``block_table`` unchanged when ``cache_batch_idx`` is None.
    ``cache_batch_idx (B,)`` int32 on the cache's device, ``B`` the query's ``batch`` where known; its values are
    checked to name rows (a device sync) where ``validate``."""
    if cache_batch_idx is None:
        return block_table
    if block_table is not None:
        raise ValueError("cache_batch_idx: expected None with a paged cache (block_table names each sequence's "
                         "pages), got a tensor")
    checks.check_index("cache_batch_idx", cache_batch_idx, 1, k_cache.device)
    if batch is not None and cache_batch_idx.shape[0] != batch:
        raise ValueError(f"cache_batch_idx: expected shape ({batch},) (batch size of q), got "
                         f"{tuple(cache_batch_idx.shape)}")
    if k_cache.dim() == 4 and k_cache.shape[1] == 0:
        raise ValueError("k_cache: expected a capacity of at least one token with cache_batch_idx, got 0")
    if validate and cache_batch_idx.numel():
        lo, hi = int(cache_batch_idx.min()), int(cache_batch_idx.max())
        if lo < 0 or hi >= k_cache.shape[0]:
            raise ValueError(f"cache_batch_idx: expected rows in [0, {k_cache.shape[0]}) (k_cache's), got rows in "
                             f"[{lo}, {hi}]")
    return cache_batch_idx[:, None]


def check_leftpad(cache_leftpad: torch.Tensor, k_cache: torch.Tensor, before: Optional[torch.Tensor], batch: int,
                  validate: bool) -> None:
    """Checks of flash-attn's ``cache_leftpad`` (``(batch,)`` int32 on the cache's device) against a contiguous cache
    ``(rows, N, Hkv, D)``; where ``validate``, ``0 <= cache_leftpad[b] <= before[b]`` (the lengths before new tokens;
    None: the capacity), a device sync."""
    checks.check_index("cache_leftpad", cache_leftpad, 1, k_cache.device)
    if cache_leftpad.shape[0] != batch:
        raise ValueError(f"cache_leftpad: expected shape ({batch},) (batch size of q), got "
                         f"{tuple(cache_leftpad.shape)}")
    if k_cache.dim() != 4 or k_cache.shape[1] == 0:
        raise ValueError(f"k_cache: expected a contiguous cache (B, N, Hkv, D) of N >= 1 with cache_leftpad, got "
                         f"shape {tuple(k_cache.shape)}")
    if validate and cache_leftpad.numel():
        capacity = k_cache.shape[1]
        lo = int(cache_leftpad.min())
        over = int((cache_leftpad > (before if before is not None else capacity)).sum())
        if lo < 0 or over:
            what = "cache_seqlens" if before is not None else f"the capacity {capacity}"
            raise ValueError(f"cache_leftpad: expected 0 <= cache_leftpad <= {what} (the lengths before new tokens), "
                             f"got a minimum of {lo} and {over} sequences past it")
