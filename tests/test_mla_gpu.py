"""GPU-only tests of ``leanattn.mla_decode``: DeepSeek-V3's dims (512 + 64, bf16) with 16 and 128 heads, FlashMLA's
paged layout and separate contiguous caches, ragged and empty sequences, both schedules, two query tokens;
CUDA-graph replay with new lengths, determinism, torch.compile. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DC, DR = 512, 64


def inputs(B, heads, n, tokens=0):
    lead = (B, tokens) if tokens else (B,)
    qn = torch.randn(*lead, heads, DC, dtype=torch.bfloat16, device="cuda")
    qp = torch.randn(*lead, heads, DR, dtype=torch.bfloat16, device="cuda")
    wide = torch.randn(B, n, 1, DC + DR, dtype=torch.bfloat16, device="cuda") / 4
    return qn, qp, wide


@pytest.mark.parametrize("schedule", ["lean", "split"])
@pytest.mark.parametrize("heads", [16, 128])
def test_mla(heads, schedule):
    own = [30000, 0, 17, 4096, 129, 1]
    qn, qp, wide = inputs(len(own), heads, max(own))
    sl = torch.tensor(own, dtype=torch.int32, device="cuda")
    pages, _, bt = paged_kv(wide, wide, own, 64)
    for cache, table in ((wide, None), (pages, bt)):
        out, lse = leanattn.mla_decode(qn, qp, cache[..., :DC], cache[..., DC:], sl, table, return_lse=True,
                                       schedule=schedule)
        ref, ref_lse = leanattn.reference.mla_decode(qn, qp, cache[..., :DC], cache[..., DC:], sl, table)
        assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
    qn2, qp2, _ = inputs(len(own), heads, 1, tokens=2)
    out = leanattn.mla_decode(qn2, qp2, wide[..., :DC], wide[..., DC:], sl, causal=True, schedule=schedule)
    ref = leanattn.reference.mla_decode(qn2, qp2, wide[..., :DC], wide[..., DC:], sl, causal=True)[0]
    assert_rel_close("two tokens", out, ref, TOLERANCE[torch.bfloat16])


def test_graph_replays_deterministic_compile():
    qn, qp, wide = inputs(16, 16, 8192)
    pages = wide.view(-1, 64, 1, DC + DR)
    table = torch.arange(pages.shape[0], dtype=torch.int32, device="cuda").view(16, -1)
    ckv, kpe = pages[..., :DC], pages[..., DC:]
    sl = torch.full((16,), 8192, dtype=torch.int32, device="cuda")
    call = lambda: leanattn.mla_decode(qn, qp, ckv, kpe, sl, table)  # noqa: E731
    assert_graph_replays(call, sl, ([8192] * 16, [1, 0, 5000] * 5 + [3], list(range(0, 8192, 512))),
                         lambda: leanattn.reference.mla_decode(qn, qp, ckv, kpe, sl, table)[0],
                         TOLERANCE[torch.bfloat16])
    first = call()
    for _ in range(20):
        assert torch.equal(call(), first)
    compiled = torch.compile(leanattn.mla_decode, fullgraph=True)
    assert torch.equal(compiled(qn, qp, ckv, kpe, sl, table), first)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("schedule", ["lean", "split", "batch_invariant"])
@pytest.mark.parametrize("heads", [16, 128])
def test_mla_fp8(heads, schedule, fp8):
    # vLLM's fp8 MLA cache: the 576-wide cache quantised under one per-tensor scale, contiguous and in FlashMLA's
    # 64-token pages, ragged and empty sequences; against the float64 reference over the dequantised cache
    own = [30000, 0, 17, 4096, 129, 1]
    qn, qp, wide = inputs(len(own), heads, max(own))
    scale = wide.abs().max().item() / torch.finfo(fp8).max
    sl = torch.tensor(own, dtype=torch.int32, device="cuda")
    pages, _, bt = paged_kv(wide, wide, own, 64)
    for cache, table in (((wide / scale).to(fp8), None), ((pages / scale).to(fp8), bt)):
        call = lambda: leanattn.mla_decode(qn, qp, cache[..., :DC], cache[..., DC:], sl, table,  # noqa: E731
                                           return_lse=True, schedule=schedule, k_scale=scale, v_scale=scale)
        out, lse = call()
        ref, ref_lse = leanattn.reference.mla_decode(qn, qp, cache[..., :DC], cache[..., DC:], sl, table,
                                                     k_scale=scale, v_scale=scale)
        assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
        assert torch.equal(call()[0], out)
