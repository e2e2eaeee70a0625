"""Small launches of every kernel path, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize.py [decode] [fp8] [merge] [sparse] [bifurcated]
        [overlap] [concat] [overlap-ws] [overlap-pingpong] [bifurcated-softcap] [overlap-softcap] [bifurcated-fp8]
        [overlap-fp8] [window] [tokens] [varlen] [bifurcated-window]
        [bifurcated-window-edges] [bifurcated-paged] [append] [leftpad-invariant]

With no argument every family runs. Shapes are small (the sanitizer slows kernels a
thousandfold) but ragged, empty, paged and GQA, so every masked edge and every schedule runs.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
# the sparse autotuners launch each config once, untimed (their do_bench trials made racecheck outlast 500 s)
os.environ.setdefault("LEANATTN_SPARSE_TUNE_ONCE", "1")
import leanattn  # noqa: E402
from leanattn.merges.states import merge_state_list  # noqa: E402
from leanattn.testing import alibi_slopes, paged_kv  # noqa: E402

# on a CPU (TRITON_INTERPRET=1) it is only an API check, in float16: the interpreter's bf16 dot is broken
DEV = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16 if DEV == "cuda" else torch.float16


def decode_launches(lens):
    B = len(lens)
    sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
    for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256), (64, 1, 64)):
        q = torch.randn(B, hq, d, dtype=BF16, device=DEV)
        k = torch.randn(B, max(lens), hkv, d, dtype=BF16, device=DEV)
        v = torch.randn_like(k)
        for schedule in ("lean", "split"):
            leanattn.decode(q, k, v, sl, schedule=schedule, num_programs=37, num_splits=5)
            leanattn.decode(q, k, v, sl, schedule=schedule)
        leanattn.decode(q, k, v)  # full cache: the lean grid is only the programs the cut uses
        kp, vp, bt = paged_kv(k, v, lens, 16)
        for schedule in ("lean", "split"):
            leanattn.decode(q, kp, vp, sl, bt, schedule=schedule)


def decode():
    # ragged, then equal lengths (the kernels may cut over fewer programs, aligned with heads)
    for lens in ([3000, 0, 1, 517, 1024], [2048, 2048], [4000]):
        decode_launches(lens)
    # every lean launch with its pieces merged by a second launch (the default only for one sequence)
    os.environ["LEANATTN_DECODE_MERGE"] = "1"
    try:
        for lens in ([3000, 0, 1, 517, 1024], [4000]):
            decode_launches(lens)
    finally:
        os.environ.pop("LEANATTN_DECODE_MERGE")
    for S, B, H in ((4, 3, 8), (9, 40, 32), (45, 2, 8)):  # few rows (4 warps) and many (one warp per row)
        outs = torch.randn(S, B, H, 128, dtype=BF16, device=DEV)
        lses = torch.randn(S, B, H, device=DEV)
        leanattn.merge_states(outs, lses)


def leftpad_invariant():
    """``cache_leftpad`` (each row's base moved to its first real token in the kernels: both schedules and each load
    path's default, a small cache, rows named by ``cache_batch_idx``, a packed query, an append with rotary,
    head-major caches, float8) and ``schedule="batch_invariant"`` (ragged rows of one
    to three 2048-key splits, paged, several query tokens), GQA 32/8 D=128 and MHA D=64."""
    lens = [3000, 0, 5, 2100]
    sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
    pads = torch.tensor([7, 0, 5, 900], dtype=torch.int32, device=DEV)
    for hq, hkv, d in ((32, 8, 128), (32, 32, 64)):
        q = torch.randn(len(lens), hq, d, dtype=BF16, device=DEV)
        k = torch.randn(len(lens), 3000, hkv, d, dtype=BF16, device=DEV)
        v = torch.randn_like(k)
        for schedule in ("lean", "split", "batch_invariant"):
            leanattn.decode(q, k, v, sl, schedule=schedule, cache_leftpad=pads)
            leanattn.decode(q, k, v, sl, schedule=schedule)
        kh, vh = (c.transpose(1, 2).contiguous().transpose(1, 2) for c in (k, v))  # head-major
        leanattn.decode(q, kh, vh, sl, cache_leftpad=pads)
        leanattn.decode(q[:, None].expand(-1, 3, -1, -1).contiguous(), k, v, sl, causal=True,
                        schedule="batch_invariant")
        leanattn.decode(q[:2], k[:2, :40], v[:2, :40], torch.tensor([40, 9], dtype=torch.int32, device=DEV),
                        cache_leftpad=pads[:2].clamp(max=9))
        idx = torch.tensor([3, 0, 2, 1], dtype=torch.int32, device=DEV)  # (one page a row: the paged loads)
        leanattn.decode(q, k.flip(0), v.flip(0), sl, cache_batch_idx=idx, cache_leftpad=pads)
        cu = torch.tensor([0, 2, 2, 3, 6], dtype=torch.int32, device=DEV)
        leanattn.decode(torch.randn(6, hq, d, dtype=BF16, device=DEV), k, v, sl, causal=True, cu_seqlens_q=cu,
                        max_seqlen_q=3, cache_leftpad=pads)
        kp, vp, bt = paged_kv(k, v, lens, 16)
        leanattn.decode(q, kp, vp, sl, bt, schedule="batch_invariant")
        kn, vn = (torch.randn(len(lens), 1, hkv, d, dtype=BF16, device=DEV) for _ in range(2))
        cos, sin = (torch.randn(3100, d // 4, device=DEV) for _ in range(2))
        leanattn.decode(q, k, v, (sl - 1).clamp(min=pads), k=kn, v=vn, rotary_cos=cos, rotary_sin=sin,
                        cache_leftpad=pads)
        if DEV == "cuda":
            leanattn.decode(q, k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn), sl, cache_leftpad=pads)


def fp8():
    """Every decode path over float8 e4m3 caches: both schedules, ragged and one sequence (even pieces), contiguous
    through each load path and paged; the contiguous ones also with a logit soft cap."""
    for lens in ([3000, 0, 1, 517, 1024], [4000]):
        B = len(lens)
        sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
        for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256)):
            q = torch.randn(B, hq, d, dtype=BF16, device=DEV)
            k = torch.randn(B, max(lens), hkv, d, device=DEV).to(torch.float8_e4m3fn)
            v = torch.randn(B, max(lens), hkv, d, device=DEV).to(torch.float8_e4m3fn)
            for load in ("0", "1", "2"):
                os.environ["LEANATTN_DECODE_LOAD"] = load
                try:
                    for schedule in ("lean", "split"):
                        leanattn.decode(q, k, v, sl, schedule=schedule, k_scale=0.5, v_scale=2.0)
                        leanattn.decode(q, k, v, sl, schedule=schedule, k_scale=0.5, softcap=30.0)
                finally:
                    os.environ.pop("LEANATTN_DECODE_LOAD")
            kp, vp, bt = paged_kv(k.float(), v.float(), lens, 16)
            for schedule in ("lean", "split"):
                leanattn.decode(q, kp.to(k.dtype), vp.to(k.dtype), sl, bt, schedule=schedule, v_scale=0.5)


def _decode_paths(qlen, runs, whole, paged, stale=None, alibi=False):
    """``leanattn.decode`` on ragged batches and one sequence, GQA 32/8, MHA D=64 and 16/8 D=256, bf16: each of
    ``runs`` (keyword sets) over a contiguous cache through each load path and both schedules, ``whole`` once without
    lengths, ``paged`` over pages of 1, 16 and 64 tokens with both schedules, where with ``stale`` (a window's
    ``window_left``) the pages before each window are freed (ids -1: a read of one would be out of bounds). ``qlen``:
    query tokens a sequence (0: a 3-D query). ``alibi``: every call with ALiBi slopes, one row a sequence."""
    for lens in ([3000, 0, 1, 517, 1024], [4000]):
        B = len(lens)
        sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
        for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256)):
            q = torch.randn((B,) + ((qlen,) if qlen else ()) + (hq, d), dtype=BF16, device=DEV)
            k = torch.randn(B, max(lens), hkv, d, dtype=BF16, device=DEV)
            v = torch.randn_like(k)
            slopes = dict(alibi_slopes=alibi_slopes(hq).to(DEV).repeat(B, 1)) if alibi else {}
            for load in ("0", "1", "2"):
                os.environ["LEANATTN_DECODE_LOAD"] = load
                try:
                    for schedule in ("lean", "split"):
                        for kw in runs:
                            leanattn.decode(q, k, v, sl, schedule=schedule, **kw, **slopes)
                finally:
                    os.environ.pop("LEANATTN_DECODE_LOAD")
            leanattn.decode(q, k, v, **whole, **slopes)
            for page in (1, 16, 64):
                kp, vp, bt = paged_kv(k, v, lens, page)
                if stale is not None:
                    for b, n in enumerate(lens):
                        bt[b, :max(n - 1 - stale, 0) // page] = -1
                for schedule in ("lean", "split"):
                    leanattn.decode(q, kp, vp, sl, bt, schedule=schedule, **paged, **slopes)


def window():
    """Every decode path with a sliding window: both schedules, ragged (shorter than the window, past it) and one
    sequence (even pieces), contiguous through each load path, and paged with the pages before each window freed."""
    _decode_paths(0, [dict(window_left=700), dict(window_left=0, num_programs=37, num_splits=5)],
                  dict(window_left=700), dict(window_left=700), stale=700)


def tokens():
    """Every decode path with several query tokens a sequence (causal, with a window, and not): both schedules,
    ragged (fewer keys than tokens, long) and one sequence, contiguous through each load path, and paged."""
    _decode_paths(4, [dict(causal=True), dict(window_left=700, num_programs=37, num_splits=5)],
                  dict(causal=True), dict(causal=True, window_left=700))


def append():
    """The KV append launch: contiguous, paged (pages of 1 and 16) and float8 caches, ragged lengths with an empty
    sequence and one ending a page, several new tokens, rotary on the keys and on a query of one and of four tokens
    (both pairings, part of the head dim); rotary at positions after a shared prefix (bifurcated_decode)."""
    B, Hq, Hkv, D, cap = 3, 8, 2, 128, 64
    lens = torch.tensor([0, 15, 40], dtype=torch.int32, device=DEV)
    cos, sin = torch.randn(2, 80, 32, device=DEV)
    for page in (None, 1, 16):
        for dtype in (BF16, torch.float8_e4m3fn):
            k, v = (torch.randn(B, cap, Hkv, D, device=DEV, dtype=BF16) for _ in range(2))
            bt = None
            if page is not None:
                k, v, bt = paged_kv(k, v, page_size=page, spare_pages=2)
            k, v = k.to(dtype), v.to(dtype)
            kn, vn = (torch.randn(B, 3, Hkv, D, device=DEV).to(dtype) for _ in range(2))
            q = torch.randn(B, Hq, D, device=DEV, dtype=BF16)
            kw = {} if dtype == BF16 else dict(k_scale=0.5, v_scale=2.0)
            leanattn.decode(q, k, v, lens, bt, k=kn, v=vn, **kw)
            if dtype == BF16:
                for qq, inter in ((q, False), (torch.randn(B, 4, Hq, D, device=DEV, dtype=BF16), True)):
                    leanattn.decode(qq, k, v, lens, bt, k=kn, v=vn, causal=True, rotary_cos=cos, rotary_sin=sin,
                                    rotary_interleaved=inter)
                pk, pv = (torch.randn(2, 12, Hkv, D, device=DEV, dtype=BF16) for _ in range(2))
                plens, ids = (torch.tensor(x, dtype=torch.int32, device=DEV) for x in ([12, 5], [1, 0, 1]))
                leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, k=kn, v=vn, rotary_cos=cos,
                                           rotary_sin=sin)


def alibi():
    """Every decode path with ALiBi slopes (one row a sequence), with one query token and with four (causal, and with
    a window)."""
    _decode_paths(0, [{}, dict(num_programs=37, num_splits=5)], {}, {}, alibi=True)
    _decode_paths(4, [dict(causal=True), dict(window_left=700, num_programs=37, num_splits=5)],
                  dict(causal=True), dict(causal=True, window_left=700), stale=703, alibi=True)


def mla():
    """MLA decode (512 + 64, 16 and 128 heads): both schedules, ragged and one sequence, FlashMLA's paged layout
    (pages of 1, 16 and 64 tokens) and contiguous views of one wide cache, one and two query tokens; the same caches
    in float8 e4m3 (``ops/decode_config._CUDA_FP8_LATENT``'s tiles)."""
    for lens in ([3000, 0, 1, 517, 1024], [4000]):
        sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
        for heads in (16, 128):
            for tokens in (0, 2):
                lead = (len(lens), tokens) if tokens else (len(lens),)
                qn = torch.randn(*lead, heads, 512, dtype=BF16, device=DEV)
                qp = torch.randn(*lead, heads, 64, dtype=BF16, device=DEV)
                wide = torch.randn(len(lens), max(lens), 1, 576, dtype=BF16, device=DEV)
                caches = [(wide, None)] + [paged_kv(wide, wide, lens, page)[::2] for page in (1, 16, 64)]
                caches += [(cache.to(torch.float8_e4m3fn), table) for cache, table in caches]
                for cache, table in caches:
                    for schedule in ("lean", "split"):
                        scale = 0.5 if cache.dtype == torch.float8_e4m3fn else 1.0
                        leanattn.mla_decode(qn, qp, cache[..., :512], cache[..., 512:], sl, table, schedule=schedule,
                                            causal=True, k_scale=scale, v_scale=scale)


def varlen():
    """Every decode path over a packed query (``cu_seqlens_q``; the first sequence shorter than the slots, so its
    slot rows sit before the tensor's start and must be masked): both schedules, ragged with a sequence of no tokens,
    one sequence with its pieces merged in-kernel and by the merge launch, contiguous through each load path, paged,
    with a window."""
    for lens, counts in (([3000, 0, 1, 517, 1024], [2, 0, 3, 1, 4]), ([4000], [3])):
        sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
        cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
        for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256)):
            q = torch.randn(sum(counts), hq, d, dtype=BF16, device=DEV)
            k = torch.randn(len(lens), max(lens), hkv, d, dtype=BF16, device=DEV)
            v = torch.randn_like(k)
            kw = dict(cu_seqlens_q=cu, max_seqlen_q=4)
            for load, merge in (("0", "0"), ("1", "1"), ("2", "0")):
                os.environ["LEANATTN_DECODE_LOAD"], os.environ["LEANATTN_DECODE_MERGE"] = load, merge
                try:
                    for schedule in ("lean", "split"):
                        leanattn.decode(q, k, v, sl, schedule=schedule, causal=True, **kw)
                        leanattn.decode(q, k, v, sl, schedule=schedule, window_left=700, num_programs=37,
                                        num_splits=5, **kw)
                finally:
                    os.environ.pop("LEANATTN_DECODE_LOAD")
                    os.environ.pop("LEANATTN_DECODE_MERGE")
            for page in (1, 16, 64):
                kp, vp, bt = paged_kv(k, v, lens, page)
                # the pages before each sequence's own first token's window freed (ids -1: a read would be out of
                # bounds), however many slots the launch has
                for b, (n, c) in enumerate(zip(lens, counts)):
                    bt[b, :max(n - max(c, 1) - 700, 0) // page] = -1
                for schedule in ("lean", "split"):
                    leanattn.decode(q, kp, vp, sl, bt, schedule=schedule, causal=True, window_left=700, **kw)


def merges():
    # every form of merge_states_kernel (kernels/merge.merge_launch): unrolled over 1-8 states at one row of one warp
    # and at 4 rows of 4 warps (2048 rows or more; 2077 leaves a partial last program), then BLOCK_S states a load
    # for few rows and many; D not a power of two included. Then the launches that take it: decode's split
    # schedule (ragged, 3 and 12 splits) and the bifurcated states path (LEANATTN_BIFURCATED_CONFIG path field 3)
    for S in (1, 2, 3, 5, 8, 9, 45):
        for B, H in ((3, 8), (67, 31)):
            for d in (64, 96, 128, 256):
                outs = torch.randn(S, B, H, d, dtype=torch.float32, device=DEV)
                lses = torch.randn(S, B, H, device=DEV)
                lses[0, 0] = float("-inf")
                leanattn.merge_states(outs, lses)
    # merge_list_kernel: 1-4 states held apart, without and with sinks (folded after them), at one query row (its
    # strides passed as Python ints), at 2079 rows (4 rows a program, a partial last one) and at 16429 (8 rows a
    # program over 2 warps, a partial last one)
    for n in (1, 2, 3, 4):
        for B, H in ((1, 1), (297, 7), (2347, 7)):
            outs = [torch.randn(B, H, 96, dtype=BF16, device=DEV) for _ in range(n)]
            lses = [torch.randn(B, H, device=DEV) for _ in range(n)]
            lses[0][0] = float("-inf")
            for sinks in (None, torch.randn(H, device=DEV)):
                merge_state_list(outs, lses, sinks)
            if n == 2:
                leanattn.merge_state_in_place(outs[0], lses[0], outs[1], lses[1])
                # a row mask: masked rows neither read nor written
                leanattn.merge_state_in_place(outs[0], lses[0], outs[1], lses[1],
                                              mask=torch.arange(B, device=DEV) % 3 != 1)
    lens = [3000, 0, 1, 517]
    sl = torch.tensor(lens, dtype=torch.int32, device=DEV)
    q = torch.randn(len(lens), 32, 128, dtype=BF16, device=DEV)
    k = torch.randn(len(lens), max(lens), 8, 128, dtype=BF16, device=DEV)
    for splits in (3, 12):
        leanattn.decode(q, k, k, sl, schedule="split", num_splits=splits)
    os.environ["LEANATTN_BIFURCATED_CONFIG"] = "0,0,0,0,0,0,0,0,0,3"
    try:
        pk = torch.randn(2500, 8, 128, dtype=BF16, device=DEV)
        leanattn.bifurcated_decode(q, pk, pk, k, k, sl)
        leanattn.bifurcated_decode(q, pk, pk, k, k, sl, sinks=torch.randn(32, device=DEV))  # SINK_HEADS in the merge
    finally:
        os.environ.pop("LEANATTN_BIFURCATED_CONFIG")


def sparse(dims=(64, 128)):
    B, N, H = 2, 1000, 3  # N not a multiple of any tile
    for d in dims:
        for det in (True, False):
            q, k, v = (torch.randn(B, N, H, d, dtype=BF16, device=DEV, requires_grad=True) for _ in range(3))
            keep_q = torch.rand(B, N, H, device=DEV) > 0.5
            keep_k = torch.rand(B, N, H, device=DEV) > 0.5
            keep_q[0, :, 0] = False  # a head with nothing kept
            o = leanattn.qk_sparse_attention(q, k, v, keep_q, keep_k, deterministic=det)
            o.backward(torch.randn_like(o))
            qb = torch.randint(0, 7, (B, N, H), device=DEV)
            kb = torch.randint(0, 7, (B, N, H), device=DEV)
            o = leanattn.hash_sparse_attention(q, k, v, qb, kb, n_buckets=7, deterministic=det)
            o.backward(torch.randn_like(o))
            # grouped-query attention: 3 query heads over one kv head, whose dK/dV programs loop over them
            k1, v1 = (x[:, :, :1].detach().clone().requires_grad_() for x in (k, v))
            o = leanattn.qk_sparse_attention(q, k1, v1, keep_q, keep_k[:, :, :1].contiguous(), deterministic=det)
            o.backward(torch.randn_like(o))
            o = leanattn.hash_sparse_attention(q, k1, v1, qb, kb[:, :, :1].contiguous(), n_buckets=7,
                                               deterministic=det)
            o.backward(torch.randn_like(o))
            sparse_split_launch(d, det)


def sparse_split_launch(d, det, B=2, N=1000):
    """4 query heads a kv head, the group cut in two runs over the dK/dV programs (float32 partial sums), summed by
    each key block's last run; a family of its own too, for a racecheck that fits a short call."""
    os.environ["LEANATTN_SPARSE_DKDV_SPLIT"] = "2"
    try:
        q4 = torch.randn(B, N, 4, d, dtype=BF16, device=DEV, requires_grad=True)
        k1, v1 = (torch.randn(B, N, 1, d, dtype=BF16, device=DEV, requires_grad=True) for _ in range(2))
        o = leanattn.qk_sparse_attention(q4, k1, v1, torch.rand(B, N, 4, device=DEV) > 0.5,
                                         torch.rand(B, N, 1, device=DEV) > 0.5, deterministic=det)
        o.backward(torch.randn_like(o))
    finally:
        os.environ.pop("LEANATTN_SPARSE_DKDV_SPLIT")


def bifurcated():
    # the default launch plans, then the states path's in-kernel merge, the fused path and the overlap path
    # (Gluon prefix and a side stream, where usable: sm_90, one prompt, D 64/128)
    for env in ("", "0,0,0,0,0,0,0,0,2", "0,0,0,0,0,0,0,0,0,2", "0,0,0,0,0,0,0,0,0,4"):
        os.environ["LEANATTN_BIFURCATED_CONFIG"] = env
        bifurcated_launches()
    os.environ.pop("LEANATTN_BIFURCATED_CONFIG")
    # the one-sample path with its pieces merged by a second launch
    os.environ["LEANATTN_DECODE_MERGE"] = "1"
    try:
        bifurcated_launches()
    finally:
        os.environ.pop("LEANATTN_DECODE_MERGE")


def bifurcated_launches(softcap=0.0, fp8=None, window_left=-1):
    """The states, one-sample and cascade launches over ragged own caches, MHA and GQA, D 64-256, capped by
    ``softcap`` where it is > 0, over caches stored as ``fp8`` (with scales) where it is given, under a sliding window
    of ``window_left`` keys where it is >= 0 (``ops/bifurcated_window.py``)."""
    cap = dict(softcap=softcap, window_left=window_left, **(dict(k_scale=0.5, v_scale=2.0) if fp8 else {}))

    def store(*tensors):
        return tuple(t.to(fp8) for t in tensors) if fp8 else tensors
    own = [40, 0, 1, 333, 17, 64]
    B = len(own)
    sl = torch.tensor(own, dtype=torch.int32, device=DEV)
    for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256)):
        q = torch.randn(B, hq, d, dtype=BF16, device=DEV)
        pk = torch.randn(3, 2500, hkv, d, dtype=BF16, device=DEV)
        pv = torch.randn_like(pk)
        plens = torch.tensor([2500, 0, 777], dtype=torch.int32, device=DEV)
        pids = torch.tensor([0, 0, 1, 2, 2, 2], dtype=torch.int32, device=DEV)
        k = torch.randn(B, max(own), hkv, d, dtype=BF16, device=DEV)
        v = torch.randn_like(k)
        kp, vp, bt = paged_kv(k, v, own, 16)
        pk, pv, k, v, kp, vp = store(pk, pv, k, v, kp, vp)
        leanattn.bifurcated_decode(q, pk, pv, k, v, sl, prefix_lens=plens, prefix_ids=pids, **cap)
        leanattn.bifurcated_decode(q, pk[0], pv[0], k, v, sl, num_programs=11, **cap)
        leanattn.bifurcated_decode(q, pk, pv, kp, vp, sl, bt, prefix_lens=plens, prefix_ids=pids, **cap)
        # one sample per prompt (the one-sample kernel), pages smaller than a tile and not
        one_each = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEV)
        for ps in (16, 64, 256):
            kp, vp, bt = paged_kv(k[3:].to(BF16), v[3:].to(BF16), own[3:], ps)
            kp, vp = store(kp, vp)
            leanattn.bifurcated_decode(q[3:], pk, pv, kp, vp, sl[3:], bt, prefix_lens=plens, prefix_ids=one_each,
                                       **cap)
        one_sample_launches(q, pk, pv, plens, k, v, sl, **cap)
        sys_k, sys_v = store(torch.randn(300, hkv, d, dtype=BF16, device=DEV), torch.randn(300, hkv, d, dtype=BF16,
                                                                                           device=DEV))
        leanattn.cascade_decode(q, [(sys_k, sys_v), (pk, pv, plens, pids)], k, v, sl, **cap)


def paged_prefix_launches():
    """Prefixes held in a page pool (``prefix_block_table``, the states kernel's prefix programs reading pages): three
    prompts (2500, 0 and 777 tokens) and one, pages of 16 and 64 tokens in random order, ragged own caches in the same
    pool, without and with a window (300 keys: each prompt's tail read where it lies), and a paged cascade level."""
    own = [40, 0, 1, 333, 17, 64]
    B = len(own)
    sl = torch.tensor(own, dtype=torch.int32, device=DEV)
    pids = torch.tensor([0, 0, 1, 2, 2, 2], dtype=torch.int32, device=DEV)
    for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256)):
        q = torch.randn(B, hq, d, dtype=BF16, device=DEV)
        k = torch.randn(3 + B, 2500, hkv, d, dtype=BF16, device=DEV)
        for page in (16, 64):
            pool_k, pool_v, table = paged_kv(k, torch.randn_like(k), [2500, 0, 777] + own, page)
            ptab, otab = table[:3].contiguous(), table[3:].contiguous()
            plens = torch.tensor([2500, 0, 777], dtype=torch.int32, device=DEV)
            for w in (-1, 300):
                leanattn.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, sl, otab, plens, pids,
                                           prefix_block_table=ptab, window_left=w)
                leanattn.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, sl, otab, prefix_block_table=ptab[:1],
                                           window_left=w)
            leanattn.cascade_decode(q, [(pool_k, pool_v, None, None, ptab[:1]), (pool_k, pool_v, plens, pids, ptab)],
                                    pool_k, pool_v, sl, otab)


def one_sample_launches(q, pk, pv, plens, k, v, sl, **kw):
    """The one-sample kernel over contiguous own caches, whose tiles are a base plus offsets fixed for the piece
    (``attend_concat``'s ``SAME_STRIDE``): one prefix per sample with partial and empty lengths, one prefix for
    one sample (an own length of 0 among them), and small grids that cut rows around the prefix's end."""
    one_each = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEV)
    leanattn.bifurcated_decode(q[3:], pk, pv, k[3:], v[3:], sl[3:], prefix_lens=plens, prefix_ids=one_each, **kw)
    for b in (0, 1, 3):
        for grid in (0, 7):
            one = slice(b, b + 1)
            leanattn.bifurcated_decode(q[one], pk[2], pv[2], k[one], v[one], sl[one], num_programs=grid, **kw)


def concat():
    # the one-sample launches alone (bifurcated() runs them too, among every other path)
    for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256)):
        q = torch.randn(6, hq, d, dtype=BF16, device=DEV)
        pk = torch.randn(3, 2500, hkv, d, dtype=BF16, device=DEV)
        k = torch.randn(6, 333, hkv, d, dtype=BF16, device=DEV)
        plens = torch.tensor([2500, 0, 777], dtype=torch.int32, device=DEV)
        sl = torch.tensor([40, 0, 1, 333, 17, 64], dtype=torch.int32, device=DEV)
        one_sample_launches(q, pk, torch.randn_like(pk), plens, k, torch.randn_like(k), sl)


def overlap(configs=((False, 0), (True, 0), (True, 8), (False, 8), (True, 12), (False, 12)), pingpong=False,
            softcap=0.0, fp8=None):
    # the overlap path alone (Gluon prefix on sm_90, own tokens on a side stream): ragged last tiles, rows
    # that are not a multiple of 64, D 64 and 128, MHA and GQA, with and without own tokens (2026-12-01 on an
    # H200 as a stand-alone script: memcheck 0 errors, racecheck 0 hazards), then with the own tokens as the
    # prefix's programmatic dependent launch on one stream (ops/bifurcated_overlap.ORDERED), and at 128 prefix rows
    # a program; over caches stored as ``fp8`` (with scales) where it is given
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb, bifurcated_overlap as ov
    # 8 warps: 128 prefix rows a program over two warp groups, 12 the same warp-specialized, both orders; the
    # 8192-token prefix refills each program's K/V ring slots several times (16 tiles a program at 128 rows)
    ov.WS_PINGPONG = pingpong  # the warp-specialized prefix's consumers taking turns
    for ordered, warps in configs:
        os.environ["LEANATTN_BIFURCATED_CONFIG"] = f"0,0,{warps},0,0,0,0,0,0,4"
        ov.ORDERED, opb._PLANS = ordered, runtime.PlanCache()
        for n, hq, hkv, d, P in ((6, 32, 8, 128, 2500), (70, 32, 8, 64, 1000), (3, 32, 32, 128, 65),
                                 (64, 32, 8, 128, 8192)):
            q = torch.randn(n, hq, d, dtype=BF16, device=DEV)
            pk = torch.randn(P, hkv, d, dtype=BF16, device=DEV)
            pv = torch.randn_like(pk)
            k = torch.randn(n, 333, hkv, d, dtype=BF16, device=DEV)
            v = torch.randn_like(k)
            sl = torch.randint(0, 334, (n,), dtype=torch.int32, device=DEV)
            kw = dict(softcap=softcap)
            if fp8:
                pk, pv, k, v = (t.to(fp8) for t in (pk, pv, k, v))
                kw.update(k_scale=0.5, v_scale=2.0)
            leanattn.bifurcated_decode(q, pk, pv, k, v, sl, **kw)
            leanattn.bifurcated_decode(q, pk, pv, None, None, **kw)
    ov.ORDERED, ov.WS_PINGPONG, opb._PLANS = None, False, runtime.PlanCache()
    os.environ.pop("LEANATTN_BIFURCATED_CONFIG")


if __name__ == "__main__":
    torch.manual_seed(0)
    families = {"decode": decode, "fp8": fp8, "window": window, "tokens": tokens, "varlen": varlen, "alibi": alibi,
                "append": append, "leftpad-invariant": leftpad_invariant,
                "mla": mla, "merge": merges,
                "sparse": sparse,
                # a head dim a call, should racecheck over both outlast a call again (both took 131 s since the
                # autotuners launch each config once; 22:2x, before that, they ran past 500 s)
                "sparse-d64": lambda: sparse((64,)), "sparse-d128": lambda: sparse((128,)),
                "sparse-split": lambda: [sparse_split_launch(d, det) for d in (64, 128) for det in (True, False)],
                "bifurcated": bifurcated, "overlap": overlap,
                "concat": concat, "bifurcated-softcap": lambda: bifurcated_launches(30.0),
                "overlap-ws": lambda: overlap(((False, 12), (True, 12))),
                "overlap-pingpong": lambda: overlap(((False, 12), (True, 12)), pingpong=True),
                "overlap-softcap": lambda: overlap(softcap=30.0),
                "bifurcated-fp8": lambda: bifurcated_launches(fp8=torch.float8_e4m3fn),
                # three windows in one run outlasted a 400 s call under memcheck (2026-12-05): one each run
                "bifurcated-window": lambda: bifurcated_launches(window_left=300),
                "bifurcated-window-edges": lambda: [bifurcated_launches(window_left=w) for w in (0, 2000)],
                "bifurcated-paged": paged_prefix_launches,
                # float8 takes the plain Gluon kernel at 64 and 128 rows (the field 12 would too)
                "overlap-fp8": lambda: overlap(((False, 0), (True, 0), (True, 8), (False, 8)),
                                               fp8=torch.float8_e4m3fn)}
    chosen = sys.argv[1:] or list(families)
    for name in chosen:
        families[name]()
        if DEV == "cuda":
            torch.cuda.synchronize()
        print(f"sanitize: {name} launches done")
