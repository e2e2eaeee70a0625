"""Rotary embedding of the new keys and the query of a decode step, as ``flash_attn_with_kvcache(rotary_cos=,
rotary_sin=, rotary_interleaved=)``: applied before the keys are written, at positions read from the lengths on the
device (no sync; a captured CUDA graph rotates at each replay's positions).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks
from .kv_append import new_positions

__all__ = ["check_rotary", "rotate", "rotary_qk"]


def check_rotary(rotary_cos, rotary_sin, rotary_interleaved, q, k, k_cache) -> bool:
    """``rotary_cos``, ``rotary_sin`` ``(seqlen_ro, rotary_dim / 2)``: both or neither, floating, on ``q``'s device,
    with ``rotary_dim`` even and at most the head dim; they need new keys ``k`` (rotated before they are written)
    in a cache of ``q``'s dtype (a float8 cache takes keys already quantised). Returns ``rotary_interleaved`` as a
    bool."""
    rotary_interleaved = checks.flag("rotary_interleaved", rotary_interleaved)
    if (rotary_cos is None) != (rotary_sin is None):
        missing, given = ("rotary_sin", "rotary_cos") if rotary_sin is None else ("rotary_cos", "rotary_sin")
        raise ValueError(f"{missing}: expected a tensor when {given} is given, got None")
    if rotary_cos is None:
        return rotary_interleaved
    if k is None:
        raise ValueError("rotary_cos: expected new keys k and values v with it (the new keys are rotated before "
                         "they are written, as flash-attn's), got k=None")
    if k_cache.dtype != q.dtype:
        raise TypeError(f"rotary_cos: expected k_cache in q's dtype {q.dtype} (new keys are rotated in that "
                        f"precision before they are written), got {k_cache.dtype}")
    for name, x in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        checks.check_tensor(name, x, 2)
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} (q's), got {x.device}")
    if rotary_sin.shape != rotary_cos.shape:
        raise ValueError(f"rotary_sin: expected shape {tuple(rotary_cos.shape)} (as rotary_cos), got "
                         f"{tuple(rotary_sin.shape)}")
    D = q.shape[-1]
    half = rotary_cos.shape[1]
    if not 0 < 2 * half <= D:
        raise ValueError(f"rotary_cos: expected shape (seqlen_ro, rotary_dim / 2) with 0 < rotary_dim <= {D} "
                         f"(q's head dim), got {tuple(rotary_cos.shape)}")
    return rotary_interleaved


def rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, interleaved: bool):
    """``x (B, T, H, D)`` with its first ``rotary_dim = 2 * c.shape[-1]`` dims of token ``t`` of row ``b`` turned by
    the angles whose cosines and sines are ``c[b, t]``, ``s[b, t]`` (``(B, T, rotary_dim / 2)`` float32): pairs
    ``(i, i + rotary_dim / 2)`` (GPT-NeoX), or ``(2i, 2i + 1)`` when ``interleaved`` (GPT-J). In float32, rounded
    once to ``x``'s dtype; a new tensor."""
    half = c.shape[-1]
    c, s = c[:, :, None, :], s[:, :, None, :]
    rot = x[..., :2 * half].float()
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot.to(x.dtype), x[..., 2 * half:]), dim=-1)


def rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor],
              cache_seqlens: torch.Tensor, interleaved: bool, per_token: bool, validate: bool):
    """``(q, k)`` rotated as flash-attn's decode with a KV append rotates them (None ``cos``: unchanged): token ``t``
    of ``k (B, T, Hkv, D)`` at position ``cache_seqlens[b] + t``; query token ``s`` of ``q (B, Hq, D)`` or
    ``(B, Lq, Hq, D)`` at ``cache_seqlens[b] + s`` when ``per_token`` (causal or windowed), else every query token at
    ``cache_seqlens[b]``. Where ``validate``, the positions are checked to lie in ``cos``'s rows (a device sync)."""
    if cos is None:
        return q, k
    B, T = k.shape[:2]
    one = q.dim() == 3
    q4 = q[:, None] if one else q
    Lq = q4.shape[1]
    pos = new_positions(cache_seqlens, max(T, Lq if per_token else 1))
    if validate and pos.numel():
        last = int(pos.max())
        if last >= cos.shape[0]:
            raise ValueError(f"rotary_cos: expected a row for every position rotated (cache_seqlens + "
                             f"{pos.shape[1] - 1} at most), got {cos.shape[0]} rows for a position of {last}")
    # the rows of the positions only, in float32 (not the whole table: flash-attn's tables are in q's dtype)
    c, s = cos[pos].float(), sin[pos].float()
    k = rotate(k, c[:, :T], s[:, :T], interleaved)
    if per_token:
        q4 = rotate(q4, c[:, :Lq], s[:, :Lq], interleaved)
    else:
        q4 = rotate(q4, c[:, :1].expand(B, Lq, -1), s[:, :1].expand(B, Lq, -1), interleaved)
    return (q4[:, 0] if one else q4), k
