"""Tiles addressed as a scalar base plus offsets fixed for the piece (probe 30).

The tile loops of decode (``kernels/attend.attend_tiles``) and of the one-sample bifurcated path
(``attend_concat``) form a 64-bit address per row of every tile. Nsight Compute at GQA 16k x1 (probe 29's
``ncu-x1-source``) put the one-sample path's gap to decode over copied caches in the code of each piece around
the loop: 65 more SASS instructions a piece (540 against 475), 40 of them IMAD and 16 SEL, and 33 more stall
samples a piece, the loop itself level. With offsets fixed for the piece (32-bit, computed once) and a scalar
base per tile, the kernels compile offline (Triton 3.6, sm_90a, GQA 32/8 D=128) to a tile loop of 332 SASS
instructions instead of 379 (one-sample) and 391 (decode), and 141 and 137 instructions before a piece's first
load instead of 161 and 147. This probe times, in one process and interleaved over three rounds (graph replays,
do_bench medians, L2 flushed, us), the one-sample path with them (``bifurcated_launch.CONCAT_SAME_STRIDE``, the
default) and without, and decode over its copied caches. Its first run (H200, 2026-12-02 10:3x, raw
``probe_piece_offsets_H200.json``) also timed decode with the same form, which measured level and was removed.

    PYTHONPATH=src python benchmarks/probe_piece_offsets.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

from leanattn.ops import bifurcated_launch  # noqa: E402

X1_CASES = ("gqa 8k x1", "mha 8k x1", "gqa 16k x1", "mha 16k x1", "gqa 32k x1", "mha 32k x1")


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for name, ref, ours, copied in bb.one_sample_cases(X1_CASES, want):
        fns = {"ours, offsets": bd.with_plans(ours),
               "ours, row addresses": bd.with_plans(ours, patches=[(bifurcated_launch, "CONCAT_SAME_STRIDE", False)]),
               "copied": bd.with_plans(copied)}
        us, med = bd.interleaved_graph_times(name, fns, ref)
        bd.report_ratios(name, med, [("copied", "ours, offsets"), ("copied", "ours, row addresses")])
        out.append(dict(case=name, us=us, median=med))
        del ours, copied, fns
    common.write_probe(args.out, "bifurcated_probe_piece_offsets.json",
                       probe="one-sample path: tiles as a scalar base plus offsets fixed for the piece, against a "
                             "64-bit address per row",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
