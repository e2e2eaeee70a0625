"""The GPU launches of one call of each public op and path: how many, and which.

A replayed CUDA graph still pays a few microseconds for each launch it holds, so a small torch op left in a call's
path costs as much as a short kernel (the grouping of prompts by torch ops cost 31 us of a 105.6 us call on an H100,
``kernels/group_layout.py``). For each scenario this makes one warm-up call, then records one call under the torch
profiler and lists its kernels (memsets and copies included), validation off where the op has the switch. Small
shapes: the count, not the time, is the point.

    PYTHONPATH=src python benchmarks/launch_audit.py [--out DIR]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import leanattn  # noqa: E402

DEV, BF = "cuda", torch.bfloat16
B, HQ, HKV, D, N, P = 4, 32, 8, 128, 1024, 2048


def r(*shape, dtype=BF):
    return torch.randn(*shape, dtype=dtype, device=DEV)


def i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEV)


def scenarios():
    """name -> zero-argument call."""
    q, k, v = r(B, HQ, D), r(B, N, HKV, D), r(B, N, HKV, D)
    lens = i32([N, N // 2, 7, 0])
    pages = r(B * N // 16, 16, HKV, D)
    table = torch.randperm(B * N // 16, device=DEV).to(torch.int32).view(B, N // 16)
    q4 = r(B, 4, HQ, D)
    packed = r(10, HQ, D)
    cu = i32([0, 4, 5, 8, 10])
    sinks = torch.randn(HQ, device=DEV)
    slopes = torch.rand(HQ, device=DEV)
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    pk, pv = r(P, HKV, D), r(P, HKV, D)
    gk, gv = r(2, P, HKV, D), r(2, P, HKV, D)
    ids, plens = i32([0, 1, 1, 0]), i32([P, P // 2])
    ptab = torch.arange(2 * P // 16, device=DEV, dtype=torch.int32).view(2, P // 16)
    pool_k, pool_v = r(2 * P // 16, 16, HKV, D), r(2 * P // 16, 16, HKV, D)
    q64 = r(64, HQ, D)
    k64, v64 = r(64, 256, HKV, D), r(64, 256, HKV, D)
    lens64 = torch.full((64,), 256, dtype=torch.int32, device=DEV)
    qn, qp, ckv, kpe = r(B, 16, 512), r(B, 16, 64), r(B, N, 512), r(B, N, 64)
    outs, lses = r(3, B, HQ, D, dtype=torch.float32), torch.randn(3, B, HQ, device=DEV)
    T = 2048
    sq, sk, sv = r(1, T, 8, 64), r(1, T, 8, 64), r(1, T, 8, 64)
    keep = torch.rand(1, T, 8, device=DEV) > 0.5
    bq = torch.randint(0, 16, (1, T, 8), device=DEV, dtype=torch.int32)
    dec = leanattn.decode
    bif = leanattn.bifurcated_decode
    return {
        "decode contiguous": lambda: dec(q, k, v, lens, validate=False),
        "decode split": lambda: dec(q, k, v, lens, schedule="split", validate=False),
        "decode paged 16": lambda: dec(q, pages, pages, lens, table, validate=False),
        "decode 4 tokens causal": lambda: dec(q4, k, v, lens.clamp(min=4), causal=True, validate=False),
        "decode packed queries": lambda: dec(packed, k, v, lens.clamp(min=4), cu_seqlens_q=cu, max_seqlen_q=4,
                                             causal=True, validate=False),
        "decode window 256": lambda: dec(q, k, v, lens, window_left=256, validate=False),
        "decode sinks": lambda: dec(q, k, v, lens, sinks=sinks, validate=False),
        "decode alibi": lambda: dec(q, k, v, lens, alibi_slopes=slopes, validate=False),
        "decode float8": lambda: dec(q, k8, v8, lens, k_scale=0.5, v_scale=0.5, validate=False),
        "merge_states 3": lambda: leanattn.merge_states(outs, lses),
        "bifurcated x1 (concat)": lambda: bif(q[:1], pk, pv, k[:1], v[:1], lens[:1], validate=False),
        "bifurcated x4 (states)": lambda: bif(q, pk, pv, k, v, lens, validate=False),
        "bifurcated x64 (overlap on sm_90)": lambda: bif(q64, pk, pv, k64, v64, lens64, validate=False),
        "bifurcated 2 prompts": lambda: bif(q, gk, gv, k, v, lens, None, plens, ids, max_group_size=2,
                                            validate=False),
        "bifurcated paged prefix": lambda: bif(q, pool_k, pool_v, k, v, lens, prefix_ids=ids, max_group_size=2,
                                               prefix_block_table=ptab, validate=False),
        "bifurcated window 256": lambda: bif(q, pk, pv, k, v, lens, window_left=256, validate=False),
        "bifurcated window 1100 (own tokens in the pass)": lambda: bif(q, pk, pv, k, v, lens, window_left=1100,
                                                                       validate=False),
        "bifurcated window 2 prompts": lambda: bif(q, gk, gv, k, v, lens, None, plens, ids, max_group_size=2,
                                                   window_left=256, validate=False),
        "bifurcated 4 tokens causal": lambda: bif(q4, pk, pv, k, v, lens.clamp(min=4), causal=True, validate=False),
        "bifurcated sinks": lambda: bif(q, pk, pv, k, v, lens, sinks=sinks, validate=False),
        "cascade 2 levels + own": lambda: leanattn.cascade_decode(q, [(pk, pv), (gk, gv, plens, ids)], k, v, lens,
                                                                  max_group_size=2, validate=False),
        "mla": lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens),
        "qk_sparse fwd": lambda: leanattn.qk_sparse_attention(sq, sk, sv, keep, keep),
        "hash_sparse fwd": lambda: leanattn.hash_sparse_attention(sq, sk, sv, bq, bq),
    }


def kernels_of(fn):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name, fn in scenarios().items():
        try:
            names = kernels_of(fn)
        except Exception as exc:  # reported, and the audit goes on
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            rows.append(dict(scenario=name, error=f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        counts = collections.Counter(n[:70] for n in names)
        print(f"{name}: {len(names)} launches | " + "; ".join(f"{c}x {n}" for n, c in counts.items()), flush=True)
        rows.append(dict(scenario=name, launches=len(names), kernels=dict(counts)))
    common.write_probe(args.out, "launch_audit.json", probe="GPU launches of one call of each op and path",
                       shapes=dict(B=B, Hq=HQ, Hkv=HKV, D=D, N=N, P=P), scenarios=rows)


if __name__ == "__main__":
    main()
