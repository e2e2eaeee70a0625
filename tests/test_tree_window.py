"""``tree_decode`` with a sliding window over a sharded cache (``shard_starts``, ``window_left``) on CPU: the states
of simulated ranks (contiguous and paged shards, both placements) merged against the float64 reference over the
whole cache; a growing :class:`ShardedKVCache` over gloo ranks; the errors."""
from __future__ import annotations

import pytest
import torch

from leanattn import reference
from leanattn.distributed import Placement, ShardedKVCache, shard_cache, spawn, tree_decode
from leanattn.distributed.shard_states import shard_states
from leanattn.merges import merge_states
from leanattn.testing import assert_states_match, paged_kv
from test_decode import make_inputs
import interpreter_patch_once

interpreter_patch_once.install()  # (the spawned ranks import this module, not conftest.py)

B, HQ, HKV, D, CAP = 3, 4, 2, 64, 48


def whole_cache(dtype=torch.float16):
    k = torch.randn(B, CAP, HKV, D).to(dtype)
    return k, torch.randn(B, CAP, HKV, D).to(dtype), torch.tensor([37, 3, 20])


def ranks_states(q, k, v, lens, placement, window, causal, paged=False, **kw):
    """Every rank's state over its shard of the whole cache, merged (the collective's result)."""
    n = q.shape[1] if q.dim() == 4 else 1
    outs, lses = [], []
    for r in range(placement.world_size):
        ks, vs, sl = shard_cache(k, v, lens.to(torch.int32), placement, r)
        bt = None
        if paged:
            ks, vs, bt = paged_kv(ks, vs, sl.tolist(), page_size=4, spare_pages=2)
        hi = placement.token_seqlens(lens, n, r).to(torch.int32) if causal and n > 1 else sl
        starts = placement.window_starts(lens, n, window, r).to(torch.int32)
        o, ls = shard_states(q, ks, vs, hi, bt, D ** -0.5, starts if n > 1 else starts[:, 0].contiguous(), window,
                             **kw)
        assert o.shape == q.shape and ls.shape == q.shape[:-1]
        outs.append(o.reshape(-1, HQ, D))
        lses.append(ls.reshape(-1, HQ))
    out, lse = merge_states(torch.stack(outs), torch.stack(lses))
    return out.view(q.shape), lse.view(q.shape[:-1])


# each placement with contiguous and paged shards once between them (the cross product cost CI about 70 s more). A
# query of 3 tokens (per-token runs: about four times a one-token query's time) once causal and once not on each case,
# at windows chosen so that over the cases each form meets every window and the paged shards windows across pages
# (both forms at two windows on every case cost CI about 50 s more)
@pytest.mark.parametrize("kind,page,world,paged,causal_window,open_window", [
    ("round_robin", 4, 2, False, 0, 3), ("round_robin", 4, 2, True, 3, 9), ("round_robin", 1, 3, True, 9, 3),
    ("contiguous", 16, 3, False, 9, 0)], ids=str)
def test_windows_over_shards(kind, page, world, paged, causal_window, open_window):
    k, v, lens = whole_cache()
    p = Placement(kind, world, CAP, page_size=page)
    # windows: 0 (the query's own position), 3 (within a page of 4), 9 (across pages; longer: _window_steps' 20)
    for window, lq, causal in ((0, None, False), (9, None, False), (causal_window, 3, True), (open_window, 3, False)):
        q = torch.randn((B, HQ, D) if lq is None else (B, lq, HQ, D), dtype=torch.float16)
        out, lse = ranks_states(q, k, v, lens, p, window, causal, paged)
        ref = reference.decode(q, k, v, lens.to(torch.int32), causal=causal, window_left=window)
        assert_states_match(f"{kind} x{world} window {window} tokens {lq} causal {causal}", q, out, lse, *ref)


def test_windows_float8_softcap_schedules():
    k, v, lens = whole_cache(torch.float32)
    f8 = torch.float8_e4m3fn
    kq, vq = (k / 2).to(f8), (v / 2).to(f8)
    p = Placement("round_robin", 2, CAP, page_size=2)
    q = torch.randn(B, 2, HQ, D, dtype=torch.float16)
    for schedule in ("lean", "split"):
        out, lse = ranks_states(q, kq, vq, lens, p, 7, True, schedule=schedule, k_scale=2.0, v_scale=2.0, softcap=4.0,
                                num_programs=3, num_splits=2)
        ref = reference.decode(q, kq, vq, lens.to(torch.int32), causal=True, window_left=7, k_scale=2.0, v_scale=2.0,
                               softcap=4.0)
        assert_states_match(f"float8 capped {schedule}", q, out, lse, *ref)


def _window_steps(rank, world, windows):
    g = torch.Generator().manual_seed(3)
    records = []
    for c, (placement, paged) in enumerate((("round_robin", False), ("contiguous", True))):
        cache = ShardedKVCache(2, HKV, D, 64, placement=placement, page_size=4, paged=paged, dtype=torch.float16)
        full_k = torch.zeros(2, 64, HKV, D, dtype=torch.float16)
        full_v = torch.zeros_like(full_k)
        k0, v0 = (torch.randn(2, 30, HKV, D, generator=g).half() for _ in range(2))
        cache.append(k0, v0, counts=torch.tensor([30, 11]))
        full_k[:, :30], full_v[:, :30] = k0, v0
        for t, lq in enumerate((1, 3)):
            k1, v1 = (torch.randn(2, lq, HKV, D, generator=g).half() for _ in range(2))
            for b in range(2):
                n = int(cache.lengths[b])
                full_k[b, n:n + lq], full_v[b, n:n + lq] = k1[b], v1[b]
            cache.append(k1, v1)
            q = torch.randn((2, HQ, D) if lq == 1 else (2, lq, HQ, D), generator=g).half()
            for i, w in enumerate(windows):
                # the combine never sees the window: one method a window, turning over so that each meets every
                # window with each placement and with each query form (both at every window cost CI about 8 s more)
                method = ("allgather", "allreduce3")[(i + t + c) % 2]
                out, lse = cache.decode(q, method, causal=True, window_left=w, return_lse=True, timeout=60)
                records.append(dict(name=f"{placement} paged={paged} tokens {lq} window {w} {method}", q=q,
                                    out=out, lse=lse, lengths=cache.lengths.clone(), window=w,
                                    full=(full_k.clone(), full_v.clone())))
    return records


def test_sharded_cache_windows_over_ranks():
    results = spawn(_window_steps, 2, ((0, 5, 20),), deadline=300)
    for i, rec in enumerate(results[0]):
        fk, fv = rec["full"]
        ref = reference.decode(rec["q"], fk, fv, rec["lengths"].to(torch.int32), causal=True,
                               window_left=rec["window"])
        for r in range(2):
            assert_states_match(f"{rec['name']} rank {r}", rec["q"], results[r][i]["out"], results[r][i]["lse"], *ref)


def test_empty_shard_and_single_process():
    # a rank holding nothing of a sequence, and tree_decode without a process group
    q, k, v, sl, bt = make_inputs(2, HQ, HKV, D, [20, 0], page_size=4)
    starts = torch.tensor([14, 0], dtype=torch.int32)
    out, lse = tree_decode(q, k, v, sl, bt, return_lse=True, shard_starts=starts, window_left=5)
    assert_states_match("single process", q, out, lse, *reference.decode(q, k, v, sl, bt, window_left=5))
    empty = torch.zeros(2, 0, HKV, D, dtype=torch.float16)
    zero = torch.zeros(2, dtype=torch.int32)
    out, lse = tree_decode(q, empty, empty, zero, return_lse=True, shard_starts=zero, window_left=5)
    assert not out.any() and torch.isinf(lse).all()
    # a paged shard of no pages (a rank that holds nothing yet), one run a sequence and one a token: its run tables
    # once indexed a table row of no entries
    pool = torch.randn(3, 4, HKV, D, dtype=torch.float16)
    no_pages = torch.zeros(2, 0, dtype=torch.int32)
    q3 = torch.randn(2, 3, HQ, D, dtype=torch.float16)
    for lens, first in ((zero, zero), (torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32))):
        out, lse = tree_decode(q3, pool, pool, lens, no_pages, return_lse=True, shard_starts=first, window_left=5)
        assert not out.any() and torch.isinf(lse).all()


def test_window_errors():
    q, k, v, sl, _ = make_inputs(2, HQ, HKV, D, [20, 9])
    starts = torch.tensor([15, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="shard_starts: expected a .* int32 tensor with window_left >= 0"):
        tree_decode(q, k, v, sl, window_left=4)
    with pytest.raises(ValueError, match="window_left: expected an int >= 0 with shard_starts"):
        tree_decode(q, k, v, sl, shard_starts=starts)
    with pytest.raises(ValueError, match=r"shard_starts: expected shape \(2,\) \(as shard_seqlens\)"):
        tree_decode(q, k, v, sl, shard_starts=starts[:1], window_left=4)
    with pytest.raises(TypeError, match="shard_starts: expected dtype torch.int32"):
        tree_decode(q, k, v, sl, shard_starts=starts.long(), window_left=4)
    with pytest.raises(ValueError, match=r"shard_starts: expected starts <= shard_seqlens .* got 10 at 1"):
        tree_decode(q, k, v, sl, shard_starts=torch.tensor([15, 10], dtype=torch.int32), window_left=4)
    with pytest.raises(ValueError, match=r"at most window_left \+ 1 = 5 tokens that every query token .* got 14 at 0"):
        tree_decode(q, k, v, sl, shard_starts=torch.tensor([14, 4], dtype=torch.int32), window_left=4)
    q4 = torch.randn(2, 3, HQ, D, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"a token's start within 2 of its sequence's latest, got 11 at \[0, 0\]"):
        tree_decode(q4, k, v, sl, shard_starts=torch.tensor([[11, 15, 15], [4, 4, 4]], dtype=torch.int32),
                    window_left=4)
    cache = ShardedKVCache(2, HKV, D, 16)
    with pytest.raises(ValueError, match="window_left: expected -1 with method 'ring'"):
        cache.decode(q, "ring", window_left=3)


def test_run_tables_opcheck_and_values():
    # one launch lays each sequence's run [lo, hi) as one-token pages from hi - 1 backwards, and its length
    from leanattn.ops.window_plan import _run_tables_op, run_tables
    hi = torch.tensor([5, 0, 9], dtype=torch.int32)
    lo = torch.tensor([2, 0, 1], dtype=torch.int32)
    table, lens = run_tables(hi, lo, 10, 4, 30, 10, 10, None)
    assert lens.tolist() == [3, 0, 4]
    assert table.tolist() == [[4, 3, 2, 1], [10, 10, 10, 10], [28, 27, 26, 25]]  # (an empty run: slot 0, unread)
    bt = torch.tensor([[2, 0], [1, 2], [0, 1]], dtype=torch.int32)
    table, lens = run_tables(None, lo, 8, 3, 12, 4, 4, bt)  # pages of 4 tokens, hi = the capacity 8
    assert lens.tolist() == [3, 3, 3] and table.tolist() == [[3, 2, 1], [11, 10, 9], [7, 6, 5]]
    torch.library.opcheck(_run_tables_op, (hi, lo, 10, 4, 30, 10, 10, None))
