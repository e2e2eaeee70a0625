"""How the query rows of a decode-style kernel map onto tensors and keys.

A kernel stacks the query heads of one GQA group as the rows of a ``tl.dot`` so that K and V are read once per
group. With several query tokens a sequence (``QLEN``, as in speculative decoding's verification step) the rows are
every (token, head) pair of the group, token-major: row ``i`` is token ``i // GROUP`` and query head
``kv_head * GROUP + i % GROUP``, and the tokens are the last ``QLEN`` positions of the sequence.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_offsets(kvh, offs_g, stride_t, stride_h, GROUP: tl.constexpr, QLEN: tl.constexpr):
    """Offsets of the query rows ``offs_g`` of kv head ``kvh`` in a tensor of strides ``stride_t`` (query token)
    and ``stride_h`` (head): row ``i`` is token ``i // GROUP``, query head ``kvh*GROUP + i % GROUP``, so the
    ``QLEN`` tokens of a GQA group share the rows of one ``tl.dot`` and its K and V reads."""
    if QLEN == 1:
        offs = (kvh * GROUP + offs_g) * stride_h
    else:
        offs = (offs_g // GROUP) * stride_t + (kvh * GROUP + offs_g % GROUP) * stride_h
    return offs


@triton.jit
def key_ranges(seqlen, hb, window, GROUP: tl.constexpr, QLEN: tl.constexpr, BLOCK_H: tl.constexpr,
               CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """``(lo, hi)``, ``[BLOCK_H]`` each: the keys ``[lo, hi)`` each query row of head block ``hb`` attends when a
    sequence of ``seqlen`` keys ends with its ``QLEN`` query tokens (``QLEN > 1``; token ``s`` at position
    ``seqlen - QLEN + s``). ``CAUSAL``: up to its position; ``WINDOW``: from ``window`` keys before the first
    token's position plus ``s`` (the launch's ``window`` is the row's union: ``window_left + QLEN - 1``)."""
    tok = (hb * BLOCK_H + tl.arange(0, BLOCK_H)) // GROUP
    if CAUSAL:
        hi = seqlen - (QLEN - 1) + tok
    else:
        hi = seqlen + 0 * tok
    if WINDOW:
        lo = seqlen - 1 - window + tok
    else:
        lo = 0 * tok
    return lo, hi


# the largest magnitude taken into log2 units (times log2(e) < 3.4e38, fp32's largest)
LOG2_LIMIT = tl.constexpr(2e38)


@triton.jit
def finite_log2(x):
    """``x`` (natural-log units, fp32) in log2 units, its magnitude first bounded by ``LOG2_LIMIT`` so that the
    product stays finite (an inf state or slope turns into NaN at its first rescale or zero distance)."""
    return tl.minimum(tl.maximum(x, -LOG2_LIMIT), LOG2_LIMIT) * 1.4426950408889634


@triton.jit
def alibi_rows(Alibi, b, kvh, hb, seqlen, stride_ab, GROUP: tl.constexpr, QLEN: tl.constexpr, BLOCK_H: tl.constexpr,
               ALIBI: tl.constexpr):
    """``(slope, pos)``, ``[BLOCK_H]`` each: the ALiBi slope of each query row's head, ``Alibi[b * stride_ab + head]``
    in log2 units (0 past the real rows), and the row's position, ``seqlen - QLEN + token`` (a packed query's
    slots are right-aligned on its tokens, ``packed_slots``, so the same). ``(0.0, 0)`` without ``ALIBI``."""
    if ALIBI:
        offs_g = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        slope = tl.load(Alibi + b.to(tl.int64) * stride_ab + kvh * GROUP + offs_g % GROUP, mask=offs_g < GROUP * QLEN,
                        other=0.0)
        # bounded so that log2 units stay finite: a slope past 2.3e38 became inf, and inf * 0 (the query's own key)
        # NaN (review); the keys one step away or more keep a bias of -inf or near it, as they would
        return finite_log2(slope), seqlen - QLEN + offs_g // GROUP
    else:
        return 0.0, 0


@triton.jit
def sink_rows(Sinks, kvh, hb, first, GROUP: tl.constexpr, QLEN: tl.constexpr, BLOCK_H: tl.constexpr,
              SINK: tl.constexpr):
    """``[BLOCK_H]``: each query row's attention sink, ``Sinks[head]`` in log2 units, in the range that starts its
    row (``first``) and ``-inf`` in the others and past the real rows (``kernels/attend.initial_state``); ``0.0``
    without ``SINK``."""
    if SINK:
        offs_g = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        sink = tl.load(Sinks + kvh * GROUP + offs_g % GROUP, mask=(offs_g < GROUP * QLEN) & first,
                       other=float("-inf"))
        # (-inf stays -inf: no sink)
        return tl.where(sink == float("-inf"), sink, finite_log2(sink.to(tl.float32)))
    else:
        return 0.0


@triton.jit
def packed_slots(CuQ, b, QLEN: tl.constexpr):
    """``(start, first)`` of sequence ``b`` of a packed query (``cu_seqlens_q``: its tokens are rows
    ``[CuQ[b], CuQ[b+1])`` of a ``(total_q, Hq, D)`` tensor). Its ``QLEN`` query slots are right-aligned on its
    tokens, slot ``s`` being row ``start + s`` (``start = CuQ[b+1] - QLEN``, int64, negative for a short first
    sequence), so that slot ``s`` sits at position ``seqlen - QLEN + s`` as in a padded query and ``key_ranges``
    serves both; the slots before ``first = QLEN - (CuQ[b+1] - CuQ[b])`` hold no token of ``b`` and are neither
    loaded nor written."""
    end = tl.load(CuQ + b + 1)
    first = QLEN - (end - tl.load(CuQ + b))
    return (end - QLEN).to(tl.int64), first


@triton.jit
def padding_only(CuQ, b, hb, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, QLEN: tl.constexpr):
    """Whether head block ``hb`` of sequence ``b`` of a packed query holds only slots before the sequence's first
    token (``packed_slots``): none of its rows is written, so its tiles need not be read. With many slots (a prefill
    chunk among one-token sequences) most head blocks of the short sequences are such; the schedule still counts
    their tiles, which then cost their programs no loads."""
    _, pad = packed_slots(CuQ, b, QLEN)
    return (hb + 1) * BLOCK_H <= GROUP * pad


@triton.jit
def packed_window(CuQ, b, window, QLEN: tl.constexpr, valid=True):
    """The sliding window whose keys hold those of every real token of sequence ``b`` of a packed query (``b`` a
    scalar, or a vector with ``valid`` its real entries): ``window`` (the launch's, ``window_left + QLEN - 1``, the
    union over ``QLEN`` slots) less the slots before its first token, ``window_left + max(n_b, 1) - 1``. A row's tiles
    start at this window's first key, so keys before the first real token's window are never loaded (their pages
    may be freed) however many slots the launch has; the per-row ranges (``key_ranges``) keep the launch's."""
    n = tl.load(CuQ + b + 1, mask=valid, other=0) - tl.load(CuQ + b, mask=valid, other=0)
    return window - tl.minimum(QLEN - n, QLEN - 1)
