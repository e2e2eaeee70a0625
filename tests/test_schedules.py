"""Invariants of the decode schedules (pure integer arithmetic), and the in-kernel mirror of stream-K."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from leanattn.schedules import (lean_assignment, lean_ranges, num_splits_heuristic, split_assignment,
                                tiles_per_sequence)
from leanattn.kernels.decode import even_range
from leanattn.schedules.stream_k import (PIECE_COST, across_rows, even_pieces, program_of, programs_used,
                                         programs_used_py, range_start, search_launch)


def random_batch(max_batch=12, max_len=400):
    """Ragged lengths (often with empties and one-token sequences) and a random grid/tiling."""
    B = int(torch.randint(1, max_batch + 1, ()))
    lens = torch.randint(0, max_len, (B,))
    lens[torch.rand(B) < 0.2] = 0
    lens[torch.rand(B) < 0.1] = 1
    rows = int(torch.randint(1, 9, ()))
    block_n = int(2 ** torch.randint(0, 7, ()))
    grid = int(torch.randint(1, 300, ()))
    return lens.tolist(), rows, block_n, grid


def covered_tiles(assignment):
    """``{(b, row): sorted list of tiles}`` over all pieces of all programs."""
    seen = {}
    for pieces in assignment:
        for b, row, lo, hi in pieces:
            assert lo < hi, "empty piece"
            seen.setdefault((b, row), []).extend(range(lo, hi))
    return {key: sorted(tiles) for key, tiles in seen.items()}


def assert_covers_exactly_once(assignment, lens, rows, block_n):
    tiles = tiles_per_sequence(lens, block_n)
    seen = covered_tiles(assignment)
    expected = {(b, r): list(range(int(tiles[b]))) for b in range(len(lens)) for r in range(rows)}
    assert seen == expected


def test_tiles_per_sequence():
    assert tiles_per_sequence([0, 1, 16, 17, 33], 16).tolist() == [1, 1, 1, 2, 3]


@pytest.mark.parametrize("total,grid", [(0, 4), (1, 4), (4, 4), (5, 4), (7, 3), (1000, 132), (131, 132)])
def test_lean_ranges_partition(total, grid):
    start, end = lean_ranges(total, grid)
    assert start[0] == 0 and end[-1] == total
    assert (start[1:] == end[:-1]).all(), "ranges not contiguous"
    sizes = end - start
    assert sizes.max() - sizes.min() <= 1 and (sizes >= 0).all()
    # larger ranges first, so the inverse map is two divisions
    assert (np.diff(sizes) <= 0).all()


def test_lean_assignment_invariants():
    for _ in range(200):
        lens, rows, block_n, grid = random_batch()
        assignment = lean_assignment(lens, rows, block_n, grid)
        assert len(assignment) == grid
        assert_covers_exactly_once(assignment, lens, rows, block_n)
        # loads differ by at most one tile
        loads = [sum(hi - lo for _, _, lo, hi in pieces) for pieces in assignment]
        assert max(loads) - min(loads) <= 1, (lens, rows, block_n, grid)
        # each program's pieces are one contiguous run of the global, sequence-major tile order
        tiles = tiles_per_sequence(lens, block_n)
        cum = np.concatenate([[0], np.cumsum(tiles * rows)])
        start, end = lean_ranges(int(cum[-1]), grid)
        for p, pieces in enumerate(assignment):
            ids = [int(cum[b]) + row * int(tiles[b]) + j for b, row, lo, hi in pieces for j in range(lo, hi)]
            assert ids == list(range(start[p], end[p]))
            # only the first and last piece of a range may be partial: a program holds at most two
            # unfinished heads, which is what its two workspace slots hold
            partial = [i for i, (b, _, lo, hi) in enumerate(pieces) if (lo, hi) != (0, tiles[b])]
            assert set(partial) <= {0, len(pieces) - 1}
        # one host per (sequence, row): the single program holding its first tile
        hosts = {}
        for p, pieces in enumerate(assignment):
            for b, row, lo, _ in pieces:
                if lo == 0:
                    assert (b, row) not in hosts
                    hosts[(b, row)] = p
        assert len(hosts) == len(lens) * rows


def test_aligned_assignment_invariants():
    # equal lengths (often, so the aligned cut is taken) or ragged: every tile once, the programs in use
    # first with loads differing by at most one tile, the rest idle, and an aligned cut never splits a
    # head into pieces that cross another head
    taken = 0
    for _ in range(300):
        lens, rows, block_n, grid = random_batch()
        if torch.rand(()) < 0.7:
            lens = [lens[0] + 1] * len(lens)
        num_sms = int(torch.randint(1, grid + 1, ()))
        assignment = lean_assignment(lens, rows, block_n, grid, num_sms)
        assert len(assignment) == grid
        assert_covers_exactly_once(assignment, lens, rows, block_n)
        used = programs_used_py(tiles_per_sequence(lens, block_n), rows, grid, num_sms)
        assert 1 <= used <= grid
        loads = [sum(hi - lo for _, _, lo, hi in pieces) for pieces in assignment]
        assert max(loads[:used]) - min(loads[:used]) <= 1 and not any(loads[used:])
        if used < grid:
            taken += 1
            n = int(tiles_per_sequence(lens, block_n)[0])
            # k pieces of n/k tiles per head, or m whole heads per program: every piece lies in one
            # program and every range is whole pieces
            assert all(len(p) == 1 for p in assignment[:used]) or all(
                all((lo, hi) == (0, n) for _, _, lo, hi in p) for p in assignment[:used])
    assert taken > 20


@pytest.mark.parametrize("lens,rows,grid,sms,expected", [
    ([4096], 32, 264, 132, 256),           # mha 4k of 128-token tiles: 8 pieces of 4 tiles a head
    ([32768], 8, 396, 132, 256),           # gqa B=1 32k: 32 pieces of 8 tiles against 6 unaligned x 3 per SM
    ([4096] * 64, 8, 264, 132, 256),       # gqa B=64 4k: two whole heads a program
    ([131072] * 8, 8, 396, 132, 396),      # gqa B=8 128k: 166 tiles x 3 per SM beats 256 x 2 aligned
    ([4096, 4096, 100], 8, 264, 132, 264),  # ragged: never aligned
    ([4096], 32, 264, 0, 264),             # a grid the caller chose
])
def test_programs_used_known_values(lens, rows, grid, sms, expected):
    assert programs_used_py(tiles_per_sequence(lens, 128), rows, grid, sms) == expected


@triton.jit
def _programs_used_probe(Tiles, Out, n, rows, nprog, k0, g_m, m, waves, BLOCK: tl.constexpr, SMS: tl.constexpr,
                         CAND: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    valid = offs < n
    tiles = tl.load(Tiles + offs, mask=valid, other=0)
    G, T = programs_used(tiles, valid, rows, nprog, k0, g_m, m, waves, SMS, CAND)
    tl.store(Out, G)
    tl.store(Out + 1, T)


def test_programs_used_kernel_matches_python():
    # the kernel's search, given the host's part (search_launch), picks the mirror's programs, and an aligned cut
    # gives every program exactly T tiles
    cases = [([32], 32, 264, 132), ([256], 8, 396, 132), ([32] * 64, 8, 264, 132), ([1024] * 8, 8, 396, 132),
             ([32, 32, 1], 8, 264, 132), ([7], 1, 300, 5), ([97] * 3, 5, 40, 7), ([1], 1, 1, 1)]
    for _ in range(40):
        B = int(torch.randint(1, 9, ()))
        t = int(torch.randint(1, 300, ()))
        rows, nprog, sms = (int(torch.randint(1, hi, ())) for hi in (9, 400, 140))
        cases.append(([t] * B, rows, nprog, sms))
    for tiles, rows, nprog, sms in cases:
        out = torch.zeros(2, dtype=torch.int32)
        args, consts = search_launch(len(tiles), rows, nprog, sms)
        assert consts["SEARCH"] and consts["SMS"] == sms
        _programs_used_probe[(1,)](torch.tensor(tiles, dtype=torch.int32), out, len(tiles), rows, nprog, *args,
                                   BLOCK=max(16, triton.next_power_of_2(len(tiles))), SMS=sms, CAND=consts["CAND"])
        G, T = int(out[0]), int(out[1])
        assert G == programs_used_py(tiles, rows, nprog, sms), (tiles, rows, nprog, sms)
        total = sum(tiles) * rows
        assert T == (total // G if G != nprog else -(-total // nprog)), (tiles, rows, nprog, sms)


def test_search_launch_without_sms():
    # a grid the host chose: no search compiled
    args, consts = search_launch(4, 8, 100, 0)
    assert not consts["SEARCH"] and len(args) == 4


@triton.jit
def _across_rows_probe(Tiles, Out, n, rows, nprog, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    valid = offs < n
    tiles = tl.load(Tiles + offs, mask=valid, other=0)
    pid = tl.program_id(0)
    tl.store(Out + pid, across_rows(pid, nprog, tiles, valid, rows))


@pytest.mark.parametrize("tiles,rows,nprog,across", [
    ([8, 8, 8], 2, 12, True),     # 6 rows, 2 pieces a row
    ([8, 8, 8], 2, 24, True),     # 4 pieces a row
    ([8], 32, 256, True),         # mha B=1: 8 pieces a row
    ([8, 8, 8], 2, 6, False),     # one piece a row: nothing to reorder
    ([8, 8, 8], 2, 18, False),    # 3 pieces a row do not divide 8 tiles
    ([8, 4, 8], 2, 12, False),    # ragged lengths
    ([8, 8, 8], 2, 13, False),    # no multiple of the rows
])
def test_across_rows_permutes_aligned_cuts(tiles, rows, nprog, across):
    # schedule program of each launched program: a permutation of [0, nprog) (programs past nprog keep their
    # id), row-major over (piece, row) where the cut is aligned with k >= 2 pieces a row, else the identity
    extra = 3
    out = torch.full((nprog + extra,), -1, dtype=torch.int32)
    _across_rows_probe[(nprog + extra,)](torch.tensor(tiles, dtype=torch.int32), out, len(tiles), rows, nprog,
                                         BLOCK=16)
    got = out.tolist()
    assert sorted(got[:nprog]) == list(range(nprog)) and got[nprog:] == list(range(nprog, nprog + extra))
    if across:
        heads, k = len(tiles) * rows, nprog // (len(tiles) * rows)
        assert got[:nprog] == [(p % heads) * k + p // heads for p in range(nprog)]
        assert got[1] == k  # program 1 runs the first piece of row 1, not the second piece of row 0
    else:
        assert got[:nprog] == list(range(nprog))


def test_lean_assignment_splits_long_head():
    # one 128-tile head over 8 programs: 16 tiles each, host is program 0
    assignment = lean_assignment([128 * 64], 1, 64, 8)
    assert assignment == [[(0, 0, 16 * p, 16 * (p + 1))] for p in range(8)]


def test_split_assignment_invariants():
    for _ in range(200):
        lens, rows, block_n, _ = random_batch()
        capacity = max(lens) + int(torch.randint(0, 100, ()))
        cap_tiles = max(math.ceil(capacity / block_n), 1)
        num_splits = int(torch.randint(1, cap_tiles + 1, ()))
        assignment = split_assignment(lens, rows, block_n, capacity, num_splits)
        assert len(assignment) == num_splits * len(lens) * rows
        assert all(len(pieces) <= 1 for pieces in assignment)
        assert_covers_exactly_once(assignment, lens, rows, block_n)
        # every split spans at most ceil(capacity tiles / splits) tiles
        chunk = math.ceil(cap_tiles / num_splits)
        assert all(hi - lo <= chunk for pieces in assignment for _, _, lo, hi in pieces)


@pytest.mark.parametrize("rows,slots,tiles", [(8, 264, 512), (1, 264, 4096), (32, 264, 64), (256, 264, 512),
                                              (1, 264, 1), (3, 8, 100)])
def test_num_splits_heuristic(rows, slots, tiles):
    s = num_splits_heuristic(rows, slots, tiles)
    assert 1 <= s <= min(128, slots, tiles)
    if rows >= 0.8 * slots:
        assert s == 1  # enough rows to fill the machine
        return

    def efficiency(n):
        waves = rows * n / slots
        return waves / math.ceil(waves)

    # FlashAttention-2 skips split counts that give the same tiles per split as one fewer
    candidates = [n for n in range(1, min(128, slots, tiles) + 1)
                  if n == 1 or math.ceil(tiles / n) != math.ceil(tiles / (n - 1))]
    assert s in candidates
    assert efficiency(s) >= 0.85 * max(efficiency(n) for n in candidates)


def test_num_splits_heuristic_known_values():
    # B=1, 8 kv heads, 32k tokens of 64-token tiles on 132 SMs: FlashAttention-2 picks 29 splits
    assert num_splits_heuristic(8, 264, 512) == 29
    # one row: the best is 128 splits (capped), the first within 85% of its efficiency is 111
    assert num_splits_heuristic(1, 264, 4096) == 111
    assert num_splits_heuristic(512, 264, 64) == 1


@triton.jit
def _schedule_probe_kernel(Start, End, Prog, total, G, N_PROG: tl.constexpr, N_TILE: tl.constexpr):
    # T and high as lean_decode_kernel computes them
    T = tl.cdiv(total, G)
    high = total - (T - 1) * G
    pid = tl.arange(0, N_PROG)
    start = range_start(pid, T, high)
    end = start + T - (pid >= high).to(tl.int32)
    tl.store(Start + pid, start, mask=pid < G)
    tl.store(End + pid, end, mask=pid < G)
    t = tl.arange(0, N_TILE)
    tl.store(Prog + t, program_of(t, T, high), mask=t < total)


@pytest.mark.parametrize("total,grid", [(1, 1), (7, 3), (12, 4), (5, 16), (100, 7), (255, 64), (64, 64), (33, 32)])
def test_kernel_schedule_matches_python(total, grid):
    start = torch.empty(grid, dtype=torch.int32)
    end = torch.empty(grid, dtype=torch.int32)
    prog = torch.empty(max(total, 1), dtype=torch.int32)
    _schedule_probe_kernel[(1,)](start, end, prog, total, grid,
                                 N_PROG=triton.next_power_of_2(grid), N_TILE=triton.next_power_of_2(total))
    py_start, py_end = lean_ranges(total, grid)
    assert start.tolist() == py_start.tolist() and end.tolist() == py_end.tolist()
    # program_of inverts range_start: tile t lies in its program's range
    t = np.arange(total)
    p = prog[:total].numpy()
    assert ((py_start[p] <= t) & (t < py_end[p])).all()


@pytest.mark.parametrize("raw", ["0", "3", "48", "abc", "-4", ""])
def test_schedule_candidates_env_errors(raw):
    # read when the module is imported, so each value is tried in a fresh interpreter
    env = dict(os.environ, LEANATTN_SCHEDULE_CANDIDATES=raw)
    run = subprocess.run([sys.executable, "-c", "import leanattn.schedules.stream_k"], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "ValueError: LEANATTN_SCHEDULE_CANDIDATES: expected a power of two >= 1" in run.stderr
    assert repr(raw) in run.stderr


def test_schedule_candidates_env_sets_the_width():
    env = dict(os.environ, LEANATTN_SCHEDULE_CANDIDATES="32")
    run = subprocess.run([sys.executable, "-c", "import leanattn.schedules.stream_k as s; print(s.CANDIDATES)"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "32"


@triton.jit
def _even_range_probe_kernel(Lo, Hi, n, S: tl.constexpr, N_PROG: tl.constexpr):
    s = tl.arange(0, N_PROG)
    lo, hi = even_range(n, s, S)
    tl.store(Lo + s, lo, mask=s < S)
    tl.store(Hi + s, hi, mask=s < S)


@pytest.mark.parametrize("n,S", [(1, 1), (1, 8), (7, 3), (64, 8), (65, 8), (132, 33), (516, 33), (3, 16)])
def test_even_range_is_lean_ranges_of_one_row(n, S):
    # the split kernel's even pieces of a row of n tiles (EVEN) are the stream-K cut of that row over S programs:
    # every tile once, in order, loads differing by at most one tile
    lo = torch.empty(S, dtype=torch.int32)
    hi = torch.empty(S, dtype=torch.int32)
    _even_range_probe_kernel[(1,)](lo, hi, n, S=S, N_PROG=triton.next_power_of_2(S))
    py_lo, py_hi = lean_ranges(n, S)
    assert lo.tolist() == py_lo.tolist() and hi.tolist() == py_hi.tolist()
    sizes = (hi - lo).tolist()
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,heads,grid,expected", [
    (256, 32, 264, 8),     # mha B=1 16k: the aligned cut, 8 pieces a head
    (64, 32, 264, 8),      # mha B=1 4k
    (512, 8, 264, 32),     # gqa B=1 32k: aligned at 32 (33 ties and does not divide)
    (512, 32, 528, 16),    # d64 mha 64k, 4 programs per SM
    (512, 8, 132, 16),     # d256, one per SM
    (132, 32, 264, 8),     # mha 8k + 256 own tokens: no aligned cut, 8 uneven pieces no slower than unaligned
    (516, 32, 264, 0),     # mha 32k + 256: uneven pieces slower by the cost model, the persistent kernel
    (64, 512, 264, 0),     # gqa B=64 4k: whole rows a program
    (256, 128, 264, 0),    # 128 rows of 256 tiles: 2 pieces a row cost more than the unaligned cut
    (0, 8, 264, 0),
])
def test_even_pieces_known_values(n, heads, grid, expected):
    assert even_pieces(n, heads, grid, 132) == expected


def test_even_pieces_never_costlier_than_the_unaligned_cut():
    # whatever it picks costs, by programs_used's model (the busiest SM's tiles), no more than the unaligned cut
    # over the whole grid plus PIECE_COST, and fits the grid
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, heads, sms = int(rng.integers(1, 3000)), int(rng.integers(1, 300)), int(rng.integers(1, 200))
        grid = sms * int(rng.integers(1, 5))
        k = even_pieces(n, heads, grid, sms)
        if k:
            assert 1 <= k <= n and heads * k <= grid
            waves = -(-grid // sms)
            assert -(-n // k) * -(-heads * k // sms) <= -(-heads * n // grid) * waves + PIECE_COST
