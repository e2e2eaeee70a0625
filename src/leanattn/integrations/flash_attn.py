"""flash-attn's ``flash_attn_with_kvcache`` on :func:`leanattn.decode`: a flash-attn user changes the import.

Every argument of flash-attn 2's function is taken, in its order and with its defaults (``rotary_interleaved=True``
among them), and mapped onto :func:`leanattn.decode`'s: ``window_size=(left, right)`` to ``window_left`` (a right
window of 0 is ``causal``, as flash-attn's), ``num_splits`` to the schedule (0: leanattn's stream-K; ``n >= 1``:
FlashDecoding's ``n`` splits), an ``int`` ``cache_seqlens`` to a full tensor. The LSE is flash-attn's: layout
``(B, H, seqlen_q)``, natural log, ``+inf`` for a query token that sees no key.

Differences: head dims are leanattn's (64, 128, 256; flash-attn takes any up to 256); a right window between 1 and
``seqlen_q - 2`` is refused (a wider one sees every key, as -1); with ``causal`` and ``alibi_slopes`` the LSE includes
the bias ``-slope * |i - j|`` as written (flash-attn's causal path adds ``slope * j``, the same softmax and output but
an LSE shifted by a constant a row).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .. import checks
from ..ops.decode import decode

__all__ = ["flash_attn_with_kvcache"]


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size=(-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Optional[torch.Tensor] = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
):
    """flash-attn 2's ``flash_attn_with_kvcache`` (inference: no gradient), on leanattn's decode kernels.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, seqlen_q, H, D)``: the query tokens of each sequence, its last ``seqlen_q`` positions.
    k_cache, v_cache : torch.Tensor
        ``(B_cache, seqlen_cache, Hkv, D)``, or paged ``(num_blocks, page_block_size, Hkv, D)`` with
        ``block_table``; float8 caches are :func:`leanattn.decode`'s (with its ``k_scale``/``v_scale``, which
        flash-attn 2 has not: call it directly).
    k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad, block_table, softmax_scale,
    softcap, rotary_interleaved, alibi_slopes
        As flash-attn's, :func:`leanattn.decode`'s arguments of the same names (``rotary_interleaved`` defaults to
        True, flash-attn's default). ``cache_seqlens`` may be an ``int``, every sequence's length.
    causal : bool
        Bottom-right causal mask over the ``seqlen_q`` tokens, as flash-attn's.
    window_size : (int, int)
        ``(left, right)``: ``left >= 0`` keeps the last ``left + 1`` keys of each query token (``-1``: all).
        ``right``: ``-1`` (or at least ``seqlen_q - 1``: every key) or ``0`` (``causal``).
    num_splits : int
        0: leanattn's stream-K schedule (flash-attn's heuristic choice); ``n >= 1``: FlashDecoding's ``n`` splits
        of each head (``schedule="split"``).
    return_softmax_lse : bool
        Also return the LSE, ``(B, H, seqlen_q)`` float32, natural log, ``+inf`` for a token with no key, as
        flash-attn's.

    Returns
    -------
    out : torch.Tensor
        ``q``'s shape and dtype; with ``return_softmax_lse``, ``(out, softmax_lse)``.
    """
    checks.check_tensor("q", q, 4)
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"window_size: expected a (left, right) pair, got {window_size!r}")
    left, right = (int(x) for x in window_size)
    if right >= max(q.shape[1] - 1, 1):
        right = -1  # (no key after the last query token: the window holds every key a token may see)
    if right not in (-1, 0):
        raise ValueError(f"window_size: expected a right window of -1, 0 or at least seqlen_q - 1 = {q.shape[1] - 1} "
                         f"(the keys after a query token are the other query tokens'), got {right}")
    if not isinstance(num_splits, int) or isinstance(num_splits, bool) or num_splits < 0:
        raise ValueError(f"num_splits: expected an int >= 0, got {num_splits!r}")
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        batch = q.shape[0]
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    schedule = "split" if num_splits else "lean"
    res = decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, return_softmax_lse, schedule,
                 num_splits=num_splits, softcap=softcap, window_left=left, causal=causal or right == 0,
                 alibi_slopes=alibi_slopes, k=k, v=v, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                 rotary_interleaved=rotary_interleaved, cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad)
    if not return_softmax_lse:
        return res
    out, lse = res
    # (B, seqlen_q, H) -> flash-attn's (B, H, seqlen_q), +inf where a token saw no key, as flash-attn writes it
    lse = lse.transpose(1, 2).contiguous()
    return out, lse.masked_fill_(lse == float("-inf"), float("inf"))
