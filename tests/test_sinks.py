"""Attention sinks (``sinks=``, gpt-oss) on every decode op against the float64 reference, where a sink is one more
key of value zero in each head's softmax; the merge of a sink state at its edges; the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.distributed import Placement, ShardedKVCache, ring_decode, spawn, tree_decode
from leanattn.merges import apply_sinks
from leanattn.merges.sinks import with_sinks
from leanattn.testing import assert_states_match
from test_decode import make_inputs
import interpreter_patch_once

interpreter_patch_once.install()  # (the spawned ranks import this module, not conftest.py)


def sinks_for(hq, scale=3.0, seed=0):
    return torch.randn(hq, generator=torch.Generator().manual_seed(seed)) * scale


# the schedules turn over the layouts, each meeting a contiguous and a paged cache (both on every layout cost CI 15 s)
@pytest.mark.parametrize("hq,hkv,d,page,schedule", [(8, 2, 64, None, "lean"), (4, 4, 128, 4, "split"),
                                                    (6, 1, 64, 1, "lean"), (8, 2, 64, None, "split")], ids=str)
def test_decode(hq, hkv, d, page, schedule):
    # empty sequence 1: its heads' output is zero and its LSE the sink
    q, k, v, sl, bt = make_inputs(4, hq, hkv, d, [30, 0, 7, 19], page_size=page)
    s = sinks_for(hq)
    kw = dict(schedule=schedule, num_programs=5, num_splits=3)
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, sinks=s, **kw)
    assert_states_match("one token", q, out, lse, *reference.decode(q, k, v, sl, bt, sinks=s))
    torch.testing.assert_close(lse[1], s)  # (the sink passes through log2 units: equal to an ulp)
    assert not out[1].any()
    q4 = torch.randn(4, 3, hq, d, dtype=q.dtype)
    for causal, window in ((True, -1), (True, 5), (False, 11)):
        out, lse = leanattn.decode(q4, k, v, sl, bt, return_lse=True, sinks=s, causal=causal, window_left=window, **kw)
        ref = reference.decode(q4, k, v, sl, bt, sinks=s, causal=causal, window_left=window)
        assert_states_match(f"3 tokens causal={causal} window={window}", q4, out, lse, *ref)
    cu = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int32)
    qp = torch.randn(6, hq, d, dtype=q.dtype)
    out, lse = leanattn.decode(qp, k, v, sl, bt, return_lse=True, sinks=s, causal=True, cu_seqlens_q=cu,
                               max_seqlen_q=3, **kw)
    assert_states_match("packed", qp, out, lse, *reference.decode(qp, k, v, sl, bt, sinks=s, causal=True,
                                                                   cu_seqlens_q=cu))
    # without return_lse: the same output
    assert torch.equal(leanattn.decode(q, k, v, sl, bt, sinks=s, **kw), leanattn.decode(q, k, v, sl, bt,
                                                                                        return_lse=True, sinks=s,
                                                                                        **kw)[0])


@pytest.mark.parametrize("merge,even", [("0", "0"), ("1", "0"), ("0", "1")])
def test_decode_launch_forms(monkeypatch, merge, even):
    # the sink rides on each row's first piece: pieces merged in-kernel or by the merge launch, or one sequence cut
    # into even pieces on the split kernel (LEANATTN_DECODE_EVEN) with its merge launch
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", even)
    q, k, v, _, _ = make_inputs(1, 8, 2, 64, None, capacity=200)
    s = sinks_for(8, seed=3)
    for programs in (0, 7):
        out, lse = leanattn.decode(q, k, v, return_lse=True, sinks=s, num_programs=programs)
        assert_states_match(f"merge {merge} even {even} programs {programs}", q, out, lse,
                            *reference.decode(q, k, v, sinks=s))


def test_decode_huge_sinks():
    # magnitudes past 2e38 are taken as 2e38 (log2 units stay finite): no NaN, the sink takes every row's weight
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [10, 0], dtype=torch.float32)
    for schedule in ("lean", "split"):
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True, sinks=torch.full((4,), 3e38), schedule=schedule)
        assert not out.any() and torch.allclose(lse, torch.full_like(lse, 2e38))
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True, sinks=torch.full((4,), -3e38), schedule=schedule)
        assert_states_match(f"very negative sinks {schedule}", q[:1], out[:1], lse[:1],
                            *reference.decode(q[:1], k[:1], v[:1], sl[:1]))
        assert not out[1].any() and (lse[1] <= -2e38).all()  # (the empty row: its sink, bounded)


def test_huge_sinks_on_an_empty_cache():
    # a cache of no capacity takes the sinks as the kernels do: magnitudes bounded by 2e38, -inf no sink
    q = torch.randn(1, 3, 64, dtype=torch.float16)
    s = torch.tensor([float("inf"), -3e38, float("-inf")])
    for n in (0, 1):
        k = torch.randn(1, n, 1, 64, dtype=torch.float16)
        out, lse = leanattn.decode(q, k, k, torch.zeros(1, dtype=torch.int32), return_lse=True, sinks=s)
        assert not out.any() and torch.equal(lse, torch.tensor([[2e38, -2e38, float("-inf")]])), (n, lse)
    # the merges' sinks alike (merge_list_kernel: apply_sinks, the shared-prefix ops' last merge)
    o, ls = apply_sinks(torch.ones(2, 3, 64), torch.zeros(2, 3), s)
    assert torch.equal(ls, torch.tensor([[2e38, 0.0, 0.0]] * 2)) and not o[:, 0].any() and (o[:, 1:] == 1).all()


def test_decode_empty_cache():
    # a cache of no tokens: zeros, and the LSE is the sink
    q = torch.randn(2, 4, 64, dtype=torch.float16)
    k = torch.zeros(2, 0, 2, 64, dtype=torch.float16)
    s = sinks_for(4, seed=4).half()
    out, lse = leanattn.decode(q, k, k, return_lse=True, sinks=s)
    assert not out.any() and torch.equal(lse, s.float().expand(2, 4))


def test_decode_float8_softcap_and_sink_dtypes():
    q, k, v, sl, _ = make_inputs(3, 8, 2, 64, [25, 1, 12])
    f8 = torch.float8_e4m3fn
    kq, vq = (k / 2).to(f8), (v / 4).to(f8)
    s = sinks_for(8, seed=1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # gpt-oss keeps its sinks in bf16
        sd = s.to(dtype)
        out, lse = leanattn.decode(q, kq, vq, sl, return_lse=True, k_scale=2.0, v_scale=4.0, softcap=3.0, sinks=sd)
        ref = reference.decode(q, kq, vq, sl, k_scale=2.0, v_scale=4.0, softcap=3.0, sinks=sd.float())
        assert_states_match(f"float8 capped, sinks {dtype}", q, out, lse, *ref)


def test_shared_prefix_ops():
    q, k, v, sl, bt = make_inputs(4, 8, 2, 64, [9, 0, 14, 3], page_size=4)
    pk, pv = torch.randn(2, 20, 2, 64, dtype=q.dtype), torch.randn(2, 20, 2, 64, dtype=q.dtype)
    plens = torch.tensor([20, 6], dtype=torch.int32)
    ids = torch.tensor([0, 1, 0, 0], dtype=torch.int32)
    s = sinks_for(8, seed=2)
    for window in (-1, 7):
        out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, return_lse=True, sinks=s,
                                              window_left=window)
        ref = reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, sinks=s, window_left=window)
        assert_states_match(f"bifurcated window {window}", q, out, lse, *ref)
    q4 = torch.randn(4, 2, 8, 64, dtype=q.dtype)
    levels = [(pk[0], pv[0]), (pk, pv, plens, ids)]
    out, lse = leanattn.cascade_decode(q4, levels, k, v, sl, bt, return_lse=True, sinks=s, causal=True)
    assert_states_match("cascade tokens", q4, out, lse, *reference.cascade_decode(q4, levels, k, v, sl, bt, sinks=s,
                                                                                 causal=True))


@pytest.mark.parametrize("form", ["states", "states merged in kernel", "split", "fused", "one sample",
                                  "one sample even"])
def test_shared_prefix_paths(monkeypatch, form):
    # the sinks ride in the last merge launch of the paths that have one, and take a launch of their own elsewhere
    from leanattn.ops import bifurcated as bif
    config = {"states merged in kernel": "0,0,0,0,0,0,0,0,2,3", "split": "0,0,0,0,0,0,0,0,0,1",
              "fused": "0,0,0,0,0,0,0,0,0,2"}
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", config.get(form, ""))
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", "1" if form == "one sample even" else "0")
    apart = []
    monkeypatch.setattr(bif, "with_sinks", lambda *a: apart.append(a) or with_sinks(*a))
    bif._PLANS.clear()
    try:
        lens = [29] if form.startswith("one sample") else [5, 0, 12, 30]
        q, k, v, sl, bt = make_inputs(len(lens), 4, 1, 64, lens, capacity=32, page_size=None if "split" in form
                                      or "fused" in form else 4)
        pk, pv = torch.randn(37, 1, 64, dtype=q.dtype), torch.randn(37, 1, 64, dtype=q.dtype)
        s = sinks_for(4, seed=6)
        out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, return_lse=True, sinks=s)
        assert_states_match(form, q, out, lse, *reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, sinks=s))
        (plan,) = bif._PLANS.values()
        assert len(apart) == (not plan.sinks_merged)
        assert plan.sinks_merged is (form in ("states", "one sample even")), form  # (4 even pieces a row)
    finally:
        bif._PLANS.clear()


def test_cascade_forms():
    # no level, one (its pass folds the sinks), two (the merge of the levels does) and a prefix of no key
    q, k, v, sl, bt = make_inputs(3, 4, 2, 64, [6, 0, 11], page_size=4)
    pk, pv = torch.randn(2, 9, 2, 64, dtype=q.dtype), torch.randn(2, 9, 2, 64, dtype=q.dtype)
    lens, ids = torch.tensor([9, 4], dtype=torch.int32), torch.tensor([1, 0, 1], dtype=torch.int32)
    empty = torch.zeros(0, 2, 64, dtype=q.dtype)
    s = sinks_for(4, seed=7)
    for name, levels, own in (("own only", [], (k, v, sl, bt)), ("one level", [(pk, pv, lens, ids)], (k, v, sl, bt)),
                              ("two levels", [(pk[0], pv[0]), (pk, pv, lens, ids)], (k, v, sl, bt)),
                              ("two levels, no own", [(pk[1], pv[1]), (pk, pv, lens, ids)], ()),
                              ("empty prefix, no own", [(empty, empty)], ())):
        out, lse = leanattn.cascade_decode(q, levels, *own, return_lse=True, sinks=s)
        assert_states_match(name, q, out, lse, *reference.cascade_decode(q, levels, *own, sinks=s))


def _tree_steps(rank, world, s):
    # a sharded cache over the ranks: the sink must be merged once, not once a rank
    g = torch.Generator().manual_seed(5)
    cache = ShardedKVCache(2, 2, 64, 40, placement="round_robin", page_size=4, dtype=torch.float16)
    k0, v0 = (torch.randn(2, 23, 2, 64, generator=g).half() for _ in range(2))
    cache.append(k0, v0, counts=torch.tensor([23, 6]))
    q = torch.randn(2, 8, 64, generator=g).half()
    res = {m: cache.decode(q, m, return_lse=True, timeout=60, sinks=s) for m in ("allgather", "allreduce3", "ring")}
    q3 = torch.randn(2, 3, 8, 64, generator=g).half()
    k1, v1 = (torch.randn(2, 3, 2, 64, generator=g).half() for _ in range(2))
    cache.append(k1, v1)
    res["tokens"] = cache.decode(q3, causal=True, return_lse=True, timeout=60, sinks=s)
    return q, q3, (k0, v0, k1, v1), res


def test_tree_decode_merges_the_sink_once():
    s = sinks_for(8, seed=3)
    results = spawn(_tree_steps, 2, (s,), deadline=180)
    q, q3, (k0, v0, k1, v1), _ = results[0]
    lens = torch.tensor([23, 6], dtype=torch.int32)
    ref = reference.decode(q, k0, v0, lens, sinks=s)
    whole_k = torch.zeros(2, 26, 2, 64, dtype=torch.float16)
    whole_v = torch.zeros_like(whole_k)
    for b, n in enumerate((23, 6)):
        whole_k[b, :n], whole_v[b, :n] = k0[b, :n], v0[b, :n]
        whole_k[b, n:n + 3], whole_v[b, n:n + 3] = k1[b], v1[b]
    ref3 = reference.decode(q3, whole_k, whole_v, lens + 3, sinks=s, causal=True)
    for r, (_, _, _, res) in enumerate(results):
        for m in ("allgather", "allreduce3", "ring"):
            assert_states_match(f"{m} rank {r}", q, *res[m], *ref)
        assert_states_match(f"tokens rank {r}", q3, *res["tokens"], *ref3)


def test_single_process_tree_and_ring():
    q, k, v, sl, _ = make_inputs(3, 4, 2, 64, [17, 0, 5])
    s = sinks_for(4, seed=4)
    ref = reference.decode(q, k, v, sl, sinks=s)
    for fn in (tree_decode, ring_decode):
        assert_states_match(fn.__name__, q, *fn(q, k, v, sl, return_lse=True, sinks=s), *ref)
    p = Placement("contiguous", 1, k.shape[1])
    q4 = torch.randn(3, 2, 4, 64, dtype=q.dtype)
    tok = p.token_seqlens(sl, 2, 0).to(torch.int32)
    assert_states_match("per-token lengths", q4, *tree_decode(q4, k, v, tok, return_lse=True, sinks=s),
                        *reference.decode(q4, k, v, sl, sinks=s, causal=True))


def test_apply_sinks_edges():
    out = torch.ones(2, 3, 4)
    lse = torch.tensor([[0.0, float("-inf"), 5.0], [1.0, float("-inf"), -2.0]])
    sinks = torch.tensor([0.0, float("-inf"), float("-inf")])
    o, ls = apply_sinks(out, lse, sinks)
    # head 0: equal weights; head 1: no keys and no sink (zeros, -inf); head 2: no sink (unchanged)
    assert torch.allclose(o[0, 0], torch.full((4,), 0.5)) and torch.allclose(ls[0, 0], torch.tensor(0.6931472))
    assert not o[:, 1].any() and torch.isinf(ls[:, 1]).all() and not torch.isnan(o).any()
    assert torch.equal(o[:, 2], out[:, 2]) and torch.equal(ls[:, 2], lse[:, 2])
    with pytest.raises(ValueError, match=r"sinks: expected shape \(3,\) \(one logit per query head\), got \(2,\)"):
        apply_sinks(out, lse, sinks[:2])
    with pytest.raises(ValueError, match="sinks: expected logits or -inf"):
        apply_sinks(out, lse, torch.tensor([0.0, float("nan"), 1.0]))
    # the state is checked as merge_state checks its states; no sinks: the state as it is
    for bad, err, match in (((None, lse), TypeError, "out: expected a torch.Tensor"),
                            ((out[0, 0], lse), ValueError, "out: expected a .* of at least 2 dimensions"),
                            ((out.long(), lse), TypeError, "out: expected dtype"),
                            ((out, lse[:, 0]), ValueError, r"lse: expected shape \(2, 3\)"),
                            ((out, lse.double()), TypeError, "lse: expected dtype in float32"),
                            ((out, lse.to("meta")), ValueError, "lse: expected device cpu")):
        with pytest.raises(err, match=match):
            apply_sinks(*bad, sinks)
    o, ls = apply_sinks(out, lse, None)
    assert torch.equal(o, out) and torch.equal(ls, lse)


def test_compile_fullgraph():
    q, k, v, sl, bt = make_inputs(3, 8, 2, 64, [20, 3, 0], page_size=4)
    s = sinks_for(8)
    f = torch.compile(lambda q, sl, s: leanattn.decode(q, k, v, sl, bt, return_lse=True, sinks=s), fullgraph=True)
    assert_states_match("compiled", q, *f(q, sl, s), *reference.decode(q, k, v, sl, bt, sinks=s))
    # the shared-prefix ops: the sinks through the pass's custom op, and through the merge of two levels
    pk, pv = torch.randn(2, 9, 2, 64, dtype=q.dtype), torch.randn(2, 9, 2, 64, dtype=q.dtype)
    lens, ids = torch.tensor([9, 4], dtype=torch.int32), torch.tensor([1, 0, 1], dtype=torch.int32)
    levels = [(pk[0], pv[0]), (pk, pv, lens, ids)]
    f = torch.compile(lambda q, sl, s: (leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, lens, ids, return_lse=True,
                                                                   sinks=s),
                                        leanattn.cascade_decode(q, levels, k, v, sl, bt, return_lse=True, sinks=s)),
                      fullgraph=True)
    one, two = f(q, sl, s)
    assert_states_match("compiled bifurcated", q, *one, *reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, lens,
                                                                                     ids, sinks=s))
    assert_states_match("compiled cascade", q, *two, *reference.cascade_decode(q, levels, k, v, sl, bt, sinks=s))


def test_sink_errors():
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [3, 5])
    pk = torch.randn(6, 2, 64, dtype=q.dtype)
    calls = (lambda s: leanattn.decode(q, k, v, sl, sinks=s),
             lambda s: leanattn.bifurcated_decode(q, pk, pk, k, v, sl, sinks=s),
             lambda s: leanattn.cascade_decode(q, [(pk, pk)], k, v, sl, sinks=s),
             lambda s: tree_decode(q, k, v, sl, sinks=s), lambda s: ring_decode(q, k, v, sl, sinks=s))
    for call in calls:
        with pytest.raises(ValueError, match=r"sinks: expected shape \(4,\) \(one logit per query head\), got \(2,\)"):
            call(torch.zeros(2))
        with pytest.raises(ValueError, match="sinks: expected a 1-D tensor"):
            call(torch.zeros(1, 4))
        with pytest.raises(TypeError, match="sinks: expected a float32, float16, bfloat16 or float64 tensor, got "
                                            "dtype torch.int32"):
            call(torch.zeros(4, dtype=torch.int32))
        with pytest.raises(TypeError, match="sinks: expected a torch.Tensor"):
            call([0.0] * 4)
        with pytest.raises(ValueError, match="sinks: expected logits or -inf"):
            call(torch.tensor([0.0, float("nan"), 1.0, 2.0]))
        with pytest.raises(ValueError, match=r"sinks: expected device .+ \(as q\), got meta"):
            call(torch.zeros(4, device="meta"))
    # launch counts of the shared-prefix ops
    for call in (lambda n: leanattn.bifurcated_decode(q, pk, pk, k, v, sl, num_programs=n),
                 lambda n: leanattn.cascade_decode(q, [(pk, pk)], k, v, sl, num_programs=n)):
        with pytest.raises(ValueError, match=r"num_programs: expected an int >= 0 \(0 = fill the GPU\), got -1"):
            call(-1)
