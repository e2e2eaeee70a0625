"""The overlap path with its prefix on a high-priority stream (bifurcated probe 26).

The overlap path (``ops/bifurcated_overlap.py``) runs the Gluon prefix pass on the caller's stream, launched
first, and the own tokens on a side stream, so that each SM holds one prefix program and own-token programs
beside it. Whether the prefix programs are placed first is up to the hardware: the two launches go to two
queues (bifurcated notes section 11: the overlap happened only when the prefix programs were dispatched
first), and on the MHA x256 cases the path takes about the prefix's time plus the own tokens' (MHA 16k x256
389 us against an IO floor of 300 and a plain read of the same bytes of 308, suite run of 2026-12-02 08:17).
With ``PREFIX_PRIORITY`` the prefix goes to a side stream of the highest priority and the own tokens to the
caller's stream: the block scheduler then hands freed slots to prefix programs first (torch >= 2.10 keeps node
priorities in graphs). This probe times both arrangements in one process, three interleaved rounds of graph
replays and then of eager calls (do_bench medians, L2 flushed, us), on the suite's cases that take the overlap path.

    PYTHONPATH=src python benchmarks/probe_overlap_priority.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.ops import bifurcated_overlap as ov  # noqa: E402

CASES = ("mha 16k x256", "mha 32k x256", "mha 8k x256", "gqa 8k x256", "gqa 16k x256", "gqa 8k x64", "mha 8k x16",
         "mha 32k x16")


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case in bb.suite():
        if case["name"] not in CASES or (want and case["name"] not in want):
            continue
        inp = bb.make_inputs(case, "cuda", copies=False)
        idx = bb.check_samples(case["samples"])
        ref = bb.reference_of(inp, idx)

        def call(inp=inp):
            return leanattn.bifurcated_decode(inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"])
        fns = {"default": bd.with_plans(call), "prefix priority": bd.with_plans(call, patches=[(ov, "PREFIX_PRIORITY", True)])}
        # checked on a few samples (the float64 reference is slow at 256 x 32k)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref, pick=idx)
        # eager too: whether a graph keeps the stream priority of a captured launch is up to torch and the
        # driver, and these calls are long enough (65-500 us) that the host does not bound them
        eager, eager_med = bd.interleaved_times({label + ", eager": fn for label, fn in fns.items()})
        med.update(eager_med)
        paths = {n: next(iter(f.plans[1].values())).path for n, f in fns.items()}
        bd.report_ratios(case["name"], med, [("prefix priority", "default"), ("prefix priority, eager", "default, eager")])
        out.append(dict(case=case["name"], us=us, us_eager=eager, median=med, paths=paths))
        del inp, fns
        torch.cuda.empty_cache()
    common.write_probe(args.out, "bifurcated_probe_overlap_priority.json",
                       probe="overlap path: prefix on the caller's stream (default) against a high-priority side stream",
                       timing="CUDA-graph replays and eager calls, do_bench medians (L2 flushed), 3 interleaved rounds each, us", cases=out)


if __name__ == "__main__":
    main()
