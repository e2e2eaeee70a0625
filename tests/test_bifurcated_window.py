"""``bifurcated_decode`` and ``cascade_decode`` with a sliding window (``window_left``) against the float64 reference
under the interpreter: one and several prompts, own lengths that differ within a prompt and samples in step, one
token, several and packed, causal and not, paged and absent own caches, empty prefixes, nested levels, float8 and a
soft cap, prefix layouts seen without a copy and with one, and the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.ops.token_pages import token_pool
from leanattn.testing import assert_states_match
from test_bifurcated import DEV, ids_tensor, make_inputs, make_prefix, multi_prompt_paged_inputs
from test_bifurcated_tokens import tokens

# windows that end in the own tokens, reach into the prefix a little, a lot, and past its start
WINDOWS = [0, 4, 19, 50]


def check(q, pk, pv, k, v, lens=None, bt=None, plens=None, ids=None, window=4, causal=False, name="", **kw):
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True, causal=causal,
                                          window_left=window, **kw)
    same = {n: kw[n] for n in ("cu_seqlens_q", "softcap", "k_scale", "v_scale") if n in kw}
    ref_out, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, causal=causal,
                                                   window_left=window, **same)
    assert_states_match(f"{name} window {window}", q, out, lse, ref_out, ref_lse)
    return out, lse


# each window once and each head dim and dtype at least once (the cross product cost CI about 60 s more)
@pytest.mark.parametrize("D,dtype,window", [(64, torch.float16, 0), (128, torch.float32, 4), (256, torch.float16, 19),
                                            (64, torch.float16, 50)], ids=["D64-fp16-w0", "D128-fp32-w4",
                                                                           "D256-fp16-w19", "D64-fp16-w50"])
def test_one_prompt_ragged_samples(D, dtype, window):
    # own lengths 3, 0, 40, 17 and 25: the samples' windows start at different prefix positions, or past it
    own = [3, 0, 40, 17, 25]
    q, k, v, lens, _ = make_inputs(len(own), 8, 2, D, own, dtype=dtype)
    pk, pv, _ = make_prefix(None, 45, 2, D, dtype=dtype)
    check(q, pk, pv, k, v, lens, window=window, name=f"D={D}")


@pytest.mark.parametrize("window", WINDOWS)
def test_samples_in_step(window):
    # equal own lengths (samples decoded together): the whole prefix window is shared, no row has a rest
    q, k, v, lens, _ = make_inputs(6, 4, 4, 64, [7] * 6)
    pk, pv, _ = make_prefix(None, 33, 4, 64)
    check(q, pk, pv, k, v, lens, window=window, name="in step")


@pytest.mark.parametrize("n,window", [(1, 23), (1, 22), (3, 23), (3, 22)])
def test_own_tokens_in_the_segment_pass(monkeypatch, n, window):
    # own capacity 24: a window of 23 keys before the token holds every own token, which the segment pass then
    # reads (one sample included, which otherwise takes the concat kernel); 22 can cut them, so they take a decode
    import leanattn.ops.bifurcated_window as bw
    decodes = []
    monkeypatch.setattr(bw, "decode", lambda *a, **kw: decodes.append(1) or leanattn.decode(*a, **kw))
    q, k, v, lens, _ = make_inputs(n, 8, 2, 64, [24, 5, 0][:n])
    pk, pv, _ = make_prefix(None, 40, 2, 64)
    check(q, pk, pv, k, v, lens, window=window, name=f"{n} samples")
    check(q, pk, pv, k, v, None, window=window, name=f"{n} samples at capacity")
    # one decode a call for each row's rest of the segment, one more for own tokens the window may cut
    assert len(decodes) == (2 if window == 23 else 4)
    # nested levels whose innermost holds no key: the own tokens join the outer level's pass
    decodes.clear()
    empty_k, empty_v, _ = make_prefix(None, 0, 2, 64)
    levels = [(pk, pv), (empty_k, empty_v)]
    out, lse = leanattn.cascade_decode(q, levels, k, v, lens, return_lse=True, window_left=window)
    ref_out, ref_lse = reference.cascade_decode(q, levels, k, v, lens, window_left=window)
    assert_states_match("empty innermost level", q, out, lse, ref_out, ref_lse)
    assert len(decodes) == (1 if window == 23 else 2)


# each window once and each head layout at least once (the cross product cost CI about 120 s more)
@pytest.mark.parametrize("hq,hkv,d,window", [(4, 4, 64, 0), (8, 2, 64, 4), (6, 1, 128, 19), (8, 2, 64, 50)])
def test_multi_prompt_paged(hq, hkv, d, window):
    q, pk, pv, k, v, lens, bt, plens, ids = multi_prompt_paged_inputs(hq, hkv, d)
    check(q, pk, pv, k, v, lens, bt, plens, ids, window=window, name=f"{hq}/{hkv}")
    check(q, pk, pv, k, v, lens, bt, plens, ids, window=window, name="bounded groups", max_group_size=9,
          num_programs=3)


# a window inside the own tokens and one reaching far into the prefix, causal and not (every pair cost CI 12-20 s;
# the one-token tests take every window)
@pytest.mark.parametrize("causal,window", [(True, 4), (False, 50)])
def test_tokens_and_packed(causal, window):
    q, pk, pv, k, v, lens, bt, plens, ids = multi_prompt_paged_inputs(8, 2, 64)
    check(tokens(q, 3), pk, pv, k, v, lens, bt, plens, ids, window=window, causal=causal, name="3 tokens")
    # packed: 0-3 tokens a sample
    counts = torch.tensor([2, 0, 3, 1, 1, 3, 0, 2, 1, 3, 1, 2])
    cu = torch.zeros(13, dtype=torch.int32)
    cu[1:] = counts.cumsum(0)
    qp = torch.randn(int(cu[-1]), 8, 64, dtype=q.dtype, device=DEV)
    check(qp, pk, pv, k, v, lens, bt, plens, ids, window=window, causal=causal, name="packed",
          cu_seqlens_q=cu.to(DEV), max_seqlen_q=4)


def test_no_own_cache_empty_prefixes_and_float8():
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [12, 0, 5])
    pk, pv, plens = make_prefix(2, 30, 2, 64, plens=[30, 0])
    ids = ids_tensor([1, 0, 1])
    for w in (0, 9, 29):  # the prefix alone: the query is its last position
        check(q, pk, pv, None, None, plens=plens, ids=ids, window=w, name="no own")
    empty = pk[0, :0]
    check(q, empty, empty, k, v, lens, window=3, name="empty prefix")
    # float8 prefix and own cache, one pair of scales, and a soft cap
    f8 = torch.float8_e4m3fn
    check(q, (pk / 2).to(f8), (pv / 3).to(f8), (k / 2).to(f8), (v / 3).to(f8), lens, plens=plens, ids=ids, window=6,
          name="float8", k_scale=2.0, v_scale=3.0, softcap=5.0)


@pytest.mark.parametrize("layout", ["contiguous", "hnd", "sliced", "prompt-minor"])
def test_prefix_layouts(layout):
    # the one-token pages are laid over the prefix without a copy where its strides allow (hnd: (G, Hkv, P, D) seen
    # through a transpose; sliced: a window of a larger cache, at an offset), with one otherwise ((P, G, Hkv, D) seen
    # through a transpose)
    own = [3, 0, 22, 9]
    q, k, v, lens, _ = make_inputs(4, 4, 2, 64, own)
    G, P = 2, 26
    base = {"contiguous": (G, P, 2, 64), "hnd": (G, 2, P, 64), "sliced": (G + 1, P + 5, 2, 64),
            "prompt-minor": (P, G, 2, 64)}[layout]
    pk, pv = (torch.randn(base, dtype=torch.float16, device=DEV) for _ in range(2))
    if layout == "hnd":
        pk, pv = pk.transpose(1, 2), pv.transpose(1, 2)
    if layout == "sliced":
        pk, pv = pk[1:, 3:3 + P], pv[1:, 3:3 + P]
    if layout == "prompt-minor":
        pk, pv = pk.transpose(0, 1), pv.transpose(0, 1)
    pool, step = token_pool(pk)
    assert torch.equal(pool[step + 5, 0], pk[1, 5]) and torch.equal(pool[P - 1, 0], pk[0, P - 1])
    assert torch.equal(pool[0, 0], pk[0, 0])
    assert (pool.data_ptr() == pk.data_ptr()) == (layout != "prompt-minor")
    plens = torch.tensor([26, 11], dtype=torch.int32, device=DEV)
    for w in (2, 15, 40):
        check(q, pk, pv, k, v, lens, plens=plens, ids=ids_tensor([0, 1, 1, 0]), window=w, name=layout)


def test_cascade_levels():
    # a system prompt for all, a document per group, then own tokens: windows ending in each of them
    own = [5, 0, 13, 8]
    q, k, v, lens, bt = make_inputs(4, 8, 2, 64, own, capacity=16, page_size=4)
    sk, sv, _ = make_prefix(None, 14, 2, 64)
    dk, dv, dlens = make_prefix(3, 20, 2, 64, plens=[20, 7, 0])
    levels = [(sk, sv), (dk, dv, dlens, ids_tensor([2, 0, 1, 0]))]
    # windows ending in the own tokens, the document, the system prompt and before it; one and two query tokens
    for w, q_ in ((0, q), (6, tokens(q, 2)), (20, q), (30, tokens(q, 2)), (60, q)):
        out, lse = leanattn.cascade_decode(q_, levels, k, v, lens, bt, return_lse=True, window_left=w, causal=True)
        ref_out, ref_lse = reference.cascade_decode(q_, levels, k, v, lens, bt, window_left=w, causal=True)
        assert_states_match(f"cascade window {w} {tuple(q_.shape)}", q_, out, lse, ref_out, ref_lse)


def test_window_holding_everything_is_no_window():
    q, pk, pv, k, v, lens, bt, plens, ids = multi_prompt_paged_inputs(8, 2, 64)
    full = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True)
    longest = pk.shape[1] + bt.shape[1] * k.shape[1]
    same = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True,
                                      window_left=longest - 1)
    assert torch.equal(full[0], same[0]) and torch.equal(full[1], same[1])
    # one key less: the windowed path, which agrees where no window cuts anything
    near = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True,
                                      window_left=longest - 2)
    assert torch.allclose(near[0].float(), full[0].float(), atol=2e-3) and torch.allclose(near[1], full[1], atol=1e-3)


def test_compile_fullgraph():
    q, pk, pv, k, v, lens, bt, plens, ids = multi_prompt_paged_inputs(8, 2, 64)

    def f(q, lens):
        return leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True, window_left=9,
                                          max_group_size=9)

    out, lse = torch.compile(f, fullgraph=True)(q, lens)
    ref_out, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, window_left=9)
    assert_states_match("compiled", q, out, lse, ref_out, ref_lse)


def test_window_errors():
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [3, 5])
    pk, pv, _ = make_prefix(None, 8, 2, 64)
    with pytest.raises(ValueError, match=r"window_left: expected an int >= -1 \(-1: no window\), got -2"):
        leanattn.bifurcated_decode(q, pk, pv, k, v, lens, window_left=-2)
    with pytest.raises(TypeError, match="window_left: expected an int, got float"):
        leanattn.bifurcated_decode(q, pk, pv, k, v, lens, window_left=4.0)
    with pytest.raises(TypeError, match="window_left: expected an int, got bool"):
        leanattn.cascade_decode(q, [(pk, pv)], k, v, lens, window_left=True)


@pytest.mark.parametrize("op", ["bifurcated", "cascade"])
def test_own_pages_unset_outside_the_window(op):
    # as decode: an own page table's ids need only be valid for the pages the window reaches (unset: -1)
    q = torch.randn(2, 8, 64, dtype=torch.float16, device=DEV)
    pool_k = torch.randn(20, 4, 2, 64, dtype=torch.float16, device=DEV)
    pool_v = torch.randn_like(pool_k)
    lens = torch.tensor([16, 13], dtype=torch.int32, device=DEV)
    table = torch.tensor([[-1, -1, 2, 3], [-1, 5, 6, 7]], dtype=torch.int32, device=DEV)
    pk, pv, _ = make_prefix(None, 10, 2, 64)
    ref = reference.bifurcated_decode(q, pk, pv, pool_k, pool_v, lens, table, window_left=5)
    call = (leanattn.bifurcated_decode(q, pk, pv, pool_k, pool_v, lens, table, window_left=5, return_lse=True)
            if op == "bifurcated" else
            leanattn.cascade_decode(q, [(pk, pv)], pool_k, pool_v, lens, table, window_left=5, return_lse=True))
    assert_states_match(op, q, *call, *ref)
    with pytest.raises(ValueError, match=r"block_table: expected page ids in \[0, 20\) for the pages in use"):
        leanattn.bifurcated_decode(q, pk, pv, pool_k, pool_v, lens, table, window_left=8)  # reaches page 1


def test_more_rows_and_prompts_than_a_plan_block(monkeypatch):
    # 40 samples over 35 prompts with the plan kernel's block at 32 (256 in use): its loops over samples, rows and
    # prompts take two blocks (300 samples over 260 prompts at 256 cost CI 41 s)
    from leanattn.ops import window_plan
    monkeypatch.setattr(window_plan, "_BLOCK_ROWS", 32)
    gen = torch.Generator().manual_seed(7)
    own = torch.randint(0, 6, (40,), generator=gen).tolist()
    q, k, v, lens, _ = make_inputs(40, 2, 1, 64, own)
    pk, pv, plens = make_prefix(35, 7, 1, 64, plens=torch.randint(0, 8, (35,), generator=gen).tolist())
    ids = torch.randint(0, 35, (40,), generator=gen).to(torch.int32).to(DEV)
    check(q, pk, pv, k, v, lens, plens=plens, ids=ids, window=5, name="40 rows")


def test_strided_and_expanded_index_tensors():
    # lengths and prefix ids as strided or expanded views (the plan kernel reads them with unit stride, so they are
    # made contiguous first; found by fuzzing)
    q, k, v, lens, _ = make_inputs(2, 2, 1, 64, [1, 4])
    pk, pv, plens = make_prefix(3, 8, 1, 64, plens=[8, 5, 2])
    strided = torch.stack([lens, torch.zeros_like(lens)], 1).reshape(-1)[::2]
    check(q, pk, pv, k, v, strided, plens=plens, ids=ids_tensor([2, 0]), window=3, name="strided lengths")
    spl = torch.stack([plens, torch.zeros_like(plens)], 1).reshape(-1)[::2]
    check(q, pk, pv, k, v, lens, plens=spl, ids=ids_tensor([2, 0]), window=3, name="strided prefix lengths")
    check(q, pk, pv, k, v, lens, plens=plens, ids=ids_tensor([2]).expand(2), window=3, name="expanded ids")


def test_one_token_pages_of_different_layouts():
    # page size (or prefix length) 1 with k a head-major view and v token-major: a size-1 dimension's stride is
    # arbitrary, which made their one-token pools differ (found by fuzzing)
    q, k, v, lens, _ = make_inputs(2, 2, 2, 64, [0, 6])
    pk = torch.randn(2, 2, 1, 64, dtype=q.dtype, device=DEV).transpose(1, 2)
    pv = torch.randn(2, 1, 2, 64, dtype=q.dtype, device=DEV)
    for w in (0, 2):
        check(q, pk, pv, k, v, lens, ids=ids_tensor([1, 0]), window=w, name="dense P=1")
    pool_k = torch.randn(8, 2, 1, 64, dtype=q.dtype, device=DEV).transpose(1, 2)
    pool_v = torch.randn(8, 1, 2, 64, dtype=q.dtype, device=DEV)
    out, lse = leanattn.bifurcated_decode(q[:1], pool_k, pool_v, k[:1], v[:1], lens[1:], window_left=2,
                                          prefix_block_table=torch.arange(8, dtype=torch.int32, device=DEV)[None],
                                          return_lse=True)
    ref_out, ref_lse = reference.bifurcated_decode(q[:1], pool_k, pool_v, k[:1], v[:1], lens[1:], window_left=2,
                                                   prefix_block_table=torch.arange(8, dtype=torch.int32)[None])
    assert_states_match("paged page 1", q[:1], out, lse, ref_out, ref_lse)


def test_window_plan_opcheck():
    from leanattn.ops.token_pages import token_pool
    from leanattn.ops.window_plan import _plan_op
    k = torch.randn(2, 9, 2, 64, dtype=torch.float16, device=DEV)
    pool, step = token_pool(k)
    lens = torch.tensor([9, 4], dtype=torch.int32, device=DEV)
    ids = torch.tensor([1, 0, 1], dtype=torch.int32, device=DEV)
    own = torch.tensor([3, 0, 5], dtype=torch.int32, device=DEV)
    torch.library.opcheck(_plan_op, (own, 0, ids, lens, None, None, None, 2, 3, 6, 2, 4, 5, 9, pool, step, 9, None))
    # the segments as pages of 3 tokens in a pool, the table's rows in another order
    table = torch.tensor([[4, 0, 2], [1, 5, 3]], dtype=torch.int32, device=DEV)
    pool, step = token_pool(k.reshape(6, 3, 2, 64))
    torch.library.opcheck(_plan_op, (own, 0, ids, lens, None, None, None, 2, 3, 6, 2, 4, 5, 9, pool, step, 3, table))


@pytest.mark.parametrize("single,page", [(True, 0), (False, 0), (True, 32), (False, 4)],
                         ids=["one-prompt", "three-prompts", "one-prompt-pages32", "three-prompts-pages4"])
def test_pass_reads_tail_in_place(single, page):
    # the bifurcated pass over [prefix_starts[g], prefix_lens[g]) of a prefix (a window's tail, read where it lies,
    # dense or in pages of a pool), starts off the tile grid and spans from empty to the whole span
    from leanattn.ops.bifurcated import _bifurcated_impl
    from leanattn.testing import paged_kv
    G, P, Hkv, group, D, span = (1 if single else 3), 45, 2, 3, 64, 19
    B = 4 if single else 7
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    q = torch.randn(B, Hkv * group, D, generator=gen).to(torch.float16).to(DEV)
    pk, pv = (torch.randn(G, P, Hkv, D, generator=gen).to(torch.float16).to(DEV) for _ in range(2))
    starts = torch.tensor([3, 27, 45][:G] if not single else [13], dtype=torch.int32, device=DEV)
    ends = torch.tensor([3 + span, 27 + 11, 45][:G] if not single else [13 + span], dtype=torch.int32, device=DEV)
    ids = None if single else torch.tensor([2, 0, 1, 0, 0, 1, 2], dtype=torch.int32, device=DEV)
    if page:
        pool_k, pool_v, table = paged_kv(pk, pv, None, page, spare_pages=2, generator=gen)
        src = (pool_k, pool_v)
    else:
        src, table = ((pk[0], pv[0]) if single else (pk, pv)), None
    out, lse = _bifurcated_impl(q, *src, None, None, None, None, ends, ids, D ** -0.5, 0, 0, 0, 0, 0.0, 1.0, 1.0,
                                starts, span, table)
    for b in range(B):
        g = 0 if single else int(ids[b])
        s, e = int(starts[g]), int(ends[g])
        ref_out, ref_lse = reference.decode(q[b:b + 1], pk[g:g + 1, s:e], pv[g:g + 1, s:e])
        assert_states_match(f"sample {b} keys [{s}, {e})", q[b:b + 1], out[b:b + 1], lse[b:b + 1], ref_out, ref_lse)
