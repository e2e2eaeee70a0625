"""The KV tile loop every decode-style kernel shares: one query row block against a range of KV tiles.

``attend_any`` folds KV tiles ``[tile_lo, tile_hi)`` of one (sequence, kv head) row into an online
softmax state ``(acc, m, l)`` for the query heads stacked as the rows of ``q``, so K and V are read
once per row block. Three load paths give the same state (``LOAD``): tensors of pointers
(``attend_tiles``, any cache, paged included), block pointers and TMA descriptors (contiguous
caches). Scores are in log2 units (``qk_scale = softmax_scale * log2(e)``; with a soft cap, ``softmax_step``).

A float8 cache (e4m3 or e5m2), or an int8 one (``leanattn.decode``), is read as it is stored, one byte an element,
and each tile is converted to fp16 in registers before its products (int8 values are exact in fp16; bf16 queries
are scaled into fp16 once a range: ``fp8_query``; the probabilities are taken 2**15 times their values:
``fp8_shift``). Its dequantisation scales cost no pass over a tile: K's is
folded into ``qk_scale`` by the caller, V's multiplies the range's fp32 accumulator once at the end (``v_scaled``),
not the probabilities before their cast to the query's dtype, where a small scale pushed fp16 probabilities into
subnormals (relative error 1-25% at ``v_scale`` 1e-2 to 1e-3 with fp16 queries; found in review, under the
interpreter). Caches in the query's dtype compile to the same code as before the scales.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.target_info import cuda_capability_geq

from .. import runtime

# Where float8 tiles convert by inline PTX (``from_byte``): 0 nowhere (the interpreter, which has no inline assembly,
# or LEANATTN_FP8_ASM=0), 1 MLA's latent tiles (the default), 2 every tile (LEANATTN_FP8_ASM=1). Read once, when
# this module is imported: A/B runs take a process each.
_ASM_FLAG = runtime.env_flag("LEANATTN_FP8_ASM")
ASM_CONVERT = tl.constexpr(0 if runtime.interpreting() or _ASM_FLAG is False else 2 if _ASM_FLAG else 1)
# Which float8 tiles convert before their layout changes (``converted_once``), where ``ASM_CONVERT`` is on: 0 none
# (LEANATTN_FP8_CONVERT_ONCE=0), 1 (the default) MLA's latent tiles of at most 16 query rows a program and decode's
# tiles where a kv head serves several query heads, 2 every tile (LEANATTN_FP8_CONVERT_ONCE=1)
_ONCE_FLAG = runtime.env_flag("LEANATTN_FP8_CONVERT_ONCE")
CONVERT_ONCE = tl.constexpr(0 if ASM_CONVERT == 0 or _ONCE_FLAG is False else 2 if _ONCE_FLAG else 1)


@triton.jit
def softmax_step(q, k, mask_s, m_i, l_i, qk_scale, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 softcap=0.0, SOFTCAP: tl.constexpr = False, slope=0.0, q_pos=0, offs_n=0,
                 ALIBI: tl.constexpr = False, q_pe=0, k_pe=0, ROPE: tl.constexpr = False, shift=None):
    """Scores of one KV tile ``k [BLOCK_N, D]`` (those outside ``mask_s``, ``[1, BLOCK_N]`` for every row alike or
    ``[BLOCK_H, BLOCK_N]``, at ``-inf``), folded into the
    running max ``m_i`` and sum ``l_i``; returns ``(p, alpha, m_new, l_new)``: the tile's
    probabilities under ``m_new`` and the factor that rescales the old state. A float8 ``k`` is taken in
    ``q``'s dtype (its scale is in ``qk_scale``), and the probabilities and ``l`` are ``2**fp8_shift(k)`` times
    their values. With ``SOFTCAP`` the scores are ``softcap * tanh(q.k * qk_scale)``: ``qk_scale`` then holds the
    softmax scale over the cap (natural units) and ``softcap`` the cap in log2 units (Gemma-2's logit soft-capping).
    With ``ALIBI`` each row's scores then take ``-slope * |q_pos - offs_n|`` (``slope`` and ``q_pos`` ``[BLOCK_H]``,
    the slope in log2 units; ``offs_n`` the tile's key positions), flash-attn's ALiBi bias. With ``ROPE`` (MLA) the
    scores are ``q.k + q_pe.k_pe``: the latent part and the decoupled rotary part, two products of one tile's rows
    (a float8 ``k_pe`` taken in ``q_pe``'s dtype, its scale ``k``'s, in ``qk_scale``).
    """
    if shift is None:
        shift = fp8_shift(k)
    if one_byte(k.dtype):
        k = from_byte(k, q.dtype, ROPE)
    if UPCAST:
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if ROPE:
        if one_byte(k_pe.dtype):
            k_pe = from_byte(k_pe, q_pe.dtype, ROPE)
        if UPCAST:
            k_pe = k_pe.to(tl.float32)
        qk += tl.dot(q_pe, tl.trans(k_pe), input_precision=DOT_PRECISION)
    if SOFTCAP:
        qk = softcap * tanh(qk * qk_scale)
    else:
        qk = qk * qk_scale
    if ALIBI:
        # the distance stays an integer until here, so the bias of a key far back (slope * 1e5 and more) is exact
        # to fp32's rounding of one product, not of a difference of two large positions' biases
        qk = qk - slope[:, None] * tl.abs(q_pos[:, None] - offs_n[None, :]).to(tl.float32)
    qk = tl.where(mask_s, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(qk - (m_use - shift)[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


# log2 of the factor on the probabilities of a range over a float8 cache (``fp8_shift``)
FP8_SHIFT = tl.constexpr(15.0)


@triton.constexpr_function
def one_byte(dtype):
    """Whether tiles of ``dtype`` are a quantised cache's, one byte an element (float8 or int8), taken in the
    query's dtype by the float8 path of this file; resolved when the kernel compiles."""
    return dtype.is_fp8() or dtype.is_int8()


@triton.jit
def from_byte(x, dtype: tl.constexpr, LATENT: tl.constexpr = False):
    """A float8 or int8 tile in ``dtype`` (fp16 or bf16 for the products), exactly.

    A float8 tile of MLA's latent cache (``LATENT``) converts to fp16 by inline PTX (``cvt.rn.f16x2.e4m3x2``, four
    bytes an instance; ``ASM_CONVERT``), not Triton's conversion of the same instruction: offline (sm_90a, Triton
    3.6) its spills fall from 104-352 to 8-128 bytes, and on an H100 (2026-12-07, probe_mla.py, two alternate runs
    each) MLA over a float8 cache took 0.93-0.98x the time (16 heads B=1 32k 46.1 -> 45.1 us, B=32 4k 95.4 -> 90.0,
    128 heads 105.2 -> 98.1). Plain decode tiles keep Triton's: there the same change freed 40-80 registers yet took
    1.00-1.04x the time (bench_decode_fp8.py, same runs).

    int8 goes through fp16's bits, not the integer converter: ``v + 0x6480`` read as fp16 is ``1152 + v`` for every
    ``v`` in [-128, 127] (exponent 10: one unit a step), so one integer add and one fp16 subtract give ``v``. Why: the
    converter (``cvt.rn.f16.s16``, one element an instruction) runs at a quarter of the integer and fp16 rate on sm_90,
    and took int8 decode 1.16-1.32x float8's time over the same bytes (H100, 2026-12-07), where float8 converts two
    elements an instruction.
    """
    if x.dtype.is_int8():
        biased = (x.to(tl.int16) + 0x6480).to(tl.int16)
        return (biased.to(tl.float16, bitcast=True) - 1152.0).to(dtype)
    if ASM_CONVERT == 2 or (ASM_CONVERT == 1 and LATENT):
        if dtype == tl.float16:
            if cuda_capability_geq(8, 9):
                return ptx_fp16(x, True)
    return x.to(dtype)


@triton.jit
def converted_once(x, q, LATENT: tl.constexpr = False, GROUPED: tl.constexpr = False):
    """A float8 tile ``x`` in the dtype of the query tile ``q [rows, D]`` (fp16), converted where it is, by an impure
    instruction (``CONVERT_ONCE``: by default MLA's latent tiles, ``LATENT``, at up to 16 query rows a program, and
    the tiles of decode's programs whose kv head serves several query heads, ``GROUPED``); else ``x`` as it is, for
    ``from_byte`` at its product.

    Why: Triton moves a conversion past the layout changes into a product's operand. A float8 tile that a product
    takes transposed (V, and MLA's latent tile, which is K and V at once) is then read from shared memory a byte at
    a time (64-128 ``ld.shared.b8`` an iteration offline, sm_90a, Triton 3.6), and MLA's tile is converted once for
    each product. An impure instruction (``is_pure=False``) is neither moved nor copied: the fp16 tile takes the
    layout changes (``ldmatrix``, no byte loads), for 16-64 KB more shared memory a program. Offline, float8 decode
    then takes 128-194 registers instead of 150-255, and MLA at 16 heads 246 with no spills (128 heads: 640 bytes
    of spills); the tile loop issues 32-45% fewer instructions (``offline_resources.py``'s loop column, a warp a
    tile: 32/8 heads 648 -> 454 for 16 KB of float8, where bf16 issues 426 for 32 KB; 32/32 1105 -> 703; paged16
    1400 -> 839; MLA 16 heads 1008 -> 554). At some 20 bytes a clock an SM (4.6 TB/s), 648 instructions from each
    of 4 warps for 16 KB is 79% of the issue slots, so float8 decode may wait on issue, not memory (40-78% of the
    read ceiling, H200 2026-12-04).

    On an H100 (2026-12-07 21:1x, every tile converted once against the tiles before, a process each, 0-1-0-1, CUDA
    graphs): MLA at 16 heads (16 rows a program) took 0.91x the time at B=1 32k (44.8 -> 40.8 us) and 0.78x at B=32
    4k (89.3 -> 69.6, faster than the bf16 cache's 73.0), but 1.29x at 128 heads (32 rows a program, 97.8 -> 126.2,
    the spills); plain float8 decode 0.90x over 16-token pages (124.5 -> 112.1), 0.96-0.99x on GQA and D=256, 1.03x
    on one MHA sequence of 64k (191.2 -> 197.3); a second machine repeated the decode numbers within 0.5%. Hence the
    default: MLA's tiles of up to 16 rows, and decode's (``split_program``'s too, which the bifurcated states kernel
    runs over each sample's own tokens) where ``GROUP > 1``. That default against none converted (H100, 2026-12-07
    22:1x, 0-d-0-d): GQA 0.90x over 16-token pages, 0.96x at B=64 4k, 0.99x at B=4 32k, 0.97x at D=256; the MHA
    control 1.001x; bifurcated float8 at GQA 8k x16 and 32k x64 0.99x and 0.985x.
    """
    if CONVERT_ONCE == 2 or (CONVERT_ONCE == 1 and ((LATENT and q.shape[0] <= 16) or (GROUPED and not LATENT))):
        if x.dtype.is_fp8():
            if q.dtype == tl.float16:
                if cuda_capability_geq(8, 9):
                    x = ptx_fp16(x, False)
    return x


@triton.jit
def ptx_fp16(x, PURE: tl.constexpr):
    """A float8 (e4m3 or e5m2) tile in fp16 by inline PTX, four bytes an instance (``cvt.rn.f16x2.e4m3x2``, sm_89 and
    later); ``PURE=False``: an instruction Triton neither moves nor copies (``converted_once``)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2." + fp8_ptx(x.dtype) + "x2 $0, lo; cvt.rn.f16x2."
        + fp8_ptx(x.dtype) + "x2 $1, hi; }", "=r,=r,r", [x.to(tl.uint8, bitcast=True)], dtype=tl.float16,
        is_pure=PURE, pack=4)


@triton.constexpr_function
def fp8_ptx(dtype):
    """PTX's name of a float8 type."""
    return "e5m2" if dtype == tl.float8e5 else "e4m3"


@triton.jit
def fp8_shift(K):
    """log2 of the factor on the probabilities of a range over a float8 cache (``K`` a tile or a pointer), 0 otherwise.

    Why: products over float8 tiles run in fp16 (``fp8_query``), where probabilities under 2**-24 of the running max
    (17 nats) would be zeros or lose bits, while ``l`` sums them in fp32 (relative error up to 1.0 with a dominant
    key whose V is small; review, 2026-12-03). Taken against the max minus 15 they reach 2**15 at most, under fp16's
    65504, and keep full precision down to 2**-29 of the max; the range's ``m`` is returned minus 15 so that every
    merge after it sees the true state.
    """
    if K.dtype.is_ptr():
        fp8 = one_byte(K.dtype.element_ty)
    else:
        fp8 = one_byte(K.dtype)
    if fp8:
        return FP8_SHIFT
    return 0.0


@triton.jit
def tanh(x):
    """``tanh(x)`` in fp32, to a relative error of about 1e-6: ``1 - 2 / (exp(2x) + 1)`` from one ``exp2`` (saturates
    to +-1), and below ``|x| = 1/8``, where that cancels (a cap of 1e6 over scores of order 10 lost 1.4% of the
    output; review), its odd Taylor polynomial to ``x**7`` (truncation under 1e-9 relative). A rational form with one
    MUFU operation fewer measured 1.00-1.33x this one's time on an H200 (probe 56, 2026-12-04)."""
    x2 = x * x
    small = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * -0.05396825396825397)))
    y = tl.where(tl.abs(x) < 0.125, small, 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0))
    return y


@triton.jit
def accumulate(acc, p, alpha, v, q, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, LATENT: tl.constexpr = False,
               GROUPED: tl.constexpr = False):
    """``acc * alpha + p @ v`` for one tile ``v [BLOCK_N, D]``; a float8 ``v`` is taken in ``q``'s dtype (its scale
    is applied by ``v_scaled``; ``LATENT``: MLA's, ``from_byte``)."""
    v = converted_once(v, q, LATENT, GROUPED)
    if one_byte(v.dtype):
        # converted in the product operand's layout, which Triton 3.6 fills from shared memory a byte at a time;
        # converting along D pairs (split/join) avoids that but measured 1.18-1.38x slower (probe 55, H200)
        v = from_byte(v, q.dtype, LATENT)
    if UPCAST:
        v = v.to(tl.float32)
    return acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)


@triton.jit
def v_scaled(acc, V, v_scale):
    """The accumulator of a range over a float8 ``V`` times its dequantisation scale (the merges after it are
    linear in the outputs, and ``l`` holds no scale); unchanged for caches in the query's dtype."""
    if one_byte(V.dtype.element_ty):
        acc = acc * v_scale
    return acc


@triton.jit
def fp8_query(q, K, qk_scale, UPCAST: tl.constexpr):
    """``(q, qk_scale)`` for products over a float8 ``K``: bf16 query rows in fp16, each scaled by a power of two
    that brings its largest magnitude into ``[2**13, 2**14)``, and ``qk_scale`` times the inverse, one per row
    (``[BLOCK_H, 1]``); unchanged otherwise.

    Why: sm_90 converts float8 to fp16 in one instruction per two elements, but to bf16 only through fp16 and fp32
    (H200, 2026-12-03: decode over e4m3 caches with bf16 products level with bf16 caches, 1.17-1.39x them with fp16
    products). fp16 holds every bf16 value within 2**-27 of its row's largest exactly, and the scales are exact
    (powers of two built from exponent bits), so the scores differ from bf16 products only in what fp16 keeps and
    bf16 does not: an 11-bit significand. Rows of zeros (padding) get the largest scale and stay zeros. Under
    ``UPCAST`` (the interpreter's bf16 queries, arriving in fp32) the rows take the same fp16 values, back in fp32.
    """
    if one_byte(K.dtype.element_ty) and (q.dtype.is_bf16() or UPCAST):
        q, inverse = fp16_rows(q)
        if UPCAST:
            q = q.to(tl.float32)
        qk_scale = qk_scale * inverse[:, None]
    return q, qk_scale


@triton.jit
def fp16_rows(q):
    """``(rows, inverse)``: the rows of ``q [ROWS, D]`` in fp16, each scaled by the power of two that brings its
    largest magnitude into ``[2**13, 2**14)``, and the inverse of each scale (``[ROWS]`` fp32); ``fp8_query``."""
    qf = q.to(tl.float32)
    scale, inverse = pow2_scales(tl.max(tl.abs(qf), 1))
    return (qf * scale[:, None]).to(tl.float16), inverse


@triton.jit
def pow2_scales(amax):
    """``(scale, inverse)``: the power of two that brings each magnitude of ``amax`` (``[ROWS]`` fp32, >= 0) into
    ``[2**13, 2**14)`` and its inverse, built from exponent bits, so both are exact (``fp16_rows``)."""
    exponent = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    n = tl.minimum(tl.maximum(13 - exponent, -126), 126)
    scale = ((127 + n) << 23).to(tl.float32, bitcast=True)
    inverse = ((127 - n) << 23).to(tl.float32, bitcast=True)
    return scale, inverse


@triton.jit
def fp8_query_rope(q, q_pe, K, qk_scale, UPCAST: tl.constexpr):
    """``fp8_query`` for MLA's two query parts: ``(q, q_pe, qk_scale)``, both parts' rows scaled into fp16 by one
    power of two a row, from the larger of their magnitudes.

    Why one scale: a row's score is the sum of both parts' products and ``qk_scale`` undoes one factor a row; a
    factor from ``q`` alone could take a larger ``q_pe`` past fp16's 65504."""
    if one_byte(K.dtype.element_ty) and (q.dtype.is_bf16() or UPCAST):
        qf = q.to(tl.float32)
        pf = q_pe.to(tl.float32)
        scale, inverse = pow2_scales(tl.maximum(tl.max(tl.abs(qf), 1), tl.max(tl.abs(pf), 1)))
        q = (qf * scale[:, None]).to(tl.float16)
        q_pe = (pf * scale[:, None]).to(tl.float16)
        if UPCAST:
            q = q.to(tl.float32)
            q_pe = q_pe.to(tl.float32)
        qk_scale = qk_scale * inverse[:, None]
    return q, q_pe, qk_scale


@triton.jit
def initial_state(K, sink, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, SINK: tl.constexpr):
    """``(acc, m, l)`` a range starts from: empty or, with ``SINK``, each row's attention sink, a key of value zero
    whose score is ``sink`` (``[BLOCK_H]``, log2 units; ``-inf`` for none), with ``l`` at ``2**fp8_shift(K)`` as its
    probabilities would be (``softmax_step``).

    Why here: a sink is one more partial state and the merges are associative, so the one range of a row that
    starts at its first tile can carry it while the others start empty: no launch after the merges
    (``merges/sinks.py``), and a row that attends no key ends with zeros and its sink."""
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    if SINK:
        m = sink
        l_init = tl.where(sink > float("-inf"), tl.math.exp2(tl.zeros([BLOCK_H], tl.float32) + fp8_shift(K)), 0.0)
    else:
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_init = tl.zeros([BLOCK_H], tl.float32)
    return acc, m, l_init


@triton.jit
def key_mask(offs_n, seqlen, kv_lo, WINDOW: tl.constexpr):
    """The keys ``offs_n`` a query attends: below ``seqlen`` and, with ``WINDOW``, from ``kv_lo`` on."""
    mask = offs_n < seqlen
    if WINDOW:
        mask = mask & (offs_n >= kv_lo)
    return mask


@triton.jit
def score_mask(mask_n, offs_n, row_lo, row_hi, ROW_MASK: tl.constexpr):
    """The scores a tile keeps: ``mask_n`` (the keys loaded) for every row or, with ``ROW_MASK`` (several query
    tokens in the rows, ``kernels/decode.key_ranges``), also each row's keys ``[row_lo, row_hi)``."""
    mask = mask_n[None, :]
    if ROW_MASK:
        mask = mask & (offs_n[None, :] >= row_lo[:, None]) & (offs_n[None, :] < row_hi[:, None])
    return mask


@triton.jit
def attend_tiles(
    q, K, V, BlockTable,  #
    b, kvh, seqlen, tile_lo, tile_hi, qk_scale, v_scale,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_btb,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    softcap=0.0, SOFTCAP: tl.constexpr = False, kv_lo=0, WINDOW: tl.constexpr = False,
    row_lo=0, row_hi=0, ROW_MASK: tl.constexpr = False, slope=0.0, q_pos=0, ALIBI: tl.constexpr = False,
    sink=0.0, SINK: tl.constexpr = False, q_pe=0, KPE=None, stride_pkb=0, stride_pkn=0, ROPE_DIM: tl.constexpr = 0,
    V_IS_K: tl.constexpr = False, GROUPED: tl.constexpr = False,
):
    """Online softmax over KV tiles ``[tile_lo, tile_hi)``; returns ``(acc, m, l)``.

    ``acc [BLOCK_H, HEAD_DIM]`` is the unnormalised output, ``m [BLOCK_H]`` the running max of the
    scores in log2 units and ``l [BLOCK_H]`` the sum of ``exp2(score - m)``. ``PAGE_SIZE == 0``
    means a contiguous cache, where ``stride_kb`` is the batch stride; otherwise ``stride_kb``
    is the page stride and ``BlockTable[b, i]`` names the i-th page of sequence ``b``. With ``WINDOW`` (a
    sliding window) the keys below ``kv_lo`` are masked as those past ``seqlen`` are: never loaded, so the pages
    that held them may be gone. With ``ROW_MASK`` row ``i`` keeps only the scores of keys ``[row_lo[i], row_hi[i])``
    (``score_mask``). With ``ALIBI`` row ``i`` at position ``q_pos[i]`` takes ALiBi slope ``slope[i]`` (log2 units;
    ``softmax_step``). ``SINK``: the state starts from each row's sink (``initial_state``). ``ROPE_DIM > 0`` (MLA, one
    kv head): the scores add ``q_pe`` against the rows of ``KPE`` (token strides ``stride_pkb``, ``stride_pkn``, as
    ``K``'s), and with ``V_IS_K`` the values are the keys' tile itself (the latent cache, read once for both).
    """
    offs_d = tl.arange(0, HEAD_DIM)
    acc, m_i, l_i = initial_state(K, sink, BLOCK_H, HEAD_DIM, SINK)
    k_head = K + kvh.to(tl.int64) * stride_kh
    v_head = V + kvh.to(tl.int64) * stride_vh
    bt_row = BlockTable + b.to(tl.int64) * stride_btb
    # page ids are fetched one tile ahead, so K/V addresses never wait on a dependent load
    if PAGE_SIZE > 0:
        if PAGE_SIZE % BLOCK_N == 0:
            next_page = tl.load(bt_row + (tile_lo * BLOCK_N) // PAGE_SIZE, mask=tile_lo < tile_hi, other=0)
        else:
            offs_next = tile_lo * BLOCK_N + tl.arange(0, BLOCK_N)
            next_page = tl.load(bt_row + offs_next // PAGE_SIZE, mask=offs_next < seqlen, other=0)
    for j in range(tile_lo, tile_hi):
        offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = key_mask(offs_n, seqlen, kv_lo, WINDOW)
        # -- locate the tile's token rows --
        if PAGE_SIZE == 0:
            k_rows = b.to(tl.int64) * stride_kb + offs_n.to(tl.int64) * stride_kn
            v_rows = b.to(tl.int64) * stride_vb + offs_n.to(tl.int64) * stride_vn
            pe_rows = b.to(tl.int64) * stride_pkb + offs_n.to(tl.int64) * stride_pkn
        else:
            page = next_page.to(tl.int64)
            if PAGE_SIZE % BLOCK_N == 0:
                # the whole tile lies inside one page: one page id per tile
                in_page = ((j * BLOCK_N) % PAGE_SIZE + tl.arange(0, BLOCK_N)).to(tl.int64)
                next_page = tl.load(bt_row + ((j + 1) * BLOCK_N) // PAGE_SIZE, mask=j + 1 < tile_hi, other=0)
            else:
                in_page = (offs_n % PAGE_SIZE).to(tl.int64)
                offs_next = offs_n + BLOCK_N
                next_page = tl.load(bt_row + offs_next // PAGE_SIZE, mask=offs_next < seqlen, other=0)
            k_rows = page * stride_kb + in_page * stride_kn
            v_rows = page * stride_vb + in_page * stride_vn
            pe_rows = page * stride_pkb + in_page * stride_pkn
        # -- scores --
        k = tl.load(k_head + k_rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        k_pe = 0
        if ROPE_DIM > 0:
            k_pe = tl.load(KPE + pe_rows[:, None] + tl.arange(0, ROPE_DIM)[None, :], mask=mask_n[:, None], other=0.0)
        shift = fp8_shift(k)
        if V_IS_K:
            k = converted_once(k, q, True)
        p, alpha, m_i, l_i = softmax_step(q, k, score_mask(mask_n, offs_n, row_lo, row_hi, ROW_MASK), m_i, l_i,
                                          qk_scale, UPCAST, DOT_PRECISION, softcap, SOFTCAP, slope, q_pos, offs_n,
                                          ALIBI, q_pe, k_pe, ROPE_DIM > 0, shift)
        # -- accumulate --
        if V_IS_K:
            v = k
        else:
            v = tl.load(v_head + v_rows[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        acc = accumulate(acc, p, alpha, v, q, UPCAST, DOT_PRECISION, ROPE_DIM > 0, GROUPED)
    return v_scaled(acc, V, v_scale), m_i, l_i


@triton.jit
def attend_contiguous(
    q, K, V,  #
    b, kvh, seqlen, tile_lo, tile_hi, qk_scale, v_scale,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    TMA: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    softcap=0.0, SOFTCAP: tl.constexpr = False, kv_lo=0, WINDOW: tl.constexpr = False,
    row_lo=0, row_hi=0, ROW_MASK: tl.constexpr = False, slope=0.0, q_pos=0, ALIBI: tl.constexpr = False,
    sink=0.0, SINK: tl.constexpr = False, GROUPED: tl.constexpr = False,
):
    """``attend_tiles`` for a contiguous cache, through block pointers or (``TMA``) tensor
    descriptors. Same ``(acc, m, l)`` result.

    Either names the ``seqlen x HEAD_DIM`` rows of one (sequence, kv head) by one base address and
    the tile offset, where a tensor of pointers holds a 64-bit address per element of the
    ``BLOCK_N x HEAD_DIM`` tile, and zero-fills rows past ``seqlen`` instead of a mask, so a stale
    cache tail never meets ``p = 0`` as ``0 * NaN``; with ``WINDOW`` the rows of the first tile before ``kv_lo`` are
    loaded and their V rows zeroed, for the same reason. A block pointer is lowered to ordinary loads; a
    descriptor (sm90+) has the copy engine move whole tiles into shared memory. Descriptors need the
    row base and the token stride 16-byte aligned (the op checks) and a Triton allocator for their
    global scratch (``runtime.tma_allocator``).
    """
    acc, m_i, l_i = initial_state(K, sink, BLOCK_H, HEAD_DIM, SINK)
    if TMA:
        # an empty row owns one empty tile: skip it, a zero-row descriptor is not encodable
        tile_hi = tl.where(seqlen > 0, tile_hi, tile_lo)
        rows = tl.maximum(seqlen, 1)
        k_src = tl.make_tensor_descriptor(K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh,
                                          shape=[rows, HEAD_DIM], strides=[stride_kn, 1], block_shape=[BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh,
                                          shape=[rows, HEAD_DIM], strides=[stride_vn, 1], block_shape=[BLOCK_N, HEAD_DIM])
    else:
        k_seq = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
        v_seq = V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh
        k_src = tl.make_block_ptr(k_seq, shape=(seqlen, HEAD_DIM), strides=(stride_kn, 1),
                                  offsets=(tile_lo * BLOCK_N, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
        v_src = tl.make_block_ptr(v_seq, shape=(seqlen, HEAD_DIM), strides=(stride_vn, 1),
                                  offsets=(tile_lo * BLOCK_N, 0), block_shape=(BLOCK_N, HEAD_DIM), order=(1, 0))
    for j in range(tile_lo, tile_hi):
        # -- scores --
        if TMA:
            k = k_src.load([j * BLOCK_N, 0])
        else:
            k = tl.load(k_src, boundary_check=(0,), padding_option="zero")
        offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = key_mask(offs_n, seqlen, kv_lo, WINDOW)
        p, alpha, m_i, l_i = softmax_step(q, k, score_mask(mask_n, offs_n, row_lo, row_hi, ROW_MASK), m_i, l_i,
                                          qk_scale, UPCAST, DOT_PRECISION, softcap, SOFTCAP, slope, q_pos, offs_n,
                                          ALIBI)
        # -- accumulate --
        if TMA:
            v = v_src.load([j * BLOCK_N, 0])
        else:
            v = tl.load(v_src, boundary_check=(0,), padding_option="zero")
        if WINDOW:
            # whole tiles are read: the rows before the window may hold anything (NaN in a reused page), and their
            # p = 0 would still carry it into the product as 0 * NaN
            if v.dtype.is_int8():
                v = tl.where(mask_n[:, None], v, 0)  # (an int8 tile mixed with 0.0 became float32)
            else:
                v = tl.where(mask_n[:, None], v, 0.0)
        acc = accumulate(acc, p, alpha, v, q, UPCAST, DOT_PRECISION, GROUPED=GROUPED)
        if not TMA:
            k_src = tl.advance(k_src, (BLOCK_N, 0))
            v_src = tl.advance(v_src, (BLOCK_N, 0))
    return v_scaled(acc, V, v_scale), m_i, l_i


@triton.jit
def attend_any(
    q, K, V, BlockTable,  #
    b, kvh, seqlen, tile_lo, tile_hi, qk_scale, v_scale,  #
    stride_kb, stride_kn, stride_kh,  #
    stride_vb, stride_vn, stride_vh,  #
    stride_btb,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, LOAD: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    softcap=0.0, SOFTCAP: tl.constexpr = False, kv_lo=0, WINDOW: tl.constexpr = False,
    row_lo=0, row_hi=0, ROW_MASK: tl.constexpr = False, slope=0.0, q_pos=0, ALIBI: tl.constexpr = False,
    sink=0.0, SINK: tl.constexpr = False, q_pe=0, KPE=None, stride_pkb=0, stride_pkn=0, ROPE_DIM: tl.constexpr = 0,
    V_IS_K: tl.constexpr = False, GROUPED: tl.constexpr = False,
):
    """``attend_tiles`` with the K/V load path ``LOAD`` for a contiguous cache: 0 tensors of
    pointers, 1 block pointers, 2 TMA descriptors (``attend_contiguous``). A paged cache always
    takes tensors of pointers (its tiles gather rows of several pages). ``kv_lo`` and ``WINDOW``: a sliding
    window's first key (``window_start``); ``kv_lo`` the first key of any row. ``row_lo``, ``row_hi`` and
    ``ROW_MASK``: each row's keys (``score_mask``); ``slope``, ``q_pos`` and ``ALIBI``: each row's ALiBi bias
    (``softmax_step``); ``sink`` and ``SINK``: each row's attention sink (``initial_state``); ``q_pe`` to
    ``V_IS_K``: MLA's rotary part and shared latent (``attend_tiles``, which takes them whatever ``LOAD``)."""
    if ROPE_DIM > 0:
        q, q_pe, qk_scale = fp8_query_rope(q, q_pe, K, qk_scale, UPCAST)
    else:
        q, qk_scale = fp8_query(q, K, qk_scale, UPCAST)
    if LOAD > 0 and PAGE_SIZE == 0 and ROPE_DIM == 0:
        acc, m_i, l_i = attend_contiguous(
            q, K, V, b, kvh, seqlen, tile_lo, tile_hi, qk_scale, v_scale,  #
            stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
            HEAD_DIM, BLOCK_H, BLOCK_N, LOAD == 2, UPCAST, DOT_PRECISION, softcap, SOFTCAP, kv_lo, WINDOW,
            row_lo, row_hi, ROW_MASK, slope, q_pos, ALIBI, sink, SINK, GROUPED)
    else:
        acc, m_i, l_i = attend_tiles(
            q, K, V, BlockTable, b, kvh, seqlen, tile_lo, tile_hi, qk_scale, v_scale,  #
            stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_btb,  #
            HEAD_DIM, BLOCK_H, BLOCK_N, PAGE_SIZE, UPCAST, DOT_PRECISION, softcap, SOFTCAP, kv_lo, WINDOW,
            row_lo, row_hi, ROW_MASK, slope, q_pos, ALIBI, sink, SINK, q_pe, KPE, stride_pkb, stride_pkn, ROPE_DIM,
            V_IS_K, GROUPED)
    return acc, m_i - fp8_shift(K), l_i


@triton.jit
def attend_concat(
    q, PK, PV, K, V, BlockTable,  #
    gid, b, kvh, plen, seqlen, pt, tile_lo, tile_hi, qk_scale, v_scale,  #
    stride_pkg, stride_pkn, stride_pkh, stride_pvg, stride_pvn, stride_pvh,  #
    stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,  #
    stride_btb,  #
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,  #
    PAGE_SIZE: tl.constexpr, TILE_IN_PAGE: tl.constexpr, SAME_STRIDE: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, softcap=0.0, SOFTCAP: tl.constexpr = False,
):
    """``attend_tiles`` over the concatenation ``prefix ++ own`` without building it: tiles
    ``[0, pt)`` of the row are the prefix ``PK/PV[gid, :plen, kvh]`` (contiguous), the rest the
    own tokens ``K/V[b, :seqlen, kvh]`` (contiguous, or paged as in ``attend_tiles``).

    One loop whose tile picks its source by scalar selects, rather than one loop per source: a
    piece that straddles the boundary keeps one software pipeline and the registers of one loop
    (H200, 2026-12-01: 206-214 registers against 255 with spills for two loops; one-sample
    bifurcated decode within 1% of decode over copied caches on five of six cases, GQA 8k 3.6% behind).
    Paged page ids are fetched one tile ahead, as in ``attend_tiles``. ``TILE_IN_PAGE`` (needs
    ``PAGE_SIZE % BLOCK_N == 0``) addresses an own tile as one page base plus rows, so the source is
    again a scalar select; otherwise each row finds its page. H200, 2026-12-01, one sample, 64-token
    pages, against decode over paged copies in the same run: MHA 8k 54.0 us with it against 59.7
    without (decode 54.9); GQA 8k 28.1 with it against 25.7 without (decode 24.3), GQA 32k 57.3
    against 58.3 (decode 55.4). The kernel sets it for MHA only. ``SAME_STRIDE`` (a contiguous own cache whose
    token strides are the prefix's, ``BLOCK_N`` rows spanning less than 2**31 elements): a tile is the selected
    source's first row plus 32-bit offsets computed once a piece, which leaves the loop 332 SASS instructions
    instead of 379 (GQA 32/8, D=128, Triton 3.6) and shortens the code before a piece's first load. Float8 caches
    (prefix and own of one dtype) as in ``attend_any``.
    """
    q, qk_scale = fp8_query(q, PK, qk_scale, UPCAST)
    offs_d = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    pk_head = PK + gid.to(tl.int64) * stride_pkg + kvh.to(tl.int64) * stride_pkh
    pv_head = PV + gid.to(tl.int64) * stride_pvg + kvh.to(tl.int64) * stride_pvh
    k_head = K + kvh.to(tl.int64) * stride_kh
    v_head = V + kvh.to(tl.int64) * stride_vh
    bt_row = BlockTable + b.to(tl.int64) * stride_btb
    if PAGE_SIZE == 0 and SAME_STRIDE:
        # prefix and own rows share their token strides: a tile is a scalar base address (the selected source's
        # first row) plus offsets that are the same for every tile, computed once a piece
        rows = tl.arange(0, BLOCK_N)
        k_off = (rows * stride_kn)[:, None] + offs_d[None, :]
        v_off = (rows * stride_vn)[:, None] + offs_d[None, :]
        k_own = k_head + b.to(tl.int64) * stride_kb
        v_own = v_head + b.to(tl.int64) * stride_vb
    if PAGE_SIZE > 0:
        # the page ids of the first tile (prefix tiles look nothing up: masked ids are 0, never used)
        jn = tl.maximum(tile_lo - pt, 0)
        if TILE_IN_PAGE:
            next_page = tl.load(bt_row + (jn * BLOCK_N) // PAGE_SIZE, mask=(tile_lo >= pt) & (tile_lo < tile_hi), other=0)
        else:
            offs_next = jn * BLOCK_N + tl.arange(0, BLOCK_N)
            next_page = tl.load(bt_row + offs_next // PAGE_SIZE, mask=(offs_next < seqlen) & (tile_lo >= pt), other=0)
    for j in range(tile_lo, tile_hi):
        in_prefix = j < pt
        jj = tl.where(in_prefix, j, j - pt)
        offs_n = jj * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < tl.where(in_prefix, plen, seqlen)
        # -- locate the tile's token rows in its source (scalar selects: the row vectors stay one) --
        if PAGE_SIZE == 0 and SAME_STRIDE:
            first = (jj * BLOCK_N).to(tl.int64)
            k_tile = tl.where(in_prefix, pk_head, k_own) + first * stride_kn
            v_tile = tl.where(in_prefix, pv_head, v_own) + first * stride_vn
            mask_n = rows < tl.where(in_prefix, plen, seqlen) - jj * BLOCK_N
        elif PAGE_SIZE == 0:
            k_base = tl.where(in_prefix, pk_head, k_head + b.to(tl.int64) * stride_kb)
            v_base = tl.where(in_prefix, pv_head, v_head + b.to(tl.int64) * stride_vb)
            k_ptrs = k_base + offs_n.to(tl.int64) * tl.where(in_prefix, stride_pkn, stride_kn)
            v_ptrs = v_base + offs_n.to(tl.int64) * tl.where(in_prefix, stride_pvn, stride_vn)
        elif TILE_IN_PAGE:
            # the whole tile lies in one page: a prefix tile and an own tile are both a base address
            # plus rows at a fixed stride, so the source is again a scalar select
            page = next_page.to(tl.int64)
            next_page = tl.load(bt_row + ((j + 1 - pt) * BLOCK_N) // PAGE_SIZE,
                                mask=(j + 1 >= pt) & (j + 1 < tile_hi), other=0)
            start = (jj * BLOCK_N).to(tl.int64)
            rows = tl.arange(0, BLOCK_N).to(tl.int64)
            k_base = tl.where(in_prefix, pk_head + start * stride_pkn,
                              k_head + page * stride_kb + (start % PAGE_SIZE) * stride_kn)
            v_base = tl.where(in_prefix, pv_head + start * stride_pvn,
                              v_head + page * stride_vb + (start % PAGE_SIZE) * stride_vn)
            k_ptrs = k_base + rows * tl.where(in_prefix, stride_pkn, stride_kn)
            v_ptrs = v_base + rows * tl.where(in_prefix, stride_pvn, stride_vn)
        else:
            page = next_page.to(tl.int64)
            # own tile j + 1 - pt (the first own tile follows the last prefix tile)
            offs_next = (j + 1 - pt) * BLOCK_N + tl.arange(0, BLOCK_N)
            next_page = tl.load(bt_row + offs_next // PAGE_SIZE,
                                mask=(offs_next < seqlen) & (j + 1 >= pt) & (j + 1 < tile_hi), other=0)
            in_page = (offs_n % PAGE_SIZE).to(tl.int64)
            k_ptrs = tl.where(in_prefix, pk_head + offs_n.to(tl.int64) * stride_pkn,
                              k_head + page * stride_kb + in_page * stride_kn)
            v_ptrs = tl.where(in_prefix, pv_head + offs_n.to(tl.int64) * stride_pvn,
                              v_head + page * stride_vb + in_page * stride_vn)
        # -- scores, then accumulate --
        if PAGE_SIZE == 0 and SAME_STRIDE:
            k = tl.load(k_tile + k_off, mask=mask_n[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        p, alpha, m_i, l_i = softmax_step(q, k, mask_n[None, :], m_i, l_i, qk_scale, UPCAST, DOT_PRECISION,
                                          softcap, SOFTCAP)
        if PAGE_SIZE == 0 and SAME_STRIDE:
            v = tl.load(v_tile + v_off, mask=mask_n[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        acc = accumulate(acc, p, alpha, v, q, UPCAST, DOT_PRECISION)
    return v_scaled(acc, PV, v_scale), m_i - fp8_shift(PK), l_i
