"""FlashInfer's paged-decode wrappers on leanattn's kernels: ``plan()`` once a step, ``run()`` once a layer.

A FlashInfer user keeps the page table in FlashInfer's CSR form: request ``b`` owns pages
``indices[indptr[b]:indptr[b + 1]]`` and holds ``last_page_len[b]`` tokens of its last one
(``kv_len = page_size * (pages - 1) + last_page_len``). ``plan()`` turns that into the block table and lengths
:func:`leanattn.decode` takes, with a few torch ops on the tensors' device (no host sync beyond the one FlashInfer's
own plan makes, for the widest request, when ``indptr`` is on the GPU); every layer's ``run()`` then reuses them.

Differences from FlashInfer, each stated where it applies:

* The LSE ``run(return_lse=True)`` returns is in natural-log units (leanattn's and flash-attn's convention;
  FlashInfer's default is base 2): pass ``lse_base="2"`` to ``run`` for FlashInfer's.
* The workspace buffer is accepted and unused: leanattn keeps its own per-device workspaces.
* ``pos_encoding_mode`` other than ``"NONE"`` (rotary inside the kernel) is refused: rotate the query and keys first,
  or use :func:`leanattn.decode`'s ``rotary_cos``/``rotary_sin`` with ``k=``/``v=``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import checks
from ..ops.bifurcated import cascade_decode
from ..ops.decode import decode
from ..ops.mla import mla_decode

__all__ = ["BatchDecodeWithPagedKVCacheWrapper", "BatchMLAPagedAttentionWrapper", "MultiLevelCascadeAttentionWrapper",
           "csr_block_table"]


def csr_block_table(indptr: torch.Tensor, indices: torch.Tensor, width: Optional[int] = None,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A block table ``(B, width)`` int32 from FlashInfer's CSR page table: row ``b`` is ``indices[indptr[b]:
    indptr[b + 1]]``, then zeros (never read: past every length).

    Parameters
    ----------
    indptr : torch.Tensor
        ``(B + 1,)`` int32, non-decreasing from 0: each request's first page in ``indices``.
    indices : torch.Tensor
        ``(nnz,)`` int32 (or longer: entries past ``indptr[B]`` are not read): page ids.
    width : int, optional
        Columns of the table, at least the most pages any request holds. Default: that most (a host sync where
        ``indptr`` is on the GPU).
    out : torch.Tensor, optional
        ``(B, width)`` int32 on ``indices``' device, written in place (a CUDA graph's fixed table).
    """
    counts = (indptr[1:] - indptr[:-1]).to(torch.int64)
    if width is None:
        width = int(counts.max()) if counts.numel() else 0
    cols = torch.arange(width, device=indices.device)
    starts = indptr[:-1].to(device=indices.device, dtype=torch.int64)
    counts = counts.to(indices.device)
    held = cols[None, :] < counts[:, None]
    # (clamped gather: columns past a request's pages read some page id, then zeroed)
    pos = (starts[:, None] + cols[None, :]).clamp(max=max(indices.numel() - 1, 0))
    table = torch.where(held, indices[pos] if indices.numel() else torch.zeros_like(pos), 0).to(torch.int32)
    if out is None:
        return table
    return out.copy_(table)


def _check_csr(indptr, indices, lens_name, lens, page_size, device) -> int:
    """FlashInfer's CSR arguments: int32 ``indptr (B + 1,)``, ``indices`` 1-D, ``lens (B,)`` (``lens_name``); the
    values where they are on the CPU (no sync). Returns ``B``."""
    checks.check_tensor("indptr", indptr, 1)
    checks.check_tensor("indices", indices, 1)
    checks.check_tensor(lens_name, lens, 1)
    for name, x in (("indptr", indptr), ("indices", indices), (lens_name, lens)):
        if x.dtype != torch.int32:
            raise TypeError(f"{name}: expected dtype torch.int32, got {x.dtype}")
    if indptr.numel() < 1:
        raise ValueError("indptr: expected (B + 1,) offsets, got an empty tensor")
    batch = indptr.numel() - 1
    if lens.numel() != batch:
        raise ValueError(f"{lens_name}: expected shape ({batch},) (one a request of indptr), got {tuple(lens.shape)}")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
        raise ValueError(f"page_size: expected a positive int, got {page_size!r}")
    if indices.device != device:
        raise ValueError(f"indices: expected device {device} (the cache's), got {indices.device}")
    if indptr.device.type == "cpu":
        steps = indptr[1:] - indptr[:-1]
        if int(indptr[0]) != 0 or (steps < 0).any():
            raise ValueError(f"indptr: expected non-decreasing offsets from 0, got {indptr.tolist()}")
        if int(indptr[-1]) > indices.numel():
            raise ValueError(f"indptr: expected offsets within indices' {indices.numel()} entries, got a last "
                             f"offset of {int(indptr[-1])}")
    return batch


def _lse_in_base(res, return_lse: bool, lse_base: str):
    """A decode's result with its natural-log LSE in base ``lse_base`` ("e" or "2", FlashInfer's default), in
    place (the caller's ``lse=`` buffer included)."""
    if not return_lse:
        return res
    out, lse = res
    return out, lse.mul_(1.0 / math.log(2.0)) if lse_base == "2" else lse


class _PagedPlan:
    """What a wrapper's ``plan()`` leaves for ``run()``: the block table and lengths on the cache's device, and the
    shapes and options the calls are checked against."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class BatchDecodeWithPagedKVCacheWrapper:
    """Decode over a paged KV cache with FlashInfer's interface (``flashinfer.BatchDecodeWithPagedKVCacheWrapper``),
    on :func:`leanattn.decode`'s stream-K kernels.

    Parameters
    ----------
    float_workspace_buffer : torch.Tensor, optional
        Accepted for FlashInfer's signature and unused: the block table and lengths live on ``indices``' device.
    kv_layout : {"NHD", "HND"}
        Pages ``(num_pages, page_size, Hkv, D)`` (NHD) or ``(num_pages, Hkv, page_size, D)`` (HND), read in place.
    use_cuda_graph : bool
        ``run()`` may be captured in a CUDA graph: ``plan()`` writes into fixed buffers (the batch then fixed at the
        first plan's, the table's width at ``max_pages_per_request``) instead of new tensors.
    use_tensor_cores, backend : optional
        Accepted for FlashInfer's signature; leanattn's kernels always stack a GQA group's heads in one product.
    paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer : torch.Tensor, optional
        Accepted for FlashInfer's signature; with ``use_cuda_graph``, ``paged_kv_indices_buffer``'s length bounds the
        table's width when ``max_pages_per_request`` is not given.
    max_pages_per_request : int, optional, keyword-only
        leanattn's: the block table's width under ``use_cuda_graph`` (default: the indices buffer's length, or the
        first plan's widest request).

    Examples
    --------
    >>> wrapper = leanattn.integrations.flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    >>> wrapper.plan(kv_page_indptr, kv_page_indices, kv_last_page_len, 64, 8, 128, 16)
    >>> for layer in range(num_layers):
    ...     out = wrapper.run(q[layer], kv_cache[layer])    # kv_cache: (num_pages, 2, 16, 8, 128)
    """

    def __init__(self, float_workspace_buffer: Optional[torch.Tensor] = None, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, use_tensor_cores: bool = False,
                 paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
                 paged_kv_indices_buffer: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, backend: str = "auto", *,
                 max_pages_per_request: Optional[int] = None):
        if kv_layout not in ("NHD", "HND"):
            raise ValueError(f"kv_layout: expected 'NHD' or 'HND', got {kv_layout!r}")
        self._kv_layout = kv_layout
        self._use_cuda_graph = checks.flag("use_cuda_graph", use_cuda_graph)
        if max_pages_per_request is None and paged_kv_indices_buffer is not None:
            max_pages_per_request = paged_kv_indices_buffer.numel()
        self._width = max_pages_per_request
        self._plan: Optional[_PagedPlan] = None
        self._buffers = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def _tables(self, indptr, indices, lens, device, batch):
        """The block table and lengths: new tensors, or with ``use_cuda_graph`` the fixed buffers rewritten."""
        if not self._use_cuda_graph:
            return csr_block_table(indptr, indices), lens
        if self._buffers is None:
            width = self._width
            if width is None:
                width = int((indptr[1:] - indptr[:-1]).max()) if batch else 0
            self._buffers = (torch.zeros(batch, max(width, 1), dtype=torch.int32, device=device),
                             torch.zeros(batch, dtype=torch.int32, device=device))
        table, seqlens = self._buffers
        if batch != table.shape[0]:
            raise ValueError(f"indptr: expected {table.shape[0]} requests (a CUDA-graph wrapper's batch is fixed at "
                             f"its first plan), got {batch}")
        if indptr.device.type == "cpu" and batch:
            widest = int((indptr[1:] - indptr[:-1]).max())
            if widest > table.shape[1]:
                raise ValueError(f"indptr: expected at most {table.shape[1]} pages a request (the CUDA-graph "
                                 f"table's width; max_pages_per_request), got {widest}")
        csr_block_table(indptr, indices, table.shape[1], out=table)
        seqlens.copy_(lens)
        return table, seqlens

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim: int, page_size: int, *, pos_encoding_mode: str = "NONE",
             window_left: int = -1, logits_soft_cap: Optional[float] = None,
             q_data_type: torch.dtype = torch.float16, kv_data_type: Optional[torch.dtype] = None,
             o_data_type: Optional[torch.dtype] = None, data_type=None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, non_blocking: bool = True,
             **unused) -> None:
        """Plan the decode of one step for every layer: ``indptr (B + 1,)``, ``indices (nnz,)`` and
        ``last_page_len (B,)`` int32 (FlashInfer's CSR page table, ``1 <= last_page_len <= page_size`` for a request
        with pages), the heads, head dim and page size, and the options every ``run()`` takes (``window_left``,
        ``logits_soft_cap``, ``sm_scale``; default ``1 / sqrt(head_dim)``). Not inside a CUDA graph or
        ``torch.compile``, as FlashInfer's."""
        if pos_encoding_mode != "NONE":
            raise ValueError(f"pos_encoding_mode: expected 'NONE' (rotate q and k before the cache; leanattn.decode "
                             f"takes rotary_cos/rotary_sin with k=, v=), got {pos_encoding_mode!r}")
        batch = _check_csr(indptr, indices, "last_page_len", last_page_len, page_size, indices.device)
        if num_qo_heads < 1 or num_kv_heads < 1 or num_qo_heads % num_kv_heads:
            raise ValueError(f"num_qo_heads: expected a multiple of num_kv_heads ({num_kv_heads}), got "
                             f"{num_qo_heads}")
        counts = (indptr[1:] - indptr[:-1]).to(device=indices.device)
        last = last_page_len.to(indices.device, non_blocking=non_blocking)
        # (a request with no page holds no token, whatever its last_page_len)
        lens = torch.where(counts > 0, (counts - 1) * page_size + last, 0).to(torch.int32)
        table, seqlens = self._tables(indptr, indices, lens, indices.device, batch)
        self._plan = _PagedPlan(
            batch=batch, heads=(num_qo_heads, num_kv_heads), head_dim=head_dim, page_size=page_size, table=table,
            seqlens=seqlens, window_left=window_left, softcap=float(logits_soft_cap or 0.0),
            sm_scale=sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim),
            q_dtype=data_type or q_data_type, kv_dtype=kv_data_type or data_type or q_data_type)

    begin_forward = plan

    def _pages(self, paged_kv_cache):
        """``(k_pages, v_pages)`` as ``(num_pages, page_size, Hkv, D)`` views of FlashInfer's cache: one tensor
        ``(num_pages, 2, ...)`` or a ``(k, v)`` pair, in the wrapper's layout."""
        if isinstance(paged_kv_cache, (tuple, list)):
            if len(paged_kv_cache) != 2:
                raise ValueError(f"paged_kv_cache: expected a (k, v) pair, got {len(paged_kv_cache)} tensors")
            k, v = paged_kv_cache
        else:
            checks.check_tensor("paged_kv_cache", paged_kv_cache, 5)
            if paged_kv_cache.shape[1] != 2:
                raise ValueError(f"paged_kv_cache: expected (num_pages, 2, ...) (k then v), got shape "
                                 f"{tuple(paged_kv_cache.shape)}")
            k, v = paged_kv_cache.unbind(1)
        for name, x in (("paged_kv_cache k", k), ("paged_kv_cache v", v)):
            checks.check_tensor(name, x, 4)
        if self._kv_layout == "HND":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        p = self._plan
        want = (p.page_size, p.heads[1], p.head_dim)
        if tuple(k.shape[1:]) != want or k.shape != v.shape:
            raise ValueError(f"paged_kv_cache: expected pages of (page_size, num_kv_heads, head_dim) = {want} "
                             f"({self._kv_layout}, as planned), got k {tuple(k.shape)} and v {tuple(v.shape)}")
        return k, v

    def run(self, q: torch.Tensor, paged_kv_cache, *, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
            lse: Optional[torch.Tensor] = None, return_lse: bool = False, window_left: Optional[int] = None,
            sinks: Optional[torch.Tensor] = None, lse_base: str = "e", **unused):
        """Decode ``q (B, num_qo_heads, head_dim)`` against the planned pages of ``paged_kv_cache``.

        Returns ``out`` (``q``'s shape and dtype) and with ``return_lse`` its ``lse (B, num_qo_heads)`` float32, in
        natural-log units (``lse_base="2"``: base 2, FlashInfer's default). ``q_scale`` multiplies the scores,
        ``k_scale``/``v_scale`` dequantise a float8 cache (:func:`leanattn.decode`'s), ``sinks`` are gpt-oss's
        attention sinks, ``window_left`` overrides the plan's.
        """
        if self._plan is None:
            raise RuntimeError("run: call plan() first (FlashInfer's order: plan once a step, run once a layer)")
        if lse_base not in ("e", "2"):
            raise ValueError(f"lse_base: expected 'e' (natural log) or '2', got {lse_base!r}")
        p = self._plan
        k, v = self._pages(paged_kv_cache)
        checks.check_tensor("q", q, 3)
        if tuple(q.shape) != (p.batch, p.heads[0], p.head_dim):
            raise ValueError(f"q: expected shape {(p.batch, p.heads[0], p.head_dim)} (as planned), got "
                             f"{tuple(q.shape)}")
        scale = p.sm_scale * (1.0 if q_scale is None else float(q_scale))
        res = decode(q, k, v, p.seqlens, p.table, scale, return_lse, k_scale=1.0 if k_scale is None else k_scale,
                     v_scale=1.0 if v_scale is None else v_scale, softcap=p.softcap,
                     window_left=p.window_left if window_left is None else window_left, sinks=sinks, out=out,
                     lse=lse)
        return _lse_in_base(res, return_lse, lse_base)

    def forward(self, q, paged_kv_cache, **kw):
        return self.run(q, paged_kv_cache, **kw)

    def end_forward(self) -> None:
        """FlashInfer's legacy no-op."""


class BatchMLAPagedAttentionWrapper:
    """MLA decode with FlashInfer's interface (``flashinfer.mla.BatchMLAPagedAttentionWrapper``), on
    :func:`leanattn.mla_decode`: the latent cache ``ckv (num_pages, page_size, Dc)`` and rotary keys ``kpe
    (num_pages, page_size, Dr)``, pages in FlashInfer's CSR form with each request's length given directly.

    ``float_workspace_buffer`` and ``use_cuda_graph`` (with its buffers) as in
    :class:`BatchDecodeWithPagedKVCacheWrapper`.
    """

    def __init__(self, float_workspace_buffer: Optional[torch.Tensor] = None, use_cuda_graph: bool = False,
                 qo_indptr: Optional[torch.Tensor] = None, kv_indptr: Optional[torch.Tensor] = None,
                 kv_indices: Optional[torch.Tensor] = None, kv_len_arr: Optional[torch.Tensor] = None,
                 backend: str = "auto", *, max_pages_per_request: Optional[int] = None):
        self._paged = BatchDecodeWithPagedKVCacheWrapper(
            float_workspace_buffer, "NHD", use_cuda_graph, paged_kv_indices_buffer=kv_indices,
            max_pages_per_request=max_pages_per_request)
        self._plan = None

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
             kv_len_arr: torch.Tensor, num_heads: int, head_dim_ckv: int, head_dim_kpe: int, page_size: int,
             causal: bool, sm_scale: float, q_data_type: torch.dtype, kv_data_type: torch.dtype,
             use_profiler: bool = False) -> None:
        """Plan one step: ``qo_indptr (B + 1,)`` the query tokens of each request (one each for decode, or several:
        multi-token prediction, ``causal``), ``kv_indptr``/``kv_indices`` the CSR pages, ``kv_len_arr (B,)`` each
        request's tokens; the heads, the latent and rotary widths, the page size, the softmax scale."""
        batch = _check_csr(kv_indptr, kv_indices, "kv_len_arr", kv_len_arr, page_size, kv_indices.device)
        checks.check_index("qo_indptr", qo_indptr, 1, qo_indptr.device)
        if qo_indptr.numel() != batch + 1:
            raise ValueError(f"qo_indptr: expected shape ({batch + 1},) (as kv_indptr), got {tuple(qo_indptr.shape)}")
        lens = kv_len_arr.to(kv_indices.device, torch.int32)
        table, seqlens = self._paged._tables(kv_indptr, kv_indices, lens, kv_indices.device, batch)
        uniform = None
        if qo_indptr.device.type == "cpu":
            steps = (qo_indptr[1:] - qo_indptr[:-1]).tolist()
            uniform = steps[0] if steps and all(s == steps[0] for s in steps) else None
            max_q = max(steps) if steps else 0
        else:
            max_q = int((qo_indptr[1:] - qo_indptr[:-1]).max()) if batch else 0
        self._plan = _PagedPlan(batch=batch, heads=num_heads, dims=(head_dim_ckv, head_dim_kpe), page_size=page_size,
                                table=table, seqlens=seqlens, causal=bool(causal), sm_scale=sm_scale,
                                qo_indptr=qo_indptr.to(kv_indices.device, torch.int32), uniform=uniform,
                                max_q=max_q)

    def run(self, q_nope: torch.Tensor, q_pe: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            lse_base: str = "e", **unused):
        """``q_nope (total_q, H, Dc)``, ``q_pe (total_q, H, Dr)`` (rows by ``qo_indptr``) against the planned pages
        of ``ckv_cache (num_pages, page_size, Dc)`` and ``kpe_cache (num_pages, page_size, Dr)``; returns ``out``
        (``q_nope``'s shape) and with ``return_lse`` its ``lse (total_q, H)`` float32, natural log (``lse_base="2"``:
        base 2)."""
        if self._plan is None:
            raise RuntimeError("run: call plan() first (FlashInfer's order: plan once a step, run once a layer)")
        if lse_base not in ("e", "2"):
            raise ValueError(f"lse_base: expected 'e' (natural log) or '2', got {lse_base!r}")
        p = self._plan
        if p.uniform == 1:  # one token a request: decode's own layout, (B, H, Dc)
            res = mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, p.seqlens, p.table, p.sm_scale, return_lse,
                             out=out, lse=lse)
        else:
            res = mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, p.seqlens, p.table, p.sm_scale, return_lse,
                             causal=p.causal, cu_seqlens_q=p.qo_indptr, max_seqlen_q=p.max_q, out=out, lse=lse)
        return _lse_in_base(res, return_lse, lse_base)


class MultiLevelCascadeAttentionWrapper:
    """Cascade attention with FlashInfer's interface (``flashinfer.MultiLevelCascadeAttentionWrapper``), on
    :func:`leanattn.cascade_decode`: every level's KV pages in one pool, each level's queries grouped by
    ``qo_indptr``, each group's pages in CSR form; the last level holds each request's own tokens.

    A shared level's segment is read once for all the query rows of its group (the bifurcated kernel), where
    FlashInfer's levels run one prefill launch each. Levels above the last must group whole requests (a request's
    query tokens all in one group), as cascade inference does. ``causal`` masks the last level only (every shared
    level is wholly before a request's own tokens). ``window_left`` counts over the concatenation of the levels, a
    request's whole sequence (FlashInfer applies it within each level). ``use_cuda_graph`` is not supported:
    :func:`leanattn.cascade_decode` counts each level's groups on the host.
    """

    def __init__(self, num_levels: int, float_workspace_buffer: Optional[torch.Tensor] = None,
                 kv_layout: str = "NHD", use_cuda_graph: bool = False, qo_indptr_buf_arr=None,
                 paged_kv_indptr_buf_arr=None, paged_kv_indices_buf_arr=None, paged_kv_last_page_len_buf_arr=None):
        if not isinstance(num_levels, int) or isinstance(num_levels, bool) or num_levels < 1:
            raise ValueError(f"num_levels: expected a positive int, got {num_levels!r}")
        if checks.flag("use_cuda_graph", use_cuda_graph):
            raise ValueError("use_cuda_graph: expected False (leanattn.cascade_decode counts each level's groups on "
                             "the host; BatchDecodeWithPagedKVCacheWrapper runs in CUDA graphs), got True")
        self._levels = num_levels
        # (the page pool's layout: run() reads the pages as BatchDecodeWithPagedKVCacheWrapper does)
        self._pages = BatchDecodeWithPagedKVCacheWrapper(None, kv_layout)
        self._plan = None

    def plan(self, qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len,
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, causal: bool = False,
             pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
             window_left: int = -1, logits_soft_cap: Optional[float] = None, rope_scale: Optional[float] = None,
             rope_theta: Optional[float] = None, q_data_type="float16", kv_data_type=None) -> None:
        """Plan one step: per level (outermost first) ``qo_indptr (groups + 1,)`` over the query rows,
        ``paged_kv_indptr (groups + 1,)``, ``paged_kv_indices`` and ``paged_kv_last_page_len (groups,)`` int32 (the
        groups' pages in CSR form); the last level's groups are the requests. The offsets (``qo_indptr``) on the
        host, as FlashInfer's plan takes them."""
        arrays = (qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len)
        for name, arr in zip(("qo_indptr_arr", "paged_kv_indptr_arr", "paged_kv_indices_arr",
                              "paged_kv_last_page_len"), arrays):
            if not isinstance(arr, (list, tuple)) or len(arr) != self._levels:
                got = len(arr) if isinstance(arr, (list, tuple)) else type(arr).__name__
                raise ValueError(f"{name}: expected a list of {self._levels} tensors (num_levels), got {got}")
        if pos_encoding_mode != "NONE":
            raise ValueError(f"pos_encoding_mode: expected 'NONE' (rotate q and k before the cache), got "
                             f"{pos_encoding_mode!r}")
        if num_qo_heads < 1 or num_kv_heads < 1 or num_qo_heads % num_kv_heads:
            raise ValueError(f"num_qo_heads: expected a multiple of num_kv_heads ({num_kv_heads}), got "
                             f"{num_qo_heads}")
        tables = []
        for lvl, (qo, indptr, indices, last) in enumerate(zip(*arrays)):
            groups = _check_csr(indptr, indices, "paged_kv_last_page_len", last, page_size, indices.device)
            checks.check_index("qo_indptr", qo, 1, torch.device("cpu"))
            if qo.numel() != groups + 1:
                raise ValueError(f"qo_indptr: expected shape ({groups + 1},) (as level {lvl}'s paged_kv_indptr), got "
                                 f"{tuple(qo.shape)}")
            counts = (indptr[1:] - indptr[:-1]).to(indices.device)
            lens = torch.where(counts > 0, (counts - 1) * page_size + last.to(indices.device), 0).to(torch.int32)
            tables.append((qo, csr_block_table(indptr, indices), lens))
        own_qo = tables[-1][0]
        total = int(own_qo[-1])
        starts = own_qo[:-1]
        steps = (own_qo[1:] - starts).tolist()
        levels = []
        for lvl, (qo, table, lens) in enumerate(tables[:-1]):
            if int(qo[-1]) != total or int(qo[0]) != 0:
                raise ValueError(f"qo_indptr: expected offsets from 0 to the last level's {total} query rows, got "
                                 f"{qo.tolist()} at level {lvl}")
            if not bool(torch.isin(qo, own_qo).all()):
                raise ValueError(f"qo_indptr: expected level {lvl}'s groups to hold whole requests (its offsets "
                                 f"among the last level's {own_qo.tolist()}), got {qo.tolist()}")
            ids = (torch.searchsorted(qo, starts, right=True) - 1).to(torch.int32)
            levels.append((table, lens, ids.to(table.device)))
        own_table, own_lens = tables[-1][1], tables[-1][2]
        one_each = all(n == 1 for n in steps)
        self._plan = _PagedPlan(
            levels=levels, table=own_table, seqlens=own_lens, heads=(num_qo_heads, num_kv_heads), head_dim=head_dim,
            page_size=page_size, batch=len(steps), total=total, causal=bool(causal) and not one_each,
            one_each=one_each, cu=None if one_each else own_qo.to(own_table.device), max_q=max(steps, default=0),
            sm_scale=sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim), window_left=window_left,
            softcap=float(logits_soft_cap or 0.0))
        # (run() reads the page pool through the decode wrapper's layout and checks)
        self._pages._plan = _PagedPlan(page_size=page_size, heads=(num_qo_heads, num_kv_heads), head_dim=head_dim)

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, *, return_lse: bool = False, lse_base: str = "e",
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None):
        """``q (total_q, num_qo_heads, head_dim)`` (rows by the last level's ``qo_indptr``) against every level's
        pages of ``paged_kv_cache`` (FlashInfer's one pool: ``(num_pages, 2, ...)`` or a ``(k, v)`` pair); returns
        ``out`` (``q``'s shape), and with ``return_lse`` (leanattn's) its ``lse (total_q, num_qo_heads)`` float32,
        natural log (``lse_base="2"``: base 2)."""
        if self._plan is None:
            raise RuntimeError("run: call plan() first (FlashInfer's order: plan once a step, run once a layer)")
        if lse_base not in ("e", "2"):
            raise ValueError(f"lse_base: expected 'e' (natural log) or '2', got {lse_base!r}")
        p = self._plan
        k, v = self._pages._pages(paged_kv_cache)
        checks.check_tensor("q", q, 3)
        if tuple(q.shape) != (p.total, p.heads[0], p.head_dim):
            raise ValueError(f"q: expected shape {(p.total, p.heads[0], p.head_dim)} (the last level's query rows, "
                             f"as planned), got {tuple(q.shape)}")
        levels = [(k, v, lens, ids, table) for table, lens, ids in p.levels]
        kw = dict(softcap=p.softcap, window_left=p.window_left, out=out, lse=lse)
        if not p.one_each:
            kw.update(causal=p.causal, cu_seqlens_q=p.cu, max_seqlen_q=p.max_q)
        res = cascade_decode(q, levels, k, v, p.seqlens, p.table, p.sm_scale, return_lse, **kw)
        return _lse_in_base(res, return_lse, lse_base)

    def forward(self, q, paged_kv_cache, **kw):
        return self.run(q, paged_kv_cache, **kw)

    def end_forward(self) -> None:
        """FlashInfer's legacy no-op."""
