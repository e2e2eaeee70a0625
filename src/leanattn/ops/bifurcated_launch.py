"""Launch plans of ``leanattn.bifurcated_decode``: which kernels, tile sizes, grids and workspaces.

Five paths, chosen per call signature:

* ``concat`` (at most one sample per prompt, own tokens given, every prefix read from its first key): nothing to
  share, one launch of the decode schedule over prefix + own tokens (``kernels/bifurcated_concat.py``);
* ``states`` (default otherwise): one launch of fixed-split states, prefix splits with stacked rows
  and own-token splits (``kernels/bifurcated_states.py``), merged by ``merge_states`` in a second
  launch (or in-kernel by each row's last arriving state, ninth config field 2). Side by side on an
  H200 (2026-12-01, ``benchmarks/results/profile_bifurcated_merge_H200.json``): GQA 8k x32 34.3 us
  against 71.6 for ``fused``, x64 49.4 against 102.6, MHA 8k x64 111.4 against 212.5
  (``benchmarks/results/bifurcated_H200_notes.md`` section 7);
* ``fused`` (``LEANATTN_BIFURCATED_CONFIG`` path field 2): one launch of both passes, two stream-K
  work lists with in-kernel last-arriver merges of pieces (``kernels/bifurcated.py``);
* ``overlap`` (in place of ``states`` where ``ops/bifurcated_overlap.usable``, an sm_90 GPU, one
  prompt, D 64/128, and ``preferred``, where it measured faster; path field 3 forces ``states``,
  4 ``overlap`` where usable): the prefix states in Gluon on the caller's stream
  (``kernels/bifurcated_prefix_gluon.py``), decode's split kernel over the own tokens on a second
  stream at the same time, then ``merge_states``. H200, same process: GQA 8k x64 47.3 us against
  49.5, GQA 32k x64 100.4 against 109.9 (``benchmarks/results/bifurcated_H200_notes.md`` section 15);
* ``split`` (path field 1): two launches, fixed-split prefix states with stacked rows
  (``kernels/bifurcated_prefix.py``), then the own tokens with the prefix merge fused in
  (``kernels/bifurcated_own.py``). Measured on an H200 it lost to ``fused`` on most bar cases (MHA
  8k x16: 141 us against 76; GQA 8k x4: 91 against decode's 55); see
  ``benchmarks/results/profile_bifurcated_run3_H200.log``. Kept as an option for profiling.

A call with ``softcap > 0`` runs on ``concat``, ``states`` or ``overlap`` (where ``overlap.preferred`` says so for
capped calls): ``fused`` and ``split``, which were not given a cap, turn into ``states``. Bifurcated probe 52 (H200,
2026-12-04): capped over uncapped on the same path 1.01-1.08x to 32 samples; at GQA x64, where 256 stacked score
rows a prefix tile make the tanh outweigh the bytes, 1.16-1.34x on the states path and 1.16-1.50x on the overlap
path.

A call over float8 caches (prefix and own in one dtype, ``k_scale``/``v_scale`` as decode's) runs on ``concat``,
``states`` or ``overlap`` (the plain Gluon prefix, converting the tiles): ``fused`` and ``split`` turn into
``states``.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import triton

from .. import runtime
from ..checks import FP8_DTYPES
from ..kernels.bifurcated import bifurcated_decode_kernel
from ..kernels.bifurcated_concat import concat_decode_kernel, concat_split_kernel
from ..kernels.bifurcated_own import own_merge_kernel
from ..kernels.bifurcated_prefix import prefix_states_kernel
from ..kernels.bifurcated_states import bifurcated_states_kernel
from ..kernels.piece_merge import merge_meta
from ..schedules import stream_k
from . import bifurcated_overlap as overlap
from .decode import _capacity
from .decode import _Plan as DecodePlan
from .decode import fp8_capable, score_scales
from .decode_config import DecodeConfig, across_rows, decode_config, length_block, load_path, merge_in_launch
from .states_merge import states_and_merge
from .stream_k_launch import LAUNCH, StreamKLaunch, piece_workspaces, with_search

# The one-sample kernel's tiles as a scalar base plus 32-bit offsets fixed for the piece, where the prefix and the
# own cache share their token strides (kernels/attend.attend_concat, SAME_STRIDE). H200, 2026-12-02, one process
# (probe 30, benchmarks/probe_piece_offsets.py): 0.3-1.9% faster than a 64-bit address per row on the six
# one-sample suite cases (GQA 16k x1 33.7 against 34.4 us; decode over the copied caches 33.4). The same form in
# decode's loop measured level (-0.3% to +0.5% on ten D=128 cases) and was not kept.
CONCAT_SAME_STRIDE = True

_ENV_FIELDS = ("block_h_cap", "block_np", "num_warps", "num_stages", "ctas_per_sm", "load", "block_no", "order",
               "merge", "path", "splits", "sb", "own_splits")


def env_config() -> dict:
    """``LEANATTN_BIFURCATED_CONFIG``: comma-separated integers, 0 = default, in the order
    ``block_h_cap, block_np, num_warps, num_stages, ctas_per_sm, load, block_no, order, merge,
    path, splits, sb, own_splits`` (``load`` is ``LOAD + 1`` of ``kernels/attend.py``: 1 pointers, 2 block
    pointers, 3 TMA; ``order`` is ``ORDER + 1`` of the fused path; ``merge`` 2: the states path merges
    in-kernel (last arriver) instead of in a second launch; ``path`` 1 split, 2 fused, 3 states, 4 overlap
    (where usable; there ``num_warps`` 4 or 8 gives its Gluon prefix 64 or 128 rows a program); ``splits``
    prefix splits per head of the split and states paths; ``sb`` prefix states merged per load of the
    split path; ``own_splits`` own-token splits per row of the states path): launch overrides for
    benchmark sweeps."""
    raw = os.environ.get("LEANATTN_BIFURCATED_CONFIG")
    try:
        vals = tuple(int(x) for x in raw.split(",")) if raw else ()
    except ValueError:
        vals = None
    if vals is None or len(vals) > len(_ENV_FIELDS):
        raise ValueError(f"LEANATTN_BIFURCATED_CONFIG: expected up to {len(_ENV_FIELDS)} comma-separated integers "
                         f"({', '.join(_ENV_FIELDS)}), got {raw!r}")
    vals = vals + (0,) * (len(_ENV_FIELDS) - len(vals))
    env = dict(zip(_ENV_FIELDS, vals))
    if not 0 <= env["load"] <= 3:
        raise ValueError(f"LEANATTN_BIFURCATED_CONFIG: expected the load field (sixth) in 0..3 "
                         f"(0 default, 1 pointers, 2 block pointers, 3 TMA), got {env['load']}")
    return env


def states_prefix_splits(columns: int, prefix_len: int, own_tokens: int, workers: int) -> int:
    """Prefix splits per column of the states path (a column: one prompt, kv head and head block).

    Each kind of program gets the share of the ``workers`` program slots that its tokens are of all
    the tokens the launch loads (``columns * prefix_len`` prefix tokens, prefix tiles counted once per
    head block, and ``own_tokens``), but the prefix programs never take more than one wave of slots:
    a second, partial wave of them is the launch's tail. H200, 2026-12-01, no own tokens (the outer
    levels of ``cascade_decode``), the prefix programs alone: GQA 8k x64 40.4 us with 9 splits (288
    programs on 264 slots) against 28.8 us with 8 (256 programs); MHA 16k x256 226.2 against 174.8 us
    (256 programs on 132 slots against 128; bifurcated_H200_notes.md section 11).
    """
    total = columns * prefix_len + own_tokens
    share = triton.cdiv(prefix_len * workers, max(total, 1))
    return max(1, min(share, workers // max(columns, 1)))


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    own: DecodeConfig   # the own-token pass (and the one-sample path): rows per dot, head blocks, tile
    block_hp: int       # stacked prefix rows per tl.dot
    block_np: int       # prefix tokens per tile
    block_no: int       # own tokens per tile
    num_warps: int      # of the prefix pass
    num_stages: int
    ctas_per_sm: int    # cap on resident programs per SM
    load: int | None    # K/V load path of contiguous caches (LOAD of kernels/attend.py); None: the path's default
    order: int          # ORDER of kernels/bifurcated.py (fused path): which list a program walks first
    path: str           # "fused", "split" or "states" (with more than one sample per prompt)
    splits: int         # prefix splits per (prompt, kv head) of the split and states paths (0: fill the GPU)
    own_splits: int     # own-token splits per row of the states path (0: sized by bytes)
    merge_in_kernel: bool  # states path: each row merged by its last arriving state instead of a second launch
    sb: int             # prefix split states merged per load


def launch_config(rows: int, head_dim: int, group: int, device: torch.device, block_h: int = 0,
                  block_n: int = 0, path: str = "") -> LaunchConfig:
    """Launch configuration for ``rows`` stacked prefix rows per kv head.

    The prefix pass stacks the rows of a kv head up to 128 per ``tl.dot`` for MHA, 64 for GQA and at
    D=256 (see below). 128-row blocks take 64-token tiles, 8 warps and 3 stages (the decode sweep on
    H100: 64-token tiles with 8 warps need 3 stages to stream at full rate; 128 x 128 tiles would
    leave one program per SM). Own tiles keep the decode table's size (64 tokens at D=128 since
    2026-12-01, 128 at D=64): 256 own tokens are four or two tiles. ``block_n`` (op argument, tests) sets both tile sizes.
    ``path`` overrides the path that ``LEANATTN_BIFURCATED_CONFIG`` asks for (a call that path cannot run).
    """
    env = env_config()
    cfg = decode_config(head_dim, group, device, block_n or None)
    if head_dim > 128 and not block_n:
        # at most 32-token tiles at D=256, not decode's 64 (measured for one row block of a GQA group): with
        # 64 stacked prefix rows, 64-token tiles compile to 252-255 registers and 229 KB of shared memory
        # against 204-222 and 131 KB (states path, Triton 3.6, sm_90a, benchmarks/offline_resources.py)
        cfg = dataclasses.replace(cfg, block_n=min(cfg.block_n, 32))
    cuda = runtime.gpu_target(device)
    # GQA at D <= 128: 64-row prefix blocks of 64-token tiles, 4 warps, 3 stages (two programs per SM;
    # more rows take more head blocks, whose members share each prefix tile through L2). The H200
    # sweep (benchmarks/results/profile_bifurcated_run1_H200.json, config '64,64,4,3') put it at
    # 72 us on GQA 8k x32 against 90 for 128-row blocks with 8 warps, and level or ahead on the other
    # GQA bar cases; on MHA it lost (127 against 106 us at 8k x32), so MHA keeps 128-row blocks.
    path = path or {1: "split", 2: "fused"}.get(env["path"], "states")
    # the states path keeps 64-row blocks for MHA too: 128-row blocks (8 warps) or 64 rows of 128-token
    # tiles fit one program per SM, and its prefix and own programs share the SM's slots
    gqa_small = cuda and (group > 1 or path == "states") and head_dim <= 128
    cap = env["block_h_cap"] or (64 if head_dim > 128 or gqa_small else 128)
    block_hp = block_h or max(16, min(cap, triton.next_power_of_2(max(rows, 1))))
    bn, warps, stages = cfg.block_n, cfg.num_warps, cfg.num_stages
    if block_hp > 64 and cuda:
        bn = min(bn, 64)
        warps, stages = max(warps, 8), max(stages, 3)
    elif gqa_small and (group > 1 or block_hp == 64):
        bn, warps, stages = min(bn, 64), 4, 3
    # list order of the fused path: MHA walks the prefix list first (same sweep: 76/106/170 us on
    # MHA 8k x16 / 8k x32 / 32k x16 against 81/115/174 alternating per wave); GQA alternates
    order = env["order"] - 1 if env["order"] else (0 if group == 1 else 2)
    return LaunchConfig(
        own=cfg, block_hp=block_hp, block_np=block_n or env["block_np"] or bn,
        block_no=block_n or env["block_no"] or cfg.block_n, num_warps=env["num_warps"] or warps,
        num_stages=env["num_stages"] or stages, ctas_per_sm=env["ctas_per_sm"] or cfg.ctas_per_sm,
        load=env["load"] - 1 if env["load"] else None, order=order,
        path=path, splits=env["splits"], own_splits=env["own_splits"], merge_in_kernel=env["merge"] == 2,
        sb=env["sb"] or max(1, 64 // cfg.block_h))


class Plan:
    """Launch constants of one call signature (shapes, strides, dtypes, options); built once, cached.

    ``n_max`` is an upper bound on the samples of one prompt; ``workers`` the persistent programs
    (0: SMs x measured occupancy).
    """

    def __init__(self, q, pk, pv, k, v, seqlens, block_table, has_plens, single, n_max, scale, workers, block_h,
                 block_n, softcap=0.0, k_scale=1.0, v_scale=1.0, span=0, prefix_table=None, sinks=False):
        B, Hq, D = q.shape
        self.sinks = sinks  # attention sinks: folded in by the merge launch of paths that have one (sinks_merged)
        # a paged prefix (prefix_table (G, max_pages)): pools of pages, prompt g the pages of table row g
        paged = prefix_table is not None
        if paged:
            G, P, Hkv = prefix_table.shape[0], prefix_table.shape[1] * pk.shape[1], pk.shape[2]
        else:
            G, P, Hkv = pk.shape[0], pk.shape[1], pk.shape[2]
        # the kernels' page size: an empty paged prefix is read as an empty dense one, the dummy cache
        self.prefix_page = pk.shape[1] if paged and P else 0
        device = q.device
        group = Hq // Hkv
        has_own = k is not None
        self.qk_scale, self.softcap = score_scales(scale, k_scale, softcap)
        self.k_scale, self.v_scale = k_scale, v_scale
        fp8 = pk.dtype in FP8_DTYPES
        # cascade_decode's call over own tokens alone passes an empty prefix in the caches' dtype
        fp8_capable("prefix_k" if P or not has_own else "k_cache", pk.dtype, device)
        # float8 caches read with 16-bit queries take decode's float8 tiles on the concat path (decode_config)
        self.fp8_tiles = fp8 and q.dtype != torch.float32
        self.kv_dtype = pk.dtype
        # the fused and split paths (benchmark options) have no soft cap and read no float8 caches: such calls take
        # the states path whatever LEANATTN_BIFURCATED_CONFIG asks (the overlap path takes both)
        # so do calls with each prompt's first key (span > 0: no prompt holds more keys than span from it on) and
        # paged prefixes, which only the states path's prefix programs read
        self.span = span
        lc = launch_config(n_max * group, D, group, device, block_h, block_n,
                           "states" if softcap > 0 or fp8 or span or paged else "")
        # (the concat kernel reads every prefix from its first key: calls with first keys take the states path)
        self.path = "concat" if has_own and n_max == 1 and not paged and not span else lc.path
        # a caller's num_programs (workers) bounds a persistent grid: the overlap path has none, so keeps off
        forced = env_config()["path"]
        preferred = overlap.preferred(n_max * group, group, softcap > 0)
        if (self.path == "states" and forced != 3 and (forced == 4 or preferred) and workers <= 0 and not span
                and not paged and overlap.usable(q, pk, pv, single, has_plens)):
            self.path = "overlap"
        self.concat = self.path == "concat"
        self.even = 0  # the concat path's even pieces a row (_setup_concat_even), 0 for its persistent kernel
        self.n_hb = 1 if self.concat else triton.cdiv(n_max * group, lc.block_hp)
        self.dummy_i32 = runtime.workspace("dummy_i32", device, (1, 1), torch.int32, zero=True)
        # the LSE of calls that do not return it: written, never read (launches sharing it may overwrite it)
        self.lse_sink = runtime.workspace("decode_lse_sink", device, (B, Hq), torch.float32)
        # in the caches' dtype: the concat kernel selects between prefix and own pointers, which must agree
        self.dummy_kv = runtime.workspace(f"dummy_kv_{pk.dtype}", device, (1, 1, Hkv, D), pk.dtype, zero=True)
        cap = _capacity(k, block_table) if has_own else 0
        # empty caches are replaced by a one-token dummy (with zero length), so no pointer is dangling
        self.empty_prefix = P == 0
        self.empty_own = has_own and cap == 0
        pk_s = self.dummy_kv if self.empty_prefix else pk
        pv_s = self.dummy_kv if self.empty_prefix else pv
        k_s = self.dummy_kv if (not has_own or self.empty_own) else k
        v_s = self.dummy_kv if (not has_own or self.empty_own) else v
        self.own_paged = block_table is not None and not self.empty_own
        self.strides_q = (q.stride(0), q.stride(1))
        # a paged prefix's first stride is its pools' page stride
        spread = (G > 1 and P) or self.prefix_page
        self.strides_p = (pk_s.stride(0) if spread else 0, pk_s.stride(1), pk_s.stride(2),
                          pv_s.stride(0) if spread else 0, pv_s.stride(1), pv_s.stride(2))
        self.stride_ptb = prefix_table.stride(0) if self.prefix_page else 0
        self.strides_own = (k_s.stride(0), k_s.stride(1), k_s.stride(2), v_s.stride(0), v_s.stride(1), v_s.stride(2),
                            Hq * D, D, Hq,  # out and lse are allocated contiguous
                            block_table.stride(0) if self.own_paged else 0)
        load = lc.load if lc.load is not None else lc.own.load
        load = load_path(load, pk_s, pv_s, False)
        if has_own and not self.own_paged:
            load = min(load, load_path(load, k_s, v_s, False))
        self.common = dict(HEAD_DIM=D, HAS_SEQLENS=seqlens is not None, SINGLE_PREFIX=single, LOAD=load,
                           UPCAST=runtime.interpreting() and q.dtype == torch.bfloat16,
                           DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
        self.page_size = k.shape[1] if self.own_paged else 0  # 0: contiguous own cache
        self.info = {}  # launch facts for benchmarks: path, grid, tiles, registers, spills, occupancy
        self.f32 = runtime.workspace("dummy_f32", device, (1,), torch.float32, zero=True)
        shape = dict(B=B, Hq=Hq, Hkv=Hkv, D=D, G=G, P=P, cap=cap, group=group, has_own=has_own,
                     has_plens=has_plens, scale=scale, workers=workers, block_n=block_n)
        if self.path == "overlap":
            self._setup_overlap(q, k_s, v_s, seqlens, block_table if self.own_paged else None, softcap, **shape)
        else:
            getattr(self, "_setup_" + self.path)(q, lc, **shape)
        # the paths whose last launch merges states fold the sinks in it; the others leave them to the caller
        self.sinks_merged = (self.path == "overlap" or (self.path == "concat" and self.even > 1)
                             or (self.path == "states" and not self.merge_in_kernel))
        self.info.update(path=self.path)
        # launches after the first skip the JIT's per-call argument specialisation (runtime.Launcher)
        # (the overlap path's launches are its prefix's and its own plan's; the concat path's its
        # StreamKLaunch)
        if self.path not in ("overlap", "concat"):
            kernel = {"states": bifurcated_states_kernel, "split": own_merge_kernel,
                      "fused": bifurcated_decode_kernel}[self.path]
            self.launch = runtime.Launcher(kernel, self.grid, self.meta, self.tail)
        if self.path == "split":
            self.launch_prefix = runtime.Launcher(prefix_states_kernel, self.grid_p, self.meta_p, self.tail_p)

    # ------------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """The path this plan takes and its launch facts (``info``: grids, splits, tiles; once its kernels compiled,
        their registers and occupancy): what the ``leanattn`` logger records of a new plan."""
        return dict(self.info)

    def _setup_concat(self, q, lc, B, Hq, Hkv, D, G, P, cap, group, has_own, has_plens, scale, workers, block_n):
        env, device = env_config(), q.device
        # decode's config for the same work (decode over the copied caches: its tiles, stages, programs
        # per SM), paged included. With the multi-piece merge the 8-warp / 3-stage config this path
        # once had (fewer programs, so shorter merges) measured 1-8% slower on every one-sample case
        # of the H200 run of 2026-11-30, side by side (benchmarks/results/bifurcated_H200_notes.md)
        cfg = decode_config(D, group, device, block_n or None, self.page_size, B * Hkv, P + cap, 0, self.fp8_tiles)
        warps, stages, cps = cfg.num_warps, cfg.num_stages, env["ctas_per_sm"] or cfg.ctas_per_sm
        # one tile loop over both sources, tensors of pointers (attend_concat): the load field is not read
        common = {k: v for k, v in self.common.items() if k != "LOAD"}
        bn = block_n or env["block_no"] or cfg.block_n
        # the SM count lets the kernel align ranges with rows (as decode); 0 keeps a grid the caller chose
        sms = 0 if workers > 0 else runtime.num_sms(device)
        # merged as decode over the copied caches would be (ops/decode.py)
        row_tiles = max(triton.cdiv(P, bn) + triton.cdiv(cap, bn), 1)
        merge_apart = merge_in_launch(device, D, row_tiles, B, Hkv * cfg.n_hb, workers or sms * cps, sms)
        # token strides of K and V (fields 1 and 4 of both tuples), the same in both sources, and a tile's rows in
        # 32-bit offsets
        tokens_p, tokens_own = self.strides_p[1::3], self.strides_own[1:5:3]
        same_stride = (CONCAT_SAME_STRIDE and not self.page_size and tokens_p == tokens_own
                       and max(tokens_p) * bn + D < 2**31)
        # one sample: every row has the same tiles, and where the cut is even pieces of each row they run on
        # concat_split_kernel (as decode's one sequence on split_decode_kernel, ops/decode.even_pieces)
        even = 0
        if B == 1 and workers <= 0 and runtime.env_flag("LEANATTN_DECODE_EVEN") is not False:
            even = stream_k.even_pieces(row_tiles, Hkv * cfg.n_hb, sms * cps, sms)
        if even:
            self._setup_concat_even(q, cfg, common, even, B, Hq, Hkv, D, P, cap, group, has_plens, scale, bn,
                                    same_stride)
            return
        self.meta = dict(common, GROUP=group, N_HB=cfg.n_hb, ROWS=Hkv * cfg.n_hb, BLOCK_H=cfg.block_h,
                         BLOCK_N=bn, BLOCK_B=length_block(B),
                         PAGE_SIZE=self.page_size, HAS_PREFIX_LENS=has_plens, **merge_meta(cfg.block_h, D, group),
                         SAME_STRIDE=same_stride, MERGE_LAUNCH=merge_apart == LAUNCH, PDL=False,
                         ACROSS_ROWS=across_rows(D, self.kv_dtype.itemsize),
                         SOFTCAP=self.softcap > 0, num_warps=env["num_warps"] or warps,
                         num_stages=env["num_stages"] or stages)
        head = self.strides_q + self.strides_p + self.strides_own + (self.qk_scale, self.v_scale, self.softcap, B, P,
                                                                     cap)
        self.tail = with_search(self.meta, head, B, Hkv * cfg.n_hb, workers or sms * cps, sms)
        d, f, kv = self.dummy_i32, self.f32, self.dummy_kv
        if workers <= 0:
            args = (q, kv, kv, kv, kv, q, f, d, d, d, d, f, f, d, d, *self.tail)
            # the in-kernel merge's occupancy: a variant that merges apart is capped to match (StreamKLaunch);
            # info's registers are that variant's ("in_kernel_" keys), whichever merge the launch takes
            occ = runtime.kernel_occupancy(concat_decode_kernel, args, dict(self.meta, MERGE_LAUNCH=False), device,
                                           self.info, "in_kernel_")
            workers = runtime.num_sms(device) * max(1, min(occ, cps))
        n = workers
        self.grid = (n,)
        # the search's host-side arguments for the grid launched
        self.tail = with_search(self.meta, head, B, Hkv * cfg.n_hb, n, sms)
        rows = B * self.meta["ROWS"]
        self.ws = piece_workspaces("bif_o", device, n, cfg.block_h, D, rows)
        self.concat_launch = StreamKLaunch(concat_decode_kernel, self.grid, self.meta, self.ws + self.tail, merge_apart,
                                           self.ws, B, device, sms)
        self.info.update(grid=n, merge_mode=merge_apart,
                         **{k: self.meta[k] for k in ("BLOCK_H", "BLOCK_N", "num_warps", "num_stages")})

    def _setup_concat_even(self, q, cfg, common, splits, B, Hq, Hkv, D, P, cap, group, has_plens, scale, bn,
                           same_stride):
        """The concat path as ``splits`` even pieces of each row (``concat_split_kernel``) and a merge launch."""
        env, device = env_config(), q.device
        M = B * Hq
        pdl = splits > 1 and runtime.dependent_launch(device)
        self.meta = dict(common, GROUP=group, N_HB=cfg.n_hb, ROWS=Hkv * cfg.n_hb, BLOCK_H=cfg.block_h, BLOCK_N=bn,
                         PAGE_SIZE=self.page_size, HAS_PREFIX_LENS=has_plens, SAME_STRIDE=same_stride, PDL=pdl,
                         SOFTCAP=self.softcap > 0, num_warps=env["num_warps"] or cfg.num_warps,
                         num_stages=env["num_stages"] or cfg.num_stages)
        part = (M * D, M) if splits > 1 else (0, 0)
        self.tail = (self.strides_q + self.strides_p + self.strides_own + part
                     + (self.qk_scale, self.v_scale, self.softcap, P, cap))
        self.grid = (B * self.meta["ROWS"], splits)
        self.even = splits
        self.even_launch = runtime.Launcher(concat_split_kernel, self.grid, self.meta, self.tail)
        if splits > 1:  # the same workspaces as decode's even pieces: both run on the caller's stream
            *self.partials, self.launch_merge = states_and_merge("split_states", device, splits, B, Hq, D, pdl,
                                                                    self.sinks)
        self.info.update(grid=self.grid[0] * splits, merge_mode="even pieces", splits=splits,
                         **{k: self.meta[k] for k in ("BLOCK_H", "BLOCK_N", "num_warps", "num_stages")})

    # ------------------------------------------------------------------------------------------
    def _setup_split(self, q, lc, B, Hq, Hkv, D, G, P, cap, group, has_own, has_plens, scale, workers, block_n):
        cfg, device = lc.own, q.device
        n_hb, block_hp = self.n_hb, lc.block_hp
        rows_p = n_hb * block_hp
        d, f, kv = self.dummy_i32, self.f32, self.dummy_kv
        # -- launch 1: prefix split states, grid (S * N_HB, Hkv, G) --
        self._prefix_splits(q, lc, B, Hkv, G, P, n_hb, workers, scale, has_plens)
        S = self.splits
        self.states = (runtime.workspace("bif_split_o", device, (G * Hkv * S * rows_p, D), torch.float32),
                       runtime.workspace("bif_split_lse", device, (G * Hkv * S * rows_p,), torch.float32))
        # -- launch 2: own tokens + prefix merge, persistent --
        self.meta = dict(self.common, HKV=Hkv, GROUP=group, N_HB=cfg.n_hb, ROWS_P=rows_p, BLOCK_H=cfg.block_h,
                         BLOCK_N=lc.block_no, BLOCK_B=length_block(B), SB=lc.sb,
                         PAGE_SIZE=self.page_size, HAS_OWN=has_own, **merge_meta(cfg.block_h, D, group),
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        self.tail = self.strides_q + self.strides_own + (self.qk_scale, B, cap, S)
        if workers <= 0:
            occ = runtime.kernel_occupancy(own_merge_kernel, (q, kv, kv, q, f, d, d, d, d, f, f, f, f, d, *self.tail), self.meta,
                               device, self.info)
            workers = runtime.num_sms(device) * max(1, min(occ, lc.ctas_per_sm))
        n = workers
        self.grid = (n,)
        self.ws = piece_workspaces("bif_o", device, n, cfg.block_h, D)
        self.info.update(grid=n, BLOCK_NO=lc.block_no, BLOCK_HO=cfg.block_h, SB=lc.sb)

    # ------------------------------------------------------------------------------------------
    def _prefix_splits(self, q, lc, B, Hkv, G, P, n_hb, workers, scale, has_plens) -> None:
        """Launch 1 of the split path: fixed-split prefix states, grid ``(S * N_HB, Hkv, G)``,
        one wave (as many splits as there are program slots per prompt x kv head x head block)."""
        d, f, kv = self.dummy_i32, self.f32, self.dummy_kv
        common_p = {k: v for k, v in self.common.items() if k != "HAS_SEQLENS"}  # the prefix has no own lengths
        self.meta_p = dict(common_p, HKV=Hkv, GROUP=q.shape[1] // Hkv, BLOCK_HP=lc.block_hp, N_HB=n_hb,
                           BLOCK_N=lc.block_np, BATCH_LAYOUT=False, HAS_PREFIX_LENS=has_plens,
                           num_warps=lc.num_warps, num_stages=lc.num_stages)
        tiles_cap = max(triton.cdiv(P, lc.block_np), 1)
        splits = lc.splits
        if splits <= 0:
            occ = runtime.kernel_occupancy(prefix_states_kernel, (q, kv, kv, f, f, d, d, d, d, *self.strides_q, *self.strides_p,
                                                      1.0, B, P, 1, 1), self.meta_p, q.device, self.info, "prefix_")
            slots = (workers if workers > 0 else runtime.num_sms(q.device) * occ)
            splits = max(1, slots // (G * Hkv * n_hb))
        chunk = triton.cdiv(tiles_cap, min(splits, tiles_cap))
        self.splits = S = triton.cdiv(tiles_cap, chunk)
        self.tail_p = self.strides_q + self.strides_p + (self.qk_scale, B, P, S, chunk)
        self.grid_p = (S * n_hb, Hkv, G)
        self.info.update(grid_prefix=self.grid_p, splits=S, chunk=chunk, BLOCK_HP=lc.block_hp, N_HB=n_hb,
                         BLOCK_NP=lc.block_np, prefix_warps=lc.num_warps, prefix_stages=lc.num_stages)

    def _setup_states(self, q, lc, B, Hq, Hkv, D, G, P, cap, group, has_own, has_plens, scale, workers, block_n):
        # one launch of prefix and own split states (kernels/bifurcated_states.py), then merge_states
        cfg, device, n_hb = lc.own, q.device, self.n_hb
        own = has_own and not self.empty_own
        block_no = block_n or (lc.block_no if env_config()["block_no"] else lc.block_np)  # the prefix's tile: same stages
        n_hbo = cfg.n_hb
        self.meta = dict(self.common, HKV=Hkv, GROUP=group, BLOCK_HP=lc.block_hp, N_HB=n_hb, BLOCK_NP=lc.block_np,
                         BLOCK_HO=cfg.block_h, N_HBO=n_hbo, BLOCK_NO=block_no, PAGE_SIZE=self.page_size,
                         HAS_PREFIX_LENS=has_plens, SOFTCAP=self.softcap > 0, HAS_STARTS=self.span > 0,
                         PREFIX_PAGE=self.prefix_page, num_warps=lc.num_warps, num_stages=lc.num_stages)
        d, f, kv = self.dummy_i32, self.f32, self.dummy_kv
        # a run of span keys from any first key lies in at most cdiv(span) + 1 tiles
        tiles_p = max(triton.cdiv(P, lc.block_np), 1) if not self.span else triton.cdiv(self.span, lc.block_np) + 1
        tiles_o = max(triton.cdiv(cap, block_no), 1)
        own_rows = B * Hkv * n_hbo
        stub = (*self.strides_q, *self.strides_p, *self.strides_own[:6], *self.strides_own[-1:], *self.strides_own[6:9],
                1.0, 1.0, 0.0, B, P, 1, 1, 0, cap, 1, own_rows, 1, self.stride_ptb)
        if workers <= 0:
            args = (q, kv, kv, kv, kv, f, f, d, q, f, d, d, d, d, d, d, d, d, *stub)
            occ = runtime.kernel_occupancy(bifurcated_states_kernel, args, dict(self.meta, MERGE=lc.merge_in_kernel),
                                           device, self.info)
            workers = runtime.num_sms(device) * max(1, min(occ, lc.ctas_per_sm))
        # a prefix program takes no more than a program slot's share of all the tiles the launch loads
        # (prefix tiles count once per head block: the blocks after the first read them from L2, but
        # spend the time); fewer, longer prefix programs are the launch's tail
        columns, own_tokens = G * Hkv * n_hb, (own_rows * cap if own else 0)
        keys = min(P, self.span) if self.span else P  # the most keys one column reads
        S = lc.splits or states_prefix_splits(columns, keys, own_tokens, workers)
        S = max(1, min(S, tiles_p))
        total = columns * keys + own_tokens
        chunk_p = triton.cdiv(tiles_p, S)
        self.splits = S = triton.cdiv(tiles_p, chunk_p)
        s_own = 0
        if own:
            s_own = lc.own_splits or triton.cdiv(cap * workers, total)
            s_own = max(1, min(s_own, tiles_o))
            chunk_o = triton.cdiv(tiles_o, s_own)
            s_own = triton.cdiv(tiles_o, chunk_o)
        else:
            chunk_o = 1
        n_prefix = columns * S
        self.grid = (n_prefix + own_rows * s_own,)
        n_states = S + s_own
        self.tail = (*self.strides_q, *self.strides_p, *self.strides_own[:6], *self.strides_own[-1:],
                     *self.strides_own[6:9], self.qk_scale, self.v_scale, self.softcap, B, P, S, chunk_p, n_prefix,
                     cap, chunk_o, own_rows, n_states, self.stride_ptb)
        # merge_states in a second launch: the in-kernel merge (196 registers against 165 at GQA x32)
        # measured slower on every bar case on an H200, side by side: GQA 8k x32 42.2 us against 34.3,
        # x64 53.6 against 49.4, MHA 8k x64 118.6 against 111.4 (bifurcated_H200_notes.md section 7)
        self.merge_in_kernel = lc.merge_in_kernel
        self.meta["MERGE"] = lc.merge_in_kernel
        # not a programmatic dependent launch (runtime.dependent_launch): with the states kernel letting it
        # start at once it measured 1.5-4% slower at GQA 8k x16 and x32, 0.5-4.7% faster at MHA 8k x32 and
        # GQA 8k x64 (H200, same process, 2026-12-02, decode probe 22, benchmarks/probe_pdl.py)
        st_o, st_l, self.launch_merge = states_and_merge("bif_states", device, n_states, B, Hq, D, sinks=self.sinks)
        self.states = (st_o, st_l, runtime.workspace("bif_arrivals", device, (B * Hq,), torch.int32, zero=True))
        self.info.update(grid=self.grid[0], prefix_programs=n_prefix, splits=S, own_splits=s_own, workers=workers,
                         **{k: self.meta[k] for k in ("BLOCK_HP", "N_HB", "BLOCK_NP", "BLOCK_HO", "BLOCK_NO", "num_warps",
                                                      "num_stages")})

    # ------------------------------------------------------------------------------------------
    def _setup_overlap(self, q, k, v, seqlens, block_table, softcap, B, Hq, Hkv, D, G, P, cap, group, has_own,
                       has_plens, scale, workers, block_n):
        # the Gluon prefix states in slots [0, S); the own tokens by decode's split kernel at OWN_STAGES (fewer
        # registers and less shared memory than the states kernel, so two fit beside a Gluon program) in slots
        # [S, S + own splits): one normalised state per split, merge_states' layout
        device, env = q.device, env_config()
        sms = runtime.num_sms(device)
        own = has_own and not self.empty_own
        # the num_warps field is the states path's unless the path field forces this one
        warps = env["num_warps"] if env["path"] == 4 else 0
        own_len = cap if own else 0
        # float8 prefixes take the plain kernel, whose warps convert the tiles (the warp-specialized one has no
        # converting partition)
        fp8 = self.kv_dtype in FP8_DTYPES
        ws = not fp8 and overlap.prefix_warp_specialized(group, P, own_len, B * group, D, Hkv, sms, warps)
        block_m = 128 if ws else overlap.prefix_rows(group, P, own_len, B * group, D, Hkv, sms, warps)
        n_hb = triton.cdiv(B * group, block_m)
        per_sm = overlap.prefix_per_sm(group, P, own_len, env["ctas_per_sm"], block_m)
        S, chunk = overlap.prefix_splits(Hkv * n_hb, triton.cdiv(P, overlap.pg.BLOCK_N), per_sm, sms)
        self.splits = S
        # ORDERED: the own tokens as the prefix's programmatic dependent launch on one stream, not a second stream
        self.ordered = own and overlap.ordered(B * Hkv) and runtime.dependent_launch(device)
        self.own_plan = (DecodePlan(q, k, v, seqlens, block_table, scale, "split", 0, block_n, overlap.OWN_STAGES,
                                    self.ordered, merged=False, k_scale=self.k_scale, v_scale=self.v_scale,
                                    softcap=softcap) if own else None)
        n_states = S + (self.own_plan.splits if own else 0)
        # K/V ring of overlap.prefix_stages; LEANATTN_BIFURCATED_CONFIG's stages field overrides, from 2 (one
        # stage would wait on a tile it only loads later in the same iteration)
        if fp8:
            stages = overlap.fp8_stages(per_sm)
        elif ws:
            stages = overlap.ws_prefix_stages(group, P, own_len)
        else:
            stages = overlap.prefix_stages(per_sm, group, block_m)
        stages = max(2, env["num_stages"] or stages)
        self.prefix = overlap.GluonPrefix(q, P, Hkv, S, chunk, self.qk_scale, stages, self.ordered, block_m, ws,
                                          self.softcap, self.kv_dtype, self.v_scale)
        st_o, st_l, self.launch_merge = states_and_merge("bif_states", device, n_states, B, Hq, D, sinks=self.sinks)
        self.states = (st_o, st_l, st_o[S] if own else None, st_l[S] if own else None)
        self.merge_in_kernel = False
        self.info.update(prefix_programs=self.prefix.grid[0], splits=S, chunk=chunk, ordered=self.ordered,
                         prefix_stages=stages, prefix_rows=block_m, prefix_warp_specialized=ws,
                         own_splits=self.own_plan.splits if own else 0, own_grid=self.own_plan.grid if own else None)

    # ------------------------------------------------------------------------------------------
    def _setup_fused(self, q, lc, B, Hq, Hkv, D, G, P, cap, group, has_own, has_plens, scale, workers, block_n):
        cfg, device = lc.own, q.device
        n_hb = self.n_hb
        self.meta = dict(
            self.common, HQ=Hq, HKV=Hkv, GROUP=group, BLOCK_HP=lc.block_hp, N_HB=n_hb, BLOCK_HO=cfg.block_h,
            N_HBO=cfg.n_hb, BLOCK_NP=lc.block_np, BLOCK_NO=lc.block_no, BLOCK_G=max(16, triton.next_power_of_2(G)),
            BLOCK_B=length_block(B), HAS_OWN=has_own, HAS_PREFIX_LENS=has_plens,
            PAGE_SIZE=self.page_size, ORDER=lc.order, **merge_meta(cfg.block_h, D, group),
            **merge_meta(lc.block_hp, D, lc.block_hp, "_P"), num_warps=lc.num_warps, num_stages=lc.num_stages)
        self.tail = (self.strides_q + self.strides_p + self.strides_own
                     + (self.qk_scale, B, G, P, cap, runtime.num_sms(device)))
        d, f, kv = self.dummy_i32, self.f32, self.dummy_kv
        if workers <= 0:
            occ = runtime.kernel_occupancy(bifurcated_decode_kernel, (q, kv, kv, kv, kv, q, f, d, d, d, d, d, d, f, f, d, f, f, d,
                                                          f, f, d, *self.tail), self.meta, device, self.info)
            workers = runtime.num_sms(device) * max(1, min(occ, lc.ctas_per_sm))
        # whole teams of N_HB programs
        n = max(1, workers // n_hb) * n_hb
        self.grid = (n,)
        rows = B * Hq if has_own else 1  # prefix/own states of each query row, merged by the second arriver
        self.ws = (runtime.workspace("bif_acc_p", device, (2 * n, lc.block_hp, D), torch.float32),
                   runtime.workspace("bif_ml_p", device, (2 * n, 2, lc.block_hp), torch.float32),
                   runtime.workspace("bif_counters_p", device, (n,), torch.int32, zero=True),
                   *piece_workspaces("bif_o", device, n, cfg.block_h, D),
                   runtime.workspace("bif_state_out", device, (2, rows, D), torch.float32),
                   runtime.workspace("bif_state_lse", device, (2, rows), torch.float32),
                   runtime.workspace("bif_arrivals", device, (rows,), torch.int32, zero=True))
        self.info.update(grid=n, teams=n // n_hb, **{k: self.meta[k] for k in (
            "BLOCK_HP", "N_HB", "BLOCK_HO", "BLOCK_NP", "BLOCK_NO", "ORDER", "num_warps", "num_stages")})

    # ------------------------------------------------------------------------------------------
    def run(self, q, pk, pv, k, v, seqlens, block_table, plens, ids, groups, out, lse, first=None, prefix_table=None,
            sinks=None):
        """Launch; ``groups = (counts, starts, order, rank)`` of ``ops.bifurcated.group_layout`` or None;
        ``first (G,)`` int32: each prompt's first key (a plan made with ``span``); ``prefix_table (G, max_pages)``
        int32: each prompt's pages (a plan made with one); ``sinks (Hq,)``: attention sinks, with a plan made for them
        whose path folds them in (``sinks_merged``)."""
        s = lse if sinks is None else sinks  # (the merge's sinks: not read by a plan made without them)
        d = self.dummy_i32
        if self.empty_prefix:
            pk = pv = self.dummy_kv
        if k is None or self.empty_own:
            k = v = self.dummy_kv
        plens = d if plens is None else plens
        seqlens = d if seqlens is None else seqlens
        ids = d if ids is None else ids
        bt = block_table if self.own_paged else d
        counts, starts, order, rank = groups if groups is not None else (d, d, d, d)
        if self.path == "concat" and self.even > 1:
            o, ls = self.partials
            self.even_launch(q, pk, pv, k, v, o, ls, plens, ids, seqlens, bt)
            self.launch_merge(o, ls, out, lse, s)
        elif self.path == "concat" and self.even:
            self.even_launch(q, pk, pv, k, v, out, lse, plens, ids, seqlens, bt)
        elif self.path == "concat":
            self.concat_launch((q, pk, pv, k, v, out, lse, plens, ids, seqlens, bt), out, lse, self.dummy_i32)
        elif self.path == "states":
            st_o, st_l, arrivals = self.states
            self.launch(q, pk, pv, k, v, st_o, st_l, arrivals, out, lse, plens, counts, starts, order, seqlens, bt,
                        d if first is None else first, prefix_table if self.prefix_page else d)
            if not self.merge_in_kernel:
                self.launch_merge(st_o, st_l, out, lse, s)
        elif self.path == "overlap":
            st_o, st_l, own_o, own_l = self.states
            if self.ordered:
                # one stream: the own tokens start once every prefix program has, and end after the prefix
                self.prefix(q, pk, pv, st_o, st_l)
                self.own_plan.launch(q, k, v, own_o, own_l, seqlens, bt, *self.own_plan.extras())
            elif self.own_plan is not None:
                cur = torch.cuda.current_stream(q.device)
                side = overlap.side_stream(q.device, avoid=cur)
                side.wait_stream(cur)
                try:
                    # the prefix first: its programs take one slot on every SM
                    self.prefix(q, pk, pv, st_o, st_l)
                    with torch.cuda.stream(side):
                        self.own_plan.launch(q, k, v, own_o, own_l, seqlens, bt, *self.own_plan.extras())
                finally:  # joined even if a launch raises, so a graph capture is not left forked
                    cur.wait_stream(side)
            else:
                self.prefix(q, pk, pv, st_o, st_l)
            self.launch_merge(st_o, st_l, out, lse, s)
        elif self.path == "split":
            st_o, st_l = self.states
            self.launch_prefix(q, pk, pv, st_o, st_l, plens, counts, starts, order)
            self.launch(q, k, v, out, lse, seqlens, bt, ids, rank, st_o, st_l, *self.ws)
        else:
            self.launch(q, pk, pv, k, v, out, lse, plens, counts, starts, order, seqlens, bt, *self.ws)
