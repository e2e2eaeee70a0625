"""Decode attention kernels: one query token per sequence against a (paged) KV cache.

Both schedules share ``attend_any`` (``kernels/attend.py``), which folds a range of KV tiles of one
(sequence, kv-head) into an online-softmax state for the query heads of one GQA group, stacked as
the rows of a ``tl.dot`` so that K and V are read once per group.

* ``lean_decode_kernel``: a persistent grid; schedule program ``p`` takes an equal contiguous range of the
  global tile sequence (stream-K, see ``schedules/stream_k.py``; with ``ACROSS_ROWS`` the launched programs
  run the schedule programs in the order of ``across_rows``), so a head may be cut into
  unequal pieces by several programs. A head finished inside one program is written directly;
  the pieces of a cut head are merged in-kernel by the last to arrive or, with ``MERGE_LAUNCH``, by
  a second launch (``kernels/piece_merge.py``; ``ops/stream_k_launch.py`` picks): nobody waits, so no
  launch can hang; the merge order is fixed, so the output is bitwise deterministic.
* ``split_decode_kernel``: FlashDecoding's fixed number of splits per head; a second launch
  (``kernels/merge.py``) combines the splits. With ``AFTER_PRIOR`` it runs beside the launch before it and
  completes after it (the ordered overlap path of bifurcated decode).

Scores are kept in log2 units (``qk_scale = softmax_scale * log2(e)``; with a soft cap, ``attend.softmax_step``)
so the exponentials are ``exp2``; the LSE written out is natural-log.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..schedules.stream_k import (across_rows, cut_list_at, first_tile, load_lengths, locate_tile, row_tiles, schedule,
                                  window_start)
from .attend import attend_any
from .grid_dependency import gdc_launch_dependents, gdc_wait
from .piece_merge import publish_piece, record_row, settle_piece
from .query_rows import alibi_rows, key_ranges, packed_slots, packed_window, padding_only, row_offsets, sink_rows

LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def locate_row(t, end, cum_incl, work, tiles, offs_b, lens, N_HB: tl.constexpr):
    """``locate_tile`` for a decode work list, whose rows are (kv head, head block) pairs of each
    sequence: ``(b, sel, kvh, hb, seqlen, head_begin, head_end, stop)``."""
    b, sel, row, head_begin, head_end, stop = locate_tile(t, end, cum_incl, work, tiles, offs_b)
    return b, sel, row // N_HB, row % N_HB, tl.sum(tl.where(sel, lens, 0), 0), head_begin, head_end, stop


@triton.jit
def load_q_rows(
    Q, b, kvh, hb, stride_qb, stride_qh,  #
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr,
    stride_qt=0, QLEN: tl.constexpr = 1, CuQ=None, VARLEN: tl.constexpr = False,
):
    """The query rows ``hb*BLOCK_H + i`` of kv head ``kvh`` of sequence ``b`` (``row_offsets``): ``[BLOCK_H,
    HEAD_DIM]``, zeros past the ``GROUP * QLEN`` real rows. ``VARLEN``: a packed query (``packed_slots``), zeros in
    the slots before the sequence's first token too."""
    offs_g = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    if QLEN == 1 and not VARLEN:
        heads = kvh * GROUP + offs_g
        ptrs = Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    else:
        if VARLEN:
            start, first = packed_slots(CuQ, b, QLEN)
            base = start * stride_qt
        else:
            base = b.to(tl.int64) * stride_qb
        ptrs = Q + base + row_offsets(kvh, offs_g, stride_qt, stride_qh, GROUP, QLEN)[:, None] + offs_d[None, :]
    if VARLEN:
        q = tl.load(ptrs, mask=((offs_g >= GROUP * first) & (offs_g < GROUP * QLEN))[:, None], other=0.0)
    else:
        q = tl.load(ptrs, mask=(offs_g < GROUP * QLEN)[:, None], other=0.0)
    if UPCAST:  # bf16 tl.dot is broken in the interpreter
        q = q.to(tl.float32)
    return q


@triton.jit
def rope_rows(
    QPE, b, kvh, hb, stride_qb, stride_qh,  #
    GROUP: tl.constexpr, ROPE_DIM: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr,
    stride_qt=0, QLEN: tl.constexpr = 1, CuQ=None, VARLEN: tl.constexpr = False,
):
    """MLA's rotary query rows ``[BLOCK_H, ROPE_DIM]`` (``load_q_rows`` of ``QPE``); ``0`` where ``ROPE_DIM == 0``."""
    if ROPE_DIM > 0:
        return load_q_rows(QPE, b, kvh, hb, stride_qb, stride_qh, GROUP, ROPE_DIM, BLOCK_H, UPCAST, stride_qt, QLEN,
                           CuQ, VARLEN)
    else:
        return 0


@triton.jit
def store_final(
    Out, Lse, acc, m_i, l_i, b, kvh, hb, stride_ob, stride_oh, stride_lb,  #
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    stride_ot=0, stride_lt=0, QLEN: tl.constexpr = 1, CuQ=None, VARLEN: tl.constexpr = False,
):
    """Normalise a finished state and write ``out`` rows and their natural-log LSE (rows as ``row_offsets``;
    ``VARLEN``: of a packed query, ``packed_slots``).

    A row that saw no key (``l == 0``) gets zeros and ``-inf``, never NaN. Returns the query rows' offsets in
    ``Lse`` past the sequence's and which of them are real.
    """
    offs_g = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_h = offs_g < GROUP * QLEN
    # (one token: the expressions of before the tokens, which compile to the same instructions in the same order)
    l_rows = kvh * GROUP + offs_g
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    if QLEN == 1 and not VARLEN:
        o_ptrs = Out + b.to(tl.int64) * stride_ob + l_rows[:, None] * stride_oh + offs_d[None, :]
    else:
        if VARLEN:
            start, first = packed_slots(CuQ, b, QLEN)
            mask_h = mask_h & (offs_g >= GROUP * first)
            base = start * stride_ot
        else:
            base = b.to(tl.int64) * stride_ob
        o_ptrs = Out + base + row_offsets(kvh, offs_g, stride_ot, stride_oh, GROUP, QLEN)[:, None] + offs_d[None, :]
        l_rows = row_offsets(kvh, offs_g, stride_lt, 1, GROUP, QLEN)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=mask_h[:, None])
    if VARLEN:
        tl.store(Lse + start * stride_lt + l_rows, lse, mask=mask_h)
    else:
        tl.store(Lse + b.to(tl.int64) * stride_lb + l_rows, lse, mask=mask_h)
    return l_rows, mask_h

@triton.jit(noinline=True)
def decode_piece(
    Q, K, V, Out, Lse, BlockTable, WsAcc, WsMl, Counters, RowInfo, CuQ, Alibi, Sinks, QPE, KPE, Leftpad,  #
    b, kvh, hb, seqlen, t, stop, head_begin, head_end, start, T, high, qk_scale, v_scale,  #
    stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb, stride_btb, stride_qt, stride_ot, stride_lt, stride_ab,  #
    stride_pqb, stride_pqh, stride_pqt, stride_pkb, stride_pkn,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,  #
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, LOAD: tl.constexpr, UPCAST: tl.constexpr,  #
    DOT_PRECISION: tl.constexpr, VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr,  #
    MERGE_LAUNCH: tl.constexpr, softcap, SOFTCAP: tl.constexpr, window, WINDOW: tl.constexpr,  #
    QLEN: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr, ALIBI: tl.constexpr, SINK: tl.constexpr,
    ROPE_DIM: tl.constexpr, V_IS_K: tl.constexpr, LEFTPAD: tl.constexpr,
):
    """Piece ``[t, stop)`` of the head ``[head_begin, head_end)`` (sequence ``b``, kv head ``kvh``,
    head block ``hb``) of a stream-K program whose range starts at ``start``: attend its tiles, settle
    the piece (``settle_piece``) and, where the head is complete, write it. With ``WINDOW`` (a sliding window of
    ``window`` keys before the query) the head's tiles start at the one holding the window's first key. ``QLEN``
    query tokens a sequence share the rows (``row_offsets``), each attending its keys (``key_ranges``); ``VARLEN``:
    of a packed query (``packed_slots``). ``ALIBI``: each query head's ALiBi slope is ``Alibi[b * stride_ab + head]``
    (``alibi_rows``). ``SINK``: each query head's attention sink is ``Sinks[head]``, carried by the row's first piece
    (``sink_rows``). ``ROPE_DIM > 0``: MLA, the query's rotary part ``QPE`` (strides ``stride_pq*``) against ``KPE``
    (``stride_pk*``), and with ``V_IS_K`` values that are the keys (``kernels/attend.attend_tiles``). ``LEFTPAD``:
    the row's keys start at slot ``Leftpad[b]`` (``seqlen`` already counted from there: ``left_padded_row``).

    A call, not inlined (scalar arguments only): inlined in the program's loop over pieces, ptxas
    kept 214-216 registers at D=128 (2 programs per SM); called, 166-168 and no spills (3 per SM;
    Triton 3.6, sm_90a, ``benchmarks/offline_resources.py``).
    """
    _, K, V = left_padded_row(Leftpad, b, seqlen, K, V, stride_kn, stride_vn, LEFTPAD)
    own_window = window  # (a packed query's sequence: the union of its real tokens' windows, packed_window)
    if VARLEN and WINDOW:
        own_window = packed_window(CuQ, b, window, QLEN)
    tile_lo = t - head_begin + first_tile(seqlen, BLOCK_N, own_window, WINDOW)
    q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_H, UPCAST, stride_qt, QLEN, CuQ, VARLEN)
    q_pe = rope_rows(QPE, b, kvh, hb, stride_pqb, stride_pqh, GROUP, ROPE_DIM, BLOCK_H, UPCAST, stride_pqt, QLEN, CuQ,
                     VARLEN)
    row_lo, row_hi = key_ranges(seqlen, hb, window, GROUP, QLEN, BLOCK_H, CAUSAL, WINDOW)
    slope, q_pos = alibi_rows(Alibi, b, kvh, hb, seqlen, stride_ab, GROUP, QLEN, BLOCK_H, ALIBI)
    sink = sink_rows(Sinks, kvh, hb, t == head_begin, GROUP, QLEN, BLOCK_H, SINK)
    # (the tile count inline, where it was before packed queries: the same instructions in the same order without)
    acc, m_i, l_i = attend_any(
        q, K, V, BlockTable, b, kvh, seqlen, tile_lo,
        tile_lo + (tl.where(padding_only(CuQ, b, hb, GROUP, BLOCK_H, QLEN), 0, stop - t) if VARLEN else stop - t),
        qk_scale, v_scale,  #
        stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
        HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, LOAD, UPCAST, DOT_PRECISION, softcap, SOFTCAP,
        window_start(seqlen, own_window, WINDOW), WINDOW, row_lo, row_hi, QLEN > 1, slope, q_pos, ALIBI, sink, SINK,
        q_pe, KPE, stride_pkb, stride_pkn, ROPE_DIM, V_IS_K, GROUP > 1)
    settle_and_store(
        acc, m_i, l_i, Out, Lse, WsAcc, WsMl, Counters, RowInfo,  #
        b, kvh, hb, t, stop, head_begin, head_end, start, T, high, stride_ob, stride_oh, stride_lb,  #
        GROUP, N_HB, ROWS, HEAD_DIM, BLOCK_H, VALID_ROWS, MERGE_ROWS, MERGE_STAGES, MERGE_LAUNCH,
        stride_ot, stride_lt, QLEN, CuQ, VARLEN)


@triton.jit
def settle_and_store(
    acc, m_i, l_i, Out, Lse, WsAcc, WsMl, Counters, RowInfo,  #
    b, kvh, hb, t, stop, head_begin, head_end, start, T, high,  #
    stride_ob, stride_oh, stride_lb,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr, MERGE_LAUNCH: tl.constexpr,
    stride_ot=0, stride_lt=0, QLEN: tl.constexpr = 1, CuQ=None, VARLEN: tl.constexpr = False,
):
    """The end of a piece ``[t, stop)`` of the row ``[head_begin, head_end)`` (sequence ``b``, kv head
    ``kvh``, head block ``hb``): settle its state and, where the row is complete, write it
    (``store_final``). ``MERGE_LAUNCH``: a cut row's pieces are only published, for the merge launch
    (``piece_merge_kernel``, told by ``RowInfo``); otherwise the last to arrive merges them
    (``settle_piece``)."""
    # only the rows of real query heads travel through the workspace (1 of 16 for MHA)
    valid_h = hb * BLOCK_H + tl.arange(0, BLOCK_H) < GROUP * QLEN
    if MERGE_LAUNCH:
        if t == head_begin:
            record_row(RowInfo, b * ROWS + kvh * N_HB + hb, t, start, head_end, T, high)
        if (t == head_begin) & (stop == head_end):
            store_final(Out, Lse, acc, m_i, l_i, b, kvh, hb, stride_ob, stride_oh, stride_lb,
                        GROUP, HEAD_DIM, BLOCK_H, stride_ot, stride_lt, QLEN, CuQ, VARLEN)
        else:
            publish_piece(acc, m_i, l_i, valid_h, WsAcc, WsMl, t, start, T, high, 0, 1, BLOCK_H, HEAD_DIM)
    else:
        final, acc, m_i, l_i = settle_piece(
            acc, m_i, l_i, valid_h, WsAcc, WsMl, Counters,  #
            t, start, head_begin, head_end, stop, T, high, 0, 1, BLOCK_H, HEAD_DIM, VALID_ROWS, MERGE_ROWS,
            MERGE_STAGES)
        if final:
            store_final(Out, Lse, acc, m_i, l_i, b, kvh, hb, stride_ob, stride_oh, stride_lb,
                        GROUP, HEAD_DIM, BLOCK_H, stride_ot, stride_lt, QLEN, CuQ, VARLEN)


# the search's host-side arguments vary with the batch: one compile serves every value
@triton.jit(do_not_specialize=["k0", "g_m", "m_rows", "waves", "window"])
def lean_decode_kernel(
    Q, K, V, Out, Lse,  #
    Seqlens, BlockTable, CuQ, Alibi, Sinks, QPE, KPE, Leftpad,  #
    WsAcc, WsMl, Counters, RowInfo,  #
    stride_qb, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_btb, stride_qt, stride_ot, stride_lt, stride_ab,  #
    stride_pqb, stride_pqh, stride_pqt, stride_pkb, stride_pkn,  #
    qk_scale, v_scale, softcap, window, B, capacity, k0, g_m, m_rows, waves,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr, MERGE_LAUNCH: tl.constexpr,
    PDL: tl.constexpr, ACROSS_ROWS: tl.constexpr, SEARCH: tl.constexpr, SMS: tl.constexpr, CAND: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, QLEN: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
    ALIBI: tl.constexpr, SINK: tl.constexpr, ROPE_DIM: tl.constexpr, V_IS_K: tl.constexpr, LEFTPAD: tl.constexpr,
):
    """Stream-K decode. ``ROWS = kv_heads * N_HB`` scheduling rows per sequence. Workspaces: 2 piece
    slots and one counter per program (``kernels/piece_merge.py``); with ``MERGE_LAUNCH``, ``RowInfo``
    (2 int32 per row) for the merge launch that follows instead of the counters. With ``WINDOW`` (a sliding
    window of ``window`` keys before each query) a row's work is the tiles of its window (``row_tiles``). ``QLEN``
    query tokens a sequence (strides ``stride_qt``, ``stride_ot``, ``stride_lt``), ``CAUSAL`` or not: ``key_ranges``;
    ``VARLEN``: a packed query, sequence ``b``'s tokens rows ``[CuQ[b], CuQ[b+1])`` (``packed_slots``). ``ALIBI``:
    ALiBi slopes ``Alibi`` (float32, ``stride_ab`` between sequences; ``alibi_rows``). ``SINK``: attention sinks
    ``Sinks`` (one a query head; ``sink_rows``). ``ROPE_DIM``, ``V_IS_K``: MLA (``decode_piece``). ``LEFTPAD``:
    sequence ``b``'s keys are slots ``[Leftpad[b], Seqlens[b])`` of its row (``left_padded_row``)."""
    if PDL:
        # the merge launch after this one may start now: its programs wait for our writes (gdc_wait)
        gdc_launch_dependents()
    pid = tl.program_id(0)
    qk_scale = tl.cast(qk_scale, tl.float32)
    v_scale = tl.cast(v_scale, tl.float32)
    softcap = tl.cast(softcap, tl.float32)
    # -- schedule, from the real lengths (no host sync) --
    offs_b, valid_b, lens = load_lengths(Seqlens, B, capacity, BLOCK_B, HAS_SEQLENS)
    if LEFTPAD:
        # each row's work from its first real token on (the pieces move their rows' bases there)
        lens = tl.maximum(lens - tl.maximum(tl.load(Leftpad + offs_b, mask=valid_b, other=0), 0), 0)
    if VARLEN and WINDOW:
        tiles = row_tiles(lens, valid_b, BLOCK_N, packed_window(CuQ, offs_b, window, QLEN, valid_b), WINDOW)
    else:
        tiles = row_tiles(lens, valid_b, BLOCK_N, window, WINDOW)
    # equal lengths: maybe fewer programs, so that ranges align with heads
    G, T = schedule(tiles, valid_b, ROWS, k0, g_m, m_rows, waves, SEARCH, SMS, CAND)
    if ACROSS_ROWS:
        pid = across_rows(pid, G, tiles, valid_b, ROWS)
    work, cum_incl, T, high, start, end = cut_list_at(tiles, ROWS, pid, G, T)

    t = start
    while t < end:
        # -- which (sequence, row, tile) does tile t belong to --
        b, sel, kvh, hb, seqlen, head_begin, head_end, stop = locate_row(t, end, cum_incl, work, tiles, offs_b, lens, N_HB)
        decode_piece(
            Q, K, V, Out, Lse, BlockTable, WsAcc, WsMl, Counters, RowInfo, CuQ, Alibi, Sinks, QPE, KPE, Leftpad,  #
            b, kvh, hb, seqlen, t, stop, head_begin, head_end, start, T, high, qk_scale, v_scale,  #
            stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
            stride_ob, stride_oh, stride_lb, stride_btb, stride_qt, stride_ot, stride_lt, stride_ab,  #
            stride_pqb, stride_pqh, stride_pqt, stride_pkb, stride_pkn,  #
            GROUP, N_HB, ROWS, HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, LOAD, UPCAST, DOT_PRECISION,  #
            VALID_ROWS, MERGE_ROWS, MERGE_STAGES, MERGE_LAUNCH, softcap, SOFTCAP, window, WINDOW, QLEN, CAUSAL, VARLEN,
            ALIBI, SINK, ROPE_DIM, V_IS_K, LEFTPAD)
        t = stop


@triton.jit
def row_length(Seqlens, b, capacity, HAS_SEQLENS: tl.constexpr):
    """The length of sequence ``b``, ``Seqlens[b]`` clamped to ``capacity`` (``capacity`` without ``HAS_SEQLENS``)."""
    if HAS_SEQLENS:
        seqlen = tl.minimum(tl.load(Seqlens + b), capacity)
    else:
        seqlen = capacity + 0 * b
    return seqlen


@triton.jit
def left_padded_row(Leftpad, b, seqlen, K, V, stride_kn, stride_vn, LEFTPAD: tl.constexpr):
    """``(seqlen, K, V)`` of sequence ``b`` whose keys start at slot ``Leftpad[b]`` of its row (flash-attn's
    ``cache_leftpad``; with ``LEFTPAD``, else unchanged): the length counted from there, and the caches' bases moved
    there by the token strides, so that tiles, windows, causal ranges and ALiBi distances all count from the first
    real token. The move is whole tokens: a TMA base stays 16-byte aligned where the token stride is (the op checks).
    A negative padding reads as none and one past the length leaves an empty row (unchecked inputs). Not with MLA's
    rotary keys (``KPE`` stays put; ``mla_decode`` takes no padding)."""
    if LEFTPAD:
        pad = tl.maximum(tl.load(Leftpad + b), 0)
        seqlen = tl.maximum(seqlen - pad, 0)
        K += pad.to(tl.int64) * stride_kn
        V += pad.to(tl.int64) * stride_vn
    return seqlen, K, V


@triton.jit
def even_range(n, s, S):
    """``[lo, hi)``: the ``s``-th of ``S`` ranges that cut ``n`` tiles in order, the first ``n % S`` of them
    one tile longer (the stream-K cut of one row, ``schedules/stream_k.lean_ranges``)."""
    base = n // S
    rem = n % S
    lo = s * base + tl.minimum(s, rem)
    return lo, lo + base + (s < rem).to(tl.int32)


@triton.jit
def split_program(
    bid, s, Q, K, V, Out, Lse,  #
    Seqlens, BlockTable,  #
    stride_qb, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_os, stride_ls,  #
    stride_btb,  #
    qk_scale, v_scale, capacity, chunk,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN: tl.constexpr,
    softcap=0.0, SOFTCAP: tl.constexpr = False, window=0, WINDOW: tl.constexpr = False,
    stride_qt=0, stride_ot=0, stride_lt=0, QLEN: tl.constexpr = 1, CAUSAL: tl.constexpr = False,
    CuQ=None, VARLEN: tl.constexpr = False, Alibi=None, stride_ab=0, ALIBI: tl.constexpr = False,
    Sinks=None, SINK: tl.constexpr = False, QPE=None, KPE=None, stride_pqb=0, stride_pqh=0, stride_pqt=0, stride_pkb=0,
    stride_pkn=0, ROPE_DIM: tl.constexpr = 0, V_IS_K: tl.constexpr = False, Leftpad=None,
    LEFTPAD: tl.constexpr = False,
):
    """Split ``s`` of row ``bid`` (sequence ``bid // ROWS``, kv head and head block ``bid % ROWS``):
    tiles ``[s*chunk, (s+1)*chunk)`` or, with ``EVEN``, the ``s``-th of ``tl.num_programs(1)`` ranges of the
    row's real tiles whose sizes differ by at most one (``even_range``); its normalised state written at
    ``Out + s*stride_os`` and ``Lse + s*stride_ls``. With ``WINDOW`` the row's tiles are those of its sliding
    window (``first_tile`` on), and ``chunk`` counts from there. ``QLEN`` query tokens a sequence as
    ``decode_piece`` (``VARLEN``: packed; ``ALIBI``: ALiBi slopes, ``alibi_rows``; ``SINK``: attention sinks, carried
    by split 0, ``sink_rows``; ``ROPE_DIM``, ``V_IS_K``: MLA; ``LEFTPAD``: keys from slot ``Leftpad[b]`` on,
    ``left_padded_row``). Returns the sequence, the rows' LSE offsets (``store_final``) and which are real."""
    b = bid // ROWS
    row = bid % ROWS
    kvh = row // N_HB
    hb = row % N_HB
    seqlen, K, V = left_padded_row(Leftpad, b, row_length(Seqlens, b, capacity, HAS_SEQLENS), K, V, stride_kn,
                                   stride_vn, LEFTPAD)
    own_window = window  # (as decode_piece's)
    if VARLEN and WINDOW:
        own_window = packed_window(CuQ, b, window, QLEN)
    first = first_tile(seqlen, BLOCK_N, own_window, WINDOW)
    tiles = tl.maximum(tl.cdiv(seqlen, BLOCK_N) - first, 1)
    if EVEN:
        lo, hi = even_range(tiles, s, tl.num_programs(1))
    else:
        lo = s * chunk
        hi = tl.minimum(lo + chunk, tiles)
    lo += first
    hi += first
    if VARLEN:
        hi = tl.where(padding_only(CuQ, b, hb, GROUP, BLOCK_H, QLEN), lo, hi)
    q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_H, UPCAST, stride_qt, QLEN, CuQ, VARLEN)
    q_pe = rope_rows(QPE, b, kvh, hb, stride_pqb, stride_pqh, GROUP, ROPE_DIM, BLOCK_H, UPCAST, stride_pqt, QLEN, CuQ,
                     VARLEN)
    row_lo, row_hi = key_ranges(seqlen, hb, window, GROUP, QLEN, BLOCK_H, CAUSAL, WINDOW)
    slope, q_pos = alibi_rows(Alibi, b, kvh, hb, seqlen, stride_ab, GROUP, QLEN, BLOCK_H, ALIBI)
    sink = sink_rows(Sinks, kvh, hb, s == 0, GROUP, QLEN, BLOCK_H, SINK)
    acc, m_i, l_i = attend_any(
        q, K, V, BlockTable, b, kvh, seqlen, lo, hi, qk_scale, v_scale,  #
        stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
        HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, LOAD, UPCAST, DOT_PRECISION, softcap, SOFTCAP,
        window_start(seqlen, own_window, WINDOW), WINDOW, row_lo, row_hi, QLEN > 1, slope, q_pos, ALIBI, sink, SINK,
        q_pe, KPE, stride_pkb, stride_pkn, ROPE_DIM, V_IS_K, GROUP > 1)
    heads, valid = store_final(Out + s.to(tl.int64) * stride_os, Lse + s.to(tl.int64) * stride_ls, acc, m_i, l_i,
                               b, kvh, hb, stride_ob, stride_oh, stride_lb, GROUP, HEAD_DIM, BLOCK_H,
                               stride_ot, stride_lt, QLEN, CuQ, VARLEN)
    return b, heads, valid


@triton.jit(do_not_specialize=["window"])
def split_decode_kernel(
    Q, K, V, Out, Lse,  #
    Seqlens, BlockTable, CuQ, Alibi, Sinks, QPE, KPE, Leftpad, Arrivals,  #
    stride_qb, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_os, stride_ls,  #
    stride_btb, stride_qt, stride_ot, stride_lt, stride_ab,  #
    stride_pqb, stride_pqh, stride_pqt, stride_pkb, stride_pkn,  #
    qk_scale, v_scale, softcap, window, capacity, chunk,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr, AFTER_PRIOR: tl.constexpr,
    EVEN: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, QLEN: tl.constexpr, CAUSAL: tl.constexpr,
    VARLEN: tl.constexpr, ALIBI: tl.constexpr, SINK: tl.constexpr, ROPE_DIM: tl.constexpr, V_IS_K: tl.constexpr,
    LEFTPAD: tl.constexpr,
):
    """FlashDecoding: program ``(row, s)`` takes tiles ``[s*chunk, (s+1)*chunk)`` of one row; with ``EVEN``
    the ``s``-th of as many even ranges of its real tiles as the grid has splits (``even_range``): lean's
    cut of rows of equal length (``ops/decode.even_pieces``).

    With one split, ``Out``/``Lse`` are the final outputs; otherwise split ``s`` writes its
    normalised partial state at ``Out + s*stride_os`` and ``Lse + s*stride_ls`` (fp32), merged by
    a second launch, which with ``PDL`` is a programmatic dependent launch allowed to start at once.

    ``VARLEN``: a packed query, rows ``[CuQ[b], CuQ[b+1])`` sequence ``b``'s (``packed_slots``); partial states
    are written in its layout. ``ALIBI``: ALiBi slopes ``Alibi`` (``alibi_rows``). ``SINK``: attention sinks ``Sinks``,
    carried by split 0 (``sink_rows``). ``ROPE_DIM``, ``V_IS_K``: MLA (``decode_piece``). ``LEFTPAD``: sequence
    ``b``'s keys are slots ``[Leftpad[b], Seqlens[b])`` (``left_padded_row``).

    ``AFTER_PRIOR``: this launch is a programmatic dependent launch of the launch before it, whose results it
    does not read (the ordered overlap path of bifurcated decode). Its programs start only once every program of
    that launch has signalled (``gdc_launch_dependents``), so that launch's programs are all placed first, and one
    of its programs waits (``gdc_wait``) until that launch has completed, so a launch after this one on the stream
    follows both. ``Arrivals`` (one int32, zero between launches) counts the finished programs modulo their number;
    the one whose arrival completes a round waits (from zero, the last to finish). Unread otherwise.
    """
    if PDL:
        gdc_launch_dependents()
    split_program(
        tl.program_id(0), tl.program_id(1), Q, K, V, Out, Lse, Seqlens, BlockTable,  #
        stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
        stride_ob, stride_oh, stride_lb, stride_os, stride_ls, stride_btb,  #
        tl.cast(qk_scale, tl.float32), tl.cast(v_scale, tl.float32), capacity, chunk,  #
        GROUP, N_HB, ROWS, HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, HAS_SEQLENS, LOAD, UPCAST, DOT_PRECISION, EVEN,
        tl.cast(softcap, tl.float32), SOFTCAP, window, WINDOW, stride_qt, stride_ot, stride_lt, QLEN, CAUSAL,
        CuQ, VARLEN, Alibi, stride_ab, ALIBI, Sinks, SINK, QPE, KPE, stride_pqb, stride_pqh, stride_pqt, stride_pkb,
        stride_pkn, ROPE_DIM, V_IS_K, Leftpad, LEFTPAD)
    if AFTER_PRIOR:
        # one program waits, the others exit at once. The count is taken modulo the programs and put back by as
        # many, so a counter that did not start at zero (a buffer first made inside a graph capture holds
        # garbage until the graph replays) still elects exactly one waiter
        total = tl.num_programs(0) * tl.num_programs(1)
        arrived = tl.atomic_add(Arrivals, 1, sem="relaxed")
        if (arrived % total + total) % total == total - 1:
            tl.atomic_add(Arrivals, -total, sem="relaxed")
            gdc_wait()
