"""GPU-only tests of ``bifurcated_decode`` / ``cascade_decode`` with a sliding window (``window_left``): bf16 at
realistic sizes (Mistral's and Gemma-3's windows over 8k prefixes, 16-64 samples, in step and ragged), several
prompts with paged own caches, tokens and packed queries, CUDA-graph replay with new lengths, determinism and
torch.compile. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def inputs(n, hq, hkv, d, P, own, G=None, lq=None):
    shape_q = (n, hq, d) if lq is None else (n, lq, hq, d)
    q = torch.randn(shape_q, dtype=torch.bfloat16, device="cuda")
    shape = (P, hkv, d) if G is None else (G, P, hkv, d)
    pk = torch.randn(shape, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(n, max(own), hkv, d, dtype=torch.bfloat16, device="cuda")
    return q, pk, torch.randn_like(pk), k, torch.randn_like(k), torch.tensor(own, dtype=torch.int32, device="cuda")


def check(q, pk, pv, k, v, sl, bt=None, plens=None, ids=None, window=4095, **kw):
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, return_lse=True, window_left=window,
                                          **kw)
    same = {n: kw[n] for n in ("causal", "cu_seqlens_q") if n in kw}
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, window_left=window,
                                                        **same)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    return out


@pytest.mark.parametrize("window", [1024, 4096])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (32, 32, 128), (16, 8, 256)])
@pytest.mark.parametrize("n", [16, 64])
def test_single_prompt(n, hq, hkv, d, window):
    in_step = [256] * n
    ragged = [256 - 37 * (i % 7) for i in range(n)]
    ragged[0] = 0
    for own in (in_step, ragged):
        q, pk, pv, k, v, sl = inputs(n, hq, hkv, d, 8192, own)
        check(q, pk, pv, k, v, sl, window=window - 1)


@pytest.mark.parametrize("page", [16, 64])
def test_multi_prompt_paged_tokens_packed(page):
    ids = [0] * 9 + [2] * 6 + [1]
    own = [(37 * i) % 300 + 1 for i in range(len(ids))]
    q, pk, pv, k, v, sl = inputs(len(ids), 32, 8, 128, 5000, own, G=3)
    kp, vp, bt = paged_kv(k, v, own, page)
    plens = torch.tensor([5000, 0, 1234], dtype=torch.int32, device="cuda")
    idt = torch.tensor(ids, dtype=torch.int32, device="cuda")
    for w in (255, 1023, 4095):
        check(q, pk, pv, kp, vp, sl, bt, plens, idt, window=w, max_group_size=9)
        q4 = torch.randn(len(ids), 3, 32, 128, dtype=torch.bfloat16, device="cuda")
        check(q4, pk, pv, kp, vp, sl, bt, plens, idt, window=w, causal=True)
        counts = [i % 4 for i in range(len(ids))]
        qp = torch.randn(sum(counts), 32, 128, dtype=torch.bfloat16, device="cuda")
        cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        check(qp, pk, pv, kp, vp, sl, bt, plens, idt, window=w, causal=True, cu_seqlens_q=cu, max_seqlen_q=3,
              max_group_size=9)


def test_more_samples_and_prompts_than_a_plan_block():
    # 600 samples over 300 prompts: the plan kernel's one program loops over samples, rows and prompts in blocks of
    # 256, its stores read back by other threads after a CTA barrier and its atomics (kernels/window_plan.py)
    gen = torch.Generator().manual_seed(3)
    own = torch.randint(0, 200, (600,), generator=gen).tolist()
    q, pk, pv, k, v, sl = inputs(600, 8, 2, 128, 700, own, G=300)
    plens = torch.randint(0, 701, (300,), generator=gen).to(torch.int32).cuda()
    ids = torch.randint(0, 300, (600,), generator=gen).to(torch.int32).cuda()
    for w in (0, 150, 650):
        check(q, pk, pv, k, v, sl, plens=plens, ids=ids, window=w, max_group_size=600)


def test_cascade():
    q, pk, pv, k, v, sl = inputs(8, 32, 8, 128, 3000, [200] * 8)
    dk = torch.randn(2, 2000, 8, 128, dtype=torch.bfloat16, device="cuda")
    dlens = torch.tensor([2000, 700], dtype=torch.int32, device="cuda")
    ids = torch.tensor([0, 1] * 4, dtype=torch.int32, device="cuda")
    levels = [(pk, pv), (dk, dk, dlens, ids)]
    for w in (100, 1500, 4095):
        out = leanattn.cascade_decode(q, levels, k, v, sl, window_left=w, max_group_size=4)
        ref = leanattn.reference.cascade_decode(q, levels, k, v, sl, window_left=w)[0]
        assert_rel_close(f"cascade window {w}", out, ref, TOLERANCE[q.dtype])


def test_cuda_graph_new_lengths_deterministic_compile():
    q, pk, pv, k, v, sl = inputs(16, 32, 8, 128, 8192, [512] * 16)
    call = lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, sl, window_left=1023)  # noqa: E731
    assert_graph_replays(call, sl, ([512] * 16, [1, 0, 512] * 5 + [3], list(range(0, 512, 32))),
                         lambda: leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, window_left=1023)[0],
                         TOLERANCE[torch.bfloat16])
    first = call()
    for _ in range(20):
        assert torch.equal(call(), first)
    compiled = torch.compile(lambda *a: leanattn.bifurcated_decode(*a, window_left=1023), fullgraph=True)
    assert torch.equal(compiled(q, pk, pv, k, v, sl), first)
