"""Own tokens of several (sample, kv head) rows in one software-pipelined tile loop (states path, opt-in).

With a few own tokens per sample (256 in the benchmark: 4 tiles a row), a program per row spends much
of its time filling and draining its tile pipeline. ``own_rows_program`` gives one program ``R`` rows
and walks their ``R x T`` tiles (``T`` tiles at capacity) as one loop, so loads run ahead across the
row boundaries. Each tile reloads its row's query block (a few KB, from L2 after the first tile); the
state restarts at a row's first tile and is written, normalised, at its last (``T`` tiles per row
whatever the length: tiles past a row's length are masked and leave the state unchanged). Contiguous
own caches only. Opt-in through the fourteenth field of ``LEANATTN_BIFURCATED_CONFIG``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .attend import accumulate, softmax_step
from .decode import LN2, load_q_rows


@triton.jit
def own_rows_program(
    o, Q, K, V, StO, StL, Seqlens,  #
    stride_qb, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
    stride_ob, stride_oh, stride_lb,  #
    qk_scale, capacity, n_rows,  #
    GROUP: tl.constexpr, N_HB: tl.constexpr, ROWS: tl.constexpr,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    HAS_SEQLENS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, R: tl.constexpr,
):
    """Rows ``[o*R, o*R + R)`` (of ``n_rows``; row ``i`` is sequence ``i // ROWS``, kv head
    ``(i % ROWS) // N_HB``, head block ``i % N_HB``): write each row's normalised state at
    ``StO + b*stride_ob + head*stride_oh`` and ``StL + b*stride_lb + head`` (fp32, natural-log LSE)."""
    T = tl.maximum(tl.cdiv(capacity, BLOCK_N), 1)
    row0 = o * R
    offs_r = tl.arange(0, R)
    rows = row0 + offs_r
    if HAS_SEQLENS:
        lens_r = tl.load(Seqlens + rows // ROWS, mask=rows < n_rows, other=0)
        lens_r = tl.minimum(lens_r, capacity)
    else:
        lens_r = tl.where(rows < n_rows, capacity, 0)
    n_tiles = tl.minimum(n_rows - row0, R) * T
    offs_d = tl.arange(0, HEAD_DIM)
    offs_g = tl.arange(0, BLOCK_H)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for j in range(0, n_tiles):
        r = j // T
        t = j - r * T
        row = row0 + r
        b = row // ROWS
        kvh = (row % ROWS) // N_HB
        hb = row % N_HB
        seqlen = tl.sum(tl.where(offs_r == r, lens_r, 0), 0)
        # -- a row's first tile restarts the state --
        first = t == 0
        m_i = tl.where(first, float("-inf"), m_i)
        l_i = tl.where(first, 0.0, l_i)
        acc = tl.where(first, 0.0, acc)
        heads = kvh * GROUP + hb * BLOCK_H + offs_g
        valid_h = hb * BLOCK_H + offs_g < GROUP
        q = load_q_rows(Q, b, kvh, hb, stride_qb, stride_qh, GROUP, HEAD_DIM, BLOCK_H, UPCAST)
        offs_n = t * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < seqlen
        k_rows = b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh + offs_n.to(tl.int64) * stride_kn
        v_rows = b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh + offs_n.to(tl.int64) * stride_vn
        k = tl.load(K + k_rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        p, alpha, m_i, l_i = softmax_step(q, k, mask_n, m_i, l_i, qk_scale, UPCAST, DOT_PRECISION)
        v = tl.load(V + v_rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        acc = accumulate(acc, p, alpha, v, UPCAST, DOT_PRECISION)
        # -- a row's last tile writes its state (an empty row: zeros and -inf): store_final's normalisation,
        # with stores masked to that tile; calling store_final under `if t == T - 1` compiled to 20-40 more
        # registers (offline, Triton 3.6, sm_90a) --
        last = t == T - 1
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
        tl.store(StO + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 acc / l_safe[:, None], mask=valid_h[:, None] & last)
        tl.store(StL + b.to(tl.int64) * stride_lb + heads, lse, mask=valid_h & last)
