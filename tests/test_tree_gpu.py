"""GPU-only tree/ring decode tests: NCCL between 2, 4 or 8 GPUs at realistic sizes, CUDA graphs.

Each world size is skipped without that many CUDA devices. Run on the device machine (``pytest tests/test_tree_gpu.py``).
"""
from __future__ import annotations

import os

import pytest
import torch

from leanattn import reference
from leanattn.distributed import ring_decode, spawn, tree_decode
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")


def _shards(world, B, hq, hkv, d, lens, dtype):
    """CPU inputs: ``q``, per-rank contiguous shards ``(k, v, lens)`` and the whole cache."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, hq, d, generator=g).to(dtype)
    shards, ks, vs = [], [[] for _ in range(B)], [[] for _ in range(B)]
    for r in range(world):
        n = max(lens[r])
        k = torch.randn(B, n, hkv, d, generator=g).to(dtype)
        v = torch.randn(B, n, hkv, d, generator=g).to(dtype)
        shards.append((k, v, torch.tensor(lens[r], dtype=torch.int32)))
        for b in range(B):
            ks[b].append(k[b, :lens[r][b]])
            vs[b].append(v[b, :lens[r][b]])
    tot = [sum(x.shape[0] for x in ks[b]) for b in range(B)]
    kw = torch.zeros(B, max(tot), hkv, d, dtype=dtype)
    vw = torch.zeros_like(kw)
    for b in range(B):
        kw[b, :tot[b]], vw[b, :tot[b]] = torch.cat(ks[b]), torch.cat(vs[b])
    return q, shards, (kw, vw, torch.tensor(tot, dtype=torch.int32))


def _run(rank, world, q, shards, graphs, token_seqlens=None, starts=None, window_left=-1):
    """Every method on this rank's shard, and with ``graphs`` a replay of the all-gather tree; ``token_seqlens``:
    per rank, per-token lengths ``(B, Lq)`` in place of the shard's; ``starts``: per rank, a sliding window's
    ``shard_starts`` (the ring, which has no window, then left out)."""
    dev = torch.device("cuda", torch.cuda.current_device())
    k, v, sl = (x.to(dev) for x in shards[rank])
    if token_seqlens is not None:
        sl = token_seqlens[rank].to(dev)
    q = q.to(dev)
    win = {} if starts is None else dict(shard_starts=starts[rank].to(dev), window_left=window_left)
    methods = [("allgather", lambda: tree_decode(q, k, v, sl, variant="allgather", return_lse=True, **win)),
               ("allreduce3", lambda: tree_decode(q, k, v, sl, variant="allreduce3", return_lse=True, **win))]
    if starts is None:
        methods.append(("ring", lambda: ring_decode(q, k, v, sl, return_lse=True)))
    res = {}
    for name, fn in methods:
        out, lse = fn()
        res[name] = (out.cpu(), lse.cpu())
    if graphs:  # tree_decode (after its first, checked call) captures into a CUDA graph
        res["graph"] = _replayed(lambda: tree_decode(q, k, v, sl, return_lse=True, **win))
    return res


def _replayed(fn):
    """``fn()``'s ``(out, lse)`` on the CPU from one replay of a CUDA graph it was captured in (after a warm-up call
    on a side stream)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, lse = fn()
    g.replay()
    torch.cuda.synchronize()
    return out.cpu(), lse.cpu()


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv", [(32, 8), (32, 32)])
def test_gpus_vs_reference(world, dtype, hq, hkv):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} CUDA devices, found {torch.cuda.device_count()}")
    # unequal shards; sequences 1 and 2 live on one rank only
    lens = [[30000, 0, 777], [12345, 5, 0]] + [[4000 * r + 1, 0, 0] for r in range(2, world)]
    q, shards, whole = _shards(world, 3, hq, hkv, 128, lens, dtype)
    results = spawn(_run, world, (q, shards, True), backend="nccl", deadline=300)
    check_results(results, *reference.decode(q, *whole), TOLERANCE[dtype])


def check_results(results, ref_out, ref_lse, tol):
    """Every rank's every method within ``tol`` of the reference, its graph replay equal to its eager all-gather,
    and every rank's all-gather equal to rank 0's."""
    for r, res in enumerate(results):
        for name, (out, lse) in res.items():
            assert_rel_close(f"{name} rank {r}", out, ref_out, tol)
            assert_lse_close(f"{name} rank {r}", lse, ref_lse, atol=tol)
        assert torch.equal(res["graph"][0], res["allgather"][0]), "graph replay differs from eager"
    for r in range(1, len(results)):
        assert torch.equal(results[0]["allgather"][0], results[r]["allgather"][0]), f"rank {r} differs from rank 0"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv", [(32, 8), (32, 32)])
def test_gpus_draft_tokens_vs_reference(dtype, hq, hkv):
    # 4 draft tokens a sequence, causal, split over the two ranks as round-robin pages of 2 would split them:
    # rank r holds drafts r*2 .. r*2+1 after its share of the context
    world, Lq, B = 2, 4, 2
    lens = [[20000 + 2, 3000 + 2], [20000 + 2, 3000 + 2]]
    q, shards, _ = _shards(world, B, hq, hkv, 128, lens, dtype)
    q4 = torch.randn(B, Lq, hq, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    t = torch.arange(Lq)
    # token t sees rank 0's context and its drafts 0, 1 (those up to t), rank 1's context and drafts 2, 3
    tok = [torch.stack([torch.tensor(lens[r][b]) - 2 + ((t + 1) - 2 * r).clamp(0, 2) for b in range(B)]).to(torch.int32)
           for r in range(world)]
    results = spawn(_run, world, (q4, shards, True, tok), backend="nccl", deadline=300)
    # reference: the whole cache in position order (context r0, context r1, drafts r0, drafts r1), causal
    hk = [s[0] for s in shards]
    hv = [s[1] for s in shards]
    ks, vs = [], []
    for b in range(B):
        parts = [(x[b, :lens[r][b] - 2], y[b, :lens[r][b] - 2]) for r, (x, y) in enumerate(zip(hk, hv))]
        parts += [(x[b, lens[r][b] - 2:lens[r][b]], y[b, lens[r][b] - 2:lens[r][b]]) for r, (x, y) in
                  enumerate(zip(hk, hv))]
        ks.append(torch.cat([a for a, _ in parts]))
        vs.append(torch.cat([c for _, c in parts]))
    n = [x.shape[0] for x in ks]
    kw = torch.zeros(B, max(n), hkv, 128, dtype=dtype)
    vw = torch.zeros_like(kw)
    for b in range(B):
        kw[b, :n[b]], vw[b, :n[b]] = ks[b], vs[b]
    check_results(results, *reference.decode(q4, kw, vw, torch.tensor(n, dtype=torch.int32), causal=True),
                  TOLERANCE[dtype])


@pytest.mark.parametrize("window", [127, 4095])
def test_gpus_sliding_window_vs_reference(window):
    # a window over two contiguous halves (rank 0 the first tokens, rank 1 the rest): one token and 4 causal draft
    # tokens; the window reaches into rank 0's half or not, by sequence
    world, B, dtype = 2, 3, torch.bfloat16
    lens = [[20000, 100, 3000], [20000, 50, 0]]
    q, shards, whole = _shards(world, B, 32, 8, 128, lens, dtype)
    total = torch.tensor([a + b for a, b in zip(*lens)])
    # each rank's tokens of a sequence are one run of positions, from the sum of the ranks' before it: a token's
    # window starts on a rank at the tokens of the run before its window's first position
    for lq in (1, 4):
        qq = q if lq == 1 else torch.randn(B, lq, 32, 128, generator=torch.Generator().manual_seed(2)).to(dtype)
        ends, starts = [], []
        for r in range(world):
            first = torch.tensor([sum(lens[i][b] for i in range(r)) for b in range(B)])     # global first position
            pos = total[:, None] - lq + torch.arange(lq)
            hi = (pos + 1 - first[:, None]).clamp(0, None).clamp(max=torch.tensor(lens[r])[:, None])
            lo = (pos - window - first[:, None]).clamp(0, None).clamp(max=torch.tensor(lens[r])[:, None])
            ends.append(hi.to(torch.int32) if lq > 1 else None)
            starts.append((lo if lq > 1 else lo[:, 0]).to(torch.int32).contiguous())
        tok = ends if lq > 1 else None
        results = spawn(_run, world, (qq, shards, True, tok, starts, window), backend="nccl", deadline=300)
        ref = reference.decode(qq, *whole, causal=True, window_left=window)
        check_results(results, *ref, TOLERANCE[dtype])


def test_single_process_on_another_device():
    # tensors on cuda:1 while cuda:0 is current (no torch.cuda.set_device): every launch follows q's device
    B, dtype = 3, torch.bfloat16
    q, shards, _ = _shards(1, B, 32, 8, 128, [[3000, 1, 0]], dtype)
    k, v, lens = (t.to("cuda:1") for t in shards[0])
    q = q.to("cuda:1")
    with torch.cuda.device(0):
        for fn in (tree_decode, ring_decode):
            out, lse = fn(q, k, v, lens, return_lse=True)
            ref, ref_lse = reference.decode(q, k, v, lens)
            assert out.device == q.device
            assert_rel_close(fn.__name__, out, ref, TOLERANCE[dtype])
            assert_lse_close(fn.__name__, lse, ref_lse, 1e-2)
        # a window of 901 keys: each sequence's first key on the (only) rank is its last less 900
        first = (lens - 901).clamp(min=0).to(torch.int32)
        out = tree_decode(q, k, v, lens, shard_starts=first, window_left=900)
        ref = reference.decode(q, k, v, lens, window_left=900)[0]
        assert_rel_close("window", out, ref, TOLERANCE[dtype])
