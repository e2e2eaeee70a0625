"""GPU-only tests of ``decode`` with logit soft-capping: bf16 at realistic sizes, both schedules, paged and float8
caches, CUDA-graph replay with new lengths. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def check(q, k, v, sl, bt=None, **kw):
    out, lse = leanattn.decode(q, k, v, sl, bt, 0.3, return_lse=True, softcap=30.0, **kw)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl, bt, 0.3, kw.get("k_scale", 1.0), kw.get("v_scale", 1.0),
                                             softcap=30.0)
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)


@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (16, 8, 256), (32, 32, 64)])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_softcap_ragged_large(hq, hkv, d, schedule):
    # softmax scale 0.3 over randn: scores of order 10-20 against a cap of 30 (Gemma-2's attention cap is 50)
    lens = [9000, 0, 1, 20000, 129]
    q = torch.randn(len(lens), hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(len(lens), max(lens), hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    check(q, k, v, torch.tensor(lens, dtype=torch.int32, device="cuda"), schedule=schedule)


@pytest.mark.parametrize("page", [1, 16, 64])
def test_softcap_paged_and_fp8(page):
    lens = [9000, 3, 0, 2049]
    q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(4, max(lens), 8, 128, device="cuda")
    v = torch.randn_like(k)
    kp, vp, bt = paged_kv(k.bfloat16(), v.bfloat16(), lens, page)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    check(q, kp, vp, sl, bt)
    check(q, kp.to(torch.float8_e4m3fn), vp.to(torch.float8_e4m3fn), sl, bt, k_scale=1.0, v_scale=1.0)


def test_softcap_cuda_graph_new_lengths():
    N = 40000
    q = torch.randn(3, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(3, N, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([N, 10, 500], dtype=torch.int32, device="cuda")
    leanattn.decode(q, k, v, sl, softmax_scale=0.3, softcap=30.0)  # compile and allocate outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.decode(q, k, v, sl, softmax_scale=0.3, softcap=30.0)
    for lens in ([N, 10, 500], [1, 0, N], [12345, 23456, 34567]):
        sl.copy_(torch.tensor(lens, dtype=torch.int32))
        g.replay()
        torch.cuda.synchronize()
        ref, _ = leanattn.reference.decode(q, k, v, sl, None, 0.3, softcap=30.0)
        assert_rel_close(f"replay {lens}", out, ref, TOLERANCE[torch.bfloat16])
