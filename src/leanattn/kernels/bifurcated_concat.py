"""Shared-prefix decode with at most one sample per prompt: the decode schedule over prefix + own.

With one sample per prompt there is nothing to stack into the rows of a matrix product, so
bifurcation buys nothing. This kernel is ``lean_decode_kernel`` (``kernels/decode.py``) over the
concatenation ``prefix[g] ++ own[b]`` without building it: row ``(b, kv head, head block)`` has
``cdiv(P_g, BLOCK_N)`` prefix tiles followed by ``cdiv(len_b, BLOCK_N)`` own tiles, the rows are
cut stream-K over a persistent grid, and a row cut into pieces is merged in-kernel by the last
arriver in program order (bitwise deterministic, nobody waits). A piece is one tile loop whose
tiles pick their source, prefix or own cache, by scalar selects (``attend_concat``), so a piece that
straddles the boundary keeps one pipeline and the registers of decode's loop; the kernel reads the
same bytes as decode over copied caches. The ``LOAD`` field of the launch config does not apply:
tiles are always loaded through tensors of pointers.

``concat_split_kernel`` is the same work where every row has the same tiles (one sample) and the cut is even
pieces of each row (``schedules/stream_k.even_pieces``), as ``split_decode_kernel`` with ``EVEN`` runs it for
decode: program ``(row, s)`` takes the ``s``-th even range of the row's prefix + own tiles, and a merge launch
follows.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..schedules.stream_k import across_rows, cut_list_at, load_lengths, schedule
from .attend import attend_concat
from .decode import even_range, load_q_rows, locate_row, row_length, settle_and_store, store_final
from .grid_dependency import gdc_launch_dependents


@triton.jit(noinline=True)
def concat_piece(
    Q, PK, PV, K, V, Out, Lse, BlockTable, WsAcc, WsMl, Counters, RowInfo,  #
    b, gid, kvh, hb, plen, seqlen, pt, t, stop, head_begin, head_end, start, T, high, qk_scale, v_scale, softcap,  #
    stride_qb, stride_qh, stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb, stride_btb,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,  #
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,  #
    SAME_STRIDE: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr, MERGE_LAUNCH: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Piece ``[t, stop)`` of the row ``[head_begin, head_end)`` (sample ``b`` of prompt ``gid``,
    whose first ``pt`` tiles are the prefix): attend, settle, and write the row where complete. A
    call, not inlined, for the reason given at ``decode_piece`` (``kernels/decode.py``)."""
    tile_lo = t - head_begin
    q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_H, UPCAST)
    # -- tiles [0, pt) of the row are the prompt's prefix, the rest the sample's own tokens --
    acc, m_i, l_i = attend_concat(
        q, PK, PV, K, V, BlockTable, gid, b, kvh, plen, seqlen, pt, tile_lo, tile_lo + (stop - t), qk_scale, v_scale,  #
        stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
        stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
        HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, PAGE_SIZE % BLOCK_N == 0 and GROUP == 1, SAME_STRIDE, UPCAST,
        DOT_PRECISION, softcap, SOFTCAP)
    settle_and_store(
        acc, m_i, l_i, Out, Lse, WsAcc, WsMl, Counters, RowInfo,  #
        b, kvh, hb, t, stop, head_begin, head_end, start, T, high, stride_ob, stride_oh, stride_lb,  #
        GROUP, N_HB, ROWS, HEAD_DIM, BLOCK_H, VALID_ROWS, MERGE_ROWS, MERGE_STAGES, MERGE_LAUNCH)


# the search's host-side arguments vary with the batch: one compile serves every value
@triton.jit(do_not_specialize=["k0", "g_m", "m_rows", "waves"])
def concat_decode_kernel(
    Q, PK, PV, K, V, Out, Lse,  #
    PrefixLens, PrefixIds, Seqlens, BlockTable,  #
    WsAcc, WsMl, Counters, RowInfo,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_btb,  #
    qk_scale, v_scale, softcap, B, prefix_cap, capacity, k0, g_m, m_rows, waves,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, HAS_PREFIX_LENS: tl.constexpr,  #
    SINGLE_PREFIX: tl.constexpr, SAME_STRIDE: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,  #
    VALID_ROWS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_STAGES: tl.constexpr, MERGE_LAUNCH: tl.constexpr,
    PDL: tl.constexpr, ACROSS_ROWS: tl.constexpr, SEARCH: tl.constexpr, SMS: tl.constexpr, CAND: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Stream-K decode of sample ``b`` over ``PK/PV[PrefixIds[b], :PrefixLens[g]]`` then its own cache.

    ``PK/PV (NG, prefix_cap, Hkv, D)`` (``stride_pkg = 0`` and no ``PrefixIds`` with
    ``SINGLE_PREFIX``); ``K/V`` contiguous ``(B, capacity, Hkv, D)`` or paged (``PAGE_SIZE > 0``).
    ``ROWS = Hkv * N_HB`` scheduling rows per sample. Workspaces as ``lean_decode_kernel``: 2 piece
    slots and one counter per program, or ``RowInfo`` with ``MERGE_LAUNCH``.
    """
    if PDL:
        # the merge launch after this one may start now: its programs wait for our writes (gdc_wait)
        gdc_launch_dependents()
    pid = tl.program_id(0)
    qk_scale = tl.cast(qk_scale, tl.float32)
    v_scale = tl.cast(v_scale, tl.float32)
    softcap = tl.cast(softcap, tl.float32)
    # -- schedule, from the real lengths (no host sync): prefix tiles then own tiles per row --
    offs_b, valid_b, lens = load_lengths(Seqlens, B, capacity, BLOCK_B, HAS_SEQLENS)
    if SINGLE_PREFIX:
        gid_b = tl.zeros([BLOCK_B], tl.int32)
    else:
        gid_b = tl.load(PrefixIds + offs_b, mask=valid_b, other=0)
    if HAS_PREFIX_LENS:
        plen_b = tl.load(PrefixLens + gid_b, mask=valid_b, other=0)
    else:
        plen_b = tl.zeros([BLOCK_B], tl.int32) + prefix_cap
    plen_b = tl.minimum(plen_b, prefix_cap)
    ptiles_b = tl.cdiv(plen_b, BLOCK_N)
    tiles = tl.where(valid_b, tl.maximum(ptiles_b + tl.cdiv(lens, BLOCK_N), 1), 0)
    if SINGLE_PREFIX:
        # every sample has the same prefix: its length is a scalar, not a per-piece reduction (three
        # block-wide sums a piece cost ~0.4 us of a 25 us launch, GQA 8k x1 on an H200)
        if HAS_PREFIX_LENS:
            plen_one = tl.minimum(tl.load(PrefixLens), prefix_cap)
        else:
            plen_one = prefix_cap
        pt_one = tl.cdiv(plen_one, BLOCK_N)
    # equal lengths: maybe fewer programs, so that ranges align with rows (as lean_decode_kernel)
    G, T = schedule(tiles, valid_b, ROWS, k0, g_m, m_rows, waves, SEARCH, SMS, CAND)
    if ACROSS_ROWS:
        pid = across_rows(pid, G, tiles, valid_b, ROWS)
    work, cum_incl, T, high, start, end = cut_list_at(tiles, ROWS, pid, G, T)

    t = start
    while t < end:
        # -- which (sample, row, tile) does tile t belong to --
        b, sel, kvh, hb, seqlen, head_begin, head_end, stop = locate_row(t, end, cum_incl, work, tiles, offs_b, lens, N_HB)
        if SINGLE_PREFIX:
            pt, gid, plen = pt_one, b * 0, plen_one
        else:
            pt = tl.sum(tl.where(sel, ptiles_b, 0), 0)
            gid = tl.sum(tl.where(sel, gid_b, 0), 0)
            plen = tl.sum(tl.where(sel, plen_b, 0), 0)
        concat_piece(
            Q, PK, PV, K, V, Out, Lse, BlockTable, WsAcc, WsMl, Counters, RowInfo,  #
            b, gid, kvh, hb, plen, seqlen, pt, t, stop, head_begin, head_end, start, T, high, qk_scale, v_scale,
            softcap,  #
            stride_qb, stride_qh, stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
            stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
            stride_ob, stride_oh, stride_lb, stride_btb,  #
            GROUP, N_HB, ROWS, HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, UPCAST, DOT_PRECISION, SAME_STRIDE,  #
            VALID_ROWS, MERGE_ROWS, MERGE_STAGES, MERGE_LAUNCH, SOFTCAP)
        t = stop


@triton.jit
def concat_split_kernel(
    Q, PK, PV, K, V, Out, Lse,  #
    PrefixLens, PrefixIds, Seqlens, BlockTable,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    stride_btb, stride_os, stride_ls,  #
    qk_scale, v_scale, softcap, prefix_cap, capacity,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr, HAS_PREFIX_LENS: tl.constexpr,  #
    SINGLE_PREFIX: tl.constexpr, SAME_STRIDE: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """Program ``(row, s)``: the ``s``-th of ``tl.num_programs(1)`` even ranges (``even_range``) of the row's
    tiles, ``cdiv(P_g, BLOCK_N)`` prefix tiles then the own tiles of sample ``row // ROWS``; its normalised state
    written at ``Out + s*stride_os`` and ``Lse + s*stride_ls`` (the final output with one split), merged by a
    second launch, which with ``PDL`` may start at once. Arguments as ``concat_decode_kernel``'s."""
    if PDL:
        gdc_launch_dependents()
    bid = tl.program_id(0)
    s = tl.program_id(1)
    b = bid // ROWS
    kvh = (bid % ROWS) // N_HB
    hb = bid % N_HB
    seqlen = row_length(Seqlens, b, capacity, HAS_SEQLENS)
    if SINGLE_PREFIX:
        gid = 0 * b
    else:
        gid = tl.load(PrefixIds + b)
    if HAS_PREFIX_LENS:
        plen = tl.minimum(tl.load(PrefixLens + gid), prefix_cap)
    else:
        plen = prefix_cap + 0 * b
    pt = tl.cdiv(plen, BLOCK_N)
    lo, hi = even_range(tl.maximum(pt + tl.cdiv(seqlen, BLOCK_N), 1), s, tl.num_programs(1))
    q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_H, UPCAST)
    acc, m_i, l_i = attend_concat(
        q, PK, PV, K, V, BlockTable, gid, b, kvh, plen, seqlen, pt, lo, hi, tl.cast(qk_scale, tl.float32),
        tl.cast(v_scale, tl.float32),  #
        stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
        stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
        HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, PAGE_SIZE % BLOCK_N == 0 and GROUP == 1, SAME_STRIDE, UPCAST,
        DOT_PRECISION, tl.cast(softcap, tl.float32), SOFTCAP)
    store_final(Out + s.to(tl.int64) * stride_os, Lse + s.to(tl.int64) * stride_ls, acc, m_i, l_i, b, kvh, hb,
                stride_ob, stride_oh, stride_lb, GROUP, HEAD_DIM, BLOCK_H)
