"""One program per SM, cuDNN's decomposition (decode probe 27).

Nsight Compute at gqa B=16 8k (decode probe 25, ``benchmarks/ncu_balance.py``): cuDNN runs 128 four-warp
programs, one per (sequence, kv head) and one per SM, with no split and no merge, at 88.2% of DRAM peak; lean
runs 256 working programs, two per SM, each half a row, merged in-kernel, at 83.6%. This probe times, in one
process and interleaved over three rounds (graph replays, do_bench medians, L2 flushed, us), lean's default
against launch configs of one program per SM (``LEANATTN_DECODE_CONFIG``: 64-token tiles over 6 stages at 4 and
8 warps, 128-token tiles over 3 stages at 8 warps; 170, 170 and 139 KB of shared memory, 144, 128 and 128
registers, compiled offline for sm_90a), each over the grid lean's cost model picks for 132 SMs and over exactly
128 programs (``num_programs=128``: whole rows where there are 128 of them, as cuDNN), and cuDNN.

    PYTHONPATH=src python benchmarks/probe_one_per_sm.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa B=16 8k", "gqa B=4 32k", "gqa B=64 4k", "gqa B=1 128k", "mha B=1 64k")
CONFIGS = {"64x6 w4": "64,4,6,1", "64x6 w8": "64,8,6,1", "128x3 w8": "128,8,3,1"}


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp, ref, call in bd.probe_cases(CASES, want):
        def exactly_128(inp=inp):
            return leanattn.decode(inp["q"], inp["k"], inp["v"], inp["seqlens"], num_programs=128)
        fns = {"default": bd.with_plans(call)}
        for label, cfg in CONFIGS.items():
            env = {"LEANATTN_DECODE_CONFIG": cfg}
            fns[label] = bd.with_plans(call, env)
            fns[label + ", 128"] = bd.with_plans(exactly_128, env)
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        grids = bd.plan_grids(fns)
        best = bd.report_best(case["name"], med, "default")
        print(f"{'':18s} grids {grids}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, best=best, grids=grids))
        del inp, call, fns
    common.write_probe(args.out, "decode_probe_one_per_sm.json",
                       probe="lean at one program per SM (cuDNN's decomposition) against the default two per SM",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
