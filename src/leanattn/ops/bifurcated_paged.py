"""Shared segments held in a page pool: ``bifurcated_decode(prefix_block_table=)`` and paged ``cascade_decode`` levels.

A serving engine keeps a prompt's KV in the same page pool as every sample's own tokens (vLLM, SGLang, FlashInfer's
unified paged cascade, flashinfer#462): the shared prefix is a list of pages, not a tensor of its own. Its pass
needs no kernel of its own. The queries that read segment ``g`` are the query tokens of one sequence whose cache is
the segment's pages, each attending every key: :func:`leanattn.decode` with several query tokens, ``causal=False``,
stacks them (token, head) into the rows of its products, so each page is read once per kv head and row block for
all of them, over decode's stream-K schedule. Several segments are a packed query (``cu_seqlens_q``), the readers
of each segment grouped; the states go back to the rows' order and are merged with the own tokens' by
:func:`leanattn.merge_states` (``ops/bifurcated._token_states``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels.group_rows import group_rows_kernel
from .decode import decode

__all__ = ["paged_level_states"]


def _group_impl(ids: torch.Tensor, row_sample: Optional[torch.Tensor], R: int, G: int,
                per: int) -> list[torch.Tensor]:
    dev = ids.device
    order, back = torch.empty(R, dtype=torch.int64, device=dev), torch.empty(R, dtype=torch.int64, device=dev)
    cu, scratch = torch.empty(G + 1, dtype=torch.int32, device=dev), torch.empty(G, dtype=torch.int32, device=dev)
    ids = ids.contiguous()  # read with unit stride
    group_rows_kernel[(1,)](ids, ids if row_sample is None else row_sample.contiguous(), scratch, order, back, cu,
                            R, G, per, PACKED=row_sample is not None, BLOCK=128, num_warps=4)
    return [order, back, cu]


@torch.library.custom_op("leanattn::group_rows", mutates_args=())
def _group_op(ids: torch.Tensor, row_sample: Optional[torch.Tensor], R: int, G: int, per: int) -> list[torch.Tensor]:
    return _group_impl(ids, row_sample, R, G, per)


@_group_op.register_fake
def _(ids, row_sample, R, G, per):
    return [ids.new_empty(R, dtype=torch.int64), ids.new_empty(R, dtype=torch.int64),
            ids.new_empty(G + 1, dtype=torch.int32)]


def paged_level_states(rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens, ids, block_table: torch.Tensor,
                       scale: float, max_group_size: int, num_programs: int, softcap: float, k_scale: float,
                       v_scale: float, per: int = 1,
                       row_sample: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of the query rows over their paged shared segment, past validation.

    Parameters
    ----------
    rows : torch.Tensor
        ``(R, Hq, D)`` query rows (samples, or the tokens of samples), unit stride on ``D``.
    k, v : torch.Tensor
        Page pools ``(num_pages, page_size, Hkv, D)``.
    lens : torch.Tensor or None
        ``(G,)`` int32 tokens of each segment; None: its pages' capacity.
    ids : torch.Tensor or None
        ``(B,)`` the segment each sample reads (any integer dtype); None: segment 0 for every row.
    block_table : torch.Tensor
        ``(G, max_pages)`` int32, segment ``g``'s pages.
    max_group_size : int
        A bound on the rows that read one segment (0: counted on the host, one device sync, or ``R`` while a graph
        is captured or compiled): the launch's query slots a segment.
    per, row_sample
        Row ``r`` is of sample ``row_sample[r]`` (``(R,)`` int64, a packed query) or, without it, ``r // per``.

    Returns
    -------
    out : torch.Tensor
        ``(R, Hq, D)`` in ``rows.dtype``.
    lse : torch.Tensor
        ``(R, Hq)`` float32, natural log; ``-inf`` for a row whose segment is empty.
    """
    R = rows.shape[0]
    kw = dict(num_programs=num_programs, validate=False, k_scale=k_scale, v_scale=v_scale, softcap=softcap)
    if ids is None:
        # every row one query token of the one segment's sequence
        out, lse = decode(rows[None], k, v, None if lens is None else lens[:1], block_table[:1], scale, True, **kw)
        return out[0], lse[0]
    G = block_table.shape[0]
    # the rows of each segment together (stable: a segment's rows in their order), as one packed query
    op = _group_op if torch.compiler.is_compiling() else _group_impl
    order, back, cu = op(ids, row_sample, R, G, per)
    if max_group_size > 0:
        slots = max_group_size
    elif torch.compiler.is_compiling() or (rows.is_cuda and torch.cuda.is_current_stream_capturing()):
        slots = R  # no sync: one segment may hold every row
    else:
        slots = int(cu.diff().max()) if G else 0
    out, lse = decode(rows[order], k, v, lens, block_table, scale, True, cu_seqlens_q=cu,
                      max_seqlen_q=max(slots, 1), **kw)
    return out[back], lse[back]
