"""Bifurcated (shared-prefix) decode: one launch for the shared prefix and every sample's own tokens.

Sample ``b`` of prompt ``g`` attends to ``prefix[g]`` followed by its own cache. Attention over the
concatenation is the exact merge of two states, so the kernel computes

* the **prefix state** once per prompt: for kv head ``h`` the query rows of all samples of the
  prompt that read ``h`` (``n_g * GROUP`` rows, sample-major) are stacked into the rows of one
  ``tl.dot``, so each prefix tile is loaded once for the whole prompt (the bifurcated-attention
  GEMM). Rows are cut into ``N_HB`` head blocks of ``BLOCK_HP`` rows;
* the **own state** exactly as ``lean_decode_kernel`` does (query heads of one GQA group per row);

and merges the two in the same launch. Each pass is a list of KV tiles cut stream-K style (equal
contiguous ranges, pieces of a head merged in-kernel by the last arriver, see
``kernels/piece_merge.py``), and *every* program takes an equal share of *both* lists, so each list is
balanced on its own whatever a prefix tile costs against an own tile (a prefix tile of 128
stacked rows is matrix work, an own tile of 4 rows is a stream of bytes):

* the *prefix list*: ``HKV`` rows of ``cdiv(P_g, BLOCK_NP)`` tiles per prompt, cut over *teams*:
  the grid is ``N_TEAMS * N_HB`` programs, program ``pid`` is member ``pid % N_HB`` of team
  ``pid // N_HB``, and every member of a team walks the same tile range for its own head block.
  Members are launched side by side and do identical work, so they load the same prefix tile at
  about the same time: one HBM read, ``N_HB - 1`` L2 hits. (Several accumulators per program
  overflow the register file beyond two 64-row blocks; an order with the head block varying
  fastest cuts every head into one piece per tile, each a workspace round trip.) Members whose
  block holds no row of a prompt (a smaller prompt in the list) skip its tiles;
* the *own list*: ``HKV * N_HBO`` rows of ``cdiv(len_b, BLOCK_NO)`` tiles per sample, cut over
  all programs. Own tiles have their own size (``BLOCK_NO``): 256 own tokens are two 128-token
  tiles, where the prefix pass of 128 stacked rows wants 64-token tiles.

``ORDER`` picks which list a program walks first: 0 prefix, 1 own, 2 alternate per wave of
``n_sm`` programs (programs ``p`` and ``p + n_sm`` usually share an SM, so one streams own tiles
while the other does the prefix's matrix work), 3 alternate by ``pid`` parity. The lists never
wait on each other, so any order is correct.

Merging prefix and own states (``settle_rows``): whichever finishes a query row first writes its
normalised fp32 state to a per-row buffer and bumps the row's arrival counter; the second one
merges both (always as ``prefix ⊕ own``, so the result does not depend on who came last), writes
``out``/``lse`` and resets the counter. Nobody waits, so no launch can hang; counters end at zero,
so buffers stay valid across launches and CUDA-graph replays.

With at most one sample per prompt nothing is shared: ``kernels/bifurcated_concat.py`` runs the
decode schedule over prefix + own tokens instead.

Needs Triton >= 3.5: the per-row arrival counts use the values returned by a tensor
``tl.atomic_add``, which older releases did not broadcast to replicated threads (triton#7402).

Scores are in log2 units (``qk_scale = softmax_scale * log2(e)``); the LSE written is natural-log.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..schedules.stream_k import cut_list, load_lengths, locate_tile, row_tiles
from .attend import attend_any
from .decode import LN2, load_q_rows, locate_row
from .piece_merge import settle_piece


@triton.jit
def load_stacked_q(
    Q, Order, rows, first, n_g, kvh, stride_qb, stride_qh,  #
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SINGLE_PREFIX: tl.constexpr, UPCAST: tl.constexpr,
):
    """The stacked query rows ``rows`` of kv head ``kvh`` of a prompt with ``n_g`` samples: row ``r``
    is query head ``kvh * GROUP + r % GROUP`` of the prompt's sample ``r // GROUP``, the batch row
    ``Order[first + r // GROUP]`` (``r // GROUP`` itself with ``SINGLE_PREFIX``).

    Returns ``(q, b_rows, h_rows, valid)``: ``q [len(rows), HEAD_DIM]`` (zeros past the samples),
    the batch and head index of each row and whether it is a real row.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    j = rows // GROUP
    valid = j < n_g
    if SINGLE_PREFIX:
        b_rows = j
    else:
        b_rows = tl.load(Order + first + j, mask=valid, other=0)
    h_rows = kvh * GROUP + rows % GROUP
    q = tl.load(Q + b_rows.to(tl.int64)[:, None] * stride_qb + h_rows[:, None] * stride_qh + offs_d[None, :],
                mask=valid[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    return q, b_rows, h_rows, valid


@triton.jit
def settle_rows(
    acc, m_i, l_i, b_rows, h_rows, valid,  #
    Out, Lse, StOut, StLse, Arrivals,  #
    stride_ob, stride_oh, stride_lb, n_rows,  #
    ROLE: tl.constexpr, HAS_OWN: tl.constexpr, HQ: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """A finished state for query rows ``(b_rows[i], h_rows[i])``: merge it with the other half.

    ``ROLE`` 0 is the prefix state, 1 the own-token state. Without own tokens (``HAS_OWN``
    false) the prefix state is final. ``StOut (2, n_rows, HEAD_DIM)`` and ``StLse (2, n_rows)``
    (fp32, log2 units) hold the half that arrived first; ``Arrivals (n_rows,)`` counts arrivals.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
    o_ptrs = Out + b_rows.to(tl.int64)[:, None] * stride_ob + h_rows[:, None] * stride_oh + offs_d[None, :]
    l_ptrs = Lse + b_rows.to(tl.int64) * stride_lb + h_rows
    if not HAS_OWN:
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=valid[:, None])
        tl.store(l_ptrs, lse2 * LN2, mask=valid)
    else:
        row = b_rows.to(tl.int64) * HQ + h_rows
        mine = ROLE * n_rows + row
        tl.store(StOut + mine[:, None] * HEAD_DIM + offs_d[None, :], o, mask=valid[:, None])
        tl.store(StLse + mine, lse2, mask=valid)
        tl.debug_barrier()
        arrived = tl.atomic_add(Arrivals + row, 1, mask=valid, sem="acq_rel")
        second = valid & (arrived == 1)
        tl.debug_barrier()
        if tl.sum(second.to(tl.int32), 0) > 0:
            # -- this half arrived second: merge prefix ⊕ own (same expression in either role) --
            theirs = (1 - ROLE) * n_rows + row
            o_t = tl.load(StOut + theirs[:, None] * HEAD_DIM + offs_d[None, :], mask=second[:, None], other=0.0,
                          cache_modifier=".cg")
            l_t = tl.load(StLse + theirs, mask=second, other=float("-inf"), cache_modifier=".cg")
            if ROLE == 0:
                o_p, l_p, o_o, l_o = o, lse2, o_t, l_t
            else:
                o_p, l_p, o_o, l_o = o_t, l_t, o, lse2
            mx = tl.maximum(l_p, l_o)
            mu = tl.where(mx == float("-inf"), 0.0, mx)
            w_p = tl.math.exp2(l_p - mu)
            w_o = tl.math.exp2(l_o - mu)
            den = w_p + w_o
            none = den == 0.0
            den_safe = tl.where(none, 1.0, den)
            out = (w_p[:, None] * o_p + w_o[:, None] * o_o) / den_safe[:, None]
            lse = tl.where(none, float("-inf"), (mu + tl.math.log2(den_safe)) * LN2)
            tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=second[:, None])
            tl.store(l_ptrs, lse, mask=second)
            tl.store(Arrivals + row, 0, mask=second)


@triton.jit
def prefix_pieces(
    t, t_end, start, T, high, member,  #
    cum_g, work_g, tiles_g, plens, counts, firsts, offs_g,  #
    Q, PK, PV, Order, Out, Lse,  #
    WsAcc, WsMl, Counters, StOut, StLse, Arrivals,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    stride_ob, stride_oh, stride_lb,  #
    qk_scale, n_rows,  #
    NM: tl.constexpr, HQ: tl.constexpr, GROUP: tl.constexpr, BLOCK_HP: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_PREFIX: tl.constexpr, HAS_OWN: tl.constexpr,  #
    LOAD: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr,
):
    """The prefix tiles ``[t, t_end)`` of a work list ``work_g`` (HKV rows of ``tiles_g`` tiles per
    prompt) in the range ``[start, ..)`` of schedule program ``(T, high)``; this program computes
    head block ``member`` (rows ``member * BLOCK_HP + i`` of the prompt's stacked query rows)."""
    rows_p = member * BLOCK_HP + tl.arange(0, BLOCK_HP)
    while t < t_end:
        # -- which (prompt, kv head, tile) does tile t belong to --
        g, sel, kvh, head_begin, head_end, stop = locate_tile(t, t_end, cum_g, work_g, tiles_g, offs_g)
        plen = tl.sum(tl.where(sel, plens, 0), 0)
        n_g = tl.sum(tl.where(sel, counts, 0), 0)
        first = tl.sum(tl.where(sel, firsts, 0), 0)
        if member * BLOCK_HP < n_g * GROUP:
            q, b_rows, h_rows, valid = load_stacked_q(Q, Order, rows_p, first, n_g, kvh, stride_qb, stride_qh,  #
                                                      GROUP, HEAD_DIM, SINGLE_PREFIX, UPCAST)
            tile_lo = t - head_begin
            # the prefix is contiguous (PAGE_SIZE 0): the block table is never read
            acc, m_i, l_i = attend_any(
                q, PK, PV, Order, g, kvh, plen, tile_lo, tile_lo + (stop - t), qk_scale, 1.0,  #
                stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh, 0,  #
                HEAD_DIM, BLOCK_HP, BLOCK_N, 0, LOAD, UPCAST, DOT_PRECISION)
            final, acc, m_i, l_i = settle_piece(
                acc, m_i, l_i, valid, WsAcc, WsMl, Counters,  #
                t, start, head_begin, head_end, stop, T, high, member, NM, BLOCK_HP, HEAD_DIM,
                VALID_ROWS, MERGE_ROWS, MERGE_STAGES)
            if final:
                settle_rows(acc, m_i, l_i, b_rows, h_rows, valid, Out, Lse, StOut, StLse, Arrivals,
                            stride_ob, stride_oh, stride_lb, n_rows, 0, HAS_OWN, HQ, HEAD_DIM)
        t = stop


@triton.jit
def own_pieces(
    t, t_end, start, T, high,  #
    cum_b, work_b, tiles_b, lens, offs_b,  #
    Q, K, V, BlockTable, Out, Lse,  #
    WsAcc, WsMl, Counters, StOut, StLse, Arrivals,  #
    stride_qb, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_btb,  #
    qk_scale, n_rows,  #
    HQ: tl.constexpr, GROUP: tl.constexpr, BLOCK_HO: tl.constexpr, N_HBO: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,  #
    LOAD: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr,
):
    """The own tiles ``[t, t_end)`` of the own list (``HKV * N_HBO`` rows of ``tiles_b`` tiles per
    sample) in the range ``[start, ..)`` of program ``(T, high)``, as ``lean_decode_kernel``; a
    finished row state is merged with the prefix state by ``settle_rows``."""
    offs_ho = tl.arange(0, BLOCK_HO)
    while t < t_end:
        b, sel, kvh, hb, seqlen, head_begin, head_end, stop = locate_row(t, t_end, cum_b, work_b, tiles_b, offs_b, lens,
                                                                         N_HBO)
        q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_HO, UPCAST)
        tile_lo = t - head_begin
        acc, m_i, l_i = attend_any(
            q, K, V, BlockTable, b, kvh, seqlen, tile_lo, tile_lo + (stop - t), qk_scale, 1.0,  #
            stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
            HEAD_DIM, BLOCK_HO, BLOCK_N, PAGE_SIZE, LOAD, UPCAST, DOT_PRECISION)
        valid = hb * BLOCK_HO + offs_ho < GROUP
        final, acc, m_i, l_i = settle_piece(
            acc, m_i, l_i, valid, WsAcc, WsMl, Counters,  #
            t, start, head_begin, head_end, stop, T, high, 0, 1, BLOCK_HO, HEAD_DIM, VALID_ROWS, MERGE_ROWS, MERGE_STAGES)
        if final:
            b_rows = tl.zeros([BLOCK_HO], tl.int32) + b
            h_rows = kvh * GROUP + hb * BLOCK_HO + offs_ho
            settle_rows(acc, m_i, l_i, b_rows, h_rows, valid, Out, Lse, StOut, StLse, Arrivals,
                        stride_ob, stride_oh, stride_lb, n_rows, 1, True, HQ, HEAD_DIM)
        t = stop


@triton.jit
def bifurcated_decode_kernel(
    Q, PK, PV, K, V, Out, Lse,  #
    PrefixLens, GroupCount, GroupStart, Order,  #
    Seqlens, BlockTable,  #
    WsAccP, WsMlP, CountersP, WsAccO, WsMlO, CountersO,  #
    StOut, StLse, Arrivals,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_btb,  #
    qk_scale, B, NG, prefix_cap, capacity, n_sm,  #
    HQ: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr,  #
    BLOCK_HP: tl.constexpr, N_HB: tl.constexpr, BLOCK_HO: tl.constexpr, N_HBO: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_NP: tl.constexpr, BLOCK_NO: tl.constexpr,  #
    BLOCK_G: tl.constexpr, BLOCK_B: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, HAS_PREFIX_LENS: tl.constexpr,  #
    SINGLE_PREFIX: tl.constexpr, HAS_OWN: tl.constexpr, LOAD: tl.constexpr,  #
    ORDER: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr,  #
    VALID_ROWS_P: tl.constexpr, MERGE_ROWS_P: tl.constexpr, MERGE_STAGES_P: tl.constexpr,
):
    """Two work lists in one launch, each cut over all programs: the *prefix list* (cut over teams
    of ``N_HB`` programs, one head block each) and the *own list* (every sample's own tiles).

    ``PK/PV (NG, prefix_cap, HKV, D)`` (``stride_pkg = 0`` for one prefix). Prompt ``g`` has
    ``GroupCount[g]`` samples, ``Order[GroupStart[g] + j]`` being its ``j``-th; with
    ``SINGLE_PREFIX`` every sample reads prompt 0 and sample ``j`` is row block ``j``. Workspaces:
    2 piece slots per program for each list, one counter per program for each list.
    """
    pid = tl.program_id(0)
    NPROG = tl.num_programs(0)
    qk_scale = tl.cast(qk_scale, tl.float32)
    n_rows = B * HQ

    # -- prefix list: HKV rows of tiles per prompt --
    offs_g, valid_g, plens = load_lengths(PrefixLens, NG, prefix_cap, BLOCK_G, HAS_PREFIX_LENS)
    if SINGLE_PREFIX:
        counts = tl.where(offs_g == 0, B, 0)
        firsts = tl.zeros([BLOCK_G], tl.int32)
    else:
        counts = tl.load(GroupCount + offs_g, mask=valid_g, other=0)
        firsts = tl.load(GroupStart + offs_g, mask=valid_g, other=0)
    # a prompt without samples costs nothing; an empty prefix still owns one (empty) tile per kv head
    tiles_g = row_tiles(plens, valid_g & (counts > 0), BLOCK_NP)
    team = pid // N_HB
    member = pid % N_HB
    work_p, cum_p, T_p, high_p, start_p, end_p = cut_list(tiles_g, HKV, team, NPROG // N_HB)

    # -- own list: HKV * N_HBO rows of tiles per sample, as lean_decode_kernel --
    if HAS_OWN:
        offs_b, valid_b, lens = load_lengths(Seqlens, B, capacity, BLOCK_B, HAS_SEQLENS)
        tiles_b = row_tiles(lens, valid_b, BLOCK_NO)
        work_b, cum_b, T_o, high_o, start_o, end_o = cut_list(tiles_b, HKV * N_HBO, pid, NPROG)

    if ORDER == 0:
        own_first = 0
    elif ORDER == 1:
        own_first = 1
    elif ORDER == 2:
        own_first = (pid // n_sm) % 2
    else:
        own_first = pid % 2
    for ph in range(2):
        if ph != own_first:
            # ================= prefix list: one head block per team member =================
            prefix_pieces(
                start_p, end_p, start_p, T_p, high_p, member,  #
                cum_p, work_p, tiles_g, plens, counts, firsts, offs_g,  #
                Q, PK, PV, Order, Out, Lse,  #
                WsAccP, WsMlP, CountersP, StOut, StLse, Arrivals,  #
                stride_qb, stride_qh, stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
                stride_ob, stride_oh, stride_lb, qk_scale, n_rows,  #
                N_HB, HQ, GROUP, BLOCK_HP, HEAD_DIM, BLOCK_NP, SINGLE_PREFIX, HAS_OWN,  #
                LOAD, UPCAST, DOT_PRECISION, VALID_ROWS_P, MERGE_ROWS_P, MERGE_STAGES_P)
        elif HAS_OWN:
            # ================= own list: each sample's own tokens =================
            own_pieces(
                start_o, end_o, start_o, T_o, high_o,  #
                cum_b, work_b, tiles_b, lens, offs_b,  #
                Q, K, V, BlockTable, Out, Lse,  #
                WsAccO, WsMlO, CountersO, StOut, StLse, Arrivals,  #
                stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
                stride_ob, stride_oh, stride_lb, stride_btb, qk_scale, n_rows,  #
                HQ, GROUP, BLOCK_HO, N_HBO, HEAD_DIM, BLOCK_NO, PAGE_SIZE,  #
                LOAD, UPCAST, DOT_PRECISION, VALID_ROWS, MERGE_ROWS, MERGE_STAGES)
