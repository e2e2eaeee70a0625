"""Bifurcated decode, launch 1 of 2: partial states of the shared prefixes, every prefix tile read once.

For prompt ``g`` and kv head ``h`` the query rows of all the prompt's samples that read ``h``
(``n_g * GROUP`` rows, sample-major: row ``r`` is query head ``h * GROUP + r % GROUP`` of the
prompt's ``r // GROUP``-th sample) are stacked into the rows of one ``tl.dot`` (the
bifurcated-attention GEMM), cut into ``N_HB`` head blocks of ``BLOCK_HP`` rows. The prefix tiles
are cut into ``S`` fixed splits of ``chunk`` tiles (FlashDecoding's layout rather than stream-K:
every split's state has a fixed slot, so the own-token launch can find and merge them without
counters). Program ``(s * N_HB + member, h, g)`` writes the normalised state of split ``s`` for
head block ``member``; head blocks of one split are adjacent in launch order, so they load the
same prefix tile at about the same time (one HBM read, ``N_HB - 1`` L2 hits).

State layout: ``StO (G, HKV, S, ROWS_P, D)`` fp32, the split's output normalised by its own sum,
and ``StL (G, HKV, S, ROWS_P)`` fp32, its log2-sum-exp (``-inf`` and zeros for an empty split),
with ``ROWS_P = N_HB * BLOCK_HP``. ``kernels/bifurcated_own.py`` merges them with the own tokens.
With ``BATCH_LAYOUT`` the states are those of ``merge_states`` instead: ``StO (S, B, HQ, D)`` and
natural-log ``StL (S, B, HQ)``, each query row of each sample at its batch position (the ``states``
path merges them with the own-token state by ``kernels/merge.py``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attend import attend_any
from .bifurcated import load_stacked_q
from .merge import LN2


@triton.jit
def prefix_states_program(
    pid, kvh, g,  #
    Q, PK, PV, StO, StL,  #
    PrefixLens, GroupCount, GroupStart, Order,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    qk_scale, B, prefix_cap, S, chunk,  #
    HKV: tl.constexpr, GROUP: tl.constexpr, BLOCK_HP: tl.constexpr, N_HB: tl.constexpr,  #
    BATCH_LAYOUT: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,  #
    HAS_PREFIX_LENS: tl.constexpr, SINGLE_PREFIX: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, softcap=0.0, SOFTCAP: tl.constexpr = False, v_scale=1.0,
    PrefixStarts=None, HAS_STARTS: tl.constexpr = False, PrefixTable=None, stride_ptb=0,
    PREFIX_PAGE: tl.constexpr = 0,
):
    """Split ``s`` of prompt ``g``'s prefix for kv head ``h``, head block ``member``.

    ``PK/PV (G, prefix_cap, HKV, D)`` (``stride_pkg = 0`` for one prefix) or, with ``PREFIX_PAGE`` (a page size),
    page pools ``(num_pages, PREFIX_PAGE, HKV, D)`` (``stride_pkg`` the page stride) whose prompt ``g`` is the
    pages ``PrefixTable[g]`` (``stride_ptb`` a row), read where they lie as decode reads a paged cache. Prompt ``g`` has
    ``GroupCount[g]`` samples, ``Order[GroupStart[g] + j]`` being its ``j``-th (with
    ``SINGLE_PREFIX``: ``B`` samples, the ``j``-th is ``j``). Split ``s`` covers prefix tiles
    ``[s * chunk, (s + 1) * chunk)`` of ``BLOCK_N`` tokens; with ``HAS_STARTS`` the prompt's keys are
    ``[PrefixStarts[g], PrefixLens[g])`` and the splits count tiles from the one holding the first. Returns the
    batch and head index of each row written and which rows are real.
    """
    s = pid // N_HB
    member = pid % N_HB
    if SINGLE_PREFIX:
        n_g = B
        first = 0
    else:
        n_g = tl.load(GroupCount + g)
        first = tl.load(GroupStart + g)
    if HAS_PREFIX_LENS:
        plen = tl.minimum(tl.load(PrefixLens + g), prefix_cap)
    else:
        plen = prefix_cap
    if HAS_STARTS:
        # (a window's tail read where it lies: ops/bifurcated_window.py)
        kv_lo = tl.load(PrefixStarts + g)
    else:
        kv_lo = 0
    lo = kv_lo // BLOCK_N + s * chunk
    hi = tl.minimum(lo + chunk, tl.cdiv(plen, BLOCK_N))
    # a block past the prompt's rows is never read: no tiles (an `if` around the loop would keep
    # Triton from software-pipelining its loads)
    hi = tl.where(member * BLOCK_HP < n_g * GROUP, hi, lo)
    # -- the block's query rows: sample j = row // GROUP of the prompt, head row % GROUP --
    rows = member * BLOCK_HP + tl.arange(0, BLOCK_HP)
    offs_d = tl.arange(0, HEAD_DIM)
    q, b_rows, h_rows, valid = load_stacked_q(Q, Order, rows, first, n_g, kvh, stride_qb, stride_qh,  #
                                              GROUP, HEAD_DIM, SINGLE_PREFIX, UPCAST)
    if PREFIX_PAGE > 0:
        table = PrefixTable
    else:  # a contiguous prefix (PAGE_SIZE 0): the block table argument is never read
        table = Order
    acc, m_i, l_i = attend_any(
        q, PK, PV, table, g, kvh, plen, lo, hi, qk_scale, v_scale,  #
        stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh, stride_ptb,  #
        HEAD_DIM, BLOCK_HP, BLOCK_N, PREFIX_PAGE, LOAD, UPCAST, DOT_PRECISION, softcap, SOFTCAP, kv_lo, HAS_STARTS)
    # -- normalised state; an empty split is (0, -inf), the merge's identity --
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
    if BATCH_LAYOUT:
        slot = (s.to(tl.int64) * B + b_rows) * (HKV * GROUP) + h_rows
        lse2 = lse2 * LN2
    else:
        slot = ((g.to(tl.int64) * HKV + kvh) * S + s) * (N_HB * BLOCK_HP) + rows
    tl.store(StO + slot[:, None] * HEAD_DIM + offs_d[None, :], o, mask=valid[:, None])
    tl.store(StL + slot, lse2, mask=valid)
    return b_rows, h_rows, valid


@triton.jit
def prefix_states_kernel(
    Q, PK, PV, StO, StL,  #
    PrefixLens, GroupCount, GroupStart, Order,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    qk_scale, B, prefix_cap, S, chunk,  #
    HKV: tl.constexpr, GROUP: tl.constexpr, BLOCK_HP: tl.constexpr, N_HB: tl.constexpr,  #
    BATCH_LAYOUT: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,  #
    HAS_PREFIX_LENS: tl.constexpr, SINGLE_PREFIX: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Launch grid ``(S * N_HB, HKV, G)`` of ``prefix_states_program``."""
    prefix_states_program(
        tl.program_id(0), tl.program_id(1), tl.program_id(2), Q, PK, PV, StO, StL,  #
        PrefixLens, GroupCount, GroupStart, Order, stride_qb, stride_qh,  #
        stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
        tl.cast(qk_scale, tl.float32), B, prefix_cap, S, chunk,  #
        HKV, GROUP, BLOCK_HP, N_HB, BATCH_LAYOUT, HEAD_DIM, BLOCK_N, HAS_PREFIX_LENS, SINGLE_PREFIX, LOAD,  #
        UPCAST, DOT_PRECISION)
