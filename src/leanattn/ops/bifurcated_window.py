"""Shared-prefix decode with a sliding window: ``bifurcated_decode`` / ``cascade_decode`` with ``window_left``.

A query token at position ``pos`` of its sample's sequence (the shared segments, outermost first, then its own
tokens) attends the keys from ``pos - window_left`` on. Of a shared segment it therefore attends a suffix
``[start, P_g)``, whose start differs between the samples of a prompt (their own lengths differ) and between the
tokens of a sample. Each level is computed in two parts, and every state merged at the end:

- **what all readers of a segment attend**, ``[S_g, P_g)`` with ``S_g`` the latest start among the query rows that
  read segment ``g``: read once by the bifurcated pass from ``S_g`` on, where it lies (in its pages for a paged
  segment), the readers' rows stacked in its products, as without a window (until 2026-12-05 the tail was copied
  out first, which on an H100 took more time than the pass);
- **the rest of each row's window**, ``[start, S_g)``: a :func:`leanattn.decode` of each query row over a page
  table of one-token pages laid on the segment from ``S_g - 1`` backwards, so the row's length counts exactly its
  keys (attention does not depend on the order of its keys). With one query token a sample, rows of samples whose
  sequences are equally long before and in the level (samples of one prompt decoded in step) have none, and read
  nothing; several tokens a sample have rests of up to ``Lq - 1`` keys, their windows starting one key apart.

The own tokens are one :func:`leanattn.decode` with ``window_left`` (each token's window ends at its position,
``causal`` as given), and one :func:`leanattn.merge_states` merges the states. With one query token a sample and a
window that holds every own token (``window_left`` at least the own capacity less one), the own tokens are read by
the first segment pass instead, in the same launch, as without a window. No step syncs with the host. A
segment's starts, tail and tables are planned in two launches (``ops/window_plan.py``): as torch ops they took about
30 small launches a segment, a few microseconds each even replayed from a CUDA graph (H200, 2026-12-05: the call
took 156 us against 30 without a window, at 16 samples of one 8k prompt and a 4096-key window).
"""
from __future__ import annotations

import torch

from ..merges.states import merge_state_list
from .decode import _capacity, decode
from .token_pages import token_pool
from .window_plan import window_plan

__all__ = ["query_rows", "segments", "window_states"]


def segments(k, pages) -> tuple[int, int]:
    """``(G, P)`` of a shared level ``(k, pages)``: its segments and the keys each can hold (a paged level: the rows
    of its block table ``pages``, and its pages a row times the page size; a dense ``k``: ``(P, ...)`` or ``(G, P,
    ...)``)."""
    if pages is not None:
        return pages.shape[0], pages.shape[1] * k.shape[1]
    return (1, k.shape[0]) if k.dim() == 3 else (k.shape[0], k.shape[1])


def query_rows(q, cu_seqlens_q, max_seqlen_q):
    """``(rows (R, Hq, D), rows_of, per)``: the query rows and the most tokens a sample has. A packed query's
    ``rows_of`` is ``(sample, token, tokens)``, ``(R,)`` int64 each: the sample of each row, its index among that
    sample's tokens and the sample's tokens. Otherwise None: row ``r`` is token ``r % per`` of sample ``r // per``,
    and no index tensor is built."""
    if cu_seqlens_q is None:
        return q.reshape(-1, *q.shape[-2:]), None, q.shape[1] if q.dim() == 4 else 1
    dev = q.device
    B = cu_seqlens_q.shape[0] - 1
    counts = cu_seqlens_q.diff().long()
    sample = torch.arange(B, device=dev).repeat_interleave(counts, output_size=q.shape[0])
    token = torch.arange(q.shape[0], device=dev) - cu_seqlens_q.long()[sample]
    return q, (sample, token, counts[sample]), max_seqlen_q


def window_states(q, levels, k_cache, v_cache, cache_seqlens, block_table, scale, window_left, max_group_size,
                  num_programs, softcap, k_scale, v_scale, causal, cu_seqlens_q=None, max_seqlen_q=0, *, op,
                  sinks=None):
    """``(out, lse)`` of ``q`` (``(B, Hq, D)``, ``(B, Lq, Hq, D)`` or packed) over ``levels`` (``(k, v, lens, ids,
    block_table)`` each, past validation; ``block_table`` None for a dense segment, else that of a page pool) and the
    own cache, under a sliding window of ``window_left >= 0`` keys before each token.
    ``op``: the bifurcated pass (``_bifurcated_impl``, or its custom op while compiling); ``sinks (Hq,)``: attention
    sinks, folded in by the last merge."""
    if q.numel() == 0:
        return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)
    dev = q.device
    rows, rows_of, per = query_rows(q, cu_seqlens_q, max_seqlen_q)
    per_row, B = (per, q.shape[0]) if rows_of is None else (1, cu_seqlens_q.shape[0] - 1)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    R = rows.shape[0]
    # -- the keys after each segment, innermost first: the own cache's, then each segment's added
    own_cap = 0 if k_cache is None else _capacity(k_cache, block_table)
    after, own_const = (cache_seqlens, 0) if cache_seqlens is not None and k_cache is not None else (None, own_cap)
    # one token a sample whose window holds every own token (window_left >= the own capacity - 1): the own tokens
    # join the first segment pass made, as without a window, instead of taking a decode launch of their own
    fuse_own = k_cache is not None and rows_of is None and per == 1 and window_left >= own_cap - 1
    own_fused = False
    states = []
    for k, v, lens, ids, pages in reversed(levels):
        k, v = (k, v) if k.dim() == 4 else (k[None], v[None])
        # a paged segment (pages: its block table) holds its pages' tokens; a dense one its second dimension
        G, P = segments(k, pages)
        W = min(window_left + per, P)  # no row attends more of a segment (window_left + 1 keys, less padding rows')
        if W <= 0:  # a segment of no capacity: no key, and nothing added to the keys after the outer ones
            continue
        pool_k, step = token_pool(k)
        pool_v, step_v = token_pool(v)
        if step_v != step or pool_v.shape != pool_k.shape:
            # k and v laid out differently: both seen through one token stride (a copy of the one that differs)
            pool_k, step = token_pool(k.contiguous())
            pool_v, _ = token_pool(v.contiguous())
        # every row's first key in the segment, [latest_g, end_g) read once a segment where it lies (every reader
        # attends it; the end in place of the lengths), and each row's rest [first, latest_g) as one-token pages
        # from latest_g - 1 down
        after, g_row, rest, table, tail_end, latest = window_plan(
            after, own_const, ids, lens, rows_of, per_row, B, R, G, window_left, W, P, pool_k, step,
            P if pages is None else k.shape[1], pages)
        own_const = 0
        own = (k_cache, v_cache, cache_seqlens, block_table) if fuse_own and not own_fused else (None,) * 4
        states.append(op(rows, k, v, *own, tail_end, None if ids is None else g_row, scale,
                         max_group_size * per, num_programs, 0, 0, softcap, k_scale, v_scale, latest, W, pages))
        own_fused = fuse_own  # (from the first pass made on: later ones see own_fused)
        states.append(decode(rows, pool_k, pool_v, rest, table, scale, True, num_programs=num_programs,
                             validate=False, k_scale=k_scale, v_scale=v_scale, softcap=softcap))
    if k_cache is not None and not own_fused:
        packed = {} if cu_seqlens_q is None else dict(cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q)
        o, lse = decode(q, k_cache, v_cache, cache_seqlens, block_table, scale, True, num_programs=num_programs,
                        validate=False, k_scale=k_scale, v_scale=v_scale, softcap=softcap, causal=causal,
                        window_left=window_left, **packed)
        states.append((o.view(rows.shape), lse.view(rows.shape[:-1])))
    if not states:  # nothing in any window: every segment empty, no own cache
        states.append((q.new_zeros(rows.shape), torch.full(rows.shape[:-1], float("-inf"), dtype=torch.float32,
                                                                 device=dev)))
    out, lse = merge_state_list([s[0] for s in states], [s[1] for s in states], sinks)
    return out.view(q.shape), lse.view(q.shape[:-1])
