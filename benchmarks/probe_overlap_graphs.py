"""Why the overlap path's MHA x256 cases time differently in a probe and in the suite (probe 33).

Probe 32 (``probe_overlap_own.py``, five interleaved rounds, ``do_bench(warmup=10, rep=40)`` per round) put the
own-token kernel at 2 stages 9.4% ahead at MHA 16k x256 (347.6 against 380.3 us); the suite run that followed
(``bench_bifurcated.py``, one ``do_bench(warmup=25, rep=100)`` per method) timed 374.5 us with it. The overlap
path's prefix and own-token launches are two branches of one CUDA graph, and the order in which a replay dispatches
them is the runtime's. This probe captures the op in several graphs and times each one both ways, in one process:
if graphs differ from each other the branch order is the lead; if the long window is slower on every graph the
lead is the window (clocks under sustained load). Run of 2026-12-02 (H200, raw
``bifurcated_probe_overlap_graphs_H200.json``): neither; MHA 16k x256 352.7-404.4 us and 32k x256 495.0-570.3 across
graphs, windows and rounds alike.

    PYTHONPATH=src python benchmarks/probe_overlap_graphs.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402


CASES = ("mha 16k x256", "mha 32k x256", "mha 8k x256")
GRAPHS = 4


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        fn = bb.ours_call(inp)
        fn()
        graphs = [bd.graph_of(fn) for _ in range(GRAPHS)]
        res = {}
        for _ in range(2):
            for i, g in enumerate(graphs):
                short, long_ = common.bench(g.replay, warmup=10, rep=40), common.bench(g.replay)
                res.setdefault(f"graph {i}, short", []).append(round(short * 1e3, 1))
                res.setdefault(f"graph {i}, long", []).append(round(long_ * 1e3, 1))
        print(f"{case['name']:14s} " + "  ".join(f"{n}: {v}" for n, v in res.items()), flush=True)
        out.append(dict(case=case["name"], us=res))
        del inp, fn, graphs
    common.write_probe(args.out, "bifurcated_probe_overlap_graphs.json",
                       probe="overlap path at MHA x256: several graphs of one op, each timed with do_bench(10, 40) "
                             "and do_bench(25, 100), two rounds", timing="do_bench medians (L2 flushed), us",
                       cases=out)


if __name__ == "__main__":
    main()
