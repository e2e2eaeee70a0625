"""GPU-only tests of ``decode`` over float8 KV caches: bf16 queries at realistic sizes, every load path, paged
caches, one sequence (even pieces), determinism and CUDA-graph replay with new lengths. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def fp8_cache(B, N, hkv, d, fp8, scale):
    """A random ``(B, N, hkv, d)`` cache stored as ``fp8`` (values ``stored * scale``)."""
    return (torch.randn(B, N, hkv, d, device="cuda") / scale).to(fp8)


def check(q, k, v, sl, bt, ks, vs, softmax_scale=None, **kw):
    out, lse = leanattn.decode(q, k, v, sl, bt, softmax_scale, return_lse=True, k_scale=ks, v_scale=vs, **kw)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl, bt, softmax_scale, k_scale=ks, v_scale=vs)
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    return out, lse


@pytest.mark.parametrize("fp8", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (32, 1, 128), (16, 8, 256), (32, 32, 64)])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_fp8_ragged_large(fp8, hq, hkv, d, schedule):
    lens = [20000, 0, 1, 4097, 333, 12345]
    q = torch.randn(len(lens), hq, d, dtype=torch.bfloat16, device="cuda")
    k, v = fp8_cache(len(lens), max(lens), hkv, d, fp8, 0.02), fp8_cache(len(lens), max(lens), hkv, d, fp8, 0.5)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out, _ = check(q, k, v, sl, None, 0.02, 0.5, schedule=schedule)
    assert torch.all(out[1] == 0)


@pytest.mark.parametrize("page", [1, 16, 64, 256])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_fp8_paged_large(page, schedule):
    lens = [9000, 3, 0, 2049]
    q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = fp8_cache(4, max(lens), 8, 128, torch.float8_e4m3fn, 1.0)
    kp, vp, bt = paged_kv(k.float(), (k.float() * 0.5), lens, page)
    check(q, kp.to(k.dtype), vp.to(k.dtype), torch.tensor(lens, dtype=torch.int32, device="cuda"), bt, 1.0, 3.0,
          schedule=schedule)


@pytest.mark.parametrize("load", ["0", "1", "2"], ids=["pointers", "blockptr", "tma"])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (32, 32, 64), (16, 8, 256)])
def test_fp8_load_paths(decode_load, load, hq, hkv, d):
    decode_load(load)
    lens = [30000, 7, 0, 4096]
    q = torch.randn(len(lens), hq, d, dtype=torch.bfloat16, device="cuda")
    k = fp8_cache(len(lens), max(lens), hkv, d, torch.float8_e4m3fn, 0.1)
    v = fp8_cache(len(lens), max(lens), hkv, d, torch.float8_e4m3fn, 0.1)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    for schedule in ("lean", "split"):
        check(q, k, v, sl, None, 0.1, 0.1, schedule=schedule)


@pytest.mark.parametrize("lengths", ["given", "none"])
@pytest.mark.parametrize("hq,hkv,d,n", [(32, 8, 128, 32768), (32, 32, 128, 16384), (16, 8, 256, 32768)])
def test_fp8_one_sequence(hq, hkv, d, n, lengths):
    q = torch.randn(1, hq, d, dtype=torch.bfloat16, device="cuda")
    k = fp8_cache(1, n, hkv, d, torch.float8_e4m3fn, 0.05)
    v = fp8_cache(1, n, hkv, d, torch.float8_e4m3fn, 2.0)
    sl = torch.tensor([n - 5], dtype=torch.int32, device="cuda") if lengths == "given" else None
    out, lse = check(q, k, v, sl, None, 0.05, 2.0)
    again = leanattn.decode(q, k, v, sl, return_lse=True, k_scale=0.05, v_scale=2.0)
    assert torch.equal(again[0], out) and torch.equal(again[1], lse)  # deterministic


@pytest.mark.parametrize("B", [3, 1])
def test_fp8_cuda_graph_new_lengths(B):
    N = 40000
    q = torch.randn(B, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = fp8_cache(B, N, 8, 128, torch.float8_e5m2, 0.25)
    v = fp8_cache(B, N, 8, 128, torch.float8_e5m2, 0.25)
    sl = torch.tensor([N, 10, 500][:B], dtype=torch.int32, device="cuda")
    leanattn.decode(q, k, v, sl, k_scale=0.25, v_scale=0.25)  # compile and allocate the workspaces outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.decode(q, k, v, sl, k_scale=0.25, v_scale=0.25)
    for lens in ([N, 10, 500], [1, 0, N], [12345, 23456, 34567], [0, 0, 0]):
        sl.copy_(torch.tensor(lens[:B], dtype=torch.int32))
        g.replay()
        torch.cuda.synchronize()
        ref, _ = leanattn.reference.decode(q, k, v, sl, k_scale=0.25, v_scale=0.25)
        assert_rel_close(f"replay {lens[:B]}", out, ref, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("magnitude", [1e-30, 1.0, 1e6, 1e30])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_fp8_bf16_query_magnitudes(magnitude, schedule):
    # bf16 queries meet float8 tiles in fp16, each row scaled by a power of two first (kernels/attend.fp8_query):
    # rows far outside fp16's range keep their scores (the interpreter's tests take these products in fp32)
    lens = [5000, 0, 129, 20000]
    q = (torch.randn(len(lens), 32, 128, device="cuda") * magnitude).to(torch.bfloat16)
    q[0, 5] *= 1e-3  # a row of the block at another magnitude than its largest
    k = fp8_cache(len(lens), max(lens), 8, 128, torch.float8_e4m3fn, 0.1)
    v = fp8_cache(len(lens), max(lens), 8, 128, torch.float8_e4m3fn, 0.5)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    check(q, k, v, sl, None, 0.1, 0.5, schedule=schedule, softmax_scale=0.088 / magnitude)


@pytest.mark.parametrize("gap", [12.0, 18.0, 22.0])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_fp8_far_probabilities(gap, schedule):
    # one key ``gap`` nats above 65535 others, its V zero: the output is the others' fp16 probabilities times their
    # V, taken against the max minus 15 in log2 (kernels/attend.fp8_shift), not rounded to zero from 17 nats
    n = 65536
    q = torch.zeros(2, 8, 128, dtype=torch.bfloat16, device="cuda")
    q[..., 0] = 4.0
    k = torch.zeros(2, n, 2, 128, device="cuda")
    k[:, 7, :, 0] = gap / (4.0 * 0.5 * 0.125)
    v = torch.rand(2, n, 2, 128, device="cuda")
    v[:, 7] = 0.0
    sl = torch.tensor([n, n - 3], dtype=torch.int32, device="cuda")
    check(q, k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn), sl, None, 0.5, 1.0, schedule=schedule,
          softmax_scale=0.125)
