"""Per-call layout of sparse causal attention: token order, group ids and block ranges.

Both sparse modes reduce to one problem. Every (batch, head) row of queries and of keys gets an
integer *group* per token, and query ``i`` attends key ``j`` iff their groups match and
``j <= i`` in the original positions:

* hash mode: the group is the bucket id;
* QK mode: kept tokens are group 0; dropped queries are group 1 and dropped keys group 2, so
  that a dropped token never matches anything.

Sorting each row stably by group gives a permutation ``perm`` (original position of the
``r``-th token in sorted order) under which the tokens of a group are contiguous and in time
order. In QK mode the sort is a compaction: kept tokens first, in time order. The composite
key ``group * N + position`` is then increasing along each sorted row, and the keys visible to
a query ``(g, p)`` are exactly those with composite key in ``[g * N, g * N + p]``: one
contiguous run of the sorted keys. For a block of consecutive sorted queries the union of
these runs is again one contiguous run, so each query block needs one range of key blocks,
found by binary search (``torch.searchsorted``) once per call, not scanned inside every
program. Within that range, a sub-range of *full* blocks (every pair visible) is computed
too; kernels skip the element mask there.

All tensors here are ``(B * H, ...)`` with rows in (batch, head) order. Nothing syncs with
the host, so the layout is usable under ``torch.compile`` and CUDA-graph capture.

This module is the *reference* of the layout, in torch ops (about fifty small launches per
call). The ops compute the same layout with two Triton launches (``kernels/sparse_ranges.py``,
launched from ``plan.py``); tests check that both agree exactly, and the flex_attention peer of
``benchmarks/bench_sparse.py`` builds its BlockMask from this one.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["QK_DEAD", "SparseLayout", "build_layout", "qk_groups", "block_ranges_q", "block_ranges_kv"]


class SparseLayout(NamedTuple):
    """Sorted order of one call. Shapes: ``BH = B * H``.

    q_perm, k_perm : ``(BH, N)`` int32, original position of the ``r``-th sorted token.
    q_group, k_group : ``(BH, N)`` int32, group id of the ``r``-th sorted token.
    q_key, k_key : ``(BH, N)`` int64, ``group * N + position``, increasing along each row.
    q_live, k_live : ``(BH, 1)`` int64, number of *live* tokens, which come first in sorted
        order (QK mode: the kept ones; hash mode: all ``N``). Dead tokens match nothing.
    """

    q_perm: torch.Tensor
    q_group: torch.Tensor
    k_perm: torch.Tensor
    k_group: torch.Tensor
    q_key: torch.Tensor
    k_key: torch.Tensor
    q_live: torch.Tensor
    k_live: torch.Tensor


QK_DEAD = (1, 2)  # group ids of dropped queries and dropped keys


def qk_groups(q_keep: torch.Tensor, k_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group ids of QK mode from ``(B, N, H)`` bool keep masks: kept 0, dropped q 1, dropped k 2."""
    return (~q_keep).to(torch.int32) * QK_DEAD[0], (~k_keep).to(torch.int32) * QK_DEAD[1]


def _sort_rows(groups: torch.Tensor):
    # (B, N, H) -> (B*H, N) rows, stable sort so positions stay increasing inside a group
    B, N, H = groups.shape
    g = groups.permute(0, 2, 1).reshape(B * H, N).contiguous()
    g_sorted, perm = torch.sort(g, dim=-1, stable=True)
    key = (g_sorted.to(torch.int64) * N + perm).contiguous()
    # sort keeps its input's strides; the kernels index rows as bh * N + r
    return perm.to(torch.int32).contiguous(), g_sorted.to(torch.int32).contiguous(), key


def build_layout(q_groups: torch.Tensor, k_groups: torch.Tensor, q_dead: int | None = None,
                 k_dead: int | None = None) -> SparseLayout:
    """Sort the ``(B, N, H)`` integer group ids of queries and keys per (batch, head).

    ``q_dead`` / ``k_dead``: a group id that matches nothing and is the largest of its side
    (QK mode's dropped tokens); block ranges then ignore those tokens.
    """
    q_perm, q_group, q_key = _sort_rows(q_groups)
    k_perm, k_group, k_key = _sort_rows(k_groups)
    q_live, k_live = (
        (g != dead).sum(-1, keepdim=True) if dead is not None
        else torch.full_like(g[:, :1], g.shape[-1], dtype=torch.int64)
        for g, dead in ((q_group, q_dead), (k_group, k_dead)))
    return SparseLayout(q_perm, q_group, k_perm, k_group, q_key, k_key, q_live, k_live)


def _block_ends(key: torch.Tensor, live: torch.Tensor, block: int):
    """Composite keys of the first and last live token of every block, whether the block has a
    live token, and whether the whole block (up to ``N``) lies in one group."""
    n = key.shape[-1]
    first = torch.arange(0, n, block, device=key.device)
    last = torch.clamp(first + block, max=n) - 1
    key_first, key_end = key[:, first], key[:, last]
    last_live = torch.minimum(last[None, :], live - 1).clamp(min=0)
    key_last = torch.gather(key, 1, last_live)
    has_live = first[None, :] < live
    one_group = key_first // n == key_end // n
    return key_first, key_last, has_live, one_group


def _finish(e_lo, e_hi, f_lo, f_hi, single, block):
    """Element ranges -> block ranges ``[lo, full_lo, full_hi, hi]`` (int32, ``(BH, n_blocks, 4)``).

    ``[e_lo, e_hi)`` covers every partner of the block; ``[f_lo, f_hi)`` the partners seen by every
    member (only meaningful when ``single``). Empty ranges become ``[0, 0, 0, 0]``.
    """
    empty = e_hi <= e_lo
    lo = torch.where(empty, 0, e_lo // block)
    hi = torch.where(empty, 0, (e_hi + block - 1) // block)
    flo = (f_lo + block - 1) // block
    fhi = f_hi // block
    ok = single & ~empty & (fhi > flo)
    flo = torch.where(ok, flo, lo)
    fhi = torch.where(ok, fhi, lo)
    return torch.stack([lo, flo, fhi, hi], dim=-1).to(torch.int32).contiguous()


def block_ranges_q(layout: SparseLayout, block_m: int, block_n: int) -> torch.Tensor:
    """For every block of ``block_m`` sorted queries, the key blocks (of ``block_n``) it needs.

    Returns ``(BH, cdiv(N, block_m), 4)`` int32 ``[lo, full_lo, full_hi, hi]``: key blocks
    ``[lo, hi)`` hold every visible key, and ``[full_lo, full_hi)`` (inside it) are visible to
    every query of the block, so need no mask.
    """
    q_key, k_key = layout.q_key, layout.k_key
    N = q_key.shape[-1]
    key_first, key_last, has_live, one_group = _block_ends(q_key, layout.q_live, block_m)
    # visible keys of the block's live queries: composite in [g_lo * N, key_last]
    e_lo = torch.searchsorted(k_key, key_first // N * N)
    e_hi = torch.where(has_live, torch.searchsorted(k_key, key_last, right=True), 0)
    # keys seen by every query of a one-group block: composite in [g * N, key_first]
    f_hi = torch.searchsorted(k_key, key_first, right=True)
    return _finish(e_lo, e_hi, e_lo, f_hi, one_group, block_n)


def block_ranges_kv(layout: SparseLayout, block_m: int, block_n: int) -> torch.Tensor:
    """For every block of ``block_n`` sorted keys, the query blocks (of ``block_m``) that see it.

    Returns ``(BH, cdiv(N, block_n), 4)`` int32 ``[lo, full_lo, full_hi, hi]`` in query blocks,
    with the same meaning as :func:`block_ranges_q`.
    """
    q_key, k_key = layout.q_key, layout.k_key
    N = k_key.shape[-1]
    key_first, key_last, has_live, one_group = _block_ends(k_key, layout.k_live, block_n)
    # queries seeing some live key of the block: composite in [key_first, (g_last + 1) * N)
    e_lo = torch.searchsorted(q_key, key_first)
    e_hi = torch.where(has_live, torch.searchsorted(q_key, (key_last // N + 1) * N), 0)
    # queries seeing every key of a one-group block: composite in [key_last, (g + 1) * N)
    f_lo = torch.searchsorted(q_key, key_last)
    return _finish(e_lo, e_hi, f_lo, e_hi, one_group, block_m)
