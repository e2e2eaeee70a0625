"""``leanattn.distributed`` on CPU: gloo process groups of 1 to 4 ranks spawned in-process.

Every rank runs the Triton interpreter, so a spawn costs about a second per rank: each test
spawns once and runs several cases inside. The ground truth is the float64
``leanattn.reference.decode`` of the shards concatenated into one cache.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.distributed import (VARIANTS, Placement, RankError, ShardedKVCache, balance, comm_bytes, ring_decode,
                                  shard_cache, spawn, tree_decode)
from leanattn.testing import assert_lse_close, assert_rel_close, assert_states_match
from test_decode import make_inputs
import interpreter_patch_once

interpreter_patch_once.install()  # (the spawned ranks import this module, not conftest.py)

METHODS = ("allgather", "allreduce3", "ring")
WORLD_SIZES = (1, 2, 3, 4, 8)


# ------------------------------------------------------------------------------------------------
# inputs: per-rank shards and the whole cache they make up


def make_shards(world, B, Hq, Hkv, D, lens, dtype, paged=(), page_size=16, seqlens=True, capacity_extra=3):
    """``q`` and one shard per rank; ``lens[r][b]`` tokens of sequence ``b`` on rank ``r``.

    Ranks in ``paged`` get a page pool and a block table (pages in random order), the others a
    contiguous ``(B, N_r, Hkv, D)`` cache with ``capacity_extra`` unused slots (``N_r = 0`` when
    the rank holds nothing).

    Returns
    -------
    q : (B, Hq, D); shards : list of dict(k_shard, v_shard, shard_seqlens, block_table);
    whole : (k (B, N, Hkv, D), v, lengths (B,) int32), the shards concatenated in rank order.
    """
    q = torch.randn(B, Hq, D, dtype=dtype)
    shards, parts_k, parts_v = [], [[] for _ in range(B)], [[] for _ in range(B)]
    for r in range(world):
        lr = lens[r]
        if r in paged:
            _, k, v, sl, bt = make_inputs(B, Hq, Hkv, D, lr, dtype, capacity=max(lr) + capacity_extra,
                                          page_size=page_size)
        else:
            cap = max(lr) + capacity_extra if max(lr) > 0 else 0
            _, k, v, sl, bt = make_inputs(B, Hq, Hkv, D, lr, dtype, capacity=cap)
        if not seqlens:
            assert bt is None
            sl = None
            lr = [k.shape[1]] * B
        shards.append(dict(k_shard=k, v_shard=v, shard_seqlens=sl, block_table=bt))
        for b in range(B):
            parts_k[b].append(reference.gather_kv(k, b, lr[b], bt))
            parts_v[b].append(reference.gather_kv(v, b, lr[b], bt))
    tot = [sum(x.shape[0] for x in parts_k[b]) for b in range(B)]
    N = max(tot)
    kw = torch.zeros(B, N, Hkv, D, dtype=dtype)
    vw = torch.zeros_like(kw)
    for b in range(B):
        kw[b, :tot[b]] = torch.cat(parts_k[b])
        vw[b, :tot[b]] = torch.cat(parts_v[b])
    return q, shards, (kw, vw, torch.tensor(tot, dtype=torch.int32))


def scenarios(world):
    """Named cases for a world size: unequal and empty shards, GQA, ragged, paged, no lengths."""
    g = torch.Generator().manual_seed(world)
    out = {}
    # MHA, fp16: unequal shards, rank 1 holds nothing at all (a (B, 0, Hkv, D) cache)
    lens = [[23 * r + 5, 9 * r + 1] for r in range(world)]
    if world > 1:
        lens[1] = [0, 0]
    out["mha-unequal-empty"] = make_shards(world, 2, 2, 2, 64, lens, torch.float16)
    # GQA 8/2, bf16, ragged batch; sequence 2 has no token on any rank (zeros and -inf)
    lens = [[int(torch.randint(0, 40, (), generator=g)), int(torch.randint(1, 40, (), generator=g)), 0]
            for _ in range(world)]
    out["gqa-ragged-bf16"] = make_shards(world, 3, 8, 2, 64, lens, torch.bfloat16)
    # MQA 4/1, D=128: even ranks paged (random page order), odd ranks contiguous
    lens = [[17 + 11 * r, max(40 - 7 * r, 0)] for r in range(world)]
    out["mqa-paged-mixed"] = make_shards(world, 2, 4, 1, 128, lens, torch.float16, paged=range(0, world, 2))
    # fp32 without cache_seqlens: every shard counts its full capacity
    lens = [[(9, 31, 1, 50, 2, 17, 40, 6)[r]] for r in range(world)]
    out["fp32-full-capacity"] = make_shards(world, 1, 4, 4, 64, lens, torch.float32, seqlens=False, capacity_extra=0)
    return out


# at 8 ranks (8 interpreters on CI's 2 cores) one combine a case, each combine meeting two of them: allgather the bf16
# and float32 packings of its buffer, allreduce3 the empty rank and the paged shards (both combines on every case cost
# CI about 7 s more); fewer ranks run every case with every method
COMBINE_AT_8 = {"mha-unequal-empty": "allreduce3", "gqa-ragged-bf16": "allgather", "mqa-paged-mixed": "allreduce3",
                "fp32-full-capacity": "allgather"}


def _run_methods(rank, world, cases):
    res = {}
    # ring decode (the baseline) decodes every shard on every rank: at 8 ranks 8 of every 10 interpreted decodes,
    # most of the test's time in CI; 2 and 3 ranks cover it
    methods = [m for m in METHODS if m != "ring" or world <= 3]
    if world == 1:  # one rank combines nothing: allreduce3 would run allgather's decode again
        methods.remove("allreduce3")
    for name, (q, shards, _) in cases.items():
        s = shards[rank]
        for m in methods if world < 8 else [COMBINE_AT_8[name]]:
            fn = ring_decode if m == "ring" else tree_decode
            kw = {} if m == "ring" else dict(variant=m)
            res[name, m] = fn(q, **s, return_lse=True, timeout=60, **kw)
    return res


def check_against_reference(name, q, whole, out, lse, softcap=0.0):
    ref_out, ref_lse = reference.decode(q, *whole, softcap=softcap)
    assert_states_match(name, q, out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_exact_vs_reference(world):
    cases = scenarios(world)
    results = spawn(_run_methods, world, (cases,), deadline=180)
    for (name, m), _ in results[0].items():
        q, _, whole = cases[name]
        for r in range(world):
            out, lse = results[r][name, m]
            check_against_reference(f"{name} {m} rank {r}/{world}", q, whole, out, lse)
        if m == "allgather":  # every rank merges the same gathered states in the same order
            for r in range(1, world):
                assert torch.equal(results[r][name, m][0], results[0][name, m][0]), f"{name}: rank {r} differs"


def test_single_process_without_init():
    # no process group: a plain decode
    q, shards, whole = make_shards(1, 2, 4, 2, 64, [[30, 7]], torch.float16)
    for fn in (tree_decode, ring_decode):
        out, lse = fn(q, **shards[0], return_lse=True)
        ref, ref_lse = leanattn.decode(q, *whole, return_lse=True)
        assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


# ------------------------------------------------------------------------------------------------
# a growing cache: placements, appends, decode steps


CACHE_CONFIGS = [("round_robin", False), ("round_robin", True), ("contiguous", False), ("contiguous", True)]


def _grow_cache(rank, world, configs, steps):
    B, Hq, Hkv, D, cap, P = 2, 4, 2, 64, 130, 16
    records = []
    for placement, paged in configs:
        g = torch.Generator().manual_seed(7)  # the same tokens on every rank
        cache = ShardedKVCache(B, Hkv, D, cap, placement=placement, page_size=P, paged=paged, dtype=torch.float16)
        full_k = torch.zeros(B, cap, Hkv, D, dtype=torch.float16)
        full_v = torch.zeros_like(full_k)
        counts = torch.tensor([70, 33])
        k0, v0 = (torch.randn(B, 70, Hkv, D, generator=g).half() for _ in range(2))
        cache.append(k0, v0, counts=counts)
        full_k[:, :70], full_v[:, :70] = k0, v0
        for step in range(steps):
            q = torch.randn(B, Hq, D, generator=g).half()
            k1, v1 = (torch.randn(B, 1, Hkv, D, generator=g).half() for _ in range(2))
            full_k[torch.arange(B), cache.lengths], full_v[torch.arange(B), cache.lengths] = k1[:, 0], v1[:, 0]
            cache.append(k1, v1)
            method = ("allgather", "allreduce3", "ring")[step % 3]
            out, lse = cache.decode(q, method, return_lse=True, timeout=60)
            records.append(dict(config=(placement, paged), step=step, q=q, out=out, lse=lse,
                                lengths=cache.lengths.clone(), local=cache.shard_seqlens.clone(),
                                full=(full_k.clone(), full_v.clone())))
    return records


def test_sharded_cache_grows_exactly():
    world, steps = 3, 3
    results = spawn(_grow_cache, world, (CACHE_CONFIGS, steps), deadline=180)
    for i, rec in enumerate(results[0]):
        name = f"{rec['config']} step {rec['step']}"
        fk, fv = rec["full"]
        check_against_reference(name, rec["q"], (fk, fv, rec["lengths"].to(torch.int32)), rec["out"], rec["lse"])
        locals_ = torch.stack([results[r][i]["local"] for r in range(world)]).long()   # (world, B)
        assert torch.equal(locals_.sum(0), rec["lengths"]), f"{name}: shards do not add up to the sequence"
        if rec["config"][0] == "round_robin":
            assert int((locals_.max(0).values - locals_.min(0).values).max()) <= 16, f"{name}: unbalanced"
        if rec["step"] % 3 == 0:  # all-gather: every rank merges the same states in the same order
            for r in range(1, world):
                assert torch.equal(results[r][i]["out"], rec["out"]), f"{name}: rank {r} differs"


@pytest.mark.parametrize("kind", ["round_robin", "contiguous"])
def test_placement_brute_force(kind):
    for world in (1, 2, 3, 4):
        for page in (1, 3, 16):
            for cap in (0, 1, 37, 100):
                p = Placement(kind, world, cap, page)
                pos = torch.arange(cap)
                owner, slot = p.owner(pos), p.local_slot(pos)
                assert ((owner >= 0) & (owner < world)).all()
                assert (slot < p.local_capacity()).all() and (slot >= 0).all()
                for r in range(world):
                    assert slot[owner == r].unique().numel() == int((owner == r).sum()), "two tokens share a slot"
                lengths = torch.arange(cap + 1)
                for r in range(world):
                    got = p.local_length(lengths, r)
                    want = torch.tensor([int(((owner == r) & (pos < L)).sum()) for L in range(cap + 1)])
                    assert torch.equal(got, want), (kind, world, page, cap, r)
                    # the slots a rank holds are a prefix: a shard is a plain cache with lengths
                    for L in (0, cap // 2, cap):
                        held = slot[(owner == r) & (pos < L)].sort().values
                        assert torch.equal(held, torch.arange(held.numel())), (kind, world, page, cap, r, L)
                if kind == "round_robin" and cap:
                    bal = balance(torch.tensor([cap]), p)
                    assert max(bal) - min(bal) <= page


def test_shard_cache_covers_the_cache():
    B, N, Hkv, D = 3, 45, 2, 64
    k, v = torch.randn(B, N, Hkv, D), torch.randn(B, N, Hkv, D)
    lens = torch.tensor([45, 0, 17], dtype=torch.int32)
    q = torch.randn(B, 4, D)
    for kind in ("round_robin", "contiguous"):
        p = Placement(kind, 3, 50, 8)
        shards = [shard_cache(k, v, lens, p, r) for r in range(3)]
        assert torch.equal(sum(s[2].long() for s in shards), lens.long())
        outs, lses = zip(*(leanattn.decode(q, *s, return_lse=True) for s in shards))
        out, lse = leanattn.merge_states(torch.stack(outs), torch.stack(lses))
        ref, ref_lse = reference.decode(q, k, v, lens)
        assert_rel_close(kind, out, ref, 1e-4)
        assert_lse_close(kind, lse, ref_lse, 1e-4)


def test_placement_and_cache_errors():
    with pytest.raises(ValueError, match="placement: expected"):
        Placement("diagonal", 2, 10)
    with pytest.raises(ValueError, match="world_size"):
        Placement("round_robin", 0, 10)
    cache = ShardedKVCache(2, 1, 64, 10)
    with pytest.raises(ValueError, match="method: expected"):
        cache.decode(torch.randn(2, 2, 64), method="tree")
    with pytest.raises(ValueError, match="k_new: expected shape"):
        cache.append(torch.randn(2, 3, 2, 64), torch.randn(2, 3, 2, 64))
    with pytest.raises(ValueError, match="v_new"):
        cache.append(torch.randn(2, 3, 1, 64), torch.randn(2, 4, 1, 64))
    with pytest.raises(ValueError, match="counts"):
        cache.append(torch.randn(2, 3, 1, 64), torch.randn(2, 3, 1, 64), counts=torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="capacity"):
        cache.append(torch.randn(2, 11, 1, 64), torch.randn(2, 11, 1, 64))
    whole = torch.randn(2, 11, 1, 64)
    with pytest.raises(ValueError, match=r"^k: expected at most 10 tokens \(placement capacity\), got 11$"):
        shard_cache(whole, whole, None, Placement("round_robin", 2, 10), 0)
    # argument types and values (found by a sweep: raw errors of torch, truthy strings, truncated float counts)
    good = dict(batch=2, kv_heads=1, head_dim=64, capacity=10)
    for over, err, name in ((dict(batch=-1), ValueError, "batch"), (dict(batch=1.5), TypeError, "batch"),
                            (dict(kv_heads=0), ValueError, "kv_heads"), (dict(head_dim="64"), TypeError, "head_dim"),
                            (dict(head_dim=48), ValueError, "head_dim"), (dict(capacity=True), TypeError, "capacity"),
                            (dict(capacity=None), TypeError, "capacity"), (dict(page_size=1.5), TypeError, "page_size"),
                            (dict(placement=None), TypeError, "placement"), (dict(paged="no"), TypeError, "paged"),
                            (dict(dtype=torch.int64), TypeError, "dtype"), (dict(dtype="float16"), TypeError, "dtype"),
                            (dict(device="gpu0"), ValueError, "device"), (dict(device=1.5), TypeError, "device")):
        with pytest.raises(err, match=f"^{name}: expected"):
            ShardedKVCache(**{**good, **over})
    assert ShardedKVCache(**{**good, "capacity": np.int64(10)}).placement.capacity == 10
    k1 = torch.randn(2, 3, 1, 64)
    for args, err, name in (((None, k1), TypeError, "k_new"), ((k1, [1.0]), TypeError, "v_new"),
                            ((k1[0, 0, 0], k1), ValueError, "k_new"), ((k1.long(), k1), TypeError, "k_new"),
                            ((k1, k1, [1, 1]), TypeError, "counts"), ((k1, k1, torch.tensor([0.5, 1.0])), TypeError,
                                                                      "counts")):
        with pytest.raises(err, match=f"^{name}: expected"):
            cache.append(*args)
    for n, err in ((-1, ValueError), (1.5, TypeError), (None, TypeError)):
        with pytest.raises(err, match="^num_tokens: expected"):
            cache.token_seqlens(n)
    with pytest.raises(TypeError, match="^method: expected"):
        cache.decode(torch.randn(2, 2, 64, dtype=torch.float16), method=None)


# ------------------------------------------------------------------------------------------------
# ranks that disagree, peers that do not come


def _disagree(rank, world):
    import leanattn.distributed._comm as comm
    D = 64
    base = dict(B=2, Hq=4, Hkv=2, dtype=torch.float16)

    def inputs(**over):
        c = {**base, **over}
        q = torch.randn(c["B"], c["Hq"], D, dtype=c["dtype"])
        k = torch.randn(c["B"], 20, c["Hkv"], D, dtype=c["dtype"])
        return q, k, torch.randn_like(k)

    cases = {
        "batch": dict(over=dict(B=3)),
        "heads": dict(over=dict(Hq=8)),
        "kv heads": dict(over=dict(Hkv=1, Hq=4)),
        "dtype": dict(over=dict(dtype=torch.bfloat16)),
        "softmax_scale": dict(kw=dict(softmax_scale=0.5)),
        "variant": dict(kw=dict(variant="allreduce3")),
        "softcap": dict(kw=dict(softcap=2.0)),
        "invalid softcap": dict(kw=dict(softcap=-1.0)),
        "invalid": dict(seqlens=torch.tensor([1, 2], dtype=torch.int64)),
        "ring batch": dict(over=dict(B=3), ring=True),
    }
    seen = {}
    for name, c in cases.items():
        mine = rank == 1
        q, k, v = inputs(**(c.get("over", {}) if mine else {}))
        kw = c.get("kw", {}) if mine else {}
        sl = c.get("seqlens") if mine else None
        fn = ring_decode if c.get("ring") else tree_decode
        try:
            fn(q, k, v, sl, timeout=30, **kw)
            seen[name] = ("no error", "")
        except Exception as e:  # noqa: BLE001
            seen[name] = (type(e).__name__, str(e))
    # the group is still usable, and a checked signature is not checked again
    q, k, v = inputs()
    calls = []
    orig = comm.gather_descriptors
    comm.gather_descriptors = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
    tree_decode(q, k, v, timeout=30)
    tree_decode(q, k, v, timeout=30)
    first_two = len(calls)
    tree_decode(q, k, v, timeout=30, check_shapes=True)
    tree_decode(q, k, v, timeout=30, check_shapes=False)
    seen["calls"] = (first_two, len(calls))
    # a shape checked before (so no exchange) with lengths past the shard on every rank: each rank raises, naming
    # the shard's arguments as the exchange's check does
    try:
        tree_decode(q, k, v, torch.tensor([21, 3], dtype=torch.int32), timeout=30)
        seen["cached lengths"] = ("no error", "")
    except ValueError as e:
        seen["cached lengths"] = (type(e).__name__, str(e))
    # the same with bad lengths on rank 1 only: it raises; rank 0 is not left waiting but gets NaN
    for variant in VARIANTS:
        tree_decode(q, k, v, timeout=30, variant=variant)  # (the variant's shapes checked and cached)
        sl = torch.tensor([21 if rank == 1 else 5, 3], dtype=torch.int32)
        try:
            out = tree_decode(q, k, v, sl, timeout=30, variant=variant)
            seen[f"one rank's lengths {variant}"] = ("no error", bool(out.isnan().all()))
        except ValueError as e:
            seen[f"one rank's lengths {variant}"] = (type(e).__name__, str(e))
    # sinks of the wrong size on rank 1 only (sinks are not among the exchanged fields): the same
    try:
        out = tree_decode(q, k, v, timeout=30, sinks=torch.zeros(q.shape[-2] + (rank == 1)))
        seen["one rank's sinks"] = ("no error", bool(out.isnan().all()))
    except ValueError as e:
        seen["one rank's sinks"] = (type(e).__name__, str(e))
    # a bad return_lse on rank 1 only, past the cached check (tree: NaN on rank 0) and in ring_decode (whose every
    # call exchanges shapes: rank 0 told); numpy's False taken as False (no exchange on either rank)
    for name, fn in (("tree", tree_decode), ("ring", ring_decode)):
        try:
            out = fn(q, k, v, timeout=30, return_lse=None if rank == 1 else False)
            seen[f"one rank's return_lse {name}"] = ("no error", bool(out.isnan().all()))
        except (ValueError, TypeError) as e:
            seen[f"one rank's return_lse {name}"] = (type(e).__name__, str(e))
    calls.clear()
    tree_decode(q, k, v, timeout=30, check_shapes=np.False_ if rank == 1 else False)
    seen["numpy False"] = ("no error", len(calls))
    # an error of another kind on rank 1 only (out of memory, a kernel's resources: ranks plan for their own shards)
    from leanattn.distributed import tree as tree_mod
    states = tree_mod.shard_states
    if rank == 1:
        tree_mod.shard_states = lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("out of memory (simulated)"))
    try:
        out = tree_decode(q, k, v, timeout=30)
        seen["one rank's runtime error"] = ("no error", bool(out.isnan().all()))
    except RuntimeError as e:
        seen["one rank's runtime error"] = (type(e).__name__, str(e))
    finally:
        tree_mod.shard_states = states
    return seen


def test_ranks_disagree_raise_on_every_rank():
    res = spawn(_disagree, 2, deadline=120)
    expect = {"batch": "q shape", "heads": "q shape", "kv heads": "kv heads", "dtype": "dtype",
              "softmax_scale": "softmax_scale", "variant": "variant", "softcap": "softcap", "ring batch": "q shape"}
    for r in range(2):
        for name, field in expect.items():
            typ, msg = res[r][name]
            assert typ == "ValueError" and f"ranks disagree on {field}" in msg, (r, name, typ, msg)
            assert "rank 0" in msg and "rank 1" in msg
    assert res[1]["invalid"][0] == "TypeError" and "shard_seqlens: expected dtype" in res[1]["invalid"][1]
    assert res[0]["invalid"][0] == "ValueError" and "rank(s) [1] rejected" in res[0]["invalid"][1]
    # an invalid soft cap on one rank: raised there, and the other rank told rather than left waiting
    assert res[1]["invalid softcap"][0] == "ValueError" and "softcap: expected" in res[1]["invalid softcap"][1]
    assert res[0]["invalid softcap"][0] == "ValueError" and "rank(s) [1] rejected" in res[0]["invalid softcap"][1]
    assert res[0]["calls"] == (1, 2), res[0]["calls"]  # first call checks, second cached, True checks again
    for r in range(2):
        msg = res[r]["cached lengths"][1]
        assert msg.startswith("shard_seqlens: expected lengths <= 20 (k_shard capacity)"), (r, msg)
    for variant in VARIANTS:
        assert res[0][f"one rank's lengths {variant}"] == ("no error", True), res[0]
        typ, msg = res[1][f"one rank's lengths {variant}"]
        assert typ == "ValueError" and msg.startswith("shard_seqlens: expected lengths <= 20"), (typ, msg)
    assert res[0]["one rank's sinks"] == ("no error", True), res[0]
    assert res[1]["one rank's sinks"][0] == "ValueError" and "sinks" in res[1]["one rank's sinks"][1]
    assert res[0]["one rank's runtime error"] == ("no error", True), res[0]
    assert res[0]["one rank's return_lse tree"] == ("no error", True), res[0]
    assert res[0]["one rank's return_lse ring"][0] == "ValueError", res[0]
    assert "rank(s) [1] rejected" in res[0]["one rank's return_lse ring"][1], res[0]
    for r in range(2):
        assert res[r]["numpy False"] == ("no error", 0), res[r]
    for name in ("tree", "ring"):
        typ, msg = res[1][f"one rank's return_lse {name}"]
        assert typ == "TypeError" and msg.startswith("return_lse: expected a bool"), (name, typ, msg)
    assert res[1]["one rank's runtime error"] == ("RuntimeError", "out of memory (simulated)"), res[1]


def _missing_peer(rank, world, method, peer, done):
    if rank == 1:
        # "late": alive (its connections open) until rank 0 has timed out, however long that takes under load, and no
        # longer (a fixed sleep of 3.5 s held each of the three tests that long); "gone": leaves at once
        end = time.monotonic() + 30
        while peer == "late" and not os.path.exists(done) and time.monotonic() < end:
            time.sleep(0.05)
        return None
    q = torch.randn(1, 2, 64, dtype=torch.float16)
    k = torch.randn(1, 10, 2, 64, dtype=torch.float16)
    t = time.monotonic()
    try:
        if method == "ring":
            ring_decode(q, k, k, timeout=1.0)
        else:
            tree_decode(q, k, k, timeout=1.0, variant=method, check_shapes=False)
        return ("no error", "", time.monotonic() - t)
    except Exception as e:  # noqa: BLE001
        return (type(e).__name__, str(e), time.monotonic() - t)
    finally:
        open(done, "w").close()


@pytest.mark.parametrize("method,peer", [("allgather", "late"), ("allreduce3", "late"), ("ring", "late"),
                                         ("allgather", "gone")])
def test_missing_peer_raises_not_hangs(method, peer, tmp_path):
    t = time.monotonic()
    res = spawn(_missing_peer, 2, (method, peer, str(tmp_path / "rank0-done")), deadline=60, group_timeout=4)
    typ, msg, took = res[0]
    assert typ in ("TimeoutError", "RuntimeError"), (typ, msg)
    if peer == "late":
        assert typ == "TimeoutError" and "rank 0 of 2" in msg and "1 s" in msg, msg
    assert took < 6, f"took {took:.1f} s"
    assert time.monotonic() - t < 90  # the whole spawn, process start-up included


def test_argument_errors():
    q = torch.randn(1, 2, 64, dtype=torch.float16)
    k = torch.randn(1, 10, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="variant: expected one of"):
        tree_decode(q, k, k, variant="allreduce")
    with pytest.raises(TypeError, match="timeout: expected seconds"):
        tree_decode(q, k, k, timeout="1s")
    with pytest.raises(ValueError, match="timeout: expected a positive"):
        ring_decode(q, k, k, timeout=0)
    with pytest.raises(TypeError, match="k_shard: expected a torch.Tensor"):
        tree_decode(q, None, k)
    # decode's checks name the shard's arguments: v_shard (as k_shard), shard_seqlens beyond the shard's capacity
    with pytest.raises(ValueError, match=r"v_shard: expected shape \(1, 10, 2, 64\) \(as k_shard\)"):
        tree_decode(q, k, k[:, :9])
    with pytest.raises(ValueError, match=r"shard_seqlens: expected lengths <= 10 \(k_shard capacity\)"):
        tree_decode(q, k, k, torch.tensor([11], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="not initialised"):
        tree_decode(q, k, k, group=object())
    for fn in (tree_decode, ring_decode):
        for timeout, err in ((float("inf"), ValueError), (1e20, ValueError), (float("nan"), ValueError),
                             (datetime.timedelta(seconds=-1), ValueError), (True, TypeError)):
            with pytest.raises(err, match="^timeout: expected"):
                fn(q, k, k, timeout=timeout)
        fn(q, k, k, timeout=np.int64(3))
        with pytest.raises(TypeError, match="^check_shapes: expected a bool or None"):
            fn(q, k, k, check_shapes="yes")
        # no query token: the arguments are checked as any call's
        q0 = torch.randn(1, 0, 2, 64, dtype=torch.float16)
        for bad, err, name in ((dict(num_programs=-1), ValueError, "num_programs"),
                               (dict(schedule="bogus"), ValueError, "schedule"),
                               (dict(softmax_scale="x"), TypeError, "softmax_scale")):
            with pytest.raises(err, match=f"^{name}: expected"):
                fn(q0, k, k, **bad)
        assert fn(q0, k, k).shape == q0.shape
    with pytest.raises(TypeError, match="^variant: expected one of"):
        tree_decode(q, k, k, variant=None)
    # a numpy int as window_left reached the window kernels as one
    kw = dict(shard_starts=torch.tensor([4], dtype=torch.int32), window_left=np.int64(5))
    out = tree_decode(q, k, k, torch.tensor([10], dtype=torch.int32), **kw)
    assert torch.equal(out, tree_decode(q, k, k, torch.tensor([10], dtype=torch.int32), **{**kw, "window_left": 5}))


# states no decode produces: each combine against the reference merge

_INF, _NAN = float("inf"), float("nan")
# per rank, one lse a head: finite, +inf with finite, +inf twice, empty twice, NaN with finite, empty with finite
_EDGE_LSES = ((1.0, _INF, _INF, -_INF, _NAN, -_INF, 2.0, _INF), (0.5, 0.3, _INF, -_INF, 0.2, 3.0, -_INF, _NAN))
_FINITE_OR_INF = 7  # the heads before this one hold no +inf beside a NaN


def _combine_edges(rank, world):
    from leanattn.distributed import tree
    out = torch.randn(1, len(_EDGE_LSES[0]), 8, generator=torch.Generator().manual_seed(rank)).half()
    lse = torch.tensor([_EDGE_LSES[rank]])
    return out, lse, {v: getattr(tree, f"_combine_{v}")(out, lse, None, world, None) for v in VARIANTS}


def test_combines_of_infinite_and_nan_states():
    res = spawn(_combine_edges, 2, deadline=120)
    outs, lses = torch.stack([r[0] for r in res]), torch.stack([r[1] for r in res])
    ref_out, ref_lse = reference.merge_states(outs, lses)
    h = slice(0, _FINITE_OR_INF)
    for v in VARIANTS:
        out, lse = res[0][2][v]
        assert torch.equal(lse[:, h].isnan(), ref_lse[:, h].isnan()), (v, lse, ref_lse)
        assert torch.allclose(lse[:, h].double(), ref_lse[:, h], atol=1e-5, equal_nan=True), (v, lse, ref_lse)
        # a NaN state beside a finite one stays NaN in the output (how a failed rank's error reaches its peers)
        assert out[0, 4].isnan().all(), (v, out)
        keep = torch.ones(_FINITE_OR_INF, dtype=torch.bool)
        keep[4] = False
        assert_rel_close(v, out[:, h][:, keep].double(), ref_out[:, h][:, keep], 2e-3)
    # +inf beside NaN: the reference's lse is NaN; allgather gives what merge_states gives ((0, +inf): the kernels
    # take a row with a +inf state as (0, +inf)), allreduce3 NaN
    assert torch.isnan(ref_lse[0, _FINITE_OR_INF])
    m_out, m_lse = leanattn.merge_states(outs, lses)
    ag_out, ag_lse = res[0][2]["allgather"]
    for a, m in ((ag_out, m_out), (ag_lse, m_lse)):
        assert torch.equal(a.isnan(), m.isnan()) and torch.equal(a.nan_to_num(), m.nan_to_num())
    ar_out, ar_lse = res[0][2]["allreduce3"]
    assert ar_lse[0, _FINITE_OR_INF].isnan() and ar_out[0, _FINITE_OR_INF].isnan().all()


# ------------------------------------------------------------------------------------------------
# the spawn helper, communication counts, the demo


def _raise_on_one(rank, world):
    if rank == 1:
        raise KeyError("boom")
    return rank


def _sleep(rank, world):
    time.sleep(30)


def test_spawn_reports_errors_and_deadline():
    with pytest.raises(RankError, match="KeyError: 'boom'") as e:
        spawn(_raise_on_one, 2, deadline=60)
    assert list(e.value.errors) == [1]
    t = time.monotonic()
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[0\] of 1 still running"):
        spawn(_sleep, 1, deadline=3)
    assert time.monotonic() - t < 15


def test_comm_bytes_independent_of_context():
    for method in ("allgather", "allreduce3"):
        a = comm_bytes(method, 4, 32, 128, 8)
        assert a["sent"] > 0 and a == comm_bytes(method, 4, 32, 128, 8)  # no length argument at all
    ag = comm_bytes("allgather", 1, 32, 128, 2)
    assert ag["sent"] == 32 * (2 * 128 + 4) and ag["collectives"] == 1
    assert comm_bytes("allgather", 1, 32, 128, 2, itemsize=4)["sent"] == 4 * 32 * 129
    assert comm_bytes("allreduce3", 1, 32, 128, 2)["collectives"] == 3
    ring = comm_bytes("ring", 1, 32, 128, 4, shard_bytes=[10, 20, 30, 40], rank=0)
    assert ring["sent"] == 100 - 20 and ring["received"] == 100 - 10
    with pytest.raises(ValueError, match="method"):
        comm_bytes("tree", 1, 1, 64, 2)


def test_demo_runs_on_cpu():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "leanattn.distributed.demo", "--nproc", "2", "--steps", "2", "--prompt", "40",
           "--check", "--paged"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [x for x in p.stdout.splitlines() if x.startswith("step")]
    assert len(lines) == 2, p.stdout
    errs = [float(x.rsplit("=", 1)[1]) for x in lines]
    assert max(errs) < 2e-3, p.stdout


def test_bench_tree_smoke_and_cost_model_refit(tmp_path):
    # the benchmark's plumbing on CPU (2 gloo ranks, one tiny case), one query token and a verification step of 4
    # draft tokens in the last rank's half, in one run (a run starts 3 interpreters); then the cost model refits from
    # its JSON
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    cmd = [sys.executable, os.path.join(root, "benchmarks", "bench_tree.py"), "--smoke", "--tokens", "1,4",
           "--cases", "gqa 4/2 B=2 64", "--out", str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    import json
    data = json.loads((tmp_path / "bench_tree.json").read_text())
    one, drafts = data["rows"]
    assert one["tokens"] == 1 and one["case"] == "gqa 4/2 B=2 64", one["case"]
    assert drafts["tokens"] == 4 and drafts["case"].endswith("x4 tokens"), drafts["case"]
    for row in (one, drafts):
        for m in ("single", "local", "tree-allgather", "tree-allreduce3", "ring"):
            assert row["methods"][m].get("ms"), (row["case"], m, row["methods"][m])
        assert max(row["methods"]["single"]["err_vs_single"].values()) < 2e-3, row["case"]
    assert (tmp_path / "bench_tree.md").exists() and (tmp_path / "bench_tree.png").exists()
    from leanattn.distributed import cost_model
    hw = cost_model.fit_bench(str(tmp_path / "bench_tree.json"))
    assert hw.intra.beta_gbs > 0 and hw.sources["intra"].startswith("measured")


def _fp8_and_softcapped(rank, world, q, shards, scales):
    ks, vs = scales[rank]
    s = shards[rank]
    res = {}
    for m in ("allgather", "allreduce3"):
        res["float8", m] = tree_decode(q, s["k8"], s["v8"], s["shard_seqlens"], return_lse=True, timeout=60, variant=m,
                                       k_scale=ks, v_scale=vs)
        res["softcap", m] = tree_decode(q, s["k_shard"], s["v_shard"], s["shard_seqlens"], s["block_table"],
                                        return_lse=True, timeout=60, variant=m, softmax_scale=2.0, softcap=1.5)
    return res


def test_float8_shards_and_softcap():
    # each rank's shard stored as float8 e4m3 with scales of its own: the merge over ranks is exact against the
    # float64 reference of the dequantised shards concatenated. Logit soft-capping on every rank, over the same shards
    # in float16: the capped states merge exactly (scores of order 10 under a cap of 1.5). One spawn for both (a spawn
    # starts two interpreters)
    world, scales = 2, [(0.5, 2.0), (2.0, 0.25)]
    lens = [[23, 0, 9], [5, 17, 0]]
    q, shards, whole = make_shards(world, 3, 8, 2, 64, lens, torch.float16)
    whole_k, whole_v = [], []
    for s, (ks, vs) in zip(shards, scales):
        s["k8"], s["v8"] = s["k_shard"].to(torch.float8_e4m3fn), s["v_shard"].to(torch.float8_e4m3fn)
        whole_k.append(s["k8"].double() * ks)
        whole_v.append(s["v8"].double() * vs)
    results = spawn(_fp8_and_softcapped, world, (q, shards, scales), deadline=120)
    kw = torch.zeros(3, sum(max(r) + 3 for r in lens), 2, 64, dtype=torch.float64)
    vw = torch.zeros_like(kw)
    tot = []
    for b in range(3):
        ks = torch.cat([k[b, :lens[r][b]] for r, k in enumerate(whole_k)])
        vs_ = torch.cat([v[b, :lens[r][b]] for r, v in enumerate(whole_v)])
        kw[b, :len(ks)], vw[b, :len(vs_)] = ks, vs_
        tot.append(len(ks))
    whole8 = (kw, vw, torch.tensor(tot, dtype=torch.int32))
    whole_scaled = (*whole, None, 2.0)
    for r in range(world):
        for (kind, m), (out, lse) in results[r].items():
            if kind == "float8":
                check_against_reference(f"float8 {m} rank {r}", q, whole8, out, lse)
            else:
                check_against_reference(f"softcap {m} rank {r}", q, whole_scaled, out, lse, softcap=1.5)
