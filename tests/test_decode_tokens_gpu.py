"""GPU-only tests of ``decode`` with several query tokens a sequence (``q (B, Lq, Hq, D)``): bf16 at realistic sizes,
causal and not, with sliding windows, both schedules, every load path, paged, float8 and soft-capped caches, one
sequence, CUDA-graph replay with new lengths, determinism, torch.compile. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def check(q, k, v, sl, bt=None, causal=True, **kw):
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, causal=causal, **kw)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl, bt, None, kw.get("k_scale", 1.0), kw.get("v_scale", 1.0),
                                             kw.get("softcap", 0.0), kw.get("window_left", -1), causal)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    return out


def inputs(lens, lq, hq=32, hkv=8, d=128):
    q = torch.randn(len(lens), lq, hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(len(lens), max(lens), hkv, d, dtype=torch.bfloat16, device="cuda")
    return q, k, torch.randn_like(k), torch.tensor(lens, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (16, 8, 256), (32, 32, 64), (64, 1, 128)])
@pytest.mark.parametrize("lq", [2, 4, 8])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_tokens_ragged_large(hq, hkv, d, lq, schedule):
    # shorter than the tokens, one token, one tile past, long
    lens = [9000, 0, 1, 3, 20000, 129]
    q, k, v, sl = inputs(lens, lq, hq, hkv, d)
    check(q, k, v, sl, schedule=schedule)
    check(q, k, v, sl, schedule=schedule, causal=False)
    check(q, k, v, sl, schedule=schedule, window_left=1000)


@pytest.mark.parametrize("load", ["0", "1", "2"], ids=["pointers", "blockptr", "tma"])
def test_tokens_load_paths(decode_load, load):
    decode_load(load)
    lens = [30000, 5, 4200]
    q = torch.randn(3, 4, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(3, 8, max(lens), 128, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
    v = torch.randn_like(k)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    check(q, k, v, sl)
    out = check(q, k, v, sl, window_left=1000)
    # keys before the first token's window hold NaN: nothing of them reaches the output
    for b, n in enumerate(lens):
        k[b, :max(n - 1004, 0)] = float("nan")
        v[b, :max(n - 1004, 0)] = float("nan")
    assert torch.equal(leanattn.decode(q, k, v, sl, window_left=1000, causal=True), out)


@pytest.mark.parametrize("page", [1, 16, 64, 256])
def test_tokens_paged_fp8_softcap(page):
    lens = [9000, 3, 0, 30001]
    q = torch.randn(4, 4, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(4, max(lens), 8, 128, device="cuda")
    v = torch.randn_like(k)
    kp, vp, bt = paged_kv(k.bfloat16(), v.bfloat16(), lens, page)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    check(q, kp, vp, sl, bt)
    check(q, kp, vp, sl, bt, window_left=2000)
    check(q, kp.to(torch.float8_e4m3fn), vp.to(torch.float8_e4m3fn), sl, bt)
    check(q, kp, vp, sl, bt, softcap=30.0)


@pytest.mark.parametrize("n", [4096, 100000, 500000])
@pytest.mark.parametrize("lq", [4, 16])
def test_tokens_one_sequence(n, lq):
    q, k, v, _ = inputs([n], lq)
    check(q, k, v, None)
    check(q, k, v, torch.tensor([n - 7], dtype=torch.int32, device="cuda"))


def test_tokens_cuda_graph_new_lengths_deterministic_compile():
    N = 40000
    q, k, v, sl = inputs([N, 10, 500], 4)
    assert_graph_replays(lambda: leanattn.decode(q, k, v, sl, causal=True), sl,
                         ([N, 10, 500], [1, 0, N], [12345, 2, 34567]),
                         lambda: leanattn.reference.decode(q, k, v, sl, causal=True)[0], TOLERANCE[torch.bfloat16])
    compiled = torch.compile(lambda *a: leanattn.decode(*a, causal=True), fullgraph=True)
    assert torch.equal(compiled(q, k, v, sl), leanattn.decode(q, k, v, sl, causal=True))
