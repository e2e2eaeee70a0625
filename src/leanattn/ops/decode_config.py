"""Launch configuration of the decode kernels: tile sizes, warps, pipelining, grid.

Tuned on an H100/H200 (see benchmarks/results/); the interpreter gets small tiles so that CPU
tests cut heads into several tiles and exercise the stream-K reduction.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import triton

from .. import runtime
from ..schedules.stream_k import programs_used_py
from .stream_k_launch import GRAPHS, IN_KERNEL, LAUNCH


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    block_n: int      # KV tokens per tile
    block_h: int      # query-head rows per tl.dot (one GQA group, padded to >= 16)
    n_hb: int         # head blocks per kv head (groups larger than block_h)
    num_warps: int
    num_stages: int
    ctas_per_sm: int  # cap on resident programs per SM for the persistent grid
    load: int = 0     # K/V load path of a contiguous cache: 0 pointers, 1 block pointers, 2 TMA


# (head_dim) -> (block_n, num_warps, num_stages, ctas_per_sm) on CUDA. From the H100 sweeps in
# benchmarks/results/decode_sweep*_NVIDIA_H100_80GB_HBM3.json (geometric mean over their cases):
# the best configs are within 1-2% of each other on long contexts; short ones and D=64 separate them.
#
# D=128 is capped at 2 programs per SM although 3 fit since pieces became calls (kernels/decode.py:
# decode_piece): with equal lengths the kernel cuts over fewer programs than it launches
# (schedules/stream_k.programs_used), and the idle slots of a fuller grid leave SMs unevenly loaded.
# H200, same run: mha 64k 262.5 us with 264 launched (256 used) against 280.6 with 396 launched
# (256 used) and 263.8 over 264 unaligned; paged64 gqa B=4 32k 139.5 against 160.4 and 144.0.
#
# D=128 takes 64-token tiles over 3 stages (two 96 KB pipelines per SM): same process, H200, 2026-12-01
# (benchmarks/results/decode_probes_H200_2026-12-01.md), against 128-token tiles over 2 stages it is
# ahead on 10 of 14 contiguous suite cases (mha 4k 31.9 against 32.8 us, gqa B=16 8k 139.3 against
# 141.0, gqa B=1 32k 50.9 against 52.0; cuDNN 30.7 / 133.6 / 49.0) and at most 1.1% behind on the rest
# (mha 64k 265.1 against 262.1, ragged 0.3-0.6%). 8 warps or 2 stages at 64 tokens lost everywhere.
#
# D=256 takes 64-token tiles over 3 stages at one program per SM (206 registers, 141 KB of shared memory):
# same process, H200, 2026-12-01 (benchmarks/results/decode_sweep_NVIDIA_H200_d256_shapes.json), against
# the 32-token tiles it had, it is ahead on all eight D=256 shapes measured, by 1% (16/8 B=1 8k, 33.8
# against 34.1 us) to 9% (32/8 B=4 16k, 139.2 against 152.5; the suite's 16/8 B=1 32k 82.0 against 84.4;
# ragged and paged64 8%). Two per SM (64-token tiles, 2 stages) won only the ragged tail (327 against 337).
_CUDA_TABLE = {
    64: (128, 4, 2, 4),
    128: (64, 4, 3, 2),
    256: (64, 4, 3, 1),
    # MLA's 512-wide latent (ops/mla.py; its 64 rotary columns ride along): 64-token tiles, one program per SM.
    # H200, 2026-12-05, bench_mla.py, lean, one process a config: 16 heads B=1 32k 47.7 us against 63.8 with
    # (32, 8, 2, 2) and 61.2 with (32, 4, 2, 2); 16 heads B=32 4k 71.3 against 86.9 and 69.5; 128 heads B=1 32k
    # 84.8 against 120.4 and 92.8 (benchmarks/results/mla_H200*.json, BENCHMARK_RUNS.md). Each of those had 2 stages,
    # which Triton's pipeliner gives one shared buffer: its TTGIR (offline_resources.py --ptx) loads tile j + 1 only
    # after tile j's products, then waits for it, so with one program per SM no load overlaps any product. 3 stages
    # give two buffers, tile j + 1 in flight while tile j is used, as D=128 and D=256 run (above); offline, 126-254
    # registers, no spills, 164-184 KB of shared memory. Timed since (probe_mla.py, CUDA graphs): 0.81-0.86x the
    # 2-stage tiles' time on an H200 (2026-12-05); on an H100 (2026-12-07) 37.2/73.5/67.8 us against 40.2/77.7/86.0
    # at 2 stages, 37.7/79.0/77.2 at 4 warps and 44.2/79.6/115.7 with 32-token tiles two a SM.
    512: (64, 8, 3, 1),
}


# Entries whose shared memory only sm_90 and later give a program (MLA's two 72 KB buffers: 164-184 KB; an A100 gives
# 163 KB, sm_86/89 99 KB), and what the others take instead: one buffer, 94-115 KB (offline, sm_90a).
_SMEM_HEAVY = {512: (64, 8, 2, 1)}
# and over a float8 latent cache (sm_89 and later): its 64-token tiles take 90 KB at 16 heads and 108 KB at 128
# (offline, sm_90a), the latter past sm_89's 99 KB; 32-token tiles take 55-61 KB
_SMEM_HEAVY_FP8 = {512: (32, 8, 3, 1)}


# Paged caches (tensors of pointers, one page id per token or per tile): 64-token tiles over 3 stages.
# Same-run H200 sweep (benchmarks/results/decode_sweep_NVIDIA_H200_load.json), against the contiguous
# default (128, 4, 2, 4): paged64 gqa B=4 32k 143.6 us against 150.9, paged64 ragged-tail 176.8 against
# 187.7, paged16 147.6 against 151.5 and 184.5 against 187.1. Unmeasured head dims keep the table above.
# Two programs per SM, as the contiguous D=128 entry and for its reason: paged64 gqa B=4 32k ran 162 us
# with 3 per SM launched and 256 used (suite run of 2026-12-01 08:51) against 139.5 with 264 launched
# (probe, same H200, an hour earlier); with this entry the suite runs of 10:29 and 10:40 measured 140
# and 138 us (cuDNN 138 and 136).
_CUDA_PAGED_TABLE = {
    128: (64, 4, 3, 2),
}


# Contiguous float8 caches (one byte an element, converted to fp16 in registers) at D=128 take 128-token tiles over
# 3 stages, as many bytes a tile as bf16's 64-token tiles. Same process, H200, 2026-12-03 (decode probe 50,
# benchmarks/results/decode_probe_fp8_tiles_H200.json), e4m3 caches, against the bf16 table's (64, 4, 3, 2):
# mha B=1 64k 165.8 us against 195.6, gqa B=1 128k 94.6 against 104.7, gqa B=4 32k 94.7 against 106.4, gqa
# B=64 4k 196.1 against 220.3, ragged-uniform B=32 277.0 against 323.1 (11-18%); 8 warps or 2 stages lost
# everywhere. D=64 and D=256 measured best on their bf16 entries (256-token tiles at D=64 10-17% slower,
# 128-token tiles at D=256 27-33% slower). Paged caches whose pages a 64-token tile does not fit (a page id per
# token) take the same: paged16 gqa B=4 32k 118.0 us against 143.6 (bf16 cache 144.1; same process, raw
# decode_probe_fp8_tiles_H200_128_token_default.json); pages of 64 keep the paged table's 64-token tiles, one page a
# tile (paged64 gqa B=4 32k 108.1 against 118.0 at 128 tokens, ragged tail 137.7 against 157.8).
_CUDA_FP8_TABLE = {
    128: (128, 4, 3, 2),
}


# MLA's 512-wide latent over a float8 cache, any pages: bf16's 64-token tiles over 3 stages. Its tiles are converted
# to fp16 in registers for both products; at 64 tokens ptxas keeps 255 registers and spills 104-352 bytes (lean
# kernel, Triton 3.6, sm_90a, offline), 32 tokens none at 16 heads and 0-72 bytes at 128, yet on an H100
# (2026-12-07, probe_mla.py, CUDA graphs) 64-token tiles took 45.7/95.5/104.7 us against 32-token tiles'
# 48.3/106.2/133.5 (16 heads B=1 32k, B=32 4k, 128 heads B=1 32k). Either is slower than the bf16 cache
# (37.2/73.5/67.8 us): the conversions, not the bytes, bound it. Since the tiles of 16 heads convert once for both
# products (kernels/attend.converted_once; H100 2026-12-07 21:1x), 16 heads take 40.8/69.6 us against bf16's
# 37.3/73.1; 128 heads are as before.
_CUDA_FP8_LATENT = {512: (64, 8, 3, 1)}


# Small launches at D <= 128 take 64-token tiles over 3 stages, two per SM, so each program keeps its
# few loads in flight. Small: at most 32768 elements of K per SM at capacity (128 KB of bf16 K and V;
# two 64-token tiles per program at two per SM at D=128, four at D=64). H200, same process, D=64 decode
# against the table's 128-token, 2-stage tiles: 32/8 B=1 8448 tokens 20.4 us against 25.5, four
# shorter cases 4-14% faster (probe 7 of benchmarks/results/decode_probes_H200_2026-12-01.md); D=256
# measured level, so it keeps its table. At D=128 it is the table's entry. The one-sample bifurcated
# path takes the same config.
_CUDA_SMALL = (64, 4, 3, 2)
_SMALL_ELEMS_PER_SM = 2 * 2 * 64 * 128


def _env_override(cfg: tuple) -> tuple:
    """``LEANATTN_DECODE_CONFIG=block_n,num_warps,num_stages,ctas_per_sm[,load]`` (benchmark sweeps)."""
    raw = os.environ.get("LEANATTN_DECODE_CONFIG")
    if not raw:
        return cfg
    try:
        vals = tuple(int(x) for x in raw.split(","))
    except ValueError:
        vals = ()
    if len(vals) not in (4, 5) or min(vals) < 0 or (len(vals) == 5 and vals[4] > 2):
        raise ValueError("LEANATTN_DECODE_CONFIG: expected 'block_n,num_warps,num_stages,ctas_per_sm[,load]' "
                         f"with load 0, 1 or 2, got {raw!r}")
    return vals


def length_block(batch: int) -> int:
    """``BLOCK_B``: the width of the lengths vector a persistent kernel computes its schedule from, the power
    of two ``>= batch``. ``LEANATTN_DECODE_BLOCK_B_MIN`` (a power of two) sets a floor, for probes. A vector
    no wider than the batch keeps the block-wide reductions before the first K/V load short: with one
    sequence, 360 instead of 490 SASS lines and 4 instead of 40 shuffles (decode probe 17), 0.3 us faster
    than a 16-wide vector on gqa B=1 32k and mha B=1 4k (H200, same process; decode probe 17b, 2026-12-02)."""
    raw = os.environ.get("LEANATTN_DECODE_BLOCK_B_MIN", "1")
    if not raw.isdigit() or int(raw) < 1 or int(raw) & (int(raw) - 1):
        raise ValueError(f"LEANATTN_DECODE_BLOCK_B_MIN: expected a power of two >= 1, got {raw!r}")
    return max(int(raw), triton.next_power_of_2(max(batch, 1)))


def load_path(load: int, k_cache: torch.Tensor, v_cache: torch.Tensor, paged: bool) -> int:
    """The ``LOAD`` a launch can use: TMA (2) needs a contiguous cache whose row bases and token
    stride are 16-byte aligned; otherwise tensors of pointers (0). Paged caches always take 0."""
    if paged:
        return 0
    if load == 2:
        for t in (k_cache, v_cache):
            size = t.element_size()
            if t.data_ptr() % 16 or any(s * size % 16 for s in t.stride()[:3]):
                return 0
        runtime.tma_allocator()
    return load


def decode_config(head_dim: int, group: int, device: torch.device, block_n: int | None = None,
                  page_size: int = 0, kv_rows: int = 0, capacity: int = 0, num_stages: int = 0,
                  fp8: bool = False) -> DecodeConfig:
    """Launch configuration of ``head_dim``-wide decode with ``group`` query heads per kv head over a paged cache
    of ``page_size`` tokens a page, or a contiguous one (0).

    ``kv_rows`` (sequences x kv heads) and ``capacity`` (tokens per sequence), when given, size the
    work at full capacity: small contiguous launches at D <= 128 take ``_CUDA_SMALL``. ``num_stages``
    (a launch that shares its SMs with another kernel's, ``ops/bifurcated_overlap.OWN_STAGES``) replaces
    the table's pipeline depth. ``fp8`` (a float8 cache read with 16-bit queries: fp32 ones convert its tiles to
    fp32, twice the registers) takes ``_CUDA_FP8_TABLE`` where it has the head dim, paged caches only where
    ``page_size`` is not a multiple of 64, and ``_CUDA_FP8_LATENT`` (MLA) for any pages.
    ``block_n``, ``LEANATTN_DECODE_CONFIG`` and ``LEANATTN_DECODE_LOAD`` override.
    """
    # (at MLA's 512-wide latent 64 rows spill: 255 registers and 328 bytes of stack, where 32 rows take 234 and none;
    # Triton 3.6, sm_90a, offline, 2 stages; at 3 stages 32 rows take 254 and none. Offline again on 2026-12-07, 128
    # heads, 64-token pages: 32 rows run mma.sync, and a float8 cache's V operand is read from shared memory a byte
    # at a time (128 ld.shared.b8 in the PTX); 64 rows run wgmma with no byte loads, but spill 336-728 bytes in bf16
    # and 1.1-2.9 KB over float8 at 8 or 16 warps, the query rows held in registers by each warp group)
    block_h = max(16, min(64 if head_dim <= 256 else 32, triton.next_power_of_2(group)))
    n_hb = triton.cdiv(group, block_h)
    if runtime.interpreting() or not runtime.gpu_target(device):
        return DecodeConfig(block_n or 16, block_h, n_hb, 4, 1, 1, _env_load(0))
    paged = page_size > 0
    table = _CUDA_PAGED_TABLE if paged and head_dim in _CUDA_PAGED_TABLE else _CUDA_TABLE
    if fp8 and head_dim in _CUDA_FP8_TABLE and (not paged or page_size % 64):
        table = _CUDA_FP8_TABLE
    if fp8 and head_dim in _CUDA_FP8_LATENT:
        table = _CUDA_FP8_LATENT
    entry = table[head_dim]
    if head_dim in _SMEM_HEAVY and (runtime.capability(device) or (9, 0)) < (9, 0):
        entry = (_SMEM_HEAVY_FP8 if table is _CUDA_FP8_LATENT else _SMEM_HEAVY)[head_dim]
    if (kv_rows and not paged and head_dim <= 128 and not block_n
            and kv_rows * n_hb * capacity * head_dim <= _SMALL_ELEMS_PER_SM * runtime.num_sms(device)):
        entry = _CUDA_SMALL
    if num_stages:
        entry = entry[:2] + (num_stages,) + entry[3:]
    bn, warps, stages, cps, *load = _env_override(entry)
    return DecodeConfig(block_n or bn, block_h, n_hb, warps, stages, cps, _env_load(*load or (0,)))


def _env_load(default: int) -> int:
    """``LEANATTN_DECODE_LOAD=0|1|2`` overrides the load path (tests run each under the interpreter)."""
    raw = os.environ.get("LEANATTN_DECODE_LOAD")
    if raw is None:
        return default
    if raw not in ("0", "1", "2"):
        raise ValueError(f"LEANATTN_DECODE_LOAD: expected 0, 1 or 2, got {raw!r}")
    return int(raw)


def across_rows(head_dim: int, element_size: int) -> bool:
    """Whether stream-K launches whose cut is aligned with rows order their programs across rows
    (``schedules/stream_k.across_rows``): where one head's slice of a token is one 128-byte line (D=64 in
    16 bits). H200, same process, 2026-12-02 (decode probe 23, benchmarks/probe_order.py): d64 mha B=1 64k
    143.8 against 145.8 us; at D=128 and 256 level or 0.1-0.6% slower (mha B=1 4k 31.6 against 31.4, d256
    80.2 against 79.7). ``LEANATTN_ACROSS_ROWS=0`` or ``1`` overrides (read when a plan is made)."""
    flag = runtime.env_flag("LEANATTN_ACROSS_ROWS")
    return head_dim * element_size <= 128 if flag is None else flag


# One sequence whose rows are cut into at least this many pieces (or cut unaligned) is merged by a second
# launch. H200, same process, 2026-12-01 (benchmarks/results/decode_probe_merge_launch.json), lean with
# the merge launch against the in-kernel merge: gqa B=1 32k (8 rows of 32 pieces) 50.2 against 51.2 us,
# decode over copied caches of gqa 8k+256 (33 pieces) 23.5 against 24.5, of mha 8k+256 (unaligned)
# 53.0 against 54.2; d256 B=1 32k (16 pieces) 81.7 against 82.2. At 8 pieces a row (mha B=1 4k and 16k)
# the in-kernel merge is 0.4-0.7% ahead, and with several sequences it is 0.7-2% ahead on every suite
# case (gqa B=4 32k to B=64 4k, ragged, paged): their rows' merges fall at different times and overlap
# other rows' tiles, where one sequence's rows all end, and wait on their merges, together.
MERGE_LAUNCH_PIECES = 16
# The same where the merge is a programmatic dependent launch (runtime.dependent_launch), which takes 0.6-0.7
# us off the second launch: H200, same process, 2026-12-02 (decode probe 22, benchmarks/probe_pdl.py), the
# merge launch with PDL against the in-kernel merge at 8 pieces a row: mha B=1 4k 31.1 against 31.4 us, 16k
# 78.4 against 78.6, 64k 256.9 against 258.2. Several sequences still merge in-kernel (gqa B=16 8k: 140.1
# against 137.3).
MERGE_LAUNCH_PIECES_PDL = 8


def merge_in_launch(device: torch.device, head_dim: int, tiles: int, batch: int, rows_per_seq: int, grid: int,
                    sms: int) -> int:
    """How a stream-K launch merges the pieces of its cut rows (``ops/stream_k_launch.py``): in-kernel by
    the last to arrive (``IN_KERNEL``), in a second launch (``LAUNCH``), or in a second launch only when
    captured in a CUDA graph (``GRAPHS``), from the cut at full capacity: ``batch * rows_per_seq`` rows of
    ``tiles`` tiles over the programs of ``grid`` on ``sms`` SMs that the kernel uses
    (``schedules/stream_k.programs_used``; ``sms = 0``: all of them).

    ``GRAPHS`` for one sequence (``batch == 1``) whose rows are cut into at least ``MERGE_LAUNCH_PIECES``
    pieces (``MERGE_LAUNCH_PIECES_PDL`` where the merge is a programmatic dependent launch), or cut unaligned
    (a program whose range ends inside a row and goes on into the next merges the first before it starts the
    second); ``IN_KERNEL`` otherwise. Head dims below 128 keep the
    in-kernel merge: at D=64 the kernel without it compiled to 142 registers (3 programs per SM instead
    of 4, and a grid sized for 3) and d64 mha 64k ran 13% slower (decode probe 16). Capped to the in-kernel
    merge's 4 programs per SM (128 registers, ``StreamKLaunch``) over the same grid it no longer loses, but it
    does not win either (141.5 us in-kernel against 142.3, decode probe 16b, 2026-12-02).
    ``LEANATTN_DECODE_MERGE=0`` (in-kernel) or ``1`` (a second launch, eager calls included) overrides.
    """
    flag = runtime.env_flag("LEANATTN_DECODE_MERGE")
    if flag is not None:
        return LAUNCH if flag else IN_KERNEL
    if runtime.interpreting() or not runtime.gpu_target(device) or head_dim < 128 or tiles < 1 or batch != 1:
        return IN_KERNEL
    used = programs_used_py([tiles], rows_per_seq, grid, sms) if sms else grid
    total = rows_per_seq * tiles
    per = -(-total // max(used, 1))  # tiles per program
    if per >= tiles:  # whole rows per program, or at most two pieces a row: little to merge
        return IN_KERNEL
    aligned = total % used == 0 and tiles % per == 0
    least = MERGE_LAUNCH_PIECES_PDL if runtime.dependent_launch(device) else MERGE_LAUNCH_PIECES
    return GRAPHS if not aligned or tiles // per >= least else IN_KERNEL
