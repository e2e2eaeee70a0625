"""Where the tokens of a sharded KV cache live: placements, and a cache that grows on every rank.

Attention at decode is a sum over keys, so any assignment of tokens to ranks is exact; what a
placement decides is balance (each rank's decode time is its share of the bytes) and who writes
new tokens. Two placements:

- ``"round_robin"`` (as vLLM's and SGLang's decode context parallelism): the sequence is cut into
  pages of ``page_size`` tokens and page ``g`` lives on rank ``g % world``. New tokens are spread
  over all ranks, shards never differ by more than one page.
- ``"contiguous"``: rank ``r`` holds positions ``[r * C, (r + 1) * C)`` with ``C = ceil(capacity /
  world)``. A prompt splits evenly; later tokens land on the last non-full rank (Zyphra's
  "append to the last rank").

Both map a global position to ``(owner rank, local slot)`` with integer arithmetic only, and the
slots a rank holds for a sequence of length ``L`` are always the prefix ``[0, local_length(L))``,
so a shard is an ordinary decode cache with ``cache_seqlens``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import checks
from . import _comm

__all__ = ["PLACEMENTS", "Placement", "shard_cache", "ShardedKVCache"]

PLACEMENTS = ("round_robin", "contiguous")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Token-to-rank map of a sharded cache.

    Parameters
    ----------
    kind : {"round_robin", "contiguous"}
    world_size : int
        Ranks sharing the cache.
    capacity : int
        Tokens per sequence the whole cache can hold (all ranks together).
    page_size : int
        Tokens per round-robin page (ignored by ``"contiguous"``).
    """

    kind: str
    world_size: int
    capacity: int
    page_size: int = 16

    def __post_init__(self):
        if not isinstance(self.kind, str):
            raise TypeError(f"placement: expected one of {PLACEMENTS}, got {type(self.kind).__name__}")
        if self.kind not in PLACEMENTS:
            raise ValueError(f"placement: expected one of {PLACEMENTS}, got {self.kind!r}")
        for name, least in (("world_size", 1), ("page_size", 1), ("capacity", 0)):
            # (numpy integers taken as ints, bools refused)
            object.__setattr__(self, name, checks.int_at_least(name, getattr(self, name), least))  # (frozen)

    @property
    def block(self) -> int:
        """Tokens per rank of ``"contiguous"``."""
        return -(-self.capacity // self.world_size)

    def local_capacity(self) -> int:
        """Slots every rank needs per sequence."""
        if self.kind == "contiguous":
            return self.block
        pages = -(-self.capacity // self.page_size)
        return -(-pages // self.world_size) * self.page_size

    def owner(self, pos: torch.Tensor) -> torch.Tensor:
        """Rank holding each global position (int64 tensor in, int64 tensor out)."""
        if self.kind == "contiguous":
            return pos // max(self.block, 1)
        return (pos // self.page_size) % self.world_size

    def local_slot(self, pos: torch.Tensor) -> torch.Tensor:
        """Slot of each global position in its owner's shard."""
        if self.kind == "contiguous":
            return pos - self.owner(pos) * self.block
        page = pos // self.page_size
        return (page // self.world_size) * self.page_size + pos % self.page_size

    def local_length(self, length: torch.Tensor, rank: int) -> torch.Tensor:
        """Tokens rank ``rank`` holds of sequences of global lengths ``length`` (any int tensor)."""
        length = length.to(torch.int64)
        if self.kind == "contiguous":
            return (length - rank * self.block).clamp(0, self.block)
        P, W = self.page_size, self.world_size
        full, rem = length // P, length % P
        owned_full = ((full - rank + W - 1) // W).clamp(min=0)        # pages g < full with g % W == rank
        partial = torch.where(full % W == rank, rem, torch.zeros_like(rem))
        return owned_full * P + partial

    def token_seqlens(self, length: torch.Tensor, num_tokens: int, rank: int) -> torch.Tensor:
        """Per-token shard lengths of a causal step: the tokens rank ``rank`` holds that each of the last
        ``num_tokens`` positions of sequences of global lengths ``length`` attends (itself included).

        Parameters
        ----------
        length : torch.Tensor
            ``(B,)`` ints, global tokens per sequence, the query tokens' own included.
        num_tokens : int
            ``Lq``, query tokens a sequence, at positions ``length - Lq .. length - 1``.
        rank : int

        Returns
        -------
        torch.Tensor
            ``(B, Lq)`` int64, :func:`tree_decode`'s per-token ``shard_seqlens`` (as int32). A position before the
            sequence's first token attends nothing (0).
        """
        ends = length.to(torch.int64)[:, None] - num_tokens + 1 + torch.arange(num_tokens, device=length.device)
        return self.local_length(ends.clamp(min=0), rank)

    def window_starts(self, length: torch.Tensor, num_tokens: int, window_left: int, rank: int) -> torch.Tensor:
        """Where a sliding window starts in rank ``rank``'s shard for each of the last ``num_tokens`` positions of
        sequences of global lengths ``length``: the tokens the rank holds before position ``pos - window_left``.

        Returns
        -------
        torch.Tensor
            ``(B, num_tokens)`` int64, :func:`tree_decode`'s ``shard_starts`` (as int32).
        """
        pos = length.to(torch.int64)[:, None] - num_tokens + torch.arange(num_tokens, device=length.device)
        return self.local_length((pos - window_left).clamp(min=0), rank)


def shard_cache(k: torch.Tensor, v: torch.Tensor, cache_seqlens: Optional[torch.Tensor], placement: Placement,
                rank: int):
    """Rank ``rank``'s shard of a whole contiguous cache: for tests, demos and benchmarks.

    Parameters
    ----------
    k, v : torch.Tensor
        ``(B, N, Hkv, D)``, the whole cache (``N <= placement.capacity``).
    cache_seqlens : torch.Tensor, optional
        ``(B,)`` int32 global lengths (default ``N``).
    placement : Placement
    rank : int

    Returns
    -------
    k_shard, v_shard : torch.Tensor
        ``(B, placement.local_capacity(), Hkv, D)``.
    shard_seqlens : torch.Tensor
        ``(B,)`` int32, tokens of each sequence on this rank.
    """
    B, N = k.shape[:2]
    if N > placement.capacity:
        raise ValueError(f"k: expected at most {placement.capacity} tokens (placement capacity), got {N}")
    lens = torch.full((B,), N, dtype=torch.int64) if cache_seqlens is None else cache_seqlens.cpu().to(torch.int64)
    pos = torch.arange(N)
    mine = pos[placement.owner(pos) == rank]
    slots = placement.local_slot(mine)
    cap = placement.local_capacity()
    ks = k.new_zeros((B, cap) + tuple(k.shape[2:]))
    vs = v.new_zeros((B, cap) + tuple(v.shape[2:]))
    ks[:, slots.to(k.device)] = k[:, mine.to(k.device)]
    vs[:, slots.to(v.device)] = v[:, mine.to(v.device)]
    return ks, vs, placement.local_length(lens, rank).to(torch.int32).to(k.device)


class ShardedKVCache:
    """A KV cache of ``B`` sequences spread over the ranks of a group, growing token by token.

    Every rank computes the keys and values of new tokens (the query is replicated, so they are
    the same everywhere) and calls :meth:`append`; each rank stores only the tokens its placement
    gives it. :meth:`decode` runs :func:`tree_decode` on the shards.

    Parameters
    ----------
    batch, kv_heads, head_dim : int
        ``B``, ``Hkv``, ``D``.
    capacity : int
        Tokens per sequence over all ranks together.
    placement : {"round_robin", "contiguous"}
        See the module docstring. Default ``"round_robin"`` (balanced appends).
    page_size : int
        Round-robin granularity in tokens, and the page size of paged storage.
    paged : bool
        Store the shard as a page pool ``(B * pages, page_size, Hkv, D)`` with a block table
        (pages handed out in reverse order, as an allocator would) instead of ``(B, N_r, Hkv, D)``.
    group : torch.distributed.ProcessGroup, optional
        Default: the world group (or a single rank without torch.distributed).
    dtype, device
        Of the cache tensors.

    Attributes
    ----------
    lengths : torch.Tensor
        ``(B,)`` int64 on the CPU: global tokens per sequence.
    shard_seqlens : torch.Tensor
        ``(B,)`` int32 on ``device``: tokens per sequence on this rank.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int, *, placement: str = "round_robin",
                 page_size: int = 16, paged: bool = False, group=None, dtype: torch.dtype = torch.float16,
                 device=None):
        batch, kv_heads = checks.int_at_least("batch", batch, 0), checks.int_at_least("kv_heads", kv_heads, 1)
        head_dim = checks.int_at_least("head_dim", head_dim, 1)
        checks.check_head_dim("head_dim", head_dim)
        paged = checks.flag("paged", paged)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype (the cache's), got {dtype!r}")
        if device is not None and (not isinstance(device, (str, int, torch.device)) or isinstance(device, bool)):
            raise TypeError(f"device: expected a torch.device, a device string or index, got {type(device).__name__}")
        try:
            device = torch.device(device) if device is not None else torch.device("cpu")
        except RuntimeError as e:
            raise ValueError(f"device: expected a torch.device, a device string or index, got {device!r} ({e})") \
                from None
        self.group = group
        self.rank, self.world_size = _comm.world(group)
        self.placement = Placement(placement, self.world_size, capacity, page_size)
        self.batch, self.kv_heads, self.head_dim = batch, kv_heads, head_dim
        self.paged = paged
        cap = self.placement.local_capacity()
        if paged:
            page_size = self.placement.page_size  # (checked there)
            pages = -(-cap // page_size)
            shape = (batch * pages, page_size, kv_heads, head_dim)
            ids = torch.arange(batch * pages - 1, -1, -1, dtype=torch.int32).view(batch, pages)
            self._table_cpu = ids.to(torch.int64)
            self.block_table = ids.to(device)
        else:
            shape = (batch, cap, kv_heads, head_dim)
            self.block_table = None
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.int64)
        self.shard_seqlens = torch.zeros(batch, dtype=torch.int32, device=device)

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, counts: Optional[torch.Tensor] = None) -> None:
        """Add the next tokens of every sequence; this rank keeps the ones it owns.

        Parameters
        ----------
        k_new, v_new : torch.Tensor
            ``(B, T, Hkv, D)``, identical on every rank.
        counts : torch.Tensor, optional
            ``(B,)`` ints: only the first ``counts[b]`` of the ``T`` tokens of sequence ``b`` are
            real (ragged prompts). Default: all ``T``.
        """
        checks.check_tensor("k_new", k_new, 4)
        checks.check_tensor("v_new", v_new)
        for name, x in (("k_new", k_new), ("v_new", v_new)):
            if not x.dtype.is_floating_point:
                raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
        B, T = k_new.shape[:2]
        if tuple(k_new.shape) != (self.batch, T, self.kv_heads, self.head_dim):
            raise ValueError(f"k_new: expected shape ({self.batch}, T, {self.kv_heads}, {self.head_dim}), "
                             f"got {tuple(k_new.shape)}")
        if tuple(v_new.shape) != tuple(k_new.shape):
            raise ValueError(f"v_new: expected shape {tuple(k_new.shape)} (as k_new), got {tuple(v_new.shape)}")
        if counts is not None:
            checks.check_tensor("counts", counts)
            if counts.dtype.is_floating_point or counts.dtype.is_complex or counts.dtype == torch.bool:
                raise TypeError(f"counts: expected an integer dtype, got {counts.dtype}")
        counts = torch.full((B,), T, dtype=torch.int64) if counts is None else counts.cpu().to(torch.int64)
        if counts.shape != (B,) or (B and (int(counts.min()) < 0 or int(counts.max()) > T)):
            raise ValueError(f"counts: expected shape ({B},) with values in [0, {T}], got {counts.tolist()}")
        new_len = self.lengths + counts
        if B and int(new_len.max()) > self.placement.capacity:
            raise ValueError(f"k_new: expected at most {self.placement.capacity} tokens per sequence in all "
                             f"(capacity), got {int(new_len.max())} after this append")
        t = torch.arange(T)
        pos = self.lengths[:, None] + t[None, :]                                         # (B, T) global positions
        mine = (t[None, :] < counts[:, None]) & (self.placement.owner(pos) == self.rank)
        b_idx, t_idx = mine.nonzero(as_tuple=True)
        slot = self.placement.local_slot(pos[b_idx, t_idx])
        if b_idx.numel():
            dev = self.k.device
            src_b, src_t = b_idx.to(k_new.device), t_idx.to(k_new.device)
            kk, vv = k_new[src_b, src_t].to(dev, self.k.dtype), v_new[src_b, src_t].to(dev, self.v.dtype)
            if self.paged:
                P = self.placement.page_size
                rows, offs = self._table_cpu[b_idx, slot // P].to(dev), (slot % P).to(dev)
            else:
                rows, offs = b_idx.to(dev), slot.to(dev)
            self.k[rows, offs] = kk
            self.v[rows, offs] = vv
        self.lengths = new_len
        self.shard_seqlens.copy_(self.placement.local_length(new_len, self.rank).to(torch.int32))

    def shard(self) -> dict:
        """Keyword arguments of :func:`tree_decode` / :func:`ring_decode` for this rank's shard."""
        return dict(k_shard=self.k, v_shard=self.v, shard_seqlens=self.shard_seqlens, block_table=self.block_table)

    def token_seqlens(self, num_tokens: int) -> torch.Tensor:
        """``(B, num_tokens)`` int32 on the cache's device: this rank's tokens that each of the last ``num_tokens``
        appended tokens attends causally (:meth:`Placement.token_seqlens`)."""
        num_tokens = checks.int_at_least("num_tokens", num_tokens, 0)
        return self.placement.token_seqlens(self.lengths, num_tokens, self.rank).to(self.k.device, torch.int32)

    def decode(self, q: torch.Tensor, method: str = "allgather", causal: bool = False, window_left: int = -1, **kw):
        """Attention of ``q`` over the whole cache, every rank getting the result.

        Parameters
        ----------
        q : torch.Tensor
            ``(B, Hq, D)``, or ``(B, Lq, Hq, D)``: several query tokens a sequence.
        method : {"allgather", "allreduce3", "ring"}
            :func:`tree_decode` with that variant, or :func:`ring_decode`.
        causal : bool
            With a 4-D ``q``: its tokens are the last ``Lq`` appended, and each attends the tokens up to its own
            position (:meth:`token_seqlens`). False: every token attends the whole cache.
        window_left : int
            A sliding window (as :func:`leanattn.decode`'s): a query token at position ``pos`` (the last ``Lq``
            appended) attends no token before ``pos - window_left`` (:meth:`Placement.window_starts`). -1: none.
            Not with ``"ring"``.
        **kw
            As :func:`tree_decode` / :func:`ring_decode`.
        """
        from .tree import VARIANTS, ring_decode, tree_decode
        if not isinstance(method, str):
            raise TypeError(f"method: expected one of {VARIANTS + ('ring',)}, got {type(method).__name__}")
        shard = self.shard()
        tokens = q.shape[1] if isinstance(q, torch.Tensor) and q.dim() == 4 else 1
        if checks.flag("causal", causal) and tokens > 1:
            shard["shard_seqlens"] = self.token_seqlens(tokens)
        window_left = checks.window_left(window_left)
        if window_left >= 0:
            if method == "ring":
                raise ValueError(f"window_left: expected -1 with method 'ring' (ring_decode has no window), got "
                                 f"{window_left}")
            starts = self.placement.window_starts(self.lengths, tokens, window_left, self.rank)
            shard.update(shard_starts=(starts if tokens > 1 else starts[:, 0]).to(self.k.device, torch.int32),
                         window_left=window_left)
        if method == "ring":
            return ring_decode(q, **shard, group=self.group, **kw)
        if method not in VARIANTS:
            raise ValueError(f"method: expected one of {VARIANTS + ('ring',)}, got {method!r}")
        return tree_decode(q, **shard, group=self.group, variant=method, **kw)

    def __repr__(self) -> str:
        return (f"ShardedKVCache(rank={self.rank}/{self.world_size}, {self.placement.kind}, B={self.batch}, "
                f"Hkv={self.kv_heads}, D={self.head_dim}, capacity={self.placement.capacity}, "
                f"local={self.placement.local_capacity()}, paged={self.paged})")


def balance(lengths: torch.Tensor, placement: Placement) -> list[int]:
    """Tokens each rank holds in all for sequences of ``lengths``: how even a placement is."""
    return [int(placement.local_length(lengths, r).sum()) for r in range(placement.world_size)]


__all__ += ["balance"]
