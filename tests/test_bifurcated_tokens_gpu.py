"""GPU-only tests of ``bifurcated_decode`` / ``cascade_decode`` with several query tokens a sample (``q (B, Lq, Hq,
D)``, or packed with ``cu_seqlens_q``): bf16 at realistic sizes (the prefix pass then takes the Gluon overlap path
where it would for as many samples), one and several prompts, paged own caches, CUDA-graph replay with new lengths,
determinism, torch.compile. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def inputs(n, lq, hq, hkv, d, P, own, G=None):
    q = torch.randn(n, lq, hq, d, dtype=torch.bfloat16, device="cuda")
    shape = (P, hkv, d) if G is None else (G, P, hkv, d)
    pk = torch.randn(shape, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(n, max(own), hkv, d, dtype=torch.bfloat16, device="cuda")
    return q, pk, torch.randn_like(pk), k, torch.randn_like(k), torch.tensor(own, dtype=torch.int32, device="cuda")


def check(q, pk, pv, k, v, sl, bt=None, plens=None, ids=None, causal=True, **kw):
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, return_lse=True, causal=causal, **kw)
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, causal=causal)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    return out


@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (16, 8, 256), (32, 32, 64)])
@pytest.mark.parametrize("n,lq", [(4, 4), (16, 4), (64, 2)])
def test_tokens_single_prompt(n, lq, hq, hkv, d):
    own = [256 - 37 * (i % 5) for i in range(n)]
    own[0] = 1  # fewer own tokens than query tokens
    q, pk, pv, k, v, sl = inputs(n, lq, hq, hkv, d, 8192, own)
    check(q, pk, pv, k, v, sl)
    check(q, pk, pv, k, v, sl, causal=False)


@pytest.mark.parametrize("page", [16, 64])
def test_tokens_multi_prompt_paged(page):
    ids = [0] * 9 + [2] * 6 + [1]
    own = [(37 * i) % 300 for i in range(len(ids))]
    q, pk, pv, k, v, sl = inputs(len(ids), 3, 32, 8, 128, 5000, own, G=3)
    kp, vp, bt = paged_kv(k, v, own, page)
    plens = torch.tensor([5000, 0, 1234], dtype=torch.int32, device="cuda")
    ids = torch.tensor(ids, dtype=torch.int32, device="cuda")
    check(q, pk, pv, kp, vp, sl, bt, plens, ids)
    check(q, pk, pv, kp, vp, sl, bt, plens, ids, max_group_size=9)


def test_packed_multi_prompt():
    # a different number of tokens a sample (none included), several prompts of unequal groups
    ids = [0] * 9 + [2] * 6 + [1]
    own = [(37 * i) % 300 + 1 for i in range(len(ids))]
    counts = [i % 5 for i in range(len(ids))]
    _, pk, pv, k, v, sl = inputs(len(ids), 1, 32, 8, 128, 5000, own, G=3)
    q = torch.randn(sum(counts), 32, 128, dtype=torch.bfloat16, device="cuda")
    cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    plens = torch.tensor([5000, 0, 1234], dtype=torch.int32, device="cuda")
    ids = torch.tensor(ids, dtype=torch.int32, device="cuda")
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids, return_lse=True, causal=True,
                                          cu_seqlens_q=cu, max_seqlen_q=4, max_group_size=9)
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, None, plens, ids, causal=True,
                                                        cu_seqlens_q=cu)
    assert_rel_close("packed", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("packed lse", lse, ref_lse, 1e-2)


def test_tokens_cascade():
    q, pk, pv, k, v, sl = inputs(8, 4, 32, 8, 128, 3000, [200] * 8)
    dk = torch.randn(2, 2000, 8, 128, dtype=torch.bfloat16, device="cuda")
    dlens = torch.tensor([2000, 700], dtype=torch.int32, device="cuda")
    ids = torch.tensor([0, 1] * 4, dtype=torch.int32, device="cuda")
    levels = [(pk, pv), (dk, dk, dlens, ids)]
    out = leanattn.cascade_decode(q, levels, k, v, sl, causal=True, max_group_size=4)
    ref = leanattn.reference.cascade_decode(q, levels, k, v, sl, causal=True)[0]
    assert_rel_close("cascade", out, ref, TOLERANCE[q.dtype])


def test_tokens_cuda_graph_new_lengths_deterministic_compile():
    q, pk, pv, k, v, sl = inputs(16, 4, 32, 8, 128, 8192, [256] * 16)
    assert_graph_replays(lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, sl, causal=True), sl,
                         ([256] * 16, [1, 0, 256] * 5 + [3], list(range(0, 256, 16))),
                         lambda: leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, causal=True)[0],
                         TOLERANCE[torch.bfloat16])
    compiled = torch.compile(lambda *a: leanattn.bifurcated_decode(*a, causal=True), fullgraph=True)
    assert torch.equal(compiled(q, pk, pv, k, v, sl), leanattn.bifurcated_decode(q, pk, pv, k, v, sl, causal=True))
