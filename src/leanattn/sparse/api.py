"""``qk_sparse_attention`` and ``hash_sparse_attention``: exact sparse causal flash attention.

Three layers, as elsewhere in leanattn: the Triton kernels (``kernels/sparse_attn.py``, and
``kernels/sparse_ranges.py`` for the layout), two ``torch.library`` custom ops (forward,
backward) tied together with ``register_autograd``, whose launches are cached per signature in
``plan.py``, and the public functions, which validate their inputs and call the forward op with
the keep masks or bucket ids as they are: the forward op computes the layout itself.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .. import checks, runtime
from .plan import get_plan, meta_sizes

__all__ = ["qk_sparse_attention", "hash_sparse_attention", "SparseConfig", "sparse_config"]

HEAD_DIMS = (64, 128)
MAX_GROUP = 2**31 - 1


@dataclass(frozen=True)
class SparseConfig:
    """Tile sizes. The forward and the dQ pass use ``block_m`` queries x ``block_n`` keys; the
    dK/dV pass uses ``block_n_bwd`` keys per program x ``block_m_bwd`` queries per step."""

    block_m: int
    block_n: int
    block_m_bwd: int
    block_n_bwd: int


_override: Optional[SparseConfig] = None


def sparse_config(head_dim: int, device: torch.device, hashed: bool = False) -> SparseConfig:
    """Tiles for ``head_dim`` on ``device``: FlashAttention-2-style tiles on GPU, 16s on the interpreter.
    ``hashed``: for hash buckets (``hash_sparse_attention``) rather than dropped tokens.

    ``LEANATTN_SPARSE_TILES="block_m,block_n,block_m_bwd,block_n_bwd"`` (powers of two >= 16)
    overrides them, for tuning without code changes.
    """
    if _override is not None:
        return _override
    env = os.environ.get("LEANATTN_SPARSE_TILES")
    if env:
        tiles = [int(x) if x.strip().isdigit() else 0 for x in env.split(",")]
        if len(tiles) != 4 or any(t < 16 or t & (t - 1) for t in tiles):
            raise ValueError(f"LEANATTN_SPARSE_TILES: expected four powers of two >= 16, got {env!r}")
        return SparseConfig(*tiles)
    if not runtime.gpu_target(device):
        return SparseConfig(16, 16, 16, 16)
    if head_dim <= 64:
        return SparseConfig(128, 64, 64, 128)
    # D=128, H100 2026-12-07 (probe_sparse_tiles.py, B=2, 32 over 8 heads, 8k): 64-query backward steps beat 32
    # by 4-11% in every case; 128-key forward tiles beat 64 by 14% dense and 8% with half the tokens dropped, but
    # lost 8% over 16 hash buckets, whose bucket edges waste more of a wider tile
    return SparseConfig(128, 64 if hashed else 128, 64, 128)


# The ops take the tiles and the backward mode as one int list ``config = [block_m, block_n,
# block_m_bwd, block_n_bwd, deterministic]``: torch.library's autograd wrapper costs time
# quadratic in the number of schema arguments on every call (``fill_defaults`` rebuilds the
# argument list per argument), ~65 us at eleven arguments.


@torch.library.custom_op("leanattn::sparse_attn_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_ids: torch.Tensor, k_ids: torch.Tensor,
    softmax_scale: float, config: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layout and forward of one call.

    ``q_ids, k_ids``: ``(B, N, H)`` and ``(B, N, Hkv)`` bool keep masks (QK mode) or int32 bucket ids (hash mode).
    Returns ``out (B, N, H, D)``, the internal ``lse (B*H, N)`` float32 (log2 units, sorted
    order, ``+inf`` where a query sees no key) and ``meta``, the int32 layout buffer
    (``plan.py``), which the backward reads. ``config[4]`` (deterministic) is for the backward.
    """
    return get_plan(q, k, v, config).forward(q, k, v, q_ids, k_ids, softmax_scale)


@_fwd_op.register_fake
def _(q, k, v, q_ids, k_ids, softmax_scale, config):
    B, N, H, D = q.shape
    meta = q.new_empty((sum(meta_sizes(B, H, k.shape[2], N, config[0], config[3])),), dtype=torch.int32)
    return torch.empty_like(q), q.new_empty((B * H, N), dtype=torch.float32), meta


@torch.library.custom_op("leanattn::sparse_attn_bwd", mutates_args=())
def _bwd_op(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    meta: torch.Tensor, softmax_scale: float, config: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, each of its input's shape and dtype."""
    return get_plan(q, k, v, config).backward(dout, q, k, v, out, lse, meta, softmax_scale, bool(config[4]))


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, meta, softmax_scale, config):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    out, lse, meta = output
    ctx.save_for_backward(q, k, v, out, lse, meta)
    ctx.params = inputs[5:]
    ctx.mark_non_differentiable(lse, meta)
    ctx.set_materialize_grads(False)  # the unused grads of lse and meta stay None, not zero-filled buffers


def _backward(ctx, dout, dlse, dmeta):
    if dout is None:  # out did not reach the loss
        return (None,) * 7
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    dq, dk, dv = _bwd_op(dout, *ctx.saved_tensors, *ctx.params)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("leanattn::sparse_attn_fwd", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# validation


def _validate_qkv(q, k, v, softmax_scale) -> float:
    checks.check_tensor("q", q, 4)
    checks.check_tensor("k", k, 4)
    checks.check_tensor("v", v, 4)
    checks.check_dtype("q", q)
    checks.check_same("k", k, "q", q)
    checks.check_same("v", v, "q", q)
    B, N, H, D = q.shape
    if k.shape[:2] != q.shape[:2] or k.shape[3] != D or k.shape[2] < 1 or H % k.shape[2]:
        raise ValueError(f"k: expected shape ({B}, {N}, Hkv, {D}) with Hkv dividing q's {H} heads (B, N, Hkv, D), "
                         f"got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (as k), got {tuple(v.shape)}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"q: expected head dim in {HEAD_DIMS}, got {q.shape[-1]}")
    if q.shape[0] * q.shape[2] > 65535:  # B*H is the second grid dimension
        raise ValueError(f"q: expected batch x heads <= 65535, got {q.shape[0]} x {q.shape[2]}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        checks.check_unit_stride(name, x)
    return checks.softmax_scale(softmax_scale, q.shape[-1])


def _check_per_token(name: str, x, q: torch.Tensor):
    """``x`` one value a token of ``q`` (``(B, N, H, D)`` query, or ``(B, N, Hkv, D)`` keys): ``(B, N, H)``."""
    checks.check_tensor(name, x, 3)
    what = "q" if name.startswith("q") else "k"
    if tuple(x.shape) != tuple(q.shape[:3]):
        raise ValueError(f"{name}: expected shape {tuple(q.shape[:3])} ((B, N, H) of {what}), got {tuple(x.shape)}")
    if x.device != q.device:
        raise ValueError(f"{name}: expected device {q.device} (as {what}), got {x.device}")


def _check_buckets(name: str, x, q, n_buckets, validate) -> torch.Tensor:
    _check_per_token(name, x, q)
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name}: expected an integer dtype (int32 or int64 bucket ids), got {x.dtype}")
    validate = checks.value_checks(validate, x)
    if validate and x.numel():
        lo, hi = int(x.min()), int(x.max())
        limit = MAX_GROUP if n_buckets is None else n_buckets - 1
        if lo < 0:
            raise ValueError(f"{name}: expected bucket ids >= 0, got a minimum of {lo}")
        if hi > limit:
            what = f"n_buckets={n_buckets}" if n_buckets is not None else "int32 range"
            raise ValueError(f"{name}: expected bucket ids <= {limit} ({what}), got a maximum of {hi}")
    return x if x.dtype == torch.int32 else x.to(torch.int32)


# --------------------------------------------------------------------------------------------
# public functions


def _sparse_attention(q, k, v, q_ids, k_ids, scale, deterministic, return_lse):
    deterministic = checks.flag("deterministic", deterministic)
    return_lse = checks.flag("return_lse", return_lse)
    cfg = sparse_config(q.shape[-1], q.device, hashed=q_ids.dtype != torch.bool)
    config = [cfg.block_m, cfg.block_n, cfg.block_m_bwd, cfg.block_n_bwd, int(bool(deterministic))]
    out, lse, meta = _fwd_op(q, k, v, q_ids, k_ids, scale, config)
    return (out, _token_lse(lse, meta, q.shape)) if return_lse else out


def _token_lse(lse: torch.Tensor, meta: torch.Tensor, shape) -> torch.Tensor:
    """The forward's internal LSE ``(B*H, N)`` (log2 units, sorted order, ``+inf`` where a query sees no key) as
    the public one: ``(B, N, H)`` float32, natural log, in time order, ``-inf`` where a query sees no key. The
    layout's first segment, ``q_perm``, is each sorted row's position (``plan.py``)."""
    B, N, H, _ = shape
    q_perm = meta[:B * H * N].view(B * H, N).long()
    natural = torch.where(lse == float("inf"), float("-inf"), lse * math.log(2.0))
    return torch.empty_like(natural).scatter_(1, q_perm, natural).view(B, H, N).transpose(1, 2).contiguous()


def qk_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_keep: torch.Tensor,
    k_keep: torch.Tensor,
    softmax_scale: Optional[float] = None,
    *,
    deterministic: bool = True,
    return_lse: bool = False,
):
    """Causal attention with dropped queries and keys (QK-sparse SCFA, Pagliardini et al. 2023).

    Query ``i`` attends key ``j`` iff ``q_keep[i]``, ``k_keep[j]`` and ``j <= i`` (causal on the
    original positions), per batch and head (query head ``h`` against kv head ``h // (H / Hkv)``)::

        out[i] = sum_j softmax_j(q[i] . k[j] * softmax_scale) v[j]   over the visible j

    A dropped query, or a kept query that sees no kept key (e.g. every key before it dropped),
    outputs zeros, never NaN, and gets zero gradients.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``q (B, N, H, D)``, ``k, v (B, N, Hkv, D)`` with ``Hkv`` dividing ``H`` (grouped-query attention;
        ``Hkv = H`` multi-head), float16, bfloat16 or float32 (float32 mainly for tests), ``D`` in
        {64, 128}, same dtype and device, unit stride on ``D`` (other strides are free, so
        slices of a fused QKV projection work without a copy). Any ``N``.
    q_keep, k_keep : torch.Tensor
        ``(B, N, H)`` and ``(B, N, Hkv)`` bool, True = keep. Each (batch, head) has its own pattern; a kv head's
        key pattern is the one every query head of its group sees.
    softmax_scale : float, optional
        Default ``1 / sqrt(D)``.
    deterministic : bool, keyword-only
        ``True`` (default): dQ by a separate pass, bitwise reproducible gradients.
        ``False``: dQ by float32 atomics from the dK/dV pass (FlashAttention-2's scheme):
        fewer matmuls, rounding that varies from run to run.
    return_lse : bool, keyword-only
        Also return each query's LSE (for merging with the states of other keys, as ring attention does).

    Returns
    -------
    out : torch.Tensor
        ``(B, N, H, D)`` in ``q.dtype``; differentiable in ``q``, ``k`` and ``v``.
    lse : torch.Tensor
        ``(B, N, H)`` float32, natural log of each query's sum of exponentiated scores (the layout of
        :func:`leanattn.decode`'s LSE with ``Lq`` tokens; flash-attn's ``softmax_lse`` is ``(B, H, N)``), ``-inf``
        where a query sees no key; only with ``return_lse=True``. It carries no gradient, as flash-attn's.

    Notes
    -----
    Kept tokens are compacted per (batch, head) by a prefix sum over the keep mask (a stable
    order: time order is kept), and the kernels read the compacted rows in place through the
    resulting index. The key blocks each query block needs are found by binary search once per
    call, in the same Triton launch for all blocks, so the work is about ``(1 - drop)^2`` of
    dense causal attention. Backward: dK/dV by one program per key block of a kv head (FlashAttention-2; with
    grouped-query attention the group's query heads in turn, summed in registers), dQ
    by a separate pass (deterministic) or by atomics. No host sync. Forward (with the layout)
    and backward are the custom ops ``torch.ops.leanattn.sparse_attn_fwd`` / ``_bwd``.

    Examples
    --------
    >>> q, k, v = (torch.randn(2, 8192, 12, 64, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    >>> keep = torch.rand(2, 8192, 12, device="cuda") > 0.5
    >>> out = leanattn.qk_sparse_attention(q, k, v, keep, keep)
    """
    scale = _validate_qkv(q, k, v, softmax_scale)
    for name, x, ref in (("q_keep", q_keep, q), ("k_keep", k_keep, k)):
        _check_per_token(name, x, ref)
        if x.dtype != torch.bool:
            raise TypeError(f"{name}: expected dtype torch.bool, got {x.dtype}")
    return _sparse_attention(q, k, v, q_keep, k_keep, scale, deterministic, return_lse)


def hash_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_buckets: torch.Tensor,
    k_buckets: torch.Tensor,
    softmax_scale: Optional[float] = None,
    *,
    n_buckets: Optional[int] = None,
    validate: Optional[bool] = None,
    deterministic: bool = True,
    return_lse: bool = False,
):
    """Causal attention within hash buckets (hash-sparse SCFA, Pagliardini et al. 2023).

    Query ``i`` attends key ``j`` iff ``q_buckets[i] == k_buckets[j]`` and ``j <= i`` (causal on
    the original positions), per batch and head (query head ``h`` against kv head ``h // (H / Hkv)``). A query
    that sees no key outputs zeros.

    **Self-attention is included**: ``j = i`` counts when the buckets match. The paper's
    training code (``hsparse_attn.py``) uses the strict rule ``j < i``, Reformer's convention
    for shared queries and keys, where a token's own key would dominate its softmax; there the
    first token of every bucket sees nothing and outputs zeros, while here it attends to
    itself. With one bucket the inclusive rule is exactly dense causal attention (the strict
    rule is not); with shared query and key buckets no query is left without a key.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``q (B, N, H, D)``, ``k, v (B, N, Hkv, D)`` with ``Hkv`` dividing ``H`` (grouped-query attention),
        float16, bfloat16 or float32, ``D`` in {64, 128}, same dtype and device, unit stride on ``D``. Any ``N``.
    q_buckets, k_buckets : torch.Tensor
        ``(B, N, H)`` and ``(B, N, Hkv)`` integer bucket ids (int32 or int64), ``>= 0`` and ``< 2**31``, e.g. from
        :func:`leanattn.sparse.lsh_buckets`. Ids need not be contiguous.
    softmax_scale : float, optional
        Default ``1 / sqrt(D)``.
    n_buckets : int, optional, keyword-only
        If given, ids must lie in ``[0, n_buckets)``.
    validate : bool, optional, keyword-only
        Check the id values. Default: only when it needs no device sync (CPU tensors, outside
        ``torch.compile``); pass ``True`` to check CUDA inputs at the cost of a sync.
    deterministic : bool, keyword-only
        ``True`` (default): dQ by a separate pass, bitwise reproducible gradients.
        ``False``: dQ by float32 atomics from the dK/dV pass (FlashAttention-2's scheme):
        fewer matmuls, rounding that varies from run to run.
    return_lse : bool, keyword-only
        Also return each query's LSE (for merging with the states of other keys, as ring attention does).

    Returns
    -------
    out : torch.Tensor
        ``(B, N, H, D)`` in ``q.dtype``; differentiable in ``q``, ``k`` and ``v``.
    lse : torch.Tensor
        ``(B, N, H)`` float32, natural log of each query's sum of exponentiated scores (the layout of
        :func:`leanattn.decode`'s LSE with ``Lq`` tokens; flash-attn's ``softmax_lse`` is ``(B, H, N)``), ``-inf``
        where a query sees no key; only with ``return_lse=True``. It carries no gradient, as flash-attn's.

    Notes
    -----
    Tokens are sorted per (batch, head) by (bucket, position) with one stable sort of the query
    and key ids together, so each bucket is a contiguous, time-ordered run; a query block needs
    only the key blocks overlapping its buckets up to its last position, found by binary search
    once per call. With ``nb`` random buckets the work is about ``1/nb`` of dense causal attention.

    Buckets need not come from hashing: with each token's document id as its bucket (queries and keys alike), this
    is causal attention within the documents of packed sequences (flash-attn's varlen training, document masking),
    each document's tokens contiguous in the order, so the work is that of the documents alone.

    Examples
    --------
    >>> buckets = leanattn.sparse.lsh_buckets(q, 16)
    >>> out = leanattn.hash_sparse_attention(q, k, v, buckets, buckets)

    Packed documents of 3000, 5000 and 192 tokens in one row of 8192:

    >>> doc = torch.repeat_interleave(torch.arange(3, device="cuda"), torch.tensor([3000, 5000, 192], device="cuda"))
    >>> ids = doc.view(1, -1, 1).expand(1, 8192, q.shape[2])
    >>> out = leanattn.hash_sparse_attention(q, k, v, ids, ids[..., :k.shape[2]])
    """
    scale = _validate_qkv(q, k, v, softmax_scale)
    if n_buckets is not None and (not isinstance(n_buckets, numbers.Integral) or isinstance(n_buckets, bool)):
        raise TypeError(f"n_buckets: expected a positive int or None, got {type(n_buckets).__name__} {n_buckets!r}")
    if n_buckets is not None and n_buckets < 1:
        raise ValueError(f"n_buckets: expected a positive int or None, got {n_buckets!r}")
    n_buckets = None if n_buckets is None else int(n_buckets)
    qb = _check_buckets("q_buckets", q_buckets, q, n_buckets, validate)
    kb = _check_buckets("k_buckets", k_buckets, k, n_buckets, validate)
    return _sparse_attention(q, k, v, qb, kb, scale, deterministic, return_lse)
