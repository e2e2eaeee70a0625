"""Shared prefixes held in a page pool (``bifurcated_decode(prefix_block_table=)``, paged ``cascade_decode`` levels)
against the float64 reference and against the same prefixes given as dense tensors: one pool for the prefixes and
every sample's own tokens (as a serving engine keeps them), pages in random order, page sizes 1 to 16, GQA and MHA,
several prompts of unequal sizes (an empty one, an empty prefix), several query tokens, packed queries, windows,
float8 pools, sinks, soft caps, torch.compile; the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import assert_states_match, paged_kv
from test_bifurcated import DEV


def unified_pool(prefix_lens, own_lens, hkv, d, page_size, dtype=torch.float16, seed=0, prefix_cap=None):
    """One page pool holding ``G`` prefixes of ``prefix_lens`` tokens and ``B`` own caches of ``own_lens`` tokens:
    ``(pool_k, pool_v, prefix_table (G, pages), own_table (B, pages), dense_k (G, P, hkv, d), dense_v)``, the dense
    tensors the prefixes' tokens (``P = prefix_cap`` or the longest prefix)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    G = len(prefix_lens)
    n = max(max(prefix_lens), max(own_lens), prefix_cap or 0, 1)
    k = torch.randn(G + len(own_lens), n, hkv, d, generator=g, device=DEV).to(dtype)
    v = torch.randn(G + len(own_lens), n, hkv, d, generator=g, device=DEV).to(dtype)
    lens = list(prefix_lens) + list(own_lens)
    if prefix_cap is not None:
        lens[:G] = [prefix_cap] * G  # every prefix's pages full: the capacity is the length
    pool_k, pool_v, table = paged_kv(k, v, lens, page_size, spare_pages=2, generator=g)
    P = prefix_cap or max(max(prefix_lens), 1)
    ptab = table[:G, :max(-(-P // page_size), 1)].contiguous()
    return pool_k, pool_v, ptab, table[G:].contiguous(), k[:G, :P], v[:G, :P]


def i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEV)


def check(name, q, pool_k, pool_v, ptab, plens, ids, k, v, lens, table, **kw):
    out, lse = leanattn.bifurcated_decode(q, pool_k, pool_v, k, v, lens, table, plens, ids, return_lse=True,
                                          prefix_block_table=ptab, **kw)
    ref = reference.bifurcated_decode(q, pool_k, pool_v, k, v, lens, table, plens, ids, prefix_block_table=ptab,
                                      **{n: kw[n] for n in ("causal", "window_left", "softcap", "sinks", "cu_seqlens_q",
                                                            "k_scale", "v_scale") if n in kw})
    assert_states_match(name, q, out, lse, *ref)
    return out, lse


# each page size, head layout and dtype at least once (the cross product of 18 cost CI about 27 s more)
@pytest.mark.parametrize("page_size,hq,hkv,dtype", [(1, 8, 2, torch.float16), (4, 4, 4, torch.float32),
                                                    (16, 6, 1, torch.float16), (4, 8, 2, torch.float32)],
                         ids=["page1-gqa4-fp16", "page4-mha-fp32", "page16-mqa6-fp16", "page4-gqa4-fp32"])
def test_multi_prompt_unified_pool(page_size, hq, hkv, dtype):
    # three prompts (prefixes of 37, 0 and 20 tokens; the third read by no sample), five samples with own tokens
    # 3, 0, 25, 9 and 16, all in one pool: the prefixes' and the samples' pages interleaved in random order
    own = [3, 0, 25, 9, 16]
    pool_k, pool_v, ptab, otab, dk, dv = unified_pool([37, 0, 20], own, hkv, 64, page_size, dtype)
    q = torch.randn(5, hq, 64, dtype=dtype, device=DEV)
    plens, ids = i32([37, 0, 20]), i32([1, 0, 0, 1, 0])
    out, lse = check("unified pool", q, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, i32(own), otab)
    # the same prefixes as dense tensors: the same attention, to the kernels' rounding
    dense = leanattn.bifurcated_decode(q, dk, dv, pool_k, pool_v, i32(own), otab, plens, ids, return_lse=True)
    assert_states_match("paged vs dense", q, out, lse, dense[0].double(), dense[1].double())


@pytest.mark.parametrize("page_size", [4, 16])
def test_single_prompt_default_lengths_and_no_own_cache(page_size):
    # one prompt read by every sample, its length the pages' capacity (no prefix_lens); then no own cache at all
    own = [5, 11, 0, 30]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([32], own, 2, 64, page_size, prefix_cap=32)
    q = torch.randn(4, 8, 64, dtype=torch.float16, device=DEV)
    check("one prompt", q, pool_k, pool_v, ptab, None, None, pool_k, pool_v, i32(own), otab)
    check("no own cache", q, pool_k, pool_v, ptab, i32([19]), None, None, None, None, None)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_tokens_packed_and_windows(causal):
    # several query tokens a sample, a packed query of 2, 0, 3 tokens, and sliding windows across the prefix's end
    own = [6, 0, 14]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([21, 13], own, 2, 64, 4, seed=1)
    plens, ids = i32([21, 13]), i32([1, 0, 1])
    q4 = torch.randn(3, 2, 8, 64, dtype=torch.float16, device=DEV)
    own4 = i32([6, 2, 14])  # two tokens a sample: each sample's last two own tokens
    check("tokens", q4, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, own4, otab, causal=causal)
    cu = i32([0, 2, 2, 5])
    qp = torch.randn(5, 8, 64, dtype=torch.float16, device=DEV)
    check("packed", qp, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, i32([6, 0, 14]), otab, causal=causal,
          cu_seqlens_q=cu, max_seqlen_q=3)
    for window in (0, 5, 17):
        q = torch.randn(3, 8, 64, dtype=torch.float16, device=DEV)
        check(f"window {window}", q, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, i32(own), otab,
              window_left=window)
        check(f"tokens window {window}", q4, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, own4, otab,
              causal=causal, window_left=window)


def test_window_reads_no_unset_table_entry():
    # a window whose tail would run past a prefix's pages: the table entries after them (left unset: -1, or past the
    # pool) are never dereferenced; review, 2026-12-05: the tail gather read them (an index error on the CPU)
    own = [5, 9]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([3, 10], own, 2, 64, 4, seed=7)
    table = torch.cat([ptab, ptab.new_full((2, 2), -1)], 1)
    table[0, 1:] = pool_k.shape[0] + 1000  # prefix 0 has 3 tokens: one page
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=DEV)
    for window in (2, 6, 40):
        check(f"window {window}", q, pool_k, pool_v, table, i32([3, 10]), i32([0, 1]), pool_k, pool_v, i32(own),
              otab, window_left=window)


def test_k_and_v_pools_of_different_layouts():
    # v's pages a slice of a larger buffer (another page stride than k's): windows gather both through one token
    # stride (review, 2026-12-05: v was indexed with k's)
    own = [6, 11]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([14, 7], own, 2, 64, 4, seed=8)
    wide = torch.randn(pool_v.shape[0], 8, 2, 64, dtype=pool_v.dtype, device=DEV)
    wide[:, :4] = pool_v
    v_view = wide[:, :4]
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=DEV)
    for window in (-1, 3, 12):
        check(f"window {window}", q, pool_k, v_view, ptab, i32([14, 7]), i32([1, 0]), pool_k, v_view, i32(own), otab,
              window_left=window)


def test_empty_pool():
    # a pool without pages, every prefix empty: nothing in use, so no page id is checked
    pool = torch.zeros(0, 4, 2, 64, dtype=torch.float16, device=DEV)
    table = i32([[7, -3]])
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=DEV)
    out, lse = leanattn.bifurcated_decode(q, pool, pool, None, None, prefix_lens=i32([0]), return_lse=True,
                                          prefix_block_table=table)
    assert not out.any() and torch.isinf(lse).all() and (lse < 0).all()


def test_max_group_size_sinks_softcap():
    own = [4, 9, 1, 0]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([17, 30], own, 2, 64, 8, seed=2)
    q = torch.randn(4, 8, 64, dtype=torch.float16, device=DEV)
    plens, ids = i32([17, 30]), i32([0, 0, 1, 0])
    sinks = torch.randn(8, device=DEV)
    check("bounded groups", q, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, i32(own), otab, max_group_size=3)
    check("sinks, softcap", q, pool_k, pool_v, ptab, plens, ids, pool_k, pool_v, i32(own), otab, sinks=sinks,
          softcap=5.0)


def test_float8_pool():
    # an e4m3 pool with its scales, read with fp16 queries, as leanattn.decode reads float8 caches
    own = [7, 0, 12]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([26, 9], own, 2, 64, 4, dtype=torch.float32, seed=3)
    k8, v8 = (pool_k / 2).to(torch.float8_e4m3fn), (pool_v / 4).to(torch.float8_e4m3fn)
    q = torch.randn(3, 8, 64, dtype=torch.float16, device=DEV)
    check("float8", q, k8, v8, ptab, i32([26, 9]), i32([1, 1, 0]), k8, v8, i32(own), otab, k_scale=2.0, v_scale=4.0)


def test_cascade_paged_and_dense_levels():
    # a dense system prompt read by every sample, then per-group documents in the pool, then the own tokens; and
    # the paged level alone, its (k, v, lens, ids, block_table) without lengths (the pages' capacity)
    own = [5, 0, 8, 13]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([16, 16, 16], own, 2, 64, 4, seed=4, prefix_cap=16)
    system_k, system_v = (torch.randn(11, 2, 64, dtype=torch.float16, device=DEV) for _ in range(2))
    ids = i32([2, 0, 2, 1])
    q = torch.randn(4, 8, 64, dtype=torch.float16, device=DEV)
    levels = [(system_k, system_v), (pool_k, pool_v, i32([16, 3, 9]), ids, ptab)]
    out, lse = leanattn.cascade_decode(q, levels, pool_k, pool_v, i32(own), otab, return_lse=True)
    assert_states_match("cascade", q, out, lse, *reference.cascade_decode(q, levels, pool_k, pool_v, i32(own), otab))
    alone = [(pool_k, pool_v, None, ids, ptab)]
    out, lse = leanattn.cascade_decode(q, alone, return_lse=True)
    assert_states_match("paged level alone", q, out, lse, *reference.cascade_decode(q, alone))


def test_compile_fullgraph():
    own = [3, 10]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([12, 7], own, 2, 64, 4, seed=5)
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=DEV)
    args = (q, pool_k, pool_v, pool_k, pool_v, i32(own), otab, i32([12, 7]), i32([1, 0]))
    torch._dynamo.reset()
    # fullgraph tracing is what is checked here (Inductor's CPU code generation took 20 s of CI; the GPU test runs it)
    compiled = torch.compile(lambda *a: leanattn.bifurcated_decode(
        *a, return_lse=True, prefix_block_table=ptab, max_group_size=2), fullgraph=True, backend="aot_eager")
    out, lse = compiled(*args)
    ref = leanattn.bifurcated_decode(*args, return_lse=True, prefix_block_table=ptab, max_group_size=2)
    assert torch.equal(out, ref[0]) and torch.equal(lse, ref[1])


def test_errors():
    own = [3, 5]
    pool_k, pool_v, ptab, otab, dk, _ = unified_pool([12, 7], own, 2, 64, 4, seed=6)
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=DEV)
    lens, plens, ids = i32(own), i32([12, 7]), i32([1, 0])

    def call(pk=pool_k, table=ptab, pl=plens, pi=ids):
        return leanattn.bifurcated_decode(q, pk, pk, pool_k, pool_v, lens, otab, pl, pi, prefix_block_table=table)
    with pytest.raises(ValueError, match=r"prefix_k: expected a 4-D \(num_pages, page_size, Hkv, D\) page pool"):
        call(pk=dk[0])
    with pytest.raises(TypeError, match="prefix_block_table: expected dtype torch.int32"):
        call(table=ptab.long())
    with pytest.raises(ValueError, match="prefix_block_table: expected a 2-D tensor"):
        call(table=ptab[0])
    with pytest.raises(ValueError, match="prefix_block_table: expected unit stride on the last dimension"):
        call(table=torch.cat([ptab, ptab], 1)[:, ::2])
    with pytest.raises(ValueError, match="prefix_k: expected a page size >= 1, got 0"):
        call(pk=pool_k[:, :0])
    with pytest.raises(ValueError, match=r"prefix_lens: expected shape \(2,\) \(one length per prefix of "
                                         r"prefix_block_table\)"):
        call(pl=plens[:1])
    with pytest.raises(ValueError, match=r"prefix_lens: expected lengths <= 12 \(prefix_block_table pages x page "
                                         r"size\), got a maximum of 13"):
        call(pl=i32([13, 7]))
    bad = ptab.clone()
    bad[0, 1] = pool_k.shape[0]
    with pytest.raises(ValueError, match=rf"prefix_block_table: expected page ids in \[0, {pool_k.shape[0]}\) for "
                                         r"the pages in use"):
        call(table=bad)
    bad[0, 1] = ptab[0, 1]
    bad[1, 2] = -1  # past prefix 1's 7 tokens (two pages of 4): never read, so accepted
    call(table=bad)
    with pytest.raises(ValueError, match="prefix_ids: expected a .* when prefix_block_table holds 2 prefixes"):
        call(pi=None)
    with pytest.raises(ValueError, match=r"prefix_block_table: expected at least one prefix \(row\)"):
        call(table=ptab[:0], pl=None, pi=None)
    with pytest.raises(ValueError, match="levels\\[0\\]: expected a \\(k, v\\), \\(k, v, lens, ids\\) or"):
        leanattn.cascade_decode(q, [(pool_k, pool_v, None)])
    with pytest.raises(TypeError, match="levels\\[0\\]_block_table: expected dtype torch.int32"):
        leanattn.cascade_decode(q, [(pool_k, pool_v, None, None, ptab[:1].float())])
