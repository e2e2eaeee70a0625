"""The grid of the cut at full capacity, and one program per SM at D=128 (decode probe 28).

Decode probe 27 (``benchmarks/probe_one_per_sm.py``, H200, 2026-12-02 10:1x) timed lean at one program per SM,
128-token tiles over 3 stages at 8 warps (``LEANATTN_DECODE_CONFIG=128,8,3,1``): launched as exactly the 128
programs of the aligned cut (``num_programs=128``) it was 1.0-2.3% ahead of the default (64-token tiles, two per
SM) on four D=128 cases of at most 128 rows (gqa B=16 8k 133.9 against 137.1 us, cuDNN 131.6), and 2.3% behind at
gqa B=64 4k (512 rows); the same config over the persistent grid of 132, of which the kernel used the same 128,
was 1.3-1.9% slower than the launch of 128. A launch without lengths already launches only the programs of its
cut; ``LEANATTN_DECODE_EXACT_GRID=1`` (``ops/decode_config.exact_grid``) does so with lengths too, from the cut
at full capacity, the kernel then cutting the real lengths over those programs. This probe times, in one process
and interleaved over three rounds (graph replays, do_bench medians, L2 flushed, us), the default, the exact
grid, the one-per-SM config over the persistent grid and over the exact grid, and cuDNN, on the suite's
contiguous cases (ragged ones included); then the same variants of the one-sample bifurcated path and of decode
over its copied caches.

    PYTHONPATH=src python benchmarks/probe_exact_grid.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

DECODE_CASES = ("mha B=1 4k", "mha B=1 16k", "mha B=1 64k", "mha B=1 128k", "gqa B=1 32k", "gqa B=1 128k",
                "gqa B=4 32k", "gqa B=16 8k", "gqa B=64 4k", "gqa B=8 128k", "ragged-tail B=16",
                "ragged-uniform B=32", "d64 mha B=1 64k", "d256 16/8 B=1 32k")
X1_CASES = ("gqa 8k x1", "mha 8k x1", "gqa 16k x1", "gqa 32k x1", "mha 32k x1")
EXACT = {"LEANATTN_DECODE_EXACT_GRID": "1"}
ONE_PER_SM = {"LEANATTN_DECODE_CONFIG": "128,8,3,1"}
VARIANTS = {"default": {}, "exact": EXACT, "128x3 w8": ONE_PER_SM, "128x3 w8, exact": {**ONE_PER_SM, **EXACT}}


def variants(call, head_dim):
    """The probe's variants of ``call``; the one-per-SM config only at D=128 (D=256 tiles of 128 tokens do not
    fit, and D=64 is not a candidate)."""
    return {label: bd.with_plans(call, env) for label, env in VARIANTS.items()
            if head_dim == 128 or "128x3" not in label}


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp, ref, call in bd.probe_cases(DECODE_CASES, want):
        fns = variants(call, case["d"])
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        grids = bd.plan_grids(fns)
        best = bd.report_best(case["name"], med, "default")
        print(f"{'':18s} grids {grids}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, best=best, grids=grids))
        del inp, call, fns
    for name, ref, ours, copied in bb.one_sample_cases(X1_CASES, want):
        fns = {**{f"ours {k}": v for k, v in variants(ours, 128).items()},
               **{f"copied {k}": v for k, v in variants(copied, 128).items()}}
        us, med = bd.interleaved_graph_times(name, fns, ref)
        bd.report_ratios(name, med, [(f"copied {k}", f"ours {k}") for k in VARIANTS])
        out.append(dict(case=name, us=us, median=med))
        del ours, copied, fns
    common.write_probe(args.out, "decode_probe_exact_grid.json",
                       probe="lean over the exact grid of its cut at capacity and at one program per SM (D=128)",
                       timing="CUDA-graph replays, do_bench medians (L2 flushed), 3 interleaved rounds, us", cases=out)


if __name__ == "__main__":
    main()
