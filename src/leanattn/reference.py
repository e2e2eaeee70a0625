"""Float64 PyTorch references for every public op: the tests' ground truth.

Written for clarity, not speed: explicit loops over sequences and kv heads, every score
materialised. All return float64 outputs and natural-log LSEs; a query that sees no key gives
zeros and ``lse = -inf``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["decode", "gather_kv", "merge_states", "attend"]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None,
           softcap: float = 0.0, sink: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """Softmax attention of ``q [M, D]`` over ``k, v [N, D]`` in float64.

    ``mask [M, N]`` bool, True = attend. ``softcap > 0``: scores ``s`` become ``softcap * tanh(s / softcap)``.
    ``bias [M, N]``: added to the (capped) scores (ALiBi). ``sink [M]``: one more score a row, of a key whose value
    is zero (attention sinks), in the softmax and the LSE.
    Returns ``(out [M, D], lse [M])``; rows with no key give zeros and ``-inf`` (or their sink).
    """
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.T) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.double()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    if sink is not None:
        s = torch.cat([s, sink.double().to(s.device)[:, None]], 1)
        v = torch.cat([v, v.new_zeros(1, v.shape[1])])
    lse = torch.logsumexp(s, dim=-1) if s.shape[-1] > 0 else torch.full(s.shape[:-1], float("-inf"), dtype=s.dtype,
                                                                        device=s.device)
    finite = torch.isfinite(lse)
    p = torch.where(finite[:, None], torch.exp(s - torch.where(finite, lse, 0.0)[:, None]), 0.0)
    return p @ v, lse


def attend_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor,
                  softcap: float = 0.0, sinks: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """:func:`attend` of the tokens ``q [Lq, Hq, D]`` of one sequence over ``k, v [N, Hkv, D]``, query head ``h``
    reading kv head ``h // (Hq // Hkv)``, ``mask [Lq, N]`` each token's keys, ``sinks [Hq]`` each head's sink logit
    (or None), ``bias [Lq, Hq, N]`` added to the scores (or None). Returns ``(out [Lq, Hq, D], lse [Lq, Hq])``."""
    Lq, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    out = torch.empty(Lq, Hq, D, dtype=torch.float64, device=q.device)
    lse = torch.empty(Lq, Hq, dtype=torch.float64, device=q.device)
    rows_mask = mask.repeat_interleave(group, 0)  # a group's heads of each token, token-major
    for h in range(Hkv):
        heads = slice(h * group, (h + 1) * group)
        sink = None if sinks is None else sinks[heads].repeat(Lq)
        o, l_ = attend(q[:, heads].reshape(Lq * group, D), k[:, h], v[:, h], scale, rows_mask, softcap=softcap,
                       sink=sink, bias=None if bias is None else bias[:, heads].reshape(Lq * group, -1))
        out[:, heads], lse[:, heads] = o.view(Lq, group, D), l_.view(Lq, group)
    return out, lse


def gather_kv(cache: torch.Tensor, b: int, n: int, block_table: torch.Tensor | None) -> torch.Tensor:
    """The first ``n`` tokens of sequence ``b``: ``(n, kv_heads, D)``, from a contiguous or paged cache."""
    if block_table is None:
        return cache[b, :n]
    if cache.dtype.itemsize == 1 and cache.dtype.is_floating_point:
        # float8: gathered as bytes (indexing need not support float8 on every device)
        return gather_kv(cache.view(torch.uint8), b, n, block_table).view(cache.dtype)
    page_size = cache.shape[1]
    pages = block_table[b, : -(-n // page_size)].long()
    return cache[pages].reshape(-1, *cache.shape[2:])[:n]


def _per_sequence(q: torch.Tensor, cu_seqlens_q: torch.Tensor, one):
    """A packed query ``q (total_q, Hq, D)`` attended a sequence at a time: ``one(b, q_b)`` gives the float64 ``(out,
    lse)`` of sequence ``b``'s rows as a ``(1, n_b, Hq, D)`` query; they are concatenated in ``q``'s order."""
    cu = cu_seqlens_q.tolist()
    outs = [q.new_zeros((0, *q.shape[1:]), dtype=torch.float64)]
    lses = [q.new_zeros((0, q.shape[1]), dtype=torch.float64)]
    for b in range(len(cu) - 1):
        if cu[b + 1] > cu[b]:
            o, lse = one(b, q[None, cu[b]:cu[b + 1]])
            outs.append(o[0])
            lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses)


def _sequence_caches(b: int, k_cache, v_cache, cache_seqlens, block_table) -> tuple:
    """``(k_cache, v_cache, cache_seqlens, block_table)`` of sequence ``b`` alone (a paged cache keeps its pages and
    takes the row of the table; absent parts stay None)."""
    one = slice(b, b + 1)
    paged = block_table is not None
    k, v = ((c if c is None or paged else c[one]) for c in (k_cache, v_cache))
    return k, v, None if cache_seqlens is None else cache_seqlens[one], block_table[one] if paged else None


def decode(q, k_cache, v_cache, cache_seqlens=None, block_table=None, softmax_scale=None, k_scale=1.0, v_scale=1.0,
           softcap=0.0, window_left=-1, causal=False, cu_seqlens_q=None, sinks=None, alibi_slopes=None,
           cache_leftpad=None):
    """Reference for :func:`leanattn.decode`: ``(out, lse)`` float64 of ``q``'s shape without and with ``D``;
    attention over ``k_cache * k_scale`` and ``v_cache * v_scale`` (the dequantisation of float8 caches), scores
    soft-capped by ``softcap`` where it is > 0. A query ``(B, Lq, Hq, D)`` holds the last ``Lq`` positions of each
    sequence, token ``s`` at ``cache_seqlens[b] - Lq + s``; ``(B, Hq, D)`` is ``Lq = 1``. Each token attends the keys
    ``[pos - window_left, pos]`` where ``window_left >= 0``, with ``causal`` none after ``pos``. With
    ``cu_seqlens_q`` (``(B + 1,)``), ``q (total_q, Hq, D)`` is packed: sequence ``b`` is its rows ``[cu[b], cu[b+1])``,
    attending as a ``(1, n_b, Hq, D)`` query of that sequence alone. ``sinks (Hq,)``: each head's sink logit, a key
    of value zero in every token's softmax. ``alibi_slopes (Hq,)`` or ``(B, Hq)``: the bias ``-slope * |pos - key|``
    added to the (capped) scores. ``cache_leftpad (B,)``: sequence ``b``'s tokens are ``[cache_leftpad[b],
    cache_seqlens[b])`` of its row, positions counted from the first (a contiguous cache)."""
    if alibi_slopes is not None and alibi_slopes.dim() == 1:
        alibi_slopes = alibi_slopes[None].expand(len(cu_seqlens_q) - 1 if cu_seqlens_q is not None else q.shape[0], -1)
    if cu_seqlens_q is not None:
        return _per_sequence(q, cu_seqlens_q, lambda b, q_b: decode(
            q_b, *_sequence_caches(b, k_cache, v_cache, cache_seqlens, block_table), softmax_scale, k_scale, v_scale,
            softcap, window_left, causal, sinks=sinks,
            alibi_slopes=None if alibi_slopes is None else alibi_slopes[b:b + 1],
            cache_leftpad=None if cache_leftpad is None else cache_leftpad[b:b + 1]))
    if q.dim() == 3:
        out, lse = decode(q[:, None], k_cache, v_cache, cache_seqlens, block_table, softmax_scale, k_scale, v_scale,
                          softcap, window_left, causal, sinks=sinks, alibi_slopes=alibi_slopes,
                          cache_leftpad=cache_leftpad)
        return out[:, 0], lse[:, 0]
    B, Lq, Hq, D = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    if cache_seqlens is None:
        cap = k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]
        lens = [cap] * B
    else:
        lens = cache_seqlens.tolist()
    out = torch.zeros(B, Lq, Hq, D, dtype=torch.float64, device=q.device)
    lse = torch.full((B, Lq, Hq), float("-inf"), dtype=torch.float64, device=q.device)
    pads = [0] * B if cache_leftpad is None else cache_leftpad.tolist()
    for b in range(B):
        k = gather_kv(k_cache, b, lens[b], block_table)[pads[b]:].double() * k_scale
        v = gather_kv(v_cache, b, lens[b], block_table)[pads[b]:].double() * v_scale
        n = k.shape[0]
        keys = torch.arange(n, device=q.device)
        pos = n - Lq + torch.arange(Lq, device=q.device)
        mask = torch.ones(Lq, n, dtype=torch.bool, device=q.device)
        if causal:
            mask &= keys[None, :] <= pos[:, None]
        if window_left >= 0:
            mask &= keys[None, :] >= pos[:, None] - window_left
        bias = None
        if alibi_slopes is not None:
            bias = -alibi_slopes[b].double()[None, :, None] * (pos[:, None] - keys[None, :]).abs()[:, None, :].double()
        out[b], lse[b] = attend_groups(q[b], k, v, scale, mask, softcap, sinks, bias)
    return out, lse


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, interleaved: bool = False):
    """Reference rotary embedding: ``x (B, T, H, D)`` float64, its first ``2 * cos.shape[1]`` dims of token ``t`` of
    row ``b`` turned by the angles of position ``positions[b, t]``, as complex numbers multiplied by
    ``cos + i sin``: pair ``j`` is dims ``(2j, 2j + 1)`` when ``interleaved``, else ``(j, j + rotary_dim / 2)``."""
    half = cos.shape[1]
    x = x.double().clone()
    turn = torch.complex(cos.double(), sin.double())[positions.long()][:, :, None, :]    # (B, T, 1, half)
    if interleaved:
        pairs = torch.view_as_complex(x[..., :2 * half].reshape(*x.shape[:-1], half, 2).contiguous())
        x[..., :2 * half] = torch.view_as_real(pairs * turn).flatten(-2)
    else:
        pairs = torch.complex(x[..., :half], x[..., half:2 * half]) * turn
        x[..., :half], x[..., half:2 * half] = pairs.real, pairs.imag
    return x


def mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, cache_seqlens=None, block_table=None, softmax_scale=None,
               causal=False, cu_seqlens_q=None, k_scale=1.0, v_scale=1.0):
    """Reference for :func:`leanattn.mla_decode`: ``(out, lse)`` float64. :func:`decode` of one kv head whose keys
    are ``(ckv ++ kpe) * k_scale`` and values ``ckv * v_scale`` (zero-padded to the keys' width, the padding dropped
    from the output), the query ``q_nope ++ q_pe`` (packed with ``cu_seqlens_q``); caches ``(.., .., Dc)`` or
    ``(.., .., 1, Dc)``, float8 ones included."""
    ckv, kpe = (c if c.dim() == 4 else c.unsqueeze(2) for c in (ckv_cache, kpe_cache))
    dc = ckv.shape[-1]
    k = torch.cat([ckv.double(), kpe.double()], -1) * k_scale
    v = torch.cat([ckv.double() * v_scale, torch.zeros_like(kpe, dtype=torch.float64)], -1)
    q = torch.cat([q_nope.double(), q_pe.double()], -1)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out, lse = decode(q, k, v, cache_seqlens, block_table, scale, causal=causal, cu_seqlens_q=cu_seqlens_q)
    return out[..., :dc], lse


def merge_states(outs: torch.Tensor, lses: torch.Tensor):
    """Reference for :func:`leanattn.merge_states` over the leading axis: float64 ``(out, lse)``."""
    outs, lses = outs.double(), lses.double()
    lse = torch.logsumexp(lses, dim=0)
    finite = torch.isfinite(lse)
    w = torch.where(finite, torch.exp(lses - torch.where(finite, lse, 0.0)), 0.0)
    out = (w[..., None] * torch.where(w[..., None] > 0, outs, 0.0)).sum(0)
    return out, lse


# --------------------------------------------------------------------------------------------
# sparse causal attention (leanattn.qk_sparse_attention / hash_sparse_attention)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     softmax_scale: float | None = None, return_lse: bool = False, dtype: torch.dtype = torch.float64):
    """Dense attention of ``q, k, v (B, N, H, D)`` under ``mask (B, H, N, N)`` (True = attend) in float64.

    Differentiable (no NaN in gradients); a row with no visible key gives zeros. Returns
    ``(B, N, H, D)`` in ``dtype`` (float64), and with ``return_lse`` the ``(B, N, H)`` natural-log LSE (``-inf`` for
    a row with no visible key). ``dtype=q.dtype`` runs the same math in the inputs' precision: PyTorch's own rounding,
    the baseline of a tolerance for kernels whose error the problem amplifies (flash-attn's tests' convention).
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * scale
    has_key = mask.any(-1, keepdim=True)
    s = s.masked_fill(~mask, float("-inf")).masked_fill(~has_key, 0.0)
    p = torch.softmax(s, dim=-1) * has_key
    out = (p @ v).transpose(1, 2)
    if not return_lse:
        return out
    lse = torch.where(has_key[..., 0], torch.logsumexp(s, dim=-1), float("-inf"))
    return out, lse.transpose(1, 2)


def _causal(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def qk_sparse_mask(q_keep: torch.Tensor, k_keep: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, N)`` bool: query i sees key j iff both kept and ``j <= i``."""
    qk, kk = q_keep.transpose(1, 2), k_keep.transpose(1, 2)
    return qk[..., :, None] & kk[..., None, :] & _causal(q_keep.shape[1], q_keep.device)


def hash_sparse_mask(q_buckets: torch.Tensor, k_buckets: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, N)`` bool: query i sees key j iff same bucket and ``j <= i``."""
    qb, kb = q_buckets.transpose(1, 2), k_buckets.transpose(1, 2)
    return (qb[..., :, None] == kb[..., None, :]) & _causal(q_buckets.shape[1], q_buckets.device)


def _kv_heads_per_query(q, *kv):
    """``kv``'s tensors (``(B, N, Hkv, ...)``) with each kv head repeated for the ``H / Hkv`` query heads of its
    group (grouped-query attention: query head ``h`` reads kv head ``h // (H / Hkv)``); gradients flow back summed."""
    group = q.shape[2] // kv[0].shape[2]
    return [x.repeat_interleave(group, dim=2) for x in kv]


def qk_sparse_attention(q, k, v, q_keep, k_keep, softmax_scale=None, return_lse=False):
    """Reference for :func:`leanattn.qk_sparse_attention`: ``(B, N, H, D)`` float64 (and the ``(B, N, H)`` LSE);
    ``k, v, k_keep`` with ``Hkv`` heads (grouped-query attention) or ``H``."""
    k, v, k_keep = _kv_heads_per_query(q, k, v, k_keep)
    return masked_attention(q, k, v, qk_sparse_mask(q_keep, k_keep), softmax_scale, return_lse)


def hash_sparse_attention(q, k, v, q_buckets, k_buckets, softmax_scale=None, return_lse=False):
    """Reference for :func:`leanattn.hash_sparse_attention`: ``(B, N, H, D)`` float64 (and the ``(B, N, H)`` LSE);
    ``k, v, k_buckets`` with ``Hkv`` heads (grouped-query attention) or ``H``."""
    k, v, k_buckets = _kv_heads_per_query(q, k, v, k_buckets)
    return masked_attention(q, k, v, hash_sparse_mask(q_buckets, k_buckets), softmax_scale, return_lse)


__all__ += ["masked_attention", "qk_sparse_mask", "hash_sparse_mask", "qk_sparse_attention",
            "hash_sparse_attention"]


# --------------------------------------------------------------------------------------------
# shared-prefix decode (leanattn.bifurcated_decode / cascade_decode)


def _segment(k: torch.Tensor, lens, ids, b: int, table=None) -> tuple[int, int]:
    """``(prefix index, length)`` of the shared segment that sample ``b`` reads (``table``: of a paged level, whose
    capacity is its pages times the page size)."""
    g = 0 if ids is None else int(ids[b])
    cap = k.shape[-3] if table is None else table.shape[1] * k.shape[1]
    n = cap if lens is None else int(lens[g])
    return g, n


def _levels(levels) -> list:
    """Each level as ``(k, v, lens, ids, block_table)``, the optional entries None where not given."""
    return [(tuple(lv) + (None, None, None))[:5] for lv in levels]


def cascade_decode(q, levels, k_cache=None, v_cache=None, cache_seqlens=None, block_table=None, softmax_scale=None,
                   softcap=0.0, k_scale=1.0, v_scale=1.0, causal=False, cu_seqlens_q=None, window_left=-1, sinks=None):
    """Reference for :func:`leanattn.cascade_decode`: attention of each sample over the concatenation
    of its segment of every level (outermost first) and its own tokens, scores capped by ``softcap`` where it is
    > 0, keys and values times ``k_scale`` and ``v_scale`` (float8 caches). A query ``(B, Lq, Hq, D)`` holds the last
    ``Lq`` positions of each sample's own tokens: every token attends every shared key and, with ``causal``, the own
    keys up to its position (``cache_seqlens[b] - Lq + s``). With ``cu_seqlens_q``, ``q (total_q, Hq, D)`` is packed,
    sample ``b`` its rows ``[cu[b], cu[b+1])`` as a ``(1, n_b, Hq, D)`` query of that sample alone. With
    ``window_left >= 0`` token ``s``, at position ``shared + own - Lq + s`` of the concatenation, attends no key
    before ``pos - window_left``. ``sinks (Hq,)``: each head's sink logit, as :func:`decode`'s. A level
    ``(k, v, lens, ids, block_table)`` is paged: ``k, v`` page pools ``(pages, page_size, Hkv, D)``, segment ``g`` the
    pages ``block_table[g]``. Float64 ``(out, lse)`` of ``q``'s shape without and with ``D``."""
    levels = _levels(levels)
    if cu_seqlens_q is not None:
        return _per_sequence(q, cu_seqlens_q, lambda b, q_b: cascade_decode(
            q_b, [(k, v, lens, None if ids is None else ids[b:b + 1], t) for k, v, lens, ids, t in levels],
            *_sequence_caches(b, k_cache, v_cache, cache_seqlens, block_table), softmax_scale, softcap, k_scale,
            v_scale, causal, window_left=window_left, sinks=sinks))
    if q.dim() == 3:
        out, lse = cascade_decode(q[:, None], levels, k_cache, v_cache, cache_seqlens, block_table, softmax_scale,
                                  softcap, k_scale, v_scale, causal, window_left=window_left, sinks=sinks)
        return out[:, 0], lse[:, 0]
    B, Lq, Hq, D = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    if k_cache is not None:
        cap = k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]
        own_lens = [cap] * B if cache_seqlens is None else cache_seqlens.tolist()
    out = torch.zeros(B, Lq, Hq, D, dtype=torch.float64, device=q.device)
    lse = torch.full((B, Lq, Hq), float("-inf"), dtype=torch.float64, device=q.device)
    for b in range(B):
        ks, vs = [], []
        for k, v, lens, ids, table in levels:
            g, n = _segment(k, lens, ids, b, table)
            if table is not None:
                ks.append(gather_kv(k, g, n, table).double())
                vs.append(gather_kv(v, g, n, table).double())
                continue
            ks.append((k if k.dim() == 4 else k[None])[g, :n].double())
            vs.append((v if v.dim() == 4 else v[None])[g, :n].double())
        shared = sum(x.shape[0] for x in ks)
        own = 0
        if k_cache is not None:
            own = own_lens[b]
            ks.append(gather_kv(k_cache, b, own, block_table).double())
            vs.append(gather_kv(v_cache, b, own, block_table).double())
        k, v = torch.cat(ks) * k_scale, torch.cat(vs) * v_scale
        mask = torch.ones(Lq, shared + own, dtype=torch.bool, device=q.device)
        pos = own - Lq + torch.arange(Lq, device=q.device)
        if causal:
            mask[:, shared:] &= torch.arange(own, device=q.device)[None, :] <= pos[:, None]
        if window_left >= 0:
            mask &= torch.arange(shared + own, device=q.device)[None, :] >= (shared + pos - window_left)[:, None]
        out[b], lse[b] = attend_groups(q[b], k, v, scale, mask, softcap, sinks)
    return out, lse


def bifurcated_decode(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens=None, block_table=None,
                      prefix_lens=None, prefix_ids=None, softmax_scale=None, softcap=0.0, k_scale=1.0, v_scale=1.0,
                      causal=False, cu_seqlens_q=None, window_left=-1, sinks=None, prefix_block_table=None):
    """Reference for :func:`leanattn.bifurcated_decode`: decode over ``prefix[prefix_ids[b]]``
    followed by the sample's own tokens (several query tokens a sample, or packed, as :func:`cascade_decode`;
    ``prefix_block_table``: the prefixes are pages of the pools ``prefix_k/v``). Float64 ``(out, lse)``."""
    return cascade_decode(q, [(prefix_k, prefix_v, prefix_lens, prefix_ids, prefix_block_table)], k_cache, v_cache,
                          cache_seqlens, block_table, softmax_scale, softcap, k_scale, v_scale, causal, cu_seqlens_q,
                          window_left, sinks)


__all__ += ["bifurcated_decode", "cascade_decode"]
