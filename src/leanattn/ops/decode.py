"""``leanattn.decode``: attention of one new token per sequence over a KV cache."""
from __future__ import annotations

import math
from typing import Literal, Optional, overload

import torch
import triton

from .. import checks, runtime
from ..kernels.decode import lean_decode_kernel, split_decode_kernel
from ..kernels.merge import merge_states_kernel
from ..schedules.fixed_split import num_splits_heuristic
from .decode_config import DecodeConfig, decode_config

__all__ = ["decode"]

LOG2E = 1.4426950408889634
_GRID_CACHE: dict = {}


def _capacity(k_cache: torch.Tensor, block_table: Optional[torch.Tensor]) -> int:
    return k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]


def _common_args(q, k_cache, v_cache, cache_seqlens, block_table):
    paged = block_table is not None
    bt = block_table if paged else q.new_empty((1, 1), dtype=torch.int32)
    sl = cache_seqlens if cache_seqlens is not None else q.new_empty((1,), dtype=torch.int32)
    return sl, bt, paged


def _meta(cfg: DecodeConfig, q, k_cache, paged, has_seqlens, group, extra=()):
    page_size = k_cache.shape[1] if paged else 0
    upcast = runtime.interpreting() and q.dtype == torch.bfloat16  # bf16 tl.dot is broken in the interpreter
    return dict(
        GROUP=group, N_HB=cfg.n_hb, ROWS=k_cache.shape[2] * cfg.n_hb,
        HEAD_DIM=q.shape[-1], BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
        PAGE_SIZE=page_size, HAS_SEQLENS=has_seqlens, UPCAST=upcast,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **dict(extra))


def _lean_grid(cfg, args, meta, device, num_programs) -> int:
    if num_programs > 0:
        return num_programs
    key = (str(device), cfg, tuple(sorted((k, v) for k, v in meta.items())))
    grid = _GRID_CACHE.get(key)
    if grid is None:
        occ = 1
        if device.type == "cuda":
            compiled = lean_decode_kernel.warmup(*args, grid=(1,), **meta)
            occ = runtime.occupancy(compiled, device)
        grid = runtime.num_sms(device) * max(1, min(occ, cfg.ctas_per_sm))
        _GRID_CACHE[key] = grid
    return grid


def _run_lean(q, k_cache, v_cache, cache_seqlens, block_table, scale, num_programs, cfg, out, lse):
    B, Hq, D = q.shape
    group = Hq // k_cache.shape[2]
    sl, bt, paged = _common_args(q, k_cache, v_cache, cache_seqlens, block_table)
    meta = _meta(cfg, q, k_cache, paged, cache_seqlens is not None, group,
                 extra=dict(BLOCK_B=max(16, triton.next_power_of_2(B))))
    device = q.device

    def args(ws_acc, ws_ml, counters):
        return (q, k_cache, v_cache, out, lse, sl, bt, ws_acc, ws_ml, counters,
                q.stride(0), q.stride(1),
                k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
                out.stride(0), out.stride(1), lse.stride(0), bt.stride(0),
                scale * LOG2E, B, _capacity(k_cache, block_table))

    dummy = q.new_empty((1,), dtype=torch.float32)
    grid = _lean_grid(cfg, args(dummy, dummy, dummy.to(torch.int32)), meta, device, num_programs)
    ws_acc = runtime.workspace("decode_acc", device, (2 * grid, cfg.block_h, D), torch.float32)
    ws_ml = runtime.workspace("decode_ml", device, (2 * grid, 2, cfg.block_h), torch.float32)
    counters = runtime.workspace("decode_counters", device, (grid,), torch.int32, zero=True)
    lean_decode_kernel[(grid,)](*args(ws_acc, ws_ml, counters), **meta)


def _run_split(q, k_cache, v_cache, cache_seqlens, block_table, scale, num_splits, cfg, out, lse):
    B, Hq, D = q.shape
    group = Hq // k_cache.shape[2]
    sl, bt, paged = _common_args(q, k_cache, v_cache, cache_seqlens, block_table)
    meta = _meta(cfg, q, k_cache, paged, cache_seqlens is not None, group)
    rows = B * meta["ROWS"]
    cap = _capacity(k_cache, block_table)
    cap_tiles = max(triton.cdiv(cap, cfg.block_n), 1)
    if num_splits <= 0:
        num_splits = num_splits_heuristic(rows, 2 * runtime.num_sms(q.device), cap_tiles)
    num_splits = max(1, min(num_splits, cap_tiles))
    chunk = triton.cdiv(cap_tiles, num_splits)
    if num_splits == 1:
        o, ls = out, lse
    else:
        o = torch.empty((num_splits, B, Hq, D), dtype=torch.float32, device=q.device)
        ls = torch.empty((num_splits, B, Hq), dtype=torch.float32, device=q.device)
    split_decode_kernel[(rows, num_splits)](
        q, k_cache, v_cache, o, ls, sl, bt,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        o.stride(-3), o.stride(-2), ls.stride(-2),
        o.stride(0) if num_splits > 1 else 0, ls.stride(0) if num_splits > 1 else 0,
        bt.stride(0), scale * LOG2E, cap, chunk, **meta)
    if num_splits > 1:
        M = B * Hq
        block_d = triton.next_power_of_2(D)
        block_m = max(1, min(64, 4096 // block_d))
        merge_states_kernel[(triton.cdiv(M, block_m),)](
            o.view(num_splits, M, D), ls.view(num_splits, M), out, lse, num_splits, M,
            M * D, D, M, 1, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)


@torch.library.custom_op("leanattn::decode", mutates_args=())
def _decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    cache_seqlens: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
    softmax_scale: float, schedule: str, num_programs: int, num_splits: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, Hq, D = q.shape
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq), dtype=torch.float32, device=q.device)
    if B == 0 or Hq == 0:
        return out, lse
    if _capacity(k_cache, block_table) == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    cfg = decode_config(D, Hq // k_cache.shape[2], q.device, block_n or None)
    run = _run_lean if schedule == "lean" else _run_split
    run(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale,
        num_programs if schedule == "lean" else num_splits, cfg, out, lse)
    return out, lse


@_decode_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, num_programs, num_splits, block_n):
    B, Hq, D = q.shape
    return q.new_empty((B, Hq, D)), q.new_empty((B, Hq), dtype=torch.float32)


def validate_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, validate):
    """Shape, dtype and device checks (always); length checks when they cost no device sync.

    Returns the softmax scale to use.
    """
    checks.check_tensor("q", q, 3)
    checks.check_tensor("k_cache", k_cache, 4)
    checks.check_tensor("v_cache", v_cache, 4)
    checks.check_dtype("q", q)
    checks.check_same("k_cache", k_cache, "q", q)
    checks.check_same("v_cache", v_cache, "q", q)
    B, Hq, D = q.shape
    checks.check_head_dim("q", D)
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache: expected shape {tuple(k_cache.shape)} (as k_cache), got {tuple(v_cache.shape)}")
    Hkv, Dk = k_cache.shape[2], k_cache.shape[3]
    if Dk != D:
        raise ValueError(f"k_cache: expected head dim {D} (as q), got {Dk}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q: expected a number of heads that is a multiple of k_cache's {Hkv} kv heads, got {Hq}")
    checks.check_unit_stride("k_cache", k_cache)
    checks.check_unit_stride("v_cache", v_cache)
    if block_table is None:
        if k_cache.shape[0] != B:
            raise ValueError(f"k_cache: expected batch size {B} (as q), got {k_cache.shape[0]}")
    else:
        checks.check_index("block_table", block_table, 2, q.device)
        if block_table.shape[0] != B:
            raise ValueError(f"block_table: expected {B} rows (batch size of q), got {block_table.shape[0]}")
        if block_table.stride(-1) != 1:
            raise ValueError(f"block_table: expected unit stride on the last dimension, got {tuple(block_table.stride())}")
        if k_cache.shape[1] < 1:
            raise ValueError(f"k_cache: expected a page size >= 1, got {k_cache.shape[1]}")
    if cache_seqlens is not None:
        checks.check_index("cache_seqlens", cache_seqlens, 1, q.device)
        if cache_seqlens.shape[0] != B:
            raise ValueError(f"cache_seqlens: expected shape ({B},) (batch size of q), got {tuple(cache_seqlens.shape)}")
    if schedule not in ("lean", "split"):
        raise ValueError(f"schedule: expected 'lean' or 'split', got {schedule!r}")
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(D)
    elif not isinstance(softmax_scale, (int, float)) or isinstance(softmax_scale, bool):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")
    if validate is None:
        validate = checks.values_checkable(cache_seqlens, block_table)
    if validate and cache_seqlens is not None:
        cap = _capacity(k_cache, block_table)
        lo, hi = int(cache_seqlens.min()) if B else 0, int(cache_seqlens.max()) if B else 0
        if lo < 0:
            raise ValueError(f"cache_seqlens: expected lengths >= 0, got a minimum of {lo}")
        if hi > cap:
            what = "block_table pages x page size" if block_table is not None else "k_cache capacity"
            raise ValueError(f"cache_seqlens: expected lengths <= {cap} ({what}), got a maximum of {hi}")
    if validate and block_table is not None and block_table.numel():
        lens = cache_seqlens if cache_seqlens is not None else torch.full((B,), _capacity(k_cache, block_table),
                                                                          dtype=torch.int32, device=q.device)
        used = (lens.long() + k_cache.shape[1] - 1) // k_cache.shape[1]
        cols = torch.arange(block_table.shape[1], device=q.device)[None, :]
        ids = torch.where(cols < used[:, None], block_table.long(), 0)
        if int(ids.min()) < 0 or int(ids.max()) >= k_cache.shape[0]:
            raise ValueError(f"block_table: expected page ids in [0, {k_cache.shape[0]}) for the pages in use, "
                             f"got ids in [{int(ids.min())}, {int(ids.max())}]")
    return float(softmax_scale)


@overload
def decode(q, k_cache, v_cache, cache_seqlens=..., block_table=..., softmax_scale=..., return_lse: Literal[False] = ...,
           schedule=..., **kw) -> torch.Tensor: ...
@overload
def decode(q, k_cache, v_cache, cache_seqlens=..., block_table=..., softmax_scale=..., return_lse: Literal[True] = ...,
           schedule=..., **kw) -> tuple[torch.Tensor, torch.Tensor]: ...


def decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    schedule: str = "lean",
    *,
    num_programs: int = 0,
    num_splits: int = 0,
    validate: Optional[bool] = None,
):
    """Decode attention: one query token per sequence against its KV cache.

    Exact softmax attention ``softmax(q k^T * softmax_scale) v`` over the first
    ``cache_seqlens[b]`` tokens of each sequence. Query head ``h`` reads kv head
    ``h // (Hq // Hkv)`` (GQA/MQA as in flash-attn and FlashInfer).

    Parameters
    ----------
    q : torch.Tensor
        ``(B, Hq, D)``, float16, bfloat16 (or float32), ``D`` in {64, 128, 256}.
    k_cache, v_cache : torch.Tensor
        Contiguous cache ``(B, N, Hkv, D)`` or, with ``block_table``, paged cache
        ``(num_pages, page_size, Hkv, D)``; same dtype and device as ``q``. Any strides with unit
        stride on ``D`` are used without a copy (a ``(B, Hkv, N, D)`` cache seen through
        ``.transpose(1, 2)`` works).
    cache_seqlens : torch.Tensor, optional
        ``(B,)`` int32, tokens of each sequence in the cache. Default: the full capacity
        (``N``, or ``max_pages * page_size``). Zero-length sequences give zeros and ``lse = -inf``.
    block_table : torch.Tensor, optional
        ``(B, max_pages)`` int32: ``block_table[b, i]`` is the page holding tokens
        ``[i * page_size, (i + 1) * page_size)`` of sequence ``b``. Any page size.
    softmax_scale : float, optional
        Default ``1 / sqrt(D)``.
    return_lse : bool
        Also return the natural-log sum of exponentiated scores, for merging partial results.
    schedule : {"lean", "split"}
        ``"lean"``: stream-K; a persistent grid of ``SMs x occupancy`` programs, each taking an
        equal contiguous range of all KV tiles of all (sequence, kv-head) pairs, counted by real
        length; partial heads are merged in-kernel in a fixed order (bitwise deterministic).
        ``"split"``: FlashDecoding's fixed number of splits per head and a merge launch.
    num_programs : int, keyword-only
        Persistent programs for ``"lean"`` (0 = SMs x measured occupancy).
    num_splits : int, keyword-only
        Splits per head for ``"split"`` (0 = FlashAttention-2's heuristic).
    validate : bool, optional, keyword-only
        Check length and page-id values. Default: only when it needs no device sync (CPU tensors,
        outside ``torch.compile``); pass ``True`` to check CUDA inputs at the cost of a sync.

    Returns
    -------
    out : torch.Tensor
        ``(B, Hq, D)`` in ``q.dtype``.
    lse : torch.Tensor
        ``(B, Hq)`` float32, natural log; only with ``return_lse=True``.

    Notes
    -----
    The schedule is computed on the device from ``cache_seqlens``: there is no host sync, and a
    captured CUDA graph stays correct when the lengths change between replays. Registered as the
    custom op ``torch.ops.leanattn.decode`` (works under ``torch.compile(fullgraph=True)``).

    Examples
    --------
    >>> q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    >>> k = torch.randn(4, 8192, 8, 128, dtype=torch.bfloat16, device="cuda")
    >>> v = torch.randn_like(k)
    >>> lens = torch.tensor([8192, 100, 0, 4000], dtype=torch.int32, device="cuda")
    >>> out, lse = leanattn.decode(q, k, v, cache_seqlens=lens, return_lse=True)
    """
    scale = validate_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, validate)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out, lse = _decode_op(q, k_cache, v_cache, cache_seqlens, block_table, scale, schedule,
                          int(num_programs), int(num_splits), 0)
    return (out, lse) if return_lse else out
