"""Layout kernels of sparse causal attention: token order, group ids and block ranges on the GPU.

The layout is the one ``sparse/layout.py`` defines (and computes with torch ops, as the
reference): every (batch, head) row of queries and of keys is put in a stable order by integer
*group* (bucket id; in QK mode kept tokens are group 0, dropped queries group 1 and dropped keys
group 2), so that the composite key ``group * N + position`` increases along each sorted row.
Here it takes two launches instead of ~100 small torch ops, which made a call host-bound:

* ``qk_compact_kernel`` (QK mode), grid ``(B*H, 2)``: one program per row and side compacts the
  keep mask with a prefix sum (kept tokens first, then dropped ones, each in time order). That
  is the stable sort by group, without a sort. Hash mode sorts its bucket ids with one stable
  ``torch.sort`` instead.
* ``block_ranges_kernel``, grid ``(cdiv(N, CHUNK), B*H)``: each program takes ``CHUNK`` sorted
  positions of one row, copies that part of the sorted order into the int32 layout (hash mode)
  and computes ``[lo, full_lo, full_hi, hi]`` for its query blocks (in key blocks, for the
  forward and dQ) and its key blocks (in query blocks, for dK/dV) by binary search in the other
  side's sorted composite keys, with the rules of ``layout.block_ranges_q`` / ``_kv``.

Grouped-query attention: the keys have ``B*Hkv`` rows (``Hkv = H / GROUP``) and query row ``(b, h)`` is paired
with key row ``(b, h // GROUP)``; the block ranges stay per query row, both sides' (each query head its own ranges
over its kv head's key blocks, and the reverse).

Positions are int32 (``N < 2**31``); composite keys are int64.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _compact(Keep, stride_n, Perm, Group, Live, N, DEAD: tl.constexpr, CHUNK: tl.constexpr):
    """Stable compaction of one row: ``Perm[r]`` is the position of the ``r``-th token in the
    order (kept in time order, then dropped in time order); ``Group[r]`` 0 or ``DEAD``;
    ``Live`` the number kept."""
    offs = tl.arange(0, CHUNK)
    n_kept = 0
    for start in range(0, N, CHUNK):  # first pass: the dropped tokens are ranked after all kept ones
        n = start + offs
        keep = tl.load(Keep + n.to(tl.int64) * stride_n, mask=n < N, other=0).to(tl.int32)
        n_kept += tl.sum(keep, 0)
    kept_before = 0
    for start in range(0, N, CHUNK):
        n = start + offs
        valid = n < N
        keep = tl.load(Keep + n.to(tl.int64) * stride_n, mask=valid, other=0).to(tl.int32)
        kept = kept_before + tl.cumsum(keep, 0) - keep  # kept tokens strictly before n
        rank = tl.where(keep != 0, kept, n_kept + n - kept)
        tl.store(Perm + rank, n, mask=valid)
        tl.store(Group + rank, tl.where(keep != 0, 0, DEAD), mask=valid)
        kept_before += tl.sum(keep, 0)
    tl.store(Live, n_kept)


@triton.jit
def qk_compact_kernel(
    QKeep, KKeep, QPerm, KPerm, QGroup, KGroup, Live,  #
    stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh,  #
    H, N, HK, BHK,  #
    CHUNK: tl.constexpr,
):
    """QK-mode order of row ``program_id(0)`` of the queries (``program_id(1) == 0``) or keys (rows past the keys'
    ``BHK`` do nothing).

    ``QKeep``: ``(B, N, H)``, ``KKeep``: ``(B, N, HK)`` bool, any strides. Writes ``QPerm, QGroup``: ``(B*H, N)``
    int32 (``KPerm, KGroup``: ``(B*HK, N)``); ``Live``: ``B*H + B*HK`` int32 counts of kept queries, kept keys.
    """
    bh = tl.program_id(0)
    BH = tl.num_programs(0)
    row = bh.to(tl.int64) * N
    if tl.program_id(1) == 0:
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        keep = QKeep + b * stride_qb + h * stride_qh
        _compact(keep, stride_qn, QPerm + row, QGroup + row, Live + bh, N, 1, CHUNK)
    elif bh < BHK:
        b = (bh // HK).to(tl.int64)
        h = (bh % HK).to(tl.int64)
        keep = KKeep + b * stride_kb + h * stride_kh
        _compact(keep, stride_kn, KPerm + row, KGroup + row, Live + BH + bh, N, 2, CHUNK)


@triton.jit
def _key(Group, Perm, r, N, mask):
    """Composite keys ``group * N + position`` of sorted tokens ``r`` (int64)."""
    g = tl.load(Group + r, mask=mask, other=0).to(tl.int64)
    p = tl.load(Perm + r, mask=mask, other=0).to(tl.int64)
    return g * N + p


@triton.jit
def _count_below3(Group, Perm, N, n_steps, t0, t1, t2):
    """How many of a row's sorted keys are below ``t0``, ``t1``, ``t2`` (int64 vectors).

    Three binary searches in one loop, so that their loads are in flight together; ``n_steps``
    is ``N.bit_length()``, so the steps ``2**(n_steps-1), ..., 1`` can reach any count in ``[0, N]``.
    """
    c0 = tl.zeros_like(t0)
    c1 = tl.zeros_like(t1)
    c2 = tl.zeros_like(t2)
    for s in range(n_steps):
        step = 1 << (n_steps - 1 - s)
        n0 = c0 + step
        n1 = c1 + step
        n2 = c2 + step
        ok0 = n0 <= N
        ok1 = n1 <= N
        ok2 = n2 <= N
        k0 = _key(Group, Perm, n0 - 1, N, ok0)
        k1 = _key(Group, Perm, n1 - 1, N, ok1)
        k2 = _key(Group, Perm, n2 - 1, N, ok2)
        c0 = tl.where(ok0 & (k0 < t0), n0, c0)
        c1 = tl.where(ok1 & (k1 < t1), n1, c1)
        c2 = tl.where(ok2 & (k2 < t2), n2, c2)
    return c0, c1, c2


@triton.jit
def _block_ends(Group, Perm, blk, N, live, BLOCK: tl.constexpr):
    """For blocks ``blk`` of ``BLOCK`` sorted tokens: composite keys of the first token and of the
    last live one, whether the block has a live token, whether it lies in one group (up to its
    last token, live or not), and whether it exists."""
    first = blk.to(tl.int64) * BLOCK
    valid = first < N
    last = tl.minimum(first + BLOCK, N) - 1
    last_live = tl.maximum(tl.minimum(last, live - 1), 0)
    key_first = _key(Group, Perm, first, N, valid)
    key_last = _key(Group, Perm, last_live, N, valid)
    key_end = _key(Group, Perm, last, N, valid)
    return key_first, key_last, first < live, key_first // N == key_end // N, valid


@triton.jit
def _store_ranges(Ranges, blk, valid, e_lo, e_hi, f_lo, f_hi, single, BLOCK: tl.constexpr):
    """Element ranges -> block ranges ``[lo, full_lo, full_hi, hi]`` of ``BLOCK``, as
    ``layout._finish``: ``[e_lo, e_hi)`` holds every partner, ``[f_lo, f_hi)`` the partners of
    every member (used only where ``single``); empty ranges become ``[0, 0, 0, 0]``."""
    some = e_hi > e_lo
    lo = tl.where(some, e_lo // BLOCK, 0)
    hi = tl.where(some, (e_hi + BLOCK - 1) // BLOCK, 0)
    flo = (f_lo + BLOCK - 1) // BLOCK
    fhi = f_hi // BLOCK
    full = single & some & (fhi > flo)
    flo = tl.where(full, flo, lo)
    fhi = tl.where(full, fhi, lo)
    base = Ranges + blk.to(tl.int64) * 4
    tl.store(base, lo.to(tl.int32), mask=valid)
    tl.store(base + 1, flo.to(tl.int32), mask=valid)
    tl.store(base + 2, fhi.to(tl.int32), mask=valid)
    tl.store(base + 3, hi.to(tl.int32), mask=valid)


@triton.jit
def _copy_order(SrcPerm, SrcGroup, Perm, Group, offs, N):
    valid = offs < N
    tl.store(Perm + offs, tl.load(SrcPerm + offs, mask=valid).to(tl.int32), mask=valid)
    tl.store(Group + offs, tl.load(SrcGroup + offs, mask=valid).to(tl.int32), mask=valid)


@triton.jit
def block_ranges_kernel(
    SrcQPerm, SrcQGroup, SrcKPerm, SrcKGroup,  #
    QPerm, QGroup, KPerm, KGroup, Live, QRanges, KVRanges,  #
    src_k_off, N, n_q, n_kv, n_steps, H, GROUP,  #
    HAS_DEAD: tl.constexpr, COPY: tl.constexpr, CHUNK: tl.constexpr,  #
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M_BWD: tl.constexpr, BLOCK_N_BWD: tl.constexpr,
):
    """Block ranges of sorted positions ``[t * CHUNK, (t + 1) * CHUNK)`` of query row ``bh`` (of ``H`` heads) and
    its key row ``kv = (bh // H) * (H // GROUP) + bh % H // GROUP``.

    ``Src*``: the sorted order, ``(B*H, N)`` queries and ``(B*H/GROUP, N)`` keys (any integer dtypes; positions and
    group ids); the key side's rows start ``src_k_off`` elements after ``SrcKPerm`` / ``SrcKGroup``.
    ``COPY``: also write that chunk of it as int32 into ``QPerm, QGroup, KPerm, KGroup`` (the keys by the first
    query head of their group).
    ``HAS_DEAD`` (QK mode): only the first ``Live[bh]`` queries and ``Live[B*H + kv]`` keys of a
    row are live; the rest match nothing and are left out of the ranges. Otherwise every token
    is live, and ``Live`` is set to ``N``.
    ``QRanges``: ``(B*H, n_q, 4)`` int32, query blocks of ``BLOCK_M`` in key blocks of
    ``BLOCK_N``; ``KVRanges``: ``(B*H, n_kv, 4)``, key blocks of ``BLOCK_N_BWD`` in query blocks
    of ``BLOCK_M_BWD``. ``CHUNK`` is a multiple of ``BLOCK_M`` and ``BLOCK_N_BWD``.
    """
    t = tl.program_id(0)
    bh = tl.program_id(1)
    BH = tl.num_programs(1)
    row = bh.to(tl.int64) * N
    kv = (bh // H) * (H // GROUP) + bh % H // GROUP
    lead = bh % H % GROUP == 0  # the first query head of its group writes its key row
    kv_row = kv.to(tl.int64) * N
    k_row = kv_row + src_k_off
    if COPY:
        offs = t * CHUNK + tl.arange(0, CHUNK)
        _copy_order(SrcQPerm + row, SrcQGroup + row, QPerm + row, QGroup + row, offs, N)
        if lead:
            _copy_order(SrcKPerm + k_row, SrcKGroup + k_row, KPerm + kv_row, KGroup + kv_row, offs, N)
    if HAS_DEAD:
        q_live = tl.load(Live + bh)
        k_live = tl.load(Live + BH + kv)
    else:
        q_live = N
        k_live = N
        if t == 0:  # every element of the layout buffer is written
            tl.store(Live + bh, N)
            if lead:
                tl.store(Live + BH + kv, N)
    Qg, Qp, Kg, Kp = SrcQGroup + row, SrcQPerm + row, SrcKGroup + k_row, SrcKPerm + k_row

    # query blocks: keys visible to the block's live queries have composite keys in
    # [g_first * N, key_last]; keys visible to every query of a one-group block, [g * N, key_first]
    i = t * (CHUNK // BLOCK_M) + tl.arange(0, CHUNK // BLOCK_M)
    key_first, key_last, has_live, single, valid = _block_ends(Qg, Qp, i, N, q_live, BLOCK_M)
    e_lo, e_hi, f_hi = _count_below3(Kg, Kp, N, n_steps, key_first // N * N, key_last + 1, key_first + 1)
    e_hi = tl.where(has_live, e_hi, 0)
    _store_ranges(QRanges + bh.to(tl.int64) * n_q * 4, i, valid, e_lo, e_hi, e_lo, f_hi, single, BLOCK_N)

    # key blocks: queries seeing some live key of the block are in [key_first, (g_last + 1) * N);
    # queries seeing every key of a one-group block, in [key_last, (g + 1) * N)
    j = t * (CHUNK // BLOCK_N_BWD) + tl.arange(0, CHUNK // BLOCK_N_BWD)
    key_first, key_last, has_live, single, valid = _block_ends(Kg, Kp, j, N, k_live, BLOCK_N_BWD)
    e_lo, e_hi, f_lo = _count_below3(Qg, Qp, N, n_steps, key_first, (key_last // N + 1) * N, key_last)
    e_hi = tl.where(has_live, e_hi, 0)
    _store_ranges(KVRanges + bh.to(tl.int64) * n_kv * 4, j, valid, e_lo, e_hi, f_lo, e_hi, single, BLOCK_M_BWD)
