"""Multi-head latent attention (MLA; DeepSeek-V2/V3, Kimi K2) decode on the stream-K decode kernels.

With the up-projections absorbed into the query and output, MLA's attention is multi-query attention over one
latent head: each query head ``h`` scores ``q_nope[h] . ckv[j] + q_pe[h] . kpe[j]`` against the compressed cache
``ckv`` (``Dc = 512``) and its decoupled rotary part ``kpe`` (``Dr = 64``), and its output is the probabilities
times ``ckv`` itself. So the latent tile is read once for both products, and every query head of the group is a row
of the same ``tl.dot``: ``kernels/decode.py`` with ``ROPE_DIM`` and ``V_IS_K`` (``kernels/attend.attend_tiles``).
The schedule, merges, ragged and paged caches, several query tokens and CUDA-graph safety are decode's.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks
from .decode import _decode_impl, finish, output_buffers, token_buffers, validate_decode, with_token_axis

__all__ = ["mla_decode"]

LATENT_DIMS = (128, 256, 512)
ROPE_DIMS = (16, 32, 64)


def _latent_cache(name: str, cache, width_name: str, widths) -> torch.Tensor:
    """``cache`` as a 4-D ``(B or pages, N or page_size, 1, width)`` view: ``(.., .., width)`` or FlashMLA's
    ``(.., .., 1, width)``."""
    checks.check_tensor(name, cache)
    if cache.dim() == 4 and cache.shape[2] == 1:
        cache = cache[:, :, 0]
    if cache.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D (B, N, {width_name}) or paged (pages, page_size, {width_name}) "
                         f"tensor (or 4-D with one head), got shape {tuple(cache.shape)}")
    checks.check_head_dim(name, cache.shape[-1], widths)
    checks.check_unit_stride(name, cache)
    return cache.unsqueeze(2)


def _validate(q_nope, q_pe, ckv_cache, kpe_cache, cache_seqlens, block_table, softmax_scale, schedule, validate,
              cu_seqlens_q, max_seqlen_q, k_scale, v_scale):
    """Returns ``(softmax_scale, k_scale, v_scale, ckv, kpe, batch, qlen)``: the scales as floats, the caches as 4-D
    one-head views, and the sequences and token slots of a packed query (``(None, Lq)`` otherwise)."""
    batch, qlen = checks.query_slots(q_nope, cu_seqlens_q, max_seqlen_q, validate, name="q_nope")
    checks.query(q_nope, 1.0, tokens=True, name="q_nope", head_dims=LATENT_DIMS)
    checks.query(q_pe, 1.0, tokens=True, name="q_pe", head_dims=ROPE_DIMS)
    if q_pe.shape[:-1] != q_nope.shape[:-1]:
        raise ValueError(f"q_pe: expected shape {tuple(q_nope.shape[:-1]) + (q_pe.shape[-1],)} (as q_nope but the "
                         f"last dimension), got {tuple(q_pe.shape)}")
    checks.check_same("q_pe", q_pe, "q_nope", q_nope)
    ckv = _latent_cache("ckv_cache", ckv_cache, "Dc", LATENT_DIMS)
    kpe = _latent_cache("kpe_cache", kpe_cache, "Dr", ROPE_DIMS)
    if ckv.dtype not in checks.FP8_DTYPES:
        checks.check_same("ckv_cache", ckv, "q_nope", q_nope)
    if q_nope.dtype == torch.float32 and (ckv.dtype in checks.FP8_DTYPES or
                                          (q_nope.is_cuda and q_nope.shape[-1] == 512)):
        # fp32 tiles of the 512-wide latent take 258-336 KB of shared memory a program (offline, sm_90a), over
        # any GPU's; a float8 cache read with fp32 queries converts its tiles to fp32 too
        what = "a float8 latent cache" if ckv.dtype in checks.FP8_DTYPES else "Dc = 512 on a GPU"
        raise TypeError(f"q_nope: expected float16 or bfloat16 with {what}, got torch.float32")
    # (one cache split in two views, or two quantised alike: one dtype, whose K scale dequantises both)
    checks.check_same("kpe_cache", kpe, "ckv_cache", ckv)
    if ckv.shape[-1] != q_nope.shape[-1]:
        raise ValueError(f"ckv_cache: expected latent dim {q_nope.shape[-1]} (as q_nope), got {ckv.shape[-1]}")
    if kpe.shape[-1] != q_pe.shape[-1]:
        raise ValueError(f"kpe_cache: expected rotary dim {q_pe.shape[-1]} (as q_pe), got {kpe.shape[-1]}")
    if kpe.shape[:2] != ckv.shape[:2]:
        what = "pages, page_size" if block_table is not None else "B, N"
        raise ValueError(f"kpe_cache: expected ({what}) = {tuple(ckv.shape[:2])} (as ckv_cache), got "
                         f"{tuple(kpe.shape[:2])}")
    if softmax_scale is None:
        # the scores sum products over both parts (FlashMLA's default)
        softmax_scale = (q_nope.shape[-1] + q_pe.shape[-1]) ** -0.5
    scales = validate_decode(q_nope, ckv, ckv, cache_seqlens, block_table, softmax_scale, schedule, validate,
                             k_scale, v_scale, fp8=True, batch=batch, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=qlen,
                             head_dims=LATENT_DIMS, names=("q_nope", "ckv_cache", "ckv_cache", "cache_seqlens"))
    return (*scales, ckv, kpe, batch, qlen)


@torch.library.custom_op("leanattn::mla_decode", mutates_args=())
def _mla_decode_op(
    q_nope: torch.Tensor, q_pe: torch.Tensor, ckv: torch.Tensor, kpe: torch.Tensor,
    cache_seqlens: Optional[torch.Tensor], block_table: Optional[torch.Tensor], softmax_scale: float, schedule: str,
    num_programs: int, num_splits: int, causal: bool, cu_seqlens_q: Optional[torch.Tensor] = None,
    max_seqlen_q: int = 0, k_scale: float = 1.0, v_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _decode_impl(q_nope, ckv, ckv, cache_seqlens, block_table, softmax_scale, schedule, num_programs,
                        num_splits, 0, k_scale, v_scale, causal=causal, cu_seqlens_q=cu_seqlens_q,
                        max_seqlen_q=max_seqlen_q, q_pe=q_pe, kpe_cache=kpe)


@_mla_decode_op.register_fake
def _(q_nope, q_pe, ckv, kpe, cache_seqlens, block_table, softmax_scale, schedule, num_programs, num_splits, causal,
      cu_seqlens_q=None, max_seqlen_q=0, k_scale=1.0, v_scale=1.0):
    return q_nope.new_empty(q_nope.shape), q_nope.new_empty(q_nope.shape[:-1], dtype=torch.float32)


def mla_decode(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    ckv_cache: torch.Tensor,
    kpe_cache: torch.Tensor,
    cache_seqlens: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    schedule: str = "lean",
    *,
    causal: bool = False,
    num_programs: int = 0,
    num_splits: int = 0,
    validate: Optional[bool] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    out: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
):
    """MLA decode (DeepSeek-V2/V3's multi-head latent attention, up-projections absorbed): every query head attends
    the one latent cache.

    Exact softmax attention ``softmax((q_nope ckv^T + q_pe kpe^T) * softmax_scale) ckv`` over the first
    ``cache_seqlens[b]`` tokens of each sequence (FlashInfer's ``BatchMLAPagedAttentionWrapper.run(q_nope, q_pe,
    ckv_cache, kpe_cache)``, FlashMLA's ``flash_mla_with_kvcache`` with its 576-wide cache split into the two views).
    Decode's stream-K schedule: equal work per program for any batch and ragged mix of lengths, each latent tile read
    once for the scores and the output of all query heads.

    Parameters
    ----------
    q_nope : torch.Tensor
        ``(B, H, Dc)``, or ``(B, Lq, H, Dc)``: ``Lq`` query tokens a sequence, its last ``Lq`` positions (MTP
        verification), as in :func:`leanattn.decode`. The query's latent part; float16, bfloat16 (or float32, but
        not over a float8 cache nor at ``Dc = 512`` on a GPU, whose fp32 tiles no GPU's shared memory holds);
        ``Dc`` in {128, 256, 512} (DeepSeek: 512).
    q_pe : torch.Tensor
        ``q_nope``'s shape with ``Dr`` last: the rotary part, ``Dr`` in {16, 32, 64} (DeepSeek: 64); same dtype
        and device.
    ckv_cache : torch.Tensor
        Contiguous ``(B, N, Dc)`` or, with ``block_table``, paged ``(num_pages, page_size, Dc)``: the compressed
        latent cache, which is also the values. A 4-D ``(.., .., 1, Dc)`` (one head) is accepted. Any strides
        with unit stride on ``Dc`` (a ``[..., :512]`` view of FlashMLA's 576-wide cache works without a copy).
        ``q_nope``'s dtype, or ``torch.float8_e4m3fn``/``torch.float8_e5m2`` with fp16 or bf16 queries (vLLM's fp8
        MLA cache: read one byte an element and converted to fp16 in registers, as :func:`leanattn.decode`'s float8
        caches; ``k_scale``, ``v_scale``).
    kpe_cache : torch.Tensor
        As ``ckv_cache`` with ``Dr`` last: the rotary keys (a ``[..., 512:]`` view of the same 576-wide cache), in
        ``ckv_cache``'s dtype.
    cache_seqlens, block_table : torch.Tensor, optional
        As in :func:`leanattn.decode`: ``(B,)`` int32 lengths (default: full capacity), ``(B, max_pages)`` int32
        pages, any page size.
    softmax_scale : float, optional
        Default ``1 / sqrt(Dc + Dr)`` (FlashMLA's). DeepSeek-V3 uses ``1 / sqrt(192)`` times YaRN's ``mscale``
        squared (``mscale = 0.1 * mscale_all_dim * ln(factor) + 1``), not the factor itself.
    return_lse : bool
        Also return the natural-log sum of exponentiated scores.
    schedule : {"lean", "split", "batch_invariant"}
        As in :func:`leanattn.decode`.
    causal : bool, keyword-only
        With ``Lq > 1``: each token attends the keys up to its own position (bottom-right aligned).
    num_programs, num_splits, validate : keyword-only
        As in :func:`leanattn.decode`.
    cu_seqlens_q, max_seqlen_q : keyword-only
        A packed query, as in :func:`leanattn.decode` (FlashInfer's ``qo_indptr``): ``q_nope (total_q, H, Dc)`` and
        ``q_pe (total_q, H, Dr)``, sequence ``b``'s tokens their rows ``[cu_seqlens_q[b], cu_seqlens_q[b + 1])``.
    out, lse : torch.Tensor, optional, keyword-only
        The caller's buffers for the results, as in :func:`leanattn.decode` (FlashInfer's ``out=`` and ``lse=``):
        ``q_nope``'s shape and dtype, and its shape less ``Dc`` in float32, contiguous, sharing no memory with the
        inputs or each other. ``lse`` is written whether or not ``return_lse`` asks for it.
    k_scale, v_scale : float, keyword-only
        Dequantisation scales of a float8 latent cache (per tensor, finite, > 0; 1.0 otherwise): the scores are
        taken over ``ckv_cache * k_scale`` and ``kpe_cache * k_scale``, the output over ``ckv_cache * v_scale``.
        One cache quantised with one scale (vLLM's ``k_scale`` of an fp8 MLA cache) passes it as both.

    Returns
    -------
    out : torch.Tensor
        ``q_nope``'s shape, in its dtype: the attention output in the latent space (the caller applies the
        absorbed value up-projection); the ``out`` given, if one was (and ``lse`` the ``lse`` given).
    lse : torch.Tensor
        ``q_nope``'s shape without ``Dc`` (``(B, H)`` or ``(B, Lq, H)``, as :func:`leanattn.decode`'s; FlashMLA's
        ``softmax_lse`` is laid out ``(B, H, Lq)``), float32, natural log; only with ``return_lse=True``. Empty
        sequences give zeros and ``-inf``.

    Notes
    -----
    Inference only, like :func:`leanattn.decode`: no backward, no gradient in the output.

    The lengths come before the block table, as in :func:`leanattn.decode` (FlashMLA takes ``block_table`` first);
    swapped, the int32 checks of their shapes fail.

    Sparse MLA (DeepSeek-V3.2's indexer, FlashMLA's sparse decode) is this call over pages of one token: the pool
    ``(num_tokens, 1, Dc)`` of every cached token, each sequence's selected token ids as its block table row and
    their count as its length (the order of the ids is free with one query token, or several without ``causal``).

    Examples
    --------
    >>> q_nope = torch.randn(8, 16, 512, dtype=torch.bfloat16, device="cuda")    # 16 heads a GPU (TP=8)
    >>> q_pe = torch.randn(8, 16, 64, dtype=torch.bfloat16, device="cuda")
    >>> cache = torch.randn(512, 64, 1, 576, dtype=torch.bfloat16, device="cuda")  # FlashMLA's paged layout
    >>> table = torch.arange(512, dtype=torch.int32, device="cuda").view(8, 64)
    >>> lens = torch.full((8,), 4000, dtype=torch.int32, device="cuda")
    >>> out = leanattn.mla_decode(q_nope, q_pe, cache[..., :512], cache[..., 512:], lens, table)

    A 576-wide query splits the same way, without a copy:

    >>> q = torch.randn(8, 16, 576, dtype=torch.bfloat16, device="cuda")
    >>> out = leanattn.mla_decode(q[..., :512], q[..., 512:], cache[..., :512], cache[..., 512:], lens, table)
    """
    scale, k_scale, v_scale, ckv, kpe, batch, qlen = _validate(q_nope, q_pe, ckv_cache, kpe_cache, cache_seqlens,
                                                               block_table, softmax_scale, schedule, validate,
                                                               cu_seqlens_q, max_seqlen_q, k_scale, v_scale)
    causal = checks.flag("causal", causal)
    return_lse = checks.flag("return_lse", return_lse)
    num_programs, num_splits = checks.launch_counts(num_programs, num_splits)
    packed = batch is not None
    out, lse = output_buffers(out, lse, q_nope, (("q_pe", q_pe), ("ckv_cache", ckv_cache), ("kpe_cache", kpe_cache),
                                                 ("cache_seqlens", cache_seqlens), ("block_table", block_table),
                                                 ("cu_seqlens_q", cu_seqlens_q)), "q_nope")
    if q_nope.dim() == 4 and qlen == 1:
        res = mla_decode(q_nope[:, 0], q_pe[:, 0], ckv_cache, kpe_cache, cache_seqlens, block_table, scale,
                         return_lse, schedule, num_programs=num_programs, num_splits=num_splits, validate=False,
                         k_scale=k_scale, v_scale=v_scale, **token_buffers(out, lse))
        return with_token_axis(res, out, lse, return_lse)
    q_nope = q_nope if q_nope.stride(-1) == 1 else q_nope.contiguous()
    q_pe = q_pe if q_pe.stride(-1) == 1 else q_pe.contiguous()
    cu, max_q = (cu_seqlens_q, qlen) if packed else (None, 0)
    args = (q_nope, q_pe, ckv, kpe, cache_seqlens, block_table, scale, schedule, num_programs, num_splits,
            causal and qlen > 1, cu, max_q, k_scale, v_scale)
    if torch.compiler.is_compiling():
        o, s = _mla_decode_op(*args)
    else:
        # (eager calls skip the dispatcher, as decode's)
        o, s = _decode_impl(q_nope, ckv, ckv, cache_seqlens, block_table, scale, schedule, num_programs,
                            num_splits, 0, k_scale, v_scale, causal=causal and qlen > 1, cu_seqlens_q=cu,
                            max_seqlen_q=max_q, q_pe=q_pe, kpe_cache=kpe, need_lse=return_lse, out=out, lse=lse)
    return finish(o, s, out, lse, return_lse)
