"""Probe: DeepSeek-V3.2's top-k sparse MLA decode as pages of one token (``leanattn.mla_decode`` with each sequence's
selected token ids as its block table), against the same number of tokens read from a contiguous cache, one process.

Cases: 16 and 128 heads (TP=8 and one GPU), top-k 2048 of a 32k context (DeepSeek-V3.2's indexer), B 1 and 32, bf16
and the float8 e4m3 cache. The selected ids are random, sorted per sequence (an indexer's order is free). Each call is
checked against the float64 reference over the gathered tokens, captured in a CUDA graph and timed in 3 interleaved
rounds (do_bench medians, L2 flushed). The floor is the selected tokens' bytes over the read ceiling.

    PYTHONPATH=src python benchmarks/probe_mla_topk.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_decode_fp8 as bf8  # noqa: E402
import bench_mla as bm  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CONTEXT, TOPK = 32768, 2048
CASES = (("16 heads B=1", 1, 16), ("16 heads B=32", 32, 16), ("128 heads B=1", 1, 128), ("128 heads B=32", 32, 128))


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    dc, dr = bm.DC, bm.DR
    for name, B, heads in CASES:
        if want and name not in want:
            continue
        qn = torch.randn(B, heads, dc, dtype=torch.bfloat16, device="cuda")
        qp = torch.randn(B, heads, dr, dtype=torch.bfloat16, device="cuda")
        pool = torch.randn(B * CONTEXT, 1, dc + dr, dtype=torch.bfloat16, device="cuda") / 4
        ids = torch.stack([torch.randperm(CONTEXT, device="cuda")[:TOPK].sort().values for _ in range(B)])
        table = (ids + torch.arange(B, device="cuda")[:, None] * CONTEXT).to(torch.int32)
        lens = torch.full((B,), TOPK, dtype=torch.int32, device="cuda")
        dense = pool.view(B, CONTEXT, dc + dr)[:, :TOPK].contiguous()  # as many tokens, read in order
        picked = pool[table.long().flatten()].view(B, TOPK, dc + dr)
        idx = [0, B - 1]
        ref = leanattn.reference.mla_decode(qn[idx], qp[idx], picked[idx, :, :dc], picked[idx, :, dc:], lens[idx])[0]
        ref_dense = leanattn.reference.mla_decode(qn[idx], qp[idx], dense[idx, :, :dc], dense[idx, :, dc:],
                                                  lens[idx])[0]
        pool8, scale = bf8.quantise(pool)
        picked8 = pool8[table.long().flatten()].view(B, TOPK, dc + dr)
        ref8 = leanattn.reference.mla_decode(qn[idx], qp[idx], picked8[idx, :, :dc], picked8[idx, :, dc:], lens[idx],
                                             k_scale=scale, v_scale=scale)[0]
        fns = {"topk pages of 1": lambda: leanattn.mla_decode(qn, qp, pool[..., :dc], pool[..., dc:], lens, table),
               "dense same tokens": lambda: leanattn.mla_decode(qn, qp, dense[..., :dc], dense[..., dc:], lens),
               "topk fp8": lambda: leanattn.mla_decode(qn, qp, pool8[..., :dc], pool8[..., dc:], lens, table,
                                                       k_scale=scale, v_scale=scale)}
        fns = bd.drop_failing(name, fns)
        refs = {"topk pages of 1": ref, "dense same tokens": ref_dense, "topk fp8": ref8}
        us, med = bd.interleaved_graph_times(name, fns, {k: refs[k] for k in fns}, rounds=3, pick=idx)
        nbytes = B * TOPK * (dc + dr) * 2
        floor = nbytes / ceiling / 1e3
        print(f"{name}: floor {floor:.1f} us (fp8 {floor / 2:.1f}) | "
              + "  ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
        rows.append(dict(case=name, batch=B, heads=heads, context=CONTEXT, topk=TOPK, bytes=nbytes, floor_us=floor,
                         us=us, median=med))
    common.write_probe(args.out, "probe_mla_topk.json", probe="top-k sparse MLA as pages of one token",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
