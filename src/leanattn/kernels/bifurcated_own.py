"""Bifurcated decode, launch 2 of 2: each sample's own tokens, merged with its prompt's prefix states.

The own tokens are decoded exactly as ``lean_decode_kernel`` (``kernels/decode.py``) does: the
query heads of one GQA group are the rows of a ``tl.dot``, all KV tiles of all (sample, kv head)
rows are cut stream-K over a persistent grid, and a row cut into pieces is merged in-kernel by the
last arriver in program order (bitwise deterministic, nobody waits). Where decode writes the
finished row, this kernel first merges in the ``S`` prefix split states that launch 1
(``kernels/bifurcated_prefix.py``) left for the row's query heads, ``SB`` splits per load, so the
prefix merge is spread over every row of every sample instead of falling on the one program that
finished a prefix head last. Launch order makes the states visible: no counter, no wait.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..schedules.stream_k import cut_list, load_lengths, row_tiles
from .attend import attend_any
from .piece_merge import settle_piece
from .decode import load_q_rows, locate_row, store_final


@triton.jit
def merge_prefix_states(
    acc, m_i, l_i, StO, StL,  #
    state_row, valid_h, S,  #
    ROWS_P: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, SB: tl.constexpr,
):
    """Fold the ``S`` normalised prefix states of rows ``state_row [BLOCK_H]`` (index into the
    ``(…, S, ROWS_P)`` layout at split 0) into the unnormalised state ``(acc, m, l)`` (log2 units).

    A normalised state ``(o, lse)`` is the unnormalised ``(o * 2^lse / 2^m, m, 2^lse / 2^m)`` for
    any ``m``, so each chunk of ``SB`` splits is an online-softmax step with weights
    ``2^(lse - m_new)``.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, SB)
    for s0 in tl.range(0, S, SB, num_stages=2):
        split = s0 + offs_s
        mask = (split < S)[:, None] & valid_h[None, :]
        rows = state_row.to(tl.int64)[None, :] + split.to(tl.int64)[:, None] * ROWS_P  # [SB, BLOCK_H]
        lse = tl.load(StL + rows, mask=mask, other=float("-inf"))
        o = tl.load(StO + rows[:, :, None] * HEAD_DIM + offs_d[None, None, :], mask=mask[:, :, None], other=0.0)
        m_new = tl.maximum(m_i, tl.max(lse, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.math.exp2(lse - m_use[None, :])
        alpha = tl.math.exp2(m_i - m_use)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, 0)
        l_i = l_i * alpha + tl.sum(w, 0)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def own_merge_kernel(
    Q, K, V, Out, Lse,  #
    Seqlens, BlockTable, PrefixIds, Rank,  #
    StO, StL,  #
    WsAcc, WsMl, Counters,  #
    stride_qb, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_btb,  #
    qk_scale, B, capacity, S,  #
    HKV: tl.constexpr, GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS_P: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,  #
    SB: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, HAS_OWN: tl.constexpr,  #
    SINGLE_PREFIX: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr,
):
    """Stream-K decode of the own caches plus the prefix merge. ``HKV * N_HB`` scheduling rows per
    sample (``N_HB`` blocks of ``BLOCK_H`` query heads per kv head).

    Sample ``b`` reads prompt ``PrefixIds[b]`` and is its ``Rank[b]``-th sample (with
    ``SINGLE_PREFIX``: prompt 0, rank ``b``); its query head ``h * GROUP + i`` is prefix state row
    ``Rank[b] * GROUP + i`` of kv head ``h``. Without own tokens (``HAS_OWN`` false) every row is one
    empty tile and the launch only merges the prefix states. Workspaces: 2 piece slots and one
    counter per program.
    """
    pid = tl.program_id(0)
    NPROG = tl.num_programs(0)
    qk_scale = tl.cast(qk_scale, tl.float32)
    # -- schedule, from the real lengths (no host sync) --
    offs_b, valid_b, lens = load_lengths(Seqlens, B, capacity, BLOCK_B, HAS_OWN and HAS_SEQLENS)
    tiles = row_tiles(lens, valid_b, BLOCK_N)
    work, cum_incl, T, high, start, end = cut_list(tiles, HKV * N_HB, pid, NPROG)

    offs_h = tl.arange(0, BLOCK_H)
    t = start
    while t < end:
        # -- which (sample, row, tile) does tile t belong to --
        b, sel, kvh, hb, seqlen, head_begin, head_end, stop = locate_row(t, end, cum_incl, work, tiles, offs_b, lens, N_HB)
        tile_lo = t - head_begin

        if HAS_OWN:
            q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_H, UPCAST)
            acc, m_i, l_i = attend_any(
                q, K, V, BlockTable, b, kvh, seqlen, tile_lo, tile_lo + (stop - t), qk_scale, 1.0,  #
                stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
                HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, LOAD, UPCAST, DOT_PRECISION)
        else:
            m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_H], tl.float32)
            acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
        valid_h = hb * BLOCK_H + offs_h < GROUP
        final, acc, m_i, l_i = settle_piece(
            acc, m_i, l_i, valid_h, WsAcc, WsMl, Counters,  #
            t, start, head_begin, head_end, stop, T, high, 0, 1, BLOCK_H, HEAD_DIM, VALID_ROWS, MERGE_ROWS, MERGE_STAGES)
        if final:
            # -- the row's own state is complete: fold in its prefix's split states --
            if SINGLE_PREFIX:
                g = b * 0
                rank = b
            else:
                g = tl.load(PrefixIds + b)
                rank = tl.load(Rank + b)
            state_row = (g.to(tl.int64) * HKV + kvh) * S * ROWS_P + rank * GROUP + hb * BLOCK_H + offs_h
            acc, m_i, l_i = merge_prefix_states(acc, m_i, l_i, StO, StL, state_row, valid_h, S,
                                                ROWS_P, BLOCK_H, HEAD_DIM, SB)
            store_final(Out, Lse, acc, m_i, l_i, b, kvh, hb, stride_ob, stride_oh, stride_lb,
                        GROUP, HEAD_DIM, BLOCK_H)
        t = stop
