"""The overlap path with its two launches ordered on one stream, against two streams (probe 35).

On the overlap path the own tokens run on a side stream beside the Gluon prefix, and the hardware places the two
grids' programs in an order that varies: MHA 16k x256 measured 352.7-404.4 us and 32k x256 495.0-570.3 between
consecutive medians of one graph (probe 33, ``probe_overlap_graphs.py``), and notes section 15 found the overlap
works when the prefix programs are placed first. With ``ops/bifurcated_overlap.ORDERED`` the own tokens are the
prefix's programmatic dependent launch on one stream: they start only once every prefix program has started, and
the last of them waits for the prefix to finish (decode's ``split_decode_kernel`` with ``AFTER_PRIOR``). This probe times, in one
process and interleaved over five rounds (graph replays, do_bench medians, L2 flushed, us), both on every suite case
the overlap path takes; each round's value is kept, so the spread of each is in the results file.

    PYTHONPATH=src python benchmarks/probe_overlap_ordered.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402
from probe_overlap_own import CASES  # noqa: E402

from leanattn.ops import bifurcated_overlap as ov  # noqa: E402


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        call = bb.ours_call(inp)
        fns = {name: bd.with_plans(call, patches=[(ov, "ORDERED", flag)])
               for name, flag in (("two streams", False), ("ordered", True))}
        us, med = bb.interleaved_variants(case, inp, fns)
        info = {n: [p.info.get("ordered") for p in f.plans[1].values()] for n, f in fns.items()}
        bd.report_ratios(case["name"], med, [("two streams", "ordered")])
        print(f"{'':18s} rounds: {us}  ordered: {info}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, ordered=info))
        del inp, fns, call
    common.write_probe(args.out, "bifurcated_probe_overlap_ordered.json",
                       probe="overlap path: own tokens as the prefix's programmatic dependent launch on one stream, "
                             "against a second stream",
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out)


if __name__ == "__main__":
    main()
