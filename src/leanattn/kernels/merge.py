"""Merge of stacked attention states ``(o_s, lse_s)`` along a leading split axis.

    lse = log(sum_s exp(lse_s));   o = sum_s exp(lse_s - lse) * o_s

``(0, -inf)`` is the identity: a state with ``lse = -inf`` contributes nothing, whatever its
``o`` holds, and a row whose states are all empty gives ``(0, -inf)``.
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
    ``exp(lse_s - m)``): zeros and ``-inf`` for a row whose states were all empty."""
    m_use = tl.where(m == float("-inf"), 0.0, m)
    empty = den == 0.0
    den_safe = tl.where(empty, 1.0, den)
    return acc / den_safe[:, None], tl.where(empty, float("-inf"), m_use + tl.math.log2(den_safe) * LN2)


@triton.jit
def merge_states_kernel(
    Outs, Lses, Out, Lse,  #
    S, M,  #
    stride_os, stride_om,  #
    stride_ls, stride_lm,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):
    """``Outs [S, M, HEAD_DIM]``, ``Lses [S, M]`` fp32 natural-log -> ``Out [M, HEAD_DIM]``, ``Lse [M]``.

    ``BLOCK_S`` states of ``BLOCK_M`` rows are loaded at once and folded in by an online-softmax
    step: one memory round trip per ``BLOCK_S`` states (a loop of one state per step is a chain of
    ``S`` dependent round trips, which is what a merge of a few rows costs).
    """
    if PDL:  # a programmatic dependent launch (runtime.dependent_launch): wait for the states' writes
        gdc_wait()
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_S)
    mask_m = offs_m < M
    mask_d = offs_d < HEAD_DIM
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    den = tl.zeros([BLOCK_M], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        ss = (s0 + offs_s).to(tl.int64)
        mask = (ss < S)[:, None] & mask_m[None, :]  # [BLOCK_S, BLOCK_M]
        lse = tl.load(Lses + ss[:, None] * stride_ls + offs_m[None, :] * stride_lm, mask=mask, other=float("-inf"))
        o = tl.load(Outs + ss[:, None, None] * stride_os + offs_m.to(tl.int64)[None, :, None] * stride_om
                    + offs_d[None, None, :], mask=mask[:, :, None] & mask_d[None, None, :], other=0.0).to(tl.float32)
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.math.exp2((lse - m_use[None, :]) * LOG2E)
        alpha = tl.math.exp2((m - m_use) * LOG2E)
        # an empty state (w = 0) adds nothing, whatever its o holds (even NaN)
        acc = acc * alpha[:, None] + tl.sum(tl.where(w[:, :, None] > 0.0, w[:, :, None] * o, 0.0), 0)
        den = den * alpha + tl.sum(w, 0)
        m = m_new
    out, lse_out = finish_merge(m, acc, den)
    tl.store(Out + offs_m.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    tl.store(Lse + offs_m, lse_out, mask=mask_m)


@triton.jit
def merge_unrolled_kernel(
    Outs, Lses, Out, Lse,  #
    M,  #
    stride_os, stride_om,  #
    stride_ls, stride_lm,  #
    S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):
    """``merge_states_kernel`` for a number of states ``S`` known when the launch is planned: one ``[BLOCK_M,
    BLOCK_D]`` tile per state, the loop over states unrolled, so every state's loads issue before the first is
    folded in and the fold stays within each thread (a ``[BLOCK_S, BLOCK_M, BLOCK_D]`` tile of several rows may
    put the states of one row on different warps)."""
    if PDL:
        gdc_wait()
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = offs_m.to(tl.int64)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    den = tl.zeros([BLOCK_M], tl.float32)
    for s in tl.static_range(S):
        lse = tl.load(Lses + s * stride_ls.to(tl.int64) + rows * stride_lm, mask=mask_m, other=float("-inf"))
        o = tl.load(Outs + s * stride_os.to(tl.int64) + rows[:, None] * stride_om + offs_d[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        m_new = tl.maximum(m, lse)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.math.exp2((lse - m_use) * LOG2E)
        alpha = tl.math.exp2((m - m_use) * LOG2E)
        # an empty state (w = 0) adds nothing, whatever its o holds (even NaN)
        acc = acc * alpha[:, None] + tl.where(w[:, None] > 0.0, w[:, None] * o, 0.0)
        den = den * alpha + w
        m = m_new
    out, lse_out = finish_merge(m, acc, den)
    tl.store(Out + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty), mask=mask)
    tl.store(Lse + offs_m, lse_out, mask=mask_m)


def merge_launch(S: int, M: int, head_dim: int, pdl: bool = False) -> tuple[tuple, dict]:
    """Grid and meta-parameters of ``merge_states_kernel`` for ``S`` states of ``M`` rows.

    Few rows (under 1024): one row per program of 4 warps, up to 4096 fp32 values (``BLOCK_S x
    BLOCK_D``) per load, since the merge of a few rows is a chain of round trips. Many rows: one row per
    program of one warp, up to 8 states per load. (H200, 2026-12-01: 3 states of 8192 rows of 128 took
    10.4 us against 27.4 with 8 rows per 4-warp program, whose reduction over states crosses warps;
    45 states of 128 rows 8.2 us with 32 states per load against 13.0 with 4.) ``pdl``: launched as a
    programmatic dependent launch of the launch that writes the states (``runtime.dependent_launch``).
    """
    block_d = triton.next_power_of_2(head_dim)
    if M >= 1024:
        block_s = min(triton.next_power_of_2(max(S, 1)), max(1, 8 * 128 // block_d))
        warps = 1
    else:
        block_s = min(triton.next_power_of_2(max(S, 1)), max(1, 4096 // block_d))
        warps = 4
    return (M,), dict(HEAD_DIM=head_dim, BLOCK_M=1, BLOCK_D=block_d, BLOCK_S=block_s, num_warps=warps,
                      **launch_meta(pdl))
