"""Angular locality-sensitive hashing (Reformer, Kitaev et al. 2020; as used by SCFA)."""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from .. import checks

__all__ = ["lsh_buckets"]


def lsh_buckets(x: torch.Tensor, n_buckets: int, generator: Optional[torch.Generator] = None, *,
                group: int = 1) -> torch.Tensor:
    """Bucket ids by angular LSH, one random rotation per head (per ``group`` heads).

    For head ``h`` a random matrix ``R_h`` of shape ``(D, n_buckets // 2)`` with independent
    standard normal entries, each column scaled to unit length (as in the SCFA code), projects
    every token; the bucket is ``argmax([x R_h, -x R_h])``. Vectors at a small angle share a
    bucket with high probability; ``x`` and ``-x`` never do. The scale of ``x`` is irrelevant.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, N, H, D)`` floating point (typically the queries, or shared queries/keys).
    n_buckets : int
        Even, ``>= 2``.
    generator : torch.Generator, optional
        Source of the rotations (on any device; they are drawn there and moved to ``x``).
        Same generator state, same buckets. Queries and keys hashed for one attention should take the same
        rotations: a generator in the same state for both calls.
    group : int, keyword-only
        Heads of ``x`` that share one rotation (dividing ``H``): head ``h`` takes rotation ``h // group`` of
        ``H // group``. For the queries of a grouped-query model pass ``H // Hkv``, so that query head ``h`` is
        hashed as its kv head ``h // group`` is (the keys hashed with ``group=1`` from the same generator state).

    Returns
    -------
    torch.Tensor
        ``(B, N, H)`` int32 ids in ``[0, n_buckets)``, for :func:`leanattn.hash_sparse_attention`.
    """
    checks.check_tensor("x", x, 4)
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point dtype, got {x.dtype}")
    if not isinstance(n_buckets, numbers.Integral) or isinstance(n_buckets, bool):
        raise TypeError(f"n_buckets: expected an even int >= 2, got {type(n_buckets).__name__} {n_buckets!r}")
    if n_buckets < 2 or n_buckets % 2 or n_buckets > 2**31:
        # (ids are int32: n_buckets // 2 projections a head, 2**40 asked the allocator for terabytes)
        raise ValueError(f"n_buckets: expected an even int in [2, 2**31], got {n_buckets!r}")
    n_buckets = int(n_buckets)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    B, N, H, D = x.shape
    if not isinstance(group, numbers.Integral) or isinstance(group, bool) or group < 1 or H % group:
        raise ValueError(f"group: expected a positive int dividing x's {H} heads, got {group!r}")
    device = generator.device if generator is not None else x.device
    rot = torch.randn(H // group, D, n_buckets // 2, generator=generator, device=device, dtype=torch.float32)
    rot = (rot / rot.norm(dim=1, keepdim=True)).to(device=x.device).repeat_interleave(int(group), 0)
    # projections in x's dtype for half inputs (only the argmax matters), float32 otherwise
    work = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
    proj = torch.einsum("bnhd,hdr->bnhr", x.to(work), rot.to(work))
    return torch.cat([proj, -proj], dim=-1).argmax(dim=-1).to(torch.int32)
