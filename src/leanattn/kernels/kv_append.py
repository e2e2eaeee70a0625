"""One launch for a decode step's KV append: the new keys and values written into the cache at each sequence's
length, the keys (and the query) turned by rotary embedding on the way (``ops/kv_append.py``, ``ops/rotary.py``).

Programs ``(i, j)``, ``i`` in ``[0, B * T)``, each take one new token ``(b, t)``: its key and value rows of heads
``[j * BLOCK_H, (j + 1) * BLOCK_H)``, written at position ``lens[b] + t`` of row ``b`` of a contiguous cache, or of
page ``block_table[b, pos // page_size]`` (a position outside the capacity writes nothing). Programs ``i`` in
``[B * T, B * T + B * Lq)`` each rotate that block of one query token's heads into a new tensor. Rotary positions count
from ``rot_lens[b]`` (``lens`` itself for decode; the shared prefix's tokens added for a shared-prefix call, whose own
cache starts after them).

A rotated element ``d`` of the first ``2 * HALF`` is ``x[d] * cos + sign * x[partner] * sin`` in float32, rounded
once: the partner of ``d`` is ``d +- HALF`` (GPT-NeoX halves) or ``d ^ 1`` (GPT-J pairs, ``INTERLEAVED``).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rotated(X, rows, offs_d, valid, Cos, Sin, pos, n_rows, stride_cos, stride_cos_d,
             HALF: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Rows ``X + rows`` (``[BLOCK_H, BLOCK_D]`` offsets, ``valid`` their mask) with their first ``2 * HALF`` dims
    turned by the angles of position ``pos`` (of ``n_rows`` in the tables: one outside them, from lengths that were
    not checked, reads no row and turns nothing); the rest as loaded. In ``X``'s dtype."""
    x = tl.load(X + rows + offs_d[None, :], mask=valid, other=0.0)
    if HALF > 0:
        turn = offs_d < 2 * HALF
        if INTERLEAVED:
            partner = offs_d ^ 1
            angle = offs_d // 2
            sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)
        else:
            partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
            angle = offs_d % HALF
            sign = tl.where(offs_d < HALF, -1.0, 1.0)
        xp = tl.load(X + rows + partner[None, :], mask=valid & turn[None, :], other=0.0).to(tl.float32)
        row = pos.to(tl.int64) * stride_cos
        in_table = turn & (pos >= 0) & (pos < n_rows)
        c = tl.load(Cos + row + angle * stride_cos_d, mask=in_table, other=1.0).to(tl.float32)
        s = tl.load(Sin + row + angle * stride_cos_d, mask=in_table, other=0.0).to(tl.float32)
        y = x.to(tl.float32) * c[None, :] + (sign * s)[None, :] * xp
        x = tl.where(turn[None, :], y, x.to(tl.float32)).to(x.dtype)
    return x


@triton.jit
def append_kv_kernel(
    K, V, KC, VC, Q, QOut, Lens, RotLens, BlockTable, Cos, Sin,  #
    stride_kb, stride_kt, stride_kh,  #
    stride_vb, stride_vt, stride_vh,  #
    stride_kcp, stride_kcs, stride_kch,  #
    stride_vcp, stride_vcs, stride_vch,  #
    stride_qb, stride_qt, stride_qh,  #
    stride_ob, stride_ot, stride_oh,  #
    stride_bt, stride_btp, stride_lens, stride_rot, stride_cos, stride_cos_d,  #
    n_kv, T, Lq, HKV, HQ, D, capacity, page_size, max_pages, n_rows,  #
    HALF: tl.constexpr, INTERLEAVED: tl.constexpr, PER_TOKEN: tl.constexpr, PAGED: tl.constexpr,  #
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    # heads in blocks of BLOCK_H along the grid's second axis, int64: a head-major cache's head stride times a head
    # passes 2**31 where the cache is large
    offs_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    if pid < n_kv:
        b = pid // T
        t = pid % T
        pos = tl.load(Lens + b * stride_lens) + t
        turn_at = tl.load(RotLens + b * stride_rot) + t
        # a position outside the capacity (lengths unchecked) writes nothing, rather than another sequence's slot
        inside = (pos >= 0) & (pos < capacity)
        valid = (offs_h[:, None] < HKV) & (offs_d[None, :] < D) & inside
        k = _rotated(K + b.to(tl.int64) * stride_kb + t.to(tl.int64) * stride_kt, offs_h[:, None] * stride_kh,
                     offs_d, valid, Cos, Sin, turn_at, n_rows, stride_cos, stride_cos_d, HALF, INTERLEAVED)
        v = tl.load(V + b.to(tl.int64) * stride_vb + t.to(tl.int64) * stride_vt + offs_h[:, None] * stride_vh
                    + offs_d[None, :], mask=valid, other=0.0)
        if PAGED:
            col = tl.minimum(tl.maximum(pos, 0) // page_size, max_pages - 1)
            page = tl.load(BlockTable + b.to(tl.int64) * stride_bt + col * stride_btp, mask=inside, other=0)
            page = page.to(tl.int64)
            slot = (pos % page_size).to(tl.int64)
        else:
            page = b.to(tl.int64)
            slot = pos.to(tl.int64)
        tl.store(KC + page * stride_kcp + slot * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :], k,
                 mask=valid)
        tl.store(VC + page * stride_vcp + slot * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :], v,
                 mask=valid)
    else:
        r = pid - n_kv
        b = r // Lq
        s = r % Lq
        # (a name of its own: a variable set in both branches of a runtime if must keep one type, and the rotary
        # positions may be int64 where the lengths are int32)
        if PER_TOKEN:
            q_at = tl.load(RotLens + b * stride_rot) + s
        else:
            q_at = tl.load(RotLens + b * stride_rot)
        valid = (offs_h[:, None] < HQ) & (offs_d[None, :] < D)
        q = _rotated(Q + b.to(tl.int64) * stride_qb + s.to(tl.int64) * stride_qt, offs_h[:, None] * stride_qh,
                     offs_d, valid, Cos, Sin, q_at, n_rows, stride_cos, stride_cos_d, HALF, INTERLEAVED)
        tl.store(QOut + b.to(tl.int64) * stride_ob + s.to(tl.int64) * stride_ot + offs_h[:, None] * stride_oh
                 + offs_d[None, :], q, mask=valid)
