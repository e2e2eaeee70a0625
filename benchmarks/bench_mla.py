"""MLA decode (``leanattn.mla_decode``; DeepSeek-V3's 512-wide latent and 64 rotary columns, bf16) against the
same attention computed by the peers in the image, one process.

Every query head reads the one latent cache, so the floor is the cache's bytes (``N x 576 x 2`` a sequence) over the
read ceiling, whatever the head count. For each case: ``mla_decode`` over FlashMLA's paged layout (64-token pages
of one 576-wide cache, split into the two views), lean and split schedules; SDPA with ``enable_gqa`` over the
concatenated query and keys (``(B, H, 1, 576)`` against ``(B, 1, N, 576)``, values the first 512 columns; one call,
the lengths equal) and ``flex_attention`` (compiled, ``dynamic=True``) likewise; each checked against the float64
reference on its first and last sequence, captured in a CUDA graph and timed in 3 interleaved rounds (do_bench
medians, L2 flushed). A peer that cannot run a case is reported and skipped.

    PYTHONPATH=src python benchmarks/bench_mla.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

DC, DR, PAGE = 512, 64, 64
# (name, batch, context, query heads): 16 heads a GPU at TP=8, 128 on one GPU
CASES = (("16 heads B=1 32k", 1, 32768, 16), ("16 heads B=8 8k", 8, 8192, 16), ("16 heads B=32 4k", 32, 4096, 16),
         ("16 heads B=128 1k", 128, 1024, 16), ("128 heads B=1 32k", 1, 32768, 128),
         ("128 heads B=16 4k", 16, 4096, 128))


def make_case(B, n, heads):
    """Inputs of one case: ``qn (B, H, 512)``, ``qp (B, H, 64)``, the wide cache ``(B, n, 1, 576)``, the lengths, its
    paged views ``ckv``/``kpe`` and their block table, the rows checked (first and last sequence) and their float64
    reference output."""
    qn = torch.randn(B, heads, DC, dtype=torch.bfloat16, device="cuda")
    qp = torch.randn(B, heads, DR, dtype=torch.bfloat16, device="cuda")
    wide = torch.randn(B, n, 1, DC + DR, dtype=torch.bfloat16, device="cuda") / 4
    lens = torch.full((B,), n, dtype=torch.int32, device="cuda")
    pages = wide.view(B * n // PAGE, PAGE, 1, DC + DR)
    table = torch.arange(B * n // PAGE, dtype=torch.int32, device="cuda").view(B, -1)
    idx = [0, B - 1]
    ref = leanattn.reference.mla_decode(qn[idx], qp[idx], wide[idx, ..., :DC], wide[idx, ..., DC:], lens[idx])[0]
    return qn, qp, wide, lens, pages[..., :DC], pages[..., DC:], table, idx, ref


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    for name, B, n, heads in CASES:
        if want and name not in want:
            continue
        qn, qp, wide, lens, ckv, kpe, table, idx, ref = make_case(B, n, heads)
        scale = (DC + DR) ** -0.5
        q4 = torch.cat([qn, qp], -1).unsqueeze(2)                      # (B, H, 1, 576)
        k4 = wide.transpose(1, 2)                                       # (B, 1, N, 576)
        v4 = wide[..., :DC].transpose(1, 2)                             # (B, 1, N, 512)
        fns = {"lean": lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table),
               "split": lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table, schedule="split"),
               "sdpa": lambda: F.scaled_dot_product_attention(q4, k4, v4, scale=scale, enable_gqa=True).squeeze(2),
               "flex": lambda: bd.compiled_flex()(q4, k4, v4, scale=scale, enable_gqa=True).squeeze(2)}
        fns = bd.drop_failing(name, fns)
        us, med = bd.interleaved_graph_times(name, fns, ref, rounds=3, pick=idx)
        nbytes = B * n * (DC + DR) * 2
        floor = nbytes / ceiling / 1e3
        print(f"{name:18s} lean {med['lean']:.1f}  split {med['split']:.1f} us  floor {floor:.1f} "
              f"({floor / med['lean']:.0%} of the ceiling)" + bd.peer_summary(med, ("sdpa", "flex"), "lean"),
              flush=True)
        rows.append(dict(case=name, batch=B, context=n, heads=heads, dc=DC, dr=DR, page=PAGE, bytes=nbytes,
                         floor_us=floor, us=us, median=med, gbs=nbytes / med["lean"] / 1e3))
    common.write_probe(args.out, "bench_mla.json", probe="MLA decode against SDPA and flex over the concatenated "
                       "cache", timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
