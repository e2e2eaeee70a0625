"""Stream-K (LeanAttention) decomposition of decode work.

The work is every KV tile of every (sequence, kv-head row) pair, counted from the real lengths,
laid out sequence-major::

    tile id = cum[b] + row * tiles[b] + j        (j-th tile of row `row` of sequence b)

and cut into ``G`` contiguous ranges whose sizes differ by at most one tile: the first ``high``
programs take ``T = ceil(total / G)`` tiles, the rest ``T - 1``. A range may start or end inside
a row, so one row can be split across several programs; the program holding the row's first tile
is its *host*. An empty sequence still owns one (empty) tile per row, so that some program writes
its zeros and ``lse = -inf``.
"""
from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

__all__ = ["tiles_per_sequence", "lean_ranges", "lean_assignment"]


# --------------------------------------------------------------------------------------------
# Triton side (used by kernels/decode.py)
# --------------------------------------------------------------------------------------------
@triton.jit
def load_lengths(Lens, n, capacity, BLOCK: tl.constexpr, HAS_LENS: tl.constexpr):
    """``(offs, valid, lens)``: the ``n`` lengths ``Lens[:n]`` clamped to ``capacity`` in a
    ``[BLOCK]`` vector (``capacity`` each without ``HAS_LENS``; 0 past ``n``)."""
    offs = tl.arange(0, BLOCK)
    valid = offs < n
    if HAS_LENS:
        lens = tl.load(Lens + offs, mask=valid, other=0)
    else:
        lens = tl.where(valid, capacity, 0)
    return offs, valid, tl.minimum(lens, capacity)


@triton.jit
def row_tiles(lens, valid, BLOCK_N: tl.constexpr):
    """KV tiles of ``BLOCK_N`` tokens per item; an empty item still owns one (empty) tile."""
    return tl.where(valid, tl.maximum(tl.cdiv(lens, BLOCK_N), 1), 0)


@triton.jit
def range_start(pid, T, high):
    """First tile of program ``pid``: ``pid*T`` for the first ``high`` programs, then ``T-1`` each."""
    return pid * T - tl.maximum(pid - high, 0)


@triton.jit
def program_of(t, T, high):
    """The program whose range holds tile ``t`` (inverse of ``range_start``)."""
    split = high * T
    return tl.where(t < split, t // T, high + (t - split) // tl.maximum(T - 1, 1))


@triton.jit
def program_range(total, pid, nprog):
    """``(T, high, start, end)``: program ``pid`` of ``nprog`` takes positions ``[start, end)`` of
    ``total``; the first ``high`` programs take ``T`` positions, the rest ``T - 1``."""
    T = tl.cdiv(total, nprog)
    high = total - (T - 1) * nprog
    start = range_start(pid, T, high)
    return T, high, start, start + T - (pid >= high).to(tl.int32)


@triton.jit
def cut_list(tiles, rows, pid, nprog):
    """A work list of ``rows`` rows of ``tiles[i]`` tiles per item, cut over ``nprog`` programs:
    ``(work, cum_incl, T, high, start, end)``, the per-item work and its inclusive prefix sum (for
    ``locate_tile``) and ``program_range`` of program ``pid``."""
    work = tiles * rows
    cum_incl = tl.cumsum(work, 0)
    T, high, start, end = program_range(tl.sum(work, 0), pid, nprog)
    return work, cum_incl, T, high, start, end


@triton.jit
def locate_tile(t, t_end, cum_incl, work, tiles, offs):
    """Where list position ``t`` lies, in a list of ``work[i] = rows * tiles[i]`` positions per item
    (``cum_incl`` the inclusive prefix sum of ``work``, ``offs`` the item indices).

    Returns ``(i, sel, row, head_begin, head_end, stop)``: the item ``i`` (``sel = offs == i`` picks
    its entry of any other per-item vector), the row holding ``t``, that row's positions
    ``[head_begin, head_end)`` and ``stop = min(t_end, head_end)``, the end of the piece starting at
    ``t`` in a range ending at ``t_end``. ``lean_assignment`` is the Python mirror.
    """
    i = tl.sum((cum_incl <= t).to(tl.int32), 0)
    sel = offs == i
    base = tl.sum(tl.where(sel, cum_incl - work, 0), 0)
    n = tl.sum(tl.where(sel, tiles, 0), 0)
    row = (t - base) // n
    head_begin = base + row * n
    head_end = head_begin + n
    return i, sel, row, head_begin, head_end, tl.minimum(t_end, head_end)


# --------------------------------------------------------------------------------------------
# Python side
# --------------------------------------------------------------------------------------------
def tiles_per_sequence(seqlens, block_n: int) -> np.ndarray:
    """KV tiles of ``block_n`` tokens per sequence; an empty sequence counts one (empty) tile."""
    seqlens = np.asarray(seqlens, dtype=np.int64)
    return np.maximum(-(-seqlens // block_n), 1)


def lean_ranges(total: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` tile ranges of the ``grid`` programs over ``total`` tiles."""
    T = -(-total // grid) if total > 0 else 0
    high = total - (T - 1) * grid if total > 0 else 0
    pid = np.arange(grid, dtype=np.int64)
    start = pid * T - np.maximum(pid - high, 0)
    end = start + T - (pid >= high)
    if total == 0:
        start = end = np.zeros(grid, dtype=np.int64)
    return start, end


def lean_assignment(seqlens, rows_per_seq: int, block_n: int, grid: int) -> list[list[tuple[int, int, int, int]]]:
    """Pieces each program computes: ``(b, row, first_tile, last_tile_exclusive)``.

    Parameters
    ----------
    seqlens : sequence of int
        Real KV length of each sequence, in tokens.
    rows_per_seq : int
        Scheduling rows per sequence: ``kv_heads * head_blocks`` (query heads of one GQA group are
        packed into one row).
    block_n : int
        KV tokens per tile.
    grid : int
        Number of persistent programs.
    """
    tiles = tiles_per_sequence(seqlens, block_n)
    work = tiles * rows_per_seq
    cum = np.concatenate([[0], np.cumsum(work)])
    starts, ends = lean_ranges(int(cum[-1]), grid)
    out = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        pieces, t = [], s
        while t < e:
            b = int(np.searchsorted(cum, t, side="right") - 1)
            local = t - int(cum[b])
            row, j = divmod(local, int(tiles[b]))
            head_end = int(cum[b]) + (row + 1) * int(tiles[b])
            stop = min(e, head_end)
            pieces.append((b, row, j, j + stop - t))
            t = stop
        out.append(pieces)
    return out
