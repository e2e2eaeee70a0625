"""The overlap path's Gluon prefix at 128 stacked rows a program against the default (probe 37).

At 64 rows a program (one warp group) the prefix needs two programs per SM where its FLOPs dominate (GQA 16k and
32k), and two programs of 115 KB leave no room on the SM for the own tokens, which then run after the prefix. At 128
rows (two warp groups of 4 warps sharing one K/V ring, 131 KB at 3 stages, 164 KB at 4) one program per SM keeps the
tensor cores as busy as two, and two own-token programs of 38 KB still fit beside it (one at 4 stages). A launch
sweep (2026-12-02 19:5x, ``gpu_check.sh bif-prefix-rows``) had 128 rows 9-12% ahead at GQA 16k x64 and x256, 8% at
MHA 32k x256 (the noisiest case), level at GQA 32k x64 and behind at GQA 32k x256, GQA 8k x64 and MHA x16. This
probe times the variants interleaved over five rounds (graph replays, do_bench medians, L2 flushed, us) on those
cases and on prefixes between the suite's (12k, 24k) and 128 samples, to place the rule's threshold. Its first run
had the 64-row rule as the default; the default is now ``prefix_rows``' rule and ``64 rows`` forces the one before.
``group x prefix / own tokens`` (the prefix FLOPs over the own bytes, up to a constant) is 128 at GQA 8k and MHA
32k, 256 at GQA 16k, 384 at GQA 24k, 512 at GQA 32k.

    PYTHONPATH=src python benchmarks/probe_prefix_rows.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

K = 1024
CASES = [("gqa", 8 * K, 256), ("gqa", 12 * K, 64), ("gqa", 16 * K, 64), ("gqa", 16 * K, 128), ("gqa", 16 * K, 256),
         ("gqa", 24 * K, 64), ("gqa", 24 * K, 256), ("gqa", 32 * K, 64), ("gqa", 32 * K, 256), ("mha", 16 * K, 256),
         ("mha", 32 * K, 256)]
# "64 rows": the rule before probe 37 (prefix_per_sm programs per SM, prefix_stages' ring); "default": the rule now
VARIANTS = {"64 rows": "0,0,4,0,0,0,0,0,0,4", "default": None, "128 rows 3 stages": "0,0,8,3,1,0,0,0,0,4",
            "128 rows 4 stages": "0,0,8,4,1,0,0,0,0,4"}


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for model, prefix, n in CASES:
        hq, hkv = bb.MODELS[model]
        case = dict(name=f"{model} {prefix // K}k x{n}", model=model, hq=hq, hkv=hkv, d=128, prefix=prefix, samples=n,
                    own=bb.OWN)
        if want and case["name"] not in want:
            continue
        inp = bb.make_inputs(case, "cuda", copies=False)
        call = bb.ours_call(inp)
        fns = {name: bd.with_plans(call, env=None if cfg is None else {"LEANATTN_BIFURCATED_CONFIG": cfg})
               for name, cfg in VARIANTS.items()}
        us, med = bb.interleaved_variants(case, inp, fns)
        info = {n: [{k: p.info.get(k) for k in ("path", "prefix_rows", "prefix_stages", "splits", "prefix_programs")}
                    for p in f.plans[1].values()] for n, f in fns.items()}
        bd.report_ratios(case["name"], med, [(v, "64 rows") for v in VARIANTS if v != "64 rows"])
        print(f"{'':18s} rounds: {us}  plans: {info}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, plans=info))
        del inp, fns, call
        torch.cuda.empty_cache()
    common.write_probe(args.out, "bifurcated_probe_prefix_rows.json",
                       probe="overlap path: the Gluon prefix at 128 rows a program (two warp groups, one K/V ring) "
                             "against 64 rows, and the default (ops/bifurcated_overlap.prefix_rows)", variants=VARIANTS,
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out)


if __name__ == "__main__":
    main()
