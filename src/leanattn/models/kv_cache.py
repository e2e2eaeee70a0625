"""Paged KV cache for generation: one ``(num_pages, page_size, Hkv, D)`` tensor per layer for keys
and one for values, an int32 block table and int32 lengths that stay on the device.

Each sequence gets a contiguous run of pages, in batch order. Decode reads only through the block
table (so pages could be handed out in any order), but contiguous runs let prefill see a sequence's
keys as one ``(B, capacity, Hkv, D)`` view, which SDPA needs, without gathering pages.
"""
from __future__ import annotations

import torch

__all__ = ["PagedKVCache"]


class PagedKVCache:
    """Keys and values of ``batch`` sequences of up to ``capacity`` tokens each, in every layer.

    Parameters
    ----------
    num_layers, batch, capacity, kv_heads, head_dim : int
        ``capacity`` is rounded up to whole pages.
    page_size : int
        Tokens per page.
    dtype, device
        Of the cache tensors.

    Attributes
    ----------
    k, v : list of torch.Tensor
        Per layer ``(num_pages, page_size, kv_heads, head_dim)``.
    block_table : torch.Tensor
        ``(batch, pages_per_seq)`` int32; row ``b`` holds the page ids of sequence ``b``.
    seqlens : torch.Tensor
        ``(batch,)`` int32, tokens held per sequence; updated in place by the generation loop (a
        captured CUDA graph reads and advances it on the device).
    """

    def __init__(self, num_layers: int, batch: int, capacity: int, kv_heads: int, head_dim: int, page_size: int,
                 dtype: torch.dtype, device):
        if page_size < 1:
            raise ValueError(f"page_size: expected >= 1, got {page_size}")
        if capacity < 1 or batch < 1:
            raise ValueError(f"capacity, batch: expected >= 1, got {capacity}, {batch}")
        self.page_size = page_size
        self.pages_per_seq = -(-capacity // page_size)
        self.capacity = self.pages_per_seq * page_size
        self.batch = batch
        n_pages = batch * self.pages_per_seq
        shape = (n_pages, page_size, kv_heads, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.block_table = torch.arange(n_pages, dtype=torch.int32, device=device).view(batch, self.pages_per_seq)
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes of all key and value pages."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def seq_view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k, v)`` of ``layer`` as contiguous ``(batch, capacity, kv_heads, head_dim)`` views."""
        shape = (self.batch, self.capacity) + tuple(self.k[layer].shape[2:])
        return self.k[layer].view(shape), self.v[layer].view(shape)

    def locate(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(page, slot)`` int64 tensors, each of ``positions``' shape, holding token ``positions[b, ...]`` of
        sequence ``b``; ``positions`` is ``(batch,)`` or ``(batch, L)``. Index arithmetic on the device only (no host
        sync; capturable in a CUDA graph), and the same for every layer: a step computes it once."""
        pos = positions.long()
        page = self.block_table.gather(1, (pos // self.page_size).view(self.batch, -1)).view(pos.shape).long()
        return page, pos % self.page_size

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor,
              where: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Store ``k, v`` (``(batch, kv_heads, head_dim)``, or ``(batch, L, kv_heads, head_dim)`` for ``L`` tokens a
        sequence) in ``layer`` at ``where``, the :meth:`locate` of their positions."""
        page, slot = where
        self.k[layer][page, slot] = k
        self.v[layer][page, slot] = v
