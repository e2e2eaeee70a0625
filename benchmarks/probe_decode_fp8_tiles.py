"""Launch configs for float8 caches (decode probe 50): are bf16's tiles too small once a token is half the bytes?

``bench_decode_fp8.py`` (H200, 2026-12-03) measured decode over e4m3 caches at 42-65% of the read ceiling in float8
bytes under bf16's launch configs (``ops/decode_config.py``), where a float8 tile carries half the bytes. This probe
times, on suite cases with float8 e4m3 caches (``bench_decode_fp8.fp8_inputs``, paged ones included), the default
config against others set through ``LEANATTN_DECODE_CONFIG`` (``block_n,num_warps,num_stages,ctas_per_sm``), and our
bf16 decode of the dequantised cache beside them: each checked against the float64 reference, then CUDA-graph replays
in interleaved rounds (do_bench, L2 flushed). Runs of 2026-12-03 (raw ``decode_probe_fp8_tiles_H200*.json``): with
fp16 products, 128-token tiles at 4 warps over 3 stages 11-18% ahead of 64-token ones on the five D=128 contiguous
cases, now ``_CUDA_FP8_TABLE``; offline (Triton 3.6, sm_90a) 249 registers, no spills, 2 programs an SM.

    PYTHONPATH=src python benchmarks/probe_decode_fp8_tiles.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_decode_fp8 as bf  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("mha B=1 64k", "gqa B=1 128k", "gqa B=4 32k", "gqa B=64 4k", "ragged-uniform B=32", "d64 mha B=1 64k",
         "d256 16/8 B=1 32k", "paged16 gqa B=4 32k", "paged64 gqa B=4 32k", "paged64 ragged-tail")
# per head dim: configs (block_n, num_warps, num_stages, ctas_per_sm) beside the default (at D=128 since 2026-12-03
# 128,4,3,2 for contiguous caches, 64,4,3,2 for paged ones)
CONFIGS = {64: ("256,4,2,4", "256,8,2,2", "128,4,3,4"),
           128: ("128,4,3,2", "64,4,3,2", "128,4,4,2", "256,8,2,1", "128,8,3,2"),
           256: ("128,4,2,1", "128,8,2,1", "64,4,4,1")}


def measure(case) -> dict:
    inp = bf.fp8_inputs(case)
    q, sl = inp["q"], inp["seqlens"]
    bt = inp["block_table8"]
    ref, _ = leanattn.reference.decode(q, inp["k8"], inp["v8"], sl, bt, k_scale=inp["ks"], v_scale=inp["vs"])
    fp8 = lambda: leanattn.decode(q, inp["k8"], inp["v8"], sl, bt, k_scale=inp["ks"], v_scale=inp["vs"])  # noqa: E731
    k, v = (inp["k_pages"], inp["v_pages"]) if bt is not None else (inp["k"], inp["v"])
    fns = {"default": bd.with_plans(fp8),
           **{cfg: bd.with_plans(fp8, {"LEANATTN_DECODE_CONFIG": cfg}) for cfg in CONFIGS[case["d"]]},
           "bf16 cache": bd.with_plans(lambda: leanattn.decode(q, k, v, sl, bt))}
    us, med = bd.interleaved_graph_times(case["name"], fns, ref, rounds=3)
    best = min((n for n in med if n != "bf16 cache"), key=med.get)
    print(f"{case['name']:20s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | best {best}: {med['default'] / med[best]:.3f}x default, {med['bf16 cache'] / med[best]:.2f}x bf16",
          flush=True)
    return dict(case=case["name"], us=us, median=med, best=best, grids=bd.plan_grids(fns))


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case in bd.suite():
        if case["name"] in CASES and (not want or case["name"] in want):
            out.append(measure(case))
            torch.cuda.empty_cache()  # the case's tensors went with measure's frame
    common.write_probe(args.out, "decode_probe_fp8_tiles.json", cases=out, timing=bd.GRAPH_TIMING,
                       probe="float8 e4m3 caches: the default launch config against larger tiles")


if __name__ == "__main__":
    main()
