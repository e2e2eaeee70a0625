"""GPU-only tests of attention sinks (``sinks=``): gpt-oss's attention shape (64/8 heads, D=64, bf16) at realistic
lengths, full and sliding (128 keys), paged, several query tokens; CUDA-graph replay with new lengths, determinism,
torch.compile; bifurcated decode. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

HQ, HKV, D = 64, 8, 64


def inputs(B, n):
    q = torch.randn(B, HQ, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, n, HKV, D, dtype=torch.bfloat16, device="cuda")
    sinks = torch.randn(HQ, dtype=torch.bfloat16, device="cuda") * 2
    return q, k, torch.randn_like(k), sinks


@pytest.mark.parametrize("schedule", ["lean", "split"])
@pytest.mark.parametrize("window", [-1, 127])
def test_decode(window, schedule):
    own = [30000, 0, 17, 4096, 129, 1]
    q, k, v, sinks = inputs(len(own), max(own))
    sl = torch.tensor(own, dtype=torch.int32, device="cuda")
    kp, vp, bt = paged_kv(k, v, own, 16)
    for kk, vv, table in ((k, v, None), (kp, vp, bt)):
        out, lse = leanattn.decode(q, kk, vv, sl, table, return_lse=True, window_left=window, sinks=sinks,
                                   schedule=schedule)
        ref, ref_lse = leanattn.reference.decode(q, kk, vv, sl, table, window_left=window, sinks=sinks.float())
        assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
    q4 = torch.randn(len(own), 4, HQ, D, dtype=torch.bfloat16, device="cuda")
    out = leanattn.decode(q4, k, v, sl, window_left=window, sinks=sinks, causal=True, schedule=schedule)
    ref = leanattn.reference.decode(q4, k, v, sl, window_left=window, sinks=sinks.float(), causal=True)[0]
    assert_rel_close("tokens", out, ref, TOLERANCE[q.dtype])


def test_graph_replays_deterministic_compile():
    q, k, v, sinks = inputs(16, 8192)
    sl = torch.full((16,), 8192, dtype=torch.int32, device="cuda")
    call = lambda: leanattn.decode(q, k, v, sl, window_left=127, sinks=sinks)  # noqa: E731
    assert_graph_replays(call, sl, ([8192] * 16, [1, 0, 5000] * 5 + [3], list(range(0, 8192, 512))),
                         lambda: leanattn.reference.decode(q, k, v, sl, window_left=127, sinks=sinks.float())[0],
                         TOLERANCE[torch.bfloat16])
    first = call()
    for _ in range(20):
        assert torch.equal(call(), first)
    compiled = torch.compile(lambda *a: leanattn.decode(*a, window_left=127, sinks=sinks), fullgraph=True)
    assert torch.equal(compiled(q, k, v, sl), first)


def test_bifurcated():
    q, k, v, sinks = inputs(16, 256)
    sl = torch.full((16,), 256, dtype=torch.int32, device="cuda")
    pk = torch.randn(8192, HKV, D, dtype=torch.bfloat16, device="cuda")
    pv = torch.randn_like(pk)
    for window in (-1, 127, 1023):
        out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, window_left=window, sinks=sinks)
        ref = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, window_left=window, sinks=sinks.float())[0]
        assert_rel_close(f"bifurcated window {window}", out, ref, TOLERANCE[q.dtype])


@pytest.mark.parametrize("samples", [1, 16, 64])
def test_bifurcated_paths(samples):
    # one sample (the concat path), 16 (states) and 64 (512 stacked rows: the overlap path on Hopper), the sinks in
    # the merge launch where the path has one; a cascade of two levels, merged with the sinks in one launch; graphs
    from leanattn.ops import bifurcated as bif
    q, k, v, sinks = inputs(samples, 256)
    sl = torch.randint(0, 257, (samples,), dtype=torch.int32, device="cuda")
    pk = torch.randn(2, 4096, HKV, D, dtype=torch.bfloat16, device="cuda")
    pv = torch.randn_like(pk)
    plens = torch.tensor([4096, 1500], dtype=torch.int32, device="cuda")
    ids = (torch.arange(samples, device="cuda") % 2).to(torch.int32)
    ref = leanattn.reference.bifurcated_decode(q, pk[0], pv[0], k, v, sl, sinks=sinks.float())
    bif._PLANS.clear()
    out, lse = leanattn.bifurcated_decode(q, pk[0], pv[0], k, v, sl, return_lse=True, sinks=sinks)
    assert_rel_close(f"bifurcated x{samples}", out, ref[0], TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref[1], 1e-2)
    (plan,) = bif._PLANS.values()
    assert plan.sinks_merged is (plan.path in ("states", "overlap") or plan.even > 1), (plan.path, plan.even)
    levels = [(pk[0, :700], pv[0, :700]), (pk, pv, plens, ids)]
    out = leanattn.cascade_decode(q, levels, k, v, sl, sinks=sinks)
    ref = leanattn.reference.cascade_decode(q, levels, k, v, sl, sinks=sinks.float())[0]
    assert_rel_close("cascade", out, ref, TOLERANCE[q.dtype])
    call = lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids, sinks=sinks,  # noqa: E731
                                              max_group_size=samples)
    assert_graph_replays(call, sl, ([256] * samples, [0, 3, 256, 17] * (samples // 4) + [5] * (samples % 4)),
                         lambda: leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids,
                                                                      sinks=sinks.float())[0],
                         TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_caches_of_no_capacity(schedule):
    # no key at all: the output is zeros and the LSE the sink, bounded by 2e38 as the kernels take it (-inf: no
    # sink); a one-token cache of length 0 alike; a shared prefix of no tokens and own caches of no capacity
    q = torch.randn(2, 4, D, dtype=torch.bfloat16, device="cuda")
    s = torch.tensor([float("inf"), -3e38, float("-inf"), 1.5], device="cuda")
    want = torch.tensor([2e38, -2e38, float("-inf"), 1.5], device="cuda").expand(2, 4)
    for n in (0, 1):
        k = torch.randn(2, n, 2, D, dtype=torch.bfloat16, device="cuda")
        sl = torch.zeros(2, dtype=torch.int32, device="cuda")
        out, lse = leanattn.decode(q, k, k, sl, return_lse=True, sinks=s, schedule=schedule)
        assert not out.any() and torch.equal(lse, want), (n, lse)
    empty = torch.zeros(2, 0, 2, D, dtype=torch.bfloat16, device="cuda")
    out, lse = leanattn.decode(q, empty, empty, return_lse=True, sinks=s[3:].expand(4).contiguous(),
                               schedule=schedule)
    assert not out.any() and torch.equal(lse, torch.full_like(lse, 1.5))
    pk = torch.zeros(0, 2, D, dtype=torch.bfloat16, device="cuda")
    for window in (-1, 5):
        out, lse = leanattn.bifurcated_decode(q, pk, pk, empty, empty, return_lse=True, sinks=s, window_left=window)
        assert not out.any() and torch.equal(lse, want), (window, lse)
