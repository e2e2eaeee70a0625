"""FlashDecoding's fixed split: every (sequence, kv-head row) is cut into the same number of splits.

The split count is chosen from the *capacity* of the cache (the host does not know the real
lengths without a sync), with FlashAttention-2's wave-efficiency heuristic. Splits that fall past
a sequence's real length do no work. This is the baseline the stream-K schedule is measured
against.
"""
from __future__ import annotations

import math

__all__ = ["num_splits_heuristic", "split_assignment"]


def num_splits_heuristic(rows: int, slots: int, num_tiles: int, max_splits: int = 128) -> int:
    """Splits per row, as FlashAttention-2's ``num_splits_heuristic``.

    Parameters
    ----------
    rows : int
        Independent rows of work (batch x kv-head rows).
    slots : int
        Programs resident at once; FlashAttention-2 passes ``2 * num_sms``.
    num_tiles : int
        KV tiles per row at full capacity.
    """
    num_sms = slots
    if rows >= 0.8 * num_sms:
        return 1
    max_splits = min(max_splits, num_sms, num_tiles)
    if max_splits <= 1:
        return 1

    def efficiency(s: int) -> float:
        waves = rows * s / num_sms
        return waves / math.ceil(waves)

    def eligible(s: int) -> bool:
        # a split count is pointless if a smaller one gives the same tiles per split
        return s == 1 or math.ceil(num_tiles / s) != math.ceil(num_tiles / (s - 1))

    best = max(efficiency(s) for s in range(1, max_splits + 1) if eligible(s))
    for s in range(1, max_splits + 1):
        if eligible(s) and efficiency(s) >= 0.85 * best:
            return s
    return 1


def split_assignment(seqlens, rows_per_seq: int, block_n: int, capacity: int, num_splits: int):
    """Pieces of every program of the split schedule: ``[(b, row, first_tile, last_tile)]`` per program.

    Programs are ordered split-major, as the kernel's grid ``(num_splits, batch * rows)``.
    """
    cap_tiles = max(-(-capacity // block_n), 1)
    chunk = -(-cap_tiles // num_splits)
    out = []
    for s in range(num_splits):
        for b, n in enumerate(seqlens):
            tiles = max(-(-int(n) // block_n), 1)
            lo, hi = s * chunk, min((s + 1) * chunk, tiles)
            for row in range(rows_per_seq):
                out.append([(b, row, lo, hi)] if hi > lo else [])
    return out
