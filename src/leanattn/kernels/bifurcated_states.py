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
``StL (S + S_OWN, B, HQ)`` fp32 (natural log); ``kernels/merge.py`` then merges the slots of each
query row. The two kinds never wait on each other and nothing is merged in this launch, so the
kernel needs no counters; the split counts set how the launch's slots are shared between the two
kinds (``ops/bifurcated_launch.py`` sizes them by bytes).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .bifurcated_prefix import prefix_states_program
from .decode import split_program


@triton.jit
def bifurcated_states_kernel(
    Q, PK, PV, K, V, StO, StL,  #
    PrefixLens, GroupCount, GroupStart, Order, Seqlens, BlockTable,  #
    stride_qb, stride_qh,  #
    stride_pkg, stride_pkn, stride_pkh,  #
    stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_btb,  #
    qk_scale, B, prefix_cap, S, chunk_p, n_prefix, capacity, chunk_o, n_own_rows,  #
    HKV: tl.constexpr, GROUP: tl.constexpr, BLOCK_HP: tl.constexpr, N_HB: tl.constexpr,  #
    BLOCK_NP: tl.constexpr, BLOCK_HO: tl.constexpr, N_HBO: tl.constexpr, BLOCK_NO: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_SEQLENS: tl.constexpr,  #
    HAS_PREFIX_LENS: tl.constexpr, SINGLE_PREFIX: tl.constexpr, LOAD: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Prefix programs ``[0, n_prefix)`` then own programs (``n_own_rows`` rows of ``(sample, kv
    head, head block)`` per own split). ``PK/PV (G, prefix_cap, HKV, D)`` (``stride_pkg = 0`` for one
    prefix); ``K/V`` as ``leanattn.decode``'s caches."""
    pid = tl.program_id(0)
    qk_scale = tl.cast(qk_scale, tl.float32)
    HQ: tl.constexpr = HKV * GROUP
    if pid < n_prefix:
        per_head = S * N_HB
        prefix_states_program(
            pid % per_head, (pid // per_head) % HKV, pid // (per_head * HKV),  #
            Q, PK, PV, StO, StL, PrefixLens, GroupCount, GroupStart, Order, stride_qb, stride_qh,  #
            stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
            qk_scale, B, prefix_cap, S, chunk_p,  #
            HKV, GROUP, BLOCK_HP, N_HB, True, HEAD_DIM, BLOCK_NP, HAS_PREFIX_LENS, SINGLE_PREFIX, LOAD,  #
            UPCAST, DOT_PRECISION)
    else:
        o = pid - n_prefix
        rows = tl.cast(B, tl.int64) * HQ  # one state slot
        base = tl.cast(S, tl.int64) * rows
        split_program(
            o % n_own_rows, o // n_own_rows, Q, K, V, StO + base * HEAD_DIM, StL + base, Seqlens, BlockTable,  #
            stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
            HQ * HEAD_DIM, HEAD_DIM, HQ, rows * HEAD_DIM, rows, stride_btb,  #
            qk_scale, capacity, chunk_o,  #
            GROUP, N_HBO, HKV * N_HBO, HEAD_DIM, BLOCK_HO, BLOCK_NO, PAGE_SIZE, HAS_SEQLENS, LOAD, UPCAST,
            DOT_PRECISION)
