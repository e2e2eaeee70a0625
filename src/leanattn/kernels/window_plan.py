"""A sliding window's plan over one shared segment, in two launches (``ops/window_plan.py``).

Each query row attends a suffix ``[first, P_g)`` of its segment ``g``. :func:`window_bounds_kernel` finds every row's
``first``, every segment's latest ``first`` among its readers, and the lengths that follow from them;
:func:`window_tables_kernel` lays the one-token page tables. Computed with torch ops this took about 30 small
launches a level, each a few microseconds even when replayed from a CUDA graph.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def zero_counters(Counters, G, BLOCK: tl.constexpr):
    """``Counters [G]`` int32 zeroed by one program, then a CTA barrier: other threads of the program read and
    update them next (a CTA barrier orders global memory within the program)."""
    offs = tl.arange(0, BLOCK)
    for g0 in range(0, G, BLOCK):
        tl.store(Counters + g0 + offs, tl.zeros([BLOCK], tl.int32), mask=g0 + offs < G)
    tl.debug_barrier()


@triton.jit
def _segment(Ids, Seg, sample, mask, seg_const, G, HAS_IDS: tl.constexpr, HAS_SEG: tl.constexpr,
             BLOCK: tl.constexpr):
    # samples' segment ids (or 0) and those segments' lengths (or seg_const), int64; an id out of [0, G) (unchecked
    # input) reads no length and moves no segment's latest start (its row is then given a clamped id: a wrong
    # result, no access out of bounds)
    if HAS_IDS:
        g = tl.load(Ids + sample, mask=mask, other=0).to(tl.int64)
    else:
        g = tl.zeros([BLOCK], tl.int64)
    mask = mask & (g >= 0) & (g < G)
    if HAS_SEG:
        seg = tl.load(Seg + g, mask=mask, other=0).to(tl.int64)
    else:
        seg = tl.zeros([BLOCK], tl.int64) + seg_const
    return g, seg, mask


@triton.jit
def window_bounds_kernel(
    AfterIn, Ids, Seg, RowSample, RowToken, RowTokens,  #
    AfterOut, Latest, First, GRow, TailEnd, Rest,  #
    B, R, G, per, own_const, seg_const, window_left, W,  #
    HAS_AFTER: tl.constexpr, HAS_IDS: tl.constexpr, HAS_SEG: tl.constexpr, PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program. ``AfterIn [B]``: each sample's keys after this segment (its inner segments' and own; or
    ``own_const``); ``Ids [B]`` its segment (or 0); ``Seg [G]`` the segments' lengths (or ``seg_const``). Row ``r``
    is token ``RowToken[r]`` of ``RowTokens[r]`` of sample ``RowSample[r]`` (packed), else token ``r % per`` of
    ``per`` of sample ``r // per``. Writes int32 ``AfterOut [B]`` (``AfterIn`` plus this segment), ``First [R]``
    (in ``[0, Seg[g]]``), ``Latest [G]`` (the readers' greatest ``First``, 0 without readers), ``GRow [R]``,
    ``TailEnd [G] = Latest + clamp(Seg - Latest, 0, W)`` (the end of the tail every reader attends) and
    ``Rest [R] = Latest[GRow] - First``."""
    offs = tl.arange(0, BLOCK)
    for b0 in range(0, B, BLOCK):
        b = b0 + offs
        mb = b < B
        if HAS_AFTER:
            after = tl.load(AfterIn + b, mask=mb, other=0).to(tl.int64)
        else:
            after = tl.zeros([BLOCK], tl.int64) + own_const
        _, seg, _ = _segment(Ids, Seg, b, mb, seg_const, G, HAS_IDS, HAS_SEG, BLOCK)
        tl.store(AfterOut + b, (after + seg).to(tl.int32), mask=mb)
    # (the AfterOut stores above are read back by other threads too: the barrier orders them as well)
    zero_counters(Latest, G, BLOCK)
    for r0 in range(0, R, BLOCK):
        r = r0 + offs
        mr = r < R
        if PACKED:
            sample = tl.load(RowSample + r, mask=mr, other=0).to(tl.int64)
            token = tl.load(RowToken + r, mask=mr, other=0).to(tl.int64)
            tokens = tl.load(RowTokens + r, mask=mr, other=1).to(tl.int64)
        else:
            sample = (r // per).to(tl.int64)
            token = (r % per).to(tl.int64)
            tokens = tl.zeros([BLOCK], tl.int64) + per
        after = tl.load(AfterOut + sample, mask=mr, other=0, volatile=True).to(tl.int64)
        g, seg, ok = _segment(Ids, Seg, sample, mr, seg_const, G, HAS_IDS, HAS_SEG, BLOCK)
        # the row's position in the sequence is after - tokens + token counted from this segment's start
        first = tl.minimum(tl.maximum(after - tokens + token - window_left, 0), seg).to(tl.int32)
        tl.store(First + r, first, mask=mr)
        tl.store(GRow + r, tl.minimum(tl.maximum(g, 0), tl.maximum(G - 1, 0)).to(tl.int32), mask=mr)
        tl.atomic_max(Latest + g, first, mask=ok)
    tl.debug_barrier()
    for g0 in range(0, G, BLOCK):
        g = g0 + offs
        mg = g < G
        latest = tl.load(Latest + g, mask=mg, other=0, volatile=True)
        if HAS_SEG:
            seg = tl.load(Seg + g, mask=mg, other=0)
        else:
            seg = tl.zeros([BLOCK], tl.int32) + seg_const
        tl.store(TailEnd + g, latest + tl.minimum(tl.maximum(seg - latest, 0), W), mask=mg)
    for r0 in range(0, R, BLOCK):
        r = r0 + offs
        mr = r < R
        g = tl.load(GRow + r, mask=mr, other=0, volatile=True)
        latest = tl.load(Latest + g, mask=mr, other=0, volatile=True)
        first = tl.load(First + r, mask=mr, other=0, volatile=True)
        tl.store(Rest + r, latest - first, mask=mr)


@triton.jit
def _token_ids(g, slot, BlockTable, stride_bt, max_pages, step, page_size, pool_rows, PAGED: tl.constexpr):
    # token (g, slot) of the segments as a page of the one-token pool (ops/token_pages.py), clamped into the pool:
    # a slot no length reaches may name a table entry the caller left unset
    if PAGED:
        page = tl.load(BlockTable + g * stride_bt + tl.minimum(slot // page_size, max_pages - 1)).to(tl.int64)
        tok = page * step + slot % page_size
    else:
        tok = g * step + slot
    return tl.minimum(tl.maximum(tok, 0), pool_rows - 1)


@triton.jit
def _store_backward(TableRow, g, end, j, W, BlockTable, stride_bt, max_pages, step, page_size, pool_rows,
                    PAGED: tl.constexpr):
    # entries j of a one-token page table laid from slot end - 1 of segment g backwards (slots clamped at 0)
    tok = _token_ids(g, tl.maximum(end - 1 - j, 0), BlockTable, stride_bt, max_pages, step, page_size, pool_rows,
                     PAGED)
    tl.store(TableRow + j, tok.to(tl.int32), mask=j < W)


@triton.jit
def window_tables_kernel(
    Latest, GRow, BlockTable, Table,  #
    W, step, page_size, max_pages, pool_rows, stride_bt,  #
    PAGED: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Grid ``(R, cdiv(W, BLOCK_W))``: ``Table [R, W]`` int32, row ``i``'s one-token pages from its segment's
    ``Latest - 1`` backwards (slots clamped at 0)."""
    i = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    g = tl.load(GRow + i).to(tl.int64)
    latest = tl.load(Latest + g).to(tl.int64)
    _store_backward(Table + i.to(tl.int64) * W, g, latest, j, W, BlockTable, stride_bt, max_pages, step, page_size,
                    pool_rows, PAGED)


@triton.jit
def run_tables_kernel(
    Hi, Lo, BlockTable, Table, Lens,  #
    W, cap, step, page_size, max_pages, pool_rows, stride_bt,  #
    HAS_HI: tl.constexpr, PAGED: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Grid ``(B, cdiv(W, BLOCK_W))``: sequence ``b``'s run of tokens ``[Lo[b], Hi[b])`` (``Hi`` or ``cap``) as
    one-token pages of its own slots from ``Hi[b] - 1`` backwards, ``Table [B, W]`` int32 (slots clamped at 0, ids
    into the pool), and ``Lens [B] = clamp(Hi - Lo, 0, W)`` int32."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    if HAS_HI:
        hi = tl.load(Hi + b).to(tl.int64)
    else:
        hi = tl.zeros([], tl.int64) + cap
    _store_backward(Table + b * W, b, hi, j, W, BlockTable, stride_bt, max_pages, step, page_size, pool_rows, PAGED)
    if tl.program_id(1) == 0:
        lo = tl.load(Lo + b).to(tl.int64)
        tl.store(Lens + b, tl.minimum(tl.maximum(hi - lo, 0), W).to(tl.int32))
