"""Query rows grouped by the shared segment they read, in one launch (``ops/bifurcated_paged.py``): a paged
segment's readers are the query tokens of one sequence of a packed :func:`leanattn.decode`, so each segment's rows
must lie together. As torch ops (argsort, counts, prefix sum, inverse permutation) this took about 15 launches."""
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
def _row_segment(Ids, RowSample, r, mr, per, G, PACKED: tl.constexpr):
    if PACKED:
        sample = tl.load(RowSample + r, mask=mr, other=0).to(tl.int64)
    else:
        sample = (r // per).to(tl.int64)
    g = tl.load(Ids + sample, mask=mr, other=0).to(tl.int64)
    return tl.minimum(tl.maximum(g, 0), tl.maximum(G - 1, 0)).to(tl.int32)


@triton.jit
def group_rows_kernel(
    Ids, RowSample, Next, Order, Back, Cu,  #
    R, G, per,  #
    PACKED: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program: query rows grouped by the segment they read, stably. Row ``r`` reads segment
    ``Ids[RowSample[r]]`` (packed) or ``Ids[r // per]`` (an id out of ``[0, G)``, unchecked input, is clamped in).
    Writes ``Cu [G + 1]`` int32 (each segment's rows start ``Cu[g]``), ``Back [R]`` int64 (row ``r``'s slot) and
    ``Order [R]`` int64 (the row in slot ``s``); ``Next [G]`` int32 is scratch."""
    offs = tl.arange(0, BLOCK)
    zero_counters(Next, G, BLOCK)
    # -- each segment's rows counted, then their exclusive prefix sum: the first slot of each segment
    for r0 in range(0, R, BLOCK):
        r = r0 + offs
        mr = r < R
        g = _row_segment(Ids, RowSample, r, mr, per, G, PACKED)
        tl.atomic_add(Next + g, tl.full([BLOCK], 1, tl.int32), mask=mr)
    tl.debug_barrier()
    tl.store(Cu, 0)
    total = 0
    for g0 in range(0, G, BLOCK):
        g = g0 + offs
        mg = g < G
        c = tl.load(Next + g, mask=mg, other=0, volatile=True)
        incl = tl.cumsum(c, 0) + total
        tl.store(Cu + g + 1, incl, mask=mg)
        total = total + tl.sum(c, 0)
        tl.debug_barrier()  # every count read before its slot overwrites it
        tl.store(Next + g, incl - c, mask=mg)
    tl.debug_barrier()
    # -- slots in row order: a row's slot is its segment's next one plus the rows of that segment before it in
    # this block; the segment's next slot then advances by the block's rows of it
    for r0 in range(0, R, BLOCK):
        r = r0 + offs
        mr = r < R
        g = _row_segment(Ids, RowSample, r, mr, per, G, PACKED)
        before = (g[:, None] == g[None, :]) & (offs[None, :] < offs[:, None]) & mr[None, :]
        slot = tl.load(Next + g, mask=mr, other=0, volatile=True) + tl.sum(before.to(tl.int32), 1)
        tl.store(Back + r, slot.to(tl.int64), mask=mr)
        tl.store(Order + slot, r.to(tl.int64), mask=mr)
        tl.debug_barrier()  # every row's next slot read before any advances
        tl.atomic_add(Next + g, tl.full([BLOCK], 1, tl.int32), mask=mr)
        tl.debug_barrier()
