"""GPU-only tests of ``decode`` over a packed query (``q (total_q, Hq, D)``, ``cu_seqlens_q``): bf16 at realistic
sizes, causal and not, with sliding windows, both schedules, paged, float8 and soft-capped caches, one long sequence
(its rows cut into many pieces), CUDA-graph replay with new lengths and new token counts, determinism,
torch.compile. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def offsets(counts):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device="cuda")


def check(q, k, v, sl, bt, cu, causal=True, **kw):
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, causal=causal, cu_seqlens_q=cu, **kw)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl, bt, None, kw.get("k_scale", 1.0), kw.get("v_scale", 1.0),
                                             kw.get("softcap", 0.0), kw.get("window_left", -1), causal,
                                             cu_seqlens_q=cu)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    return out


def inputs(lens, counts, hq=32, hkv=8, d=128):
    q = torch.randn(sum(counts), hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(len(lens), max(lens), hkv, d, dtype=torch.bfloat16, device="cuda")
    return q, k, torch.randn_like(k), torch.tensor(lens, dtype=torch.int32, device="cuda"), offsets(counts)


@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (16, 8, 256), (32, 32, 64), (64, 1, 128)])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_varlen_ragged_large(hq, hkv, d, schedule):
    # shorter than its tokens, none, one token, one tile past, long
    lens = [9000, 0, 1, 3, 20000, 129]
    q, k, v, sl, cu = inputs(lens, [4, 0, 1, 8, 2, 5], hq, hkv, d)
    check(q, k, v, sl, None, cu, schedule=schedule)
    check(q, k, v, sl, None, cu, schedule=schedule, causal=False)
    check(q, k, v, sl, None, cu, schedule=schedule, window_left=1000, max_seqlen_q=8)


@pytest.mark.parametrize("page", [1, 16, 64, 256])
def test_varlen_paged_fp8_softcap(page):
    lens = [9000, 3, 0, 30001]
    counts = [3, 3, 0, 6]
    q = torch.randn(sum(counts), 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(4, max(lens), 8, 128, device="cuda")
    v = torch.randn_like(k)
    kp, vp, bt = paged_kv(k.bfloat16(), v.bfloat16(), lens, page)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    cu = offsets(counts)
    check(q, kp, vp, sl, bt, cu)
    check(q, kp, vp, sl, bt, cu, window_left=2000)
    check(q, kp.to(torch.float8_e4m3fn), vp.to(torch.float8_e4m3fn), sl, bt, cu)
    check(q, kp, vp, sl, bt, cu, softcap=30.0)


@pytest.mark.parametrize("n", [4096, 500000])
def test_varlen_one_sequence(n):
    # one sequence: its rows cut into many pieces, merged in-kernel eagerly and by the merge launch when captured
    q, k, v, sl, cu = inputs([n], [5])
    check(q, k, v, None, None, cu)
    check(q, k, v, sl - 7, None, cu, max_seqlen_q=16)


def test_varlen_cuda_graph_new_lengths_and_counts_deterministic_compile():
    N = 40000
    q, k, v, sl, cu = inputs([N, 10, 500], [2, 2, 2])

    def call():
        return leanattn.decode(q, k, v, sl, causal=True, cu_seqlens_q=cu, max_seqlen_q=4)

    call()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = call()
    for lens, counts in (([N, 10, 500], [2, 2, 2]), ([1, 0, N], [4, 0, 2]), ([12345, 2, 34567], [1, 4, 1])):
        sl.copy_(torch.tensor(lens, dtype=torch.int32))
        cu.copy_(offsets(counts))
        g.replay()
        torch.cuda.synchronize()
        ref = leanattn.reference.decode(q, k, v, sl, causal=True, cu_seqlens_q=cu)[0]
        assert_rel_close(f"replay {lens} {counts}", out, ref, TOLERANCE[torch.bfloat16])
    first = out.clone()
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, first)
    compiled = torch.compile(lambda *a: leanattn.decode(*a, causal=True, cu_seqlens_q=cu, max_seqlen_q=4),
                             fullgraph=True)
    assert torch.equal(compiled(q, k, v, sl), call())


def test_varlen_needs_max_while_capturing():
    q, k, v, sl, cu = inputs([100, 50], [2, 1])
    leanattn.decode(q, k, v, sl, causal=True, cu_seqlens_q=cu, max_seqlen_q=2)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="max_seqlen_q: expected an int while compiling or capturing"):
        with torch.cuda.graph(g):
            leanattn.decode(q, k, v, sl, causal=True, cu_seqlens_q=cu)
