"""The ``overlap`` path of ``leanattn.bifurcated_decode`` on Hopper: the prefix pass in Gluon on the
caller's stream and the own tokens on a second stream at the same time, then ``merge_states``.

The prefix pass is compute-bound (every sample's query rows against every prefix tile) and the own
tokens are memory-bound (each sample's cache read once). In one Triton launch (the ``states`` path)
the two kinds of programs barely overlap: a Triton prefix program needs a second prefix program on
its SM to hide its serial wgmma waits (``benchmarks/results/bifurcated_H200_notes.md`` section 10).
The Gluon prefix kernel (``kernels/bifurcated_prefix_gluon.py``) overlaps its own softmax with its
P@V, so one program per SM suffices and the own-token programs fill the SMs' other slots.
"""
from __future__ import annotations

import torch
import triton

from .. import runtime
from ..checks import FP8_DTYPES
from ..kernels import bifurcated_prefix_gluon as pg

_SIDE_STREAMS: dict = {}
# Gluon's dtypes of the prefix caches the Gluon kernel reads
_GL_DTYPES = ({torch.bfloat16: pg.gl.bfloat16, torch.float16: pg.gl.float16, torch.float8_e4m3fn: pg.gl.float8e4nv,
               torch.float8_e5m2: pg.gl.float8e5} if pg.AVAILABLE else {})

# Pipeline depth of the own-token kernel (decode's split kernel) beside the Gluon prefix: 2 stages (38 KB of
# shared memory at D=128, 64-token tiles) fit two of its programs beside a Gluon program of 115 KB, where decode's
# 3 stages (70 KB) fit one. H200, same process, 2026-12-02, every suite case the path takes, five interleaved
# rounds of graph replays (bifurcated probe 32, benchmarks/probe_overlap_own.py, raw
# bifurcated_probe_overlap_own_H200.json), medians against 3 stages: MHA x256 2.9-9.4% faster (16k 347.6 against
# 380.3 us, 8k 304.8 against 318.1, 32k 490.2 against 504.2), GQA 8k x256 3.1%, GQA 16k and 32k x64 1-2%, MHA x16
# and GQA 16k/32k x256 level; GQA 8k x64 1.0% slower (48.3 against 47.8). 32-token tiles (2 or 3 stages, 21-38 KB)
# were 1-2% ahead of it at MHA 8k and 16k x256, 4-6% behind at MHA 32k x256 and up to 7.6% behind on GQA x64.
OWN_STAGES = 2

# The two launches' order on the SMs. Two streams: the own tokens on a side stream, forked and joined around the
# prefix launch; the hardware then places the two grids' programs in an order that varies (MHA 16k x256 352.7-404.4
# us and 32k x256 495.0-570.3 between consecutive medians of one graph: H200, 2026-12-02, bifurcated probe 33).
# Ordered: one stream; the prefix signals at entry (its TRIGGER) and the own tokens are its programmatic dependent
# launch (decode's split_decode_kernel with AFTER_PRIOR), so their programs start only once every prefix program
# has, and one of them waits for the prefix to finish, which orders the merge launch after both.
# H200, 2026-12-02, every suite case the path takes, two runs on two machines of five interleaved rounds of graph
# replays each (bifurcated probe 35, benchmarks/probe_overlap_ordered.py, raw
# bifurcated_probe_overlap_ordered_H200{_first,}.json), two streams over ordered: 1.1-2.4% slower at MHA x16, 0.1-2.4%
# at GQA x64 (512 (sample, kv head) pairs; MHA 8k x16 65.3 against 63.8 us, GQA 8k x64 48.2 against 47.0), level
# (0.999-1.008) at GQA x256 (2048 pairs), 0.6-2.5% faster at MHA x256 (8192 pairs; 16k 351.6 against 360.5, why is
# not measured). So ordered up to ORDERED_MAX_PAIRS pairs. ORDERED None chooses by that rule, True or False forces
# one; read when a plan is made.
ORDERED = None
ORDERED_MAX_PAIRS = 4096

# Registers per thread of the warp-specialized prefix program's 12 warps (its consumers get (3 x this - 24) / 2
# each, the loading warp group 24). Without a cap ptxas gives 168, the whole register file for 384 threads, and
# no own-token program could run beside the prefix. At 104 the registers leave room for three of decode's split
# kernel at OWN_STAGES (64 registers x 128 threads, 38 KB; 2026-12-03), of which shared memory takes two at 3 prefix
# stages; the consumers then have 144, above the 138 the plain kernel's 64-row loop takes, and no stack (offline,
# Triton 3.6, sm_90a). Room for a third (the prefix ring at 2 stages, or 32-token own tiles) was 0.8-48% slower on
# every x256 case of the suite (H200, 2026-12-03, bifurcated probe 40, raw bifurcated_probe_overlap_room_H200.json).
WS_MAXNREG = 104

# Whether the warp-specialized prefix's two consumer warp groups take turns issuing their products
# (FlashAttention-3's ping-pong; ``kernels/bifurcated_prefix_gluon._attend_prefix``). Off: H200, 2026-12-03, the
# prefix alone -2.2% to +5.4% against without (probe 38), the overlap path level to 1.4% slower (probe 39).
WS_PINGPONG = False


def ordered(pairs: int) -> bool:
    """Whether the own tokens of ``pairs = samples x kv heads`` (sequence, kv head) pairs run as the prefix's
    programmatic dependent launch on the caller's stream (True) or on a side stream (False); ``ORDERED``."""
    return pairs <= ORDERED_MAX_PAIRS if ORDERED is None else bool(ORDERED)


def usable(q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, single: bool, has_plens: bool) -> bool:
    """Whether the overlap path can run this call: an sm_90 GPU, a Triton with Gluon, one prompt whose
    length is the prefix tensor's (``pk/pv (1, P, Hkv, D)``), D of 64 or 128, fp16/bf16 queries over a prefix in
    their dtype or in float8, and a prefix TMA can read as ``(P, Hkv * D)`` (16-byte aligned base and row
    stride)."""
    if not (pg.AVAILABLE and q.is_cuda and not runtime.interpreting() and single and not has_plens):
        return False
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return False
    G, P, Hkv, D = pk.shape
    if G != 1 or P == 0 or D not in (64, 128) or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if pk.dtype != q.dtype and pk.dtype not in FP8_DTYPES:
        return False
    for t in (pk, pv):
        if t.stride(3) != 1 or t.stride(2) != D or (t.stride(1) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    return True


def preferred(rows: int, group: int, capped: bool = False) -> bool:
    """Whether the overlap path is expected to beat the states path, for ``rows = samples x group``
    query rows per kv head. H200, 2026-12-01, one process, 256 own tokens a sample, prefixes of 8k, 16k
    and 32k (``benchmarks/results/bifurcated_sweep_NVIDIA_H200_overlap_rule.json`` and the suite run of
    20:41; notes section 15):

    * 256 rows or more: 4-14% faster on every case but one (GQA 8k x64 47.3 against 49.5 us, 32k x64
      100.4 against 109.9, every x256 case; GQA 16k x64 70.1 against 67.4 is the exception);
    * MHA with 16 samples: 4-8% faster (8k 65.7 against 68.4 us, 16k 95.9 against 101.1, 32k 155.9
      against 169.0);
    * otherwise level or slower (MHA x32/x64 up to 2.5%, GQA x16/x32 up to 13% at 32k x32), and MHA
      or GQA with 4 samples level to 2% slower.

    With logit soft-capping (``capped``) from 256 rows only: a Gluon program takes 64 rows whether or not they are
    real, and the tanh of every score in them is on its critical path. H200, 2026-12-04, ``softcap=50``, one process
    (bifurcated probe 52): MHA 16k x16 150.4 us against 99.8 on the states path; GQA 8k x64 50.6 against 58.3, 32k
    x64 124.2 against 145.4.

    Float8 prefixes take the same rule: H200, 2026-12-04, bifurcated probe 53, the overlap path over e4m3 against
    the states path over it: GQA 8k x64 52.0 against 66.7 us, 32k x64 120.6 against 179.3, 8k x256 166.1 against
    178.4; MHA 16k x16 81.3 against 82.2.
    """
    if capped:
        return rows >= 256
    return rows >= 256 or (group == 1 and 8 < rows <= 16)


def prefix_per_sm(group: int, prefix_len: int, own_len: int, per_sm: int = 0, rows: int = 64) -> int:
    """Gluon prefix programs per SM: one when the own tokens are a large share of the work, leaving each
    SM's other slots to them; two when the prefix dominates. The prefix's FLOPs over the own tokens'
    bytes is ``group * prefix_len / own_len`` up to a constant; on an H200 (2026-12-01, one process,
    section 15 of the notes) one per SM was faster at ratios 32-128 (GQA 8k x16-x64, MHA 8k x64: 42.6
    against 47.7 us at GQA 8k x64) and two per SM at 256-512 (GQA 16k x256: 198.3 against 214.7 us;
    GQA 32k x64: 93.8 against 111.2). A program of 128 rows (``prefix_rows``) is one per SM. ``per_sm``
    (``LEANATTN_BIFURCATED_CONFIG``'s fifth field on this path) overrides the choice."""
    return per_sm or (1 if rows > 64 or (own_len and group * prefix_len <= 192 * own_len) else 2)


def prefix_stages(per_sm: int, group: int, rows: int = 64) -> int:
    """Depth of the Gluon prefix program's K/V ring. Three stages (115 KB of shared memory at D=128) fit
    two prefix programs per SM, or one beside two own-token programs of 38 KB. At one per SM a fourth
    stage (147 KB) still fits beside two own-token programs; H200, 2026-12-02, graph replays, one process
    (bifurcated probe 36, ``bifurcated_sweep_NVIDIA_H200_prefix_stages.json``): with a GQA group it was
    6-8% faster at GQA 8k x64 (44.1 against 47.2 us) and 4% at GQA 8k x256 (128.2 against 133.2); MHA
    level within 1.4% (8k x16 64.9 against 64.0-64.4, 8k x256 308.8-309.5 against 309.8). At two per SM
    it leaves one (GQA 32k x256 406 against 322 us). At 128 rows (131 KB at 3 stages) a fourth stage leaves
    room for one own-token program, not two: 0.8-13% slower where ``prefix_rows`` takes 128 rows (probe 37)."""
    return 4 if per_sm == 1 and group > 1 and rows == 64 else 3


def ws_prefix_stages(group: int, prefix_len: int, own_len: int) -> int:
    """Depth of the warp-specialized prefix program's K/V ring (``prefix_warp_specialized``): four stages (164 KB at
    D=128) where the prefix dominates (r = group * prefix_len / own_len of 512 or more, or no own tokens), since
    they leave room for one own-token program beside it, not two; three (131 KB) otherwise. H200, 2026-12-03 (the
    sweep of ``prefix_warp_specialized``): four stages 0.96-0.97 of three at GQA 32k x64/x256, 1.10 at GQA 16k
    x64/x256, 1.02-1.07 at MHA x256; the prefix alone 0.96-1.02."""
    return 4 if not own_len or group * prefix_len >= 512 * own_len else 3


def prefix_rows(group: int, prefix_len: int, own_len: int, rows: int, head_dim: int, kv_heads: int, sms: int,
                num_warps: int = 0) -> int:
    """Stacked query rows of one Gluon prefix program: 64 (one warp group of 4 warps, ``prefix_per_sm`` programs
    per SM), or 128 (two warp groups of 4 warps sharing one K/V ring, one program per SM).

    Two programs of 64 rows (115 KB each at D=128) fill an SM's shared memory, so where the prefix takes two per
    SM the own tokens run only after it; one program of 128 rows (131 KB) keeps the tensor cores as busy and
    leaves room for two own-token programs. H200, 2026-12-02, graph replays, one process (a launch sweep and
    bifurcated probe 37, five interleaved rounds; ``bifurcated_sweep_NVIDIA_H200_prefix_rows.json``,
    ``bifurcated_probe_prefix_rows_H200.json``), 128 rows over the default, by ``r = group * prefix_len /
    own_len``, the prefix's FLOPs over the own tokens' bytes up to a constant:

    * r = 128 to 256 (GQA 8k x256, 12k x64, 16k x64/x128/x256; MHA 32k x256): 0.886-0.975 (GQA 16k x64 60.1
      against 67.8 us, MHA 32k x256 466.5 against 520.5);
    * r = 384 to 512 (GQA 24k, 32k): the prefix dominates and the own-token programs beside it slow it down,
      0.957 (GQA 24k x64) to 1.100 (GQA 32k x256);
    * r = 32 to 64 (MHA 8k and 16k x256): level to 1.019;
    * GQA 8k x64 (r = 128, 16 tiles a program at 128 rows): 47.9 against 44.3 us, so 128 rows only where each
      program keeps 24 tiles or more; MHA with 16 samples (16 rows per kv head): 6-21% slower.

    So 128 rows at D=128, 256 rows per kv head or more, r in [128, 256] and 24 tiles a program or more (at one
    program per SM: two programs of 128 rows do not fit on an SM, so a ``ctas_per_sm`` override of 2 only doubles
    the splits). ``num_warps``: ``LEANATTN_BIFURCATED_CONFIG``'s third field where its path field forces this path
    (4), 0 otherwise; 4 or 8 forces 64 or 128 rows, 12 the warp-specialized kernel's 128
    (``prefix_warp_specialized``)."""
    if num_warps not in (0, 4, 8, 12):
        raise ValueError(f"LEANATTN_BIFURCATED_CONFIG: expected the num_warps field (third) of the overlap path "
                         f"in (0, 4, 8, 12), got {num_warps}")
    if num_warps:
        return min(16 * num_warps, 128)
    if head_dim != 128 or rows < 256 or not own_len or not 128 * own_len <= group * prefix_len <= 256 * own_len:
        return pg.BLOCK_M
    return 128 if _wide_program_tiles(prefix_len, rows, kv_heads, sms) >= 24 else pg.BLOCK_M


def prefix_warp_specialized(group: int, prefix_len: int, own_len: int, rows: int, head_dim: int, kv_heads: int,
                            sms: int, num_warps: int = 0) -> bool:
    """Whether the Gluon prefix runs warp-specialized (``kernels/bifurcated_prefix_gluon.prefix_gluon_ws_kernel``:
    two consumer warp groups of 64 rows, each its own partition, and a loading warp; 128 rows a program, one per
    SM). H200, 2026-12-03, graph replays, one process (a launch sweep, ``bifurcated_sweep_NVIDIA_H200_ws.json``;
    bifurcated probe 38, ``bifurcated_probe_ws_prefix_H200.json``; notes section 25), over the default then:

    * GQA with r = group * prefix_len / own_len of 256 to 512: 0.85-0.92 (16k x64 55.9 against 60.5 us, 16k x256
      164.3 against 186.2, 32k x64 83.5 against 98.2 at 4 stages, 32k x256 274.9 against 325.1 at 4 stages);
    * GQA 8k x256 (r = 128) 0.99, GQA 8k x64 (16 tiles a program) 1.07; MHA 8k-32k x256 level to 1.01;
    * the prefix alone (no own tokens; probe 38): 0.89-0.99 of two 64-row programs per SM, 0.72-0.85 of
      ``prefix_rows``' 128-row program, whose two warp groups meet at a block-wide barrier before each refill.

    Bifurcated probe 39 (the same day, 05:5x-06:1x, ``bifurcated_probe_overlap_pingpong*_H200.json``; five
    interleaved rounds, three runs) forced it on the x256 cases the rule above left out: GQA 8k x256 (r = 128)
    0.983-0.989 of the default (128 plain rows), MHA 32k x256 (r = 128) 0.966-0.983, MHA 16k x256 (r = 64, 64 rows
    by default) 0.989-0.999, MHA 8k x256 (r = 32) 0.996-0.997. So at D=128 with 256 rows per kv head or more and 24
    tiles a program or more, where r is 32 or more (as far as measured) or there are no own tokens. ``num_warps`` as
    for ``prefix_rows``: 12 forces this kernel, any other value but 0 forbids it."""
    if num_warps:
        return num_warps == 12
    if head_dim != 128 or rows < 256 or group * prefix_len < 32 * own_len:
        return False
    return _wide_program_tiles(prefix_len, rows, kv_heads, sms) >= 24


def _wide_program_tiles(prefix_len: int, rows: int, kv_heads: int, sms: int) -> int:
    """Prefix tiles each program takes at 128 rows a program and one program per SM (``prefix_splits``' chunk):
    below 24 neither 128-row kernel keeps its ring busy long enough (GQA 8k x64: 16)."""
    return prefix_splits(kv_heads * triton.cdiv(rows, 128), triton.cdiv(prefix_len, pg.BLOCK_N), 1, sms)[1]


def prefix_splits(columns: int, tiles: int, per_sm: int, sms: int) -> tuple:
    """``(S, chunk)``: prefix splits per column (kv head x block of ``prefix_rows`` rows) and tiles per split, for
    ``per_sm`` programs per SM (``prefix_per_sm``) over ``sms`` SMs."""
    S = max(1, min(tiles, (per_sm * sms) // max(columns, 1)))
    chunk = triton.cdiv(tiles, S)
    return triton.cdiv(tiles, chunk), chunk


def side_stream(device: torch.device, avoid: torch.cuda.Stream = None) -> torch.cuda.Stream:
    """The side stream of ``device`` for the own tokens, reused across calls. ``torch.cuda.Stream`` hands out
    streams from a round-robin pool, which a caller's stream may come from too: a side stream that is ``avoid``
    (the caller's stream) would run the two launches one after the other, so it is replaced by the pool's next one.

    The launches' order decides where the prefix programs land (notes section 15: the overlap happens only when
    they are dispatched first), so the prefix goes first, on the caller's stream. A prefix on a side stream of the
    highest priority, own tokens on the caller's, measured level or slower (H200, 2026-12-02, bifurcated probe 26,
    raw ``bifurcated_probe_overlap_priority.json``, graph replays: within 0.6% on seven cases, MHA 32k x256 540.0
    against 520.1 us) and was removed."""
    key = device.index if device.index is not None else torch.cuda.current_device()
    stream = _SIDE_STREAMS.get(key)
    while stream is None or stream == avoid:
        stream = _SIDE_STREAMS[key] = torch.cuda.Stream(device=device)
    return stream


def fp8_stages(per_sm: int) -> int:
    """Depth of the float8 ring of the Gluon prefix program over a float8 prefix (16 KB a stage at D=128, beside its
    64 KB of fp16 buffers): two where two programs share an SM (112 KB each at 64 rows), four at one per SM. H200,
    2026-12-04 (bifurcated probe 54): at 128 rows three stages level with four (0.99-1.02); at 64
    rows one an SM over four stages level with the default where one an SM is the default."""
    return 2 if per_sm > 1 else 4


class GluonPrefix:
    """Launch constants of the Gluon prefix pass of one plan; ``__call__`` builds the TMA descriptors of
    this call's prefix (a few microseconds of host time; a plan that kept them would keep the caller's
    prefix tensors alive) and launches, directly after the first launch (``runtime.Launcher``). ``qk_scale`` and
    ``softcap`` (> 0: logit soft-capping) as ``ops/decode.score_scales`` gives them. ``kv_dtype``: the prefix's
    dtype, the query's or float8 (``v_scale`` its values' scale), which the warp-specialized kernel does not read."""

    def __init__(self, q, P: int, Hkv: int, S: int, chunk: int, qk_scale: float, stages: int = 3,
                 trigger: bool = False, block_m: int = pg.BLOCK_M, warp_specialized: bool = False,
                 softcap: float = 0.0, kv_dtype: torch.dtype = None, v_scale: float = 1.0):
        B, Hq, D = q.shape
        group = Hq // Hkv
        R = B * group
        block_m = 128 if warp_specialized else block_m
        n_hb = triton.cdiv(R, block_m)
        kv_gl = _GL_DTYPES[kv_dtype or q.dtype]
        fp8 = kv_gl.is_fp8()
        if fp8 and warp_specialized:
            raise ValueError(f"GluonPrefix: expected a 16-bit prefix on the warp-specialized kernel, got {kv_dtype}")
        # the products' dtype: fp16 over float8 tiles
        q_gl = pg.gl.float16 if fp8 else _GL_DTYPES[q.dtype]
        self.kv_layout = pg.gl.NVMMASharedLayout.get_default_for([pg.BLOCK_N, D], kv_gl)
        meta = dict(HQ=Hq, GROUP=group, HEAD_DIM=D, BLOCK_N=pg.BLOCK_N, STAGES=stages, MASK_TAIL=P % pg.BLOCK_N != 0,
                    TRIGGER=trigger, SOFTCAP=softcap > 0)
        if warp_specialized:  # 4 warps here are the default partition's; the kernel adds its workers' 8
            meta.update(Q_SMEM=pg.gl.NVMMASharedLayout.get_default_for([64, D], q_gl), num_warps=4,
                        maxnreg=WS_MAXNREG, CONSUMER_REGS=(3 * WS_MAXNREG - 24) // 16 * 8, PINGPONG=WS_PINGPONG)
        else:
            meta.update(BLOCK_M=block_m, Q_SMEM=pg.gl.NVMMASharedLayout.get_default_for([block_m, D], q_gl),
                        num_warps=block_m // 16)
            if fp8:
                meta.update(KV16_SMEM=pg.gl.NVMMASharedLayout.get_default_for([pg.BLOCK_N, D], pg.gl.float16))
        if triton.cdiv(triton.cdiv(P, pg.BLOCK_N), chunk) != S:  # an empty split would wait on a tile never loaded
            raise ValueError(f"GluonPrefix: expected {S} splits of {chunk} tiles to leave none empty, "
                             f"got {triton.cdiv(triton.cdiv(P, pg.BLOCK_N), chunk)} non-empty")
        self.grid = (Hkv * S * n_hb,)
        kernel = pg.prefix_gluon_ws_kernel if warp_specialized else pg.prefix_gluon_kernel
        self.launch = runtime.Launcher(kernel, self.grid, meta,
                                       (q.stride(0), q.stride(1), qk_scale, softcap, v_scale, B, P, R, n_hb, S,
                                        chunk, triton.cdiv(P, pg.BLOCK_N)))
        self.shape = (P, Hkv * D)
        self.block = [pg.BLOCK_N, D]

    def __call__(self, q, pk, pv, st_o, st_l) -> None:
        k2, v2 = pk[0].view(self.shape), pv[0].view(self.shape)
        self.launch(q, pg.TensorDescriptor(k2, list(self.shape), [k2.stride(0), 1], self.block, self.kv_layout),
                    pg.TensorDescriptor(v2, list(self.shape), [v2.stride(0), 1], self.block, self.kv_layout), st_o, st_l)
