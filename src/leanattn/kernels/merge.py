"""Merge of stacked attention states ``(o_s, lse_s)`` along a leading split axis.

    lse = log(sum_s exp(lse_s));   o = sum_s exp(lse_s - lse) * o_s

``(0, -inf)`` is the identity: a state with ``lse = -inf`` contributes nothing, whatever its
``o`` holds, and a row whose states are all empty gives ``(0, -inf)``.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def merge_states_kernel(
    Outs, Lses, Out, Lse,  #
    S, M,  #
    stride_os, stride_om,  #
    stride_ls, stride_lm,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``Outs [S, M, HEAD_DIM]``, ``Lses [S, M]`` fp32 natural-log -> ``Out [M, HEAD_DIM]``, ``Lse [M]``."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_d < HEAD_DIM)[None, :]
    # -- pass 1: the largest lse of each row --
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(S):
        lse = tl.load(Lses + s * stride_ls + offs_m * stride_lm, mask=mask_m, other=float("-inf"))
        m = tl.maximum(m, lse)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    # -- pass 2: weighted sum --
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    den = tl.zeros([BLOCK_M], tl.float32)
    o_ptrs = Outs + offs_m.to(tl.int64)[:, None] * stride_om + offs_d[None, :]
    for s in range(S):
        lse = tl.load(Lses + s * stride_ls + offs_m * stride_lm, mask=mask_m, other=float("-inf"))
        w = tl.math.exp2((lse - m_use) * LOG2E)
        o = tl.load(o_ptrs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.where(w[:, None] > 0.0, w[:, None] * o, 0.0)
        den += w
        o_ptrs += stride_os
    empty = den == 0.0
    den_safe = tl.where(empty, 1.0, den)
    out = acc / den_safe[:, None]
    lse_out = tl.where(empty, float("-inf"), m_use + tl.math.log2(den_safe) * LN2)
    tl.store(Out + offs_m.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty), mask=mask)
    tl.store(Lse + offs_m, lse_out, mask=mask_m)
