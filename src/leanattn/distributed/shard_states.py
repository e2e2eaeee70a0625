"""A rank's partial attention state over its shard of a sharded KV cache, for one or several query tokens.

With one length a sequence (``shard_seqlens (B,)``) the state is one :func:`leanattn.decode`. With one length a
query token (``shard_seqlens (B, Lq)``, a causal mask over a sharded cache, see :func:`check_token_seqlens`) it is
two decodes and a merge:

- the **common part**, the first ``shard_seqlens[b, 0]`` tokens of the shard, which every query token of ``b``
  attends: one multi-token decode, the ``Lq`` tokens stacked with the GQA group's heads, so the shard is read once;
- the **remainder**, the at most ``Lq - 1`` tokens after it, which token ``t`` attends the first
  ``shard_seqlens[b, t] - shard_seqlens[b, 0]`` of: attended as ``B * Lq`` one-token sequences of their own lengths,
  through one-token pages laid over the shard (``ops/token_pages.py``, no copy);
- merged with :func:`leanattn.merge_states` (the key sets are disjoint).

Whatever the placement of tokens on ranks, a rank's slots are in the order of the positions they hold, so a query
token attends a prefix of each shard: its length is all the mask needs.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks
from ..ops.decode import _capacity, decode, validate_decode
from .shard_window import check_shard_starts, window_states, with_token_rests

__all__ = ["check_token_seqlens", "validate_shard", "shard_states"]


def check_token_seqlens(q: torch.Tensor, shard_seqlens, validate: Optional[bool] = None) -> None:
    """Checks of per-token shard lengths ``shard_seqlens (B, Lq)`` against ``q (B, Lq, Hq, D)``.

    Each row must hold ``shard_seqlens[b, 0] <= shard_seqlens[b, t] <= shard_seqlens[b, 0] + Lq - 1``: beyond the
    tokens every query token of the sequence attends, a token attends only some of the ``Lq`` query tokens' own
    keys. Values are checked when that costs no device sync (``validate=None``) or when ``validate`` is True.
    """
    if not (isinstance(q, torch.Tensor) and q.dim() == 4):
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"shard_seqlens: expected a 1-D (B,) tensor for q of shape {shape} (per-token lengths "
                         f"(B, Lq) need q (B, Lq, Hq, D))")
    checks.check_index("shard_seqlens", shard_seqlens, 2, q.device)
    B, Lq = q.shape[:2]
    if tuple(shard_seqlens.shape) != (B, Lq):
        raise ValueError(f"shard_seqlens: expected shape ({B}, {Lq}) (q's sequences and tokens), "
                         f"got {tuple(shard_seqlens.shape)}")
    validate = checks.value_checks(validate, shard_seqlens)
    if validate and shard_seqlens.numel():
        if int(shard_seqlens.min()) < 0:
            raise ValueError(f"shard_seqlens: expected lengths >= 0, got a minimum of {int(shard_seqlens.min())}")
        extra = shard_seqlens.to(torch.int64) - shard_seqlens[:, :1]
        bad = (extra < 0) | (extra > Lq - 1)
        if bool(bad.any()):
            b, t = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"shard_seqlens: expected shard_seqlens[b, t] in [shard_seqlens[b, 0], "
                             f"shard_seqlens[b, 0] + {Lq - 1}] (a query token attends at most the {Lq} query "
                             f"tokens' own keys beyond the first token's), got {int(shard_seqlens[b, t])} at "
                             f"[{b}, {t}] with shard_seqlens[{b}, 0] = {int(shard_seqlens[b, 0])}")


def _check_rank(shard_seqlens) -> None:
    if isinstance(shard_seqlens, torch.Tensor) and shard_seqlens.dim() not in (1, 2):
        raise ValueError(f"shard_seqlens: expected a (B,) or, with q (B, Lq, Hq, D), (B, Lq) int32 tensor, got shape "
                         f"{tuple(shard_seqlens.shape)}")


def validate_shard(q, k_shard, v_shard, shard_seqlens, block_table, softmax_scale, schedule="lean", k_scale=1.0,
                   v_scale=1.0, fp8=False, validate: Optional[bool] = None, shard_starts=None,
                   window_left: int = -1) -> None:
    """:func:`leanattn.decode`'s validation of a shard, its errors naming the shard's arguments. Per-token lengths
    (:func:`check_token_seqlens`) are then checked as decode's lengths by their maximum, which bounds the pages in
    use; a window's ``shard_starts`` by ``shard_window.check_shard_starts``."""
    window_left = checks.window_left(window_left)
    _check_rank(shard_seqlens)
    lens = shard_seqlens
    if isinstance(shard_seqlens, torch.Tensor) and shard_seqlens.dim() == 2:
        check_token_seqlens(q, shard_seqlens, validate)
        lens = shard_seqlens.amax(1) if shard_seqlens.shape[1] else shard_seqlens.new_zeros(q.shape[0])
    validate_decode(q, k_shard, v_shard, lens, block_table, softmax_scale, schedule, validate, k_scale,
                    v_scale, fp8=fp8, names=("q", "k_shard", "v_shard", "shard_seqlens"))
    if shard_starts is not None:
        check_shard_starts(q, shard_seqlens, shard_starts, window_left, _capacity(k_shard, block_table), validate)
    elif window_left >= 0:
        raise ValueError("shard_starts: expected a (B,) or (B, Lq) int32 tensor with window_left >= 0 (where each "
                         "token's window starts in this shard: Placement.window_starts), got None")


def shard_states(q: torch.Tensor, k_shard: torch.Tensor, v_shard: torch.Tensor, shard_seqlens, block_table,
                 scale: float, shard_starts=None, window_left: int = -1,
                 **decode_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``(out, lse)`` over its shard.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, Hq, D)`` or ``(B, Lq, Hq, D)``.
    k_shard, v_shard, block_table
        A :func:`leanattn.decode` cache.
    shard_seqlens : torch.Tensor or None
        ``(B,)`` int32: every query token of sequence ``b`` attends the shard's first ``shard_seqlens[b]`` tokens.
        ``(B, Lq)`` int32 (with a 4-D ``q``): token ``t`` attends the first ``shard_seqlens[b, t]``
        (:func:`check_token_seqlens`). None: the shard's capacity.
    scale : float
        Softmax scale.
    shard_starts : torch.Tensor, optional
        ``(B,)`` or ``(B, Lq)`` int32: a sliding window's first token in this shard, each query token attending
        ``[shard_starts, shard_seqlens)`` (``shard_window.py``). None: from the shard's first token.
    window_left : int
        With ``shard_starts``: the window's keys before the query, bounding the tokens a query attends.
    **decode_kw
        Passed to :func:`leanattn.decode` (schedule, num_programs, num_splits, k_scale, v_scale, softcap).

    Returns
    -------
    out : torch.Tensor
        ``q``'s shape and dtype.
    lse : torch.Tensor
        ``q.shape[:-1]`` float32, natural log.
    """
    _check_rank(shard_seqlens)
    window_left = checks.window_left(window_left)  # (a numpy int reached the window kernels as one)
    # every call, so that errors name the shard's arguments (a group checks its shapes together only on its first
    # call of a shape: tree.py); decode then checks only shapes again
    validate_shard(q, k_shard, v_shard, shard_seqlens, block_table, scale, decode_kw.get("schedule", "lean"),
                   decode_kw.get("k_scale", 1.0), decode_kw.get("v_scale", 1.0), fp8=True,
                   shard_starts=shard_starts, window_left=window_left)
    if q.dim() == 4 and q.shape[1] == 0:  # no query token (checked as any call: its arguments were not before)
        checks.launch_counts(decode_kw.get("num_programs", 0), decode_kw.get("num_splits", 0))
        return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)
    if shard_starts is not None or window_left >= 0:
        return window_states(q, k_shard, v_shard, shard_seqlens, shard_starts, block_table, scale, window_left,
                             **decode_kw)
    if shard_seqlens is None or shard_seqlens.dim() != 2:
        return decode(q, k_shard, v_shard, shard_seqlens, block_table, scale, return_lse=True, validate=False,
                      **decode_kw)
    B, Lq, Hq, D = q.shape
    common = shard_seqlens[:, 0].contiguous()
    out, lse = decode(q, k_shard, v_shard, common, block_table, scale, return_lse=True, validate=False, **decode_kw)
    if Lq == 1:
        return out, lse
    # each token's rest: the drafts' keys after the common part, up to its own
    slots = (common[:, None].long() + torch.arange(Lq - 1, device=q.device))[:, None].expand(B, Lq, Lq - 1)
    counts = (shard_seqlens - shard_seqlens[:, :1]).clamp(0, Lq - 1)
    return with_token_rests(q, out, lse, k_shard, v_shard, block_table, slots, counts, scale, **decode_kw)
