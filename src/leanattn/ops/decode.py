"""``leanattn.decode``: attention of the new token (or the last few tokens) of each sequence over a KV cache."""
from __future__ import annotations

from typing import Literal, Optional, overload

import torch
import triton

from .. import checks, runtime
from ..kernels.decode import lean_decode_kernel, split_decode_kernel
from ..kernels.piece_merge import merge_meta
from ..merges.sinks import check_sinks, with_sinks
from ..schedules.fixed_split import num_splits_heuristic
from ..schedules import stream_k
from ..schedules.stream_k import programs_used_py, tiles_per_sequence, window_tokens
from .decode_config import across_rows, decode_config, length_block, load_path, merge_in_launch
from .kv_append import append_kv, lengths_after
from .rotary import check_rotary
from .states_merge import states_and_merge
from .stream_k_launch import LAUNCH, StreamKLaunch, piece_workspaces, with_search
from .token_pages import cache_rows_as_pages, check_leftpad

__all__ = ["decode"]

LOG2E = 1.4426950408889634


def _capacity(k_cache: torch.Tensor, block_table: Optional[torch.Tensor]) -> int:
    return k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]


def score_scales(scale: float, k_scale: float = 1.0, softcap: float = 0.0) -> tuple[float, float]:
    """``(qk_scale, softcap)`` as the kernels take them (``kernels/attend.softmax_step``): the scores' factor in
    log2 units, or with a soft cap ``softcap > 0`` the factor inside the tanh (natural units) and the cap in log2
    units. A float8 cache's K scale ``k_scale`` is folded into the factor."""
    if softcap > 0:
        return scale * k_scale / softcap, softcap * LOG2E
    return scale * k_scale * LOG2E, 0.0


def fp8_capable(name: str, dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``ValueError`` naming ``name`` for a float8 cache on a GPU older than sm_89: Triton converts float8 in
    hardware from sm_89 (Ada, Hopper) on."""
    cc = runtime.capability(device)
    if dtype in checks.FP8_DTYPES and cc is not None and cc < (8, 9):
        raise ValueError(f"{name}: expected a GPU of compute capability 8.9 or later for a {dtype} "
                         f"cache, got {cc[0]}.{cc[1]}")


def rows_window(window_left: int, qlen: int) -> int:
    """The keys a row of ``qlen`` query tokens attends before its last key: the union of its tokens' windows of
    ``window_left`` keys each (-1: no window). A query of no token keeps its window (-1 would be none)."""
    return window_left + max(qlen, 1) - 1 if window_left >= 0 else -1


class _Plan:
    """Everything about a launch that depends only on shapes, strides, dtypes and options.

    Built once per signature and cached, so that a decode step costs a dictionary lookup and one
    or two kernel launches on the host (decode kernels run for tens of microseconds; a Python
    launch path of the same order would dominate).
    """

    def __init__(self, q, k_cache, v_cache, cache_seqlens, block_table, scale, schedule, workers, block_n,
                 num_stages=0, after_prior=False, merged=True, k_scale=1.0, v_scale=1.0, softcap=0.0,
                 window_left=-1, causal=False, max_q=0, alibi_stride=-1, sink_dtype=None, rope=None, leftpad=False):
        Hq, D = q.shape[-2], q.shape[-1]
        # a 4-D query holds qlen tokens a sequence, stacked with the group's heads in the rows (kernels/query_rows);
        # max_q > 0: a packed (total_q, Hq, D) query of up to max_q tokens a sequence (kernels/query_rows.packed_slots)
        varlen = max_q > 0
        qlen = max_q if varlen else q.shape[1] if q.dim() == 4 else 1
        # (packed: the sequences are the cache's)
        B = (k_cache.shape[0] if block_table is None else block_table.shape[0]) if varlen else q.shape[0]
        rows_q = q.shape[0] if varlen else B * qlen  # query tokens of the batch, the rows of out and lse
        device = q.device
        group = Hq // k_cache.shape[2]
        window_left = rows_window(window_left, qlen)
        paged = block_table is not None
        fp8_capable("k_cache", k_cache.dtype, device)
        self.cap = cap = _capacity(k_cache, block_table)
        # batch_invariant: the split schedule with splits of a fixed size and a launch configuration that no other
        # sequence's length, the batch or the capacity chooses
        invariant = schedule == "batch_invariant"
        # a sliding window bounds every row's work, whatever the capacity: the launch is sized for the window
        cfg = decode_config(D, group * qlen, device, block_n or None, k_cache.shape[1] if paged else 0,
                            0 if invariant else B * k_cache.shape[2],
                            window_tokens(cap, 1, window_left), num_stages,
                            k_cache.dtype in checks.QUANT_DTYPES and q.dtype != torch.float32)
        # every row the same length, known on the host: no lengths, no padding
        uniform = cache_seqlens is None and not leftpad
        # the most tiles a row can have: exact where every sequence fills the cache, else the window's bound
        row_tiles = (int(tiles_per_sequence([cap], cfg.block_n, window_left)[0]) if uniform
                     else max(triton.cdiv(window_tokens(cap, cfg.block_n, window_left), cfg.block_n), 1))
        window = max(window_left, 0)
        self.dummy_i32 = runtime.workspace("dummy_i32", device, (1, 1), torch.int32, zero=True)
        self.sink_dtype = sink_dtype
        # the LSE of calls that do not return it: written, never read (launches sharing it may overwrite it)
        self.lse_sink = runtime.workspace("decode_lse_sink", device, q.shape[:-1], torch.float32)
        self.schedule = schedule = "split" if invariant else schedule
        self.invariant = invariant
        bt_stride = block_table.stride(0) if paged else 0
        self.meta = dict(
            GROUP=group, N_HB=cfg.n_hb, ROWS=k_cache.shape[2] * cfg.n_hb,
            HEAD_DIM=D, BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
            PAGE_SIZE=k_cache.shape[1] if paged else 0, HAS_SEQLENS=cache_seqlens is not None,
            LOAD=load_path(cfg.load, k_cache, v_cache, paged),
            # bf16 tl.dot is broken in the interpreter: upcast there
            UPCAST=runtime.interpreting() and q.dtype == torch.bfloat16,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SOFTCAP=softcap > 0, WINDOW=window_left >= 0,
            QLEN=qlen, CAUSAL=causal and qlen > 1, VARLEN=varlen, ALIBI=alibi_stride >= 0, SINK=sink_dtype is not None,
            # MLA (ops/mla.py): the rotary query and key parts, and values that are the keys (the latent cache; with
            # LEANATTN_MLA_SHARED_V=0 the same rows loaded again as values, for probes)
            ROPE_DIM=0 if rope is None else rope[1].shape[-1],
            V_IS_K=rope is not None and runtime.env_flag("LEANATTN_MLA_SHARED_V") is not False,
            LEFTPAD=leftpad,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        if rope is not None:
            self.meta["LOAD"] = 0  # (the rotary rows are loaded beside the latent ones: tensors of pointers)
        strides = (0 if varlen else q.stride(0), q.stride(-2),
                   k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                   v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
                   qlen * Hq * D, D, qlen * Hq)  # out and lse are allocated contiguous (packed: unread)
        # the token strides of q, out and lse (unread with one token, unless packed)
        token_strides = (q.stride(0) if varlen else q.stride(1) if qlen > 1 else 0, Hq * D, Hq)
        # the optional inputs' strides: ALiBi slopes' between sequences (0: one (Hq,) row for all, or none), then
        # MLA's rotary query's (sequence, head, token) and rotary cache's (sequence or page, token)
        option_strides = (max(alibi_stride, 0),)
        if rope is None:
            option_strides += (0,) * 5
        else:
            q_pe, kpe = rope
            option_strides += (0 if varlen else q_pe.stride(0), q_pe.stride(-2),
                               q_pe.stride(0) if varlen else q_pe.stride(1) if qlen > 1 else 0, kpe.stride(0),
                               kpe.stride(1))
        qk_scale, softcap_log2 = score_scales(scale, k_scale, softcap)
        even = 0 if schedule != "lean" or workers > 0 else even_pieces(B, self.meta["ROWS"], row_tiles, cfg, device,
                                                                         not uniform)
        if even:
            self.schedule = schedule = "split"
            workers = even
        if schedule == "lean":
            sms = 0 if workers > 0 else runtime.num_sms(device)
            # the grid the table allows (the kernel's occupancy, known only once it is compiled, is at least
            # that at D >= 128, where a merge launch can be chosen; benchmarks/offline_resources.py)
            mode = merge_in_launch(device, D, row_tiles, B,
                                   k_cache.shape[2] * cfg.n_hb, workers or sms * cfg.ctas_per_sm, sms)
            self.meta.update(BLOCK_B=length_block(B), MERGE_LAUNCH=mode == LAUNCH, PDL=False,
                             ACROSS_ROWS=across_rows(D, k_cache.element_size()),
                             **merge_meta(cfg.block_h, D, group * qlen))
            # the SM count lets the kernel align ranges with heads (schedules/stream_k.programs_used);
            # 0 keeps a grid the caller chose
            head = strides + (bt_stride, *token_strides, *option_strides, qk_scale, v_scale, softcap_log2, window, B,
                              cap)
            self.tail = with_search(self.meta, head, B, self.meta["ROWS"], workers or sms * cfg.ctas_per_sm, sms)
            grid = self._lean_grid(cfg, q, k_cache, v_cache, workers)
            search_sms = sms
            if sms and uniform:
                # every sequence fills the cache, so the host knows the programs the kernel would use:
                # launch only those (H200, same process: 0.4-1.8 us faster than a grid with idle
                # programs on four short uniform cases; benchmarks/results/decode_probes_H200_2026-12-01.md),
                # and the kernel compiles no search
                grid = programs_used_py([row_tiles] * B, self.meta["ROWS"], grid, sms)
                search_sms = 0
            self.tail = with_search(self.meta, head, B, self.meta["ROWS"], grid, search_sms)
            self.grid = (grid,)
            self.ws = piece_workspaces("decode", device, self.grid[0], cfg.block_h, D, B * self.meta["ROWS"])
            self.launch = StreamKLaunch(lean_decode_kernel, self.grid, self.meta, self.ws + self.tail, mode, self.ws, B,
                                        device, sms)
        else:
            rows = B * self.meta["ROWS"]
            if invariant:
                # splits of INVARIANT_SPLIT_TOKENS from each row's first tile: a longer capacity adds splits past
                # every shorter sequence's tiles, empty states its merge folds in as no change
                chunk = max(1, INVARIANT_SPLIT_TOKENS // cfg.block_n)
                workers = triton.cdiv(row_tiles, chunk)
            elif workers <= 0:
                workers = num_splits_heuristic(rows, 2 * runtime.num_sms(device), row_tiles)
            self.splits = splits = max(1, min(workers, row_tiles))
            if not invariant:
                chunk = triton.cdiv(row_tiles, splits)
            self.grid = (rows, splits)
            part = (rows_q * Hq * D, rows_q * Hq) if splits > 1 else (0, 0)
            self.tail = strides + part + (bt_stride, *token_strides, *option_strides, qk_scale, v_scale, softcap_log2,
                                          window, cap, chunk)
            # the merge waits for the splits as a programmatic dependent launch where there is one
            pdl = splits > 1 and runtime.dependent_launch(device) and not after_prior
            self.meta.update(PDL=pdl, EVEN=bool(even))
            # merged=False: the caller owns and merges the states the split kernel writes (bifurcated overlap path)
            self.partials = self.launch_merge = None
            if splits > 1 and merged:
                *self.partials, self.launch_merge = states_and_merge("split_states", device, splits, rows_q, Hq, D,
                                                                     pdl, sequential=invariant)
        if schedule == "split":
            # launches after the first skip the JIT's per-call argument specialisation (runtime.Launcher)
            self.meta["AFTER_PRIOR"] = after_prior
            if after_prior:
                # beside the launch before it and complete after it: a programmatic dependent launch that lets
                # nothing after it start early
                self.meta["launch_pdl"] = True
                self.arrivals = runtime.workspace("decode_after_prior_arrivals", device, (1,), torch.int32, zero=True)
            else:
                self.arrivals = self.dummy_i32
            self.launch = runtime.Launcher(split_decode_kernel, self.grid, self.meta, (self.arrivals,) + self.tail)

    def describe(self) -> dict:
        """The launch this plan makes: schedule, grid, splits (``split``), how pieces of a row merge (``lean``),
        tiles and warps; what the ``leanattn`` logger records of a new plan."""
        m = self.meta
        facts = dict(schedule=self.schedule, grid=self.grid)
        if m["ROPE_DIM"]:
            facts["mla"] = True
        if self.schedule == "split":
            facts.update(splits=self.splits, merge="launch" if self.launch_merge is not None else "none")
            if self.invariant:
                facts["batch_invariant"] = True
            if m["EVEN"]:  # a lean call whose cut is even pieces of each row (even_pieces)
                facts["even_pieces"] = True
        else:
            facts.update(merge="launch" if m["MERGE_LAUNCH"] else "in kernel")
        facts.update({k.lower(): m[k] for k in ("BLOCK_N", "BLOCK_H", "N_HB", "num_warps", "num_stages")})
        return facts

    def _lean_grid(self, cfg, q, k_cache, v_cache, workers) -> int:
        if workers > 0:
            return workers
        d = self.dummy_i32
        f = runtime.workspace("dummy_f32", q.device, (1,), torch.float32, zero=True)
        # (the stand-ins for ALiBi slopes (float32) and sinks have run's dtypes, so that the launch reuses this compile)
        sk = runtime.workspace("dummy_sink", q.device, (1,), self.sink_dtype, zero=True) if self.sink_dtype \
            else d
        pe = (q, k_cache) if self.meta["ROPE_DIM"] else (d, d)
        args = (q, k_cache, v_cache, q, f, d, d, d, f if self.meta["ALIBI"] else d, sk, *pe, d, f, f, d, d, *self.tail)
        # the in-kernel merge's occupancy: a variant that merges apart is capped to match (StreamKLaunch)
        occ = runtime.kernel_occupancy(lean_decode_kernel, args, dict(self.meta, MERGE_LAUNCH=False), q.device)
        return runtime.num_sms(q.device) * max(1, min(occ, cfg.ctas_per_sm))

    def run(self, q, k_cache, v_cache, cache_seqlens, block_table, out, lse, cu_seqlens_q=None, alibi_slopes=None,
            sinks=None, q_pe=None, kpe_cache=None, cache_leftpad=None):
        sl = self.dummy_i32 if cache_seqlens is None else cache_seqlens
        bt = self.dummy_i32 if block_table is None else block_table
        extras = self.extras(cu_seqlens_q, alibi_slopes, sinks, q_pe, kpe_cache, cache_leftpad)
        if self.schedule == "lean":
            self.launch((q, k_cache, v_cache, out, lse, sl, bt, *extras), out, lse, extras[0])
            return
        if self.splits == 1:
            self.launch(q, k_cache, v_cache, out, lse, sl, bt, *extras)
            return
        o, ls = self.partials
        self.launch(q, k_cache, v_cache, o, ls, sl, bt, *extras)
        self.launch_merge(o, ls, out, lse, ls)  # (no sinks in this merge: split 0 carried them)

    def extras(self, cu_seqlens_q=None, alibi_slopes=None, sinks=None, q_pe=None, kpe_cache=None,
               cache_leftpad=None) -> tuple:
        """The kernels' optional tensors after the block table, a stand-in for each one absent."""
        return tuple(self.dummy_i32 if t is None else t
                     for t in (cu_seqlens_q, alibi_slopes, sinks, q_pe, kpe_cache, cache_leftpad))


def even_pieces(B: int, rows: int, tiles: int, cfg, device: torch.device, has_lens: bool) -> int:
    """Pieces a row of ``schedule="lean"``'s cut where every row is known to have the same length, else 0.

    With one sequence, or without ``cache_seqlens`` and ``cache_leftpad`` (every sequence at capacity), the ``B * rows``
    rows have equal lengths (``tiles`` each: at capacity, or a sliding window's), and where the stream-K cut is even
    pieces of each row (``schedules/stream_k.even_pieces``), ``k`` of them, it is run as ``k`` even pieces of each row's
    real tiles: ``split_decode_kernel``'s grid ``(B * rows, k)`` with ``EVEN`` (pieces differ by at most one tile),
    merged by a second launch in a fixed order. That skips what the persistent kernel spends before its first K/V load
    (every sequence's length, the cut's search, locating its range) and the programs an aligned cut leaves idle: H200,
    one process, read flush, against the persistent kernel with ``cache_seqlens`` (decode probe 49, first run): mha B=1
    4k 24.0 against 25.3 us, 16k 69.9 against 70.8, gqa B=1 128k 128.9 against 131.1, d64 mha 64k 129.5 against 134.1,
    d256 69.5 against 71.2; from 64k tokens a head level. ``LEANATTN_DECODE_EVEN=0`` keeps the persistent kernel (read
    when a plan is made)."""
    if (has_lens and B != 1) or runtime.env_flag("LEANATTN_DECODE_EVEN") is False:
        return 0
    sms = runtime.num_sms(device)
    return stream_k.even_pieces(tiles, B * rows, sms * cfg.ctas_per_sm, sms)


_PLANS = runtime.PlanCache(name="decode")
# environment variables a plan is made from (benchmark sweeps): part of the plan key
_ENV_KNOBS = ("LEANATTN_DECODE_LOAD", "LEANATTN_DECODE_MERGE", "LEANATTN_DECODE_BLOCK_B_MIN", "LEANATTN_DECODE_EVEN",
              "LEANATTN_MLA_SHARED_V")
_ENV = runtime.EnvReader(*_ENV_KNOBS)


# schedule="batch_invariant": the keys of each split (the same for every head dim's tile, a power of two). Against
# "lean" on seven cases (H100, 2026-12-07 22:3x, probe_decode_batch_invariant.py): 2048 geomean 1.028x, 1024 1.038x,
# 4096 1.058x (4096 best on the ragged batches and at B=4, but 1.20x on one GQA sequence of 32k: too few splits)
INVARIANT_SPLIT_TOKENS = 2048


def _decode_impl(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, num_programs,
                 num_splits, block_n, k_scale=1.0, v_scale=1.0, softcap=0.0, window_left=-1, causal=False,
                 cu_seqlens_q=None, max_seqlen_q=0, alibi_slopes=None, sinks=None, cache_leftpad=None, q_pe=None,
                 kpe_cache=None, *, need_lse: bool = True, out=None, lse=None):
    """``decode`` past validation; with ``need_lse=False`` (eager calls that do not return it) the LSE goes
    to the plan's sink, which nobody reads, saving an allocation: 7.2 us of host time per call in one process on
    an H200 machine (33.1 against 40.3 us; decode probe 18); host times move by up to 2x between machines.
    ``q_pe`` and ``kpe_cache``: MLA's rotary parts (``ops/mla.py``), whose ``v_cache`` is ``k_cache``. ``out`` and
    ``lse``: the caller's checked buffers (``checks.output_buffer``), written in place of new tensors.
    ``cache_leftpad``: each sequence's first real token (checked), read by the kernels (``LEFTPAD``)."""
    if schedule == "batch_invariant" and (num_programs or num_splits):
        name = "num_programs" if num_programs else "num_splits"
        raise ValueError(f"{name}: expected 0 with schedule='batch_invariant' (its splits are "
                         f"{INVARIANT_SPLIT_TOKENS} tokens each), got {num_programs or num_splits}")
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lse is None and (need_lse or out.numel() == 0 or _capacity(k_cache, block_table) == 0):
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if _capacity(k_cache, block_table) == 0:
        lse.fill_(float("-inf"))
        # the sinks merged into the empty state as every merge takes them (bounded by 2e38, -inf no sink)
        return (out.zero_(), lse) if sinks is None else with_sinks(out.zero_(), lse, sinks)
    if cache_seqlens is not None and cache_seqlens.stride(0) != 1:
        cache_seqlens = cache_seqlens.contiguous()  # the kernels index the lengths with unit stride
    if cache_leftpad is not None and cache_leftpad.stride(0) != 1:
        cache_leftpad = cache_leftpad.contiguous()
    if cu_seqlens_q is not None and cu_seqlens_q.stride(0) != 1:
        cu_seqlens_q = cu_seqlens_q.contiguous()
    max_q = max_seqlen_q if cu_seqlens_q is not None else 0
    # (the slopes have unit stride on the heads: checks.alibi_slopes)
    alibi_stride = -1 if alibi_slopes is None else alibi_slopes.stride(0) if alibi_slopes.dim() == 2 else 0
    workers = num_programs if schedule == "lean" else num_splits
    # (the cache's dtype too: a float8 cache's need not be q's, and a plan's launchers run the kernel compiled
    # for the dtypes of their first launch)
    key = (q.shape, q.stride(), q.dtype, k_cache.dtype, q.device, k_cache.shape, k_cache.stride(), v_cache.stride(),
           cache_seqlens is None, None if block_table is None else (block_table.shape, block_table.stride()),
           softmax_scale, k_scale, v_scale, softcap, window_left, causal, schedule, workers, block_n, max_q,
           alibi_stride, None if sinks is None else sinks.dtype, cache_leftpad is None, runtime.interpreting(),
           None if q_pe is None else (q_pe.shape, q_pe.stride(), kpe_cache.shape, kpe_cache.stride()),
           # TMA loads need 16-byte aligned bases (load_path)
           k_cache.data_ptr() % 16 == 0 and v_cache.data_ptr() % 16 == 0,
           *_ENV())
    with runtime.device_guard(q.device):
        plan = _PLANS.get_or_make(key, lambda: _Plan(q, k_cache, v_cache, cache_seqlens, block_table,
                                                     softmax_scale, schedule, workers, block_n,
                                                     k_scale=k_scale, v_scale=v_scale, softcap=softcap,
                                                     window_left=window_left, causal=causal, max_q=max_q,
                                                     alibi_stride=alibi_stride,
                                                     sink_dtype=None if sinks is None else sinks.dtype,
                                                     rope=None if q_pe is None else (q_pe, kpe_cache),
                                                     leftpad=cache_leftpad is not None))
        if lse is None:
            lse = plan.lse_sink
        plan.run(q, k_cache, v_cache, cache_seqlens, block_table, out, lse, cu_seqlens_q, alibi_slopes, sinks, q_pe,
                 kpe_cache, cache_leftpad)
    return out, lse


@torch.library.custom_op("leanattn::decode", mutates_args=())
def _decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    cache_seqlens: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
    softmax_scale: float, schedule: str, num_programs: int, num_splits: int, block_n: int,
    k_scale: float = 1.0, v_scale: float = 1.0, softcap: float = 0.0, window_left: int = -1, causal: bool = False,
    cu_seqlens_q: Optional[torch.Tensor] = None, max_seqlen_q: int = 0, alibi_slopes: Optional[torch.Tensor] = None,
    sinks: Optional[torch.Tensor] = None, cache_leftpad: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _decode_impl(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, num_programs,
                        num_splits, block_n, k_scale, v_scale, softcap, window_left, causal, cu_seqlens_q, max_seqlen_q,
                        alibi_slopes, sinks, cache_leftpad)


@_decode_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, num_programs, num_splits, block_n,
      k_scale=1.0, v_scale=1.0, softcap=0.0, window_left=-1, causal=False, cu_seqlens_q=None, max_seqlen_q=0,
      alibi_slopes=None, sinks=None, cache_leftpad=None):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


def validate_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule, validate,
                    k_scale=1.0, v_scale=1.0, fp8=False, window_left=-1, batch=None, cu_seqlens_q=None,
                    max_seqlen_q=1, head_dims=checks.SUPPORTED_HEAD_DIMS,
                    names=("q", "k_cache", "v_cache", "cache_seqlens"), int8=False):
    """Shape, dtype and device checks (always); length checks when they cost no device sync. ``fp8``: float8
    caches are accepted, with their dequantisation scales (``checks.kv_cache``). ``window_left``: only the pages
    of each sequence's sliding window need valid ids (with several query tokens, the first token's window).
    ``batch``: the number of sequences of a packed query (``(total_q, Hq, D)``, ``cu_seqlens_q``), else ``q``'s first
    dimension; with the offsets ``cu_seqlens_q`` given, ``window_left`` is that of the launch's ``max_seqlen_q`` token
    slots, and each sequence's pages in use are those of its own first token's window
    (``kernels/query_rows.packed_window``). ``head_dims``: the query head dims accepted (MLA's latent widths);
    ``names``: the names of the query, the caches and the lengths in errors (a tensor parallel shard's
    ``k_shard``, ``shard_seqlens``).

    Returns the softmax scale to use, or with ``fp8`` ``(softmax_scale, k_scale, v_scale)``.
    """
    qn, kn, vn, sn = names
    scale = checks.query(q, softmax_scale, tokens=True, name=qn, head_dims=head_dims)
    checks.check_tensor(kn, k_cache, 4)
    checks.check_tensor(vn, v_cache, 4)
    kv_scales = checks.kv_cache(k_cache, v_cache, q, k_scale, v_scale, fp8, names=(kn, vn), int8=int8)
    B, Hq, D = q.shape[0] if batch is None else batch, q.shape[-2], q.shape[-1]
    if batch is not None:
        # a packed query's sequences are the cache's: a count that differs is cu_seqlens_q's length (the cache's
        # batch checks below then hold)
        name, cache_b = ("block_table", block_table.shape[0]) if isinstance(block_table, torch.Tensor) and \
            block_table.dim() == 2 else (kn, k_cache.shape[0])
        if cache_b != batch:
            raise ValueError(f"cu_seqlens_q: expected shape ({cache_b + 1},) (one offset more than {name}'s {cache_b} "
                             f"sequences), got ({batch + 1},)")
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"{vn}: expected shape {tuple(k_cache.shape)} (as {kn}), got {tuple(v_cache.shape)}")
    Hkv, Dk = k_cache.shape[2], k_cache.shape[3]
    if Dk != D:
        raise ValueError(f"{kn}: expected head dim {D} (as {qn}), got {Dk}")
    if Hkv == 0:
        raise ValueError(f"{kn}: expected at least one kv head, got shape {tuple(k_cache.shape)}")
    if Hq % Hkv != 0:
        raise ValueError(f"{qn}: expected a number of heads that is a multiple of {kn}'s {Hkv} kv heads, got {Hq}")
    checks.check_unit_stride(kn, k_cache)
    checks.check_unit_stride(vn, v_cache)
    if block_table is None:
        if k_cache.shape[0] != B:
            raise ValueError(f"{kn}: expected batch size {B} (as {qn}), got {k_cache.shape[0]}")
    else:
        checks.page_table("block_table", block_table, kn, k_cache, q.device)
        if block_table.shape[0] != B:
            raise ValueError(f"block_table: expected {B} rows (batch size of {qn}), got {block_table.shape[0]}")
    if cache_seqlens is not None:
        checks.check_index(sn, cache_seqlens, 1, q.device)
        if cache_seqlens.shape[0] != B:
            what = f"batch size of {qn}" if batch is None else "sequences of cu_seqlens_q"
            raise ValueError(f"{sn}: expected shape ({B},) ({what}), got {tuple(cache_seqlens.shape)}")
    checks.schedule(schedule)
    validate = checks.value_checks(validate, cache_seqlens, block_table)
    if validate and cache_seqlens is not None:
        cap = _capacity(k_cache, block_table)
        lo, hi = int(cache_seqlens.min()) if B else 0, int(cache_seqlens.max()) if B else 0
        if lo < 0:
            raise ValueError(f"{sn}: expected lengths >= 0, got a minimum of {lo}")
        if hi > cap:
            what = "block_table pages x page size" if block_table is not None else f"{kn} capacity"
            raise ValueError(f"{sn}: expected lengths <= {cap} ({what}), got a maximum of {hi}")
    if validate and block_table is not None and block_table.numel():
        lens = cache_seqlens if cache_seqlens is not None else torch.full((B,), _capacity(k_cache, block_table),
                                                                          dtype=torch.int32, device=q.device)
        used = (lens.long() + k_cache.shape[1] - 1) // k_cache.shape[1]
        window = min(window_left, _capacity(k_cache, block_table))  # an int the tensors hold
        if window_left >= 0 and cu_seqlens_q is not None:
            tokens = cu_seqlens_q.diff().long().clamp(min=1)
            window = (window_left - max(max_seqlen_q, 1) + tokens).clamp(max=_capacity(k_cache, block_table))
        first = (lens.long() - 1 - window).clamp(min=0) // k_cache.shape[1] if window_left >= 0 else 0
        checks.pages_in_use("block_table", block_table, first, used, k_cache.shape[0])
    return (scale, *kv_scales) if fp8 else scale


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
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    softcap: float = 0.0,
    window_left: int = -1,
    causal: bool = False,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    sinks: Optional[torch.Tensor] = None,
    alibi_slopes: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    rotary_interleaved: bool = False,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
):
    """Decode attention: the new query token (or the last few) of each sequence against its KV cache.

    Exact softmax attention ``softmax(q k^T * softmax_scale) v`` over the first
    ``cache_seqlens[b]`` tokens of each sequence. Query head ``h`` reads kv head
    ``h // (Hq // Hkv)`` (GQA/MQA as in flash-attn and FlashInfer).

    Parameters
    ----------
    q : torch.Tensor
        ``(B, Hq, D)``: one query token a sequence, at position ``cache_seqlens[b] - 1``; or ``(B, Lq, Hq, D)``:
        ``Lq`` query tokens a sequence, the last ``Lq`` positions of its cache (their keys already appended),
        token ``s`` at position ``cache_seqlens[b] - Lq + s`` (flash-attn's ``flash_attn_with_kvcache`` with
        ``seqlen_q = Lq``: speculative decoding's verification step, chunked prefill). The ``Lq`` tokens of a GQA
        group are stacked with its heads in the rows of one product, so K and V are read once for all of them.
        Sequences with fewer tokens to verify pad at the front: the first rows sit before their real tokens, and
        their outputs are to be ignored. float16, bfloat16 (or float32), ``D`` in {64, 128, 256}.
    k_cache, v_cache : torch.Tensor
        Contiguous cache ``(B, N, Hkv, D)`` or, with ``block_table``, paged cache
        ``(num_pages, page_size, Hkv, D)``; same device as ``q``, and ``q``'s dtype or, for both,
        ``torch.float8_e4m3fn``, ``torch.float8_e5m2`` or ``torch.int8`` (read one byte an element and converted to
        fp16 in registers, as FlashInfer's fp8 decode, bf16 query rows scaled exactly into fp16's range; fp32 queries
        take fp32 products; the value of an element is its stored value times ``k_scale`` or ``v_scale``: a
        symmetric per-tensor int8 cache, TensorRT-LLM's, converts on any GPU, float8 from sm_89). Any
        strides with unit stride on ``D`` are used without a copy (a ``(B, Hkv, N, D)`` cache seen through
        ``.transpose(1, 2)`` works).
    cache_seqlens : torch.Tensor, optional
        ``(B,)`` int32, tokens of each sequence in the cache. Default: the full capacity
        (``N``, or ``max_pages * page_size``). Zero-length sequences give zeros and ``lse = -inf``.
    block_table : torch.Tensor, optional
        ``(B, max_pages)`` int32: ``block_table[b, i]`` is the page holding tokens
        ``[i * page_size, (i + 1) * page_size)`` of sequence ``b``. Any page size.
    softmax_scale : float, optional
        Default ``1 / sqrt(D)``. Finite, of magnitude at most 1e30 (the kernels hold it times log2(e) in fp32); scaled
        scores past fp32's range give NaN.
    return_lse : bool
        Also return the natural-log sum of exponentiated scores, for merging partial results.
    schedule : {"lean", "split", "batch_invariant"}
        ``"lean"``: stream-K; a persistent grid of ``SMs x occupancy`` programs, each taking an
        equal contiguous range of all KV tiles of all (sequence, kv-head) pairs, counted by real
        length; partial heads are merged in a fixed order (bitwise deterministic): in-kernel, or, for
        one sequence cut into many pieces and captured in a CUDA graph, by a second launch. Where every
        row is known to have the same length (one sequence, or no ``cache_seqlens`` nor ``cache_leftpad``) and that cut
        is even pieces of each row, the pieces run as a ``(rows, pieces)`` grid of the split kernel, cut
        on the GPU from the length, and a second launch merges them (``even_pieces``).
        ``"split"``: FlashDecoding's fixed number of splits per head and a merge launch.
        ``"batch_invariant"``: each sequence's output bitwise the same whatever the batch it is in, the other
        sequences' lengths and the cache's capacity (the batch-invariant or deterministic inference of SGLang and
        vLLM): the split schedule with splits of 2048 keys from each row's first, a launch configuration chosen
        from the head dims, dtypes and page size alone, and a merge that folds the splits one at a time in order
        (the empty ones past a sequence's end change no bit). Slower than ``"lean"`` where few rows are long. The
        batch fixes none of the launch but a packed query's ``max_seqlen_q`` (the rows a program stacks); float8
        caches read through ``cache_batch_idx`` take tiles chosen from the capacity (its page size).
    num_programs : int, keyword-only
        Persistent programs for ``"lean"`` (0 = SMs x measured occupancy).
    num_splits : int, keyword-only
        Splits per head for ``"split"`` (0 = FlashAttention-2's heuristic).
    validate : bool, optional, keyword-only
        Check length and page-id values. Default: only when it needs no device sync (CPU tensors,
        outside ``torch.compile``); pass ``True`` to check CUDA inputs at the cost of a sync.
    k_scale, v_scale : float, keyword-only
        Dequantisation scales of a float8 or int8 ``k_cache`` and ``v_cache`` (per tensor, as FlashInfer's
        ``k_scale``/``v_scale``): attention runs over ``k_cache * k_scale`` and ``v_cache * v_scale``. The
        K scale is folded into the softmax scale and the V scale multiplies each range's fp32
        accumulator once, so neither costs the kernel a pass over the cache. 1.0 (the default) for caches in
        ``q``'s dtype; else in ``(0, 1e30]``.
    softcap : float, keyword-only
        Logit soft-capping (Gemma-2; flash-attn's ``softcap``, FlashInfer's ``logits_soft_cap``): scores
        ``s = q.k * softmax_scale`` become ``softcap * tanh(s / softcap)`` before the softmax, and the LSE is
        that of the capped scores. 0 (the default) leaves them uncapped.
    window_left : int, keyword-only
        Sliding-window attention (Mistral, Gemma-2/3 local layers): the query, at position
        ``cache_seqlens[b] - 1``, attends the ``window_left`` keys before it and itself, keys
        ``[max(cache_seqlens[b] - 1 - window_left, 0), cache_seqlens[b])`` (FlashInfer's ``window_left``,
        flash-attn's ``window_size[0]``; transformers' ``sliding_window`` is ``window_left + 1``). -1 (the default):
        every key. The work scheduled is the window's tiles, not the whole sequence's. Keys before the window are never
        used: a paged cache never loads them, so their pages may be freed or reused (their ``block_table`` ids are not
        read as pages); a contiguous cache may load those of the window's first tile, whatever they hold. With ``Lq``
        query tokens each has its own window, ending at its position.
    causal : bool, keyword-only
        With ``Lq > 1`` query tokens: each attends only the keys up to its own position (the causal mask aligned
        to the bottom right, as flash-attn's ``causal``). False (the default, as flash-attn's): each attends every
        key of the sequence. Without effect for one token.
    cu_seqlens_q : torch.Tensor, optional, keyword-only
        ``(B + 1,)`` int32: a packed query of a different number of tokens a sequence (flash-attn's
        ``flash_attn_with_kvcache(cu_seqlens_q=)``, FlashInfer's ``qo_indptr``). ``q`` is then ``(total_q, Hq, D)``,
        sequence ``b``'s tokens being rows ``[cu_seqlens_q[b], cu_seqlens_q[b + 1])``, the last positions of its cache
        as above (token ``s`` of ``n_b`` at ``cache_seqlens[b] - n_b + s``), ``B`` taken from the cache. A sequence
        may have none. The kernels stack ``max_seqlen_q`` token slots a sequence as for a ``(B, Lq, Hq, D)`` query,
        right-aligned on its tokens, and read and write only its tokens' rows: no copy of ``q`` or of the outputs.
    max_seqlen_q : int, optional, keyword-only
        With ``cu_seqlens_q``: at least the most tokens of a sequence (the launch's token slots; a plan is made per
        value). None: read from ``cu_seqlens_q``, a device sync, refused while compiling or capturing a CUDA graph.
        Given, the offsets are checked against it and ``q`` only when ``validate`` says so (on CUDA: ``True``); a
        sequence of more tokens than ``max_seqlen_q`` gets its first rows unwritten, offsets past ``q``'s rows index
        outside it.
    sinks : torch.Tensor, optional, keyword-only
        ``(Hq,)`` attention sinks (gpt-oss; FlashInfer's and vLLM's ``sinks``, transformers' ``s_aux``): one logit per
        query head that joins every query token's softmax as a key of value zero, in the units of the scaled (and
        soft-capped) scores; float32, float16 or bfloat16. The state of each row's first piece starts from it
        (``kernels/attend.initial_state``), so the merges count it once and no launch is added: the LSE returned
        includes it, and a token that attends no key gets zeros and its head's sink (magnitudes past 2e38 are taken as
        2e38, so that the kernels' log2 units stay finite; ``-inf`` is no sink). None (the default): no sink.
    alibi_slopes : torch.Tensor, optional, keyword-only
        ``(Hq,)`` or ``(B, Hq)`` float32 ALiBi slopes (BLOOM, MPT; flash-attn's ``alibi_slopes``): the score of a
        query token at position ``i`` and key ``j`` takes the bias ``-slope * |i - j|`` (natural units, added after
        the scale and any soft cap; with ``cu_seqlens_q``, ``B`` is its sequences). Added to each tile's scores in
        registers, from the integer distance, so keys far back lose no precision; the LSE returned includes it.
        None (the default): no bias.
    out : torch.Tensor, optional, keyword-only
        Where to write the output (FlashInfer's ``out=``): ``q``'s shape and dtype, on its device, contiguous, sharing
        no memory with ``q``, ``k_cache`` or ``v_cache``; it is returned. None (the default): a new tensor.
    lse : torch.Tensor, optional, keyword-only
        Where to write the LSE (FlashInfer's ``lse=``), written whether or not ``return_lse`` asks for it:
        ``q.shape[:-1]``, float32, contiguous, on ``q``'s device, sharing no memory with the inputs or ``out``.
        None (the default): a new tensor, allocated only with ``return_lse=True``.
    k, v : torch.Tensor, optional, keyword-only
        New keys and values to write into the cache before attending (flash-attn's ``flash_attn_with_kvcache(k=,
        v=)``): ``(B, T, Hkv, D)`` in the caches' dtype (a float8 cache takes them quantised), token ``t`` of sequence
        ``b`` written at position ``cache_seqlens[b] + t`` (through ``block_table`` for a paged cache), in place. The
        query then attends ``cache_seqlens + T`` keys, its ``Lq`` tokens the last ``Lq`` positions as above.
        ``cache_seqlens`` (required) holds the lengths before the new tokens and is not updated: add ``T`` to it for
        the next step, as with flash-attn. The positions must lie within the capacity (checked where ``validate``
        says; unchecked, a token outside it is not written in eager calls, an index error under ``torch.compile``).
        Not with ``cu_seqlens_q``. The writes are one Triton launch (PyTorch index operations under
        ``torch.compile``) reading the lengths on the device: no sync, and a captured CUDA graph writes where each
        replay's lengths say.
    rotary_cos, rotary_sin : torch.Tensor, optional, keyword-only
        ``(seqlen_ro, rotary_dim / 2)``, floating: rotary embedding of the new keys ``k`` and of ``q`` before the
        keys are written and attended (flash-attn's ``flash_attn_with_kvcache(rotary_cos=, rotary_sin=)``; needs
        ``k`` and ``v``, and a cache in ``q``'s dtype). Token ``t`` of ``k`` is rotated at position
        ``cache_seqlens[b] + t``. Query token ``s`` is rotated at ``cache_seqlens[b] + s`` when ``causal`` or a
        window shorter than the cache (``0 <= window_left < capacity``), else every query token at
        ``cache_seqlens[b]``, as flash-attn's; the position it attends from is ``cache_seqlens[b] + T - Lq + s``, so
        the two agree when ``Lq = T`` (a ``(B, Hq, D)`` query is ``Lq = 1``: with ``T > 1`` new tokens it is
        rotated at ``cache_seqlens[b]``, as flash-attn's). The first
        ``rotary_dim`` dims of each head turn, in float32, rounded once to ``q``'s dtype; the rest are kept. Positions
        must have rows in the tables (checked where ``validate`` says; else an index error on the device). ``q`` is
        not changed: the rotated query is a new tensor.
    rotary_interleaved : bool, keyword-only
        Rotate dims ``(2i, 2i + 1)`` together (GPT-J) instead of ``(i, i + rotary_dim / 2)`` (GPT-NeoX, Llama; the
        default), as flash-attn's.

    cache_batch_idx : torch.Tensor, optional, keyword-only
        ``(B,)`` int32: sequence ``b`` is row ``cache_batch_idx[b]`` of a contiguous cache of any number of rows
        (flash-attn's ``cache_batch_idx``: a static cache of slots, a batch of some of them). Read as a pool of pages
        of ``N`` tokens, one page a sequence: no copy, and the appends write those rows. Not with ``block_table``.
        Rows are checked to lie in the cache where ``validate`` says; else the reads are out of bounds.
    cache_leftpad : torch.Tensor, optional, keyword-only
        ``(B,)`` int32: sequence ``b``'s tokens start at ``cache_leftpad[b]`` of its row of a contiguous cache, which
        holds tokens ``[cache_leftpad[b], cache_seqlens[b])`` (flash-attn's ``cache_leftpad``: prompts padded on the
        left, as a batched Hugging Face prompt is). The padding is never read; ``causal``, a window and ALiBi see the
        same distances as without it. Rotary positions are the cache's slots, as flash-attn's: ``k`` is rotated at
        ``cache_seqlens[b] + t``, where it is written (rotary tables of ``N`` rows, or more). The kernels move each
        row's base to its first real token and count its length from there: no copy, and the tiles start at that
        token. Not with ``block_table``, as flash-attn; with ``cache_batch_idx``, the padding is in the row named.
        ``0 <= cache_leftpad[b] <= cache_seqlens[b]`` is checked where ``validate`` says.

    Returns
    -------
    out : torch.Tensor
        ``q``'s shape, ``(B, Hq, D)``, ``(B, Lq, Hq, D)`` or packed ``(total_q, Hq, D)``, in ``q.dtype`` (the
        ``out`` given, if one was).
    lse : torch.Tensor
        ``(B, Hq)``, ``(B, Lq, Hq)`` or ``(total_q, Hq)`` float32, natural log (the ``lse`` given, if one was); only
        with ``return_lse=True``. A query
        token that attends no key (an empty sequence, or with ``causal`` a position before the cache) gets zeros and
        ``-inf``.

    Notes
    -----
    The schedule is computed on the device from ``cache_seqlens``: there is no host sync, and a
    captured CUDA graph stays correct when the lengths change between replays. Registered as the
    custom op ``torch.ops.leanattn.decode`` (works under ``torch.compile(fullgraph=True)``). Inference
    only, as flash-attn's ``flash_attn_with_kvcache``: there is no backward, and ``out`` carries no gradient.

    Examples
    --------
    >>> q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    >>> k = torch.randn(4, 8192, 8, 128, dtype=torch.bfloat16, device="cuda")
    >>> v = torch.randn_like(k)
    >>> lens = torch.tensor([8192, 100, 0, 4000], dtype=torch.int32, device="cuda")
    >>> out, lse = leanattn.decode(q, k, v, cache_seqlens=lens, return_lse=True)

    Four draft tokens a sequence, verified in one call (their keys already written at ``lens - 4 .. lens - 1``):

    >>> q4 = torch.randn(4, 4, 32, 128, dtype=torch.bfloat16, device="cuda")
    >>> out4 = leanattn.decode(q4, k, v, cache_seqlens=lens, causal=True)   # (4, 4, 32, 128)

    A different number of tokens a sequence (3, 1, 0 and 2), packed:

    >>> cu = torch.tensor([0, 3, 4, 4, 6], dtype=torch.int32, device="cuda")
    >>> qp = torch.randn(6, 32, 128, dtype=torch.bfloat16, device="cuda")
    >>> outp = leanattn.decode(qp, k, v, cache_seqlens=lens, causal=True, cu_seqlens_q=cu, max_seqlen_q=3)
    """
    window_left = checks.window_left(window_left)
    causal = checks.flag("causal", causal)
    return_lse = checks.flag("return_lse", return_lse)
    num_programs, num_splits = checks.launch_counts(num_programs, num_splits)
    batch, qlen = checks.query_slots(q, cu_seqlens_q, max_seqlen_q, validate)
    # the query's batch where it can be read (a q that is not a tensor is refused by the checks below)
    q_batch = q.shape[0] if batch is None and isinstance(q, torch.Tensor) and q.dim() else batch
    if cache_leftpad is not None and block_table is not None:
        raise ValueError("cache_leftpad: expected None with a paged cache (block_table), as flash-attn, got a tensor")
    if cache_batch_idx is not None:
        block_table = cache_rows_as_pages(cache_batch_idx, block_table, k_cache, q_batch,
                                          checks.value_checks(validate, cache_batch_idx))
    if cache_leftpad is not None:
        check_leftpad(cache_leftpad, k_cache, cache_seqlens, q_batch,
                      checks.value_checks(validate, cache_leftpad))
    # with new tokens, the lengths after them: those checked, and those attended
    appended = cache_seqlens
    cache_seqlens, seqlens_name = lengths_after(k, v, q, k_cache, cache_seqlens, cu_seqlens_q)
    # the first token's window holds every page in use
    names = ("q", "k_cache", "v_cache", seqlens_name)
    scale, k_scale, v_scale = validate_decode(q, k_cache, v_cache, cache_seqlens, block_table, softmax_scale, schedule,
                                              validate, k_scale, v_scale, fp8=True, int8=True,
                                              window_left=rows_window(window_left, qlen),
                                              batch=batch, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=qlen, names=names)
    capacity = _capacity(k_cache, block_table)
    # flash-attn's local attention, as its rotary rule reads it: a window shorter than the cache
    local = 0 <= window_left < capacity
    if window_left >= capacity - 1:
        window_left = -1  # a window that holds the whole cache is none: the same plan, and no huge int for the kernel
    softcap = checks.softcap(softcap)
    validate = checks.value_checks(validate, cache_seqlens, block_table)
    alibi_slopes = checks.alibi_slopes(alibi_slopes, q.shape[0] if batch is None else batch, q.shape[-2], q.device,
                                       validate)
    check_sinks(sinks, q.shape[-2], q.device)
    if sinks is not None and sinks.stride(0) != 1:
        sinks = sinks.contiguous()
    out, lse = output_buffers(out, lse, q, (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v),
                                            ("cache_seqlens", appended), ("block_table", block_table),
                                            ("cu_seqlens_q", cu_seqlens_q), ("sinks", sinks),
                                            ("cache_leftpad", cache_leftpad),
                                            ("alibi_slopes", alibi_slopes)))
    rotary = check_rotary(rotary_cos, rotary_sin, rotary_interleaved, q, k, k_cache, causal or local)
    q = append_kv(k_cache, v_cache, k, v, appended, block_table, validate, q, rotary)
    if q.dim() == 4 and qlen == 1:
        # one token: the 3-D call, its outputs seen with the token axis (the buffers' views keep them contiguous)
        # (cache_batch_idx named again rather than as the pages it became: cache_leftpad refuses a block_table)
        res = decode(q[:, 0], k_cache, v_cache, cache_seqlens, None if cache_batch_idx is not None else block_table,
                     scale, return_lse, schedule,
                     num_programs=num_programs, num_splits=num_splits, validate=False, k_scale=k_scale,
                     v_scale=v_scale, softcap=softcap, window_left=window_left, alibi_slopes=alibi_slopes, sinks=sinks,
                     cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, **token_buffers(out, lse))
        return with_token_axis(res, out, lse, return_lse)
    if q.stride(-1) != 1:
        q = q.contiguous()
    args = (q, k_cache, v_cache, cache_seqlens, block_table, scale, schedule, num_programs, num_splits, 0,
            k_scale, v_scale, softcap, window_left, causal and qlen > 1, cu_seqlens_q, qlen, alibi_slopes, sinks,
            cache_leftpad)
    # under torch.compile the custom op keeps the kernel opaque to Dynamo and Inductor; eager calls skip
    # the dispatcher (its overhead is comparable to a short decode kernel)
    if torch.compiler.is_compiling():
        o, s = _decode_op(*args)
    else:
        o, s = _decode_impl(*args, need_lse=return_lse, out=out, lse=lse)
    return finish(o, s, out, lse, return_lse)


def output_buffers(out, lse, q, inputs, name: str = "q"):
    """``out=`` and ``lse=`` of a decode op, checked (``checks.output_buffer``): ``q``'s shape and dtype, and its
    shape less ``D`` in float32; neither may share memory with ``q`` (called ``name``), the named ``inputs`` or the
    other."""
    if out is None and lse is None:
        return None, None
    inputs = ((name, q), *inputs)
    out = checks.output_buffer("out", out, q.shape, q.dtype, q.device, f"{name}'s shape", inputs)
    lse = checks.output_buffer("lse", lse, q.shape[:-1], torch.float32, q.device, f"{name}.shape[:-1]",
                               inputs + (("out", out),))
    return out, lse


def finish(o, s, out, lse, return_lse: bool):
    """A decode op's return from its results ``(o, s)``: moved into the caller's buffers ``out``, ``lse`` where given
    and not already there (a custom op under ``torch.compile`` returns tensors of its own, and so does a merge of
    sinks into an empty cache's state), then ``o``, or ``(o, s)`` with ``return_lse``."""
    if out is not None and o is not out:
        o = out.copy_(o)
    if lse is not None and s is not lse:
        s = lse.copy_(s)
    return (o, s) if return_lse else o


def token_buffers(out, lse) -> dict:
    """``out=`` and ``lse=`` of the 3-D call that runs a ``(B, 1, Hq, D)`` query: views of the caller's buffers
    without the token axis (contiguous, as the buffers are)."""
    return dict(out=None if out is None else out[:, 0], lse=None if lse is None else lse[:, 0])


def with_token_axis(res, out, lse, return_lse: bool):
    """The 3-D call's result ``res`` returned for a ``(B, 1, Hq, D)`` query: the caller's buffers where given (it
    wrote them through :func:`token_buffers`), else its outputs seen with the token axis."""
    o, s = res if return_lse else (res, None)
    o = out if out is not None else o[:, None]
    if not return_lse:
        return o
    return o, lse if lse is not None else s[:, None]
