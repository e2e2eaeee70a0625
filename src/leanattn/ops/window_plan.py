"""One shared segment's part of a sliding-window shared-prefix decode (``ops/bifurcated_window.py``), planned in
two launches (``kernels/window_plan.py``): which of its tokens each query row attends, the tail every reader of the
segment attends, and each row's one-token page table for the rest of its window."""
from __future__ import annotations

from typing import Optional

import torch
import triton

from ..kernels.window_plan import run_tables_kernel, window_bounds_kernel, window_tables_kernel

__all__ = ["window_plan", "run_tables"]

_BLOCK_W = 32
# samples, rows and segments the bounds kernel takes a step (its loops take several steps past it)
_BLOCK_ROWS = 256


def _plan_impl(after_in: Optional[torch.Tensor], own_const: int, ids: Optional[torch.Tensor],
               seg: Optional[torch.Tensor], row_sample: Optional[torch.Tensor],
               row_token: Optional[torch.Tensor], row_tokens: Optional[torch.Tensor], per: int, B: int, R: int,
               G: int, window_left: int, W: int, P: int, pool_k: torch.Tensor, step: int,
               page_size: int, block_table: Optional[torch.Tensor]) -> list[torch.Tensor]:
    # the kernel reads these with unit stride (a caller's view may be strided, or expanded)
    after_in, ids, seg = (None if t is None else t.contiguous() for t in (after_in, ids, seg))
    i32 = dict(dtype=torch.int32, device=pool_k.device)
    after_out, latest, first = torch.empty(B, **i32), torch.empty(G, **i32), torch.empty(R, **i32)
    g_row, tail_end, rest = torch.empty(R, **i32), torch.empty(G, **i32), torch.empty(R, **i32)
    table = torch.empty(R, W, **i32)
    dummy = first  # never read: its flag is off
    window_bounds_kernel[(1,)](
        dummy if after_in is None else after_in, dummy if ids is None else ids, dummy if seg is None else seg,
        dummy if row_sample is None else row_sample, dummy if row_token is None else row_token,
        dummy if row_tokens is None else row_tokens, after_out, latest, first, g_row, tail_end, rest,
        B, R, G, per, own_const, P, window_left, W, HAS_AFTER=after_in is not None,
        HAS_IDS=ids is not None, HAS_SEG=seg is not None, PACKED=row_sample is not None, BLOCK=_BLOCK_ROWS,
        num_warps=4)
    if R and W:
        paged = block_table is not None
        window_tables_kernel[(R, triton.cdiv(W, _BLOCK_W))](
            latest, g_row, block_table if paged else g_row, table, W, step, page_size,
            block_table.shape[1] if paged else 1, pool_k.shape[0], block_table.stride(0) if paged else 0,
            PAGED=paged, BLOCK_W=_BLOCK_W, num_warps=1)
    return [after_out, g_row, rest, table, tail_end, latest]


@torch.library.custom_op("leanattn::window_plan", mutates_args=())
def _plan_op(after_in: Optional[torch.Tensor], own_const: int, ids: Optional[torch.Tensor],
             seg: Optional[torch.Tensor], row_sample: Optional[torch.Tensor],
             row_token: Optional[torch.Tensor], row_tokens: Optional[torch.Tensor], per: int, B: int, R: int, G: int,
             window_left: int, W: int, P: int, pool_k: torch.Tensor, step: int, page_size: int,
             block_table: Optional[torch.Tensor]) -> list[torch.Tensor]:
    return _plan_impl(after_in, own_const, ids, seg, row_sample, row_token, row_tokens, per, B, R, G,
                      window_left, W, P, pool_k, step, page_size, block_table)


@_plan_op.register_fake
def _(after_in, own_const, ids, seg, row_sample, row_token, row_tokens, per, B, R, G, window_left, W, P,
      pool_k, step, page_size, block_table):
    i32 = dict(dtype=torch.int32)
    return [pool_k.new_empty(B, **i32), pool_k.new_empty(R, **i32), pool_k.new_empty(R, **i32),
            pool_k.new_empty(R, W, **i32), pool_k.new_empty(G, **i32), pool_k.new_empty(G, **i32)]


def window_plan(after_in, own_const: int, ids, seg, rows_of, per: int, B: int, R: int, G: int,
                window_left: int, W: int, P: int, pool_k: torch.Tensor, step: int, page_size: int,
                block_table) -> list[torch.Tensor]:
    """One segment's window plan.

    Parameters
    ----------
    after_in : torch.Tensor or None
        ``(B,)`` int: each sample's keys after this segment (its inner segments' and its own); None: ``own_const``
        each.
    ids, seg : torch.Tensor or None
        ``(B,)`` each sample's segment (None: 0) and ``(G,)`` the segments' lengths (None: ``P`` each).
    rows_of : tuple or None
        ``(sample, token, tokens)``, ``(R,)`` int64 each, of a packed query; None: row ``r`` is token ``r % per`` of
        sample ``r // per``.
    window_left, W, P : int
        The window's keys before a token; the tail's width (``min(window_left + tokens, P)``); a segment's capacity.
    pool_k : torch.Tensor
        The segments as one-token pages ``(rows, 1, Hkv, D)``, token ``(g, slot)`` at ``g * step + slot`` or, with
        ``block_table (G, pages)``, ``block_table[g, slot // page_size] * step + slot % page_size``.

    Returns
    -------
    list of torch.Tensor
        int32: ``after_out (B,)`` (``after_in`` plus this segment: the next outer segment's ``after_in``), ``g_row
        (R,)``, ``rest (R,)`` (each row's keys before the tail), ``table (R, W)`` (one-token pages from the tail's
        start backwards), ``tail_end (G,)`` and ``latest (G,)``: the tail every reader attends, ``[latest,
        tail_end)``, read where it lies.
    """
    sample, token, tokens = rows_of if rows_of is not None else (None, None, None)
    op = _plan_op if torch.compiler.is_compiling() else _plan_impl
    return op(after_in, own_const, ids, seg, sample, token, tokens, per, B, R, G, window_left, W, P,
              pool_k, step, page_size, block_table)


def _run_tables_impl(hi: Optional[torch.Tensor], lo: torch.Tensor, cap: int, W: int, pool_rows: int, step: int,
                     page_size: int, block_table: Optional[torch.Tensor]) -> list[torch.Tensor]:
    B = lo.shape[0]
    table = torch.empty(B, W, dtype=torch.int32, device=lo.device)
    lens = torch.empty(B, dtype=torch.int32, device=lo.device)
    if B and W:
        hi, lo = (None if hi is None else hi.contiguous()), lo.contiguous()
        paged = block_table is not None
        run_tables_kernel[(B, triton.cdiv(W, _BLOCK_W))](
            lo if hi is None else hi, lo, block_table if paged else lo, table, lens, W, cap, step, page_size,
            block_table.shape[1] if paged else 1, pool_rows, block_table.stride(0) if paged else 0,
            HAS_HI=hi is not None, PAGED=paged, BLOCK_W=_BLOCK_W, num_warps=1)
    return [table, lens]


@torch.library.custom_op("leanattn::run_tables", mutates_args=())
def _run_tables_op(hi: Optional[torch.Tensor], lo: torch.Tensor, cap: int, W: int, pool_rows: int, step: int,
                   page_size: int, block_table: Optional[torch.Tensor]) -> list[torch.Tensor]:
    return _run_tables_impl(hi, lo, cap, W, pool_rows, step, page_size, block_table)


@_run_tables_op.register_fake
def _(hi, lo, cap, W, pool_rows, step, page_size, block_table):
    return [lo.new_empty(lo.shape[0], W, dtype=torch.int32), lo.new_empty(lo.shape[0], dtype=torch.int32)]


def run_tables(hi, lo: torch.Tensor, cap: int, W: int, pool_rows: int, step: int, page_size: int,
               block_table) -> list[torch.Tensor]:
    """Each sequence's run of tokens ``[lo[b], hi[b])`` (``hi`` None: ``cap``) as a :func:`leanattn.decode` table of
    ``W`` one-token pages of its own slots, laid from ``hi[b] - 1`` backwards, and its length: ``[table (B, W),
    lens (B,)]`` int32. A sequence's slot ``s`` is page ``b * step + s`` of the one-token pool (``pool_rows`` pages),
    or ``block_table[b, s // page_size] * step + s % page_size``; ``lens = clamp(hi - lo, 0, W)``."""
    op = _run_tables_op if torch.compiler.is_compiling() else _run_tables_impl
    return op(hi, lo, cap, W, pool_rows, step, page_size, block_table)
