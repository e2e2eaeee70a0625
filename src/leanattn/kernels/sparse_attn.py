"""Sparse causal flash attention kernels (SCFA): forward, backward preprocess, dK/dV, dQ.

The tokens of every (batch, head) are visited in a sorted order (``sparse/layout.py``, computed
by ``kernels/sparse_ranges.py``): row ``r`` of a tile is the token at original position
``perm[r]``, loaded straight from the ``(B, N, H, D)`` inputs (no gathered copies), and
``group[r]`` is its group id. The element mask is ``(q_group == k_group) & (q_pos >= k_pos)``,
causal on original positions.

Each program reads its block range ``[lo, full_lo, full_hi, hi]`` (precomputed once per call)
and runs three loops: masked ``[lo, full_lo)``, unmasked ``[full_lo, full_hi)``, masked
``[full_hi, hi)``. Fully masked blocks outside ``[lo, hi)`` are never touched.

* ``sparse_fwd_kernel``: grid ``(q blocks, B*H)``; FlashAttention-2 online softmax; writes the
  output rows at their original positions and the per-row LSE (log2 units, sorted order,
  ``+inf`` for a row that sees no key so that the backward's ``exp2(s - lse)`` is 0).
* ``sparse_bwd_preprocess_kernel`` (atomic dQ only): ``delta = rowsum(out * dout)`` in sorted
  order, and the float32 dQ zeroed.
* ``sparse_dkdv_kernel``: grid ``(key blocks * SPLIT, B*Hkv)``, as FlashAttention-2: each program owns a key
  block and loops over the query blocks that see it; dK, dV stay in registers.
* ``sparse_dq_kernel``: grid ``(q blocks, B*H)``: a separate pass, so no atomics and the
  gradients are bitwise deterministic (the default); it runs before dK/dV and writes delta
  itself. ``deterministic=False`` instead adds dQ with float32 atomics from the dK/dV
  programs, as FlashAttention-2 does: two fewer matmuls per tile pair, at the price of
  run-to-run rounding differences in dQ.

Grouped-query attention (``GROUP`` query heads a kv head, a constexpr): query rows ``(b, h)`` read the keys and
their sorted order of kv row ``(b, h // GROUP)`` (``_kv_row``), and a dK/dV program owns a key block of one kv head
and runs the query blocks of each of its ``GROUP`` query heads in turn (``_dkdv_head``), so dK and dV are summed
over the group in registers, with no atomics. ``GROUP = 1`` compiles to the code of multi-head attention.

Scores are in log2 units: ``qk_scale = softmax_scale * log2(e)``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..runtime import env_flag, interpreting


def _configs(options):
    # the interpreter supports a single autotune config
    if interpreting():
        options = options[:1]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in options]


def _launch_once(kernel_call, quantiles):
    """The autotuners' timing under ``LEANATTN_SPARSE_TUNE_ONCE=1``: each config launched once, untimed, so the first
    config is kept. For compute-sanitizer: it still checks every config's code, without do_bench's dozens of trial
    launches a config (at a thousandfold slowdown, racecheck over the sparse launches, the trials among them, ran past
    500 s on an H100)."""
    kernel_call()
    return [0.0] * len(quantiles)


_TUNE = dict(do_bench=_launch_once) if env_flag("LEANATTN_SPARSE_TUNE_ONCE") else {}


# (num_warps, num_stages). Chosen from ptxas reports for sm_90 (tiles of ops/sparse config):
# no spills for the forward at D=64 with 4 or 8 warps, nor at D=128 with 8; the backward
# kernels spill with 4 warps, so only 8.
_FWD_CONFIGS = _configs([(8, 3), (4, 3), (8, 2), (4, 2)])
_BWD_CONFIGS = _configs([(8, 2), (8, 3)])
# N only by its power-of-two bucket (``tune_n``, unused by the bodies): a run with varied lengths
# benchmarks the configs once per octave, not once per length
# (GROUP: a dK/dV program of a kv head does GROUP heads' work, so grouped launches tune apart from multi-head ones)
_KEY = ["tune_n", "HEAD_DIM", "BLOCK_M", "BLOCK_N", "GROUP"]


@triton.jit
def _rows(Base, pos, valid, stride_n, offs_d, UPCAST: tl.constexpr, MASKED: tl.constexpr = True):
    """Load the rows ``Base + pos * stride_n``: ``[len(pos), HEAD_DIM]``; invalid rows are 0.

    ``MASKED=False`` skips the bounds mask, for tiles known to hold only real tokens.
    """
    ptrs = Base + pos.to(tl.int64)[:, None] * stride_n + offs_d[None, :]
    if MASKED:
        x = tl.load(ptrs, mask=valid[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _tokens(Perm, Group, blk, N, BLOCK: tl.constexpr, OTHER_GROUP: tl.constexpr, MASKED: tl.constexpr = True):
    """Sorted tokens ``[blk * BLOCK, (blk + 1) * BLOCK)`` of one (batch, head) row.

    Returns offsets, validity (``< N``), original positions and group ids. Padding rows get
    group ``OTHER_GROUP`` (-1 for queries, -2 for keys: they match nothing). With
    ``MASKED=False`` (a full tile) the groups are not needed and not loaded.
    """
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    if MASKED:
        pos = tl.load(Perm + offs, mask=valid, other=0)
        grp = tl.load(Group + offs, mask=valid, other=OTHER_GROUP)
    else:
        pos = tl.load(Perm + offs)
        grp = pos
    return offs, valid, pos, grp


@triton.jit
def _program(H, N, REVERSE: tl.constexpr):
    """``(block, bh, b, h, row0)`` of this program; ``REVERSE`` runs the blocks last to first
    (late query blocks have the most causal work: start them first)."""
    if REVERSE:
        blk = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        blk = tl.program_id(0)
    bh = tl.program_id(1)
    return blk, bh, bh // H, bh % H, bh.to(tl.int64) * N


@triton.jit
def _kv_row(b, h, H, N, row0, GROUP: tl.constexpr):
    """``(kv head, first element of its sorted key row)`` that query row ``(b, h)`` (of ``H`` heads, starting at
    ``row0``) reads: its own with ``GROUP == 1``, else kv head ``h // GROUP`` of ``H // GROUP``."""
    if GROUP == 1:
        return h, row0
    else:
        hkv = h // GROUP
        return hkv, (b * (H // GROUP) + hkv).to(tl.int64) * N


@triton.jit
def _head(X, b, h, stride_b, stride_h):
    # int64: a head stride below 2**31 (so passed as int32) times h can pass it (a (B, H, N, D) buffer seen as NHD)
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _block_range(Ranges, bh, blk, n_blocks):
    base = Ranges + (bh * n_blocks + blk) * 4
    return tl.load(base), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3)


# Scaled in _scores, not in the exponent: leaving the products unscaled (each row's max over the raw products, one FFMA
# an exponent) cut the forward's tile loop 9% in SASS and timed level on an H100 (2026-12-08, BENCHMARK_RUNS.md), and
# would need the scale's sign. (A comment here, outside the kernel's source, leaves Triton's cache keys as they were.)
@triton.jit
def _scores(
    q, q_grp, q_pos, K, KPerm, KGroup, j, N, stride_kn, offs_d, qk_scale,  #
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Scores (log2 units) of the query tile against key tile ``j``, ``-inf`` where not visible.

    Returns ``(qk, k, k_pos, valid_n)``. Full tiles (``MASKED=False``) hold only real keys
    visible to every query: no masks there.
    """
    offs_n, valid_n, k_pos, k_grp = _tokens(KPerm, KGroup, j, N, BLOCK_N, -2, MASKED)
    k = _rows(K, k_pos, valid_n, stride_kn, offs_d, UPCAST, MASKED)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        vis = (q_grp[:, None] == k_grp[None, :]) & (q_pos[:, None] >= k_pos[None, :])
        qk = tl.where(vis, qk, float("-inf"))
    return qk, k, k_pos, valid_n


@triton.jit
def _fwd_tiles(
    acc, m_i, l_i, q, q_grp, q_pos,  #
    K, V, KPerm, KGroup, lo, hi, N, stride_kn, stride_vn, qk_scale,  #
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for j in range(lo, hi):
        qk, k, k_pos, valid_n = _scores(q, q_grp, q_pos, K, KPerm, KGroup, j, N, stride_kn, offs_d, qk_scale,
                                        BLOCK_N, MASKED, UPCAST, DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED:  # a row with nothing visible yet keeps m = -inf
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        alpha = tl.math.exp2(m_i - m_use)
        p = tl.math.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _rows(V, k_pos, valid_n, stride_vn, offs_d, UPCAST, MASKED)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY, **_TUNE)
@triton.jit
def sparse_fwd_kernel(
    Q, K, V, Out, Lse,  #
    QPerm, QGroup, KPerm, KGroup, Ranges,  #
    stride_qb, stride_qn, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_on, stride_oh,  #
    qk_scale, H, N, n_blocks, tune_n,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, GROUP: tl.constexpr = 1,
):
    blk, bh, b, h, row0 = _program(H, N, True)
    hkv, kv_row0 = _kv_row(b, h, H, N, row0, GROUP)
    qk_scale = tl.cast(qk_scale, tl.float32)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_m, valid_m, q_pos, q_grp = _tokens(QPerm + row0, QGroup + row0, blk, N, BLOCK_M, -1)
    q = _rows(_head(Q, b, h, stride_qb, stride_qh), q_pos, valid_m, stride_qn, offs_d, UPCAST)
    lo, flo, fhi, hi = _block_range(Ranges, bh, blk, n_blocks)

    K_bh = _head(K, b, hkv, stride_kb, stride_kh)
    V_bh = _head(V, b, hkv, stride_vb, stride_vh)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, q_grp, q_pos, K_bh, V_bh, KPerm + kv_row0, KGroup + kv_row0,
                               lo, flo, N, stride_kn, stride_vn, qk_scale,
                               HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PRECISION)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, q_grp, q_pos, K_bh, V_bh, KPerm + kv_row0, KGroup + kv_row0,
                               flo, fhi, N, stride_kn, stride_vn, qk_scale,
                               HEAD_DIM, BLOCK_N, False, UPCAST, DOT_PRECISION)
    acc, m_i, l_i = _fwd_tiles(acc, m_i, l_i, q, q_grp, q_pos, K_bh, V_bh, KPerm + kv_row0, KGroup + kv_row0,
                               fhi, hi, N, stride_kn, stride_vn, qk_scale,
                               HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PRECISION)
    # a row that saw no key: output 0, lse +inf (its probabilities are 0 in the backward)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    o_ptrs = _head(Out, b, h, stride_ob, stride_oh) + q_pos.to(tl.int64)[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=valid_m[:, None])
    tl.store(Lse + row0 + offs_m, lse, mask=valid_m)


@triton.jit
def sparse_bwd_preprocess_kernel(
    Out, DOut, Delta, DQ, QPerm,  #
    stride_ob, stride_on, stride_oh,  #
    stride_db, stride_dn, stride_dh,  #
    stride_qb, stride_qn, stride_qh,  #
    H, N,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """For the atomic-dQ backward: ``Delta[bh, r] = sum_d out * dout`` of the ``r``-th sorted
    query, in float32, and that query's row of the float32 ``DQ`` zeroed (the dK/dV pass adds
    into it; every row is some sorted query's, so the whole of ``DQ`` is zeroed)."""
    blk, bh, b, h, row0 = _program(H, N, False)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_m, valid_m, pos, _ = _tokens(QPerm + row0, QPerm + row0, blk, N, BLOCK_M, 0)
    o = _rows(_head(Out, b, h, stride_ob, stride_oh), pos, valid_m, stride_on, offs_d, True)
    do = _rows(_head(DOut, b, h, stride_db, stride_dh), pos, valid_m, stride_dn, offs_d, True)
    tl.store(Delta + row0 + offs_m, tl.sum(o * do, 1), mask=valid_m)
    dq_ptrs = _head(DQ, b, h, stride_qb, stride_qh) + pos.to(tl.int64)[:, None] * stride_qn + offs_d[None, :]
    tl.store(dq_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], tl.float32), mask=valid_m[:, None])


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, k_grp, k_pos,  #
    Q, DO, QPerm, QGroup, Lse, Delta, DQ, lo, hi, N, stride_qn, stride_don, stride_dqn, qk_scale, sm_scale,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for i in range(lo, hi):
        # full tiles (MASKED=False) hold only real queries that see every key of the block
        offs_m, valid_m, q_pos, q_grp = _tokens(QPerm, QGroup, i, N, BLOCK_M, -1, MASKED)
        if MASKED:
            lse = tl.load(Lse + offs_m, mask=valid_m, other=float("inf"))
            delta = tl.load(Delta + offs_m, mask=valid_m, other=0.0)
        else:
            lse = tl.load(Lse + offs_m)
            delta = tl.load(Delta + offs_m)
        q = _rows(Q, q_pos, valid_m, stride_qn, offs_d, UPCAST, MASKED)
        do = _rows(DO, q_pos, valid_m, stride_don, offs_d, UPCAST, MASKED)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        pT = tl.math.exp2(qkT - lse[None, :])
        if MASKED:
            vis = (q_grp[None, :] == k_grp[:, None]) & (q_pos[None, :] >= k_pos[:, None])
            pT = tl.where(vis, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:
            # FlashAttention-2's dQ: float32 atomics into DQ (order-dependent rounding)
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=DOT_PRECISION) * sm_scale
            dq_ptrs = DQ + q_pos.to(tl.int64)[:, None] * stride_dqn + offs_d[None, :]
            if MASKED:
                tl.atomic_add(dq_ptrs, dq, mask=valid_m[:, None], sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq, sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_head(
    dk, dv, k, v, k_grp, k_pos, Q, DO, DQ, Lse, Delta, QPerm, QGroup, Ranges, blk, b, h, bh, row0,  #
    stride_qb, stride_qn, stride_qh, stride_dob, stride_don, stride_doh, stride_dqb, stride_dqn, stride_dqh,  #
    sm_scale, qk_scale, N, n_blocks,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    """``(dk, dv)`` plus the key block's terms from the queries of query row ``bh`` (batch ``b``, head ``h``,
    sorted row from ``row0``): its three loops over the block range ``Ranges[bh, blk]``."""
    lo, flo, fhi, hi = _block_range(Ranges, bh, blk, n_blocks)
    if ATOMIC_DQ:
        # the padding keys of a partial last block (k = v = 0) are not masked in full tiles: their
        # exp2(0 - lse) can overflow, and inf * 0 in the tile's dQ is NaN for every query in it
        partial = (blk + 1) * BLOCK_N > N
        flo = tl.where(partial, hi, flo)
        fhi = tl.where(partial, hi, fhi)

    Q_bh = _head(Q, b, h, stride_qb, stride_qh)
    DO_bh = _head(DO, b, h, stride_dob, stride_doh)
    DQ_bh = _head(DQ, b, h, stride_dqb, stride_dqh)
    dk, dv = _dkdv_tiles(dk, dv, k, v, k_grp, k_pos, Q_bh, DO_bh, QPerm + row0, QGroup + row0, Lse + row0,
                         Delta + row0, DQ_bh, lo, flo, N, stride_qn, stride_don, stride_dqn, qk_scale, sm_scale,
                         HEAD_DIM, BLOCK_M, True, UPCAST, DOT_PRECISION, ATOMIC_DQ)
    dk, dv = _dkdv_tiles(dk, dv, k, v, k_grp, k_pos, Q_bh, DO_bh, QPerm + row0, QGroup + row0, Lse + row0,
                         Delta + row0, DQ_bh, flo, fhi, N, stride_qn, stride_don, stride_dqn, qk_scale, sm_scale,
                         HEAD_DIM, BLOCK_M, False, UPCAST, DOT_PRECISION, ATOMIC_DQ)
    dk, dv = _dkdv_tiles(dk, dv, k, v, k_grp, k_pos, Q_bh, DO_bh, QPerm + row0, QGroup + row0, Lse + row0,
                         Delta + row0, DQ_bh, fhi, hi, N, stride_qn, stride_don, stride_dqn, qk_scale, sm_scale,
                         HEAD_DIM, BLOCK_M, True, UPCAST, DOT_PRECISION, ATOMIC_DQ)
    return dk, dv


# DQ accumulates atomically with ATOMIC_DQ: zero it around the autotuner's trial runs, and the runs' counts of a cut
# group (each full launch leaves them zero, but not one cut short) (SPLIT: a run of GROUP // SPLIT heads a program,
# so each split tunes apart)
@triton.autotune(configs=_BWD_CONFIGS, key=_KEY + ["SPLIT"], reset_to_zero=["DQ", "Arrivals"], **_TUNE)
@triton.jit
def sparse_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta,  #
    QPerm, QGroup, KPerm, KGroup, Ranges,  #
    stride_qb, stride_qn, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_dob, stride_don, stride_doh,  #
    stride_dkb, stride_dkn, stride_dkh,  #
    stride_dvb, stride_dvn, stride_dvh,  #
    DQ, stride_dqb, stride_dqn, stride_dqh,  #
    Part, Arrivals,  #
    sm_scale, qk_scale, H, N, n_blocks, tune_n,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr, GROUP: tl.constexpr = 1,
    SPLIT: tl.constexpr = 1,
):
    """dK, dV of one block of ``BLOCK_N`` sorted keys of kv head ``program_id(1)`` (of ``B * H // GROUP``);
    ``Ranges`` (per query row) are in query blocks of ``BLOCK_M``. ``H``: query heads.

    With ``ATOMIC_DQ`` also adds each step's dQ into the float32 ``DQ`` (must start zeroed). ``SPLIT > 1``: the
    group's query heads are cut into ``SPLIT`` runs, so that few kv heads still fill the GPU; ``program_id(0)`` is
    ``key block * SPLIT + run``, and the runs' partial sums are added in run order by the last run of each key block
    (``_sum_runs``, through ``Part`` and ``Arrivals``).
    """
    blk, bkv, b, hkv, kv_row0 = _program(H // GROUP, N, False)
    run = 0
    if SPLIT > 1:  # a key block's runs are adjacent programs: they run at once, their partials meet in L2
        run = blk % SPLIT
        blk = blk // SPLIT
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n, valid_n, k_pos, k_grp = _tokens(KPerm + kv_row0, KGroup + kv_row0, blk, N, BLOCK_N, -2)
    k = _rows(_head(K, b, hkv, stride_kb, stride_kh), k_pos, valid_n, stride_kn, offs_d, UPCAST)
    v = _rows(_head(V, b, hkv, stride_vb, stride_vh), k_pos, valid_n, stride_vn, offs_d, UPCAST)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    if GROUP == 1:
        dk, dv = _dkdv_head(
            dk, dv, k, v, k_grp, k_pos, Q, DO, DQ, Lse, Delta, QPerm, QGroup, Ranges, blk, b, hkv, bkv, kv_row0,
            stride_qb, stride_qn, stride_qh, stride_dob, stride_don, stride_doh, stride_dqb, stride_dqn, stride_dqh,
            sm_scale, qk_scale, N, n_blocks, HEAD_DIM, BLOCK_M, BLOCK_N, UPCAST, DOT_PRECISION, ATOMIC_DQ)
    else:
        # the group's query heads (this program's run of them) one after another, in order: dK and dV summed in
        # registers, deterministic
        first = hkv * GROUP + run * (GROUP // SPLIT)
        for g in range(GROUP // SPLIT):
            h = first + g
            bh = b * H + h
            dk, dv = _dkdv_head(
                dk, dv, k, v, k_grp, k_pos, Q, DO, DQ, Lse, Delta, QPerm, QGroup, Ranges, blk, b, h, bh,
                bh.to(tl.int64) * N, stride_qb, stride_qn, stride_qh, stride_dob, stride_don, stride_doh,
                stride_dqb, stride_dqn, stride_dqh, sm_scale, qk_scale, N, n_blocks, HEAD_DIM, BLOCK_M, BLOCK_N,
                UPCAST, DOT_PRECISION, ATOMIC_DQ)
    rows = k_pos.to(tl.int64)[:, None]
    keep = valid_n
    if SPLIT > 1:
        dk, dv, last = _sum_runs(dk, dv, Part, Arrivals, blk, bkv, run, offs_n, valid_n, N, HEAD_DIM, SPLIT)
        keep = valid_n & last
    dk_ptrs = _head(DK, b, hkv, stride_dkb, stride_dkh) + rows * stride_dkn + offs_d[None, :]
    dv_ptrs = _head(DV, b, hkv, stride_dvb, stride_dvh) + rows * stride_dvn + offs_d[None, :]
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=keep[:, None])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=keep[:, None])


@triton.jit
def _sum_runs(dk, dv, Part, Arrivals, blk, bkv, run, offs_n, valid_n, N,
              HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr):
    """Publishes this run's partial dK, dV to ``Part`` (float32 ``(SPLIT, 2, B * Hkv, N, D)``, sorted key order)
    and counts it in at ``Arrivals[bkv, blk]`` (int32, zero before the launch). The run that arrives last adds all
    ``SPLIT`` runs in run order, so the sum does not depend on which run arrives last, and zeroes the count for the
    next launch. Never waits on another program. Returns ``(dk, dv, last)``: the sums where ``last``."""
    offs_d = tl.arange(0, HEAD_DIM)
    plane = tl.num_programs(1).to(tl.int64) * N * HEAD_DIM  # one run's dK or dV
    at = (bkv.to(tl.int64) * N + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
    mask = valid_n[:, None]
    tl.store(Part + (2 * run) * plane + at, dk, mask=mask)
    tl.store(Part + (2 * run + 1) * plane + at, dv, mask=mask)
    count = Arrivals + bkv * (tl.num_programs(0) // SPLIT) + blk
    # every thread's stores above, then the count (release); the last run's loads after it (acquire), past L1
    tl.debug_barrier()
    arrived = tl.atomic_add(count, 1, sem="acq_rel")
    last = arrived == SPLIT - 1
    if last:
        tl.store(count, 0)
        dk = tl.zeros([dk.shape[0], HEAD_DIM], tl.float32)
        dv = tl.zeros([dv.shape[0], HEAD_DIM], tl.float32)
        for s in range(SPLIT):
            dk += tl.load(Part + (2 * s) * plane + at, mask=mask, other=0.0, cache_modifier=".cg")
            dv += tl.load(Part + (2 * s + 1) * plane + at, mask=mask, other=0.0, cache_modifier=".cg")
    return dk, dv, last


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, q_grp, q_pos,  #
    K, V, KPerm, KGroup, lo, hi, N, stride_kn, stride_vn, qk_scale,  #
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for j in range(lo, hi):
        qk, k, k_pos, valid_n = _scores(q, q_grp, q_pos, K, KPerm, KGroup, j, N, stride_kn, offs_d, qk_scale,
                                        BLOCK_N, MASKED, UPCAST, DOT_PRECISION)
        p = tl.math.exp2(qk - lse[:, None])  # 0 where masked (-inf) and for empty rows (lse = +inf)
        v = _rows(V, k_pos, valid_n, stride_vn, offs_d, UPCAST, MASKED)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY, **_TUNE)
@triton.jit
def sparse_dq_kernel(
    Q, K, V, DO, DQ, Out, Lse, Delta,  #
    QPerm, QGroup, KPerm, KGroup, Ranges,  #
    stride_qb, stride_qn, stride_qh,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_dob, stride_don, stride_doh,  #
    stride_dqb, stride_dqn, stride_dqh,  #
    stride_ob, stride_on, stride_oh,  #
    sm_scale, qk_scale, H, N, n_blocks, tune_n,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,  #
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, GROUP: tl.constexpr = 1,
):
    """dQ of one block of ``BLOCK_M`` sorted queries; ``Ranges`` are in key blocks of ``BLOCK_N``.

    Runs before the dK/dV pass: it computes its own rows' ``delta = rowsum(out * dout)`` (float32)
    and writes them to ``Delta`` for that pass, so no separate preprocess launch is needed.
    """
    blk, bh, b, h, row0 = _program(H, N, True)
    hkv, kv_row0 = _kv_row(b, h, H, N, row0, GROUP)
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_m, valid_m, q_pos, q_grp = _tokens(QPerm + row0, QGroup + row0, blk, N, BLOCK_M, -1)
    q = _rows(_head(Q, b, h, stride_qb, stride_qh), q_pos, valid_m, stride_qn, offs_d, UPCAST)
    do = _rows(_head(DO, b, h, stride_dob, stride_doh), q_pos, valid_m, stride_don, offs_d, UPCAST)
    o = _rows(_head(Out, b, h, stride_ob, stride_oh), q_pos, valid_m, stride_on, offs_d, True)
    delta = tl.sum(o * do.to(tl.float32), 1)
    tl.store(Delta + row0 + offs_m, delta, mask=valid_m)
    lse = tl.load(Lse + row0 + offs_m, mask=valid_m, other=float("inf"))
    lo, flo, fhi, hi = _block_range(Ranges, bh, blk, n_blocks)

    K_bh = _head(K, b, hkv, stride_kb, stride_kh)
    V_bh = _head(V, b, hkv, stride_vb, stride_vh)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    dq = _dq_tiles(dq, q, do, lse, delta, q_grp, q_pos, K_bh, V_bh, KPerm + kv_row0, KGroup + kv_row0,
                   lo, flo, N, stride_kn, stride_vn, qk_scale, HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, q_grp, q_pos, K_bh, V_bh, KPerm + kv_row0, KGroup + kv_row0,
                   flo, fhi, N, stride_kn, stride_vn, qk_scale, HEAD_DIM, BLOCK_N, False, UPCAST, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, q_grp, q_pos, K_bh, V_bh, KPerm + kv_row0, KGroup + kv_row0,
                   fhi, hi, N, stride_kn, stride_vn, qk_scale, HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PRECISION)
    dq_ptrs = _head(DQ, b, h, stride_dqb, stride_dqh) + q_pos.to(tl.int64)[:, None] * stride_dqn + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=valid_m[:, None])
