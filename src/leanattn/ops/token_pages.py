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

__all__ = ["token_pool", "token_pages", "cache_rows_as_pages", "left_padded"]


def token_pool(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``k (X, Y, Hkv, D)`` as a pool of one-token pages ``(rows, 1, Hkv, D)`` and the step between its rows: token
    ``(x, y)`` is page ``x * step + y``. A view where the strides allow (``stride(0)`` a multiple of ``stride(1)``:
    contiguous, transposed ``(X, Hkv, Y, D)``, a slice of a larger tensor), else a contiguous copy."""
    X, Y, Hkv, D = k.shape
    if k.numel() == 0:  # nothing to attend: one page no length reaches
        return k.new_zeros(1, 1, Hkv, D), 0
    s0, s1, s2, s3 = k.stride()
    if Y == 1:  # a size-1 dimension's stride is arbitrary (even after .contiguous()): the step is the first one's
        return k.as_strided((X, 1, Hkv, D), (s0, s0, s2, s3)), 1
    if X == 1 or (s1 > 0 and s0 % s1 == 0):
        step = s0 // s1 if X > 1 else Y
        rows = (X - 1) * step + Y
        return k.as_strided((rows, 1, Hkv, D), (s1, s1, s2, s3)), step  # (from k's storage offset)
    return k.contiguous().view(X * Y, 1, Hkv, D), Y


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


def _padded_pool(name: str, cache: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A contiguous cache ``(rows, N, Hkv, D)`` seen as pages of ``N`` tokens that start at every token (page stride
    one token), page ``row * step + t`` holding tokens ``t, t + 1, ...`` of ``row``; a view, never a copy (the appends
    must land in the cache), and the step between rows."""
    X, Y, Hkv, D = cache.shape
    s0, s1, s2, s3 = cache.stride()
    if X > 1 and not (s1 > 0 and s0 % s1 == 0):
        raise ValueError(f"{name}: expected a row stride that is a multiple of the token stride with cache_leftpad "
                         f"(its rows are read as pages starting at any token, without a copy), got strides "
                         f"{tuple(cache.stride())}")
    step = s0 // s1 if X > 1 else Y
    if (X - 1) * step + Y > torch.iinfo(torch.int32).max:
        raise ValueError(f"{name}: expected at most 2**31 - 1 token slots with cache_leftpad (int32 page ids), got "
                         f"{(X - 1) * step + Y}")
    # the last page starts at row X - 1's first token: pages starting later (a padded last row) run past this shape,
    # never past the storage, as a page is read only up to its row's end
    return cache.as_strided(((X - 1) * step + 1, Y, Hkv, D), (s1, s1, s2, s3)), step


def left_padded(cache_leftpad: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                cache_batch_idx: Optional[torch.Tensor], appended: Optional[torch.Tensor], lens: Optional[torch.Tensor],
                batch: int, validate: bool) -> tuple:
    """flash-attn's ``cache_leftpad``: sequence ``b``'s tokens are ``[cache_leftpad[b], lens[b])`` of its row of a
    contiguous cache ``(rows, N, Hkv, D)`` (row ``b``, or ``cache_batch_idx[b]``, already checked), attended as a
    sequence that starts there (the appends write the cache itself, at the lengths). The caches are seen as pages of
    ``N`` tokens starting at every token (:func:`_padded_pool`, no copy), each sequence's one page the one at its
    first real token.

    ``appended`` (lengths before new tokens, or None) and ``lens`` (those attended, None for the capacity): int32
    ``(B,)``. Returns ``((k_pool, v_pool, block_table), appended, lens)``, the lengths counted from each sequence's
    first real token (``appended``: the rotary positions of the new tokens). Where ``validate``,
    ``0 <= cache_leftpad[b] <=`` the length before new tokens (a device sync); the op has checked the lengths against
    the capacity ``N``."""
    checks.check_index("cache_leftpad", cache_leftpad, 1, k_cache.device)
    if cache_leftpad.shape[0] != batch:
        raise ValueError(f"cache_leftpad: expected shape ({batch},) (batch size of q), got "
                         f"{tuple(cache_leftpad.shape)}")
    if k_cache.dim() != 4 or k_cache.shape[1] == 0:
        raise ValueError(f"k_cache: expected a contiguous cache (B, N, Hkv, D) of N >= 1 with cache_leftpad, got "
                         f"shape {tuple(k_cache.shape)}")
    k_pool, step = _padded_pool("k_cache", k_cache)
    v_pool, v_step = _padded_pool("v_cache", v_cache)
    if v_step != step:
        raise ValueError(f"v_cache: expected k_cache's row step of {step} tokens with cache_leftpad, got {v_step}")
    capacity = k_cache.shape[1]
    before = appended if appended is not None else lens
    if validate and cache_leftpad.numel():
        lo = int(cache_leftpad.min())
        over = int((cache_leftpad > (before if before is not None else capacity)).sum())
        if lo < 0 or over:
            what = "cache_seqlens" if before is not None else f"the capacity {capacity}"
            raise ValueError(f"cache_leftpad: expected 0 <= cache_leftpad <= {what} (the lengths before new tokens), "
                             f"got a minimum of {lo} and {over} sequences past it")
    rows = cache_batch_idx.long() if cache_batch_idx is not None else torch.arange(batch, device=k_cache.device)
    table = (rows * step + cache_leftpad)[:, None].to(torch.int32)
    if lens is None:
        lens = capacity - cache_leftpad
    else:
        # (unchecked padding past a length would give a negative length: none reaches the schedule)
        lens = (lens - cache_leftpad).clamp_(min=0)
    appended = appended - cache_leftpad if appended is not None else None
    return (k_pool, v_pool, table), appended, lens
