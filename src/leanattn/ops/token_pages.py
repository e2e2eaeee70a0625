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
from .kv_append import _bytes

__all__ = ["token_pool", "token_pages", "cache_rows_as_pages", "check_leftpad", "left_padded"]


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


# tokens a page of the padded pool: a multiple of every decode tile, and fixed, so that a cache that grows by a token
# a step (transformers' dynamic cache) keeps its compiled kernels (a page of the whole capacity, a compile-time
# constant of the kernel, compiled one a step)
PAD_PAGE = 256


def _row_step(name: str, cache: torch.Tensor) -> tuple[int, int, int]:
    """``(token_stride, step, slots)`` of a contiguous cache ``(rows, N, Hkv, D)`` (:func:`_token_layout`), ``slots``
    the token slots from its first row's first token to its last row's last (``_padded_pool``'s page ids)."""
    laid = _token_layout(cache)
    if laid is None:
        raise ValueError(f"{name}: expected a row stride that is a multiple of the token stride with cache_leftpad "
                         f"(its rows are read as pages starting at any token, without a copy), got strides "
                         f"{tuple(cache.stride())}")
    token, step = laid
    slots = (cache.shape[0] - 1) * step + cache.shape[1]
    if slots + PAD_PAGE > torch.iinfo(torch.int32).max:
        raise ValueError(f"{name}: expected under 2**31 - {PAD_PAGE} token slots (rows x row step) with "
                         f"cache_leftpad (int32 page ids), got {slots}")
    return token, step, slots


def _padded_pool(cache: torch.Tensor, token: int, slots: int) -> torch.Tensor:
    """A contiguous cache ``(rows, N, Hkv, D)`` of ``slots >= PAD_PAGE`` token slots, ``token`` apart
    (:func:`_row_step`), seen as pages of ``PAD_PAGE`` tokens that start at every token (page stride one token),
    page ``row * step + t`` holding tokens ``t, t + 1, ...`` of ``row`` (and on into the next row, whose keys are
    never read there): a view."""
    _, _, Hkv, D = cache.shape
    _, _, s2, s3 = cache.stride()
    # pages starting past this shape (a padded last row's) run past it, never past the storage, as a page is read
    # only up to its sequence's length
    return cache.as_strided((slots - PAD_PAGE + 1, PAD_PAGE, Hkv, D), (token, token, s2, s3))


def _left_aligned(cache: torch.Tensor, rows: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
    """``(B, N, Hkv, D)``: row ``rows[b]`` of ``cache`` from token ``pads[b]`` on, at the front (a copy; the
    positions past the row hold its last token, never read)."""
    N = cache.shape[1]
    at = (pads.long()[:, None] + torch.arange(N, device=cache.device)[None, :]).clamp_(max=N - 1)
    return _bytes(cache)[rows[:, None], at].view(cache.dtype)  # (float8 gathered as bytes)


def check_leftpad(cache_leftpad: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  before: Optional[torch.Tensor], batch: int, validate: bool) -> None:
    """Checks of flash-attn's ``cache_leftpad`` (``(batch,)`` int32 on the cache's device) against a contiguous cache
    ``(rows, N, Hkv, D)`` whose row stride is a whole number of tokens, the same for ``k_cache`` and ``v_cache``;
    where ``validate``, ``0 <= cache_leftpad[b] <= before[b]`` (the lengths before new tokens; None: the capacity),
    a device sync."""
    checks.check_index("cache_leftpad", cache_leftpad, 1, k_cache.device)
    if cache_leftpad.shape[0] != batch:
        raise ValueError(f"cache_leftpad: expected shape ({batch},) (batch size of q), got "
                         f"{tuple(cache_leftpad.shape)}")
    if k_cache.dim() != 4 or k_cache.shape[1] == 0:
        raise ValueError(f"k_cache: expected a contiguous cache (B, N, Hkv, D) of N >= 1 with cache_leftpad, got "
                         f"shape {tuple(k_cache.shape)}")
    _, step, _ = _row_step("k_cache", k_cache)
    _, v_step, _ = _row_step("v_cache", v_cache)
    if v_step != step:
        raise ValueError(f"v_cache: expected k_cache's row step of {step} tokens with cache_leftpad, got {v_step}")
    if validate and cache_leftpad.numel():
        capacity = k_cache.shape[1]
        lo = int(cache_leftpad.min())
        over = int((cache_leftpad > (before if before is not None else capacity)).sum())
        if lo < 0 or over:
            what = "cache_seqlens" if before is not None else f"the capacity {capacity}"
            raise ValueError(f"cache_leftpad: expected 0 <= cache_leftpad <= {what} (the lengths before new tokens), "
                             f"got a minimum of {lo} and {over} sequences past it")


def left_padded(cache_leftpad: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                cache_batch_idx: Optional[torch.Tensor], lens: Optional[torch.Tensor], batch: int) -> tuple:
    """flash-attn's ``cache_leftpad`` (checked: :func:`check_leftpad`): sequence ``b``'s tokens are
    ``[cache_leftpad[b], lens[b])`` of its row of a contiguous cache ``(rows, N, Hkv, D)`` (row ``b``, or
    ``cache_batch_idx[b]``, already checked), attended as a sequence that starts there. The caches are seen as pages
    of ``PAD_PAGE`` tokens starting at every token (:func:`_padded_pool`, no copy), each sequence's pages those from
    its first real token on; a cache of fewer slots than a page is copied with each sequence at the front of its row
    (:func:`_left_aligned`).

    ``lens``: int32 ``(B,)`` lengths attended (None: the capacity). Returns ``((k, v, block_table or None), lens)``,
    the lengths counted from each sequence's first real token."""
    k_token, step, slots = _row_step("k_cache", k_cache)
    v_token, _, v_slots = _row_step("v_cache", v_cache)
    capacity = k_cache.shape[1]
    # (an unchecked negative padding would name a page before the cache's first token)
    pads = cache_leftpad.clamp(min=0)
    rows = cache_batch_idx.long() if cache_batch_idx is not None else torch.arange(batch, device=k_cache.device)
    # (unchecked padding past a length would give a negative length: none reaches the schedule)
    lens = ((capacity if lens is None else lens) - pads).clamp_(min=0).to(torch.int32)
    if min(slots, v_slots) < PAD_PAGE:
        return (_left_aligned(k_cache, rows, pads), _left_aligned(v_cache, rows, pads), None), lens
    pages = torch.arange(0, capacity, PAD_PAGE, device=k_cache.device)
    table = (rows * step + pads)[:, None] + pages[None, :]
    return (_padded_pool(k_cache, k_token, slots), _padded_pool(v_cache, v_token, v_slots),
            table.to(torch.int32)), lens
