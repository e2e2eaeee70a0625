"""L2 prefetch of the first K/V tiles a stream-K program will read, issued before its schedule is known.

A program's first K/V load waits for its schedule: with ``cache_seqlens`` the lengths' load and the search
(``schedules/stream_k.schedule``), then the piece's set-up. Every program of a one-wave launch pays that
before the memory system has anything to do. The host knows the cut the lengths give when every sequence fills
its cache; each program asks the L2 for its first tiles under that cut at once (PTX ``prefetch.global.L2``, a
hint: no register waits for it), so that its first loads find them there when the lengths are those. When they
are not, the program reads what it needs as before, and the hint cost some bandwidth of an idle memory system.
Contiguous caches only: a paged cache's addresses need the block table's load first.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..schedules.stream_k import range_start

# the bytes one prefetch asks for: one L2 line
LINE_BYTES: tl.constexpr = tl.constexpr(128)


@triton.jit
def prefetch_l2(ptrs):
    """One L2 prefetch per pointer of ``ptrs`` (any shape)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def prefetch_rows(Base, tok0, limit, stride_n, TOKENS: tl.constexpr, ROW_BYTES: tl.constexpr):
    """Prefetch ``TOKENS`` rows of ``ROW_BYTES`` bytes (a multiple of a line) from token ``tok0`` of ``Base``
    (token stride ``stride_n`` elements); tokens past ``limit - 1`` ask for row ``limit - 1`` again, so that
    every address lies in the cache."""
    PER_LINE: tl.constexpr = LINE_BYTES * 8 // Base.dtype.element_ty.primitive_bitwidth
    LINES: tl.constexpr = ROW_BYTES // LINE_BYTES
    toks = tl.minimum(tok0 + tl.arange(0, TOKENS), limit - 1)
    cols = tl.arange(0, LINES) * PER_LINE
    prefetch_l2(Base + toks.to(tl.int64)[:, None] * stride_n + cols[None, :])


@triton.jit
def prefetch_first_tiles(
    K, V, pid, capacity, pf_g, pf_t, pf_high, pf_n, pf_k,  #
    stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
    ROWS: tl.constexpr, N_HB: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, TILES: tl.constexpr,
):
    """Prefetch the first ``TILES`` K and V tiles of program ``pid`` under the cut of full caches: ``pf_g``
    programs, the first ``pf_high`` of ``pf_t`` tiles and the rest of ``pf_t - 1``, over rows of ``pf_n``
    tiles of ``capacity`` tokens (``prefetch_args``). ``pf_k > 0``: the launched programs run the schedule's
    across rows (``schedules/stream_k.across_rows``), ``pf_k`` pieces a row. ``pid >= pf_g`` asks for
    nothing; neither do tiles past the row's end."""
    if pf_k > 0:
        heads = pf_g // pf_k
        pid = (pid % heads) * pf_k + pid // heads
    if pid < pf_g:
        s = range_start(pid, pf_t, pf_high)
        row = s // pf_n
        tok0 = (s - row * pf_n) * BLOCK_N
        b = (row // ROWS).to(tl.int64)
        kvh = (row % ROWS) // N_HB
        limit = tl.minimum(capacity, tok0 + TILES * BLOCK_N)
        ROW_BYTES: tl.constexpr = HEAD_DIM * K.dtype.element_ty.primitive_bitwidth // 8
        prefetch_rows(K + b * stride_kb + kvh * stride_kh, tok0, limit, stride_kn, TILES * BLOCK_N, ROW_BYTES)
        prefetch_rows(V + b * stride_vb + kvh * stride_vh, tok0, limit, stride_vn, TILES * BLOCK_N, ROW_BYTES)


def prefetch_args(items: int, rows: int, capacity_tiles: int, programs: int, heads_across: bool) -> tuple:
    """``(pf_g, pf_t, pf_high, pf_n, pf_k)`` for ``prefetch_first_tiles``: ``items`` sequences of ``rows`` rows
    of ``capacity_tiles`` tiles each (full caches) cut over ``programs`` programs (``programs_used_py``'s
    choice for full caches); ``heads_across``: the kernel orders its programs across rows where the cut gives
    every row the same number of pieces (``ACROSS_ROWS``)."""
    heads = max(items * rows, 1)
    total = heads * capacity_tiles
    t = triton.cdiv(total, programs)
    high = total - (t - 1) * programs
    k = programs // heads
    across = heads_across and k >= 2 and k * heads == programs and capacity_tiles % k == 0
    return programs, t, high, capacity_tiles, k if across else 0
