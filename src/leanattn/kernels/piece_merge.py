"""The stream-K reduction shared by every persistent decode kernel: pieces of one head, merged in-kernel.

A stream-K range may start or end inside a head, so one head's tiles can be cut into pieces
computed by several programs. ``settle_piece`` publishes a piece's unnormalised state to its
program's workspace slot and bumps a counter at the head's *host* program (the one holding the
head's first tile); the piece that arrives last merges all pieces in program order and resets
the counter. Nobody waits, so no launch can hang; the merge order is fixed, so the output is
bitwise deterministic run to run; counters end at zero, so workspaces stay valid across launches
and CUDA-graph replays.

States are ``(acc, m, l)``: ``acc [BLOCK_H, HEAD_DIM]`` the unnormalised output, ``m [BLOCK_H]``
the running max of the scores in log2 units, ``l [BLOCK_H]`` the sum of ``exp2(score - m)``.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from ..schedules.stream_k import program_of, range_start


@triton.jit
def combine(acc_a, m_a, l_a, acc_b, m_b, l_b):
    """Merge two unnormalised states ``(acc, m, l)`` (log2 units); empty states (``m = -inf``,
    ``l = 0``) are the identity."""
    m_new = tl.maximum(m_a, m_b)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    s_a = tl.math.exp2(m_a - m_use)
    s_b = tl.math.exp2(m_b - m_use)
    return acc_a * s_a[:, None] + acc_b * s_b[:, None], m_new, l_a * s_a + l_b * s_b


@triton.jit
def settle_piece(
    acc, m_i, l_i, valid_h,  #
    WsAcc, WsMl, Counters,  #
    t, start, head_begin, head_end, stop, T, high, member,  #
    NM: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,  #
    CHUNK: tl.constexpr, MERGE_STAGES: tl.constexpr,
):
    """Stream-K reduction of a piece ``[t, stop)`` of the head ``[head_begin, head_end)``.

    Ranges are cut over *schedule programs*; schedule program ``p`` is the real program
    ``p * NM + member`` (``NM`` team members, 1 for a plain grid). Workspaces: ``WsAcc`` holds
    ``BLOCK_H x HEAD_DIM`` fp32 per slot and ``WsMl`` ``2 x BLOCK_H`` (m, then l), two slots per
    program (slot 0 for a piece starting the program's range, slot 1 for the one ending it);
    ``Counters`` one int32 per program, zero between launches. Only rows with ``valid_h`` travel
    through the workspace.

    Returns ``(final, acc, m, l)``: ``final`` is true in the program that holds the head's
    complete state (the whole head was in its range, or it was the last piece to arrive and
    merged all pieces in program order).

    The merge loads ``CHUNK`` pieces per step (``[CHUNK, BLOCK_H, HEAD_DIM]``) and
    software-pipelines ``MERGE_STAGES`` steps; ``merge_meta`` picks them (one piece per step
    measured fastest).
    """
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    final = (t == head_begin) & (stop == head_end)
    partial = (t != head_begin) | (stop != head_end)
    if partial:
        # -- publish --
        me = program_of(t, T, high) * NM + member
        slot = 2 * me + (t != start).to(tl.int32)
        acc_ptrs = WsAcc + slot.to(tl.int64) * (BLOCK_H * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(acc_ptrs, acc, mask=valid_h[:, None])
        tl.store(WsMl + slot * (2 * BLOCK_H) + offs_h, m_i)
        tl.store(WsMl + slot * (2 * BLOCK_H) + BLOCK_H + offs_h, l_i)
        host = program_of(head_begin, T, high)
        last = program_of(head_end - 1, T, high)
        # the piece is in the workspace now (the merge reads it back): free its registers
        acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
        tl.debug_barrier()
        arrived = tl.atomic_add(Counters + host * NM + member, 1, sem="acq_rel")
        final = arrived == last - host
        if final:
            # -- last piece to arrive: merge all pieces in program order, CHUNK at a time --
            tl.store(Counters + host * NM + member, 0)
            offs_c = tl.arange(0, CHUNK)
            m_t = tl.full([BLOCK_H], float("-inf"), tl.float32)
            l_t = tl.zeros([BLOCK_H], tl.float32)
            acc_t = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
            for c0 in tl.range(host, last + 1, CHUNK, num_stages=MERGE_STAGES):
                p = c0 + offs_c
                ok = p <= last
                p_start = range_start(p, T, high)
                p_slot = 2 * (p * NM + member) + (tl.maximum(head_begin, p_start) != p_start).to(tl.int32)
                ml = WsMl + p_slot[:, None] * (2 * BLOCK_H) + offs_h[None, :]
                m = tl.load(ml, mask=ok[:, None], other=float("-inf"), cache_modifier=".cg")  # [CHUNK, BLOCK_H]
                l = tl.load(ml + BLOCK_H, mask=ok[:, None], other=0.0, cache_modifier=".cg")
                a = tl.load(WsAcc + p_slot.to(tl.int64)[:, None, None] * (BLOCK_H * HEAD_DIM)
                            + offs_h[None, :, None] * HEAD_DIM + offs_d[None, None, :],
                            mask=ok[:, None, None] & valid_h[None, :, None], other=0.0, cache_modifier=".cg")
                m_new = tl.maximum(m_t, tl.max(m, 0))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.math.exp2(m_t - m_use)
                w = tl.math.exp2(m - m_use[None, :])
                acc_t = acc_t * alpha[:, None] + tl.sum(w[:, :, None] * a, 0)
                l_t = l_t * alpha + tl.sum(w * l, 0)
                m_t = m_new
            acc, m_i, l_i = acc_t, m_t, l_t
    return final, acc, m_i, l_i


def merge_meta(block_h: int, head_dim: int, suffix: str = "") -> dict:
    """``{MERGE_CHUNK<suffix>, MERGE_STAGES<suffix>}``: the launch constants of ``settle_piece`` for
    ``block_h x head_dim`` pieces.

    One piece per step, software-pipelined over 3 steps (2 for pieces over 16 rows, whose stages
    would not fit in shared memory). Chunks of several pieces measured slower everywhere on an
    H200 (``benchmarks/results/decode_sweep_NVIDIA_H200_merge.json``: gqa B=1 32k 58 us at one piece,
    78-132 us at 2-8): a ``[CHUNK, BLOCK_H, HEAD_DIM]`` tile of 64-bit pointers costs the whole
    kernel registers. ``LEANATTN_MERGE=chunk,stages`` overrides (benchmark sweeps).
    """
    raw = os.environ.get("LEANATTN_MERGE")
    if raw:
        chunk, stages = (int(x) for x in raw.split(","))
    else:
        chunk, stages = 1, (3 if block_h <= 16 else 2)
    return {"MERGE_CHUNK" + suffix: chunk, "MERGE_STAGES" + suffix: stages}
