"""Merge of stacked attention states ``(o_s, lse_s)`` along a leading split axis.

    lse = log(sum_s exp(lse_s));   o = sum_s exp(lse_s - lse) * o_s

``(0, -inf)`` is the identity: a state with ``lse = -inf`` contributes nothing, whatever its
``o`` holds, and a row whose states are all empty gives ``(0, -inf)``. A state of ``lse = +inf`` (no finite
scores give one) makes its row ``(0, +inf)``, as the float64 reference does; a state of ``lse = NaN`` makes its
row's ``lse`` NaN (and its output), whatever else the row holds, +inf included.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .grid_dependency import gdc_wait, launch_meta

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def finish_merge(m, acc, den):
    """``(out, lse)`` of a merge folded into ``(m, acc, den)`` (natural-log ``m``, weights
    ``exp(lse_s - m)``): zeros and ``-inf`` for a row whose states were all empty; zeros and ``+inf`` for a row
    with a state of ``lse = +inf``, as ``reference.merge_states`` gives (its weight, ``exp(inf - inf)``, made the
    row NaN)."""
    m_use = tl.where(m == float("-inf"), 0.0, m)
    empty = den == 0.0
    den_safe = tl.where(empty, 1.0, den)
    # (the running max is +inf from the first +inf state on, whatever follows)
    top = m == float("inf")
    out = tl.where(top[:, None], 0.0, acc / den_safe[:, None])
    return out, tl.where(top, float("inf"), tl.where(empty, float("-inf"), m_use + tl.math.log2(den_safe) * LN2))


@triton.jit
def empty_fold(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """``(m, acc, den)`` of a merge that has folded no state yet (``fold_state``, ``finish_merge``)."""
    return (tl.full([BLOCK_M], float("-inf"), tl.float32), tl.zeros([BLOCK_M, BLOCK_D], tl.float32),
            tl.zeros([BLOCK_M], tl.float32))


@triton.jit
def fold_state(m, acc, den, lse, o):
    """One state ``(o [rows, D], lse [rows])`` folded into ``(m, acc, den)`` (``finish_merge``'s); an empty state
    (``lse = -inf``, weight 0) adds nothing, whatever its ``o`` holds (even NaN). A NaN ``lse`` stays in ``m``."""
    # (the hardware's max drops a NaN: a +inf state after it would make the row a clean (0, +inf))
    m_new = tl.maximum(m, lse, propagate_nan=tl.PropagateNan.ALL)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    w = tl.math.exp2((lse - m_use) * LOG2E)
    alpha = tl.math.exp2((m - m_use) * LOG2E)
    return m_new, acc * alpha[:, None] + tl.where(w[:, None] > 0.0, w[:, None] * o, 0.0), den * alpha + w


@triton.jit
def fold_slot(m, acc, den, Outs, Lses, s, mask, rows, offs_d, mask_d, stride_os, stride_om, stride_ls, stride_lm):
    """The state in slot ``s`` of ``Outs``/``Lses`` (``merge_states_kernel``'s) for ``rows``, folded into ``(m, acc,
    den)`` (``fold_state``); rows outside ``mask`` load as empty states."""
    lse = tl.load(Lses + s * tl.cast(stride_ls, tl.int64) + rows * stride_lm, mask=mask, other=float("-inf"))
    o = tl.load(Outs + s * tl.cast(stride_os, tl.int64) + rows[:, None] * stride_om + offs_d[None, :],
                mask=mask[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    return fold_state(m, acc, den, lse, o)


@triton.jit
def fold_sinks(m, acc, den, Sinks, offs_m, mask_m, SINK_HEADS: tl.constexpr):
    """With ``SINK_HEADS > 0``, each row's attention sink folded into ``(m, acc, den)``: the state ``(0,
    Sinks[row % SINK_HEADS])`` (rows ``(..., SINK_HEADS)`` flattened; natural-log units of the scaled scores), its
    magnitude bounded by 2e38 as decode's kernels take it (``query_rows.finite_log2``: an inf sink gave NaN), -inf
    kept (no sink)."""
    if SINK_HEADS:
        sink = tl.load(Sinks + offs_m % SINK_HEADS, mask=mask_m, other=float("-inf")).to(tl.float32)
        sink = tl.where(sink == float("-inf"), sink, tl.minimum(tl.maximum(sink, -2e38), 2e38))
        m, acc, den = fold_state(m, acc, den, sink, tl.zeros_like(acc))
    return m, acc, den


@triton.jit
def merge_states_kernel(
    Outs, Lses, Out, Lse, Sinks,  #
    S, M,  #
    stride_os, stride_om,  #
    stride_ls, stride_lm,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
    UNROLL: tl.constexpr, SINK_HEADS: tl.constexpr, CHUNK: tl.constexpr = 0,
):
    """``Outs [S, M, HEAD_DIM]``, ``Lses [S, M]`` fp32 natural-log -> ``Out [M, HEAD_DIM]``, ``Lse [M]``; with
    ``SINK_HEADS > 0`` each row's sink ``Sinks[row % SINK_HEADS]`` is folded in after its states (``fold_sinks``),
    so an op with attention sinks takes no launch of its own for them.

    ``UNROLL = 0``: ``BLOCK_S`` states of ``BLOCK_M`` rows are loaded at once and folded in by an
    online-softmax step: one memory round trip per ``BLOCK_S`` states (a loop of one state per step is a
    chain of ``S`` dependent round trips, which is what a merge of a few rows costs). ``UNROLL = S``
    (the number of states, known when the launch is planned): one ``[BLOCK_M, BLOCK_D]`` tile per state,
    the loop unrolled, so every state's loads issue before the first is folded in and the fold stays
    within each thread, whatever ``BLOCK_M`` (a ``[BLOCK_S, BLOCK_M, BLOCK_D]`` tile of several rows may
    put the states of one row on different warps). Program ``(i, j)`` merges columns ``[j * BLOCK_D, (j + 1) *
    BLOCK_D)`` of its rows (a wide head split over several programs); the ``j = 0`` programs write ``Lse``.
    ``CHUNK > 0`` (``merge_launch``'s ``sequential``): one state a step in slot order, as ``UNROLL`` folds them,
    ``CHUNK`` states' loads a step of the loop; the slots past ``S`` fold in as empty states.
    """
    if PDL:  # a programmatic dependent launch (runtime.dependent_launch): wait for the states' writes
        gdc_wait()
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    # (resolved at compile time: a head in one program compiles as before the split)
    col = tl.program_id(1) * BLOCK_D if BLOCK_D < HEAD_DIM else 0
    offs_d = col + tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < HEAD_DIM
    rows = offs_m.to(tl.int64)
    m, acc, den = empty_fold(BLOCK_M, BLOCK_D)
    if CHUNK:
        for s0 in range(0, S, CHUNK):
            for i in tl.static_range(CHUNK):
                m, acc, den = fold_slot(m, acc, den, Outs, Lses, s0 + i, mask_m & (s0 + i < S), rows, offs_d, mask_d,
                                        stride_os, stride_om, stride_ls, stride_lm)
    elif UNROLL:
        for s in tl.static_range(UNROLL):
            m, acc, den = fold_slot(m, acc, den, Outs, Lses, s, mask_m, rows, offs_d, mask_d, stride_os, stride_om,
                                    stride_ls, stride_lm)
    else:
        offs_s = tl.arange(0, BLOCK_S)
        for s0 in range(0, S, BLOCK_S):
            ss = (s0 + offs_s).to(tl.int64)
            mask = (ss < S)[:, None] & mask_m[None, :]  # [BLOCK_S, BLOCK_M]
            lse = tl.load(Lses + ss[:, None] * stride_ls + rows[None, :] * stride_lm, mask=mask,
                          other=float("-inf"))
            o = tl.load(Outs + ss[:, None, None] * stride_os + rows[None, :, None] * stride_om
                        + offs_d[None, None, :], mask=mask[:, :, None] & mask_d[None, None, :],
                        other=0.0).to(tl.float32)
            m_new = tl.maximum(m, tl.max(lse, 0), propagate_nan=tl.PropagateNan.ALL)
            m_new = tl.where(tl.max(tl.where(lse == lse, 0, 1), 0) > 0, float("nan"), m_new)  # (tl.max drops NaN)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            w = tl.math.exp2((lse - m_use[None, :]) * LOG2E)
            alpha = tl.math.exp2((m - m_use) * LOG2E)
            acc = acc * alpha[:, None] + tl.sum(tl.where(w[:, :, None] > 0.0, w[:, :, None] * o, 0.0), 0)
            den = den * alpha + tl.sum(w, 0)
            m = m_new
    m, acc, den = fold_sinks(m, acc, den, Sinks, offs_m, mask_m, SINK_HEADS)
    out, lse_out = finish_merge(m, acc, den)
    tl.store(Out + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    if BLOCK_D < HEAD_DIM:
        mask_m = mask_m & (col == 0)  # one column block writes the LSE
    tl.store(Lse + offs_m, lse_out, mask=mask_m)


# Up to this many states a merge unrolls its loop over them (UNROLL); more take BLOCK_S states a load
UNROLL_MAX = 8
# States whose loads the sequential merge issues at once (merge_launch). H100 2026-12-07 18:4x (the decode probe of
# batch_invariant): with one state a step, each state of the longest row cost about 0.4 us (the ragged tail's
# 283 us at 64 states, 271 at 32, 309 at 128)
SEQUENTIAL_CHUNK = 8


def merge_launch(S: int, M: int, head_dim: int, pdl: bool = False, sink_heads: int = 0,
                 sequential: bool = False) -> tuple[tuple, dict]:
    """Grid and meta-parameters of ``merge_states_kernel`` for ``S`` states of ``M`` rows.

    Up to ``UNROLL_MAX`` states: the unrolled loop (``UNROLL = S``), 4 rows a program of 4 warps from 2048 rows,
    else one row a program of one warp. More states: ``BLOCK_S`` states a load, one row a program; few rows (under
    1024) of 4 warps and up to 4096 fp32 values (``BLOCK_S x BLOCK_D``) per load, since the merge of a few rows is
    a chain of round trips, many rows of one warp and up to 8 states per load. H200, 2026-12-03, graph replays
    (bifurcated probe 42, ``benchmarks/probe_merge_layout.py``, raw ``probe_merge_layout_H200.json``), us with
    the states in the L2 (after an L2 flush) at D=128, unrolled against ``BLOCK_S``: 8192 rows of 3 states 4.0
    (9.7) against 6.8 (10.5), of 2 states 3.4 (8.4) against 6.5 (10.2), 2048 rows of 3 states 2.2 (6.6) against
    3.0 (7.0), 512 of 5 states 2.1 (5.8, one row a program) against 3.4 (7.2); 32 rows of 45 states (after a
    flush) 8.1 with 32 states a load against 11.8-21.2 unrolled. Inside the overlap path (probe 41) the unrolled
    merge took 1-3 us off the x256 cases and 0.4-1 us off the others. ``pdl``: launched as a programmatic dependent
    launch of the launch that writes the states (``runtime.dependent_launch``). ``sequential``: one state a step
    in slot order for any ``S``, one row a program, so that the merged bits do not depend on how many empty states
    follow the others; the loads of ``SEQUENTIAL_CHUNK`` states issue at each step of its loop.

    Heads wider than 128 merged over few rows (MLA's 512-wide latent, D=256) are split into 128-column programs,
    each loading 4 times (D=512) as many states a step: one sequence of 16 MLA heads cut into 132 pieces was 16
    programs folding 8 pieces a step, 17 dependent L2 round trips; it is 64 programs of 5 steps (not yet timed).
    """
    block_d = triton.next_power_of_2(head_dim)
    if sequential:
        # one state a step, whatever S: the fold's order and arithmetic do not depend on S, and an empty state
        # (lse = -inf) after the others leaves every bit as it was (schedule="batch_invariant"). The loads of
        # SEQUENTIAL_CHUNK states issue together: one state a loop step was a chain of S dependent round trips.
        # A warp per 128 columns keeps those loads' registers in bounds; the fold has no sum across columns, so
        # the warps do not change its bits
        return (M,), dict(HEAD_DIM=head_dim, BLOCK_M=1, BLOCK_D=block_d, BLOCK_S=1, UNROLL=0, SINK_HEADS=sink_heads,
                          num_warps=max(1, block_d // 128), CHUNK=SEQUENTIAL_CHUNK, **launch_meta(pdl))
    if S <= UNROLL_MAX:
        rows, warps = (4, 4) if M >= 2048 else (1, 1)
        return (triton.cdiv(M, rows),), dict(HEAD_DIM=head_dim, BLOCK_M=rows, BLOCK_D=block_d, BLOCK_S=1,
                                             num_warps=warps, UNROLL=max(S, 1), SINK_HEADS=sink_heads, CHUNK=0,
                                             **launch_meta(pdl))
    if M >= 1024:
        block_s = min(triton.next_power_of_2(S), max(1, 8 * 128 // block_d))
        warps = 1
    else:
        block_d = min(block_d, 128)
        block_s = min(triton.next_power_of_2(S), max(1, 4096 // block_d))
        warps = 4
    chunks = triton.cdiv(head_dim, block_d)
    # UNROLL given (not left to its default), so that runtime.Launcher launches the compiled kernel directly after
    # the first launch: with a parameter filled by its default every launch went through the JIT (d256 decode,
    # 16 states, eager 138 us against 79 from a graph, H200 2026-12-03)
    grid = (M,) if chunks == 1 else (M, chunks)
    return grid, dict(HEAD_DIM=head_dim, BLOCK_M=1, BLOCK_D=block_d, BLOCK_S=block_s, num_warps=warps, UNROLL=0,
                      SINK_HEADS=sink_heads, CHUNK=0, **launch_meta(pdl))


@triton.jit
def _load_state(O, L, stride_om, rows, offs_d, mask_m, mask_d):
    lse = tl.load(L + rows, mask=mask_m, other=float("-inf"))
    o = tl.load(O + rows[:, None] * stride_om + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    return lse, o.to(tl.float32)


@triton.jit
def merge_list_kernel(
    O0, L0, O1, L1, O2, L2, O3, L3, Out, Lse, Sinks, RowMask,  #
    M, H, stride_0, stride_1, stride_2, stride_3,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, N: tl.constexpr, SINK_HEADS: tl.constexpr,
    IN_PLACE: tl.constexpr, ROW_MASK: tl.constexpr,
):
    """``merge_states_kernel``'s unrolled merge of ``N`` (1 to 4) states held apart, not stacked: ``O<s> [M,
    HEAD_DIM]`` (row stride ``stride_<s>``, unit column stride), ``L<s> [M]`` fp32 natural-log -> ``Out [M,
    HEAD_DIM]``, ``Lse [M]``. Every state's loads issue before the first fold (no store between them).
    ``SINK_HEADS > 0``: attention sinks folded in last (``fold_sinks``; one state and its sinks: ``apply_sinks``).
    ``IN_PLACE``: ``Out``/``Lse`` are ``O0``/``L0`` (``merge_state_in_place``). Every thread that holds part of a
    row loads the row's LSE, and a layout may spread a row over warps, while one thread stores it: a barrier after
    the folds keeps a store from landing before another warp has loaded that row. ``ROW_MASK``: row ``r`` (of ``H``
    heads a mask entry) is read and written only where the byte ``RowMask[r // H]`` is not 0, so a masked row keeps
    its bits (FlashInfer's ``merge_state_in_place(mask=)``)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    if ROW_MASK:
        mask_m = mask_m & (tl.load(RowMask + offs_m // H, mask=mask_m, other=0) != 0)
    mask_d = offs_d < HEAD_DIM
    rows = offs_m.to(tl.int64)
    m, acc, den = empty_fold(BLOCK_M, BLOCK_D)
    lse, o = _load_state(O0, L0, stride_0, rows, offs_d, mask_m, mask_d)
    m, acc, den = fold_state(m, acc, den, lse, o)
    if N > 1:
        lse, o = _load_state(O1, L1, stride_1, rows, offs_d, mask_m, mask_d)
        m, acc, den = fold_state(m, acc, den, lse, o)
    if N > 2:
        lse, o = _load_state(O2, L2, stride_2, rows, offs_d, mask_m, mask_d)
        m, acc, den = fold_state(m, acc, den, lse, o)
    if N > 3:
        lse, o = _load_state(O3, L3, stride_3, rows, offs_d, mask_m, mask_d)
        m, acc, den = fold_state(m, acc, den, lse, o)
    m, acc, den = fold_sinks(m, acc, den, Sinks, offs_m, mask_m, SINK_HEADS)
    out, lse_out = finish_merge(m, acc, den)
    if IN_PLACE:
        tl.debug_barrier()
    tl.store(Out + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    tl.store(Lse + offs_m, lse_out, mask=mask_m)
