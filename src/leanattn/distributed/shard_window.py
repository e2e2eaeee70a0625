"""A rank's partial state over its shard under a sliding window: each query token attends a run of this rank's
tokens, ``[shard_starts, shard_seqlens)`` (its window's part of the shard: a rank's slots hold positions in
increasing order, so the window's tokens on a rank are a run ending at the token's own part of the shard).

The runs are read through one-token pages laid over the shard (``ops/token_pages.py``):

- one range a sequence (one query token, or every token alike): one :func:`leanattn.decode` over a table laid
  backwards from each run's end, of ``min(window_left + 1, capacity)`` pages, the run's length its length;
- one range a token (``(B, Lq)`` starts or lengths): the run all tokens of a sequence attend, ``[latest start,
  earliest end)``, read once for them all (the ``Lq`` tokens stacked in one decode), and each token's rest, at most
  ``Lq - 1`` tokens before that run and ``Lq - 1`` after it, as ``B * Lq`` one-token sequences of their own pages;
  the two merged.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks
from ..merges.states import merge_state_list
from ..ops.decode import _capacity, decode
from ..ops.token_pages import token_pages, token_pool
from ..ops.window_plan import run_tables

__all__ = ["check_shard_starts", "window_states", "with_token_rests"]


def check_shard_starts(q, shard_seqlens, shard_starts, window_left: int, capacity: int,
                       validate: Optional[bool] = None) -> None:
    """``shard_starts`` against ``q``, ``shard_seqlens`` (or the ``capacity``) and ``window_left``: int32, ``(B,)``
    or, with ``q (B, Lq, Hq, D)``, ``(B, Lq)``; values (when checkable without a sync, or ``validate``) in ``[0,
    end]``, within ``Lq - 1`` of the sequence's latest start, and the run all tokens of a sequence attend (latest
    start to earliest end) at most ``window_left + 1`` tokens long."""
    if window_left < 0:
        raise ValueError(f"window_left: expected an int >= 0 with shard_starts (the window's keys bound the tokens "
                         f"read), got {window_left}")
    checks.check_tensor("shard_starts", shard_starts)
    B = q.shape[0]
    shapes = [(B,)] + ([(B, q.shape[1])] if q.dim() == 4 else [])
    if tuple(shard_starts.shape) not in shapes:
        raise ValueError(f"shard_starts: expected shape {' or '.join(map(str, shapes))} (as shard_seqlens), got "
                         f"{tuple(shard_starts.shape)}")
    checks.check_index("shard_starts", shard_starts, shard_starts.dim(), q.device)
    validate = checks.value_checks(validate, shard_starts, shard_seqlens)
    if not validate or not shard_starts.numel():
        return
    lo = shard_starts.long()
    hi = torch.full((B,), capacity, dtype=torch.long) if shard_seqlens is None else shard_seqlens.long()
    lo2, hi2 = (lo if lo.dim() == 2 else lo[:, None]), (hi if hi.dim() == 2 else hi[:, None])
    lo2, hi2 = torch.broadcast_tensors(lo2, hi2)
    latest = lo2.amax(1, keepdim=True)
    for bad, what in ((lo2 < 0, "starts >= 0"), (lo2 > hi2, "starts <= shard_seqlens (the run's end)"),
                      ((hi2.amin(1, keepdim=True) - latest > window_left + 1).expand_as(lo2),
                       f"at most window_left + 1 = {window_left + 1} tokens that every query token of a sequence "
                       f"attends (from its latest start to its earliest end)"),
                      (latest - lo2 > lo2.shape[1] - 1,
                       f"a token's start within {lo2.shape[1] - 1} of its sequence's latest")):
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            at = idx[0] if shard_starts.dim() == 1 else list(idx)
            raise ValueError(f"shard_starts: expected {what}, got {int(lo2[idx])} at {at} "
                             f"(shard_seqlens there: {int(hi2[idx])})")


def window_states(q, k_shard, v_shard, shard_seqlens, shard_starts, block_table, scale, window_left: int,
                  **decode_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of ``q`` over the runs ``[shard_starts, shard_seqlens)`` of this rank's shard (past
    validation); ``decode_kw`` as :func:`leanattn.decode`'s (schedule, programs, scales, softcap)."""
    dev = q.device
    B = q.shape[0]
    cap = _capacity(k_shard, block_table)
    if cap == 0:
        # a shard of no capacity (a table of no pages: a rank that holds nothing yet) has no key in any window; its
        # tables would index a table row of no entries (decided by shapes alone, so CUDA-graph safe)
        return q.new_zeros(q.shape), torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=dev)
    W = min(window_left + 1, cap)
    pool_k, step = token_pool(k_shard)
    pool_v, _ = token_pool(v_shard)
    P = k_shard.shape[1]
    kw = dict(validate=False, **decode_kw)
    runs = dict(cap=cap, W=W, pool_rows=pool_k.shape[0], step=step, page_size=P, block_table=block_table)
    if (shard_seqlens is None or shard_seqlens.dim() == 1) and shard_starts.dim() == 1:
        # one run a sequence, for every token: one launch lays its table and length
        table, lens = run_tables(shard_seqlens, shard_starts, **runs)
        return decode(q, pool_k, pool_v, lens, table, scale, True, **kw)
    hi = torch.full((B,), cap, dtype=torch.long, device=dev) if shard_seqlens is None else shard_seqlens.long()
    lo = shard_starts.long()
    Lq = q.shape[1]
    hi2, lo2 = (hi if hi.dim() == 2 else hi[:, None]), (lo if lo.dim() == 2 else lo[:, None])
    hi2, lo2 = (x.expand(B, Lq) for x in torch.broadcast_tensors(hi2, lo2))
    latest, earliest = lo2.amax(1), hi2.amin(1)
    # -- the run every token of the sequence attends, read once for all of them
    table, lens = run_tables(earliest, latest, **runs)
    out, lse = decode(q, pool_k, pool_v, lens, table, scale, True, **kw)
    if Lq == 1:
        return out, lse
    # -- each token's rest: before that run [start, latest) and after it [max(earliest, latest), end)
    below = (torch.minimum(latest[:, None], hi2) - lo2).clamp(0, Lq - 1)                 # (B, Lq)
    after_from = torch.maximum(earliest, latest)[:, None]
    above = (hi2 - after_from).clamp(0, Lq - 1)
    i = torch.arange(2 * (Lq - 1), device=dev)
    slots = torch.where(i < below[..., None], lo2[..., None] + i, after_from[..., None] + i - below[..., None])
    return with_token_rests(q, out, lse, k_shard, v_shard, block_table, slots, below + above, scale, **decode_kw)


def with_token_rests(q, out, lse, k_shard, v_shard, block_table, slots, counts, scale,
                     **decode_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The state ``(out, lse)`` of ``q (B, Lq, Hq, D)`` over a run of keys every token attends, merged with each
    token's rest: the first ``counts[b, t]`` of this rank's tokens ``slots[b, t, :]`` (``(B, Lq, R)`` int64 slots,
    ``(B, Lq)`` counts), attended as ``B * Lq`` one-token sequences over one-token pages of the shard (no copy)."""
    B, Lq, Hq, D = q.shape
    R = slots.shape[-1]
    pool_k, step = token_pool(k_shard)
    pool_v, _ = token_pool(v_shard)
    slots = slots.clamp(0, max(_capacity(k_shard, block_table) - 1, 0))
    rows = torch.arange(B, device=q.device)[:, None, None].expand_as(slots)
    table = token_pages(slots, step, block_table, rows, k_shard.shape[1]).view(B * Lq, R)
    out_r, lse_r = decode(q.reshape(B * Lq, Hq, D), pool_k, pool_v, counts.reshape(-1).to(torch.int32), table, scale,
                          True, validate=False, **decode_kw)
    o, ls = merge_state_list([out.reshape(B * Lq, Hq, D), out_r], [lse.reshape(B * Lq, Hq), lse_r])
    return o.view(B, Lq, Hq, D), ls.view(B, Lq, Hq)
