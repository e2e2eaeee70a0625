"""Invariants of the decode schedules (pure integer arithmetic), and the in-kernel mirror of stream-K."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from leanattn.schedules import (lean_assignment, lean_ranges, num_splits_heuristic, split_assignment,
                                tiles_per_sequence)
from leanattn.schedules.stream_k import program_of, range_start


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
