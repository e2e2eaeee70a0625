"""GPU-only tests of ``bifurcated_decode`` / ``cascade_decode``: bf16/fp16 at realistic sizes, many
samples (several head blocks, team schedule), determinism, CUDA graphs, torch.compile,
compute-sanitizer. Skipped without CUDA.

    PYTHONPATH=src python3 -m pytest -q tests/test_bifurcated_gpu.py
"""
import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def inputs(n, hq, hkv, d, P, own, dtype=torch.bfloat16, G=None):
    q = torch.randn(n, hq, d, dtype=dtype, device="cuda")
    shape = (P, hkv, d) if G is None else (G, P, hkv, d)
    pk = torch.randn(shape, dtype=dtype, device="cuda")
    pv = torch.randn_like(pk)
    k = torch.randn(n, max(own), hkv, d, dtype=dtype, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor(own, dtype=torch.int32, device="cuda")
    return q, pk, pv, k, v, sl


def check(q, pk, pv, k, v, sl, bt=None, plens=None, ids=None, name="bifurcated", **kw):
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, return_lse=True, **kw)
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids)
    assert_rel_close(name, out, ref, TOLERANCE[q.dtype])
    assert_lse_close(name + " lse", lse, ref_lse, 1e-2)
    return out, lse


def multi_prompt_paged(make_inputs, page):
    """32 samples of four prompts (20, 1, 11 and none of them, shuffled; prefixes of 7000, 4000, 1 and 0 tokens), own
    caches of up to 600 tokens in pages of ``page``, from ``make_inputs`` (``inputs``' signature, caches in any
    dtype): the arguments of ``bifurcated_decode`` up to ``prefix_ids``."""
    ids = torch.tensor([0] * 20 + [2] * 3 + [1] + [2] * 8, dtype=torch.int32, device="cuda")
    ids = ids[torch.randperm(len(ids), device="cuda")]
    own = torch.randint(0, 600, (len(ids),)).tolist()
    q, pk, pv, k, v, sl = make_inputs(len(ids), 32, 8, 128, 7000, own, G=4)
    plens = torch.tensor([7000, 4000, 1, 0], dtype=torch.int32, device="cuda")
    kp, vp, bt = paged_kv(k.float(), v.float(), own, page)  # float8 caches page through fp32, exactly
    return q, pk, pv, kp.to(k.dtype), vp.to(v.dtype), sl, bt, plens, ids


def check_cascade(make_inputs, **kw):
    """``cascade_decode`` over a 3000-token system prompt for 6 samples, one of 3 documents of 5000 tokens per group
    of them and ragged own tokens (an empty one among them), caches from ``make_inputs`` (``inputs``' signature),
    against the reference with the same keywords (softmax scale, soft cap, float8 scales)."""
    ids = torch.tensor([0, 0, 1, 1, 1, 2], dtype=torch.int32, device="cuda")
    q, sk, sv, k, v, sl = make_inputs(6, 32, 8, 128, 3000, [100, 0, 900, 7, 60, 333])
    _, dk, dv, *_ = make_inputs(1, 32, 8, 128, 5000, [1], G=3)
    levels = [(sk, sv), (dk, dv, None, ids)]
    out, lse = leanattn.cascade_decode(q, levels, k, v, sl, return_lse=True, **kw)
    ref, ref_lse = leanattn.reference.cascade_decode(q, levels, k, v, sl, **kw)
    assert_rel_close("cascade", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("cascade lse", lse, ref_lse, 1e-2)


# own lengths of 16 samples of up to 256 tokens, for check_replays
REPLAY_LENGTHS = ([256] * 16, [0] * 8 + [256] * 8, list(range(0, 256, 16)))


def check_replays(q, pk, pv, k, v, sl, lengths, **kw):
    """``bifurcated_decode(q, pk, pv, k, v, sl, **kw)`` captured in a CUDA graph, replayed with each of ``lengths``
    copied into ``sl`` and checked against the reference with the same keywords (softmax scale, soft cap, float8
    scales)."""
    assert_graph_replays(lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, sl, **kw), sl, lengths,
                         lambda: leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, **kw)[0],
                         TOLERANCE[q.dtype], replays=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (32, 1, 128), (16, 8, 256), (32, 32, 64),
                                      (64, 2, 64)])
def test_single_prompt(dtype, hq, hkv, d):
    own = [300, 0, 1, 4097, 33, 256, 129]
    check(*inputs(len(own), hq, hkv, d, 9000, own, dtype))


@pytest.mark.parametrize("n,hq,hkv", [(64, 32, 8), (256, 32, 32), (256, 32, 8), (100, 32, 8)])
def test_many_samples_head_blocks(n, hq, hkv):
    # 256 (MHA) or 512 and more (GQA) prefix rows per kv head: several head blocks, team schedule
    own = torch.randint(0, 300, (n,)).tolist()
    check(*inputs(n, hq, hkv, 128, 5000, own))


def test_multi_prompt_unequal():
    ids = torch.tensor([0] * 40 + [2] * 3 + [1] + [2] * 20, dtype=torch.int32, device="cuda")
    ids = ids[torch.randperm(64, device="cuda")]  # prompts of 40, 1, 23 samples and an unused one, interleaved
    own = torch.randint(0, 600, (64,)).tolist()
    q, pk, pv, k, v, sl = inputs(64, 32, 8, 128, 7000, own, G=4)
    plens = torch.tensor([7000, 0, 3333, 100], dtype=torch.int32, device="cuda")
    check(q, pk, pv, k, v, sl, plens=plens, ids=ids)
    check(q, pk, pv, k, v, sl, plens=plens, ids=ids, max_group_size=64, name="max_group_size=B")


@pytest.mark.parametrize("page", [1, 16, 64, 256])
def test_paged_own(page):
    own = [900, 0, 3, 2049]
    q, pk, pv, k, v, sl = inputs(4, 32, 8, 128, 3000, own)
    kp, vp, bt = paged_kv(k, v, own, page, spare_pages=1)
    out = leanattn.bifurcated_decode(q, pk, pv, kp, vp, sl, bt)
    ref, _ = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl)
    assert_rel_close("paged", out, ref, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("page", [16, 64, 256])
@pytest.mark.parametrize("hq,hkv", [(32, 32), (32, 8)])
def test_one_sample_per_prompt_paged_own(page, hq, hkv):
    # the one-sample kernel over paged own caches: pages smaller than a tile and multiples of it (MHA
    # addresses those from the page base), prompts of unequal length, an empty own cache
    own = [900, 0, 2049]
    q, pk, pv, k, v, sl = inputs(3, hq, hkv, 128, 3000, own, G=3)
    kp, vp, bt = paged_kv(k, v, own, page, spare_pages=1)
    plens = torch.tensor([3000, 17, 0], dtype=torch.int32, device="cuda")
    ids = torch.tensor([2, 0, 1], dtype=torch.int32, device="cuda")
    check(q, pk, pv, kp, vp, sl, bt, plens=plens, ids=ids, name=f"one sample, page {page}")
    single = check(q[:1], pk[0], pv[0], kp, vp, sl[:1], bt[:1], name=f"one prompt, page {page}")
    assert single[0].shape == (1, hq, 128)


def test_one_sample_equals_decode_over_concatenation():
    q, pk, pv, k, v, sl = inputs(1, 32, 32, 128, 8192, [256])
    out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    kc, vc = torch.cat([pk[None], k], 1), torch.cat([pv[None], v], 1)
    dec = leanattn.decode(q, kc, vc)
    assert_rel_close("vs decode", out, dec.double(), TOLERANCE[torch.bfloat16])


def test_empty_prefix_and_empty_own():
    q, pk, pv, k, v, sl = inputs(5, 32, 8, 128, 0, [0, 10, 3000, 0, 1])
    check(q, pk, pv, k, v, sl)
    q, pk, pv, k, v, sl = inputs(3, 32, 8, 128, 4000, [0, 0, 0])
    check(q, pk, pv, k, v, sl)


@pytest.mark.parametrize("n", [1, 8])
def test_launcher_alignment(n):
    # one sample (concat path) and several (states path, two launchers): q off a 16-byte boundary after
    # the plan launches directly (runtime.Launcher) must go back through the JIT and stay exact
    from leanattn.ops import bifurcated as opb
    q, pk, pv, k, v, sl = inputs(n, 32, 8, 128, 3000, [300] * n)
    qbuf = torch.randn(q.numel() + 8, dtype=q.dtype, device="cuda")
    q_al, q_off = qbuf[:q.numel()].view(q.shape), qbuf[1:1 + q.numel()].view(q.shape)
    opb._PLANS.clear()
    for qq in [q_al, q_al, q_off, q_al]:
        check(qq, pk, pv, k, v, sl)
    (plan,) = opb._PLANS.values()
    # the concat path launches through its StreamKLaunch (eager calls take the in-kernel merge) or, cut into even
    # pieces, through its even launch
    if plan.path == "concat":
        launcher = plan.even_launch if plan.even else plan.concat_launch.in_kernel
    else:
        launcher = plan.launch
    assert launcher.runner is not None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("n", [1, 8])
def test_tensors_off_the_current_device(n):
    q, pk, pv, k, v, sl = (t.to("cuda:1") for t in inputs(n, 32, 8, 128, 3000, [300] * n))
    with torch.cuda.device(0):
        for _ in range(2):
            check(q, pk, pv, k, v, sl)
            assert torch.cuda.current_device() == 0


def _last_plan():
    from leanattn.ops import bifurcated as opb
    return next(reversed(opb._PLANS.values()))


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@contextlib.contextmanager
def _path(field, warps=0, stages=0):
    """Force a bifurcated path (LEANATTN_BIFURCATED_CONFIG path field: 3 states, 4 overlap) and, with ``warps``,
    the num_warps field (on the overlap path 8: 128 prefix rows a program, 12 warp-specialized), with ``stages``
    the num_stages field (the overlap path's prefix ring)."""
    os.environ["LEANATTN_BIFURCATED_CONFIG"] = f"0,0,{warps},{stages},0,0,0,0,0,{field}"
    try:
        yield
    finally:
        del os.environ["LEANATTN_BIFURCATED_CONFIG"]


def _nan_states():
    """The last plan's state slots filled with NaN, so that a launch that ran before the states it reads were
    written would not go unseen."""
    for slot in _last_plan().states:
        if slot is not None:
            slot.fill_(float("nan"))


def _nan_call(q, pk, pv, k, v, sl):
    """``bifurcated_decode`` after ``_nan_states``."""
    _nan_states()
    return leanattn.bifurcated_decode(q, pk, pv, k, v, sl)


def _check_graph_with_new_inputs(q, pk, pv, k, v, sl):
    """The call captured in a CUDA graph, then new queries and lengths and NaN state slots: a replay equals an eager
    call on the same inputs bitwise (the same launches) and holds no NaN."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    q.normal_()
    sl.copy_(torch.randint(0, k.shape[1] + 1, sl.shape, dtype=torch.int32, device="cuda"))
    _nan_states()
    g.replay()
    assert torch.equal(out, _nan_call(q, pk, pv, k, v, sl)) and not out.isnan().any()


@pytest.mark.parametrize("field,path", [(1, "split"), (2, "fused"), (3, "states")])
@pytest.mark.parametrize("n,hkv", [(2, 8), (5, 32), (8, 8), (17, 8)])
def test_forced_paths_at_narrow_lengths_vectors(field, path, n, hkv):
    # the schedule's lengths vector is as wide as the batch (ops/decode_config.length_block): 2, 8 and 32
    # lanes here, and a batch that is not a power of two (5, 17), compiled for the GPU
    own = torch.randint(0, 300, (n,)).tolist()
    own[0] = 0
    with _path(field):
        check(*inputs(n, 32, hkv, 128, 3000, own), name=f"{path} x{n} hkv{hkv}")
        assert _last_plan().path == path


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,hq,hkv,d,P", [(64, 32, 8, 128, 8192), (5, 32, 8, 64, 1000), (100, 32, 32, 128, 4097),
                                          (2, 8, 1, 128, 1), (33, 32, 4, 64, 63), (300, 16, 8, 128, 640)])
@pytest.mark.parametrize("ordered,warps", [(False, 4), (None, 4), (False, 8), (None, 8), (False, 12), (None, 12)])
def test_overlap_path(monkeypatch, dtype, n, hq, hkv, d, P, ordered, warps):
    # the Gluon prefix (one or two programs per SM, a ragged last tile, rows that are not a multiple of
    # 64 or 128; 64 rows a program (4 warps), 128 over two warp groups sharing the K/V ring (8; the rule takes 128
    # rows on a side stream at MHA 32k x256), or 128 warp-specialized (12: two consumer warp groups and a loading
    # warp) with the own tokens on a side stream (ORDERED False) or as the rule has it
    # (None: every shape here has at most 4096 (sample, kv head) pairs, so the prefix's dependent launch), against
    # the reference and against the Triton states path
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb, bifurcated_overlap as ov
    monkeypatch.setattr(ov, "ORDERED", ordered)
    monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache())
    own = torch.randint(0, 300, (n,)).tolist()
    own[0] = 0
    args = inputs(n, hq, hkv, d, P, own, dtype)
    with _path(4, warps):
        out, lse = check(*args, name=f"overlap {n} {hq}/{hkv} d{d} P{P} warps {warps}")
        plan = _last_plan()
        assert plan.path == "overlap" and (ordered is None or not plan.ordered)
        assert plan.info["prefix_rows"] == min(16 * warps, 128)
        assert plan.info["prefix_warp_specialized"] == (warps == 12)
    with _path(3):
        ref_out, ref_lse = leanattn.bifurcated_decode(*args, return_lse=True)
        assert _last_plan().path == "states"
    assert_rel_close("overlap against states", out, ref_out.double(), TOLERANCE[dtype])
    assert_lse_close("overlap against states lse", lse, ref_lse.double(), 1e-2)


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("n,hq,hkv,d,P,stages", [(64, 32, 8, 128, 8192, 3), (64, 32, 8, 128, 8192, 4),
                                                 (5, 32, 8, 64, 1000, 2), (100, 32, 32, 128, 4097, 3),
                                                 (2, 8, 1, 128, 1, 3), (300, 16, 8, 128, 640, 4)])
def test_overlap_ws_pingpong(monkeypatch, n, hq, hkv, d, P, stages):
    # the warp-specialized prefix with its consumers taking turns (ops/bifurcated_overlap.WS_PINGPONG): one tile
    # (no turn taken), ragged last tiles, 2-4 stages, with and without own tokens, against the reference
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb, bifurcated_overlap as ov
    monkeypatch.setattr(ov, "WS_PINGPONG", True)
    monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache())
    own = torch.randint(0, 300, (n,)).tolist()
    own[0] = 0
    args = inputs(n, hq, hkv, d, P, own, torch.bfloat16)
    with _path(4, 12, stages):
        check(*args, name=f"ping-pong {n} {hq}/{hkv} d{d} P{P} stages {stages}")
        assert _last_plan().info["prefix_warp_specialized"] and _last_plan().info["prefix_stages"] == stages
        check(*args[:3], None, None, None, name=f"ping-pong prefix only {n} {hq}/{hkv} d{d} P{P}")


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("n,hkv,P,path,rows,ws", [
    (64, 8, 8192, "overlap", 64, False), (16, 32, 32768, "overlap", 64, False), (64, 8, 16384, "overlap", 128, True),
    (256, 8, 8192, "overlap", 128, True), (64, 8, 32768, "overlap", 128, True), (32, 8, 8192, "states", None, None),
    (64, 32, 8192, "states", None, None)])
def test_overlap_is_the_default_where_preferred(n, hkv, P, path, rows, ws):
    # and the Gluon prefix's rows a program and kernel by ops/bifurcated_overlap.prefix_rows and
    # prefix_warp_specialized (GQA 16k and 32k x64, GQA 8k x256: 128 rows warp-specialized)
    check(*inputs(n, 32, hkv, 128, P, [256] * n), name=f"default {n} {hkv} {P}")
    info = _last_plan().info
    assert _last_plan().path == path and info.get("prefix_rows") == rows
    assert info.get("prefix_warp_specialized") == ws


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
def test_overlap_prefix_only_and_strided_prefix():
    q, pk, pv, k, v, sl = inputs(48, 32, 8, 128, 3000, [10] * 48)
    with _path(4):
        out, lse = leanattn.bifurcated_decode(q, pk, pv, None, None, return_lse=True)
        assert _last_plan().path == "overlap"
        ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, None, None)
        assert_rel_close("prefix only", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("prefix only lse", lse, ref_lse, 1e-2)
        # rows of a larger buffer (row stride > Hkv * D): still TMA-readable
        big_k = torch.randn(3000, 16, 128, dtype=q.dtype, device="cuda")
        big_v = torch.randn_like(big_k)
        check(q, big_k[:, 2:10], big_v[:, 2:10], k, v, sl, name="strided prefix")
        assert _last_plan().path == "overlap"
        # heads not adjacent (stride(1) != D): the Triton states path
        check(q, big_k[:, ::2], big_v[:, ::2], k, v, sl, name="head-strided prefix")
        assert _last_plan().path == "states"


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
def test_overlap_plan_keys_on_the_prefix_alignment_and_keeps_no_prefix():
    import gc
    import weakref
    q, pk, pv, k, v, sl = inputs(64, 32, 8, 128, 2048, [256] * 64)

    def off16(t):  # the same values 2 bytes past a 16-byte boundary
        buf = torch.empty(t.numel() + 8, dtype=t.dtype, device="cuda")
        view = buf[1:1 + t.numel()].view(t.shape)
        view.copy_(t)
        return view
    check(q, pk, pv, off16(k), off16(v), sl, name="own caches off 16 bytes")
    assert _last_plan().path == "overlap"
    # a prefix off 16 bytes with aligned own caches: once the same plan key, now the states path
    check(q, off16(pk), off16(pv), k, v, sl, name="prefix off 16 bytes")
    assert _last_plan().path == "states"
    # a plan does not keep the caller's prefix alive (its TMA descriptors are built per call)
    pk2, pv2 = pk.clone(), pv.clone()
    leanattn.bifurcated_decode(q, pk2, pv2, k, v, sl)
    assert _last_plan().path == "overlap"
    ref = weakref.ref(pk2)
    del pk2, pv2
    gc.collect()
    assert ref() is None


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("ordered", [False, True])
def test_overlap_deterministic_on_a_callers_stream(monkeypatch, ordered):
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb, bifurcated_overlap as ov
    monkeypatch.setattr(ov, "ORDERED", ordered)
    monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache())
    q, pk, pv, k, v, sl = inputs(64, 32, 8, 128, 8192, torch.randint(0, 300, (64,)).tolist())
    first = leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    assert _last_plan().path == "overlap" and _last_plan().ordered == ordered
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # a caller's own stream: the fork and join (or the dependent launch) follow it
        for _ in range(20):
            q2 = q * 1.0  # produced on this stream just before the call
            assert torch.equal(leanattn.bifurcated_decode(q2, pk, pv, k, v, sl), first)
    torch.cuda.synchronize()


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("n,hq,hkv,d,P", [(64, 32, 8, 128, 8192), (256, 32, 32, 128, 2048), (5, 32, 8, 64, 1000),
                                          (300, 16, 8, 128, 640)])
def test_overlap_ordered(monkeypatch, n, hq, hkv, d, P):
    # ops/bifurcated_overlap.ORDERED: the own tokens as the Gluon prefix's programmatic dependent launch on one
    # stream. The state slots are NaN before each call, so a merge that ran before the prefix or the own tokens
    # finished would show; 20 calls (the last arriver's counter resets) and a graph replayed with new queries and
    # lengths give the same bits as an eager call on the same inputs
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb, bifurcated_overlap as ov
    monkeypatch.setattr(ov, "ORDERED", True)
    monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache())  # plans made under another ORDERED are not reused
    own = torch.randint(0, 300, (n,)).tolist()
    own[0] = 0
    q, pk, pv, k, v, sl = args = inputs(n, hq, hkv, d, P, own)
    with _path(4):
        out, _ = check(*args, name=f"ordered {n} {hq}/{hkv} d{d} P{P}")
        plan = _last_plan()
        assert plan.path == "overlap" and plan.ordered
        first = _nan_call(*args)
        assert torch.equal(first, out)
        for _ in range(20):
            assert torch.equal(_nan_call(*args), first)
        _check_graph_with_new_inputs(*args)
        check(*args, name=f"ordered {n} {hq}/{hkv} d{d} P{P}, new lengths")
        # a plan first made inside a graph capture, with its buffers (the counter's zeros then exist only once the
        # graph replays), called eagerly before any replay and then after
        monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache())
        monkeypatch.setattr(runtime, "_WORKSPACES", {})
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2):
            leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
        assert _last_plan().ordered
        check(*args, name=f"ordered {n} {hq}/{hkv} d{d} P{P}, plan made in a capture")
        g2.replay()
        check(*args, name=f"ordered {n} {hq}/{hkv} d{d} P{P}, plan made in a capture, after a replay")


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
def test_overlap_states_written_inside_the_fork(monkeypatch):
    # the plan's state slots are filled with NaN before each call, so a launch that ran outside the fork and join
    # (the merge reading states not yet written) would not go unseen; eagerly, and from a graph replayed with new
    # queries and lengths, against an eager call on the same inputs (bitwise: the same launches). The own tokens
    # go to a side stream that is never the caller's (torch hands streams out of a shared pool)
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb, bifurcated_overlap as ov
    monkeypatch.setattr(ov, "ORDERED", False)  # 512 pairs: ordered by default (ov.ordered)
    monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache())
    args = q, pk, pv, k, v, sl = inputs(64, 32, 8, 128, 8192, torch.randint(0, 300, (64,)).tolist())
    leanattn.bifurcated_decode(q, pk, pv, k, v, sl)  # makes the plan
    assert _last_plan().path == "overlap" and not _last_plan().ordered
    assert _last_plan().own_plan.meta["num_stages"] == ov.OWN_STAGES  # two own programs fit beside a prefix one
    assert not _nan_call(*args).isnan().any()
    assert all(side != torch.cuda.current_stream() for side in ov._SIDE_STREAMS.values())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _nan_call(*args)
        assert all(side != s for side in ov._SIDE_STREAMS.values())
    torch.cuda.current_stream().wait_stream(s)
    _check_graph_with_new_inputs(*args)


def test_deterministic_20_runs():
    ids = torch.randint(0, 3, (48,), dtype=torch.int32, device="cuda")
    q, pk, pv, k, v, sl = inputs(48, 32, 8, 128, 6000, torch.randint(0, 500, (48,)).tolist(), G=3)
    first, first_lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, prefix_ids=ids, return_lse=True)
    for _ in range(20):
        o, l = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, prefix_ids=ids, return_lse=True)
        assert torch.equal(o, first) and torch.equal(l, first_lse)


def test_cuda_graph_survives_a_larger_batch(monkeypatch):
    """A graph captured at one batch size replays correctly after a larger batch has grown the
    shared workspaces and pushed the captured plan out of the plan cache (runtime.workspace keeps
    the buffers it replaced)."""
    from leanattn import runtime
    from leanattn.ops import bifurcated as opb
    monkeypatch.setattr(opb, "_PLANS", runtime.PlanCache(limit=1))
    q, pk, pv, k, v, sl = inputs(8, 32, 8, 128, 2048, [256] * 8)
    leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    big = inputs(64, 32, 8, 128, 2048, [256] * 64)
    check(*big, name="larger batch")
    assert len(opb._PLANS) == 1
    torch.cuda.empty_cache()
    for trial in range(3):
        sl.copy_(torch.randint(0, 257, (8,), dtype=torch.int32))
        q.normal_()
        g.replay()
        torch.cuda.synchronize()
        ref, _ = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl)
        assert_rel_close(f"graph replay after growth {trial}", out, ref, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("multi", ["single", "single-overlap", "bound", "capture-bound"])
def test_cuda_graph_new_lengths_and_ids(multi):
    # "bound": max_group_size given; "capture-bound": none, so the capture assumes every sample may
    # read the same prompt (B rows per kv head); "single-overlap": 64 GQA samples, the overlap path on sm_90
    n = 64 if multi == "single-overlap" else 16
    multi = None if multi.startswith("single") else multi
    q, pk, pv, k, v, sl = inputs(n, 32, 8, 128, 5000, [256] * n, G=3 if multi else None)
    ids = torch.zeros(n, dtype=torch.int32, device="cuda") if multi else None
    plens = torch.tensor([5000, 10, 0], dtype=torch.int32, device="cuda") if multi else None
    kw = dict(max_group_size=n) if multi == "bound" else {}
    leanattn.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids, **kw)  # compile and allocate outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids, **kw)
    for trial in range(4):
        sl.copy_(torch.randint(0, 257, (n,), dtype=torch.int32))
        if multi:
            ids.copy_(torch.randint(0, 3, (n,), dtype=torch.int32))
            plens.copy_(torch.randint(0, 5001, (3,), dtype=torch.int32))
        q.normal_()
        g.replay()
        torch.cuda.synchronize()
        ref, _ = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids)
        assert_rel_close(f"graph replay {trial}", out, ref, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("even", ["1", "0"], ids=["even", "persistent"])
@pytest.mark.parametrize("hkv", [8, 32])
def test_one_sample_graph_merges_apart(monkeypatch, hkv, even):
    # one sample, 8192 + 256 tokens: cut into even pieces of each row (concat_split_kernel and a merge launch), or
    # on the persistent kernel (LEANATTN_DECODE_EVEN=0), whose eager calls merge in-kernel and a captured graph in
    # a second launch (ops/stream_k_launch.py); both match the reference over new lengths, and eager calls stay
    # bitwise deterministic
    from leanattn.ops import bifurcated as bif
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", even)
    bif._PLANS.clear()
    q, pk, pv, k, v, sl = inputs(1, 32, hkv, 128, 8192, [256])
    first = leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    plan = [p for p in bif._PLANS.values() if p.path == "concat"][-1]
    assert (plan.even > 1) is (even == "1")
    if even == "0":
        assert plan.concat_launch.mode == 2  # GRAPHS
    assert torch.equal(leanattn.bifurcated_decode(q, pk, pv, k, v, sl), first)
    torch.cuda.synchronize()
    merges = []
    if even == "1":
        real_merge = plan.launch_merge
        plan.launch_merge = lambda *a: (merges.append(1), real_merge(*a))
    else:
        real_merge = plan.concat_launch.merge
        plan.concat_launch.merge = lambda *a: (merges.append(1), real_merge(*a))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    assert merges == [1]  # the graph holds the merge launch
    for own in (256, 1, 0, 200):
        sl.fill_(own)
        q.normal_()
        g.replay()
        torch.cuda.synchronize()
        ref, _ = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl)
        assert_rel_close(f"graph replay own={own}", out, ref, TOLERANCE[torch.bfloat16])
        assert_rel_close(f"eager own={own}", leanattn.bifurcated_decode(q, pk, pv, k, v, sl), ref,
                         TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("prompts", ["multi", "single-overlap"])
def test_torch_compile(mode, prompts):
    # "single-overlap": one prompt and 64 GQA samples, the overlap path on sm_90 (its side stream inside
    # torch.compile's CUDA graphs under reduce-overhead)
    torch._dynamo.reset()
    if prompts == "multi":
        ids = torch.tensor([1, 0, 1, 1], dtype=torch.int32, device="cuda")
        q, pk, pv, k, v, sl = inputs(4, 32, 8, 128, 3000, [300, 0, 17, 256], G=2)
    else:
        ids = None
        q, pk, pv, k, v, sl = inputs(64, 32, 8, 128, 3000, torch.randint(0, 300, (64,)).tolist())

    def f(q, pk, pv, k, v, sl, ids):
        o, lse = leanattn.bifurcated_decode(q * 1.0, pk, pv, k, v, sl, prefix_ids=ids, return_lse=True)
        return o.float() * 2.0, lse

    cf = torch.compile(f, fullgraph=True, mode=mode)
    for _ in range(3):
        o, lse = cf(q, pk, pv, k, v, sl, ids)
    if prompts != "multi" and HOPPER:
        assert _last_plan().path == "overlap"
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, prefix_ids=ids)
    assert_rel_close("compiled", o / 2.0, ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("compiled lse", lse, ref_lse, 1e-2)


def test_cascade_three_levels_gpu():
    n = 24
    ids = torch.randint(0, 4, (n,), dtype=torch.int32, device="cuda")
    q, sk, sv, k, v, sl = inputs(n, 32, 8, 128, 2000, torch.randint(0, 400, (n,)).tolist())
    dk = torch.randn(4, 3000, 8, 128, dtype=q.dtype, device="cuda")
    dv = torch.randn_like(dk)
    dl = torch.tensor([3000, 1, 0, 2500], dtype=torch.int32, device="cuda")
    levels = [(sk, sv), (dk, dv, dl, ids)]
    out = leanattn.cascade_decode(q, levels, k, v, sl)
    ref, _ = leanattn.reference.cascade_decode(q, levels, k, v, sl)
    assert_rel_close("cascade", out, ref, TOLERANCE[torch.bfloat16])


def test_opcheck_gpu():
    q, pk, pv, k, v, sl = inputs(3, 8, 2, 64, 100, [30, 0, 7])
    torch.library.opcheck(torch.ops.leanattn.bifurcated_decode.default,
                          (q, pk, pv, k, v, sl, None, None, None, 0.125, 0, 0, 0, 0))


SANITIZE = r"""
import sys, torch
sys.path.insert(0, {src!r})
import leanattn
torch.manual_seed(0)
for n, hq, hkv, d, P in ((5, 32, 8, 128, 700), (40, 32, 8, 128, 300), (3, 16, 8, 256, 90), (2, 64, 1, 64, 0)):
    q = torch.randn(n, hq, d, dtype=torch.bfloat16, device="cuda")
    pk = torch.randn(2, P, hkv, d, dtype=torch.bfloat16, device="cuda"); pv = torch.randn_like(pk)
    k = torch.randn(n, 333, hkv, d, dtype=torch.bfloat16, device="cuda"); v = torch.randn_like(k)
    sl = torch.randint(0, 334, (n,), dtype=torch.int32, device="cuda")
    ids = torch.randint(0, 2, (n,), dtype=torch.int32, device="cuda")
    leanattn.bifurcated_decode(q, pk[0], pv[0], k, v, sl)
    leanattn.bifurcated_decode(q, pk, pv, k, v, sl, prefix_ids=ids, num_programs=37)
    leanattn.cascade_decode(q, [(pk[0], pv[0]), (pk, pv, None, ids)], k, v, sl)
torch.cuda.synchronize()
print("sanitize_bifurcated: all launches done")
"""


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool, tmp_path):
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer not on PATH")
    script = tmp_path / "sanitize_bifurcated.py"
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    script.write_text(SANITIZE.format(src=src))
    r = subprocess.run([exe, "--tool", tool, "--error-exitcode", "3", sys.executable, str(script)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all launches done" in r.stdout


def test_one_query_row():
    # B * Hq = 1: Triton makes a stride of 1 a constant (a Python int), which the merge's int64 cast of it could not
    # take (a CompilationError on GPUs only; found by a review's fuzzing on an H100): the windowed call (states path
    # and its merge), a prefix alone, a cascade of two levels, one sample's even pieces, and merge_states itself
    d, dt = "cuda", torch.bfloat16
    q = torch.randn(1, 1, 64, device=d, dtype=dt)
    pk, pv = torch.randn(2, 3000, 1, 64, device=d, dtype=dt), torch.randn(2, 3000, 1, 64, device=d, dtype=dt)
    k, v = torch.randn(1, 16, 1, 64, device=d, dtype=dt), torch.randn(1, 16, 1, 64, device=d, dtype=dt)
    i32 = lambda x: torch.tensor(x, device=d, dtype=torch.int32)  # noqa: E731
    lens, plens = i32([3]), i32([2994])
    calls = {"window": ((q, pk[0], pv[0], k, v, lens, None, plens), dict(window_left=5)),
             "prefix alone": ((q, pk[0], pv[0], None, None), {}),
             "one sample": ((q, pk[0], pv[0], k, v, lens), {})}
    for name, (args, kw) in calls.items():
        out, lse = leanattn.bifurcated_decode(*args, return_lse=True, **kw)
        ref, ref_lse = leanattn.reference.bifurcated_decode(*args, **kw)
        assert_rel_close(name, out, ref, TOLERANCE[dt])
        assert_lse_close(name, lse, ref_lse, 1e-2)
    levels = [(pk[0], pv[0]), (pk, pv, i32([3000, 10]), i32([1]))]
    out = leanattn.cascade_decode(q, levels, k, v, lens)
    assert_rel_close("cascade", out, leanattn.reference.cascade_decode(q, levels, k, v, lens)[0], TOLERANCE[dt])
    outs, lses = torch.randn(3, 1, 1, 64, device=d, dtype=dt), torch.randn(3, 1, 1, device=d)
    out, lse = leanattn.merge_states(outs, lses)
    w = torch.softmax(lses.double(), 0)
    assert_rel_close("merge_states", out, (w[..., None] * outs.double()).sum(0), TOLERANCE[dt])
