"""``tree_decode`` / ``ring_decode`` with several query tokens a sequence, on CPU (interpreter, gloo).

Causal steps of a growing :class:`ShardedKVCache` (the drafts of speculative decoding: their keys appended, then
verified in one call) against the float64 reference over the whole cache; per-token shard lengths of any valid
form against a per-token reference; the errors. The benchmark's verification step is smoke-run in test_tree.py, in
the same run as its one-token step (a run starts three interpreters).
"""
from __future__ import annotations

import pytest
import torch

from leanattn import reference
from leanattn.distributed import Placement, ShardedKVCache, ring_decode, shard_cache, spawn, tree_decode
from leanattn.distributed.shard_states import shard_states
from leanattn.merges import merge_states
from leanattn.testing import assert_states_match
from test_decode import make_inputs
import interpreter_patch_once

interpreter_patch_once.install()  # (the spawned ranks import this module, not conftest.py)

METHODS = ("allgather", "allreduce3", "ring")


# ------------------------------------------------------------------------------------------------
# a growing cache verified a few tokens at a time


def _draft_steps(rank, world, configs):
    """Per config: a ragged prompt, then drafts of 3 and 4 tokens (causal) and one non-causal 2-token call."""
    B, Hq, Hkv, D, cap = 3, 4, 2, 64, 96
    records = []
    for placement, paged, P in configs:
        g = torch.Generator().manual_seed(11)  # the same tokens on every rank
        cache = ShardedKVCache(B, Hkv, D, cap, placement=placement, page_size=P, paged=paged, dtype=torch.float16)
        full_k = torch.zeros(B, cap, Hkv, D, dtype=torch.float16)
        full_v = torch.zeros_like(full_k)
        counts = torch.tensor([41, 2, 0])  # sequence 1 holds fewer tokens than the first draft's query slots
        k0, v0 = (torch.randn(B, 41, Hkv, D, generator=g).half() for _ in range(2))
        cache.append(k0, v0, counts=counts)
        full_k[:, :41], full_v[:, :41] = k0, v0
        for step, (Lq, causal) in enumerate(((3, True), (4, True), (2, False))):
            q = torch.randn(B, Lq, Hq, D, generator=g).half()
            k1, v1 = (torch.randn(B, Lq, Hkv, D, generator=g).half() for _ in range(2))
            for b in range(B):
                n = int(cache.lengths[b])
                full_k[b, n:n + Lq], full_v[b, n:n + Lq] = k1[b], v1[b]
            cache.append(k1, v1)
            # one method a step, turning over with the step and the config, so each method meets causal and
            # non-causal steps across the two configs (every method at every step cost CI 130 s); ring decode,
            # which decodes every shard on every rank, at 2 ranks only
            methods = METHODS if world == 2 else METHODS[:2]
            for method in [methods[(step + configs.index((placement, paged, P))) % len(methods)]]:
                out, lse = cache.decode(q, method, causal=causal, return_lse=True, timeout=60)
                records.append(dict(config=(placement, paged, P), step=step, method=method, causal=causal, q=q,
                                    out=out, lse=lse, lengths=cache.lengths.clone(),
                                    full=(full_k.clone(), full_v.clone())))
    return records


@pytest.mark.parametrize("world,configs", [
    (2, [("round_robin", False, 2), ("contiguous", True, 4)]),
    (3, [("round_robin", True, 2), ("contiguous", False, 16)]),
])
def test_draft_steps_match_whole_cache(world, configs):
    results = spawn(_draft_steps, world, (configs,), deadline=300)
    for i, rec in enumerate(results[0]):
        name = f"{rec['config']} step {rec['step']} {rec['method']} world {world}"
        fk, fv = rec["full"]
        ref_out, ref_lse = reference.decode(rec["q"], fk, fv, rec["lengths"].to(torch.int32), causal=rec["causal"])
        for r in range(world):
            assert_states_match(f"{name} rank {r}", rec["q"], results[r][i]["out"], results[r][i]["lse"],
                                ref_out, ref_lse)
        if rec["method"] == "allgather":  # every rank merges the same gathered states in the same order
            for r in range(1, world):
                assert torch.equal(results[r][i]["out"], rec["out"]), f"{name}: rank {r} differs"


def test_draft_keys_spread_over_ranks():
    # the case the per-token lengths exist for: with pages of 2 tokens, 4 drafts land on both ranks, so on each
    # rank some draft keys are seen by later tokens only
    p = Placement("round_robin", 2, 64, page_size=2)
    lens = torch.tensor([13, 14, 4, 3])
    per_rank = [p.token_seqlens(lens, 4, r) for r in range(2)]
    total = per_rank[0] + per_rank[1]
    want = (lens[:, None] - 3 + torch.arange(4)).clamp(min=0)
    assert torch.equal(total, want)  # each token sees exactly the positions up to its own, over both ranks
    for sl in per_rank:
        extra = sl - sl[:, :1]
        assert ((extra >= 0) & (extra <= torch.arange(4))).all()
        assert (sl[:, 1:] >= sl[:, :-1]).all()
    assert bool(((per_rank[0][:, -1] > per_rank[0][:, 0]) & (per_rank[1][:, -1] > per_rank[1][:, 0])).any())


# ------------------------------------------------------------------------------------------------
# per-token shard lengths of any valid form: the states of simulated ranks merged, against the reference


def _random_token_seqlens(g, B, Lq, cap):
    """Valid ``(B, Lq)`` lengths: a first length, then non-decreasing steps of 0 or 1 (as a causal mask makes)."""
    first = torch.randint(0, cap - Lq + 2, (B,), generator=g)
    steps = torch.randint(0, 2, (B, Lq), generator=g)
    steps[:, 0] = 0
    return (first[:, None] + steps.cumsum(1)).clamp(max=cap).to(torch.int32)


def _per_token_reference(q, shards, lens, softcap=0.0, scales=None):
    """float64 attention of each token over the first ``lens[r][b, t]`` tokens of every shard."""
    B, Lq, Hq, D = q.shape
    outs = torch.zeros(B, Lq, Hq, D, dtype=torch.float64)
    lses = torch.zeros(B, Lq, Hq, dtype=torch.float64)
    for b in range(B):
        for t in range(Lq):
            ks, vs = [], []
            for r, s in enumerate(shards):
                n = int(lens[r][b, t])
                k_scale, v_scale = (1.0, 1.0) if scales is None else scales[r]
                ks.append(reference.gather_kv(s["k_shard"], b, n, s["block_table"]).double() * k_scale)
                vs.append(reference.gather_kv(s["v_shard"], b, n, s["block_table"]).double() * v_scale)
            k, v = torch.cat(ks)[None], torch.cat(vs)[None]
            o, ls = reference.decode(q[b:b + 1, t], k, v, torch.tensor([k.shape[1]], dtype=torch.int32),
                                     softcap=softcap)
            outs[b, t], lses[b, t] = o[0], ls[0]
    return outs, lses


CASES = [
    # name, world, B, Lq, Hq, Hkv, D, dtype, paged ranks, page size, fp8, softcap
    ("mha-fp16", 2, 2, 3, 2, 2, 64, torch.float16, (), 16, False, 0.0),
    ("gqa-fp32-paged", 3, 3, 4, 8, 2, 64, torch.float32, (0, 2), 4, False, 0.0),
    ("mqa-d128-paged1", 2, 2, 5, 4, 1, 128, torch.float16, (1,), 1, False, 0.0),
    ("gqa-fp8-softcap", 2, 2, 3, 4, 2, 64, torch.float16, (0,), 8, True, 20.0),
    ("one-token", 2, 3, 1, 4, 2, 64, torch.float16, (), 16, False, 0.0),
]


# the schedules alternate over the cases: lean over contiguous shards, 1-token pages and one token, split over paged
# ranks among contiguous ones and float8 with a soft cap (both schedules on every case cost CI about 40 s more)
@pytest.mark.parametrize("case,schedule", [(c, ("lean", "split")[i % 2]) for i, c in enumerate(CASES)],
                         ids=[c[0] for c in CASES])
def test_token_seqlens_any_valid_form(case, schedule):
    name, world, B, Lq, Hq, Hkv, D, dtype, paged, P, fp8, softcap = case
    g = torch.Generator().manual_seed(hash(name) % 1000)
    q = torch.randn(B, Lq, Hq, D, generator=g).to(dtype)
    shards, lens, scales, states = [], [], [], []
    for r in range(world):
        cap = 23 + 5 * r
        sl = _random_token_seqlens(g, B, Lq, cap)
        if r == world - 1:
            sl[0] = 0  # sequence 0 holds nothing here
        _, k, v, _, bt = make_inputs(B, Hq, Hkv, D, [cap] * B, dtype, capacity=cap,
                                     page_size=P if r in paged else None)
        ks, vs = (1.0, 1.0)
        if fp8:
            ks, vs = 0.5 + 0.25 * r, 1.5
            k, v = (k / ks).to(torch.float8_e4m3fn), (v / vs).to(torch.float8_e4m3fn)
        shards.append(dict(k_shard=k, v_shard=v, block_table=bt))
        lens.append(sl)
        scales.append((ks, vs))
        o, ls = shard_states(q, k, v, sl, bt, D ** -0.5, schedule=schedule, k_scale=ks, v_scale=vs, softcap=softcap,
                             num_programs=5, num_splits=3)
        assert o.shape == q.shape and ls.shape == q.shape[:-1]
        states.append((o.flatten(0, 1), ls.flatten(0, 1)))
    out, lse = merge_states(torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states]))
    ref_out, ref_lse = _per_token_reference(q, shards, lens, softcap, scales)
    assert_states_match(f"{name} {schedule}", q, out.view(q.shape), lse.view(q.shape[:-1]), ref_out, ref_lse)


def test_one_token_per_token_lengths_are_the_one_token_call():
    _, k, v, sl, _ = make_inputs(3, 4, 2, 64, [30, 0, 7], torch.float16)
    q = torch.randn(3, 1, 4, 64, dtype=torch.float16)
    for fn in (tree_decode, ring_decode):
        out, lse = fn(q, k, v, sl[:, None].contiguous(), return_lse=True)
        ref, ref_lse = fn(q[:, 0], k, v, sl, return_lse=True)
        assert torch.equal(out[:, 0], ref) and torch.equal(lse[:, 0], ref_lse)


def test_single_process_causal_is_decode_causal():
    # one rank holding the whole cache: the per-token lengths of the last Lq positions are decode's causal mask
    _, k, v, sl, bt = make_inputs(3, 8, 2, 64, [30, 2, 17], torch.float16, page_size=4)
    q = torch.randn(3, 4, 8, 64, dtype=torch.float16)
    p = Placement("contiguous", 1, 32)
    tok = p.token_seqlens(sl, 4, 0).to(torch.int32)
    out, lse = tree_decode(q, k, v, tok, bt, return_lse=True)
    ref_out, ref_lse = reference.decode(q, k, v, sl, bt, causal=True)
    assert_states_match("single process", q, out, lse, ref_out, ref_lse)


# ------------------------------------------------------------------------------------------------
# errors


def test_token_seqlens_errors():
    _, k, v, sl, _ = make_inputs(2, 4, 2, 64, [20, 9], torch.float16)
    q4 = torch.randn(2, 3, 4, 64, dtype=torch.float16)
    good = torch.tensor([[5, 5, 6], [9, 9, 9]], dtype=torch.int32)
    for fn in (tree_decode, ring_decode):
        with pytest.raises(ValueError, match=r"shard_seqlens: expected a 1-D \(B,\) tensor for q of shape"):
            fn(q4[:, 0], k, v, good)
        with pytest.raises(ValueError, match=r"shard_seqlens: expected shape \(2, 3\)"):
            fn(q4, k, v, good[:, :2].contiguous())
        with pytest.raises(TypeError, match="shard_seqlens: expected dtype torch.int32"):
            fn(q4, k, v, good.long())
        with pytest.raises(ValueError, match=r"shard_seqlens\[b, 0\] \+ 2\].*got 8 at \[0, 2\]"):
            fn(q4, k, v, torch.tensor([[5, 5, 8], [9, 9, 9]], dtype=torch.int32))
        with pytest.raises(ValueError, match=r"got 4 at \[1, 1\]"):
            fn(q4, k, v, torch.tensor([[5, 5, 6], [5, 4, 5]], dtype=torch.int32))
        with pytest.raises(ValueError, match="shard_seqlens: expected lengths <= 20"):  # beyond the capacity
            fn(q4, k, v, torch.tensor([[19, 20, 21], [9, 9, 9]], dtype=torch.int32))
        with pytest.raises(ValueError, match=r"q: expected a 3-D \(B, Hq, D\) or 4-D"):
            fn(q4[None], k, v, sl)
    # a page only the later tokens attend must hold a valid id too
    _, kp, vp, _, bt = make_inputs(2, 4, 2, 64, [16, 16], torch.float16, page_size=4)
    bt[0, 2] = -1
    for fn in (tree_decode, ring_decode):
        fn(q4, kp, vp, torch.tensor([[7, 8, 8], [9, 9, 9]], dtype=torch.int32), bt)  # pages 0 and 1 only
        with pytest.raises(ValueError, match=r"block_table: expected page ids in \[0, "):
            fn(q4, kp, vp, torch.tensor([[7, 8, 9], [9, 9, 9]], dtype=torch.int32), bt)
    cache = ShardedKVCache(2, 2, 64, 16)
    with pytest.raises(TypeError, match="causal: expected a bool"):
        cache.decode(q4, causal=1)
    for fn in (tree_decode, ring_decode):
        with pytest.raises(TypeError, match="return_lse: expected a bool"):
            fn(q4, k, v, good, return_lse="yes")


def test_shard_cache_token_seqlens_match_local_lengths():
    # the last token's per-token length is the rank's whole share: what shard_cache and append keep
    B, N = 3, 40
    lens = torch.tensor([40, 5, 0], dtype=torch.int32)
    k = torch.randn(B, N, 1, 64)
    for kind, page in (("round_robin", 3), ("contiguous", 16)):
        p = Placement(kind, 3, N, page)
        for r in range(3):
            _, _, local = shard_cache(k, k, lens, p, r)
            tok = p.token_seqlens(lens, 5, r)
            assert torch.equal(tok[:, -1], local.long()), (kind, r)


def test_review_edges():
    # found by a review's fuzzing: a rank with no pages at all, a negative first length, a 3-D length tensor, no
    # query token, and float8 shards on the ring in one process
    q = torch.randn(2, 3, 4, 64, dtype=torch.float16)
    pool = torch.randn(3, 4, 2, 64, dtype=torch.float16)
    no_pages = torch.zeros(2, 0, dtype=torch.int32)
    for fn in (tree_decode, ring_decode):
        out, lse = fn(q, pool, pool, torch.zeros(2, 3, dtype=torch.int32), no_pages, return_lse=True)
        assert not out.any() and torch.isinf(lse).all()
    cache = ShardedKVCache(2, 2, 64, 0, paged=True, page_size=4)
    assert not cache.decode(q, causal=True).any()
    _, k, v, _, _ = make_inputs(2, 4, 2, 64, [8, 8], torch.float16)
    with pytest.raises(ValueError, match="shard_seqlens: expected lengths >= 0, got a minimum of -1"):
        tree_decode(q, k, v, torch.tensor([[-1, 0, 0], [2, 2, 2]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"shard_seqlens: expected a \(B,\) or, with q \(B, Lq, Hq, D\), \(B, Lq\)"):
        tree_decode(q, k, v, torch.zeros(2, 3, 1, dtype=torch.int32))
    assert tree_decode(q[:, :0], k, v, torch.zeros(2, 0, dtype=torch.int32)).shape == (2, 0, 4, 64)
    with pytest.raises(TypeError, match="k_shard"):
        ring_decode(q, k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn))
