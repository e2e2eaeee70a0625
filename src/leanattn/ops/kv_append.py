"""New keys and values written into a decode cache at each sequence's length, as ``flash_attn_with_kvcache(k=, v=)``,
the keys and the query turned by rotary embedding on the way where asked.

One launch (``kernels/kv_append.py``), or PyTorch index writes under ``torch.compile``: the positions come from the
lengths on the device, so there is no host sync and a captured CUDA graph writes where the lengths of each replay say.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from .. import checks, runtime
from ..kernels.kv_append import append_kv_kernel
from .rotary import Rotary

__all__ = ["check_new_kv", "lengths_after", "append_kv", "new_positions"]


def check_new_kv(k, v, q, k_cache, cache_seqlens, cu_seqlens_q) -> None:
    """``k, v (B, T, Hkv, D)`` to append: both or neither, the caches' dtype, kv heads and head dim, ``q``'s batch and
    device; they need ``cache_seqlens`` (where to write) and a query of one row a sequence (not packed)."""
    if (k is None) != (v is None):
        missing, given = ("v", "k") if v is None else ("k", "v")
        raise ValueError(f"{missing}: expected a tensor when {given} is given (new keys and values come together), "
                         "got None")
    if k is None:
        return
    checks.check_tensor("k", k, 4)
    checks.check_tensor("v", v, 4)
    if cache_seqlens is None:
        raise ValueError("cache_seqlens: expected the lengths before the new tokens when k and v are given (where "
                         "to write them), got None")
    checks.check_index("cache_seqlens", cache_seqlens, 1, q.device)
    checks.check_tensor("k_cache", k_cache, 4)
    if cu_seqlens_q is not None:
        raise ValueError("k: expected None with a packed query (cu_seqlens_q): the new tokens of a sequence are "
                         "(B, T, Hkv, D), one T for every sequence")
    B, Hkv, D = q.shape[0], k_cache.shape[2], k_cache.shape[3]
    if cache_seqlens.shape[0] != B:
        raise ValueError(f"cache_seqlens: expected shape ({B},) (batch size of q), got {tuple(cache_seqlens.shape)}")
    for name, x in (("k", k), ("v", v)):
        checks.check_same(name, x, "k_cache", k_cache)
        if x.shape[0] != B or x.shape[2] != Hkv or x.shape[3] != D:
            raise ValueError(f"{name}: expected shape ({B}, T, {Hkv}, {D}) (batch of q, kv heads and head dim of "
                             f"k_cache), got {tuple(x.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (as k), got {tuple(v.shape)}")


def lengths_after(k, v, q, k_cache, cache_seqlens, cu_seqlens_q):
    """:func:`check_new_kv`, then the lengths the query attends, ``cache_seqlens + T`` with new tokens, and their name
    in the errors of the value checks."""
    check_new_kv(k, v, q, k_cache, cache_seqlens, cu_seqlens_q)
    if k is None:
        return cache_seqlens, "cache_seqlens"
    return cache_seqlens + k.shape[1], "cache_seqlens + k.shape[1]"


def _check_append_values(k, cache_seqlens, k_cache, block_table) -> None:
    """The lengths before the new tokens ``k`` ``>= 0``, and the pages they go to holding valid ids, whatever window
    the query attends (the op's own checks, after :func:`lengths_after`, cover the lengths after them and the pages
    that window reads). A device sync."""
    lo = int(cache_seqlens.min())
    if lo < 0:
        raise ValueError(f"cache_seqlens: expected lengths >= 0, got a minimum of {lo}")
    if block_table is not None:
        page = k_cache.shape[1]
        used = ((cache_seqlens.long() + k.shape[1] + page - 1) // page).clamp(max=block_table.shape[1])
        checks.pages_in_use("block_table", block_table, cache_seqlens.long() // page, used, k_cache.shape[0])


def new_positions(cache_seqlens: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, count)`` int64 positions ``cache_seqlens[b] + t`` of the new tokens of each sequence: where
    :func:`append_kv` writes them and where rotary embedding turns them (``ops/rotary.py``)."""
    return cache_seqlens.long()[:, None] + torch.arange(count, device=cache_seqlens.device)[None, :]


def append_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
              cache_seqlens: torch.Tensor, block_table: Optional[torch.Tensor], validate, q=None,
              rotary: Optional[Rotary] = None, rotary_lens: Optional[torch.Tensor] = None):
    """Write token ``t`` of ``k, v (B, T, Hkv, D)`` (checked by :func:`lengths_after`; None: nothing to write) at
    position ``cache_seqlens[b] + t`` of sequence ``b``: row ``b`` of a contiguous cache ``(B, N, Hkv, D)``, or the
    page ``block_table[b, pos // page_size]`` of a paged one; with ``rotary``, the keys turned at those positions and
    ``q`` as :class:`~leanattn.ops.rotary.Rotary` says, their positions counted from ``rotary_lens (B,)`` (default
    ``cache_seqlens``; a shared-prefix call adds the prefix's tokens). Returns ``q``, rotated (a new tensor) with
    ``rotary``.

    Where values are checked (``validate``, as ``checks.value_checks`` takes it), the lengths before the new tokens,
    the pages they go to and the rows of the rotary tables are checked first; the positions must lie within the
    capacity (the op's checks of the lengths after them). Eager calls take one launch
    (``kernels/kv_append.append_kv_kernel``); under ``torch.compile`` PyTorch index writes, which it traces."""
    if k is None or k.shape[0] == 0 or (k.shape[1] == 0 and rotary is None):
        return q
    T = k.shape[1]
    Lq = 0 if rotary is None else (1 if q.dim() == 3 else q.shape[1])
    rotary_lens = cache_seqlens if rotary_lens is None else rotary_lens
    if checks.value_checks(validate, cache_seqlens, block_table):
        if T:
            _check_append_values(k, cache_seqlens, k_cache, block_table)
        if rotary is not None:
            rotary.check_positions(rotary_lens, T, Lq)
    if torch.compiler.is_compiling():
        if rotary is not None:
            q, k = rotary.qk(q, k, new_positions(rotary_lens, rotary.count(T, Lq)))
        _index_writes(k_cache, v_cache, k, v, cache_seqlens, block_table)
        return q
    # new tokens held in the cache itself (a view of it): read before any is written over
    caches = {k_cache.untyped_storage().data_ptr(), v_cache.untyped_storage().data_ptr()}
    k = k.clone() if k.untyped_storage().data_ptr() in caches else k
    v = v.clone() if v.untyped_storage().data_ptr() in caches else v
    with runtime.device_guard(k_cache.device):  # Triton launches on the current device
        return _launch(k_cache, v_cache, k, v, cache_seqlens, rotary_lens, block_table, q, rotary, Lq)


def _index_writes(k_cache, v_cache, k, v, cache_seqlens, block_table) -> None:
    """:func:`append_kv`'s writes as PyTorch index operations (the form ``torch.compile`` traces)."""
    B, T = k.shape[:2]
    pos = new_positions(cache_seqlens, T)
    if block_table is None:
        rows = torch.arange(B, device=k.device)[:, None].expand(B, T)
        slots = pos
    else:
        page_size = k_cache.shape[1]
        rows = block_table.long().gather(1, pos // page_size)
        slots = pos % page_size
    with torch.no_grad():  # a cache is state, never a node of autograd's graph (a k that requires grad)
        k_cache[rows, slots] = k
        v_cache[rows, slots] = v


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """A float8 tensor as its bytes (the kernel copies them; Triton's interpreter has no float8 loads)."""
    return x.view(torch.uint8) if x.element_size() == 1 and x.is_floating_point() else x


def _unit_d(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


_LAUNCHERS = runtime.PlanCache()


def _launcher(tensors, paged, B, T, Lq, Hkv, Hq, D, half, rotary):
    """The :class:`~leanattn.runtime.Launcher` of ``append_kv_kernel`` over ``tensors`` (``k, v, k_cache,
    v_cache, q, q_out, lens, rotary_lens, block_table, cos, sin``), heads in blocks of at most 16."""
    k, v, k_cache, v_cache, q4, o4, lens, rot_lens, table, cos, _ = tensors
    block_h = min(triton.next_power_of_2(max(Hkv, Hq)), 16)
    grid = (B * T + B * Lq, triton.cdiv(max(Hkv, Hq), block_h))
    page_size = k_cache.shape[1]
    scalars = (
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), q4.stride(0), q4.stride(1), q4.stride(2), o4.stride(0), o4.stride(1), o4.stride(2),
        table.stride(0), table.stride(1), lens.stride(0), rot_lens.stride(0), cos.stride(0), cos.stride(1),
        B * T, T, Lq, Hkv, Hq, D, page_size * table.shape[1] if paged else page_size, page_size, table.shape[1],
        cos.shape[0])
    meta = dict(HALF=half, INTERLEAVED=bool(rotary and rotary.interleaved),
                PER_TOKEN=bool(rotary and rotary.per_token), PAGED=paged, BLOCK_H=block_h,
                BLOCK_D=triton.next_power_of_2(D), num_warps=4,
                enable_fp_fusion=False)  # x * cos + x' * sin rounded as the traced PyTorch form rounds it
    return runtime.Launcher(append_kv_kernel, grid, meta, scalars)


def _launch(k_cache, v_cache, k, v, lens, rot_lens, block_table, q, rotary, Lq):
    """One launch of ``append_kv_kernel``: the ``B * T`` new tokens, then the ``B * Lq`` query tokens to turn, each
    in blocks of at most 16 heads."""
    B, T, Hkv, D = k.shape
    k, v = _unit_d(k), _unit_d(v)
    q_out = None
    if rotary is not None:
        q = _unit_d(q)
        q_out = torch.empty_like(q, memory_format=torch.contiguous_format)
        cos, sin = rotary.cos, rotary.sin
        if sin.stride() != cos.stride():  # one pair of strides serves both tables
            cos, sin = cos.contiguous(), sin.contiguous()
        q4, o4 = (q[:, None], q_out[:, None]) if q.dim() == 3 else (q, q_out)
        Hq, half = q4.shape[2], cos.shape[1]
    else:
        cos = sin = q4 = o4 = _bytes(k)  # (not read)
        Hq, half = 0, 0
    if B * (T + Lq) == 0:
        return q if q_out is None else q_out
    paged = block_table is not None
    tensors = (_bytes(k), _bytes(v), _bytes(k_cache), _bytes(v_cache), q4, o4, lens, rot_lens,
               block_table if paged else lens[:, None], cos, sin)
    # one launcher a signature (the shapes and strides it fixes, the dtypes): later calls skip Triton's JIT
    key = (tuple(t.stride() for t in tensors), k.shape, k_cache.shape, q4.shape, tensors[8].shape, cos.shape,
           tuple(t.dtype for t in tensors), rotary is not None and (rotary.interleaved, rotary.per_token),
           paged, k.device)
    _LAUNCHERS.get_or_make(key, lambda: _launcher(tensors, paged, B, T, Lq, Hkv, Hq, D, half, rotary))(*tensors)
    return q if q_out is None else q_out
