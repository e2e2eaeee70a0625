"""``leanattn.integrations.flashinfer``: FlashInfer's paged-decode wrappers (CSR page tables, plan/run) on leanattn's
kernels, against the float64 reference over a block table built here row by row. CPU under the Triton interpreter,
or a GPU."""
import math

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.integrations.flashinfer import (BatchDecodeWithPagedKVCacheWrapper, BatchMLAPagedAttentionWrapper,
                                              csr_block_table)
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, assert_states_match


def csr_case(lens, page, num_pages, device, seed=0):
    """FlashInfer's CSR page table of requests of ``lens`` tokens over a pool of ``num_pages`` pages, in random
    order: ``(indptr, indices, last_page_len, table)``, ``table`` the same pages as a block table, built by hand."""
    g = torch.Generator().manual_seed(seed)
    counts = [-(-n // page) for n in lens]
    perm = torch.randperm(num_pages, generator=g)[:sum(counts)].tolist()
    indptr = [0]
    for c in counts:
        indptr.append(indptr[-1] + c)
    last = [n - (c - 1) * page if c else 0 for n, c in zip(lens, counts)]
    table = torch.zeros(len(lens), max(counts + [1]), dtype=torch.int32)
    for b, c in enumerate(counts):
        table[b, :c] = torch.tensor(perm[indptr[b]:indptr[b] + c], dtype=torch.int32)
    i32 = dict(dtype=torch.int32)
    # (indptr and last_page_len on the host, as FlashInfer's plan takes them; the page ids on the device)
    return (torch.tensor(indptr, **i32), torch.tensor(perm + [7, 7], **i32, device=device), torch.tensor(last, **i32),
            table.to(device))


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("form", ["one tensor", "pair"])
def test_decode_wrapper(device, layout, form):
    # ragged requests, one of no page, pages in random order; two layers over one plan
    lens, page, hq, hkv, d, pool = [37, 0, 16, 5], 16, 8, 2, 64, 12
    indptr, indices, last, table = csr_case(lens, page, pool, device)
    w = BatchDecodeWithPagedKVCacheWrapper(torch.empty(16, dtype=torch.uint8, device=device), layout)
    w.plan(indptr, indices, last, hq, hkv, d, page, q_data_type=torch.float16)
    sl = torch.tensor(lens, dtype=torch.int32, device=device)
    for layer in range(2):
        shape = (pool, 2, page, hkv, d) if layout == "NHD" else (pool, 2, hkv, page, d)
        cache = torch.randn(shape, device=device).half()
        q = torch.randn(len(lens), hq, d, device=device).half()
        out, lse = w.run(q, cache if form == "one tensor" else tuple(cache.unbind(1)), return_lse=True)
        k, v = cache.unbind(1)
        if layout == "HND":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        assert_states_match(f"layer {layer}", q, out, lse, *reference.decode(q, k, v, sl, table))
        out2, lse2 = w.run(q, cache if form == "one tensor" else tuple(cache.unbind(1)), return_lse=True,
                           lse_base="2")
        assert torch.equal(out2, out) and torch.allclose(lse2, lse / math.log(2.0), equal_nan=True)
        assert torch.equal(w.run(q, cache if form == "one tensor" else tuple(cache.unbind(1))), out)


def test_decode_wrapper_options_as_decode(device):
    # the plan's softmax scale, window and soft cap, run's sinks, q_scale and out buffer: leanattn.decode's
    lens, page, hq, hkv, d = [70, 33, 1], 8, 4, 4, 64
    indptr, indices, last, table = csr_case(lens, page, 20, device, seed=1)
    cache = torch.randn(20, 2, page, hkv, d, device=device).half()
    q = torch.randn(3, hq, d, device=device).half()
    sinks = torch.randn(hq, device=device)
    w = BatchDecodeWithPagedKVCacheWrapper(None, "NHD")
    w.plan(indptr, indices, last, hq, hkv, d, page, window_left=20, logits_soft_cap=30.0, sm_scale=0.2)
    buf = torch.empty_like(q)
    out = w.run(q, cache, q_scale=0.5, sinks=sinks, out=buf)
    assert out is buf
    k, v = cache.unbind(1)
    sl = torch.tensor(lens, dtype=torch.int32, device=device)
    want = leanattn.decode(q, k, v, sl, table, 0.1, window_left=20, softcap=30.0, sinks=sinks)
    assert_rel_close("options", out, want.double(), TOLERANCE[q.dtype])
    assert not torch.equal(out, leanattn.decode(q, k, v, sl, table, 0.1))  # (the options mattered)


def test_decode_wrapper_cuda_graph_buffers(device):
    # use_cuda_graph: plan rewrites one table and one lengths tensor, so a captured run sees each step's pages
    page, hq, hkv, d = 4, 4, 1, 64
    w = BatchDecodeWithPagedKVCacheWrapper(None, "NHD", use_cuda_graph=True, max_pages_per_request=6)
    cache = torch.randn(30, 2, page, hkv, d, device=device).half()
    q = torch.randn(3, hq, d, device=device).half()
    k, v = cache.unbind(1)
    tables = []
    for step, lens in enumerate(([5, 9, 1], [6, 24, 0])):
        indptr, indices, last, table = csr_case(lens, page, 30, device, seed=step)
        w.plan(indptr, indices, last, hq, hkv, d, page)
        tables.append((w._plan.table.data_ptr(), w._plan.seqlens.data_ptr()))
        sl = torch.tensor(lens, dtype=torch.int32, device=device)
        out, lse = w.run(q, cache, return_lse=True)
        assert_states_match(f"step {step}", q, out, lse, *reference.decode(q, k, v, sl, table))
    assert tables[0] == tables[1] and w.is_cuda_graph_enabled
    indptr, indices, last, _ = csr_case([5, 9, 1, 2], page, 30, device)
    with pytest.raises(ValueError, match="indptr: expected 3 requests"):
        w.plan(indptr, indices, last, hq, hkv, d, page)
    indptr, indices, last, _ = csr_case([5, 28, 1], page, 30, device)
    with pytest.raises(ValueError, match=r"indptr: expected at most 6 pages a request"):
        w.plan(indptr, indices, last, hq, hkv, d, page)


def test_csr_block_table(device):
    indptr, indices, _, table = csr_case([9, 0, 30, 4], 4, 20, device, seed=3)
    assert torch.equal(csr_block_table(indptr, indices), table)
    wide = csr_block_table(indptr, indices, 10)
    assert wide.shape == (4, 10) and torch.equal(wide[:, :table.shape[1]], table) and not wide[:, 8:].any()
    assert csr_block_table(torch.zeros(1, dtype=torch.int32), indices[:0]).shape == (0, 0)


def test_mla_wrapper(device):
    # FlashInfer's BatchMLAPagedAttentionWrapper: one token a request, then two (multi-token prediction, causal)
    lens, page, heads, dc, dr = [40, 3, 0, 17], 8, 16, 128, 32
    indptr, indices, _, table = csr_case(lens, page, 16, device, seed=4)
    cache = torch.randn(16, page, dc + dr, device=device).half()
    ckv, kpe = cache[..., :dc], cache[..., dc:]
    kv_len = torch.tensor(lens, dtype=torch.int32)
    sl = kv_len.to(device)
    w = BatchMLAPagedAttentionWrapper(None)
    for tokens in (1, 2):
        qo = torch.arange(0, 4 * tokens + 1, tokens, dtype=torch.int32)
        w.plan(qo, indptr, indices, kv_len, heads, dc, dr, page, True, 0.1, torch.float16, torch.float16)
        qn = torch.randn(4 * tokens, heads, dc, device=device).half()
        qp = torch.randn(4 * tokens, heads, dr, device=device).half()
        out, lse = w.run(qn, qp, ckv, kpe, return_lse=True)
        ref = reference.mla_decode(qn, qp, ckv, kpe, sl, table, 0.1, causal=True, cu_seqlens_q=qo.to(device))
        assert_rel_close(f"{tokens} tokens", out, ref[0], TOLERANCE[qn.dtype])
        assert_lse_close(f"{tokens} tokens lse", lse, ref[1], TOLERANCE[qn.dtype])


def test_errors(device):
    indptr, indices, last, _ = csr_case([5, 9], 4, 8, device)
    w = BatchDecodeWithPagedKVCacheWrapper(None)
    q = torch.randn(2, 4, 64, device=device).half()
    cache = torch.randn(8, 2, 4, 2, 64, device=device).half()
    with pytest.raises(RuntimeError, match="run: call plan"):
        w.run(q, cache)
    with pytest.raises(ValueError, match="kv_layout: expected 'NHD' or 'HND'"):
        BatchDecodeWithPagedKVCacheWrapper(None, "NDH")
    with pytest.raises(ValueError, match="pos_encoding_mode: expected 'NONE'"):
        w.plan(indptr, indices, last, 4, 2, 64, 4, pos_encoding_mode="ROPE_LLAMA")
    with pytest.raises(TypeError, match="indptr: expected dtype torch.int32, got torch.int64"):
        w.plan(indptr.long(), indices, last, 4, 2, 64, 4)
    with pytest.raises(ValueError, match=r"last_page_len: expected shape \(2,\)"):
        w.plan(indptr, indices, last[:1], 4, 2, 64, 4)
    with pytest.raises(ValueError, match="indptr: expected non-decreasing offsets from 0"):
        w.plan(indptr.flip(0), indices, last, 4, 2, 64, 4)
    with pytest.raises(ValueError, match="indptr: expected offsets within indices' 2 entries"):
        w.plan(indptr, indices[:2], last, 4, 2, 64, 4)
    with pytest.raises(ValueError, match="num_qo_heads: expected a multiple of num_kv_heads"):
        w.plan(indptr, indices, last, 3, 2, 64, 4)
    with pytest.raises(ValueError, match="page_size: expected a positive int"):
        w.plan(indptr, indices, last, 4, 2, 64, 0)
    w.plan(indptr, indices, last, 4, 2, 64, 4)
    with pytest.raises(ValueError, match=r"q: expected shape \(2, 4, 64\)"):
        w.run(q[:1], cache)
    with pytest.raises(ValueError, match=r"paged_kv_cache: expected pages of \(page_size, num_kv_heads, head_dim\)"):
        w.run(q, cache[:, :, :2])
    with pytest.raises(ValueError, match=r"paged_kv_cache: expected \(num_pages, 2, \.\.\.\)"):
        w.run(q, torch.cat([cache, cache], 1))
    with pytest.raises(ValueError, match="lse_base: expected 'e'"):
        w.run(q, cache, return_lse=True, lse_base="10")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_wrapper_captured_run_replays_new_plans():
    # FlashInfer's CUDA-graph cycle: plan outside the graph each step, replay the captured run
    page, hq, hkv, d = 16, 32, 8, 128
    cache = torch.randn(512, 2, page, hkv, d, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(4, hq, d, device="cuda", dtype=torch.bfloat16)
    w = BatchDecodeWithPagedKVCacheWrapper(None, "NHD", use_cuda_graph=True, max_pages_per_request=128)
    k, v = cache.unbind(1)
    steps = ([300, 2000, 17, 1], [2048, 0, 999, 64], [5, 5, 5, 5])
    indptr, indices, last, _ = csr_case(steps[0], page, 512, "cuda")
    w.plan(indptr, indices, last, hq, hkv, d, page)
    w.run(q, cache)  # (compiles and allocates outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = w.run(q, cache)
    for step, lens in enumerate(steps):
        indptr, indices, last, table = csr_case(lens, page, 512, "cuda", seed=step)
        w.plan(indptr, indices, last, hq, hkv, d, page)
        graph.replay()
        sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
        assert_rel_close(f"step {step}", out, reference.decode(q, k, v, sl, table)[0], TOLERANCE[q.dtype])
