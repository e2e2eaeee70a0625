"""Rotary embedding of the new keys and the query of a decode step, as ``flash_attn_with_kvcache(rotary_cos=,
rotary_sin=, rotary_interleaved=)``: applied before the keys are written, at positions read from the lengths on the
device (no sync; a captured CUDA graph rotates at each replay's positions).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import checks

__all__ = ["check_rotary", "rotate", "Rotary"]


def check_rotary(rotary_cos, rotary_sin, rotary_interleaved, q, k, k_cache, per_token: bool):
    """``rotary_cos``, ``rotary_sin`` ``(seqlen_ro, rotary_dim / 2)``: both or neither, floating, on ``q``'s device,
    with ``rotary_dim`` even and at most the head dim; they need new keys ``k`` (rotated before they are written)
    in a cache of ``q``'s dtype (a float8 cache takes keys already quantised). Returns their :class:`Rotary`, the
    query tokens turning at their own positions where ``per_token``, or None without tables."""
    rotary_interleaved = checks.flag("rotary_interleaved", rotary_interleaved)
    if (rotary_cos is None) != (rotary_sin is None):
        missing, given = ("rotary_sin", "rotary_cos") if rotary_sin is None else ("rotary_cos", "rotary_sin")
        raise ValueError(f"{missing}: expected a tensor when {given} is given, got None")
    if rotary_cos is None:
        return None
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
    return Rotary(rotary_cos, rotary_sin, rotary_interleaved, per_token)


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


class Rotary(NamedTuple):
    """A decode step's rotary embedding (checked by :func:`check_rotary`): the tables, the pairing, and whether the
    query tokens turn at their own positions (``per_token``: causal or windowed) or all at the lengths."""
    cos: torch.Tensor
    sin: torch.Tensor
    interleaved: bool
    per_token: bool

    def count(self, T: int, Lq: int) -> int:
        """Positions a sequence of ``T`` new tokens and ``Lq`` query tokens turns at: ``lens[b] + [0, count)``."""
        return max(T, Lq if self.per_token else 1)

    def check_positions(self, cache_seqlens: torch.Tensor, T: int, Lq: int) -> None:
        """Every position turned (``cache_seqlens + [0, count(T, Lq))``, ``cache_seqlens`` the first new token's
        positions) has a row in the tables. A device sync."""
        if cache_seqlens.numel() == 0:
            return
        step = self.count(T, Lq) - 1
        last = int(cache_seqlens.max()) + step
        if last >= self.cos.shape[0]:
            raise ValueError(f"rotary_cos: expected a row for every position rotated (up to {step} past the first "
                             f"new token's), got {self.cos.shape[0]} rows for a position of {last}")

    def qk(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor):
        """``(q, k)`` turned in PyTorch ops (the form ``torch.compile`` traces): token ``t`` of ``k (B, T, Hkv, D)``
        at ``pos[b, t]``, query token ``s`` of ``q (B, Hq, D)`` or ``(B, Lq, Hq, D)`` at ``pos[b, s]`` when
        ``per_token``, else at ``pos[b, 0]``; ``pos (B, count)`` int64 from the lengths."""
        B, T = k.shape[:2]
        one = q.dim() == 3
        q4 = q[:, None] if one else q
        Lq = q4.shape[1]
        # the rows of the positions only, in float32 (not the whole table: flash-attn's tables are in q's dtype)
        c, s = self.cos[pos].float(), self.sin[pos].float()
        k = rotate(k, c[:, :T], s[:, :T], self.interleaved)
        if self.per_token:
            q4 = rotate(q4, c[:, :Lq], s[:, :Lq], self.interleaved)
        else:
            q4 = rotate(q4, c[:, :1].expand(B, Lq, -1), s[:, :1].expand(B, Lq, -1), self.interleaved)
        return (q4[:, 0] if one else q4), k
