"""FlashInfer's paged-decode wrappers on leanattn's kernels: ``plan()`` once a step, ``run()`` once a layer.

A FlashInfer user keeps the page table in FlashInfer's CSR form: request ``b`` owns pages
``indices[indptr[b]:indptr[b + 1]]`` and holds ``last_page_len[b]`` tokens of its last one
(``kv_len = page_size * (pages - 1) + last_page_len``). ``plan()`` turns that into the block table and lengths
:func:`leanattn.decode` takes, with a few torch ops on the workspace's device (and one host copy of ``indptr``, as
FlashInfer's own plan makes); every layer's ``run()`` then reuses them.

Differences from FlashInfer, each stated where it applies:

* The workspace buffer only names the device: leanattn keeps its own per-device workspaces.
* ``pos_encoding_mode`` other than ``"NONE"`` (rotary inside the kernel) is refused: rotate the query and keys first,
  or use :func:`leanattn.decode`'s ``rotary_cos``/``rotary_sin`` with ``k=``/``v=``.
* Under ``use_cuda_graph`` the block table's width, the most pages a request may hold, is given as
  ``max_pages_per_request`` (FlashInfer's kernels read the CSR arrays themselves and need no table).
* The LSE ``run(return_lse=True)`` returns is in base 2, FlashInfer's; ``lse_base="e"`` gives leanattn's natural log.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import checks
from ..ops.bifurcated import cascade_decode
from ..ops.decode import decode
from ..ops.mla import mla_decode

__all__ = ["BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper", "BatchMLAPagedAttentionWrapper",
           "MultiLevelCascadeAttentionWrapper", "csr_block_table"]


def csr_block_table(indptr: torch.Tensor, indices: torch.Tensor, width: Optional[int] = None,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A block table ``(B, width)`` int32 from FlashInfer's CSR page table: row ``b`` is ``indices[indptr[b]:
    indptr[b + 1]]``, then zeros (never read: past every length).

    Parameters
    ----------
    indptr : torch.Tensor
        ``(B + 1,)`` int32, non-decreasing from 0: each request's first page in ``indices``.
    indices : torch.Tensor
        ``(nnz,)`` int32 (or longer: entries past ``indptr[B]`` are not read): page ids (their range is checked by
        the decode where its inputs are on the host).
    width : int, optional
        Columns of the table, at least the most pages any request holds (unchecked here). Default: that most (a host
        sync where ``indptr`` is on the GPU).
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


def _dtype(name: str, value) -> Optional[torch.dtype]:
    """A dtype given as FlashInfer takes them: a ``torch.dtype``, its name (``"float16"``), or None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    raise TypeError(f"{name}: expected a torch.dtype or its name, got {value!r}")


def _heads(num_qo_heads, num_kv_heads) -> None:
    for name, x in (("num_qo_heads", num_qo_heads), ("num_kv_heads", num_kv_heads)):
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            raise ValueError(f"{name}: expected a positive int, got {x!r}")
    if num_qo_heads % num_kv_heads:
        raise ValueError(f"num_qo_heads: expected a multiple of num_kv_heads ({num_kv_heads}), got {num_qo_heads}")


class _CSR:
    """One plan's CSR page table, checked: ``batch``, ``widest`` (pages of the longest request), the lengths
    ``lens (B,)`` int32 and ``indices`` on ``device``; ``indptr_host``, the offsets on the host."""

    def __init__(self, indptr, indices, lens_name, lens, page_size, device, last_page=True):
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
            raise ValueError(f"{lens_name}: expected shape ({batch},) (one a request of indptr), got "
                             f"{tuple(lens.shape)}")
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            raise ValueError(f"page_size: expected a positive int, got {page_size!r}")
        host = indptr.cpu()  # (FlashInfer's plan copies the offsets to the host too)
        counts = host[1:] - host[:-1]
        if int(host[0]) != 0 or (counts < 0).any():
            raise ValueError(f"indptr: expected non-decreasing offsets from 0, got {host.tolist()}")
        if int(host[-1]) > indices.numel():
            raise ValueError(f"indptr: expected offsets within indices' {indices.numel()} entries, got a last offset "
                             f"of {int(host[-1])}")
        if lens.device.type == "cpu":
            hi = page_size if last_page else None
            have = counts > 0
            bad = have & ((lens < 1) | (lens > hi)) if last_page else lens < 0
            if bad.any():
                want = f"values in [1, page_size = {page_size}] where a request has pages" if last_page else \
                    "lengths >= 0"
                raise ValueError(f"{lens_name}: expected {want}, got {lens.tolist()}")
        self.batch, self.indptr_host = batch, host
        self.widest = int(counts.max()) if batch else 0
        self.indices = indices.to(device)
        counts = counts.to(device)
        lens = lens.to(device)
        # (a request with no page holds no token, whatever its last_page_len)
        self.lens = (torch.where(counts > 0, (counts - 1) * page_size + lens, 0) if last_page else lens).to(torch.int32)


class _Tables:
    """Block tables and lengths from each plan's CSR: new tensors, or under a CUDA graph fixed buffers rewritten in
    place (the batch fixed at ``batch`` or the first plan's, the width at ``width``)."""

    def __init__(self, use_cuda_graph: bool, width: Optional[int], batch: Optional[int]):
        if use_cuda_graph and (not isinstance(width, int) or isinstance(width, bool) or width < 1):
            raise ValueError(f"max_pages_per_request: expected a positive int with use_cuda_graph (the most pages a "
                             f"request may hold: the CUDA-graph block table's width), got {width!r}")
        self.graph, self.width, self.batch = use_cuda_graph, width, batch
        self.buffers = None

    def __call__(self, csr: _CSR):
        if not self.graph:
            return csr_block_table(csr.indptr_host, csr.indices, csr.widest), csr.lens
        if self.buffers is None:
            batch = csr.batch if self.batch is None else self.batch
            device = csr.indices.device
            self.buffers = (torch.zeros(batch, self.width, dtype=torch.int32, device=device),
                            torch.zeros(batch, dtype=torch.int32, device=device))
        table, seqlens = self.buffers
        if csr.batch != table.shape[0]:
            raise ValueError(f"indptr: expected {table.shape[0]} requests (a CUDA-graph wrapper's batch, fixed by its "
                             f"buffers or first plan), got {csr.batch}")
        if csr.widest > table.shape[1]:
            raise ValueError(f"indptr: expected at most {table.shape[1]} pages a request (max_pages_per_request, the "
                             f"CUDA-graph table's width), got {csr.widest}")
        csr_block_table(csr.indptr_host, csr.indices, table.shape[1], out=table)
        seqlens.copy_(csr.lens)
        return table, seqlens


def _lse_in_base(res, return_lse: bool, lse_base: str, lse_buffer: Optional[torch.Tensor] = None):
    """A decode's result with its natural-log LSE in base ``lse_base`` ("2", FlashInfer's, or "e"), in place: the
    returned LSE, and the caller's ``lse=`` buffer whether or not it is returned (FlashInfer writes its base there)."""
    to_base = (lambda x: x.mul_(1.0 / math.log(2.0))) if _LSE_BASES[lse_base] == "2" else (lambda x: x)
    if not return_lse:
        if lse_buffer is not None:
            to_base(lse_buffer)
        return res
    out, lse = res
    return out, to_base(lse)


# FlashInfer's spellings of the LSE's base (its prefill wrappers' lse_base) beside leanattn's
_LSE_BASES = {"2": "2", "log2": "2", "e": "e", "ln": "e"}


def _check_lse_base(lse_base: str) -> str:
    if lse_base not in _LSE_BASES:
        raise ValueError(f"lse_base: expected '2' or 'log2' (FlashInfer's default), or 'e' or 'ln' (natural log), "
                         f"got {lse_base!r}")
    return _LSE_BASES[lse_base]


def _planned(plan):
    if plan is None:
        raise RuntimeError("run: call plan() first (FlashInfer's order: plan once a step, run once a layer)")
    return plan


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
        Its device is where ``plan()`` puts the block table and lengths (default: ``indices``' device); the memory is
        not used.
    kv_layout : {"NHD", "HND"}
        Pages ``(num_pages, page_size, Hkv, D)`` (NHD) or ``(num_pages, Hkv, page_size, D)`` (HND), read in place.
    use_cuda_graph : bool
        ``run()`` may be captured in a CUDA graph: ``plan()`` rewrites fixed buffers instead of making new tensors.
        The batch is then fixed (``paged_kv_last_page_len_buffer``'s length, or the first plan's) and the table's
        width is ``max_pages_per_request``.
    use_tensor_cores, backend, jit_args : optional
        Accepted for FlashInfer's signature; leanattn's kernels always stack a GQA group's heads in one product.
    paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer : torch.Tensor, optional
        Accepted for FlashInfer's signature; ``paged_kv_last_page_len_buffer``'s length fixes a CUDA-graph batch.
    max_pages_per_request : int, keyword-only
        leanattn's, required with ``use_cuda_graph``: the most pages a request may hold (its longest context over
        the page size), the fixed block table's width.

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
                 paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, backend: str = "auto",
                 jit_args=None, *, max_pages_per_request: Optional[int] = None):
        if kv_layout not in ("NHD", "HND"):
            raise ValueError(f"kv_layout: expected 'NHD' or 'HND', got {kv_layout!r}")
        self._kv_layout = kv_layout
        self._device = None if float_workspace_buffer is None else float_workspace_buffer.device
        self._use_tensor_cores = bool(use_tensor_cores)
        batch = None if paged_kv_last_page_len_buffer is None else paged_kv_last_page_len_buffer.numel()
        self._tables = _Tables(checks.flag("use_cuda_graph", use_cuda_graph), max_pages_per_request, batch)
        self._plan: Optional[_PagedPlan] = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._tables.graph

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        """FlashInfer's: a new workspace, whose device later plans use."""
        self._device = float_workspace_buffer.device

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim: int, page_size: int, *, pos_encoding_mode: str = "NONE",
             window_left: int = -1, logits_soft_cap: Optional[float] = None, q_data_type="float16",
             kv_data_type=None, o_data_type=None, data_type=None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, non_blocking: bool = True,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False) -> None:
        """Plan the decode of one step for every layer: ``indptr (B + 1,)``, ``indices (nnz,)`` and
        ``last_page_len (B,)`` int32 (FlashInfer's CSR page table, ``1 <= last_page_len <= page_size`` for a request
        with pages), the heads, head dim and page size, and the options every ``run()`` takes (``window_left``,
        ``logits_soft_cap``, ``sm_scale``; default ``1 / sqrt(head_dim)``) and checks (``q_data_type``,
        ``kv_data_type``). ``fixed_split_size`` and ``disable_split_kv`` (FlashInfer's schedule) are accepted and
        unused: leanattn's schedule is stream-K (``schedule="batch_invariant"`` of :func:`leanattn.decode` for
        batch-invariant results). Not inside a CUDA graph or ``torch.compile``, as FlashInfer's."""
        if pos_encoding_mode != "NONE":
            raise ValueError(f"pos_encoding_mode: expected 'NONE' (rotate q and k before the cache; leanattn.decode "
                             f"takes rotary_cos/rotary_sin with k=, v=), got {pos_encoding_mode!r}")
        _heads(num_qo_heads, num_kv_heads)
        q_dtype = _dtype("q_data_type", data_type or q_data_type)
        o_dtype = _dtype("o_data_type", o_data_type)
        if o_dtype is not None and o_dtype != q_dtype:
            raise ValueError(f"o_data_type: expected None or q_data_type ({q_dtype}: the output is in q's dtype), "
                             f"got {o_dtype}")
        device = self._device or indices.device
        csr = _CSR(indptr, indices, "last_page_len", last_page_len, page_size, device)
        table, seqlens = self._tables(csr)
        self._plan = _PagedPlan(
            batch=csr.batch, heads=(num_qo_heads, num_kv_heads), head_dim=head_dim, page_size=page_size, table=table,
            seqlens=seqlens, window_left=window_left, softcap=float(logits_soft_cap or 0.0),
            sm_scale=sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim), q_dtype=q_dtype,
            kv_dtype=_dtype("kv_data_type", kv_data_type or data_type) or q_dtype)

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
            lse: Optional[torch.Tensor] = None, return_lse: bool = False, enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks: Optional[torch.Tensor] = None, lse_base: str = "2"):
        """Decode ``q (B, num_qo_heads, head_dim)`` against the planned pages of ``paged_kv_cache``.

        Returns ``out`` (``q``'s shape and dtype) and with ``return_lse`` its ``lse (B, num_qo_heads)`` float32, in
        base 2 as FlashInfer's (``lse_base="e"``: natural log). ``q_scale`` multiplies the scores; ``k_scale`` and
        ``v_scale`` dequantise a float8 or int8 cache (:func:`leanattn.decode`'s) or, for a 16-bit one, multiply the
        scores and the output, as FlashInfer's. ``sinks`` are gpt-oss's attention sinks; ``window_left`` overrides the
        plan's; ``enable_pdl`` is accepted and unused (leanattn's launches choose it).
        """
        _, k, v = self._inputs(q, paged_kv_cache, lse_base, "batch", "as planned")
        return self._decode(q, k, v, q_scale, k_scale, v_scale, out, lse, return_lse, window_left, sinks, lse_base)

    def _inputs(self, q, paged_kv_cache, lse_base, rows: str, what: str):
        """``(plan, k_pages, v_pages)`` once ``run``'s inputs are checked: ``q`` of the plan's ``rows`` (its
        attribute named so), heads, head dim and dtype (``what`` says where the rows come from)."""
        p = _planned(self._plan)
        _check_lse_base(lse_base)
        k, v = self._pages(paged_kv_cache)
        checks.check_tensor("q", q, 3)
        want = (getattr(p, rows), p.heads[0], p.head_dim)
        if tuple(q.shape) != want:
            raise ValueError(f"q: expected shape {want} ({what}), got {tuple(q.shape)}")
        if q.dtype != p.q_dtype:
            raise TypeError(f"q: expected dtype {p.q_dtype} (plan's q_data_type), got {q.dtype}")
        return p, k, v

    def _decode(self, q, k, v, q_scale, k_scale, v_scale, out, lse, return_lse, window_left, sinks, lse_base, **kw):
        """:func:`leanattn.decode` over the planned table and lengths with ``run``'s options (``kw``: a packed
        query's), the LSE in ``lse_base``."""
        p = self._plan
        if k.dtype != p.kv_dtype:
            raise TypeError(f"paged_kv_cache: expected dtype {p.kv_dtype} (plan's kv_data_type), got {k.dtype}")
        k_scale = 1.0 if k_scale is None else float(k_scale)
        v_scale = 1.0 if v_scale is None else float(v_scale)
        scale = p.sm_scale * (1.0 if q_scale is None else float(q_scale))
        out_scale = 1.0
        if k.dtype not in checks.QUANT_DTYPES:  # (FlashInfer's scales of a 16-bit cache: plain factors)
            scale, k_scale, out_scale, v_scale = scale * k_scale, 1.0, v_scale, 1.0
        res = decode(q, k, v, p.seqlens, p.table, scale, return_lse, k_scale=k_scale, v_scale=v_scale,
                     softcap=p.softcap, window_left=p.window_left if window_left is None else window_left,
                     sinks=sinks, out=out, lse=lse, **kw)
        if out_scale != 1.0:
            (res[0] if return_lse else res).mul_(out_scale)
        return _lse_in_base(res, return_lse, lse_base, lse)

    def run_return_lse(self, q: torch.Tensor, paged_kv_cache, **kw):
        """``run(..., return_lse=True)``, FlashInfer's."""
        return self.run(q, paged_kv_cache, return_lse=True, **kw)

    def forward(self, q, paged_kv_cache, **kw):
        """``run``, FlashInfer's legacy name (its per-call plan options are not taken: plan again instead)."""
        return self.run(q, paged_kv_cache, **kw)

    def forward_return_lse(self, q, paged_kv_cache, **kw):
        return self.run(q, paged_kv_cache, return_lse=True, **kw)

    def end_forward(self) -> None:
        """FlashInfer's legacy no-op."""


class BatchPrefillWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """A few query tokens a request over a paged KV cache with FlashInfer's interface
    (``flashinfer.BatchPrefillWithPagedKVCacheWrapper``), on :func:`leanattn.decode` with a packed query: speculative
    decoding's verification, multi-token prediction, small appended chunks.

    The tokens of a request are stacked with its GQA group's heads in the rows of one product, so the cache is read
    once for all of them; that suits a few tokens a request, not a long prefill (each block of rows reads the cache
    again). ``plan`` takes ``qo_indptr`` (the query rows of each request, on the host) before FlashInfer's paged
    arguments; the query tokens are the last positions of each request's cache (their keys appended), ``causal``
    aligned to the bottom right, as FlashInfer's. ``custom_mask``/``packed_custom_mask`` are not supported. The
    constructor's arguments are :class:`BatchDecodeWithPagedKVCacheWrapper`'s (``qo_indptr_buf`` accepted too).
    """

    def __init__(self, float_workspace_buffer: Optional[torch.Tensor] = None, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf: Optional[torch.Tensor] = None,
                 paged_kv_indptr_buf: Optional[torch.Tensor] = None,
                 paged_kv_indices_buf: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buf: Optional[torch.Tensor] = None, custom_mask_buf=None, mask_indptr_buf=None,
                 backend: str = "auto", jit_args=None, *, max_pages_per_request: Optional[int] = None):
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph,
                         paged_kv_last_page_len_buffer=paged_kv_last_page_len_buf,
                         max_pages_per_request=max_pages_per_request)
        self._qo = None

    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
             paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             page_size: int, head_dim_vo: Optional[int] = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             sm_scale: Optional[float] = None, window_left: int = -1, logits_soft_cap: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, q_data_type="float16",
             kv_data_type=None, o_data_type=None, non_blocking: bool = True, fixed_split_size: Optional[int] = None,
             disable_split_kv: bool = False) -> None:
        """Plan one step: ``qo_indptr (B + 1,)`` int32, each request's query rows; the paged cache as
        :meth:`BatchDecodeWithPagedKVCacheWrapper.plan` takes it; ``causal`` and the options every ``run()`` takes
        (``fixed_split_size``, ``disable_split_kv``: accepted, unused)."""
        if custom_mask is not None or packed_custom_mask is not None:
            raise ValueError("custom_mask: expected None (leanattn's decode kernels take causal, windows, soft caps "
                             "and sinks, not an arbitrary mask)")
        if head_dim_vo not in (None, head_dim_qk):
            raise ValueError(f"head_dim_vo: expected None or head_dim_qk ({head_dim_qk}), got {head_dim_vo}")
        checks.check_index("qo_indptr", qo_indptr, 1, qo_indptr.device)
        if qo_indptr.numel() != paged_kv_indptr.numel():
            raise ValueError(f"qo_indptr: expected shape {tuple(paged_kv_indptr.shape)} (as paged_kv_indptr), got "
                             f"{tuple(qo_indptr.shape)}")
        super().plan(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads, num_kv_heads,
                     head_dim_qk, page_size, pos_encoding_mode=pos_encoding_mode, window_left=window_left,
                     logits_soft_cap=logits_soft_cap, q_data_type=q_data_type, kv_data_type=kv_data_type,
                     o_data_type=o_data_type, sm_scale=sm_scale, non_blocking=non_blocking)
        host = qo_indptr.cpu()
        steps = (host[1:] - host[:-1]).tolist()
        if int(host[0]) != 0 or min(steps, default=0) < 0:
            raise ValueError(f"qo_indptr: expected non-decreasing offsets from 0, got {host.tolist()}")
        max_q = max(steps, default=0)
        qo = qo_indptr.to(self._plan.table.device)
        if self._tables.graph:
            if self._qo is None:
                self._qo = (torch.empty_like(qo), max_q)
            elif max_q > self._qo[1]:
                raise ValueError(f"qo_indptr: expected at most {self._qo[1]} tokens a request, as the first plan of a "
                                 f"CUDA-graph wrapper (its launch is captured), got {max_q}")
            qo, max_q = self._qo[0].copy_(qo), self._qo[1]  # (the captured launch's token slots: an upper bound)
        self._plan.__dict__.update(qo_indptr=qo, max_q=max_q, total=int(host[-1]), causal=bool(causal))

    def run(self, q: torch.Tensor, paged_kv_cache, *, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
            lse: Optional[torch.Tensor] = None, return_lse: bool = False, enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks: Optional[torch.Tensor] = None, lse_base: str = "2"):
        """``q (total_q, num_qo_heads, head_dim)`` (rows by ``qo_indptr``) against the planned pages; returns
        ``out`` (``q``'s shape) and with ``return_lse`` its ``lse (total_q, num_qo_heads)`` float32, base 2 as
        FlashInfer's (``lse_base="e"``: natural log). Scales, sinks and ``window_left`` as
        :meth:`BatchDecodeWithPagedKVCacheWrapper.run`'s."""
        p, k, v = self._inputs(q, paged_kv_cache, lse_base, "total", "qo_indptr's rows, as planned")
        return self._decode(q, k, v, q_scale, k_scale, v_scale, out, lse, return_lse, window_left, sinks, lse_base,
                            causal=p.causal, cu_seqlens_q=p.qo_indptr, max_seqlen_q=max(p.max_q, 1))


class BatchMLAPagedAttentionWrapper:
    """MLA decode with FlashInfer's interface (``flashinfer.mla.BatchMLAPagedAttentionWrapper``), on
    :func:`leanattn.mla_decode`: the latent cache ``ckv (num_pages, page_size, Dc)`` and rotary keys ``kpe
    (num_pages, page_size, Dr)``, pages in FlashInfer's CSR form with each request's length given directly.

    ``float_workspace_buffer``, ``use_cuda_graph`` and ``max_pages_per_request`` as in
    :class:`BatchDecodeWithPagedKVCacheWrapper`; under ``use_cuda_graph`` the query offsets are copied into a fixed
    buffer too, and every plan must keep the first one's tokens a request (the launch shape a graph captured).
    """

    def __init__(self, float_workspace_buffer: Optional[torch.Tensor] = None, use_cuda_graph: bool = False,
                 qo_indptr: Optional[torch.Tensor] = None, kv_indptr: Optional[torch.Tensor] = None,
                 kv_indices: Optional[torch.Tensor] = None, kv_len_arr: Optional[torch.Tensor] = None,
                 backend: str = "auto", *, max_pages_per_request: Optional[int] = None):
        self._device = None if float_workspace_buffer is None else float_workspace_buffer.device
        batch = None if kv_len_arr is None else kv_len_arr.numel()
        self._tables = _Tables(checks.flag("use_cuda_graph", use_cuda_graph), max_pages_per_request, batch)
        self._qo = None
        self._plan = None

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
             kv_len_arr: torch.Tensor, num_heads: int, head_dim_ckv: int, head_dim_kpe: int, page_size: int,
             causal: bool, sm_scale: float, q_data_type, kv_data_type, use_profiler: bool = False) -> None:
        """Plan one step: ``qo_indptr (B + 1,)`` the query tokens of each request (one each for decode, or several:
        multi-token prediction, bottom-right ``causal``), ``kv_indptr``/``kv_indices`` the CSR pages, ``kv_len_arr
        (B,)`` each request's tokens; the heads, the latent and rotary widths, the page size, the softmax scale, the
        query and cache dtypes."""
        _heads(num_heads, 1)
        device = self._device or kv_indices.device
        csr = _CSR(kv_indptr, kv_indices, "kv_len_arr", kv_len_arr, page_size, device, last_page=False)
        checks.check_index("qo_indptr", qo_indptr, 1, qo_indptr.device)
        if qo_indptr.numel() != csr.batch + 1:
            raise ValueError(f"qo_indptr: expected shape ({csr.batch + 1},) (as kv_indptr), got "
                             f"{tuple(qo_indptr.shape)}")
        steps = (qo_indptr[1:] - qo_indptr[:-1]).tolist()
        max_q = max(steps, default=0)
        one_each = all(s == 1 for s in steps)
        qo = qo_indptr.to(device)
        if self._tables.graph:
            if self._qo is None:
                self._qo = (torch.empty_like(qo), one_each, max_q)
            elif self._qo[1:] != (one_each, max_q):
                raise ValueError(f"qo_indptr: expected {self._qo[2]} tokens a request at most, as the first plan of a "
                                 f"CUDA-graph wrapper (its launch is captured), got {max_q}")
            qo = self._qo[0].copy_(qo)
        table, seqlens = self._tables(csr)
        self._plan = _PagedPlan(batch=csr.batch, heads=num_heads, dims=(head_dim_ckv, head_dim_kpe),
                                total=int(qo_indptr[-1]), page_size=page_size, table=table, seqlens=seqlens,
                                causal=bool(causal), sm_scale=sm_scale, qo_indptr=qo, one_each=one_each, max_q=max_q,
                                q_dtype=_dtype("q_data_type", q_data_type), kv_dtype=_dtype("kv_data_type",
                                                                                               kv_data_type))

    def run(self, q_nope: torch.Tensor, q_pe: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            profiler_buffer: Optional[torch.Tensor] = None, kv_len: Optional[torch.Tensor] = None,
            page_table: Optional[torch.Tensor] = None, return_lse_base_on_e: bool = False):
        """``q_nope (total_q, H, Dc)``, ``q_pe (total_q, H, Dr)`` (rows by ``qo_indptr``) against the planned pages
        of ``ckv_cache (num_pages, page_size, Dc)`` and ``kpe_cache (num_pages, page_size, Dr)``; returns ``out``
        (``q_nope``'s shape) and with ``return_lse`` its ``lse (total_q, H)`` float32, base 2 as FlashInfer's
        (``return_lse_base_on_e=True``: natural log)."""
        p = _planned(self._plan)
        for name, x in (("profiler_buffer", profiler_buffer), ("kv_len", kv_len), ("page_table", page_table)):
            if x is not None:
                raise ValueError(f"{name}: expected None (the planned pages and lengths are used), got a tensor")
        want = (p.total, p.heads)
        for name, x, d in (("q_nope", q_nope, p.dims[0]), ("q_pe", q_pe, p.dims[1])):
            checks.check_tensor(name, x, 3)
            if tuple(x.shape) != want + (d,):
                raise ValueError(f"{name}: expected shape {want + (d,)} (as planned), got {tuple(x.shape)}")
        if p.q_dtype is not None and q_nope.dtype != p.q_dtype:
            raise TypeError(f"q_nope: expected dtype {p.q_dtype} (plan's q_data_type), got {q_nope.dtype}")
        if p.kv_dtype is not None and ckv_cache.dtype != p.kv_dtype:
            raise TypeError(f"ckv_cache: expected dtype {p.kv_dtype} (plan's kv_data_type), got {ckv_cache.dtype}")
        kw = dict(out=out, lse=lse)
        if not p.one_each:  # (one token a request: decode's own (B, H, Dc) layout)
            kw.update(causal=p.causal, cu_seqlens_q=p.qo_indptr, max_seqlen_q=p.max_q)
        res = mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, p.seqlens, p.table, p.sm_scale, return_lse, **kw)
        return _lse_in_base(res, return_lse, "e" if return_lse_base_on_e else "2", lse)


class MultiLevelCascadeAttentionWrapper:
    """Cascade attention with FlashInfer's interface (``flashinfer.MultiLevelCascadeAttentionWrapper``), on
    :func:`leanattn.cascade_decode`: every level's KV pages in one pool, each level's queries grouped by
    ``qo_indptr``, each group's pages in CSR form; the last level holds each request's own tokens.

    A shared level's segment is read once for all the query rows of its group (the bifurcated kernel), where
    FlashInfer's levels run one prefill launch each. Levels above the last must group whole requests (a request's
    query tokens all in one group), as cascade inference does. ``causal`` masks the last level only (every shared
    level is wholly before a request's own tokens), as FlashInfer's. ``window_left`` counts over the concatenation
    of the levels, a request's whole sequence (FlashInfer applies it within each level). ``use_cuda_graph`` is not
    supported: :func:`leanattn.cascade_decode` counts each level's groups on the host.
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
        # (the page pool's layout, device and checks: run() reads the pages as BatchDecodeWithPagedKVCacheWrapper)
        self._pages = BatchDecodeWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._plan = None

    def plan(self, qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len,
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, causal: bool = False,
             pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
             window_left: int = -1, logits_soft_cap: Optional[float] = None, rope_scale: Optional[float] = None,
             rope_theta: Optional[float] = None, q_data_type="float16", kv_data_type=None) -> None:
        """Plan one step: per level (outermost first) ``qo_indptr (groups + 1,)`` over the query rows,
        ``paged_kv_indptr (groups + 1,)``, ``paged_kv_indices`` and ``paged_kv_last_page_len (groups,)`` int32 (the
        groups' pages in CSR form); the last level's groups are the requests."""
        arrays = (qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len)
        for name, arr in zip(("qo_indptr_arr", "paged_kv_indptr_arr", "paged_kv_indices_arr",
                              "paged_kv_last_page_len"), arrays):
            if not isinstance(arr, (list, tuple)) or len(arr) != self._levels:
                got = len(arr) if isinstance(arr, (list, tuple)) else type(arr).__name__
                raise ValueError(f"{name}: expected a list of {self._levels} tensors (num_levels), got {got}")
        if pos_encoding_mode != "NONE":
            raise ValueError(f"pos_encoding_mode: expected 'NONE' (rotate q and k before the cache), got "
                             f"{pos_encoding_mode!r}")
        _heads(num_qo_heads, num_kv_heads)
        device = self._pages._device or paged_kv_indices_arr[-1].device
        tables = []
        for lvl, (qo, indptr, indices, last) in enumerate(zip(*arrays)):
            csr = _CSR(indptr, indices, "paged_kv_last_page_len", last, page_size, device)
            checks.check_index("qo_indptr", qo, 1, qo.device)
            if qo.numel() != csr.batch + 1:
                raise ValueError(f"qo_indptr: expected shape ({csr.batch + 1},) (as level {lvl}'s paged_kv_indptr), "
                                 f"got {tuple(qo.shape)}")
            tables.append((qo.cpu(), csr_block_table(csr.indptr_host, csr.indices, csr.widest), csr.lens))
        own_qo = tables[-1][0]
        total = int(own_qo[-1])
        steps = (own_qo[1:] - own_qo[:-1]).tolist()
        levels = []
        for lvl, (qo, table, lens) in enumerate(tables[:-1]):
            if int(qo[-1]) != total or int(qo[0]) != 0:
                raise ValueError(f"qo_indptr: expected offsets from 0 to the last level's {total} query rows, got "
                                 f"{qo.tolist()} at level {lvl}")
            if not bool(torch.isin(qo, own_qo).all()):
                raise ValueError(f"qo_indptr: expected level {lvl}'s groups to hold whole requests (its offsets "
                                 f"among the last level's {own_qo.tolist()}), got {qo.tolist()}")
            ids = (torch.searchsorted(qo, own_qo[:-1], right=True) - 1).to(torch.int32)
            levels.append((table, lens, ids.to(device)))
        one_each = all(n == 1 for n in steps)
        q_dtype = _dtype("q_data_type", q_data_type)
        self._plan = _PagedPlan(
            levels=levels, table=tables[-1][1], seqlens=tables[-1][2], heads=(num_qo_heads, num_kv_heads),
            head_dim=head_dim, total=total, causal=bool(causal) and not one_each, one_each=one_each,
            cu=None if one_each else own_qo.to(device), max_q=max(steps, default=0),
            sm_scale=sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim), window_left=window_left,
            softcap=float(logits_soft_cap or 0.0), q_dtype=q_dtype)
        # (run() reads the page pool through the decode wrapper's layout and checks)
        self._pages._plan = _PagedPlan(page_size=page_size, heads=(num_qo_heads, num_kv_heads), head_dim=head_dim)

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache, *, return_lse: bool = False, lse_base: str = "2",
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None):
        """``q (total_q, num_qo_heads, head_dim)`` (rows by the last level's ``qo_indptr``) against every level's
        pages of ``paged_kv_cache`` (FlashInfer's one pool: ``(num_pages, 2, ...)`` or a ``(k, v)`` pair); returns
        ``out`` (``q``'s shape), and with ``return_lse`` (leanattn's) its ``lse (total_q, num_qo_heads)`` float32,
        base 2 (``lse_base="e"``: natural log)."""
        p = _planned(self._plan)
        _check_lse_base(lse_base)
        k, v = self._pages._pages(paged_kv_cache)
        checks.check_tensor("q", q, 3)
        if tuple(q.shape) != (p.total, p.heads[0], p.head_dim):
            raise ValueError(f"q: expected shape {(p.total, p.heads[0], p.head_dim)} (the last level's query rows, "
                             f"as planned), got {tuple(q.shape)}")
        if q.dtype != p.q_dtype:
            raise TypeError(f"q: expected dtype {p.q_dtype} (plan's q_data_type), got {q.dtype}")
        levels = [(k, v, lens, ids, table) for table, lens, ids in p.levels]
        kw = dict(softcap=p.softcap, window_left=p.window_left, out=out, lse=lse)
        if not p.one_each:
            kw.update(causal=p.causal, cu_seqlens_q=p.cu, max_seqlen_q=p.max_q)
        res = cascade_decode(q, levels, k, v, p.seqlens, p.table, p.sm_scale, return_lse, **kw)
        return _lse_in_base(res, return_lse, lse_base, lse)

    def forward(self, q, paged_kv_cache, **kw):
        return self.run(q, paged_kv_cache, **kw)

    def end_forward(self) -> None:
        """FlashInfer's legacy no-op."""
