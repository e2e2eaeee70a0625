"""``leanattn.bifurcated_decode`` / ``cascade_decode`` against the float64 reference (Triton interpreter).

Tiles are 16 tokens and the grid 4 programs on the interpreter, so prefixes and own caches are cut
into several pieces; ``block_h`` (op argument) forces several head blocks (team schedule) at tiny sizes.
"""
from __future__ import annotations

import json
import operator
import re

import numpy as np
import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, assert_states_match
from test_decode import make_inputs as _make_inputs

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # interpreter on CPU, compiled kernels on a GPU

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def make_inputs(*args, **kw):
    """``test_decode.make_inputs`` on this module's device."""
    return _make_inputs(*args, device=DEV, **kw)


def make_prefix(G, P, Hkv, D, dtype=torch.float16, plens=None):
    """``(prefix_k, prefix_v, prefix_lens)``: ``(P, Hkv, D)`` when ``G`` is None, else ``(G, P, Hkv, D)``."""
    shape = (P, Hkv, D) if G is None else (G, P, Hkv, D)
    pk, pv = torch.randn(shape, dtype=dtype, device=DEV), torch.randn(shape, dtype=dtype, device=DEV)
    lens = None if plens is None else torch.tensor(plens, dtype=torch.int32, device=DEV)
    return pk, pv, lens


def ids_tensor(ids):
    return None if ids is None else torch.tensor(ids, dtype=torch.int32, device=DEV)


def shared_prefix_inputs(dtype):
    """One prompt's ragged samples (own tokens 3, 0, 40, 17 and 25; 8/2 heads, D=64) over a 45-token prefix, in
    ``dtype``: ``(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens)``."""
    own = [3, 0, 40, 17, 25]
    q, k, v, lens, _ = make_inputs(len(own), 8, 2, 64, own, dtype=dtype)
    pk, pv, _ = make_prefix(None, 45, 2, 64, dtype=dtype)
    return q, pk, pv, k, v, lens


def multi_prompt_paged_inputs(hq, hkv, d):
    """Unequal groups (12 samples of four prompts: 9, 1, none and 2), own caches of up to 40 tokens in pages of 16,
    prefixes of 45, 30, 0 and 12 tokens: the arguments of ``bifurcated_decode`` up to ``prefix_ids``."""
    ids = [0] * 9 + [1] + [3] * 2
    own = torch.randint(0, 40, (len(ids),)).tolist()
    q, k, v, lens, bt = make_inputs(len(ids), hq, hkv, d, own, capacity=40, page_size=16)
    pk, pv, plens = make_prefix(4, 45, hkv, d, plens=[45, 30, 0, 12])
    return q, pk, pv, k, v, lens, bt, plens, ids_tensor(ids)


def forced_path_inputs(monkeypatch, path):
    """Under ``LEANATTN_BIFURCATED_CONFIG`` path field ``path`` (1 split, 2 fused, 3 states), plans cleared before
    and after: yields once ``(q, prefix_k, prefix_v, k_cache, v_cache, cache_seqlens)``, 4 samples of 4/2 heads
    (one with no own tokens) over a 20-token prefix."""
    from leanattn.ops import bifurcated as bif
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", f"0,0,0,0,0,0,0,0,0,{path}")
    bif._PLANS.clear()
    try:
        q, k, v, lens, _ = make_inputs(4, 4, 2, 64, [5, 0, 12, 30])
        pk, pv, _ = make_prefix(None, 20, 2, 64)
        yield q, pk, pv, k, v, lens
    finally:
        bif._PLANS.clear()


def one_sample_cases(monkeypatch, even, page_size):
    """The concat path's calls, for tests of its options: one sample of one prompt (29 own tokens after a 37-token
    prefix) on the even pieces of one sequence (``even`` "1") or the persistent stream-K kernel ("0"), then one
    sample for each of three of four prompts (prefixes of 35, 0, 20 and 1 tokens; an empty own cache among them) over
    3 programs, whose pieces straddle the prefix's end. Yields ``(args, kwargs, name)`` of ``bifurcated_decode``."""
    from leanattn.ops import bifurcated as bif
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", even)
    bif._PLANS.clear()
    try:
        q, k, v, lens, bt = make_inputs(1, 8, 2, 64, [29], capacity=32, page_size=page_size)
        pk, pv, _ = make_prefix(None, 37, 2, 64)
        yield (q, pk, pv, k, v, lens, bt), {}, f"even={even}"
        q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [17, 0, 40], page_size=page_size)
        pk, pv, plens = make_prefix(4, 35, 2, 64, plens=[35, 0, 20, 1])
        yield (q, pk, pv, k, v, lens, bt, plens, ids_tensor([2, 0, 1])), {"num_programs": 3}, "one sample per prompt"
    finally:
        bif._PLANS.clear()


def check(q, pk, pv, k, v, lens=None, bt=None, plens=None, ids=None, scale=None, name="bifurcated", op_args=None):
    """Compare ``out`` and ``lse`` with the reference; ``op_args`` = (max_group_size, num_programs, block_h,
    block_n) calls the custom op directly."""
    if op_args is None:
        out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, scale, return_lse=True)
    else:
        s = scale if scale is not None else q.shape[-1] ** -0.5
        out, lse = torch.ops.leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, s, *op_args)
    ref_out, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, scale)
    assert_states_match(name, q, out, lse, ref_out, ref_lse)
    return out, lse


# ------------------------------------------------------------------------------------------------
# one shared prefix
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [64, 128, 256], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_single_prefix_dtypes_head_dims(dtype, D):
    own = [0, 1, 16, 33]
    q, k, v, lens, _ = make_inputs(len(own), 4, 2, D, own, dtype)
    pk, pv, _ = make_prefix(None, 37, 2, D, dtype)
    check(q, pk, pv, k, v, lens)


@pytest.mark.parametrize("n", [1, 4], ids=["concat", "states"])
def test_out_without_lse(n):
    # a call that does not return the LSE writes it to the plan's sink: the same output, and a later call
    # that returns it gets a tensor of its own
    q, k, v, lens, _ = make_inputs(n, 4, 2, 64, [0, 17, 3, 40][:n])
    pk, pv, _ = make_prefix(None, 37, 2, 64)
    ref, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens)
    from leanattn.ops import bifurcated as bif
    bif._PLANS.clear()
    out = leanattn.bifurcated_decode(q, pk, pv, k, v, lens)
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    (plan,) = bif._PLANS.values()
    out2, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, return_lse=True)
    assert torch.equal(out2, out) and lse.data_ptr() != plan.lse_sink.data_ptr()
    assert_lse_close("lse", lse, ref_lse, TOLERANCE[q.dtype])


GQA = [(4, 4), (8, 2), (8, 1), (6, 2), (64, 2), (96, 1)]


@pytest.mark.parametrize("Hq,Hkv", GQA, ids=[f"{hq}q{hkv}kv" for hq, hkv in GQA])
def test_gqa_ratios(Hq, Hkv):
    # MHA, GQA 4 and 8, a group of 3 (rows of one sample straddle nothing but pad the block),
    # 32 (own rows BLOCK_H 32) and 96 (two own head blocks; prefix rows straddle blocks)
    own = [20, 0, 5]
    q, k, v, lens, _ = make_inputs(3, Hq, Hkv, 64, own)
    pk, pv, _ = make_prefix(None, 24, Hkv, 64)
    check(q, pk, pv, k, v, lens)


def test_one_sample():
    q, k, v, lens, _ = make_inputs(1, 8, 2, 64, [21])
    pk, pv, _ = make_prefix(None, 50, 2, 64)
    check(q, pk, pv, k, v, lens)


def test_one_sample_per_prompt():
    # nothing to stack: prefix and own tiles form one row per sample (CONCAT), paged own cache,
    # an empty prefix, an empty own cache, strided ids
    ids = torch.tensor([2, 0, 1, 3, 0, 0], dtype=torch.int32, device=DEV)[::2]
    own = [17, 0, 40]
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, own, page_size=16)
    pk, pv, plens = make_prefix(4, 35, 2, 64, plens=[35, 0, 20, 1])
    check(q, pk, pv, k, v, lens, bt, plens=plens, ids=ids)
    check(q, pk, pv, k, v, lens, bt, plens=plens, ids=ids, op_args=(1, 2, 0, 0), name="max_group_size=1")
    q1, k1, v1, lens1, _ = make_inputs(1, 4, 4, 128, [0], capacity=8)
    pk1, pv1, _ = make_prefix(None, 70, 4, 128)
    for grid in (1, 3):
        check(q1, pk1, pv1, k1, v1, lens1, op_args=(0, grid, 0, 0), name=f"B=1 grid={grid}")


@pytest.mark.parametrize("P,plens,own,page_size,hkv", [(40, None, [20], None, 2), (40, [17], [0], None, 2),
                                                    (64, None, [9], 16, 1), (0, None, [20], None, 2),
                                                    (40, [40], None, None, 2)])
def test_one_sample_even_pieces(monkeypatch, P, plens, own, page_size, hkv):
    # one sample: every row has the same prefix + own tiles, and where the cut is even pieces of each row they run
    # on concat_split_kernel with a merge launch; the persistent kernel (LEANATTN_DECODE_EVEN=0) agrees too
    from leanattn.ops import bifurcated as bif
    q, k, v, lens, bt = make_inputs(1, 4 * hkv, hkv, 64, own, capacity=24, page_size=page_size)
    pk, pv, pl = make_prefix(None, P, hkv, 64, plens=plens)
    for even in ("1", "0"):
        monkeypatch.setenv("LEANATTN_DECODE_EVEN", even)
        bif._PLANS.clear()
        check(q, pk, pv, k, v, lens, bt, plens=pl, name=f"even={even}")
        (plan,) = bif._PLANS.values()
        assert plan.path == "concat" and (plan.even > 0) is (even == "1")
    bif._PLANS.clear()


def test_one_sample_merge_launch(monkeypatch):
    # the one-sample path with its pieces merged by a second launch (as decode over copies of one sequence)
    from leanattn.ops import bifurcated as bif
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", "1")
    bif._PLANS.clear()
    try:
        ids = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEV)
        q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [17, 0, 40], page_size=16)
        pk, pv, plens = make_prefix(4, 35, 2, 64, plens=[35, 0, 20, 1])
        for grid in (1, 3, 7):
            check(q, pk, pv, k, v, lens, bt, plens=plens, ids=ids, op_args=(0, grid, 0, 0),
                  name=f"grid={grid}")
        q1, k1, v1, lens1, _ = make_inputs(1, 4, 4, 128, [9], capacity=16)
        pk1, pv1, _ = make_prefix(None, 70, 4, 128)
        check(q1, pk1, pv1, k1, v1, lens1, op_args=(0, 5, 0, 0), name="B=1 grid=5")
        monkeypatch.setenv("LEANATTN_DECODE_BLOCK_B_MIN", "16")  # a lengths vector wider than the batch
        check(q1, pk1, pv1, k1, v1, lens1, op_args=(0, 5, 0, 0), name="B=1 grid=5 BLOCK_B=16")
        assert all(p.concat_launch.mode == 1 for p in bif._PLANS.values() if p.path == "concat")  # LAUNCH
    finally:
        bif._PLANS.clear()


@pytest.mark.parametrize("page_size", [1, 16, 24, 64], ids=lambda p: f"page{p}")
def test_paged_own_cache(page_size):
    own = [0, 1, 31, 50, 17]
    q, k, v, lens, bt = make_inputs(len(own), 8, 2, 64, own, page_size=page_size)
    pk, pv, _ = make_prefix(None, 40, 2, 64)
    check(q, pk, pv, k, v, lens, bt)


def test_own_cache_full_capacity_and_transposed():
    q, k, v, _, _ = make_inputs(3, 8, 4, 64, None, capacity=20, layout="hnd")
    pk, pv, _ = make_prefix(None, 18, 4, 64)
    check(q, pk, pv, k, v)


def test_empty_own_caches():
    q, k, v, lens, _ = make_inputs(4, 4, 2, 64, [0, 0, 0, 0], capacity=16)
    pk, pv, _ = make_prefix(None, 45, 2, 64)
    check(q, pk, pv, k, v, lens)
    # zero capacity: only the prefix
    q, k, v, _, _ = make_inputs(3, 4, 2, 64, None, capacity=0)
    out, _ = check(q, pk, pv, k, v)
    assert torch.allclose(out.double(), reference.decode(q, pk.expand(3, -1, -1, -1), pv.expand(3, -1, -1, -1))[0],
                          atol=2e-3)


def test_empty_prefix():
    own = [0, 9, 40]
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, own)
    pk, pv, _ = make_prefix(None, 0, 2, 64)
    out, lse = check(q, pk, pv, k, v, lens)
    ref_out, ref_lse = leanattn.decode(q, k, v, lens, return_lse=True)
    assert_rel_close("empty prefix = decode", out, ref_out, TOLERANCE[q.dtype])
    # a prefix with length 0 through prefix_lens
    pk, pv, plens = make_prefix(1, 32, 2, 64, plens=[0])
    check(q, pk, pv, k, v, lens, plens=plens, ids=ids_tensor([0, 0, 0]))


def test_nothing_to_attend():
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [0, 0], capacity=16)
    pk, pv, _ = make_prefix(None, 0, 2, 64)
    out, lse = check(q, pk, pv, k, v, lens)
    assert torch.isneginf(lse).all() and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("scale", [0.05, 2.0])
def test_softmax_scale(scale):
    q, k, v, lens, _ = make_inputs(3, 4, 2, 64, [30, 3, 12], torch.float32)
    pk, pv, _ = make_prefix(None, 35, 2, 64, torch.float32)
    check(q, pk, pv, k, v, lens, scale=scale)


# ------------------------------------------------------------------------------------------------
# several prompts
# ------------------------------------------------------------------------------------------------
def test_multi_prompt_unequal_groups():
    # prompt sizes 3, 1, 4 and an unused prompt; prefix lengths 40, 0, 17, 33; samples interleaved
    ids = [2, 0, 2, 2, 1, 0, 2, 0]
    own = [5, 0, 16, 33, 1, 20, 0, 7]
    q, k, v, lens, _ = make_inputs(len(ids), 8, 2, 64, own)
    pk, pv, plens = make_prefix(4, 40, 2, 64, plens=[40, 0, 17, 33])
    check(q, pk, pv, k, v, lens, plens=plens, ids=ids_tensor(ids))


@pytest.mark.parametrize("B,G", [(1, 1), (16, 4), (130, 7), (300, 300), (64, 1), (17, 40), (40, 1500)])
def test_group_layout_is_a_stable_sort(B, G):
    # the one-launch counting sort against torch's stable argsort, over more than one block of ids (128) and of
    # prompts (1024)
    from leanattn.ops.bifurcated import _group_layout
    ids = torch.randint(0, G, (B,), dtype=torch.int32, device=DEV)
    order = torch.argsort(ids.long(), stable=True)
    counts = torch.bincount(ids.long(), minlength=G)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(B, device=DEV) - starts[ids.long()[order]]
    got = _group_layout(ids, G)
    for name, a, b in zip(("counts", "starts", "order", "rank"), got, (counts, starts, order, rank)):
        assert a.dtype == torch.int32 and torch.equal(a.long(), b), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_multi_prompt_paged_mha(dtype):
    ids = [1, 1, 0, 1, 0]
    own = [12, 0, 40, 3, 17]
    q, k, v, lens, bt = make_inputs(len(ids), 4, 4, 64, own, dtype, page_size=16)
    pk, pv, _ = make_prefix(2, 30, 4, 64, dtype)
    check(q, pk, pv, k, v, lens, bt, ids=ids_tensor(ids))


def test_multi_prompt_default_lengths_and_max_group_size():
    ids = [0, 1, 1]
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [4, 9, 0])
    pk, pv, _ = make_prefix(2, 22, 2, 64)
    check(q, pk, pv, k, v, lens, ids=ids_tensor(ids))
    # an upper bound larger than needed (as when capturing a graph) gives the same answer
    out = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, prefix_ids=ids_tensor(ids), max_group_size=3)
    ref = reference.bifurcated_decode(q, pk, pv, k, v, lens, prefix_ids=ids_tensor(ids))[0]
    assert_rel_close("max_group_size", out, ref, TOLERANCE[q.dtype])


@pytest.mark.parametrize("num_programs", [1, 3, 7, 40])
@pytest.mark.parametrize("block_h", [16, 32])
def test_head_blocks_and_teams(block_h, num_programs):
    # 10 samples x group 4 = 40 prefix rows: 3 (block 16) or 2 (block 32) head blocks per kv head,
    # so the prefix phase runs in teams; the smaller prompt leaves some members idle
    ids = [0] * 7 + [1] * 3
    own = [3, 0, 17, 33, 1, 16, 9, 0, 25, 2]
    q, k, v, lens, _ = make_inputs(len(ids), 8, 2, 64, own)
    pk, pv, plens = make_prefix(2, 50, 2, 64, plens=[50, 19])
    check(q, pk, pv, k, v, lens, plens=plens, ids=ids_tensor(ids), op_args=(0, num_programs, block_h, 0),
          name=f"block_h={block_h} grid={num_programs}")


@pytest.mark.parametrize("num_programs", [2, 6])
def test_team_and_independent_prompts(num_programs):
    # one prompt of 9 samples (18 rows: two 16-row head blocks, team list), prompts of 1 and 2
    # samples (independent list) and an unused prompt, with paged own caches
    ids = [0] * 9 + [1] + [2] * 2
    ids = [ids[i] for i in torch.randperm(len(ids)).tolist()]
    own = torch.randint(0, 40, (len(ids),)).tolist()
    q, k, v, lens, bt = make_inputs(len(ids), 4, 2, 64, own, capacity=40, page_size=16)
    pk, pv, plens = make_prefix(4, 45, 2, 64, plens=[45, 30, 0, 12])
    check(q, pk, pv, k, v, lens, bt, plens=plens, ids=ids_tensor(ids), op_args=(0, num_programs, 16, 0),
          name=f"ids={ids}")


def test_head_blocks_single_prefix_paged():
    own = [0, 18, 7, 40, 1, 33]
    q, k, v, lens, bt = make_inputs(len(own), 4, 4, 64, own, page_size=16)
    pk, pv, _ = make_prefix(None, 70, 4, 64)
    check(q, pk, pv, k, v, lens, bt, op_args=(0, 5, 16, 0))


@pytest.mark.parametrize("block_n", [16, 32])
def test_block_n(block_n):
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [40, 0, 70])
    pk, pv, _ = make_prefix(None, 45, 2, 64)
    check(q, pk, pv, k, v, lens, op_args=(0, 3, 0, block_n))


def test_same_shapes_new_values():
    # launch plans are cached by shape: new lengths, ids and data must still be used
    for _ in range(3):
        ids = torch.randint(0, 3, (6,)).tolist()
        own = torch.randint(0, 40, (6,)).tolist()
        plens = torch.randint(0, 33, (3,)).tolist()
        q, k, v, lens, bt = make_inputs(6, 8, 2, 64, own, capacity=40, page_size=16)
        pk, pv, pl = make_prefix(3, 32, 2, 64, plens=plens)
        check(q, pk, pv, k, v, lens, bt, plens=pl, ids=ids_tensor(ids), name=f"ids={ids} own={own} plens={plens}")


def test_deterministic():
    ids = [0, 1, 0, 0, 1]
    q, k, v, lens, _ = make_inputs(5, 8, 2, 64, [30, 0, 12, 47, 5])
    pk, pv, plens = make_prefix(2, 60, 2, 64, plens=[60, 21])
    args = (q, pk, pv, k, v, lens, None, plens, ids_tensor(ids), 0.125, 0, 3, 16, 0)
    a = torch.ops.leanattn.bifurcated_decode(*args)
    b = torch.ops.leanattn.bifurcated_decode(*args)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_broadcast_query():
    q, k, v, lens, _ = make_inputs(1, 8, 2, 64, [10])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    k4, v4 = (torch.randn(4, 16, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    check(q.expand(4, -1, -1), pk, pv, k4, v4, torch.tensor([16, 3, 0, 9], dtype=torch.int32, device=DEV))


# ------------------------------------------------------------------------------------------------
# cascade
# ------------------------------------------------------------------------------------------------
def check_cascade(q, levels, k=None, v=None, lens=None, bt=None, name="cascade", **kw):
    out, lse = leanattn.cascade_decode(q, levels, k, v, lens, bt, return_lse=True, **kw)
    ref_out, ref_lse = reference.cascade_decode(q, levels, k, v, lens, bt)
    tol = TOLERANCE[q.dtype]
    assert out.shape == q.shape and lse.shape == q.shape[:2]
    assert_rel_close(name, out, ref_out, tol)
    assert_lse_close(name, lse, ref_lse, atol=tol)
    return out, lse


def test_cascade_three_levels():
    # system prompt for all 6 samples, one of 3 documents per group, each sample's own tokens (paged)
    ids = [0, 0, 1, 2, 2, 2]
    own = [4, 0, 20, 16, 1, 33]
    q, k, v, lens, bt = make_inputs(6, 8, 2, 64, own, page_size=16)
    sk, sv, _ = make_prefix(None, 21, 2, 64)
    dk, dv, dlens = make_prefix(3, 30, 2, 64, plens=[30, 0, 11])
    check_cascade(q, [(sk, sv), (dk, dv, dlens, ids_tensor(ids))], k, v, lens, bt)


def test_no_own_cache():
    # k_cache = v_cache = None: attention over the prefix alone, as cascade_decode's outer levels
    q, _, _, _, _ = make_inputs(3, 4, 2, 64, [1, 1, 1])
    pk, pv, plens = make_prefix(2, 20, 2, 64, plens=[20, 0])
    ids = ids_tensor([1, 0, 0])
    out, lse = leanattn.bifurcated_decode(q, pk, pv, None, None, prefix_lens=plens, prefix_ids=ids, return_lse=True)
    ref, ref_lse = reference.bifurcated_decode(q, pk, pv, None, None, prefix_lens=plens, prefix_ids=ids)
    assert_rel_close("no own cache", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("no own cache", lse, ref_lse, atol=TOLERANCE[q.dtype])
    assert torch.all(out[0] == 0) and torch.all(lse[0] == float("-inf"))  # prompt 1 is empty


def test_cascade_max_group_size():
    # a bound on the samples per segment at every level: no host count of the groups
    ids = [0, 0, 1, 2, 2, 2]
    q, k, v, lens, _ = make_inputs(6, 8, 2, 64, [4, 0, 20, 16, 1, 33])
    sk, sv, _ = make_prefix(None, 21, 2, 64)
    dk, dv, dlens = make_prefix(3, 30, 2, 64, plens=[30, 0, 11])
    check_cascade(q, [(sk, sv), (dk, dv, dlens, ids_tensor(ids))], k, v, lens, max_group_size=np.int64(3),
                  name="bound 3")
    check_cascade(q, [(dk, dv, dlens, ids_tensor(ids)), (dk, dv, None, ids_tensor(ids[::-1]))], k, v, lens,
                  max_group_size=6, name="two grouped levels, bound 6")


def test_cascade_levels_only_and_own_only():
    ids = [1, 0, 1]
    q, k, v, lens, _ = make_inputs(3, 4, 4, 64, [9, 0, 17])
    sk, sv, _ = make_prefix(None, 19, 4, 64)
    dk, dv, _ = make_prefix(2, 12, 4, 64)
    check_cascade(q, [(sk, sv), (dk, dv, None, ids_tensor(ids))], name="no own tokens")
    check_cascade(q, [(sk, sv)], name="one level")
    check_cascade(q, [], k, v, lens, name="own tokens only")
    check_cascade(q, [(sk, sv), (dk, dv, None, ids_tensor(ids)), (sk, sv)], k, v, lens, name="four levels")


# ------------------------------------------------------------------------------------------------
# torch.compile, opcheck
# ------------------------------------------------------------------------------------------------
def test_opcheck():
    ids = ids_tensor([1, 0, 1])
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    pk, pv, plens = make_prefix(2, 20, 2, 64, plens=[20, 7])
    op = torch.ops.leanattn.bifurcated_decode.default
    torch.library.opcheck(op, (q, pk, pv, k, v, lens, bt, plens, ids, 0.125, 0, 3, 0, 0))
    torch.library.opcheck(op, (q, pk[0], pv[0], k, v, None, bt, None, None, 0.125, 0, 0, 16, 0))
    torch.library.opcheck(op, (q, pk, pv, None, None, None, None, plens, ids, 0.125, 0, 0, 0, 0))
    # each prompt's keys from a first one on (a window's tail read where it lies: ops/bifurcated_window.py)
    starts = torch.tensor([5, 2], dtype=torch.int32, device=DEV)
    torch.library.opcheck(op, (q, pk, pv, None, None, None, None, plens, ids, 0.125, 0, 0, 0, 0, 0.0, 1.0, 1.0,
                               starts, 15))
    # the prompts as pages of the own cache's pool (prefix_block_table)
    ptab = bt[:2, :2].flip(0).contiguous()
    torch.library.opcheck(op, (q, k, v, k, v, lens, bt, plens, ids, 0.125, 0, 0, 0, 0, 0.0, 1.0, 1.0, None, 0, ptab))


def test_compile_fullgraph():
    ids = ids_tensor([1, 0, 1])
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    pk, pv, plens = make_prefix(2, 20, 2, 64, plens=[20, 7])
    torch._dynamo.reset()
    compiled = torch.compile(leanattn.bifurcated_decode, fullgraph=True)
    out, lse = compiled(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True)
    ref_out, ref_lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    # new lengths and ids, same shapes
    lens2, ids2 = torch.tensor([3, 48, 0], dtype=torch.int32, device=DEV), ids_tensor([0, 0, 0])
    out = compiled(q, pk, pv, k, v, lens2, bt, plens, ids2)
    assert_rel_close("compiled", out, reference.bifurcated_decode(q, pk, pv, k, v, lens2, bt, plens, ids2)[0],
                      TOLERANCE[q.dtype])
    casc = torch.compile(leanattn.cascade_decode, fullgraph=True)
    levels = [(pk[0], pv[0]), (pk, pv, plens, ids)]
    out = casc(q, levels, k, v, lens, bt)
    assert_rel_close("compiled cascade", out, reference.cascade_decode(q, levels, k, v, lens, bt)[0],
                     TOLERANCE[q.dtype])


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def base():
    q = torch.randn(3, 4, 64, dtype=torch.float16)
    k = torch.randn(3, 16, 2, 64, dtype=torch.float16)
    pk = torch.randn(2, 20, 2, 64, dtype=torch.float16)
    return dict(q=q, prefix_k=pk, prefix_v=torch.randn_like(pk), k_cache=k, v_cache=torch.randn_like(k),
                cache_seqlens=torch.tensor([3, 0, 16], dtype=torch.int32),
                prefix_lens=torch.tensor([20, 5], dtype=torch.int32),
                prefix_ids=torch.tensor([1, 0, 1], dtype=torch.int32))


def half(*shape):
    return torch.randn(shape, dtype=torch.float16)


def i32(*vals):
    return torch.tensor(vals, dtype=torch.int32)


BAD = [
    ("prefix rank 2", dict(prefix_k=half(20, 128), prefix_v=half(20, 128)), ValueError, "prefix_k"),
    ("prefix rank 5", dict(prefix_k=half(1, 2, 20, 2, 64), prefix_v=half(1, 2, 20, 2, 64)), ValueError, "prefix_k"),
    ("prefix not a tensor", dict(prefix_k=[1.0]), TypeError, "prefix_k"),
    ("q not a tensor, with sinks", dict(q=[1.0], sinks=torch.zeros(4)), TypeError, "q"),
    ("prefix_v shape", dict(prefix_v=half(2, 19, 2, 64)), ValueError, "prefix_v"),
    ("prefix dtype", dict(prefix_k=torch.randn(2, 20, 2, 64)), TypeError, "prefix_k"),
    ("prefix_v dtype", dict(prefix_v=torch.randn(2, 20, 2, 64, dtype=torch.bfloat16)), TypeError, "prefix_v"),
    ("prefix device", dict(prefix_k=half(2, 20, 2, 64).to("meta")), ValueError, "prefix_k"),
    ("prefix head dim", dict(prefix_k=half(2, 20, 2, 128), prefix_v=half(2, 20, 2, 128)), ValueError, "prefix_k"),
    ("prefix kv heads vs q", dict(prefix_k=half(2, 20, 3, 64), prefix_v=half(2, 20, 3, 64)), ValueError, "q"),
    ("prefix kv heads vs cache", dict(prefix_k=half(2, 20, 4, 64), prefix_v=half(2, 20, 4, 64)), ValueError,
     "prefix_k"),
    ("prefix no unit stride", dict(prefix_k=half(2, 20, 2, 128)[..., ::2], prefix_v=half(2, 20, 2, 128)[..., ::2]),
     ValueError, "prefix_k"),
    ("no prompts", dict(prefix_k=half(0, 20, 2, 64), prefix_v=half(0, 20, 2, 64), prefix_lens=i32()), ValueError,
     "prefix_k"),
    ("ids missing", dict(prefix_ids=None), ValueError, "prefix_ids"),
    ("ids int64", dict(prefix_ids=torch.tensor([1, 0, 1])), TypeError, "prefix_ids"),
    ("ids shape", dict(prefix_ids=i32(0, 1)), ValueError, "prefix_ids"),
    ("ids out of range", dict(prefix_ids=i32(0, 2, 1)), ValueError, "prefix_ids"),
    ("ids negative", dict(prefix_ids=i32(0, -1, 1)), ValueError, "prefix_ids"),
    ("ids device", dict(prefix_ids=i32(0, 1, 1).to("meta")), ValueError, "prefix_ids"),
    ("lens shape", dict(prefix_lens=i32(20, 5, 5)), ValueError, "prefix_lens"),
    ("lens float", dict(prefix_lens=torch.tensor([20.0, 5.0])), TypeError, "prefix_lens"),
    ("lens too long", dict(prefix_lens=i32(21, 5)), ValueError, "prefix_lens"),
    ("lens negative", dict(prefix_lens=i32(-1, 5)), ValueError, "prefix_lens"),
    ("own cache batch", dict(k_cache=half(2, 16, 2, 64), v_cache=half(2, 16, 2, 64)), ValueError, "k_cache"),
    # float8 own caches beside a 16-bit prefix (tests/test_bifurcated_fp8.py: both float8)
    ("own cache float8", dict(k_cache=half(3, 16, 2, 64).to(torch.float8_e4m3fn),
                              v_cache=half(3, 16, 2, 64).to(torch.float8_e4m3fn)), TypeError, "prefix_k"),
    ("prefix float8", dict(prefix_k=half(2, 20, 2, 64).to(torch.float8_e4m3fn),
                           prefix_v=half(2, 20, 2, 64).to(torch.float8_e4m3fn)), TypeError, "prefix_k"),
    ("own length beyond capacity", dict(cache_seqlens=i32(3, 0, 17)), ValueError, "cache_seqlens"),
    ("q rank", dict(q=half(3, 256)), ValueError, "q"),
    ("max_group_size too small", dict(max_group_size=1), ValueError, "max_group_size"),
    ("max_group_size negative", dict(max_group_size=-1), ValueError, "max_group_size"),
    ("max_group_size float", dict(max_group_size=2.0), TypeError, "max_group_size"),
    ("return_lse not a bool", dict(return_lse=1), TypeError, "return_lse"),
    ("scale type", dict(softmax_scale="0.1"), TypeError, "softmax_scale"),
    ("k without v", dict(v_cache=None), ValueError, "v_cache"),
    ("v without k", dict(k_cache=None), ValueError, "k_cache"),
    ("prefix without kv heads", dict(prefix_k=half(2, 20, 0, 64), prefix_v=half(2, 20, 0, 64)), ValueError,
     "prefix_k"),
    ("lengths without own cache", dict(k_cache=None, v_cache=None), ValueError, "cache_seqlens"),
    ("q rank, no own cache", dict(q=half(3, 256), k_cache=None, v_cache=None, cache_seqlens=None), ValueError, "q"),
]


@pytest.mark.parametrize("changes,error,arg", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_inputs(changes, error, arg):
    kw = base()
    kw.update(changes)
    with pytest.raises(error, match=rf"^{re.escape(arg)}: expected"):
        leanattn.bifurcated_decode(**kw)


CASCADE_BAD = [
    ("levels not a list", lambda kw: dict(levels="abc"), TypeError, "levels"),
    ("level not a tuple", lambda kw: dict(levels=[kw["prefix_k"]]), ValueError, "levels[0]"),
    ("level of 3", lambda kw: dict(levels=[(kw["prefix_k"], kw["prefix_v"], None)]), ValueError, "levels[0]"),
    ("level ids missing", lambda kw: dict(levels=[(kw["prefix_k"], kw["prefix_v"])]), ValueError, "levels[0]_ids"),
    ("level kv heads", lambda kw: dict(levels=[(half(20, 4, 64), half(20, 4, 64))]), ValueError, "levels[0]"),
    ("q not a tensor", lambda kw: dict(q=None, levels=[]), TypeError, "q"),
    ("levels' kv heads differ", lambda kw: dict(levels=[(half(20, 2, 64), half(20, 2, 64)), (half(9, 1, 64),
                                                 half(9, 1, 64))], k_cache=None, v_cache=None, cache_seqlens=None),
     ValueError, "levels[1]"),
    ("nothing", lambda kw: dict(levels=[], k_cache=None, v_cache=None, cache_seqlens=None), ValueError, "levels"),
    ("k without v", lambda kw: dict(levels=[], v_cache=None), ValueError, "v_cache"),
    ("scale type", lambda kw: dict(levels=[], softmax_scale=True), TypeError, "softmax_scale"),
    ("group bound too small", lambda kw: dict(levels=[(kw["prefix_k"], kw["prefix_v"], None, kw["prefix_ids"])],
                                              max_group_size=1), ValueError, "max_group_size"),
    ("group bound negative", lambda kw: dict(levels=[(kw["prefix_k"], kw["prefix_v"], None, kw["prefix_ids"])],
                                             max_group_size=-1), ValueError, "max_group_size"),
    ("group bound, no levels", lambda kw: dict(levels=[], max_group_size="x"), TypeError, "max_group_size"),
    ("return_lse not a bool", lambda kw: dict(levels=[], return_lse="no"), TypeError, "return_lse"),
    ("lengths without own cache", lambda kw: dict(levels=[(kw["prefix_k"][0], kw["prefix_v"][0])], k_cache=None,
                                                  v_cache=None), ValueError, "cache_seqlens"),
]


@pytest.mark.parametrize("make,error,arg", [c[1:] for c in CASCADE_BAD], ids=[c[0] for c in CASCADE_BAD])
def test_cascade_bad_inputs(make, error, arg):
    kw = base()
    call = dict(q=kw["q"], k_cache=kw["k_cache"], v_cache=kw["v_cache"], cache_seqlens=kw["cache_seqlens"])
    call.update(make(kw))
    with pytest.raises(error, match=rf"^{re.escape(arg)}: expected"):
        leanattn.cascade_decode(**call)


# ------------------------------------------------------------------------------------------------
# the benchmark script runs (CPU smoke: interpreter-sized shapes, no timing value)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke run; the GPU runs the real benchmark")
def test_benchmark_tiny_smoke(tmp_path):
    from leanattn import cli
    main = cli._load_benchmark("bifurcated")
    assert main is not None
    assert main(["--tiny", "--cases", "gqa 8k x4,gqa 8k x1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bifurcated_cpu_tiny.json").is_file() and (tmp_path / "bifurcated_cpu_tiny.md").is_file()
    # one sample: ours and decode over copies timed again alternately, and over fresh placements of the inputs
    rows = {r["case"]: r for r in json.loads((tmp_path / "bifurcated_cpu_tiny.json").read_text())["rows"]}
    assert "x1_error" not in rows["gqa 8k x1"] and len(rows["gqa 8k x1"]["x1_placements"]["ratios"]) == 3
    assert "x1_interleaved" in rows["gqa 8k x1"] and "x1_interleaved" not in rows["gqa 8k x4"]


ENV_CFGS = ["16,0,0,0,0", "16,0,0,0,0,2", "0,0,0,0,0,2", "0,0,0,0,0,3", "16,0,0,0,0,3", "0,0,0,0,0,1",
            "16,0,0,0,0,0,0,0,0,2", "0,0,0,0,0,2,0,0,0,2", "0,0,0,0,0,3,0,0,0,1",
            "0,0,0,0,0,0,0,0,0,1,3,1", "16,0,0,0,0,0,0,0,0,1,5,2", "16,0,0,0,0,0,0,1,2,2", "0,0,0,0,0,0,0,2,1,2",
            "0,0,0,0,0,0,0,4,0,2", "16,0,0,0,0,0,0,0,2,0,3,0,2", "16,0,0,0,0,2,0,0,0,0,2,0,1"]


@pytest.mark.parametrize("load", [4, -1])
def test_env_load_field_error(monkeypatch, load):
    from leanattn.ops.bifurcated_launch import env_config
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", f"0,0,0,0,0,{load}")
    with pytest.raises(ValueError, match="LEANATTN_BIFURCATED_CONFIG: expected the load field"):
        env_config()


@pytest.mark.parametrize("raw", ["16,x", "16,,0", "0," * 13 + "0"])
def test_env_config_format_error(monkeypatch, raw):
    # a field that is not an integer, or more fields than the knob has, names the knob and its fields
    from leanattn.ops.bifurcated_launch import env_config
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", raw)
    with pytest.raises(ValueError, match="LEANATTN_BIFURCATED_CONFIG: expected up to 13 comma-separated integers"):
        env_config()


@pytest.mark.parametrize("cfg", ENV_CFGS)
def test_env_launch_override(monkeypatch, cfg):
    # the benchmark sweep's knob: a 16-row cap forces head blocks (and teams on the fused path); the
    # sixth field picks the load path of contiguous caches (1 pointers, 2 block pointers, 3 TMA); the
    # tenth picks the path (1 split, 2 fused, else states), the eleventh the prefix splits, the twelfth
    # the split path's states per merge load, the thirteenth the states path's own splits; the eighth
    # the fused path's list order; the ninth (2) the states path's in-kernel merge
    from leanattn.ops import bifurcated as bif
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", cfg)
    fields = [int(x) for x in cfg.split(",")] + [0] * 12
    q, k, v, lens, _ = make_inputs(6, 8, 2, 64, [3, 0, 20, 9, 16, 1])
    pk, pv, plens = make_prefix(2, 40, 2, 64, plens=[40, 13])
    ids = ids_tensor([0, 1, 1, 0, 1, 1])
    check(q, pk, pv, k, v, lens, plens=plens, ids=ids)
    check(q, pk[0], pv[0], k, v, lens, name="single")
    q1, k1, v1, lens1, bt1 = make_inputs(2, 8, 2, 64, [19, 0], page_size=16)
    check(q1, pk, pv, k1, v1, lens1, bt1, plens=plens, ids=ids_tensor([1, 0]), name="one per prompt, paged")
    k2, v2 = (torch.randn(2, 19, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    check(q1, pk, pv, k2, v2, lens1, plens=plens, ids=ids_tensor([1, 0]), name="one per prompt, contiguous")
    from leanattn.runtime import EnvReader
    # the plan key ends with the knob's value as os.environ stores it (runtime.EnvReader)
    plans = [p for key, p in bif._PLANS.items() if key[-1] == EnvReader.value(cfg)]
    assert [p.path for p in plans[-2:]] == ["concat", "concat"]
    plan = [p for p in plans if not p.concat][-1]
    assert plan.path == {1: "split", 2: "fused"}.get(fields[9], "states")
    assert plan.common["LOAD"] == max(fields[5] - 1, 0)
    if cfg.startswith("16,"):
        assert plan.info["BLOCK_HP"] == 16
    if fields[10]:
        assert plan.splits <= fields[10]
    if plan.path == "split":
        assert plan.info["SB"] == (fields[11] or plan.info["SB"])
    if plan.path == "states":
        assert plan.merge_in_kernel == (fields[8] == 2)
        if fields[12]:
            assert plan.info["own_splits"] <= fields[12]


@pytest.mark.parametrize("splits,sb", [(1, 4), (3, 2), (7, 4), (9, 1)])
def test_split_path_states(monkeypatch, splits, sb):
    # the split path's prefix states: several splits merged per load (a partial last load), head
    # blocks of 16 rows (10 samples x group 4 = 40 rows: 3 blocks), prompts of unequal size in
    # shuffled order (the own pass finds a sample's rows by its rank in the prompt), unequal prefix
    # lengths (empty trailing splits), an unused prompt and paged own caches
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", f"16,0,0,0,0,0,0,0,0,1,{splits},{sb}")
    ids = [0] * 10 + [2] * 3 + [1]
    ids = [ids[i] for i in torch.randperm(len(ids)).tolist()]
    own = torch.randint(0, 40, (len(ids),)).tolist()
    q, k, v, lens, bt = make_inputs(len(ids), 8, 2, 64, own, capacity=40, page_size=16)
    pk, pv, plens = make_prefix(4, 150, 2, 64, plens=[150, 9, 70, 0])
    check(q, pk, pv, k, v, lens, bt, plens=plens, ids=ids_tensor(ids), name=f"ids={ids}")
    check(q, pk[0], pv[0], k, v, lens, bt, name="single prefix")
    # without own tokens (a cascade level): the own launch only merges the prefix states
    out, lse = torch.ops.leanattn.bifurcated_decode(q, pk, pv, None, None, None, None, plens, ids_tensor(ids),
                                                    0.125, 0, 0, 0, 0)
    ref, ref_lse = reference.cascade_decode(q, [(pk, pv, plens, ids_tensor(ids))], softmax_scale=0.125)
    assert_rel_close("prefix only", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("prefix only", lse, ref_lse, atol=TOLERANCE[q.dtype])


@pytest.mark.parametrize("path", ["split", "fused", "states", "states-split", "states-in-kernel"])
def test_paths_agree_with_reference(monkeypatch, path):
    # the same multi-prompt, head-block, paged case through every path of the many-samples launch
    # (the states path also with 3 prefix splits and 2 own splits, and with the in-kernel merge)
    # ninth field: merge (2 in-kernel); tenth: path; then prefix splits, sb, own splits
    field = {"split": "0,1", "fused": "0,2", "states": "0,3", "states-split": "0,3,3,0,2", "states-in-kernel": "2,3"}[path]
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", f"16,0,0,0,0,0,0,0,{field}")
    ids = [0] * 9 + [1] + [2] * 2
    own = torch.randint(0, 40, (len(ids),)).tolist()
    q, k, v, lens, bt = make_inputs(len(ids), 4, 2, 64, own, capacity=40, page_size=16)
    pk, pv, plens = make_prefix(4, 45, 2, 64, plens=[45, 30, 0, 12])
    from leanattn.ops import bifurcated as bif
    for grid in (2, 6):
        check(q, pk, pv, k, v, lens, bt, plens=plens, ids=ids_tensor(ids), op_args=(0, grid, 16, 0),
              name=f"{path} grid={grid}")
        plan = next(reversed(bif._PLANS.values()))
        if plan.path == "states":  # an in-kernel merge leaves its arrival counts at zero for the next call
            assert not plan.states[2].any()


def test_one_sample_takes_the_concat_path():
    # one sample per prompt: the decode-style kernel over prefix + own (never the two-pass launch),
    # with the prefix cut at a tile boundary and not, and rows cut into pieces by small grids
    from leanattn.ops import bifurcated as bif
    for P, own, grid in ((48, [5], 0), (37, [33], 3), (16, [0], 2)):
        q, k, v, lens, _ = make_inputs(1, 8, 2, 64, own)
        pk, pv, _ = make_prefix(None, P, 2, 64)
        check(q, pk, pv, k, v, lens, op_args=(0, grid, 0, 0), name=f"P={P} own={own} grid={grid}")
        assert next(reversed(bif._PLANS.values())).path == "concat"


@pytest.mark.parametrize("same", [True, False], ids=["offsets", "row-addresses"])
def test_one_sample_tile_addressing(monkeypatch, same):
    # tiles as a base address plus offsets fixed for the piece where the prefix and the own cache share their
    # token strides (SAME_STRIDE), else a 64-bit address per row; an own cache laid out (B, H, N, D) shares none
    from leanattn.ops import bifurcated as bif, bifurcated_launch as bl
    monkeypatch.setattr(bl, "CONCAT_SAME_STRIDE", same)
    bif._PLANS.clear()
    try:
        for layout in ("nhd", "hnd"):
            q, k, v, lens, _ = make_inputs(1, 8, 2, 64, [33], layout=layout)
            pk, pv, _ = make_prefix(None, 37, 2, 64)
            check(q, pk, pv, k, v, lens, op_args=(0, 3, 0, 0), name=layout)
            plan = next(reversed(bif._PLANS.values()))
            assert plan.path == "concat" and plan.meta["SAME_STRIDE"] == (same and layout == "nhd")
    finally:
        bif._PLANS.clear()


def test_one_sample_empty_prefix_or_own_cache():
    # one sample whose prefix or own cache is empty: the plan puts a one-token dummy in its place, which shares the
    # token strides of a contiguous cache, so the tiles still take the piece-offset form (SAME_STRIDE)
    from leanattn.ops import bifurcated as bif
    q, k, v, lens, _ = make_inputs(1, 8, 2, 64, [29])
    pk, pv, _ = make_prefix(None, 0, 2, 64)
    out, _ = check(q, pk, pv, k, v, lens, op_args=(0, 3, 0, 0), name="P=0")
    assert_rel_close("P=0 = decode", out, leanattn.decode(q, k, v, lens), TOLERANCE[q.dtype])
    plan = next(reversed(bif._PLANS.values()))
    assert plan.path == "concat" and plan.meta["SAME_STRIDE"]
    q, k, v, _, _ = make_inputs(1, 8, 2, 64, None, capacity=0)
    pk, pv, _ = make_prefix(None, 41, 2, 64)
    check(q, pk, pv, k, v, op_args=(0, 3, 0, 0), name="capacity 0")
    plan = next(reversed(bif._PLANS.values()))
    assert plan.path == "concat" and plan.meta["SAME_STRIDE"]


@pytest.mark.parametrize("plen", [23, 0, 50])
@pytest.mark.parametrize("page_size", [0, 8, 32])
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)], ids=["gqa", "mha"])
def test_one_sample_one_prefix_with_length(plen, page_size, heads):
    # one prefix without prompt ids but with its length given (the one-sample kernel reads the length
    # once, as a scalar), own cache contiguous or paged (pages smaller than a tile and a multiple of
    # it: MHA addresses a tile inside one page from its base), rows cut into pieces around the boundary
    from leanattn.ops import bifurcated as bif
    hq, hkv = heads
    q, k, v, lens, bt = make_inputs(1, hq, hkv, 64, [19], page_size=page_size or None)
    pk, pv, _ = make_prefix(None, 50, hkv, 64)
    plens = torch.tensor([plen], dtype=torch.int32, device=DEV)
    for grid in (0, 3):
        check(q, pk, pv, k, v, lens, bt, plens=plens, op_args=(0, grid, 0, 0), name=f"plen={plen} grid={grid}")
        assert next(reversed(bif._PLANS.values())).path == "concat"


@pytest.mark.parametrize("path", ["1", "2", "3"])
def test_plan_arguments_match_the_kernels(monkeypatch, path):
    # every keyword a plan passes is a parameter of the kernel it launches (the interpreter ignores
    # unknown keywords; a compiled launch or warmup() rejects them)
    from leanattn.ops import bifurcated as bif
    from leanattn import runtime
    from leanattn.ops import bifurcated_launch as launch
    from leanattn.kernels.merge import merge_states_kernel
    monkeypatch.setenv("LEANATTN_BIFURCATED_CONFIG", f"0,0,0,0,0,0,0,0,0,{path}")  # 1 split, 2 fused, 3 states
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")  # one sample on the persistent kernel, whose grid is sized
    checked = []

    def kernel_occupancy(kernel, args, meta, device, info=None, prefix=""):
        # the warmup() call a GPU makes to size the grid binds these arguments
        params = [a for a in kernel.arg_names if a not in meta]
        assert len(args) == len(params), f"{kernel.__name__}: {len(args)} positional arguments for {params}"
        assert not set(meta) - set(kernel.arg_names) - {"num_warps", "num_stages"}
        checked.append(kernel.__name__)
        return 1
    monkeypatch.setattr(runtime, "kernel_occupancy", kernel_occupancy)
    bif._PLANS.clear()
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [3, 0, 20], page_size=16)
    pk, pv, plens = make_prefix(2, 40, 2, 64, plens=[40, 13])
    for args in ((None, None), (plens, ids_tensor([0, 1, 1])), (plens, ids_tensor([0, 1, 0]))):
        leanattn.bifurcated_decode(q, pk if args[1] is not None else pk[0], pv if args[1] is not None else pv[0],
                                   k, v, lens, bt, *args)
    leanattn.bifurcated_decode(q[:1], pk[0], pv[0], k[:1], v[:1], lens[:1])
    kernels = {"concat": [(launch.concat_decode_kernel, "meta")],
               "split": [(launch.prefix_states_kernel, "meta_p"), (launch.own_merge_kernel, "meta")],
               "fused": [(launch.bifurcated_decode_kernel, "meta")],
               "states": [(launch.bifurcated_states_kernel, "meta"), (merge_states_kernel, "launch_merge.meta")]}
    seen = set()
    for plan in bif._PLANS.values():
        seen.add(plan.path)
        for kernel, attr in kernels[plan.path]:
            unknown = set(operator.attrgetter(attr)(plan)) - set(kernel.arg_names) - {"num_warps", "num_stages"}
            assert not unknown, f"{plan.path}: {kernel.__name__} has no parameters {unknown}"
    assert {"concat", {"1": "split", "2": "fused", "3": "states"}[path]} <= seen
    assert "concat_decode_kernel" in checked
    expected = {"1": {"prefix_states_kernel", "own_merge_kernel"}, "2": {"bifurcated_decode_kernel"},
                "3": {"bifurcated_states_kernel"}}[path]
    assert expected <= set(checked)


@pytest.mark.parametrize("columns,prefix_len,own_tokens,workers,splits", [
    (32, 8192, 0, 264, 8),            # prefix alone: one wave (cdiv would give 9, 288 programs)
    (128, 16384, 0, 132, 1),          # MHA x256 prefix alone: 128 programs on 132 slots, not 256
    (32, 8192, 64 * 8 * 256, 264, 6),  # GQA 8k x64 with own tokens: the measured default
    (8, 8192, 16 * 8 * 256, 264, 22),  # GQA 8k x16
    (300, 8192, 0, 264, 1),           # more columns than slots
    (4, 0, 100, 264, 1),              # empty prefix
])
def test_states_prefix_splits(columns, prefix_len, own_tokens, workers, splits):
    from leanattn.ops.bifurcated_launch import states_prefix_splits
    assert states_prefix_splits(columns, prefix_len, own_tokens, workers) == splits


def test_overlap_path_split_counts_and_cpu_fallback():
    # the Gluon overlap path never runs on the CPU (no interpreter for Gluon); its split rule: one
    # prefix program per SM when the own tokens are a large share of the work, two when the prefix dominates
    from leanattn.ops import bifurcated_overlap as ov
    q = torch.randn(4, 8, 64)
    pk = torch.randn(1, 100, 2, 64)
    assert not ov.usable(q, pk, pk, True, False)
    assert ov.preferred(256, 4) and ov.preferred(16, 1) and ov.preferred(1024, 1)
    assert not ov.preferred(128, 4) and not ov.preferred(64, 1) and not ov.preferred(16, 4) and not ov.preferred(4, 1)
    # capped calls: from 256 rows only (MHA x16 lost 1.5x on the overlap path, bifurcated probe 52)
    assert ov.preferred(256, 4, True) and ov.preferred(1024, 1, True) and not ov.preferred(16, 1, True)
    assert ov.prefix_per_sm(4, 8192, 256) == 1 and ov.prefix_per_sm(4, 32768, 256) == 2  # GQA 8k, 32k x64
    assert ov.prefix_per_sm(4, 8192, 0) == 2 and ov.prefix_per_sm(4, 8192, 256, per_sm=2) == 2  # prefix only, forced
    assert ov.prefix_stages(1, 4) == 4 and ov.prefix_stages(1, 1) == 3 and ov.prefix_stages(2, 4) == 3
    assert ov.prefix_stages(1, 4, 128) == 3 and ov.prefix_per_sm(4, 32768, 256, rows=128) == 1
    assert ov.fp8_stages(2) == 2 and ov.fp8_stages(1) == 4  # float8 rings: two programs an SM fit at two stages
    S, chunk = ov.prefix_splits(32, 128, 1, 132)   # GQA 8k x64: 32 columns, one per SM
    assert (S, chunk) == (4, 32)
    S, chunk = ov.prefix_splits(32, 512, 2, 132)   # GQA 32k x64: two per SM
    assert (S, chunk) == (8, 64)
    S, chunk = ov.prefix_splits(32, 128, 2, 132)   # prefix only: two per SM
    assert (S, chunk) == (8, 16)
    S, chunk = ov.prefix_splits(1000, 3, 1, 132)   # more columns than slots, a short prefix
    assert (S, chunk) == (1, 3)
    S, chunk = ov.prefix_splits(8, 10, 1, 132)     # splits cut so none is empty
    assert S * chunk >= 10 and (S - 1) * chunk < 10


@pytest.mark.parametrize("group,prefix_len,own,samples,d,rows,ws", [
    (4, 8192, 256, 256, 128, 128, 3),    # GQA 8k x256: r = 128, 64 tiles a program
    (4, 8192, 256, 64, 128, 64, 0),      # GQA 8k x64: 16 tiles a program at 128 rows
    (4, 12288, 256, 64, 128, 128, 3),    # GQA 12k x64: r = 192, 24 tiles
    (4, 16384, 256, 64, 128, 128, 3),    # GQA 16k x64: r = 256 (warp-specialized, 3 stages)
    (4, 16384, 256, 64, 64, 64, 0),      # the same at D=64 (not measured)
    (4, 24576, 256, 64, 128, 64, 3),     # GQA 24k x64: r = 384
    (4, 32768, 256, 256, 128, 64, 4),    # GQA 32k x256: r = 512 (warp-specialized, 4 stages)
    (4, 32768, 256, 32, 128, 64, 0),     # GQA 32k x32: 128 rows per kv head
    (1, 32768, 256, 256, 128, 128, 3),   # MHA 32k x256: r = 128
    (1, 16384, 256, 256, 128, 64, 3),    # MHA 16k x256: r = 64
    (1, 8192, 256, 256, 128, 64, 3),     # MHA 8k x256: r = 32
    (1, 4096, 256, 256, 128, 64, 0),     # MHA 4k x256: r = 16, below what was measured
    (1, 32768, 256, 16, 128, 64, 0),     # MHA 32k x16: 16 rows per kv head
    (4, 16384, 0, 64, 128, 64, 4),       # no own tokens
])
def test_overlap_prefix_rows_rule(group, prefix_len, own, samples, d, rows, ws):
    # rows: prefix_rows' choice for the plain kernel; ws: the warp-specialized kernel's stages where it is chosen
    from leanattn.ops import bifurcated_overlap as ov
    hkv = 32 // group
    assert ov.prefix_rows(group, prefix_len, own, samples * group, d, hkv, 132) == rows
    assert ov.prefix_rows(group, prefix_len, own, samples * group, d, hkv, 132, num_warps=8) == 128
    assert ov.prefix_rows(group, prefix_len, own, samples * group, d, hkv, 132, num_warps=4) == 64
    assert ov.prefix_rows(group, prefix_len, own, samples * group, d, hkv, 132, num_warps=12) == 128
    args = (group, prefix_len, own, samples * group, d, hkv, 132)
    assert ov.prefix_warp_specialized(*args) == bool(ws)
    assert ov.prefix_warp_specialized(*args, num_warps=12)
    assert not ov.prefix_warp_specialized(*args, num_warps=8) and not ov.prefix_warp_specialized(*args, num_warps=4)
    if ws:
        assert ov.ws_prefix_stages(group, prefix_len, own) == ws
    with pytest.raises(ValueError, match="num_warps field .* in \\(0, 4, 8, 12\\), got 2"):
        ov.prefix_rows(group, prefix_len, own, samples * group, d, hkv, 132, num_warps=2)


def test_gluon_prefix_refuses_empty_splits():
    # a split with no tile would wait forever on a tile never loaded (the warp-specialized kernel's consumers)
    from leanattn.ops import bifurcated_overlap as ov
    if not ov.pg.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    q = torch.randn(4, 8, 64, dtype=torch.float16)
    ov.GluonPrefix(q, 640, 2, 5, 2, 0.1)  # 10 tiles in 5 splits of 2
    for ws in (False, True):
        with pytest.raises(ValueError, match="expected 6 splits of 2 tiles to leave none empty, got 5"):
            ov.GluonPrefix(q, 640, 2, 6, 2, 0.1, warp_specialized=ws)
    # float8 prefixes take the plain kernel, whose warps convert the tiles
    ov.GluonPrefix(q, 640, 2, 5, 2, 0.1, kv_dtype=torch.float8_e4m3fn, v_scale=0.5)
    with pytest.raises(ValueError, match="expected a 16-bit prefix on the warp-specialized kernel, got "
                                         "torch.float8_e5m2"):
        ov.GluonPrefix(q, 640, 2, 5, 2, 0.1, warp_specialized=True, kv_dtype=torch.float8_e5m2)


def test_overlap_order_rule(monkeypatch):
    # the own tokens as the prefix's dependent launch up to ORDERED_MAX_PAIRS (sample, kv head) pairs (MHA x16,
    # GQA x64 and x256 of the suite), on a side stream beyond (MHA x256); ORDERED forces either
    from leanattn.ops import bifurcated_overlap as ov
    assert ov.ORDERED is None
    assert ov.ordered(16 * 32) and ov.ordered(64 * 8) and ov.ordered(256 * 8) and not ov.ordered(256 * 32)
    monkeypatch.setattr(ov, "ORDERED", False)
    assert not ov.ordered(1)
    monkeypatch.setattr(ov, "ORDERED", True)
    assert ov.ordered(10 ** 6)


def test_overlap_path_kept_off_by_num_programs(monkeypatch):
    # a caller's num_programs bounds a persistent grid, which the overlap path does not have: the states
    # path runs instead (here on the CPU, with the overlap path pretended usable)
    from leanattn.ops import bifurcated as opb
    from leanattn.ops import bifurcated_overlap as ov
    monkeypatch.setattr(ov, "usable", lambda *a: True)
    B, hq, hkv, d = 64, 4, 1, 64  # 256 query rows per kv head: the overlap path is preferred
    h = dict(dtype=torch.float16)
    q = torch.randn(B, hq, d, **h)
    pk, pv = torch.randn(8, hkv, d, **h), torch.randn(8, hkv, d, **h)
    k, v = torch.randn(B, 2, hkv, d, **h), torch.randn(B, 2, hkv, d, **h)
    sl = torch.randint(0, 3, (B,), dtype=torch.int32)
    opb._PLANS.clear()
    out = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, num_programs=5)
    assert next(reversed(opb._PLANS.values())).path == "states"
    ref, _ = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl)
    assert_rel_close("num_programs", out, ref, TOLERANCE[torch.float16])
    with pytest.raises(Exception):  # the Gluon launch needs a GPU
        leanattn.bifurcated_decode(q, pk, pv, k, v, sl)
    assert next(reversed(opb._PLANS.values())).path == "overlap"
    opb._PLANS.clear()
