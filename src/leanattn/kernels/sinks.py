"""Attention sinks merged into final states: each row's state ``(o, lse)`` and its head's sink state ``(0, sink)``
folded by the merge's own steps (``kernels/merge.py``), so a sink follows the merge's semantics exactly (an empty
state is the identity, a row with neither keys nor sink gives zeros and ``-inf``)."""
from __future__ import annotations

import triton
import triton.language as tl

from .merge import empty_fold, finish_merge, fold_state


@triton.jit
def sinks_kernel(
    Out, Lse, Sinks, NewOut, NewLse,  #
    M, H, stride_om, stride_nm,  #
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``Out [M, HEAD_DIM]``, ``Lse [M]`` fp32 natural-log, ``Sinks [H]`` (row ``m`` is head ``m % H``) ->
    ``NewOut [M, HEAD_DIM]`` in ``Out``'s dtype, ``NewLse [M]``."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask = mask_m[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = offs_m.to(tl.int64)
    lse = tl.load(Lse + rows, mask=mask_m, other=float("-inf"))
    o = tl.load(Out + rows[:, None] * stride_om + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    sink = tl.load(Sinks + offs_m % H, mask=mask_m, other=float("-inf")).to(tl.float32)
    m, acc, den = empty_fold(BLOCK_M, BLOCK_D)
    m, acc, den = fold_state(m, acc, den, lse, o)
    m, acc, den = fold_state(m, acc, den, sink, tl.zeros_like(o))
    out, new_lse = finish_merge(m, acc, den)
    tl.store(NewOut + rows[:, None] * stride_nm + offs_d[None, :], out.to(NewOut.dtype.element_ty), mask=mask)
    tl.store(NewLse + rows, new_lse, mask=mask_m)
