"""How much of the overlap path's two launches overlap (probe 41).

On the overlap path (``ops/bifurcated_overlap.py``) the Gluon prefix (compute-bound where the group's rows are many)
and decode's split kernel over the own tokens (memory-bound) run at once, so ideally a case takes about the longer
of the two. This probe times, on the suite cases the path takes, in one process and five interleaved rounds (graph
replays, do_bench medians, L2 flushed, us), five forms of one plan: both launches as the plan runs them, the prefix
alone, the own tokens alone (each with the final merge), the two one after the other on one stream without a
programmatic dependent launch, and both without the final merge (what the merge launch adds). Its third run (raw
``bifurcated_probe_overlap_phases_H200_merges.json``) also timed the merge unrolled over the states
(``kernels/merge.merge_states_kernel``'s ``UNROLL``, then a kernel of its own) at 1, 4 and 8 rows a program.
``overlap = (prefix + own - both) / min(prefix, own)``: 1 when the shorter launch hides entirely under the longer,
0 when they run as if in series.

    PYTHONPATH=src python benchmarks/probe_overlap_phases.py [--out DIR] [--cases A,B]
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


def _same_stream(device, avoid=None):
    return torch.cuda.current_stream(device)


def _edit(case):
    def edit(label, plan):
        if plan.path != "overlap" or plan.own_plan is None:
            raise RuntimeError(f"{case['name']}: expected the overlap path with own tokens, got {plan.path}")
        if label == "no merge":
            plan.launch_merge = lambda *a: None
        elif label == "prefix":
            plan.own_plan, plan.ordered = None, False
        elif label == "own":
            plan.prefix = lambda *a: None
    return edit


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    # two streams made one in "serial": the own tokens after the prefix, no dependent launch
    variants = {"both": [], "prefix": [], "own": [],
                "serial": [(ov, "ORDERED", False), (ov, "side_stream", _same_stream)], "no merge": []}
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        us, med, plans = bb.edited_plan_times(case, inp, variants, _edit(case), ("both", "serial"))
        p, o, b = med["prefix"], med["own"], med["both"]
        frac = (p + o - b) / min(p, o)
        print(f"{case['name']:18s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
              + f"  | overlap {frac:.2f}  both/max {b / max(p, o):.3f}  merge {b - med['no merge']:.1f}", flush=True)
        info = {k: plans["both"].info.get(k) for k in ("prefix_programs", "prefix_warp_specialized", "prefix_stages",
                                                        "own_grid", "ordered")}
        out.append(dict(case=case["name"], us=us, median=med, overlap=frac, plan=info))
        del inp, plans
    common.write_probe(args.out, "bifurcated_probe_overlap_phases.json",
                       probe="overlap path: both launches, each alone, and the two in series",
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out)


if __name__ == "__main__":
    main()
