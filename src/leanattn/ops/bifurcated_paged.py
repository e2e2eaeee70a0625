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

import torch

from .decode import decode

__all__ = ["paged_level_states"]


def paged_level_states(rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens, ids, block_table: torch.Tensor,
                       scale: float, max_group_size: int, num_programs: int, softcap: float, k_scale: float,
                       v_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
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
        ``(R,)`` the segment each row reads (any integer dtype); None: segment 0 for every row.
    block_table : torch.Tensor
        ``(G, max_pages)`` int32, segment ``g``'s pages.
    max_group_size : int
        A bound on the rows that read one segment (0: counted on the host, one device sync, or ``R`` while a graph
        is captured or compiled): the launch's query slots a segment.

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
    ids = ids.long()
    # the rows of each segment together (stable: a segment's rows in their order), as one packed query
    order = torch.argsort(ids, stable=True)
    counts = torch.zeros(G, dtype=torch.long, device=rows.device).scatter_add_(0, ids, torch.ones_like(ids))
    cu = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    if max_group_size > 0:
        slots = max_group_size
    elif torch.compiler.is_compiling() or (rows.is_cuda and torch.cuda.is_current_stream_capturing()):
        slots = R  # no sync: one segment may hold every row
    else:
        slots = int(counts.max()) if G else 0
    out, lse = decode(rows[order], k, v, lens, block_table, scale, True, cu_seqlens_q=cu,
                      max_seqlen_q=max(slots, 1), **kw)
    back = torch.empty_like(order).scatter_(0, order, torch.arange(R, device=rows.device))
    return out[back], lse[back]
