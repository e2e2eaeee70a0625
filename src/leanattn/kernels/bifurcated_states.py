"""Bifurcated decode as partial states: one launch for every prefix split and every own-token split.

The grid holds two kinds of programs, prefix programs first:

* ``n_prefix = G * HKV * S * N_HB`` programs of ``prefix_states_program``
  (``kernels/bifurcated_prefix.py``): split ``s`` of prompt ``g``'s prefix for kv head ``h`` and
  head block ``member``, its query rows stacked from all the prompt's samples, so each prefix tile
  is read once per prompt (the ``N_HB`` head blocks of one split are adjacent, so they meet the
  same tile in L2);
* ``B * HKV * N_HBO * S_OWN`` programs of ``split_program`` (``kernels/decode.py``): split ``s`` of
  one sample's own tokens for the query heads of one kv head.

Each program writes its normalised state in ``merge_states``' layout, prefix split ``s`` at slot
``s`` and own split ``s`` at slot ``S + s`` of ``StO (S + S_OWN, B, HQ, D)`` fp32 and
``StL (S + S_OWN, B, HQ)`` fp32 (natural log); by default a ``merge_states`` launch then merges the
slots of each row. With ``MERGE`` (opt-in, measured slower on an H200) each program instead counts
itself in for each of its query rows (``Arrivals (B * HQ,)``), and whoever brings a row's count to
``S + S_OWN`` merges the row's states in slot order (so the result does not depend on who came last,
bitwise), writes ``out``/``lse`` and resets the count; nobody waits, so no launch can hang, and
counts end at zero, so the buffer stays valid across launches and CUDA-graph replays. The split
counts set how the launch's slots are shared between the two kinds (``ops/bifurcated_launch.py``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .bifurcated_prefix import prefix_states_program
from .decode import split_program
from .merge import finish_merge, fold_state


@triton.jit
def settle_states(
    b_rows, h_rows, valid, StO, StL, Arrivals, Out, Lse, n_states,  #
    stride_ob, stride_oh, stride_lb, rows,  #
    HQ: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """This program's states of query rows ``(b_rows[i], h_rows[i])`` are written: count them in, and
    merge the rows this program completes (all ``n_states`` slots, in slot order)."""
    offs_d = tl.arange(0, HEAD_DIM)
    row = b_rows.to(tl.int64) * HQ + h_rows
    tl.debug_barrier()
    arrived = tl.atomic_add(Arrivals + row, 1, mask=valid, sem="acq_rel")
    last = valid & (arrived == n_states - 1)
    tl.debug_barrier()
    if tl.sum(last.to(tl.int32), 0) > 0:
        den = tl.zeros(row.shape, tl.float32)
        m = den - float("inf")
        acc = tl.zeros([row.shape[0], HEAD_DIM], tl.float32)
        for s in range(n_states):
            at = s * rows + row
            lse = tl.load(StL + at, mask=last, other=float("-inf"), cache_modifier=".cg")
            o = tl.load(StO + at[:, None] * HEAD_DIM + offs_d[None, :], mask=last[:, None], other=0.0,
                        cache_modifier=".cg")
            m, acc, den = fold_state(m, acc, den, lse, o)
        out, lse_out = finish_merge(m, acc, den)
        tl.store(Out + b_rows.to(tl.int64)[:, None] * stride_ob + h_rows[:, None] * stride_oh + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=last[:, None])
        tl.store(Lse + b_rows.to(tl.int64) * stride_lb + h_rows, lse_out, mask=last)
        tl.store(Arrivals + row, 0, mask=last)


@triton.jit
def bifurcated_states_kernel(
    Q, PK, PV, K, V, StO, StL, Arrivals, Out, Lse,  #
    PrefixLens, GroupCount, GroupStart, Order, Seqlens, BlockTable, PrefixStarts, PrefixTable,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_btb, stride_ob, stride_oh, stride_lb,  #
    qk_scale, v_scale, softcap, B, prefix_cap, S, chunk_p, n_prefix, capacity, chunk_o, n_own_rows, n_states,  #
    stride_ptb,  #
    HKV: tl.constexpr, GROUP: tl.constexpr, BLOCK_HP: tl.constexpr, N_HB: tl.constexpr,  #
    BLOCK_NP: tl.constexpr, BLOCK_HO: tl.constexpr, N_HBO: tl.constexpr, BLOCK_NO: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr,  #
    HAS_PREFIX_LENS: tl.constexpr, SINGLE_PREFIX: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, MERGE: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_STARTS: tl.constexpr = False, PREFIX_PAGE: tl.constexpr = 0,
):
    """Prefix programs ``[0, n_prefix)`` then own programs (``n_own_rows`` rows of ``(sample, kv
    head, head block)`` per own split). ``PK/PV (G, prefix_cap, HKV, D)`` (``stride_pkg = 0`` for one
    prefix), or page pools whose prompt ``g`` is the pages ``PrefixTable[g]`` with ``PREFIX_PAGE``; ``K/V`` as
    ``leanattn.decode``'s caches; ``PrefixStarts (G,)`` int32 with ``HAS_STARTS``: each prompt's first key
    (``prefix_states_program``)."""
    pid = tl.program_id(0)
    qk_scale = tl.cast(qk_scale, tl.float32)
    v_scale = tl.cast(v_scale, tl.float32)
    softcap = tl.cast(softcap, tl.float32)
    HQ: tl.constexpr = HKV * GROUP
    rows = tl.cast(B, tl.int64) * HQ  # one state slot
    if pid < n_prefix:
        per_head = S * N_HB
        b_p, h_p, valid_p = prefix_states_program(
            pid % per_head, (pid // per_head) % HKV, pid // (per_head * HKV),  #
            Q, PK, PV, StO, StL, PrefixLens, GroupCount, GroupStart, Order, stride_qb, stride_qh,  #
            stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
            qk_scale, B, prefix_cap, S, chunk_p,  #
            HKV, GROUP, BLOCK_HP, N_HB, True, HEAD_DIM, BLOCK_NP, HAS_PREFIX_LENS, SINGLE_PREFIX, LOAD,  #
            UPCAST, DOT_PRECISION, softcap, SOFTCAP, v_scale, PrefixStarts, HAS_STARTS, PrefixTable, stride_ptb,
            PREFIX_PAGE)
        if MERGE:
            settle_states(b_p, h_p, valid_p, StO, StL, Arrivals, Out, Lse, n_states, stride_ob, stride_oh,
                          stride_lb, rows, HQ, HEAD_DIM)
    else:
        o = pid - n_prefix
        base = tl.cast(S, tl.int64) * rows
        b_o, h_o, valid_o = split_program(
            o % n_own_rows, o // n_own_rows, Q, K, V, StO + base * HEAD_DIM, StL + base, Seqlens, BlockTable,  #
            stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
            HQ * HEAD_DIM, HEAD_DIM, HQ, rows * HEAD_DIM, rows, stride_btb,  #
            qk_scale, v_scale, capacity, chunk_o,  #
            GROUP, N_HBO, HKV * N_HBO, HEAD_DIM, BLOCK_HO, BLOCK_NO, PAGE_SIZE, HAS_SEQLENS, LOAD, UPCAST,
            DOT_PRECISION, False, softcap, SOFTCAP)
        if MERGE:
            settle_states(tl.zeros_like(h_o) + b_o, h_o, valid_o, StO, StL, Arrivals, Out, Lse, n_states, stride_ob,
                          stride_oh, stride_lb, rows, HQ, HEAD_DIM)
