"""``decode(k=, v=)``: new keys and values written into the cache at each sequence's length, then attended
(flash-attn's ``flash_attn_with_kvcache(k=, v=)``), against the float64 reference over the cache written by hand.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_rel_close, assert_states_match
from test_decode import SCHEDULES
from test_decode import make_inputs as _make_inputs

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(*args, **kw):
    return _make_inputs(*args, **{"device": DEV, **kw})


def _written_by_hand(k_cache, k_new, lens, block_table):
    """A copy of ``k_cache`` with token ``t`` of ``k_new`` at position ``lens[b] + t`` of sequence ``b``."""
    out = k_cache.clone()
    page = k_cache.shape[1]
    for b in range(k_new.shape[0]):
        for t in range(k_new.shape[1]):
            pos = int(lens[b]) + t
            if block_table is None:
                out[b, pos] = k_new[b, t]
            else:
                out[int(block_table[b, pos // page]), pos % page] = k_new[b, t]
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("page_size", [None, 1, 16], ids=["contiguous", "paged1", "paged16"])
@pytest.mark.parametrize("T,qlen", [(1, 0), (1, 1), (3, 3), (2, 4)], ids=["one", "one-4d", "three", "two-of-four"])
def test_matches_the_cache_written_by_hand(schedule, page_size, T, qlen):
    # lengths before the new tokens: empty, mid-page and ending a page; GQA 8/2
    lens = [0, 7, 16 - T, 30]
    q, k_cache, v_cache, seqlens, bt = make_inputs(4, 8, 2, 64, lens, capacity=40, page_size=page_size)
    if qlen:
        q = torch.randn(4, qlen, 8, 64, dtype=q.dtype, device=DEV)
    k_new, v_new = (torch.randn(4, T, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    want_k, want_v = _written_by_hand(k_cache, k_new, seqlens, bt), _written_by_hand(v_cache, v_new, seqlens, bt)
    before = seqlens.clone()
    out, lse = leanattn.decode(q, k_cache, v_cache, seqlens, bt, return_lse=True, schedule=schedule, causal=True,
                               k=k_new, v=v_new)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    assert torch.equal(seqlens, before)  # not updated, as flash-attn's
    ref_out, ref_lse = reference.decode(q, want_k, want_v, seqlens + T, bt, causal=True)
    assert_states_match(f"T={T} qlen={qlen}", q, out, lse, ref_out, ref_lse)


def test_with_window_sinks_and_buffers():
    q, k_cache, v_cache, seqlens, _ = make_inputs(3, 4, 4, 64, [20, 0, 9], capacity=24)
    k_new, v_new = (torch.randn(3, 2, 4, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    sinks = torch.randn(4, device=DEV)
    want_k, want_v = _written_by_hand(k_cache, k_new, seqlens, None), _written_by_hand(v_cache, v_new, seqlens, None)
    out = torch.empty_like(q)
    res = leanattn.decode(q, k_cache, v_cache, seqlens, window_left=5, sinks=sinks, k=k_new, v=v_new, out=out)
    assert res is out
    ref_out, _ = reference.decode(q, want_k, want_v, seqlens + 2, window_left=5, sinks=sinks)
    assert_rel_close("window", out, ref_out, TOLERANCE[q.dtype])


def test_no_new_token():
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=12)
    empty = torch.empty(2, 0, 2, 64, dtype=q.dtype, device=DEV)
    kept = k_cache.clone()
    out = leanattn.decode(q, k_cache, v_cache, seqlens, k=empty, v=empty)
    assert torch.equal(k_cache, kept) and torch.equal(out, leanattn.decode(q, k_cache, v_cache, seqlens))


def test_errors():
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [5, 9], capacity=12, page_size=4)
    kn = torch.randn(2, 2, 2, 64, dtype=q.dtype, device=DEV)
    cases = [
        (dict(k=kn), ValueError, "v: expected a tensor when k is given"),
        (dict(v=kn), ValueError, "k: expected a tensor when v is given"),
        (dict(k=kn, v=kn, cache_seqlens=None), ValueError, "cache_seqlens: expected the lengths before the new"),
        (dict(k=kn.float(), v=kn.float()), TypeError, r"k: expected dtype torch.float16 \(as k_cache\)"),
        (dict(k=kn[:, :, :1], v=kn[:, :, :1]), ValueError, r"k: expected shape \(2, T, 2, 64\)"),
        (dict(k=kn, v=kn[:, :1]), ValueError, r"v: expected shape \(2, 2, 2, 64\) \(as k\)"),
        (dict(k=kn[0], v=kn[0]), ValueError, "k: expected a 4-D tensor"),
        (dict(k=kn, v=kn, cache_seqlens=seqlens.long()), TypeError, "cache_seqlens: expected dtype torch.int32"),
        # 9 + 4 > 12 tokens of capacity
        (dict(k=torch.cat([kn, kn], 1), v=torch.cat([kn, kn], 1), validate=True), ValueError,
         r"cache_seqlens \+ k.shape\[1\]: expected lengths <= 12"),
        (dict(k=kn, v=kn, out=kn.view(-1)[:q.numel()].view(q.shape)), ValueError, "out: expected memory apart from k"),
    ]
    for kw, cls, msg in cases:
        args = {"cache_seqlens": seqlens, "block_table": bt, **kw}
        with pytest.raises(cls, match=msg):
            leanattn.decode(q, k_cache, v_cache, **args)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="k: expected None with a packed query"):
        leanattn.decode(q, k_cache, v_cache, seqlens, bt, cu_seqlens_q=cu, max_seqlen_q=1, k=kn, v=kn)


def assert_compiled_steps(q, k_cache, v_cache, seqlens, bt, steps, **kw):
    """``steps`` decode steps of one function compiled with ``fullgraph=True``, each appending a new token, the
    lengths advanced between them: each writes at the new end and attends as the reference (``kw``, tensors passed
    as the compiled function's inputs, given to both)."""
    B, _, Hkv, D = k_cache.shape if bt is None else (bt.shape[0], *k_cache.shape[1:])
    torch._dynamo.reset()
    step = torch.compile(lambda q, kc, vc, lens, bt, kn, vn, **kw: leanattn.decode(q, kc, vc, lens, bt, k=kn, v=vn,
                                                                                   **kw), fullgraph=True)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    for _ in range(steps):
        kn, vn = (torch.randn(B, 1, Hkv, D, dtype=q.dtype, device=DEV) for _ in range(2))
        want_k, want_v = _written_by_hand(want_k, kn, seqlens, bt), _written_by_hand(want_v, vn, seqlens, bt)
        out = step(q, k_cache, v_cache, seqlens, bt, kn, vn, **kw)
        assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
        assert_rel_close("compiled step", out, reference.decode(q, want_k, want_v, seqlens + 1, bt, **kw)[0],
                         TOLERANCE[q.dtype])
        seqlens += 1


def test_compile_fullgraph_and_steps():
    # three steps of one compiled function, the lengths advanced between them: each writes at the new end
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [3, 10], capacity=16, page_size=4)
    assert_compiled_steps(q, k_cache, v_cache, seqlens, bt, 3)


@pytest.mark.parametrize("form", ["one token", "prompts", "tokens", "window", "cascade"])
@pytest.mark.parametrize("page_size", [None, 4], ids=["contiguous", "paged4"])
def test_bifurcated_and_cascade(form, page_size):
    # the own tokens of shared-prefix decode take the same appends
    lens = [3, 0, 12, 7]
    q, k_cache, v_cache, seqlens, bt = make_inputs(4, 8, 2, 64, lens, capacity=16, page_size=page_size)
    if form == "tokens":
        q = torch.randn(4, 2, 8, 64, dtype=q.dtype, device=DEV)
    G = 2 if form == "prompts" else None
    pshape = (20, 2, 64) if G is None else (G, 20, 2, 64)
    pk, pv = (torch.randn(pshape, dtype=q.dtype, device=DEV) for _ in range(2))
    kn, vn = (torch.randn(4, 2, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    want_k, want_v = _written_by_hand(k_cache, kn, seqlens, bt), _written_by_hand(v_cache, vn, seqlens, bt)
    kw = dict(window_left=9) if form == "window" else dict(causal=True) if form == "tokens" else {}
    if G:
        kw.update(prefix_lens=torch.tensor([20, 11], dtype=torch.int32, device=DEV),
                  prefix_ids=torch.tensor([1, 0, 1, 1], dtype=torch.int32, device=DEV))
    if form == "cascade":
        levels = [(pk, pv)]
        out, lse = leanattn.cascade_decode(q, levels, k_cache, v_cache, seqlens, bt, return_lse=True, k=kn, v=vn)
        ref_out, ref_lse = reference.cascade_decode(q, levels, want_k, want_v, seqlens + 2, bt)
    else:
        out, lse = leanattn.bifurcated_decode(q, pk, pv, k_cache, v_cache, seqlens, bt, return_lse=True, k=kn, v=vn,
                                              **kw)
        ref_out, ref_lse = reference.bifurcated_decode(q, pk, pv, want_k, want_v, seqlens + 2, bt, **kw)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    assert_states_match(form, q, out, lse, ref_out, ref_lse)


def test_bifurcated_errors():
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=12)
    pk = torch.randn(8, 2, 64, dtype=q.dtype, device=DEV)
    kn = torch.randn(2, 4, 2, 64, dtype=q.dtype, device=DEV)
    with pytest.raises(ValueError, match=r"cache_seqlens \+ k.shape\[1\]: expected lengths <= 12"):
        leanattn.bifurcated_decode(q, pk, pk, k_cache, v_cache, seqlens, k=kn, v=kn, validate=True)
    with pytest.raises(ValueError, match="v: expected a tensor when k is given"):
        leanattn.bifurcated_decode(q, pk, pk, k_cache, v_cache, seqlens, k=kn[:, :1])
    with pytest.raises(TypeError, match="k_cache: expected a torch.Tensor, got NoneType"):
        leanattn.cascade_decode(q, [(pk, pk)], cache_seqlens=seqlens, k=kn[:, :1], v=kn[:, :1])


@pytest.mark.skipif(DEV != "cuda", reason="needs CUDA")
def test_gpu_cuda_graph_writes_at_each_replays_lengths():
    torch.manual_seed(0)
    q, k_cache, v_cache, seqlens, bt = make_inputs(3, 32, 8, 128, [100, 0, 4000], dtype=torch.bfloat16, capacity=4096,
                                                   page_size=16)
    kn, vn = (torch.randn(3, 1, 8, 128, dtype=q.dtype, device=DEV) for _ in range(2))
    out = torch.empty_like(q)
    leanattn.decode(q, k_cache, v_cache, seqlens, bt, k=kn, v=vn, out=out)  # warm-up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        leanattn.decode(q, k_cache, v_cache, seqlens, bt, k=kn, v=vn, out=out)
    for new in ([101, 1, 4001], [7, 3000, 2]):
        seqlens.copy_(torch.tensor(new, dtype=torch.int32))
        kn.normal_()
        vn.normal_()
        want_k, want_v = _written_by_hand(k_cache, kn, seqlens, bt), _written_by_hand(v_cache, vn, seqlens, bt)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
        assert_rel_close(f"replay {new}", out, reference.decode(q, want_k, want_v, seqlens + 1, bt)[0], 1e-2)


def test_review_cases():
    # lengths below 0 (negative indexing would write at the cache's end), pages the new tokens go to outside the
    # window that the query reads, new tokens that are a view of the cache, a lengths tensor of another batch
    kc = torch.randn(2, 8, 1, 64, dtype=torch.float16, device=DEV)
    q = torch.randn(2, 1, 64, dtype=torch.float16, device=DEV)
    ones = torch.ones(2, 2, 1, 64, dtype=torch.float16, device=DEV)
    with pytest.raises(ValueError, match="cache_seqlens: expected lengths >= 0, got a minimum of -2"):
        leanattn.decode(q, kc, kc.clone(), torch.tensor([-2, 0], dtype=torch.int32, device=DEV), k=ones, v=ones,
                        validate=True)
    pool = torch.zeros(4, 1, 1, 64, dtype=torch.float16, device=DEV)
    bt = torch.tensor([[0, -1, 1, 2]], dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match=r"block_table: expected page ids in \[0, 4\) for the pages in use"):
        leanattn.decode(q[:1], pool, pool.clone(), torch.tensor([1], dtype=torch.int32, device=DEV), bt,
                        k=ones[:1], v=ones[:1], window_left=0, validate=True)
    # k a view of the cache: the tokens it held before the call are the ones written
    kc2, vc2 = kc.clone(), kc.clone()
    lens = torch.tensor([1, 1], dtype=torch.int32, device=DEV)
    src_k, src_v = kc2[:, :2].clone(), vc2[:, :2].clone()
    leanattn.decode(q, kc2, vc2, lens, k=kc2[:, :2], v=vc2[:, :2])
    assert torch.equal(kc2[:, 1:3], src_k) and torch.equal(vc2[:, 1:3], src_v)
    with pytest.raises(ValueError, match=r"cache_seqlens: expected shape \(2,\) \(batch size of q\), got \(1,\)"):
        leanattn.decode(q, kc, kc.clone(), lens[:1], k=ones, v=ones)
    # a k that requires grad leaves the cache out of autograd
    kc3 = kc.clone()
    leanattn.decode(q, kc3, kc3.clone(), lens, k=ones.clone().requires_grad_(), v=ones)
    assert not kc3.requires_grad


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_cache_takes_its_bytes(fp8):
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [5, 9], capacity=16, page_size=4)
    kc, vc = k_cache.to(fp8), v_cache.to(fp8)
    kn, vn = (torch.randn(2, 2, 2, 64, device=DEV).to(fp8) for _ in range(2))
    want_k, want_v = _written_by_hand(kc.view(torch.uint8), kn.view(torch.uint8), seqlens, bt), \
        _written_by_hand(vc.view(torch.uint8), vn.view(torch.uint8), seqlens, bt)
    out = leanattn.decode(q, kc, vc, seqlens, bt, k=kn, v=vn)
    assert torch.equal(kc.view(torch.uint8), want_k) and torch.equal(vc.view(torch.uint8), want_v)
    ref = reference.decode(q, want_k.view(fp8), want_v.view(fp8), seqlens + 2, bt)[0]
    assert_rel_close("float8", out, ref, 2e-2)


def test_strided_lengths_table_and_new_tokens():
    # the lengths and the new tokens through views of larger tensors (a block table needs a unit last stride)
    q, k_cache, v_cache, seqlens, bt = make_inputs(3, 4, 2, 64, [5, 0, 9], capacity=16, page_size=4)
    lens = torch.zeros(6, dtype=torch.int32, device=DEV)[::2]
    lens.copy_(seqlens)
    wide = torch.zeros(2 * bt.shape[0], bt.shape[1], dtype=torch.int32, device=DEV)
    wide[::2] = bt
    table = wide[::2]
    kn_big, vn_big = (torch.randn(3, 2, 2, 128, dtype=q.dtype, device=DEV) for _ in range(2))
    kn, vn = kn_big[..., ::2], vn_big[..., 64:]  # a non-unit stride on D, and an offset
    want_k, want_v = _written_by_hand(k_cache, kn, seqlens, bt), _written_by_hand(v_cache, vn, seqlens, bt)
    out = leanattn.decode(q, k_cache, v_cache, lens, table, k=kn, v=vn)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    assert_rel_close("strided", out, reference.decode(q, want_k, want_v, seqlens + 2, bt)[0], TOLERANCE[q.dtype])


@pytest.mark.parametrize("page_size", [None, 4], ids=["contiguous", "paged4"])
def test_unchecked_positions_past_the_capacity_write_nothing(page_size):
    # lengths that were not checked (validate=False): a new token past the capacity, or before 0, is not written
    # into another sequence's slots
    q, k_cache, v_cache, _, bt = make_inputs(2, 4, 2, 64, [8, 8], capacity=8, page_size=page_size)
    kept_k, kept_v = k_cache.clone(), v_cache.clone()
    ones = torch.ones(2, 1, 2, 64, dtype=q.dtype, device=DEV)
    for lens in ([8, 8], [-1, -3]):
        leanattn.ops.kv_append.append_kv(k_cache, v_cache, ones, ones, torch.tensor(lens, dtype=torch.int32,
                                                                                   device=DEV), bt, False)
        assert torch.equal(k_cache, kept_k) and torch.equal(v_cache, kept_v)


def test_many_heads_and_a_head_major_cache():
    # 40 query heads over 10 kv heads (blocks of 16 heads in the launch), a (B, Hkv, N, D) cache seen as NHD
    q = torch.randn(2, 40, 64, dtype=torch.float16, device=DEV)
    k_hnd, v_hnd = (torch.randn(2, 10, 12, 64, dtype=torch.float16, device=DEV) for _ in range(2))
    k_cache, v_cache = k_hnd.transpose(1, 2), v_hnd.transpose(1, 2)
    lens = torch.tensor([3, 10], dtype=torch.int32, device=DEV)
    kn, vn = (torch.randn(2, 2, 10, 64, dtype=torch.float16, device=DEV) for _ in range(2))
    want_k, want_v = _written_by_hand(k_cache, kn, lens, None), _written_by_hand(v_cache, vn, lens, None)
    out = leanattn.decode(q, k_cache, v_cache, lens, k=kn, v=vn)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    assert_rel_close("heads", out, reference.decode(q, want_k, want_v, lens + 2)[0], TOLERANCE[q.dtype])


@pytest.mark.skipif(DEV != "cpu", reason="a 3 GiB cache, allocated untouched, on the host")
def test_head_offsets_past_two_to_the_31():
    # a head-major float8 cache of 3 heads of 2**30 elements: head 2 starts past 2**31 elements
    big = torch.empty(1, 3, 2 ** 24, 64, dtype=torch.float8_e4m3fn)
    k_cache = big.transpose(1, 2)
    kn = torch.randn(1, 1, 3, 64).to(torch.float8_e4m3fn)
    leanattn.ops.kv_append.append_kv(k_cache, k_cache, kn, kn, torch.tensor([5], dtype=torch.int32), None, False)
    assert torch.equal(k_cache[0, 5].view(torch.uint8), kn[0, 0].view(torch.uint8))
