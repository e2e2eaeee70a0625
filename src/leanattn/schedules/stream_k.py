"""Stream-K (LeanAttention) decomposition of decode work.

The work is every KV tile of every (sequence, kv-head row) pair, counted from the real lengths,
laid out sequence-major::

    tile id = cum[b] + row * tiles[b] + j        (j-th tile of row `row` of sequence b)

and cut into ``G`` contiguous ranges whose sizes differ by at most one tile: the first ``high``
programs take ``T = ceil(total / G)`` tiles, the rest ``T - 1``. A range may start or end inside
a row, so one row can be split across several programs; the program holding the row's first tile
is its *host*. An empty sequence still owns one (empty) tile per row, so that some program writes
its zeros and ``lse = -inf``.

When every row has the same number of tiles ``n`` (one sequence, or a batch of equal lengths),
``programs_used`` may run the cut over fewer programs than the grid holds, so that ranges align
with rows: ``k`` pieces of ``n / k`` tiles per row (``k`` divides ``n``), or ``m`` whole rows per
program (``m`` divides the rows). A range that starts a second row mid-range restarts the tile
pipeline and adds a piece to merge; aligned ranges have neither. The rest of the grid exits at once.
What of that choice no length changes is computed on the host (``search_launch``): the rest runs in every
program before its first K/V load. Where the host chose the grid, no search is compiled (``schedule``).

Where the host knows every row has the same length (one sequence, or every one at capacity), ``even_pieces``
decides whether the cut is even pieces of each row; ``ops/decode.py`` then runs it without this persistent
kernel (the split kernel, each piece's range cut on the device from the row's length, ``lean_ranges`` within it).
"""
from __future__ import annotations

import os

import numpy as np
import triton
import triton.language as tl

__all__ = ["tiles_per_sequence", "lean_ranges", "lean_assignment", "programs_used", "schedule", "search_args",
           "search_launch", "even_pieces"]

# what a piece boundary inside a range costs, in tiles of streaming (a tile pipeline refilled and one
# more piece to merge): H200, 2026-12-01, same run, lean over 256 aligned programs against 264
# unaligned ones: mha 64k 254.0 against 260.0 us (62-63 against 64 tiles per program), gqa B=4 32k
# 136.8 against 140.7, paged16 gqa B=4 32k 138.1 against 145.4 (benchmarks/results/decode_probes_H200_2026-12-01.md)
PIECE_COST = 2
# the most candidate piece counts a row tried (a vector, not a loop: the choice costs every program a few
# instructions); the kernel tries ``min(next_power_of_2(k0), CANDIDATES)`` (``search_args``), 8 at mha B=1 on 264
# programs. ``LEANATTN_SCHEDULE_CANDIDATES`` (a power of two, read at import) overrides it, for probes of the
# search's cost: when the whole search ran on the device, 32 candidates instead of 256 (one warp instead of 4,
# 1 barrier instead of 6) moved lean by at most 0.2 us (H200, decode probe 45, 2026-12-03).
_RAW_CANDIDATES = os.environ.get("LEANATTN_SCHEDULE_CANDIDATES", "256")
CANDIDATES = int(_RAW_CANDIDATES) if _RAW_CANDIDATES.strip().isdigit() else 0
if CANDIDATES < 1 or CANDIDATES & (CANDIDATES - 1):
    raise ValueError(f"LEANATTN_SCHEDULE_CANDIDATES: expected a power of two >= 1, got {_RAW_CANDIDATES!r}")
_PIECE_COST: tl.constexpr = tl.constexpr(PIECE_COST)


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
def row_tiles(lens, valid, BLOCK_N: tl.constexpr, window=0, WINDOW: tl.constexpr = False):
    """KV tiles of ``BLOCK_N`` tokens per item; an empty item still owns one (empty) tile. With ``WINDOW`` only the
    tiles from the one holding the sliding window's first key (``first_tile``) count."""
    return tl.where(valid, tl.maximum(tl.cdiv(lens, BLOCK_N) - first_tile(lens, BLOCK_N, window, WINDOW), 1), 0)


@triton.jit
def window_start(seqlen, window, WINDOW: tl.constexpr):
    """The first key a query at position ``seqlen - 1`` attends: ``max(seqlen - 1 - window, 0)`` with ``WINDOW``
    (a sliding window of ``window`` keys before the query, flash-attn's ``window_size[0]``), 0 otherwise;
    ``seqlen`` a scalar or a vector."""
    if WINDOW:
        lo = tl.maximum(seqlen - 1 - window, 0)
    else:
        lo = 0 * seqlen
    return lo


@triton.jit
def first_tile(lens, BLOCK_N: tl.constexpr, window, WINDOW: tl.constexpr):
    """The tile holding the first key of the sliding window of items of lengths ``lens`` (0 without ``WINDOW``):
    the tiles a row's work counts start there."""
    return window_start(lens, window, WINDOW) // BLOCK_N


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
def cut_list_at(tiles, rows, pid, nprog, T):
    """A work list of ``rows`` rows of ``tiles[i]`` tiles per item, cut over ``nprog`` programs whose first
    ``high`` take ``T`` tiles and the rest ``T - 1`` (``T = cdiv(total, nprog)``, given where the caller knows
    it): ``(work, cum_incl, T, high, start, end)``, the per-item work and its inclusive prefix sum (for
    ``locate_tile``) and the positions ``[start, end)`` of program ``pid``."""
    work = tiles * rows
    cum_incl = tl.cumsum(work, 0)
    high = tl.sum(work, 0) - (T - 1) * nprog
    start = range_start(pid, T, high)
    end = start + T - (pid >= high).to(tl.int32)
    # programs past nprog (a grid larger than the cut, see programs_used) take nothing
    return work, cum_incl, T, high, start, tl.where(pid < nprog, end, start)


@triton.jit
def cut_list(tiles, rows, pid, nprog):
    """``cut_list_at`` with ``T`` computed."""
    return cut_list_at(tiles, rows, pid, nprog, tl.cdiv(tl.sum(tiles * rows, 0), nprog))


@triton.jit
def uniform_rows(tiles, valid, rows):
    """``(n, uniform, heads)`` of a work list of ``rows`` rows of ``tiles[i]`` tiles per valid item: the
    largest tile count, whether every valid item has it, and the number of rows (at least 1)."""
    n = tl.max(tl.where(valid, tiles, 0), 0)
    uniform = tl.min(tl.where(valid, tiles, n), 0) == n
    heads = tl.maximum(tl.sum(valid.to(tl.int32), 0) * rows, 1)
    return n, uniform, heads


@triton.jit
def programs_used(tiles, valid, rows, nprog, k0, g_m, m, waves, SMS: tl.constexpr, CAND: tl.constexpr):
    """``(G, T)``: how many of the ``nprog`` programs (on ``SMS`` SMs) to cut the work list over, and the
    tiles of its busiest programs.

    ``nprog`` unless every item has the same tile count ``n`` and an aligned cut is no slower by the
    cost model: the tiles of the busiest SM, ``T * cdiv(G, SMS)`` for ``G`` programs of ``T`` tiles,
    plus ``PIECE_COST`` tiles when ranges cut rows unaligned. The aligned cuts: ``k`` pieces a row
    (``k`` the largest divisor of ``n`` with ``rows_total * k <= nprog``), else ``m`` whole rows a
    program (``m`` the smallest divisor of the row count with ``rows_total / m <= nprog``).

    What does not depend on the lengths comes from the host (``search_args``): ``k0 = nprog // rows_total``,
    the first candidate ``k``, of ``CAND``; the whole-rows cut ``m`` and its ``g_m`` programs; ``waves =
    cdiv(nprog, SMS)``. Every integer division left on the device sits between a program's start and its
    first K/V load (H200, mha B=1 16k: the search computed in full there cost 1.3 us of 70, decode probe 45).
    ``programs_used_py`` is the Python mirror.
    """
    n, uniform, heads = uniform_rows(tiles, valid, rows)
    # (with equal lengths the work is heads * n)
    t_u = tl.cdiv(tl.sum(tiles * rows, 0), nprog)
    ks = k0 - tl.arange(0, CAND)
    k = tl.max(tl.where((ks >= 1) & (n % tl.maximum(ks, 1) == 0), ks, 0), 0)
    g_a = tl.where(k >= 1, heads * k, g_m)
    t_a = tl.where(k >= 1, n // tl.maximum(k, 1), m * n)
    use = uniform & (n > 0) & (t_a * tl.cdiv(g_a, SMS) <= t_u * waves + _PIECE_COST)
    # an aligned cut is even: G programs of exactly t_a tiles
    return tl.where(use, g_a, nprog), tl.where(use, t_a, t_u)


@triton.jit
def schedule(tiles, valid, rows, k0, g_m, m, waves, SEARCH: tl.constexpr, SMS: tl.constexpr, CAND: tl.constexpr):
    """``(G, T)`` for ``cut_list_at``: with ``SEARCH``, ``programs_used`` of the grid (``k0, g_m, m, waves, SMS,
    CAND`` its host-side arguments, ``search_args``); else the whole grid (the host chose it) and its ``T``.
    Without ``SEARCH`` no instruction of the search is compiled."""
    if SEARCH:
        G, T = programs_used(tiles, valid, rows, tl.num_programs(0), k0, g_m, m, waves, SMS, CAND)
    else:
        G = tl.num_programs(0)
        T = tl.cdiv(tl.sum(tiles * rows, 0), G)
    return G, T


@triton.jit
def across_rows(pid, nprog, tiles, valid, rows):
    """The schedule program that program ``pid`` of ``nprog`` runs when the cut is aligned with the rows,
    ``k >= 2`` pieces a row (``programs_used``): programs next to each other take the same piece of
    neighbouring rows, ``(pid % R) * k + pid // R`` for ``R`` rows, instead of neighbouring pieces of one row.
    Programs start in the order of their ids, so the programs that start together then read the same
    tokens of every head, which lie side by side in the cache (``(B, N, H, D)``), instead of one head's
    128 to 512 bytes out of every token's row. Otherwise ``pid``. A permutation of the programs: the cut,
    and so every result bit, is the same."""
    n, uniform, heads = uniform_rows(tiles, valid, rows)
    k = nprog // heads
    ok = uniform & (k >= 2) & (k * heads == nprog) & (n % tl.maximum(k, 1) == 0) & (pid < nprog)
    return tl.where(ok, (pid % heads) * k + pid // heads, pid)


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
def tiles_per_sequence(seqlens, block_n: int, window_left: int = -1) -> np.ndarray:
    """KV tiles of ``block_n`` tokens per sequence; an empty sequence counts one (empty) tile. With a sliding
    window (``window_left >= 0``) only the tiles from the one holding its first key count (``row_tiles``)."""
    seqlens = np.asarray(seqlens, dtype=np.int64)
    first = np.maximum(seqlens - 1 - window_left, 0) // block_n if window_left >= 0 else 0
    return np.maximum(-(-seqlens // block_n) - first, 1)


def window_tokens(capacity: int, block_n: int, window_left: int = -1) -> int:
    """Tokens that bound the tiles of any row of a cache of ``capacity`` tokens: ``capacity`` or, with a sliding
    window, ``window_left + block_n`` if fewer (the ``window_left + 1`` keys of a window span at most
    ``ceil(window_left / block_n) + 1`` tiles)."""
    return capacity if window_left < 0 else min(capacity, window_left + block_n)


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


def search_args(items: int, rows: int, grid: int, num_sms: int) -> dict:
    """The host's part of ``programs_used`` for ``items`` items of ``rows`` rows on ``grid`` programs over
    ``num_sms`` SMs, which no length changes: ``k0`` (the first candidate count of pieces a row) and ``CAND``
    (candidates tried, a power of two), the whole-rows cut ``m`` (rows a program) and its ``g_m`` programs, and
    ``waves`` (programs a SM)."""
    heads = max(items * rows, 1)
    k0 = grid // heads
    m0 = -(-heads // grid)
    m = next((m for m in range(m0, m0 + CANDIDATES) if heads % m == 0), heads)
    return dict(k0=k0, CAND=min(triton.next_power_of_2(max(k0, 1)), CANDIDATES), m=m, g_m=heads // m,
                waves=-(-grid // max(num_sms, 1)))


def search_launch(items: int, rows: int, grid: int, num_sms: int) -> tuple[tuple, dict]:
    """The arguments ``(k0, g_m, m, waves)`` and launch constants ``{SEARCH, SMS, CAND}`` a persistent kernel
    passes to ``schedule`` for ``items`` items of ``rows`` rows on ``grid`` programs: the search with an SM
    count, none with ``num_sms = 0`` (a grid the host chose)."""
    if num_sms <= 0:
        return (0, 1, 1, 1), dict(SEARCH=False, SMS=1, CAND=1)
    a = search_args(items, rows, grid, num_sms)
    return (a["k0"], a["g_m"], a["m"], a["waves"]), dict(SEARCH=True, SMS=num_sms, CAND=a["CAND"])


def programs_used_py(tiles, rows: int, grid: int, num_sms: int) -> int:
    """Mirror of the kernels' ``programs_used``: of ``grid`` programs on ``num_sms`` SMs, how many
    the work list ``tiles`` (tiles per item) x ``rows`` rows is cut over."""
    tiles = np.asarray(tiles, dtype=np.int64)
    if len(tiles) == 0 or tiles.max() <= 0 or num_sms <= 0:
        return grid
    n = int(tiles.max())
    heads = len(tiles) * rows
    a = search_args(len(tiles), rows, grid, num_sms)
    cost_u = -(-heads * n // grid) * a["waves"] + PIECE_COST
    ks = [k for k in range(a["k0"], max(a["k0"] - a["CAND"], 0), -1) if n % k == 0]
    if ks:
        g_a, t_a = heads * ks[0], n // ks[0]
    else:
        g_a, t_a = a["g_m"], a["m"] * n
    if (tiles == n).all() and t_a * -(-g_a // num_sms) <= cost_u:
        return g_a
    return grid


def even_pieces(n: int, heads: int, grid: int, num_sms: int) -> int:
    """Pieces a row for ``heads`` rows of ``n`` tiles each (rows known to be equal: one sequence, or every one at
    capacity) cut as even pieces of every row, ``lean_ranges(n, k)`` within each, or 0 for the stream-K cut.

    The aligned cut ``programs_used_py`` picks where it picks one (``k`` pieces a row, ``k`` dividing ``n``).
    Otherwise ``k = grid // heads`` uneven pieces (sizes differing by one tile), where the cost model of
    ``programs_used`` (the busiest SM's tiles, ``PIECE_COST`` more for a cut across rows) finds them no slower
    than the unaligned cut over the whole grid. 0 also where whole rows per program are cut (more rows than
    programs). ``ops/decode.py`` runs these pieces on the split kernel (``EVEN``)."""
    if n < 1 or heads < 1 or num_sms <= 0 or grid < heads:
        return 0
    used = programs_used_py([n], heads, grid, num_sms)
    if used < grid and used % heads == 0 and n % (used // heads) == 0:
        return used // heads
    k = min(grid // heads, n)
    waves = -(-grid // num_sms)
    if -(-n // k) * -(-heads * k // num_sms) <= -(-heads * n // grid) * waves + PIECE_COST:
        return k
    return 0


def lean_assignment(seqlens, rows_per_seq: int, block_n: int, grid: int,
                    num_sms: int | None = None) -> list[list[tuple[int, int, int, int]]]:
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
    num_sms : int, optional
        SMs the grid runs on. Given, the tiles are cut over ``programs_used_py`` of the programs (as
        the kernels do) and the rest get no pieces; otherwise over all ``grid``.
    """
    tiles = tiles_per_sequence(seqlens, block_n)
    work = tiles * rows_per_seq
    cum = np.concatenate([[0], np.cumsum(work)])
    used = grid if num_sms is None else programs_used_py(tiles, rows_per_seq, grid, num_sms)
    starts, ends = lean_ranges(int(cum[-1]), used)
    starts = np.concatenate([starts, np.full(grid - used, cum[-1], dtype=np.int64)])
    ends = np.concatenate([ends, np.full(grid - used, cum[-1], dtype=np.int64)])
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
