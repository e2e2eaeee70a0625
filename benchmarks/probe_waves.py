"""Lean over several waves of programs, and split over more splits (decode probe 25).

On the suite's uniform cases of 134-537 MB lean runs 12 us over the bytes' floor under the read flush
(gqa B=16 8k: 131 against 118.7 us) and cuDNN 6 us (124.7), though both read the same bytes; on the
one-sample bifurcated case Nsight Compute counted every SM active for only 75% of the launch (decode over
the copied caches, GQA 16k x1, 26.5k of 35.5k cycles). A persistent grid gives each program an equal share of
tiles fixed at launch, so the SMs that the memory system serves slowest finish last; a grid of several waves
lets the hardware hand the next program to whichever SM frees first. This probe times, in one process and
interleaved over three rounds (graph replays, do_bench medians, L2 flushed, us), lean with its default grid
against lean given ``num_programs`` of 256 to 2048 (two per SM is one wave at D=128, so 512 and more are
several waves; the ranges stay aligned with rows where rows divide the count), split with 4 to 16 times as
many programs as rows, and cuDNN.

    PYTHONPATH=src python benchmarks/probe_waves.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa B=16 8k", "gqa B=4 32k", "mha B=1 16k", "gqa B=1 128k", "d64 mha B=1 64k", "mha B=1 64k")
PROGRAMS = (256, 512, 1024, 2048)
SPLIT_PROGRAMS = (512, 1024, 2048)


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp, ref, call in bd.probe_cases(CASES, want):
        q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
        rows = len(case["lens"]) * case["hkv"]
        fns = {"lean": call}
        for n in PROGRAMS:
            fns[f"lean {n}"] = lambda n=n: leanattn.decode(q, k, v, sl, num_programs=n)
        for n in SPLIT_PROGRAMS:
            fns[f"split {n}"] = lambda s=max(n // rows, 1): leanattn.decode(q, k, v, sl, schedule="split",
                                                                            num_splits=s)
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        best = bd.report_best(case["name"], med, "lean")
        out.append(dict(case=case["name"], rows=rows, us=us, median=med, best=best))
        del inp, call, fns
    common.write_probe(args.out, "decode_probe_waves.json",
                       probe="lean over one wave (default grid) against several waves, split over more splits",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
