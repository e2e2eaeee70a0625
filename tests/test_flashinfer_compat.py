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
        out, lse = w.run(q, cache if form == "one tensor" else tuple(cache.unbind(1)), return_lse=True, lse_base="e")
        k, v = cache.unbind(1)
        if layout == "HND":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        assert_states_match(f"layer {layer}", q, out, lse, *reference.decode(q, k, v, sl, table))
        out2, lse2 = w.run_return_lse(q, cache if form == "one tensor" else tuple(cache.unbind(1)))  # base 2
        assert torch.equal(out2, out) and torch.allclose(lse2, lse / math.log(2.0), equal_nan=True)
        assert torch.equal(w.run(q, cache if form == "one tensor" else tuple(cache.unbind(1))), out)
        buf = torch.empty(len(lens), hq, device=device)
        w.run(q, cache, lse=buf)  # (a buffer given takes FlashInfer's base-2 LSE, returned or not)
        assert torch.allclose(buf, lse2, equal_nan=True)


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
    # a 16-bit cache's k_scale and v_scale are plain factors on the scores and the output, as FlashInfer's
    scaled = w.run(q, cache, q_scale=0.5, k_scale=0.5, v_scale=3.0, sinks=sinks)
    want = leanattn.decode(q, k, v, sl, table, 0.05, window_left=20, softcap=30.0, sinks=sinks) * 3
    assert_rel_close("16-bit scales", scaled, want.double(), TOLERANCE[q.dtype])
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
        out, lse = w.run(q, cache, return_lse=True, lse_base="e")
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
        out, lse = w.run(qn, qp, ckv, kpe, return_lse=True, return_lse_base_on_e=True)
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
    with pytest.raises(ValueError, match="lse_base: expected '2'"):
        w.run(q, cache, return_lse=True, lse_base="10")
    with pytest.raises(TypeError, match=r"q: expected dtype torch.float16 \(plan's q_data_type\), got torch.float32"):
        w.run(q.float(), cache)
    with pytest.raises(TypeError, match="window_right"):
        w.run(q, cache, window_right=5)
    with pytest.raises(ValueError, match="last_page_len: expected values in \\[1, page_size = 4\\]"):
        w.plan(indptr, indices, last + 4, 4, 2, 64, 4)
    with pytest.raises(ValueError, match="max_pages_per_request: expected a positive int with use_cuda_graph"):
        BatchDecodeWithPagedKVCacheWrapper(None, "NHD", use_cuda_graph=True)
    with pytest.raises(ValueError, match="o_data_type: expected None or q_data_type"):
        w.plan(indptr, indices, last, 4, 2, 64, 4, o_data_type=torch.bfloat16)
    with pytest.raises(TypeError, match="q_data_type: expected a torch.dtype or its name, got 'float17'"):
        w.plan(indptr, indices, last, 4, 2, 64, 4, q_data_type="float17")
    with pytest.raises(ValueError, match="num_qo_heads: expected a positive int, got 0"):
        w.plan(indptr, indices, last, 0, 2, 64, 4)
    with pytest.raises(ValueError, match=r"indptr: expected \(B \+ 1,\) offsets, got an empty tensor"):
        w.plan(indptr[:0], indices, last, 4, 2, 64, 4)
    w.plan(indptr, indices, last, 4, 2, 64, 4)
    with pytest.raises(ValueError, match=r"paged_kv_cache: expected a \(k, v\) pair, got 3 tensors"):
        w.run(q, tuple(cache.unbind(1)) + (cache[:, 0],))
    with pytest.raises(TypeError, match=r"paged_kv_cache: expected dtype torch.float16 \(plan's kv_data_type\), got "
                                        "torch.float32"):
        w.run(q, cache.float())


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
    w.plan(indptr, indices, last, hq, hkv, d, page, q_data_type=torch.bfloat16)
    w.run(q, cache)  # (compiles and allocates outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = w.run(q, cache)
    for step, lens in enumerate(steps):
        indptr, indices, last, table = csr_case(lens, page, 512, "cuda", seed=step)
        w.plan(indptr, indices, last, hq, hkv, d, page, q_data_type=torch.bfloat16)
        graph.replay()
        sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
        assert_rel_close(f"step {step}", out, reference.decode(q, k, v, sl, table)[0], TOLERANCE[q.dtype])


def _gather(pool, table_row, n):
    """The first ``n`` tokens of the pages ``table_row`` of ``pool (num_pages, page_size, Hkv, D)``."""
    return pool[table_row.long()].flatten(0, 1)[:n]


@pytest.mark.parametrize("tokens", [1, 2])
def test_cascade_wrapper(device, tokens):
    # three levels in one page pool: a system prompt for all four requests, a document for requests 0-2 and another
    # for 3, then each request's own tokens (one query token each, or two: causal over the own tokens)
    from leanattn.integrations.flashinfer import MultiLevelCascadeAttentionWrapper
    page, hq, hkv, d, pool_pages = 4, 4, 2, 64, 40
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(pool_pages, generator=g).tolist()
    levels = [[9], [6, 13], [3, 8, 2, 5]]  # tokens of each group, per level (own: at least the query tokens)
    groups_of = [[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 2, 3]]  # each request's group, per level
    qo = [torch.tensor(x, dtype=torch.int32) * tokens for x in ([0, 4], [0, 3, 4], [0, 1, 2, 3, 4])]
    indptr_arr, indices_arr, last_arr, tables = [], [], [], []
    for lens in levels:  # each group's pages taken in turn from the shuffled pool
        pages = [[perm.pop() for _ in range(-(-n // page))] for n in lens]
        i32 = dict(dtype=torch.int32)
        indptr_arr.append(torch.tensor([0] + [sum(len(p) for p in pages[:i + 1]) for i in range(len(pages))], **i32))
        indices_arr.append(torch.tensor([x for p in pages for x in p], **i32, device=device))
        last_arr.append(torch.tensor([n - (len(p) - 1) * page for n, p in zip(lens, pages)], **i32))
        width = max(len(p) for p in pages)
        tables.append(torch.tensor([p + [0] * (width - len(p)) for p in pages], **i32, device=device))
    cache = torch.randn(pool_pages, 2, page, hkv, d, device=device).half()
    k_pool, v_pool = cache.unbind(1)
    w = MultiLevelCascadeAttentionWrapper(3, None, "NHD")
    w.plan(qo, indptr_arr, indices_arr, last_arr, hq, hkv, d, page, causal=True, sm_scale=0.15)
    q = torch.randn(4 * tokens, hq, d, device=device).half()
    out, lse = w.run(q, cache, return_lse=True, lse_base="e")
    # reference: each request's levels concatenated, then decode over that one sequence
    seqs_k, seqs_v, total = [], [], []
    for r in range(4):
        parts = [(tables[i][groups_of[i][r]], levels[i][groups_of[i][r]]) for i in range(3)]
        seqs_k.append(torch.cat([_gather(k_pool, t, n) for t, n in parts]))
        seqs_v.append(torch.cat([_gather(v_pool, t, n) for t, n in parts]))
        total.append(seqs_k[-1].shape[0])
    cap = max(total)
    kc = torch.stack([torch.cat([x, x.new_zeros(cap - x.shape[0], hkv, d)]) for x in seqs_k])
    vc = torch.stack([torch.cat([x, x.new_zeros(cap - x.shape[0], hkv, d)]) for x in seqs_v])
    sl = torch.tensor(total, dtype=torch.int32, device=device)
    qr = q.view(4, tokens, hq, d) if tokens > 1 else q
    ref_out, ref_lse = reference.decode(qr, kc, vc, sl, None, 0.15, causal=True)
    assert_rel_close("cascade out", out, ref_out.reshape(out.shape), TOLERANCE[q.dtype])
    assert_lse_close("cascade lse", lse, ref_lse.reshape(lse.shape), TOLERANCE[q.dtype])
    assert torch.equal(w.run(q, cache), out)


def test_cascade_wrapper_errors(device):
    from leanattn.integrations.flashinfer import MultiLevelCascadeAttentionWrapper
    with pytest.raises(ValueError, match="use_cuda_graph: expected False"):
        MultiLevelCascadeAttentionWrapper(2, None, "NHD", use_cuda_graph=True)
    with pytest.raises(ValueError, match="num_levels: expected a positive int"):
        MultiLevelCascadeAttentionWrapper(0)
    w = MultiLevelCascadeAttentionWrapper(2)
    one, indices, last, _ = csr_case([5], 4, 8, device)
    own, own_idx, own_last, _ = csr_case([3, 2, 1], 4, 8, device, seed=1)
    qo_own = torch.arange(4, dtype=torch.int32)
    qo_one = torch.tensor([0, 3], dtype=torch.int32)  # (the one shared group: all three requests)
    with pytest.raises(ValueError, match="qo_indptr_arr: expected a list of 2 tensors"):
        w.plan([qo_own], [own], [own_idx], [own_last], 4, 2, 64, 4)
    two, two_idx, two_last, _ = csr_case([5, 3], 4, 8, device, seed=2)
    with pytest.raises(ValueError, match="level 0's groups to hold whole requests"):
        w.plan([torch.tensor([0, 3, 6], dtype=torch.int32), torch.tensor([0, 2, 4, 6], dtype=torch.int32)],
               [two, own], [two_idx, own_idx], [two_last, own_last], 4, 2, 64, 4)
    with pytest.raises(ValueError, match="expected offsets from 0 to the last level's 3 query rows"):
        w.plan([torch.tensor([0, 2], dtype=torch.int32), qo_own], [one, own], [indices, own_idx], [last, own_last],
               4, 2, 64, 4)
    with pytest.raises(ValueError, match="pos_encoding_mode: expected 'NONE'"):
        w.plan([qo_one, qo_own], [one, own], [indices, own_idx], [last, own_last], 4, 2, 64, 4,
               pos_encoding_mode="ROPE_LLAMA")
    with pytest.raises(ValueError, match=r"qo_indptr: expected shape \(4,\) \(as level 1's paged_kv_indptr\), "
                                         r"got \(3,\)"):
        w.plan([qo_one, qo_own[:3]], [one, own], [indices, own_idx], [last, own_last], 4, 2, 64, 4)
    w.plan([qo_one, qo_own], [one, own], [indices, own_idx], [last, own_last], 4, 2, 64, 4)
    q = torch.randn(3, 4, 64, device=device).half()
    cache = torch.randn(8, 2, 4, 2, 64, device=device).half()
    with pytest.raises(ValueError, match=r"q: expected shape \(3, 4, 64\) \(the last level's query rows"):
        w.run(q[:2], cache)
    with pytest.raises(TypeError, match=r"q: expected dtype torch.float16 \(plan's q_data_type\), got torch.float32"):
        w.run(q.float(), cache)


def test_mla_wrapper_cuda_graph_buffers(device):
    # use_cuda_graph: the query offsets, table and lengths rewritten in place by each plan; the tokens a request
    # fixed by the first plan (the captured launch's shape)
    page, heads, dc, dr = 4, 16, 128, 16
    cache = torch.randn(24, page, dc + dr, device=device).half()
    ckv, kpe = cache[..., :dc], cache[..., dc:]
    w = BatchMLAPagedAttentionWrapper(None, use_cuda_graph=True, max_pages_per_request=8)
    qo = torch.arange(0, 7, 2, dtype=torch.int32)
    ptrs = []
    for step, lens in enumerate(([9, 2, 30], [30, 31, 4])):
        indptr, indices, _, table = csr_case(lens, page, 24, device, seed=step)
        kv_len = torch.tensor(lens, dtype=torch.int32)
        w.plan(qo, indptr, indices, kv_len, heads, dc, dr, page, True, 0.1, torch.float16, torch.float16)
        ptrs.append((w._plan.qo_indptr.data_ptr(), w._plan.table.data_ptr(), w._plan.seqlens.data_ptr()))
        qn = torch.randn(6, heads, dc, device=device).half()
        qp = torch.randn(6, heads, dr, device=device).half()
        out = w.run(qn, qp, ckv, kpe)
        ref = reference.mla_decode(qn, qp, ckv, kpe, kv_len.to(device), table, 0.1, causal=True,
                                   cu_seqlens_q=qo.to(device))[0]
        assert_rel_close(f"step {step}", out, ref, TOLERANCE[qn.dtype])
    assert ptrs[0] == ptrs[1]
    with pytest.raises(ValueError, match="qo_indptr: expected 2 tokens a request at most"):
        w.plan(torch.tensor([0, 3, 4, 6], dtype=torch.int32), indptr, indices, kv_len, heads, dc, dr, page, True,
               0.1, torch.float16, torch.float16)
    with pytest.raises(ValueError, match=r"q_nope: expected shape \(6, 16, 128\)"):
        w.run(qn[:, :8], qp, ckv, kpe)


def test_decode_wrapper_run_compiles_fullgraph(device):
    # run() inside a compiled model (plan outside it, as FlashInfer's): decode's custom op in one graph
    lens, page, hq, hkv, d = [9, 20], 4, 4, 2, 64
    indptr, indices, last, _ = csr_case(lens, page, 12, device, seed=6)
    cache = torch.randn(12, 2, page, hkv, d, device=device).half()
    q = torch.randn(2, hq, d, device=device).half()
    w = BatchDecodeWithPagedKVCacheWrapper(None, "NHD")
    w.plan(indptr, indices, last, hq, hkv, d, page)
    eager = w.run(q, cache, return_lse=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, cache: w.run(q, cache, return_lse=True), fullgraph=True)
    out, lse = compiled(q, cache)
    assert torch.equal(out, eager[0]) and torch.equal(lse, eager[1])


@pytest.mark.parametrize("causal", [True, False])
def test_prefill_wrapper_few_tokens(device, causal):
    # FlashInfer's prefill wrapper for a few tokens a request (speculative decoding's verification): 3, 1, 0 and 2
    # query rows, the last positions of each request's pages
    from leanattn.integrations.flashinfer import BatchPrefillWithPagedKVCacheWrapper
    lens, page, hq, hkv, d = [21, 5, 9, 30], 4, 4, 2, 64
    indptr, indices, last, table = csr_case(lens, page, 24, device, seed=7)
    qo = torch.tensor([0, 3, 4, 4, 6], dtype=torch.int32)
    cache = torch.randn(24, 2, page, hkv, d, device=device).half()
    q = torch.randn(6, hq, d, device=device).half()
    w = BatchPrefillWithPagedKVCacheWrapper(None, "NHD")
    w.plan(qo, indptr, indices, last, hq, hkv, d, page, causal=causal, sm_scale=0.2)
    out, lse = w.run(q, cache, return_lse=True, lse_base="ln")  # (FlashInfer's spelling of the natural log)
    k, v = cache.unbind(1)
    sl = torch.tensor(lens, dtype=torch.int32, device=device)
    ref, ref_lse = reference.decode(q, k, v, sl, table, 0.2, causal=causal, cu_seqlens_q=qo.to(device))
    assert_states_match(f"causal={causal}", q, out, lse, ref, ref_lse)
    with pytest.raises(ValueError, match="custom_mask: expected None"):
        w.plan(qo, indptr, indices, last, hq, hkv, d, page, custom_mask=torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"qo_indptr: expected shape \(5,\)"):
        w.plan(qo[:4], indptr, indices, last, hq, hkv, d, page)
    with pytest.raises(ValueError, match=r"q: expected shape \(6, 4, 64\)"):
        w.run(q[:5], cache)


def test_prefill_and_mla_wrapper_errors(device):
    # the plan and run checks of the prefill and MLA wrappers that need no launch
    from leanattn.integrations.flashinfer import BatchPrefillWithPagedKVCacheWrapper
    lens, page, hq, hkv, d = [21, 5, 9, 30], 4, 4, 2, 64
    indptr, indices, last, _ = csr_case(lens, page, 24, device, seed=7)
    qo = torch.tensor([0, 3, 4, 4, 6], dtype=torch.int32)
    w = BatchPrefillWithPagedKVCacheWrapper(None, "NHD")
    with pytest.raises(ValueError, match=r"head_dim_vo: expected None or head_dim_qk \(64\), got 128"):
        w.plan(qo, indptr, indices, last, hq, hkv, d, page, head_dim_vo=128)
    with pytest.raises(ValueError, match=r"qo_indptr: expected non-decreasing offsets from 0, got \[0, 3, 2, 4, 6\]"):
        w.plan(torch.tensor([0, 3, 2, 4, 6], dtype=torch.int32), indptr, indices, last, hq, hkv, d, page)
    # a CUDA-graph wrapper keeps its first plan's tokens a request (the captured launch's)
    g = BatchPrefillWithPagedKVCacheWrapper(None, "NHD", use_cuda_graph=True, max_pages_per_request=8)
    g.plan(qo, indptr, indices, last, hq, hkv, d, page)
    with pytest.raises(ValueError, match="qo_indptr: expected at most 3 tokens a request, as the first plan"):
        g.plan(torch.tensor([0, 4, 4, 4, 6], dtype=torch.int32), indptr, indices, last, hq, hkv, d, page)
    # MLA
    heads, dc, dr = 16, 128, 16
    kv_len = torch.tensor(lens, dtype=torch.int32)
    m = BatchMLAPagedAttentionWrapper(None)
    mla_qo = torch.arange(5, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"qo_indptr: expected shape \(5,\) \(as kv_indptr\), got \(4,\)"):
        m.plan(mla_qo[:4], indptr, indices, kv_len, heads, dc, dr, page, True, 0.1, torch.float16, torch.float16)
    m.plan(mla_qo, indptr, indices, kv_len, heads, dc, dr, page, True, 0.1, torch.float16, torch.float16)
    cache = torch.randn(24, page, dc + dr, device=device).half()
    ckv, kpe = cache[..., :dc], cache[..., dc:]
    qn = torch.randn(4, heads, dc, device=device).half()
    qp = torch.randn(4, heads, dr, device=device).half()
    for name in ("profiler_buffer", "kv_len", "page_table"):
        with pytest.raises(ValueError, match=f"{name}: expected None \\(the planned pages and lengths are used\\)"):
            m.run(qn, qp, ckv, kpe, **{name: kv_len})
    with pytest.raises(TypeError, match=r"q_nope: expected dtype torch.float16 \(plan's q_data_type\), got "
                                        "torch.float32"):
        m.run(qn.float(), qp, ckv, kpe)
    with pytest.raises(TypeError, match=r"ckv_cache: expected dtype torch.float16 \(plan's kv_data_type\), got "
                                        "torch.float32"):
        m.run(qn, qp, ckv.float(), kpe)
