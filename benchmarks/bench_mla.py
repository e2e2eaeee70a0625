"""MLA decode (``leanattn.mla_decode``; DeepSeek-V3's 512-wide latent and 64 rotary columns, bf16) against the
same attention computed by the peers in the image, one process.

Every query head reads the one latent cache, so the floor is the cache's bytes (``N x 576 x 2`` a sequence) over the
read ceiling, whatever the head count. For each case: ``mla_decode`` over FlashMLA's paged layout (64-token pages
of one 576-wide cache, split into the two views), lean and split schedules; SDPA with ``enable_gqa`` over the
concatenated query and keys (``(B, H, 1, 576)`` against ``(B, 1, N, 576)``, values the first 512 columns; one call,
the lengths equal) and ``flex_attention`` (compiled, ``dynamic=True``) likewise; and ``mla_decode`` over the same
cache quantised to float8 e4m3 with one per-tensor scale (vLLM's fp8 MLA cache; its floor half the bytes). Each
checked against the float64 reference on its first and last sequence (the float8 calls against the reference over
the dequantised cache), captured in a CUDA graph and timed in 3 interleaved rounds (do_bench medians, L2 flushed). A
peer that cannot run a case is reported and skipped.

    PYTHONPATH=src python benchmarks/bench_mla.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_decode_fp8 as bf8  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

DC, DR, PAGE = 512, 64, 64
# (name, batch, context, query heads): 16 heads a GPU at TP=8, 128 on one GPU
CASES = (("16 heads B=1 32k", 1, 32768, 16), ("16 heads B=8 8k", 8, 8192, 16), ("16 heads B=32 4k", 32, 4096, 16),
         ("16 heads B=128 1k", 128, 1024, 16), ("128 heads B=1 32k", 1, 32768, 128),
         ("128 heads B=16 4k", 16, 4096, 128))


def paged_views(wide, B, n):
    """``(ckv, kpe)``: FlashMLA's 64-token pages of the wide cache ``(B, n, 1, 576)``, split into the two views."""
    pages = wide.view(B * n // PAGE, PAGE, 1, DC + DR)
    return pages[..., :DC], pages[..., DC:]


def make_case(B, n, heads):
    """Inputs of one case: ``qn (B, H, 512)``, ``qp (B, H, 64)``, the wide cache ``(B, n, 1, 576)``, the lengths, its
    paged views ``ckv``/``kpe`` and their block table, the rows checked (first and last sequence) and their float64
    reference output."""
    qn = torch.randn(B, heads, DC, dtype=torch.bfloat16, device="cuda")
    qp = torch.randn(B, heads, DR, dtype=torch.bfloat16, device="cuda")
    wide = torch.randn(B, n, 1, DC + DR, dtype=torch.bfloat16, device="cuda") / 4
    lens = torch.full((B,), n, dtype=torch.int32, device="cuda")
    table = torch.arange(B * n // PAGE, dtype=torch.int32, device="cuda").view(B, -1)
    idx = [0, B - 1]
    ref = leanattn.reference.mla_decode(qn[idx], qp[idx], wide[idx, ..., :DC], wide[idx, ..., DC:], lens[idx])[0]
    return qn, qp, wide, lens, *paged_views(wide, B, n), table, idx, ref


def fp8_case(qn, qp, wide, lens, idx):
    """The wide cache in float8 e4m3 under one per-tensor scale (its largest magnitude at e4m3's 448): ``(scale,
    ckv8, kpe8, ref8)``, the paged views and the float64 reference over the dequantised cache."""
    B, n = wide.shape[:2]
    wide8, scale = bf8.quantise(wide)
    ref8 = leanattn.reference.mla_decode(qn[idx], qp[idx], wide8[idx, ..., :DC], wide8[idx, ..., DC:], lens[idx],
                                         k_scale=scale, v_scale=scale)[0]
    return (scale, *paged_views(wide8, B, n), ref8)


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    for name, B, n, heads in CASES:
        if want and name not in want:
            continue
        qn, qp, wide, lens, ckv, kpe, table, idx, ref = make_case(B, n, heads)
        s8, ckv8, kpe8, ref8 = fp8_case(qn, qp, wide, lens, idx)
        scale = (DC + DR) ** -0.5
        q4 = torch.cat([qn, qp], -1).unsqueeze(2)                      # (B, H, 1, 576)
        k4 = wide.transpose(1, 2)                                       # (B, 1, N, 576)
        v4 = wide[..., :DC].transpose(1, 2)                             # (B, 1, N, 512)
        fns = {"lean": lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table),
               "split": lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table, schedule="split"),
               "sdpa": lambda: F.scaled_dot_product_attention(q4, k4, v4, scale=scale, enable_gqa=True).squeeze(2),
               "flex": lambda: bd.compiled_flex()(q4, k4, v4, scale=scale, enable_gqa=True).squeeze(2),
               "lean fp8": lambda: leanattn.mla_decode(qn, qp, ckv8, kpe8, lens, table, k_scale=s8, v_scale=s8),
               "split fp8": lambda: leanattn.mla_decode(qn, qp, ckv8, kpe8, lens, table, schedule="split",
                                                        k_scale=s8, v_scale=s8)}
        fns = bd.drop_failing(name, fns)
        refs = {label: ref8 if label.endswith("fp8") else ref for label in fns}
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        nbytes = B * n * (DC + DR) * 2
        floor = nbytes / ceiling / 1e3
        fp8 = ""
        if "lean fp8" in med:
            fp8 = (f"  fp8 {med['lean fp8']:.1f} us ({floor / 2 / med['lean fp8']:.0%} of the ceiling, "
                   f"{med['lean fp8'] / med['lean']:.2f}x bf16)")
        print(f"{name:18s} lean {med['lean']:.1f}  split {med['split']:.1f} us  floor {floor:.1f} "
              f"({floor / med['lean']:.0%} of the ceiling)" + fp8 + bd.peer_summary(med, ("sdpa", "flex"), "lean"),
              flush=True)
        rows.append(dict(case=name, batch=B, context=n, heads=heads, dc=DC, dr=DR, page=PAGE, bytes=nbytes,
                         floor_us=floor, us=us, median=med, gbs=nbytes / med["lean"] / 1e3, fp8_scale=s8,
                         fp8_bytes=nbytes // 2, fp8_floor_us=floor / 2,
                         fp8_gbs=nbytes / 2 / med["lean fp8"] / 1e3 if "lean fp8" in med else None))
    common.write_probe(args.out, "bench_mla.json", probe="MLA decode against SDPA and flex over the concatenated "
                       "cache", timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
