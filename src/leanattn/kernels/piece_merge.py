"""The stream-K reduction shared by every persistent decode kernel: pieces of one head, merged in-kernel
or by a second launch.

A stream-K range may start or end inside a head, so one head's tiles can be cut into pieces
computed by several programs. ``settle_piece`` publishes a piece's unnormalised state to its
program's workspace slot and bumps a counter at the head's *host* program (the one holding the
head's first tile); the piece that arrives last merges all pieces in program order and resets
the counter. Nobody waits, so no launch can hang; the merge order is fixed, so the output is
bitwise deterministic run to run; counters end at zero, so workspaces stay valid across launches
and CUDA-graph replays. Alternatively a kernel only publishes its pieces (``publish_piece``) and
records where each row's pieces are (``record_row``), and ``piece_merge_kernel``, launched after it,
merges every cut row, one program per query head (``ops/stream_k_launch.py`` chooses).

States are ``(acc, m, l)``: ``acc [BLOCK_H, HEAD_DIM]`` the unnormalised output, ``m [BLOCK_H]``
the running max of the scores in log2 units, ``l [BLOCK_H]`` the sum of ``exp2(score - m)``.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from ..schedules.stream_k import program_of, range_start
from .grid_dependency import gdc_wait, launch_meta
from .query_rows import packed_slots, row_offsets

LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


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
def publish_piece(
    acc, m_i, l_i, valid_h, WsAcc, WsMl, t, start, T, high, member,  #
    NM: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """Write the unnormalised state of the piece starting at tile ``t`` to its program's slot: slot 0
    of schedule program ``p`` (slots ``2 * (p * NM + member)`` and the next) for a piece starting the
    program's range (``t == start``), slot 1 for the one ending it. Only rows with ``valid_h`` are written."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    me = program_of(t, T, high) * NM + member
    slot = 2 * me + (t != start).to(tl.int32)
    acc_ptrs = WsAcc + slot.to(tl.int64) * (BLOCK_H * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(acc_ptrs, acc, mask=valid_h[:, None])
    tl.store(WsMl + slot * (2 * BLOCK_H) + offs_h, m_i)
    tl.store(WsMl + slot * (2 * BLOCK_H) + BLOCK_H + offs_h, l_i)


@triton.jit
def record_row(RowInfo, row_id, t, start, head_end, T, high):
    """For the piece starting a row (``t`` its first tile): ``RowInfo[row_id] = (first slot, pieces)``,
    the workspace slot of the row's first piece and how many pieces the row is cut into (1: the row
    is whole in one program, which writes it). Every row has one first piece, so every launch writes
    every row's entry: the entries never go stale."""
    host = program_of(t, T, high)
    tl.store(RowInfo + 2 * row_id, 2 * host + (t != start).to(tl.int32))
    tl.store(RowInfo + 2 * row_id + 1, program_of(head_end - 1, T, high) - host + 1)


@triton.jit
def piece_merge_kernel(
    Out, Lse, CuQ, WsAcc, WsMl, RowInfo,  #
    stride_ob, stride_oh, stride_lb, stride_ot, stride_lt,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr, QLEN: tl.constexpr,
    VARLEN: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The merge launch of a stream-K decode whose rows were cut into pieces (``record_row``,
    ``publish_piece``): program ``(row_id, h)`` merges query head ``h`` of the row ``row_id = b * ROWS
    + kv_head * N_HB + head_block`` over its pieces in program order, ``BLOCK_S`` pieces per load, and
    writes ``Out[b, head]`` and its natural-log ``Lse``; rows whole in one program are left alone. With a third grid
    axis, program ``(row_id, h, j)`` merges columns ``[j * BLOCK_D, (j + 1) * BLOCK_D)`` (``j = 0`` writes ``Lse``).

    The in-kernel merge (``settle_piece``) leaves a row's pieces to one program of the main launch,
    a chain of dependent L2 round trips over all its query heads at the end of the launch; here every
    query head of every cut row is merged by its own program, in one round trip per ``BLOCK_S`` pieces.

    ``PDL``: launched as a programmatic dependent launch (``runtime.dependent_launch``), its programs may start
    before the stream-K launch ends, so they first wait for its writes. ``QLEN`` query tokens a sequence: a row
    block's query rows are (token, head) pairs (``kernels/query_rows.py``), ``h`` one of them; ``VARLEN``: of a
    packed query (``packed_slots``), whose slots before a sequence's first token are not written.
    """
    if PDL:
        gdc_wait()
    rid = tl.program_id(0)
    h = tl.program_id(1)
    if BLOCK_D < HEAD_DIM:  # (resolved at compile time: a head in one program compiles as before the split)
        col = tl.program_id(2) * BLOCK_D
        first_col = col == 0
    else:
        col = 0
        first_col = True
    row = rid % ROWS
    hb = row % N_HB
    # both entries in one load: the first slot loaded once the row is known to be cut was one more L2 round trip on
    # the launch's critical path (the compiler sinks a separate load of it below the test)
    first, n = tl.split(tl.load(RowInfo + 2 * rid + tl.arange(0, 2)))
    if (n > 1) & (hb * BLOCK_H + h < GROUP * QLEN):
        host = first // 2
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = col + tl.arange(0, BLOCK_D)
        m_t = tl.full([BLOCK_S], float("-inf"), tl.float32)
        l_t = tl.zeros([BLOCK_S], tl.float32)
        acc_t = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
        # lane-wise online softmax over steps, then one cross-lane fold: no reduction inside the loop
        for s0 in range(0, n, BLOCK_S):
            s = s0 + offs_s
            ok = s < n
            slot = tl.where(s == 0, first, 2 * (host + s))
            m = tl.load(WsMl + slot * (2 * BLOCK_H) + h, mask=ok, other=float("-inf"))
            l = tl.load(WsMl + slot * (2 * BLOCK_H) + BLOCK_H + h, mask=ok, other=0.0)
            row_ptrs = WsAcc + slot.to(tl.int64) * (BLOCK_H * HEAD_DIM) + h * HEAD_DIM
            a_ptrs = row_ptrs[:, None] + offs_d[None, :]
            a = tl.load(a_ptrs, mask=ok[:, None], other=0.0)
            acc_t, m_t, l_t = combine(acc_t, m_t, l_t, a, m, l)
        m_all = tl.max(m_t, 0)
        m_use = tl.where(m_all == float("-inf"), 0.0, m_all)
        w = tl.math.exp2(m_t - m_use)
        acc = tl.sum(acc_t * w[:, None], 0)
        l_sum = tl.sum(l_t * w, 0)
        empty = l_sum == 0.0
        l_safe = tl.where(empty, 1.0, l_sum)
        b = rid // ROWS
        if QLEN == 1 and not VARLEN:
            head = (row // N_HB) * GROUP + hb * BLOCK_H + h
            o_row = head * stride_oh
            l_row = head
        else:
            o_row = row_offsets(row // N_HB, hb * BLOCK_H + h, stride_ot, stride_oh, GROUP, QLEN)
            l_row = row_offsets(row // N_HB, hb * BLOCK_H + h, stride_lt, 1, GROUP, QLEN)
        if VARLEN:
            start, pad = packed_slots(CuQ, b, QLEN)  # (pad: slots before the sequence's first token)
            real = hb * BLOCK_H + h >= GROUP * pad
            tl.store(Out + start * stride_ot + o_row + offs_d, (acc / l_safe).to(Out.dtype.element_ty), mask=real)
            tl.store(Lse + start * stride_lt + l_row,
                     tl.where(empty, float("-inf"), (m_use + tl.math.log2(l_safe)) * LN2), mask=real & first_col)
        else:
            tl.store(Out + b.to(tl.int64) * stride_ob + o_row + offs_d, (acc / l_safe).to(Out.dtype.element_ty))
            tl.store(Lse + b.to(tl.int64) * stride_lb + l_row,
                     tl.where(empty, float("-inf"), (m_use + tl.math.log2(l_safe)) * LN2), mask=first_col)


@triton.jit
def settle_piece(
    acc, m_i, l_i, valid_h,  #
    WsAcc, WsMl, Counters,  #
    t, start, head_begin, head_end, stop, T, high, member,  #
    NM: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr,
):
    """Stream-K reduction of a piece ``[t, stop)`` of the head ``[head_begin, head_end)``.

    Ranges are cut over *schedule programs*; schedule program ``p`` owns the slots and counter of index
    ``p * NM + member`` (``NM`` team members, 1 for a plain grid), whichever launched program runs it
    (``schedules/stream_k.across_rows`` permutes them). Workspaces: ``WsAcc`` holds
    ``BLOCK_H x HEAD_DIM`` fp32 per slot and ``WsMl`` ``2 x BLOCK_H`` (m, then l), two slots per
    program (slot 0 for a piece starting the program's range, slot 1 for the one ending it);
    ``Counters`` one int32 per program, zero between launches. Only rows with ``valid_h`` (a
    prefix of the rows, at most ``VALID_ROWS``, a power of two) travel through the workspace.

    Returns ``(final, acc, m, l)``: ``final`` is true in the program that holds the head's
    complete state (the whole head was in its range, or it was the last piece to arrive and
    merged all pieces in program order). Rows past ``VALID_ROWS`` of a merged state are copies
    of valid rows: callers store only valid rows.

    The merge is what a head cut over the whole GPU waits for at the end of the launch (one
    sequence with 8 kv heads on 264 programs: 33 pieces a head, 9.6 of 58 us on an H200). It
    loads ``MERGE_ROWS // VALID_ROWS`` pieces per step as one ``[MERGE_ROWS, HEAD_DIM]`` tile of
    their valid rows only (by default 16 MHA pieces in the 16 rows one padded piece would take,
    8 pieces of a 4-head GQA group in 32 rows), so the dependent L2 round trips drop by that factor.
    ``MERGE_STAGES`` software-pipelines the steps.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    final = (t == head_begin) & (stop == head_end)
    partial = (t != head_begin) | (stop != head_end)
    if partial:
        publish_piece(acc, m_i, l_i, valid_h, WsAcc, WsMl, t, start, T, high, member, NM, BLOCK_H, HEAD_DIM)
        host = program_of(head_begin, T, high)
        last = program_of(head_end - 1, T, high)
        n_valid = tl.sum(valid_h.to(tl.int32), 0)
        # the piece is in the workspace now (the merge reads it back): free its registers
        acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
        tl.debug_barrier()
        arrived = tl.atomic_add(Counters + host * NM + member, 1, sem="acq_rel")
        final = arrived == last - host
        if final:
            # -- last piece to arrive: merge all pieces in program order, CHUNK per step --
            tl.store(Counters + host * NM + member, 0)
            CHUNK: tl.constexpr = MERGE_ROWS // VALID_ROWS
            offs_r = tl.arange(0, MERGE_ROWS)
            row = offs_r % VALID_ROWS  # tile row r is row r % VALID_ROWS of piece r // VALID_ROWS
            m_t = tl.full([VALID_ROWS], float("-inf"), tl.float32)
            l_t = tl.zeros([VALID_ROWS], tl.float32)
            acc_t = tl.zeros([VALID_ROWS, HEAD_DIM], tl.float32)
            for c0 in tl.range(host, last + 1, CHUNK, num_stages=MERGE_STAGES):
                p = c0 + offs_r // VALID_ROWS
                ok = (p <= last) & (row < n_valid)
                p_start = range_start(p, T, high)
                p_slot = 2 * (p * NM + member) + (tl.maximum(head_begin, p_start) != p_start).to(tl.int32)
                ml = WsMl + p_slot * (2 * BLOCK_H) + row
                m = tl.load(ml, mask=ok, other=float("-inf"), cache_modifier=".cg")
                l = tl.load(ml + BLOCK_H, mask=ok, other=0.0, cache_modifier=".cg")
                a = tl.load(WsAcc + p_slot.to(tl.int64)[:, None] * (BLOCK_H * HEAD_DIM) + row[:, None] * HEAD_DIM
                            + offs_d[None, :], mask=ok[:, None], other=0.0, cache_modifier=".cg")
                m_new = tl.maximum(m_t, tl.max(tl.reshape(m, [CHUNK, VALID_ROWS]), 0))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.math.exp2(m_t - m_use)
                w = tl.math.exp2(m - tl.reshape(tl.broadcast_to(m_use[None, :], [CHUNK, VALID_ROWS]), [MERGE_ROWS]))
                acc_t = acc_t * alpha[:, None] + tl.sum(tl.reshape(a * w[:, None], [CHUNK, VALID_ROWS, HEAD_DIM]), 0)
                l_t = l_t * alpha + tl.sum(tl.reshape(w * l, [CHUNK, VALID_ROWS]), 0)
                m_t = m_new
            # back to BLOCK_H rows: row r holds row r % VALID_ROWS
            REP: tl.constexpr = BLOCK_H // VALID_ROWS
            acc = tl.reshape(tl.broadcast_to(acc_t[None, :, :], [REP, VALID_ROWS, HEAD_DIM]), [BLOCK_H, HEAD_DIM])
            m_i = tl.reshape(tl.broadcast_to(m_t[None, :], [REP, VALID_ROWS]), [BLOCK_H])
            l_i = tl.reshape(tl.broadcast_to(l_t[None, :], [REP, VALID_ROWS]), [BLOCK_H])
    return final, acc, m_i, l_i


def merge_meta(block_h: int, head_dim: int, rows: int, suffix: str = "") -> dict:
    """``{VALID_ROWS, MERGE_ROWS, MERGE_STAGES}<suffix>``: the launch constants of ``settle_piece``
    for ``block_h x head_dim`` pieces of which at most ``rows`` rows are real.

    A merge step holds 8 pieces' valid rows, but never fewer rows than ``block_h`` (16 MHA pieces)
    nor more than 4096 fp32 elements; unpipelined for pieces of up to 16 rows and over 2 steps above (as before).
    From H200 sweeps (``benchmarks/results/decode_sweep_NVIDIA_H200_rows*.json``, same run):
    gqa B=1 32k 52.6 us with 8 pieces a step against 61.8 us with 4 and 58.0 us for the
    one-piece-per-step merge; MHA level at 16 and 32 pieces a step; 2 pipelined steps cost 2-5%
    and, at D=64, an occupancy step. In the one-sample bifurcated kernel 32 MHA rows spilled
    (255 registers) and ran 3% slower than 16. An earlier chunked merge
    that loaded ``[CHUNK, BLOCK_H, HEAD_DIM]`` tiles, padding rows included, measured 1.1-2.3x
    slower overall (``..._merge.json``). ``LEANATTN_MERGE=rows_factor,stages`` overrides
    (sweeps: ``MERGE_ROWS = rows_factor * block_h``).
    """
    valid = min(block_h, triton.next_power_of_2(max(1, rows)))
    raw = os.environ.get("LEANATTN_MERGE")
    if raw:
        try:
            factor, stages = (int(x) for x in raw.split(","))
        except ValueError:
            factor = stages = 0
        if factor < 1 or factor & (factor - 1) or stages < 1:
            raise ValueError(f"LEANATTN_MERGE: expected 'rows_factor,stages' with a power-of-two factor >= 1 "
                             f"and stages >= 1, got {raw!r}")
        merge_rows = factor * block_h
    else:
        # 8 pieces a step is enough (a head of one sequence with 8 kv heads is cut into ~33 pieces
        # on 264 programs); more rows only cost registers (the one-sample bifurcated kernel spilled)
        merge_rows = max(block_h, min(8 * valid, 4096 // head_dim))
        stages = 1 if block_h <= 16 else 2
    return {"VALID_ROWS" + suffix: valid, "MERGE_ROWS" + suffix: merge_rows, "MERGE_STAGES" + suffix: stages}


def piece_merge_launch(rows: int, group: int, n_hb: int, block_h: int, head_dim: int, programs: int,
                       rows_per_seq: int, pdl: bool = False, qlen: int = 1, varlen: bool = False) -> tuple[tuple, dict]:
    """Grid and launch constants of ``piece_merge_kernel`` after a stream-K launch of ``programs``
    programs over ``rows`` scheduling rows (``rows_per_seq`` per sequence, ``n_hb`` head blocks of
    ``block_h`` query rows per kv head, ``group`` query heads per kv head, ``qlen`` query tokens a sequence;
    ``varlen``: a packed query). ``pdl``:
    launched as a programmatic dependent launch (``runtime.dependent_launch``).

    One load takes ``BLOCK_S`` pieces, enough for a row's share of an even cut (``cdiv(programs, rows) + 1``
    pieces), at most 4096 fp32 values (``BLOCK_S x head_dim``); a row cut into more loops. Up to 64 of those
    values a thread (1 warp for 16 pieces at D=128): the fold over the pieces then stays inside each thread,
    where 4 warps over 32 pieces folded through shared memory (H200, ncu, mha B=1 16k, 8 pieces a row: 5036 SM
    cycles against the 2217 of ``merge_states_kernel`` over 7 splits; decode probe 46). Heads wider than 128 (MLA's
    512-wide latent, D=256) are merged 128 columns a program (``merge_launch``'s reason; not yet timed)."""
    share = -(-max(programs, 1) // max(rows, 1)) + 1
    block_d = min(head_dim, 128)
    assert head_dim % block_d == 0, f"head_dim {head_dim}: its column blocks of {block_d} must tile it (no mask)"
    block_s = min(triton.next_power_of_2(share), max(1, 4096 // block_d))
    warps = min(4, max(1, block_s * block_d // (64 * 32)))
    grid = (rows, min(group * qlen, block_h)) + ((head_dim // block_d,) if head_dim > block_d else ())
    return grid, dict(GROUP=group, N_HB=n_hb, ROWS=rows_per_seq, BLOCK_H=block_h, HEAD_DIM=head_dim,
                      BLOCK_S=block_s, num_warps=warps, QLEN=qlen, VARLEN=varlen, BLOCK_D=block_d, **launch_meta(pdl))
