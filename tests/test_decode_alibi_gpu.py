"""GPU-only tests of ALiBi (``alibi_slopes=``): BLOOM/MPT's attention shape (32/32 heads, D=128) and GQA 32/8 at
realistic lengths, contiguous and paged, one and four query tokens, both schedules, fp16 and bf16; CUDA-graph replay
with new lengths, determinism, torch.compile. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import (TOLERANCE, alibi_slopes, assert_graph_replays, assert_lse_close, assert_rel_close,
                              paged_kv)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

D = 128


def inputs(B, hq, hkv, n, dtype=torch.bfloat16):
    q = torch.randn(B, hq, D, dtype=dtype, device="cuda")
    k = torch.randn(B, n, hkv, D, dtype=dtype, device="cuda")
    return q, k, torch.randn_like(k), alibi_slopes(hq).cuda()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("schedule", ["lean", "split"])
@pytest.mark.parametrize("hq,hkv", [(32, 32), (32, 8)])
def test_decode(hq, hkv, schedule, dtype):
    own = [30000, 0, 17, 4096, 129, 1]
    q, k, v, slopes = inputs(len(own), hq, hkv, max(own), dtype)
    # BLOOM's slopes make far keys vanish; slopes 64x smaller keep thousands of keys in play
    for s in (slopes, slopes / 64):
        sl = torch.tensor(own, dtype=torch.int32, device="cuda")
        kp, vp, bt = paged_kv(k, v, own, 16)
        for kk, vv, table in ((k, v, None), (kp, vp, bt)):
            out, lse = leanattn.decode(q, kk, vv, sl, table, return_lse=True, alibi_slopes=s, schedule=schedule)
            ref, ref_lse = leanattn.reference.decode(q, kk, vv, sl, table, alibi_slopes=s)
            assert_rel_close("out", out, ref, TOLERANCE[dtype])
            assert_lse_close("lse", lse, ref_lse, 1e-2)
        q4 = torch.randn(len(own), 4, hq, D, dtype=dtype, device="cuda")
        out = leanattn.decode(q4, k, v, sl, alibi_slopes=s, causal=True, schedule=schedule)
        ref = leanattn.reference.decode(q4, k, v, sl, alibi_slopes=s, causal=True)[0]
        assert_rel_close("tokens", out, ref, TOLERANCE[dtype])


def test_graph_replays_deterministic_compile():
    q, k, v, slopes = inputs(16, 32, 32, 8192)
    slopes = slopes / 64
    sl = torch.full((16,), 8192, dtype=torch.int32, device="cuda")
    call = lambda: leanattn.decode(q, k, v, sl, alibi_slopes=slopes)  # noqa: E731
    assert_graph_replays(call, sl, ([8192] * 16, [1, 0, 5000] * 5 + [3], list(range(0, 8192, 512))),
                         lambda: leanattn.reference.decode(q, k, v, sl, alibi_slopes=slopes)[0],
                         TOLERANCE[torch.bfloat16])
    first = call()
    for _ in range(20):
        assert torch.equal(call(), first)
    compiled = torch.compile(lambda *a: leanattn.decode(*a, alibi_slopes=slopes), fullgraph=True)
    assert torch.equal(compiled(q, k, v, sl), first)
