"""``leanattn.bifurcated_decode`` and ``leanattn.cascade_decode``: decode with shared prefixes.

Many samples of one prompt share the prompt's KV (parallel sampling, best-of-n, beams). Standard
decode reads the shared prefix once per sample; here it is read once per prompt, with the
prompt's queries stacked into the rows of the matrix product, and merged exactly with each
sample's own tokens in the same launch (see ``kernels/bifurcated_states.py``; launch plans and the other
paths in ``ops/bifurcated_launch.py``).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import triton

from .. import checks, runtime
from ..kernels.group_layout import group_layout_kernel
from ..merges.sinks import check_sinks, with_sinks
from ..merges.states import merge_state_list
from .bifurcated_launch import Plan
from .bifurcated_window import query_rows, segments, window_states
from .decode import _ENV_KNOBS as DECODE_ENV_KNOBS
from .decode import _capacity, decode, finish, output_buffers, rows_window, token_buffers, validate_decode
from .decode import with_token_axis
from .kv_append import append_kv, lengths_after
from .rotary import check_rotary

__all__ = ["bifurcated_decode", "cascade_decode"]

_PLANS = runtime.PlanCache(name="bifurcated_decode")
# environment variables a plan is made from (benchmark sweeps): part of the plan key
_ENV = runtime.EnvReader(*DECODE_ENV_KNOBS, "LEANATTN_BIFURCATED_CONFIG")


@functools.lru_cache(maxsize=256)  # (as many as runtime.PlanCache keeps plans)
def _group_launcher(B: int, G: int, device: torch.device) -> runtime.Launcher:
    meta = dict(BLOCK_B=max(16, min(128, triton.next_power_of_2(B))),
                BLOCK_G=max(16, min(1024, triton.next_power_of_2(G))), num_warps=4)
    return runtime.Launcher(group_layout_kernel, (1,), meta, (B, G))


def _group_layout(prefix_ids: torch.Tensor, G: int):
    """``(counts (G,), starts (G,), order (B,), rank (B,))`` int32: samples sorted by prompt.

    Prompt ``g`` has ``counts[g]`` samples, its ``j``-th being ``order[starts[g] + j]``; sample ``b``
    is the ``rank[b]``-th of its prompt. One launch (``kernels/group_layout.py``), no host sync and no atomics
    (deterministic, capturable in a CUDA graph). An id outside ``[0, G)`` (possible only unvalidated) belongs to no
    prompt: that sample's output is undefined.
    """
    B = prefix_ids.shape[0]
    g4, b4 = -(-G // 4) * 4, -(-B // 4) * 4  # each part 16-byte aligned, as the launcher's first launch saw
    buf = torch.empty(2 * (g4 + b4), dtype=torch.int32, device=prefix_ids.device)
    counts, starts, order, rank = (t[:n] for t, n in zip(buf.split((g4, g4, b4, b4)), (G, G, B, B)))
    with runtime.device_guard(prefix_ids.device):
        _group_launcher(B, G, prefix_ids.device)(prefix_ids, counts, starts, order, rank)
    return counts, starts, order, rank


def _bifurcated_impl(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table, prefix_lens, prefix_ids,
                     softmax_scale, max_group_size, num_programs, block_h, block_n, softcap=0.0, k_scale=1.0,
                     v_scale=1.0, prefix_starts=None, prefix_span=0, prefix_block_table=None, sinks=None, *,
                     need_lse: bool = True, out=None, lse=None):
    """``bifurcated_decode`` past validation (``out``, ``lse``: the caller's checked buffers, written in place of new
    tensors where given); with ``need_lse=False`` (eager calls that do not return it) the
    LSE goes to the plan's sink, which no kernel reads, as in ``ops.decode._decode_impl``. ``prefix_starts (G,)``
    int32 (with ``prefix_lens``): prompt ``g``'s keys are ``[prefix_starts[g], prefix_lens[g])``, at most
    ``prefix_span`` of them (a window's tail, read where it lies: ``ops/bifurcated_window.py``); an own cache beside
    them is read whole (the window holds every own token), on the states path.
    ``prefix_block_table (G, max_pages)`` int32: ``prefix_k/v`` are page pools, prompt ``g`` the pages of row ``g``.
    ``sinks (Hq,)``: attention sinks, folded in by the path's merge launch where it has one, else by a launch
    after."""
    B, Hq, D = q.shape
    if out is None:
        out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    if B == 0 or Hq == 0:
        return out, torch.empty((B, Hq), dtype=torch.float32, device=q.device) if lse is None else lse
    if prefix_k.dim() == 3:
        prefix_k, prefix_v = prefix_k.unsqueeze(0), prefix_v.unsqueeze(0)
    if prefix_block_table is not None and prefix_block_table.stride(1) != 1:
        prefix_block_table = prefix_block_table.contiguous()
    G = prefix_k.shape[0] if prefix_block_table is None else prefix_block_table.shape[0]
    if prefix_lens is not None and prefix_lens.stride(0) != 1:
        prefix_lens = prefix_lens.contiguous()
    if cache_seqlens is not None and cache_seqlens.stride(0) != 1:
        cache_seqlens = cache_seqlens.contiguous()
    if prefix_ids is not None and prefix_ids.stride(0) != 1:
        prefix_ids = prefix_ids.contiguous()
    if prefix_starts is None:
        prefix_span = 0
    elif prefix_starts.stride(0) != 1:
        prefix_starts = prefix_starts.contiguous()
    single = prefix_ids is None
    groups = None
    if single:
        n_max = B
    else:
        groups = _group_layout(prefix_ids, G)
        if max_group_size > 0:
            n_max = max_group_size
        elif q.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            n_max = B  # no sync while capturing: every prompt may hold every sample
        else:
            n_max = max(int(groups[0].max()), 1)
    key = (q.shape, q.stride(), q.dtype, q.device, prefix_k.shape, prefix_k.stride(), prefix_v.stride(), prefix_k.dtype,
           None if k_cache is None else (k_cache.shape, k_cache.stride(), v_cache.stride(), k_cache.dtype),
           cache_seqlens is None, None if block_table is None else (block_table.shape, block_table.stride()),
           None if prefix_block_table is None else (prefix_block_table.shape, prefix_block_table.stride()),
           prefix_lens is None, single, n_max, softmax_scale, softcap, k_scale, v_scale, num_programs, block_h,
           block_n, prefix_span, sinks is not None, runtime.interpreting(),
           # TMA loads need 16-byte aligned bases (decode_config.load_path)
           all(t.data_ptr() % 16 == 0 for t in (prefix_k, prefix_v, k_cache, v_cache) if t is not None),
           # the overlap path reads the prefix by TMA whatever the own caches' alignment (bifurcated_overlap.usable)
           prefix_k.data_ptr() % 16 == 0 and prefix_v.data_ptr() % 16 == 0,
           *_ENV())
    with runtime.device_guard(q.device):
        plan = _PLANS.get_or_make(key, lambda: Plan(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table,
                                                    prefix_lens is not None, single, n_max, softmax_scale,
                                                    num_programs, block_h, block_n, softcap, k_scale, v_scale,
                                                    prefix_span, prefix_block_table, sinks is not None))
        if lse is None:
            lse = torch.empty((B, Hq), dtype=torch.float32, device=q.device) if need_lse else plan.lse_sink
        plan.run(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table, prefix_lens, prefix_ids, groups,
                 out, lse, prefix_starts, prefix_block_table, sinks)
    if sinks is not None and not plan.sinks_merged:
        out, lse = with_sinks(out, lse, sinks)
    return out, lse


@torch.library.custom_op("leanattn::bifurcated_decode", mutates_args=())
def _bifurcated_op(
    q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
    k_cache: Optional[torch.Tensor], v_cache: Optional[torch.Tensor],
    cache_seqlens: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
    prefix_lens: Optional[torch.Tensor], prefix_ids: Optional[torch.Tensor],
    softmax_scale: float, max_group_size: int, num_programs: int, block_h: int, block_n: int, softcap: float = 0.0,
    k_scale: float = 1.0, v_scale: float = 1.0, prefix_starts: Optional[torch.Tensor] = None, prefix_span: int = 0,
    prefix_block_table: Optional[torch.Tensor] = None, sinks: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _bifurcated_impl(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table, prefix_lens,
                            prefix_ids, softmax_scale, max_group_size, num_programs, block_h, block_n, softcap,
                            k_scale, v_scale, prefix_starts, prefix_span, prefix_block_table, sinks)


@_bifurcated_op.register_fake
def _(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table, prefix_lens, prefix_ids, softmax_scale,
      max_group_size, num_programs, block_h, block_n, softcap=0.0, k_scale=1.0, v_scale=1.0, prefix_starts=None,
      prefix_span=0, prefix_block_table=None, sinks=None):
    B, Hq, D = q.shape
    return q.new_empty((B, Hq, D)), q.new_empty((B, Hq), dtype=torch.float32)


def validate_own(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, validate, k_scale=1.0, v_scale=1.0,
                 batch=None, window_left=-1, cu_seqlens_q=None, max_seqlen_q=0, seqlens_name="cache_seqlens"):
    """Checks of the own-token cache, which may be absent (``k_cache = v_cache = None``, and then no
    lengths or page table either), as in :func:`leanattn.decode` otherwise (float8 caches and their scales
    included; ``batch``: the samples of a packed query, as ``validate_decode``'s); returns ``(softmax scale, k_scale,
    v_scale)``, the scales as given without an own cache (the prefix's checks take them: ``validate_prefix``).
    ``window_left`` (an int), ``cu_seqlens_q`` and ``max_seqlen_q`` (``packed_query``'s): as in decode, only the pages
    of each sample's window need valid ids, the own tokens being the tail of the keys a window reaches.
    ``seqlens_name``: the lengths' name in errors (``lengths_after``'s)."""
    if k_cache is None and v_cache is None:
        scale = checks.query(q, softmax_scale, tokens=True)
        for name, t in (("cache_seqlens", cache_seqlens), ("block_table", block_table)):
            if t is not None:
                raise ValueError(f"{name}: expected None without an own cache (k_cache=None), got a tensor")
        return scale, k_scale, v_scale
    if k_cache is None or v_cache is None:
        missing, given = ("v_cache", "k_cache") if v_cache is None else ("k_cache", "v_cache")
        raise ValueError(f"{missing}: expected k_cache and v_cache together (or neither), got only {given}")
    slots = max_seqlen_q if cu_seqlens_q is not None else checks.token_slots(q)
    return validate_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, "lean", validate,
                           k_scale, v_scale, fp8=True, window_left=rows_window(window_left, slots), batch=batch,
                           cu_seqlens_q=cu_seqlens_q, max_seqlen_q=slots,
                           names=("q", "k_cache", "v_cache", seqlens_name))


def validate_prefix(q, prefix_k, prefix_v, prefix_lens, prefix_ids, max_group_size, validate, name="prefix",
                    kv_dtype=None, kv_name="k_cache", k_scale=1.0, v_scale=1.0, batch=None, block_table=None):
    """Checks of a shared prefix against ``q``: its dtype ``q``'s or a float8 one, equal to ``kv_dtype`` (that of
    ``kv_name``, the own cache or another level) where given, and the dequantisation scales against it
    (``checks.kv_cache``); returns ``(Hkv, k_scale, v_scale)``. The kv-head count is compared by the caller.
    ``batch``: the samples of a packed query (else ``q``'s first dimension). ``block_table`` (``{name}_block_table``):
    the prefixes are pages of the pools ``prefix_k/v (num_pages, page_size, Hkv, D)``, prefix ``g`` the pages
    ``block_table[g]``, whose ids are checked for the pages in use as :func:`leanattn.decode` checks its own."""
    kn, vn, ln, idn, tn = f"{name}_k", f"{name}_v", f"{name}_lens", f"{name}_ids", f"{name}_block_table"
    checks.check_tensor(kn, prefix_k)
    checks.check_tensor(vn, prefix_v)
    if block_table is not None:
        if prefix_k.dim() != 4:
            raise ValueError(f"{kn}: expected a 4-D (num_pages, page_size, Hkv, D) page pool with {tn}, got shape "
                             f"{tuple(prefix_k.shape)}")
        checks.page_table(tn, block_table, kn, prefix_k, q.device)
    elif prefix_k.dim() not in (3, 4):
        raise ValueError(f"{kn}: expected a 3-D (P, Hkv, D) or 4-D (G, P, Hkv, D) tensor, got shape "
                         f"{tuple(prefix_k.shape)}")
    k_scale, v_scale = checks.kv_cache(prefix_k, prefix_v, q, k_scale, v_scale, True, (kn, vn))
    if kv_dtype is not None and prefix_k.dtype != kv_dtype:
        raise TypeError(f"{kn}: expected dtype {kv_dtype} (as {kv_name}), got {prefix_k.dtype}")
    if tuple(prefix_v.shape) != tuple(prefix_k.shape):
        raise ValueError(f"{vn}: expected shape {tuple(prefix_k.shape)} (as {kn}), got {tuple(prefix_v.shape)}")
    B, Hq, D = q.shape[0] if batch is None else batch, q.shape[-2], q.shape[-1]
    if prefix_k.shape[-1] != D:
        raise ValueError(f"{kn}: expected head dim {D} (as q), got {prefix_k.shape[-1]}")
    Hkv = prefix_k.shape[-2]
    if Hkv == 0:
        raise ValueError(f"{kn}: expected at least one kv head, got shape {tuple(prefix_k.shape)}")
    if Hq % Hkv != 0:
        raise ValueError(f"q: expected a number of heads that is a multiple of {kn}'s {Hkv} kv heads, got {Hq}")
    checks.check_unit_stride(kn, prefix_k)
    checks.check_unit_stride(vn, prefix_v)
    if block_table is not None:
        G, P = block_table.shape[0], block_table.shape[1] * prefix_k.shape[1]
        if G == 0:
            raise ValueError(f"{tn}: expected at least one prefix (row), got shape {tuple(block_table.shape)}")
    else:
        G = 1 if prefix_k.dim() == 3 else prefix_k.shape[0]
        P = prefix_k.shape[-3]
        if G == 0:
            raise ValueError(f"{kn}: expected at least one prefix, got shape {tuple(prefix_k.shape)}")
    owner = tn if block_table is not None else kn  # the argument whose first dimension counts the prefixes
    if prefix_lens is not None:
        checks.check_index(ln, prefix_lens, 1, q.device)
        if prefix_lens.shape[0] != G:
            raise ValueError(f"{ln}: expected shape ({G},) (one length per prefix of {owner}), got "
                             f"{tuple(prefix_lens.shape)}")
    if prefix_ids is None:
        if G > 1:
            raise ValueError(f"{idn}: expected a ({B},) int32 tensor naming each sample's prefix when {owner} holds "
                             f"{G} prefixes, got None")
    else:
        checks.check_index(idn, prefix_ids, 1, q.device)
        if prefix_ids.shape[0] != B:
            what = "batch size of q" if batch is None else "samples of cu_seqlens_q"
            raise ValueError(f"{idn}: expected shape ({B},) ({what}), got {tuple(prefix_ids.shape)}")
    max_group_size = checks.max_group_size(max_group_size)
    validate = checks.value_checks(validate, prefix_lens, prefix_ids, block_table)
    if validate and prefix_lens is not None and G:
        lo, hi = int(prefix_lens.min()), int(prefix_lens.max())
        if lo < 0:
            raise ValueError(f"{ln}: expected lengths >= 0, got a minimum of {lo}")
        if hi > P:
            what = f"{tn} pages x page size" if block_table is not None else f"{kn} capacity"
            raise ValueError(f"{ln}: expected lengths <= {P} ({what}), got a maximum of {hi}")
    if validate and block_table is not None and block_table.numel():
        page = prefix_k.shape[1]
        used = (prefix_lens.long() + page - 1) // page if prefix_lens is not None else \
            torch.full((G,), block_table.shape[1], dtype=torch.long, device=q.device)
        checks.pages_in_use(tn, block_table, 0, used, prefix_k.shape[0])
    if validate and prefix_ids is not None and B:
        lo, hi = int(prefix_ids.min()), int(prefix_ids.max())
        if lo < 0 or hi >= G:
            raise ValueError(f"{idn}: expected prefix indices in [0, {G}), got indices in [{lo}, {hi}]")
        if max_group_size > 0:
            most = int(torch.bincount(prefix_ids.long(), minlength=G).max())
            if most > max_group_size:
                raise ValueError(f"max_group_size: expected >= the largest number of samples per prefix ({most}), "
                                 f"got {max_group_size}")
    return Hkv, k_scale, v_scale


def _pass_op():
    """The bifurcated pass: its custom op while compiling, else the implementation."""
    return _bifurcated_op if torch.compiler.is_compiling() else _bifurcated_impl


def _longest(levels, k_cache, block_table) -> int:
    """The most keys a sequence can have: every level's capacity and the own cache's (``levels``: ``(k, v, lens,
    ids, block_table)`` each)."""
    longest = sum(segments(k, pages)[1] for k, _, _, _, pages in levels)
    return longest if k_cache is None else longest + _capacity(k_cache, block_table)


def _window(window_left, longest: int) -> int:
    """``window_left`` (``checks.window_left``'s, by the op on entry), or -1 where the window holds every key a
    sequence can have (``longest``: :func:`_longest`)."""
    return -1 if window_left >= longest - 1 else window_left


def _shared_tokens(levels, batch: int, device) -> torch.Tensor:
    """``(B,)`` int64: the keys of every level before each sample's own tokens, ``lens[ids[b]]`` of each level summed
    (a level's capacity where it has no lengths; ids not checked are clamped to its segments)."""
    total = torch.zeros(batch, dtype=torch.long, device=device)
    for k, _, lens, ids, pages in levels:
        G, P = segments(k, pages)
        seg = lens.long() if lens is not None else torch.full((G,), P, dtype=torch.long, device=device)
        total += seg[ids.long().clamp(0, G - 1)] if ids is not None else seg[0]
    return total


def _append(q, levels, k_cache, v_cache, k, v, cache_seqlens, block_table, validate, per_token,
            rotary_cos, rotary_sin, rotary_interleaved):
    """A shared-prefix op's KV append (``ops/kv_append.append_kv``): the new own tokens written at
    ``cache_seqlens``, and with rotary tables they and ``q`` rotated at their positions in the whole sequence, the
    shared levels' keys before them (the query tokens at their own where ``per_token``). Returns ``q``, rotated (a
    new tensor) with the tables."""
    rotary = check_rotary(rotary_cos, rotary_sin, rotary_interleaved, q, k, k_cache, per_token)
    rotary_lens = None if rotary is None else cache_seqlens + _shared_tokens(levels, q.shape[0], q.device)
    return append_kv(k_cache, v_cache, k, v, cache_seqlens, block_table, validate, q, rotary, rotary_lens)


def _token_states(q, levels, k_cache, v_cache, cache_seqlens, block_table, scale, max_group_size, num_programs,
                  softcap, k_scale, v_scale, causal, cu_seqlens_q=None, max_seqlen_q=0, sinks=None):
    """``(out, lse)`` of ``q (B, Lq, Hq, D)``, ``Lq`` query tokens a sample, or of a packed ``q (total_q, Hq, D)``
    (``cu_seqlens_q``, up to ``max_seqlen_q`` tokens a sample), past validation: every token attends every shared
    key, so each level is one bifurcated pass over the query rows (a sample's tokens read the segment as that many
    samples would, stacked with the rest in the rows of its products); the own tokens are one :func:`leanattn.decode`
    call with ``causal``; one :func:`leanattn.merge_states` merges the states, as vLLM's and FlashInfer's cascade
    attention do, the ``sinks (Hq,)`` folded in last. ``levels``: ``(k, v, lens, ids, block_table)`` each; a level
    with a block table is in a page pool."""
    if q.numel() == 0:
        return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)
    rows, rows_of, per = query_rows(q, cu_seqlens_q, max_seqlen_q)
    sample = None if rows_of is None else rows_of[0]

    def expand(ids):  # each row reads its sample's segment (row r of sample r // per unless packed)
        return ids[sample] if sample is not None else ids if per == 1 else ids.repeat_interleave(per)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    op = _pass_op()
    outs, lses = [], []
    for k, v, lens, ids, pages in levels:
        o, lse = op(rows, k, v, None, None, None, None, lens, None if ids is None else expand(ids), scale,
                    max_group_size * per, num_programs, 0, 0, softcap, k_scale, v_scale, None, 0, pages)
        outs.append(o)
        lses.append(lse)
    if k_cache is not None:
        packed = {} if cu_seqlens_q is None else dict(cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q)
        o, lse = decode(q, k_cache, v_cache, cache_seqlens, block_table, scale, True, num_programs=num_programs,
                        validate=False, k_scale=k_scale, v_scale=v_scale, softcap=softcap, causal=causal, **packed)
        outs.append(o.view(rows.shape))
        lses.append(lse.view(rows.shape[:-1]))
    out, lse = merge_state_list(outs, lses, sinks)
    return out.view(q.shape), lse.view(q.shape[:-1])


def bifurcated_decode(
    q: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    k_cache: Optional[torch.Tensor],
    v_cache: Optional[torch.Tensor],
    cache_seqlens: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    prefix_lens: Optional[torch.Tensor] = None,
    prefix_ids: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    *,
    softcap: float = 0.0,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    max_group_size: int = 0,
    num_programs: int = 0,
    validate: Optional[bool] = None,
    causal: bool = False,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    window_left: int = -1,
    sinks: Optional[torch.Tensor] = None,
    prefix_block_table: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    rotary_interleaved: bool = False,
):
    """Decode attention for samples that share a prompt: the shared prefix is read once per prompt.

    Exact softmax attention of each sample's query over its prompt's prefix followed by its own
    tokens, ``concat(prefix[prefix_ids[b], :prefix_lens[g]], own[b, :cache_seqlens[b]])``. Query
    head ``h`` reads kv head ``h // (Hq // Hkv)``.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, Hq, D)``, one query token per sample; float16, bfloat16 (or float32), ``D`` in
        {64, 128, 256}. Or ``(B, Lq, Hq, D)``: ``Lq`` query tokens a sample (speculative decoding of parallel
        samples), the last ``Lq`` of its own tokens (their keys already in ``k_cache``), as in
        :func:`leanattn.decode`; each attends the whole prefix and, with ``causal``, its own tokens up to its position.
    prefix_k, prefix_v : torch.Tensor
        One prefix shared by every sample, ``(P, Hkv, D)``, or ``G`` prefixes ``(G, P, Hkv, D)``;
        ``q``'s dtype, or float8 (``torch.float8_e4m3fn``, ``torch.float8_e5m2``) as the own cache's dtype; ``q``'s
        device, unit stride on ``D``. ``P = 0`` (no prefix) is allowed.
    k_cache, v_cache : torch.Tensor or None
        Each sample's own tokens, exactly as in :func:`leanattn.decode`: contiguous
        ``(B, N, Hkv, D)`` or paged ``(num_pages, page_size, Hkv, D)`` with ``block_table``, in the
        prefix's dtype. Both None: no own tokens (attention over the prefix alone).
    cache_seqlens : torch.Tensor, optional
        ``(B,)`` int32 own tokens per sample (default: the capacity); zero-length allowed. None
        without an own cache.
    block_table : torch.Tensor, optional
        ``(B, max_pages)`` int32 page table of the own cache. None without an own cache.
    prefix_lens : torch.Tensor, optional
        ``(G,)`` int32 tokens of each prefix (default ``P``); zero allowed.
    prefix_ids : torch.Tensor, optional
        ``(B,)`` int32, the prefix each sample reads; required when ``G > 1``. Prompts may have
        any number of samples (none included), in any order in the batch.
    softmax_scale : float, optional
        Default ``1 / sqrt(D)``.
    return_lse : bool
        Also return the natural-log sum of exponentiated scores over prefix and own tokens.
    softcap : float, keyword-only
        Logit soft-capping, as :func:`leanattn.decode`'s (Gemma-2): scores ``s`` become
        ``softcap * tanh(s / softcap)`` before the softmax, over prefix and own tokens alike; 0 (default) is none.
    k_scale, v_scale : float, keyword-only
        Dequantisation scales of float8 caches (a stored value times its scale is the value), one pair for prefix
        and own tokens, as :func:`leanattn.decode`'s; 1.0 (and only 1.0) for caches in ``q``'s dtype.
    max_group_size : int, keyword-only
        Upper bound on the samples of one prompt (multi-prompt only). 0: counted on the host
        (one device sync), or ``B`` while a CUDA graph is being captured. Pass it to capture
        graphs of multi-prompt batches without padding every prompt to the whole batch.
    num_programs : int, keyword-only
        Persistent programs (0 = SMs x measured occupancy, rounded down to whole teams).
    validate : bool, optional, keyword-only
        Check length, id and page values (default: only when that needs no device sync).
    causal : bool, keyword-only
        With ``Lq > 1`` query tokens: each attends its own tokens only up to its position (the prefix whole), as
        :func:`leanattn.decode`'s ``causal``. False (the default): every own token.
    cu_seqlens_q, max_seqlen_q : keyword-only
        A packed query ``q (total_q, Hq, D)`` of a different number of tokens a sample (sample ``b``'s rows
        ``[cu_seqlens_q[b], cu_seqlens_q[b + 1])``, the last of its own tokens), as :func:`leanattn.decode`'s.
    window_left : int, keyword-only
        Sliding-window attention (Mistral, Gemma-2/3 local layers), as :func:`leanattn.decode`'s: a query token at
        position ``pos`` of its sample's sequence, prefix then own tokens (``prefix_len + cache_seqlens[b] - Lq +
        s``; without an own cache the last ``Lq`` prefix positions), attends keys ``[pos - window_left, pos]`` (with
        ``causal=False``, the own keys after it too; a token whose position lies in the prefix, without an own cache
        or before its sample's own tokens, the prefix keys after it too, as every token attends the whole prefix
        without a window). -1 (the default): every key. The part of each prompt's
        window that all its samples attend is read once for all of them, where it lies; what only some samples
        attend (their own lengths differ) is read per sample; the own tokens are one windowed
        :func:`leanattn.decode`, or, with one query token a sample and a window that holds every own token
        (``window_left`` at least the own capacity less one), read in the same launch as the prefix
        (``ops/bifurcated_window.py``).
    sinks : torch.Tensor, optional, keyword-only
        ``(Hq,)`` attention sinks (gpt-oss), as :func:`leanattn.decode`'s: merged once into the final state, after
        the prefix, own and level states, by the launch that merges those (a launch of their own on the paths whose
        kernels merge in place: one sample a prompt, the in-kernel merge).
    prefix_block_table : torch.Tensor, optional, keyword-only
        ``(G, max_pages)`` int32: the prefixes live in a page pool, as a serving engine keeps them (the pool may be
        ``k_cache``/``v_cache`` themselves): ``prefix_k/v`` are ``(num_pages, page_size, Hkv, D)`` and prefix
        ``g`` is the pages ``prefix_block_table[g]`` in order, ``prefix_lens[g]`` tokens of them (default: all);
        ``prefix_ids`` as above. The prefix programs read each prompt's pages where they lie, as
        :func:`leanattn.decode` reads a paged cache, each page once per prompt, kv head and row block; with one
        query token a sample, in the same launch as the own tokens where no window or one holding every own token
        is given (otherwise the own tokens are a :func:`leanattn.decode` call apart, as for dense prefixes).
        Nothing is copied, except under a window when the K and V pools are laid out differently: one is then
        copied, so that both share one token stride.
    out, lse : torch.Tensor, optional, keyword-only
        The caller's buffers for the results, as in :func:`leanattn.decode` (FlashInfer's ``out=`` and ``lse=``):
        ``q``'s shape and dtype, and its shape less ``D`` in float32, contiguous, sharing no memory with the inputs
        or each other; ``lse`` is written whether or not ``return_lse`` asks for it. An eager call of one query token
        a sample, without a window, has its launches write them (with sinks that its kernels do not fold in, the
        launch that merges the sinks writes new tensors, then copied in); the other forms, and calls under
        ``torch.compile``, compute their results, then copy them in.
    k, v : torch.Tensor, optional, keyword-only
        New own keys and values ``(B, T, Hkv, D)`` written into ``k_cache``/``v_cache`` at ``cache_seqlens`` before
        attending, as :func:`leanattn.decode`'s ``k`` and ``v`` (flash-attn's ``flash_attn_with_kvcache(k=, v=)``):
        the query attends ``cache_seqlens + T`` own tokens; the lengths are not updated. Not with ``cu_seqlens_q``.
    rotary_cos, rotary_sin, rotary_interleaved : keyword-only
        Rotary embedding of the new keys ``k`` and of ``q`` before the keys are written and attended, as
        :func:`leanattn.decode`'s (flash-attn's ``flash_attn_with_kvcache(rotary_cos=, rotary_sin=)``), at positions
        in the whole sequence: the new token ``t`` of sample ``b`` at ``prefix_len + cache_seqlens[b] + t``, where
        ``prefix_len`` is its prefix's length (``prefix_lens[prefix_ids[b]]``, else ``P``; the keys of the prefix
        are taken as already rotated). The query tokens turn at their own positions when ``causal`` or under a
        window shorter than prefix and own capacity together, else all at the first new token's, as flash-attn's
        rule. Needs ``k`` and ``v``, and caches in ``q``'s dtype.

    Returns
    -------
    out : torch.Tensor
        ``q``'s shape, ``(B, Hq, D)``, ``(B, Lq, Hq, D)`` or packed ``(total_q, Hq, D)``, in ``q.dtype`` (the ``out``
        given, if one was).
    lse : torch.Tensor
        ``q``'s shape without ``D``, float32, natural log (the ``lse`` given, if one was); only with
        ``return_lse=True``.

    Notes
    -----
    Inference only, like :func:`leanattn.decode`: no backward, no gradient in the output.

    Two launches (``kernels/bifurcated_states.py``): for each prompt and kv head, the query rows of
    all its samples are stacked (``samples x group`` rows) and every prefix tile is multiplied
    against all of them at once, over prefix splits; each sample's own tokens are attended like
    :func:`leanattn.decode`'s split schedule; the two kinds of programs share one launch, their
    split counts sized so that together they fill every SM, and write partial states that one
    :func:`leanattn.merge_states` launch merges. With at most one sample per prompt and an own cache
    there is nothing to share and the launch is :func:`leanattn.decode`'s stream-K schedule over the concatenation,
    without building it (``kernels/bifurcated_concat.py``); for one sample whose cut is even pieces of each row,
    as decode's one sequence, those pieces and a merge launch. On Hopper, with 256 stacked rows per kv head or more
    (or MHA with 16 samples), the prefix pass runs in Gluon (``kernels/bifurcated_prefix_gluon.py``) with the own
    tokens beside it (``ops/bifurcated_overlap.py``). A paged prefix always takes the first form (its prefix
    programs read pages; the other kernels read dense prefixes). Over float8 caches every path computes its products
    in fp16 (the Gluon prefix converts each tile once a program). Output is bitwise deterministic for fixed inputs
    and launch configuration.
    Registered as the custom op ``torch.ops.leanattn.bifurcated_decode``
    (``torch.compile(fullgraph=True)``, CUDA graphs: lengths, prefix ids and prefix lengths may
    change between replays; with several prompts pass ``max_group_size`` and keep every prompt
    within it, which is checked only when ``validate`` is on).

    With ``Lq > 1`` query tokens a sample the prefix pass takes the ``B * Lq`` token rows as samples (each prefix
    tile still read once per prompt, multiplied against all of them), the own tokens are one
    :func:`leanattn.decode` call, and one :func:`leanattn.merge_states` launch merges the two (vLLM's and
    FlashInfer's cascade form); the one-token call's fused launch does not take several tokens.

    Examples
    --------
    >>> # 16 samples of one 8k-token prompt, 256 own tokens each
    >>> pk = torch.randn(8192, 8, 128, dtype=torch.bfloat16, device="cuda"); pv = torch.randn_like(pk)
    >>> k = torch.randn(16, 256, 8, 128, dtype=torch.bfloat16, device="cuda"); v = torch.randn_like(k)
    >>> q = torch.randn(16, 32, 128, dtype=torch.bfloat16, device="cuda")
    >>> out = leanattn.bifurcated_decode(q, pk, pv, k, v)
    """
    batch, max_q = checks.packed_query(q, cu_seqlens_q, max_seqlen_q, validate)
    num_programs = checks.launch_counts(num_programs)[0]
    window_left = checks.window_left(window_left)
    appended = cache_seqlens  # with new own tokens, the lengths after them: those checked, and those attended
    cache_seqlens, seqlens_name = lengths_after(k, v, q, k_cache, cache_seqlens, cu_seqlens_q)
    scale, k_scale, v_scale = validate_own(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, validate,
                                           k_scale, v_scale, batch, window_left, cu_seqlens_q, max_q, seqlens_name)
    check_sinks(sinks, q.shape[-2], q.device)
    softcap = checks.softcap(softcap)
    Hkv, k_scale, v_scale = validate_prefix(q, prefix_k, prefix_v, prefix_lens, prefix_ids, max_group_size, validate,
                                            kv_dtype=None if k_cache is None else k_cache.dtype, k_scale=k_scale,
                                            v_scale=v_scale, batch=batch, block_table=prefix_block_table)
    if k_cache is not None and Hkv != k_cache.shape[2]:
        raise ValueError(f"prefix_k: expected {k_cache.shape[2]} kv heads (as k_cache), got {Hkv}")
    causal = checks.flag("causal", causal)
    return_lse = checks.flag("return_lse", return_lse)
    out, lse = output_buffers(out, lse, q, (("prefix_k", prefix_k), ("prefix_v", prefix_v), ("k_cache", k_cache),
                                            ("v_cache", v_cache), ("cache_seqlens", appended),
                                            ("block_table", block_table), ("prefix_lens", prefix_lens),
                                            ("prefix_ids", prefix_ids), ("prefix_block_table", prefix_block_table),
                                            ("cu_seqlens_q", cu_seqlens_q), ("sinks", sinks), ("k", k), ("v", v)))
    level = (prefix_k, prefix_v, prefix_lens, prefix_ids, prefix_block_table)
    longest = _longest([level], k_cache, block_table)
    # flash-attn's rotary rule of query positions: causal, or a window shorter than the sequence
    q = _append(q, [level], k_cache, v_cache, k, v, appended, block_table, validate,
                causal or 0 <= window_left < longest, rotary_cos, rotary_sin, rotary_interleaved)
    window_left = _window(window_left, longest)
    if window_left >= 0:
        o, s = window_states(q, [level], k_cache, v_cache, cache_seqlens, block_table, scale, window_left,
                             int(max_group_size), num_programs, softcap, k_scale, v_scale, causal,
                             cu_seqlens_q, max_q, op=_pass_op(), sinks=sinks)
        return finish(o, s, out, lse, return_lse)
    if batch is not None:
        o, s = _token_states(q, [level], k_cache, v_cache, cache_seqlens, block_table, scale, int(max_group_size),
                             num_programs, softcap, k_scale, v_scale, causal, cu_seqlens_q, max_q, sinks)
        return finish(o, s, out, lse, return_lse)
    if q.dim() == 4:
        if q.shape[1] == 1:  # one token: the 3-D call, its outputs seen with the token axis
            res = bifurcated_decode(q[:, 0], prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table,
                                    prefix_lens, prefix_ids, scale, return_lse, softcap=softcap, k_scale=k_scale,
                                    v_scale=v_scale, max_group_size=max_group_size, num_programs=num_programs,
                                    validate=False, prefix_block_table=prefix_block_table, sinks=sinks,
                                    **token_buffers(out, lse))
            return with_token_axis(res, out, lse, return_lse)
        o, s = _token_states(q, [level], k_cache, v_cache, cache_seqlens, block_table, scale, int(max_group_size),
                             num_programs, softcap, k_scale, v_scale, causal, sinks=sinks)
        return finish(o, s, out, lse, return_lse)
    if q.stride(-1) != 1:
        q = q.contiguous()
    args = (q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens, block_table, prefix_lens, prefix_ids, scale,
            int(max_group_size), num_programs, 0, 0, softcap, k_scale, v_scale, None, 0, prefix_block_table,
            sinks)
    if torch.compiler.is_compiling():
        return finish(*_bifurcated_op(*args), out, lse, return_lse)
    return finish(*_bifurcated_impl(*args, need_lse=return_lse, out=out, lse=lse), out, lse, return_lse)


def cascade_decode(
    q: torch.Tensor,
    levels: Sequence,
    k_cache: Optional[torch.Tensor] = None,
    v_cache: Optional[torch.Tensor] = None,
    cache_seqlens: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    *,
    softcap: float = 0.0,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    max_group_size: int = 0,
    num_programs: int = 0,
    validate: Optional[bool] = None,
    causal: bool = False,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    window_left: int = -1,
    sinks: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    rotary_interleaved: bool = False,
):
    """Decode over nested shared KV: e.g. a system prompt for every sample, a document per group,
    then each sample's own tokens.

    Exact attention of sample ``b`` over ``concat(level_0[ids_0[b]], level_1[ids_1[b]], ..., own[b])``.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, Hq, D)``, or ``(B, Lq, Hq, D)``: ``Lq`` query tokens a sample, as in :func:`bifurcated_decode`.
    levels : sequence of tuples
        ``(k, v)``, ``(k, v, lens, ids)`` or ``(k, v, lens, ids, block_table)`` per level, outermost first. ``k, v``
        are ``(P, Hkv, D)`` (one segment read by every sample) or ``(G, P, Hkv, D)`` with ``ids (B,)`` int32 naming
        each sample's segment and optional ``lens (G,)`` int32, as ``prefix_*`` of :func:`bifurcated_decode`. With a
        ``block_table (G, max_pages)`` int32 the level's segments are pages of the pools ``k, v (num_pages,
        page_size, Hkv, D)``, as ``prefix_block_table`` of :func:`bifurcated_decode` (``lens`` and ``ids`` may be
        None).
    k_cache, v_cache, cache_seqlens, block_table : optional
        Each sample's own tokens, as in :func:`leanattn.decode`; may be omitted (``None``).
    max_group_size : int, keyword-only
        A bound on the samples that read one segment, at every level with ``ids`` (as in
        :func:`bifurcated_decode`): with it no level counts its groups on the host, so a call on CUDA
        makes no device sync and a captured graph keeps the rows it needs. Default 0: counted.
    softmax_scale, return_lse, softcap, k_scale, v_scale, num_programs, validate, causal, cu_seqlens_q, max_seqlen_q
        As in :func:`bifurcated_decode`: every level and the own cache in one dtype, ``q``'s or a float8 one, with
        one pair of scales; ``causal`` masks the own tokens after each query token's position (every level whole).
    window_left : int, keyword-only
        A sliding window, as in :func:`bifurcated_decode`, over the concatenation of the levels and the own tokens.
    sinks : torch.Tensor, optional, keyword-only
        ``(Hq,)`` attention sinks (gpt-oss), as :func:`leanattn.decode`'s: merged once into the final state, after
        the prefix, own and level states, by the launch that merges those (a launch of their own on the paths whose
        kernels merge in place: one sample a prompt, the in-kernel merge).
    out, lse : torch.Tensor, optional, keyword-only
        The caller's buffers for the results, as in :func:`leanattn.decode` (FlashInfer's ``out=`` and ``lse=``):
        ``q``'s shape and dtype, and its shape less ``D`` in float32, contiguous, sharing no memory with the inputs
        or each other; ``lse`` is written whether or not ``return_lse`` asks for it. The merged state is computed,
        then copied in.
    k, v : torch.Tensor, optional, keyword-only
        New own keys and values ``(B, T, Hkv, D)`` written into ``k_cache``/``v_cache`` at ``cache_seqlens`` before
        attending, as :func:`leanattn.decode`'s ``k`` and ``v`` (flash-attn's ``flash_attn_with_kvcache(k=, v=)``):
        the query attends ``cache_seqlens + T`` own tokens; the lengths are not updated. Not with ``cu_seqlens_q``.
    rotary_cos, rotary_sin, rotary_interleaved : keyword-only
        Rotary embedding of the new keys and the query, as :func:`bifurcated_decode`'s: positions count every
        level's tokens before the own ones (the sum over levels of ``lens[ids[b]]``, a level's capacity where it
        has no ``lens``).

    Notes
    -----
    Inference only, like :func:`leanattn.decode`: no backward, no gradient in the output.

    Every level is one pass of the bifurcated kernel (each segment read once, its readers' queries
    stacked into the rows); the innermost level and the own tokens share one launch and are
    merged in it (under a window, the innermost level that holds keys, where the window holds every own token);
    the level states are then merged with :func:`leanattn.merge_states` (the merge is associative, so the
    nesting order does not matter). Each of ``L`` shared levels costs a pass (two launches on most paths:
    the pass and the merge of its pieces), and one launch merges the levels. A paged level is the
    same pass over its pages. With several query tokens each level is a bifurcated pass, the own tokens one more
    decode, then the merge.
    """
    batch, max_q = checks.packed_query(q, cu_seqlens_q, max_seqlen_q, validate)
    num_programs = checks.launch_counts(num_programs)[0]
    window_left = checks.window_left(window_left)
    appended = cache_seqlens  # with new own tokens, the lengths after them: those checked, and those attended
    cache_seqlens, seqlens_name = lengths_after(k, v, q, k_cache, cache_seqlens, cu_seqlens_q)
    scale, k_scale, v_scale = validate_own(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, validate,
                                           k_scale, v_scale, batch, window_left, cu_seqlens_q, max_q, seqlens_name)
    check_sinks(sinks, q.shape[-2], q.device)
    softcap = checks.softcap(softcap)
    max_group_size = checks.max_group_size(max_group_size)
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"levels: expected a list of (k, v[, lens, ids[, block_table]]) tuples, got "
                        f"{type(levels).__name__}")
    if len(levels) == 0 and k_cache is None:
        raise ValueError("levels: expected at least one level or an own cache (k_cache), got neither")
    causal = checks.flag("causal", causal)
    return_lse = checks.flag("return_lse", return_lse)
    D = q.shape[-1]
    parsed = []
    for i, level in enumerate(levels):
        if not isinstance(level, (tuple, list)) or len(level) not in (2, 4, 5):
            raise ValueError(f"levels[{i}]: expected a (k, v), (k, v, lens, ids) or (k, v, lens, ids, block_table) "
                             f"tuple, got {level!r:.80}")
        lk, lv, lens, ids, pages = (tuple(level) + (None, None, None))[:5]
        kv_dtype, kv_name = ((k_cache.dtype, "k_cache") if k_cache is not None else
                             (parsed[0][0].dtype, "levels[0]_k") if parsed else (None, None))
        _, k_scale, v_scale = validate_prefix(q, lk, lv, lens, ids, max_group_size, validate, f"levels[{i}]",
                                              kv_dtype, kv_name, k_scale, v_scale, batch, pages)
        parsed.append((lk, lv, lens, ids, pages))
    # every level's kv heads are the own cache's, else the first level's
    Hkv, as_name = (k_cache.shape[2], "k_cache") if k_cache is not None else (parsed[0][0].shape[-2], "levels[0]")
    for i, (lk, *_rest) in enumerate(parsed):
        if lk.shape[-2] != Hkv:
            raise ValueError(f"levels[{i}]: expected {Hkv} kv heads (as {as_name}), got {lk.shape[-2]}")
    inputs = [(f"levels[{i}][{j}]", t) for i, level in enumerate(parsed) for j, t in enumerate(level)]
    out, lse = output_buffers(out, lse, q, inputs + [("k_cache", k_cache), ("v_cache", v_cache),
                                                     ("cache_seqlens", appended), ("block_table", block_table),
                                                     ("cu_seqlens_q", cu_seqlens_q), ("sinks", sinks), ("k", k),
                                                     ("v", v)])
    longest = _longest(parsed, k_cache, block_table)
    q = _append(q, parsed, k_cache, v_cache, k, v, appended, block_table, validate,
                causal or 0 <= window_left < longest, rotary_cos, rotary_sin, rotary_interleaved)
    window_left = _window(window_left, longest)
    if window_left >= 0:
        o, s = window_states(q, parsed, k_cache, v_cache, cache_seqlens, block_table, scale, window_left,
                             max_group_size, num_programs, softcap, k_scale, v_scale, causal, cu_seqlens_q,
                             max_q, op=_pass_op(), sinks=sinks)
        return finish(o, s, out, lse, return_lse)
    if batch is not None:
        o, s = _token_states(q, parsed, k_cache, v_cache, cache_seqlens, block_table, scale, max_group_size,
                             num_programs, softcap, k_scale, v_scale, causal, cu_seqlens_q, max_q, sinks)
        return finish(o, s, out, lse, return_lse)
    if q.dim() == 4:
        if q.shape[1] == 1:  # one token: the 3-D call, its outputs seen with the token axis
            res = cascade_decode(q[:, 0], levels, k_cache, v_cache, cache_seqlens, block_table, scale, return_lse,
                                 softcap=softcap, k_scale=k_scale, v_scale=v_scale, max_group_size=max_group_size,
                                 num_programs=num_programs, validate=False, sinks=sinks,
                                 **token_buffers(out, lse))
            return with_token_axis(res, out, lse, return_lse)
        o, s = _token_states(q, parsed, k_cache, v_cache, cache_seqlens, block_table, scale, max_group_size,
                             num_programs, softcap, k_scale, v_scale, causal, sinks=sinks)
        return finish(o, s, out, lse, return_lse)
    if q.stride(-1) != 1:
        q = q.contiguous()
    op = _bifurcated_op if torch.compiler.is_compiling() else _bifurcated_impl
    states = []
    # one pass folds the sinks into its own merge; several leave them to the merge of the levels
    pass_sinks = sinks if len(parsed) <= 1 else None
    for i, (lk, lv, lens, ids, pages) in enumerate(parsed):
        fuse_own = i == len(parsed) - 1 and k_cache is not None
        states.append(op(q, lk, lv, k_cache if fuse_own else None, v_cache if fuse_own else None,
                         cache_seqlens if fuse_own else None, block_table if fuse_own else None, lens, ids,
                         scale, max_group_size, num_programs, 0, 0, softcap, k_scale, v_scale, None, 0, pages,
                         pass_sinks))
    if not parsed:
        empty = q.new_zeros((0, Hkv, D), dtype=k_cache.dtype)
        states.append(op(q, empty, empty, k_cache, v_cache, cache_seqlens, block_table, None, None, scale, 0,
                         num_programs, 0, 0, softcap, k_scale, v_scale, None, 0, None, pass_sinks))
    o, s = merge_state_list([st[0] for st in states], [st[1] for st in states],
                            None if pass_sinks is not None else sinks)
    return finish(o, s, out, lse, return_lse)
