"""GPU-only tests of ``decode`` with a sliding window (``window_left``): bf16 at realistic sizes, both schedules, every
load path, paged caches whose pages before the window are gone, float8 caches and soft caps, one sequence, CUDA-graph
replay with new lengths, determinism. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def check(q, k, v, sl, bt=None, window=4095, **kw):
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, window_left=window, **kw)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl, bt, None, kw.get("k_scale", 1.0), kw.get("v_scale", 1.0),
                                             kw.get("softcap", 0.0), window)
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    return out


@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (16, 8, 256), (32, 32, 64)])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_window_ragged_large(hq, hkv, d, schedule):
    # shorter than the window, one tile past it, far past it
    lens = [9000, 0, 1, 20000, 129, 4097]
    q = torch.randn(len(lens), hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(len(lens), max(lens), hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    check(q, k, v, torch.tensor(lens, dtype=torch.int32, device="cuda"), schedule=schedule)


@pytest.mark.parametrize("load", ["0", "1", "2"], ids=["pointers", "blockptr", "tma"])
def test_window_load_paths(decode_load, load):
    decode_load(load)
    lens = [30000, 5, 4200]
    q = torch.randn(3, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(3, 8, max(lens), 128, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
    v = torch.randn_like(k)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    for window in (0, 1000, 4095):
        check(q, k, v, sl, window=window)
    # keys before the windows hold NaN: nothing of them reaches the output (whole tiles are loaded here)
    out = check(q, k, v, sl, window=1000)
    for b, n in enumerate(lens):
        k[b, :max(n - 1001, 0)] = float("nan")
        v[b, :max(n - 1001, 0)] = float("nan")
    assert torch.equal(leanattn.decode(q, k, v, sl, window_left=1000), out)


@pytest.mark.parametrize("page", [1, 16, 64, 256])
def test_window_paged_stale_pages_fp8_softcap(page):
    lens = [9000, 3, 0, 30001]
    q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(4, max(lens), 8, 128, device="cuda")
    v = torch.randn_like(k)
    kp, vp, bt = paged_kv(k.bfloat16(), v.bfloat16(), lens, page)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    window = 2000
    out = check(q, kp, vp, sl, bt, window=window)
    # the pages before each window freed: their ids point nowhere, and nothing reads them
    stale = bt.clone()
    for b, n in enumerate(lens):
        stale[b, :max(n - 1 - window, 0) // page] = -1
    assert torch.equal(leanattn.decode(q, kp, vp, sl, stale, window_left=window), out)
    check(q, kp.to(torch.float8_e4m3fn), vp.to(torch.float8_e4m3fn), sl, bt, window=window)
    check(q, kp, vp, sl, bt, window=window, softcap=30.0)


@pytest.mark.parametrize("n", [4096, 100000, 500000])
def test_window_one_sequence(n):
    # one sequence: even pieces of the window's tiles (split kernel) or the persistent kernel with lengths
    q = torch.randn(1, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, n, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    check(q, k, v, None)
    check(q, k, v, torch.tensor([n - 7], dtype=torch.int32, device="cuda"))


def test_window_cuda_graph_new_lengths_deterministic():
    N = 40000
    q = torch.randn(3, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(3, N, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([N, 10, 500], dtype=torch.int32, device="cuda")
    assert_graph_replays(lambda: leanattn.decode(q, k, v, sl, window_left=4095), sl,
                         ([N, 10, 500], [1, 0, N], [12345, 23456, 34567]),
                         lambda: leanattn.reference.decode(q, k, v, sl, None, None, window_left=4095)[0],
                         TOLERANCE[torch.bfloat16])
