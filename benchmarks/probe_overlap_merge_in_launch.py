"""The overlap path's final merge inside its two launches against a merge launch after them (probe 44).

Probe 41 (``probe_overlap_phases.py``) put the merge launch at 3-5 us of the x16/x64 cases and 6-24 us of the x256
cases, more than its work: it starts only once both launches have finished, and its programs then read every state
back. With ``ops/bifurcated_overlap.MERGE_IN_LAUNCH`` each Gluon prefix program and each own-token split counts its
rows' states in, and whoever completes a row merges it (``kernels/bifurcated_prefix_gluon._settle_rows``,
``kernels/bifurcated_states.own_states_kernel``), so the merge runs as the rows complete, beside the launches' other
programs. This probe times, on the suite cases the overlap path takes, in one process and five interleaved rounds
(graph replays, do_bench medians, L2 flushed, us): the merge launch, the merge in the launches, and the merge in
the launches with the own tokens forced to the ordered path (the default only up to 4096 (sample, kv head) pairs);
each checked three times against the float64 reference first.

    PYTHONPATH=src python benchmarks/probe_overlap_merge_in_launch.py [--out DIR] [--cases A,B]
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
    variants = {"merge launch": [(ov, "MERGE_IN_LAUNCH", False)], "in launch": [(ov, "MERGE_IN_LAUNCH", True)],
                "in launch, ordered": [(ov, "MERGE_IN_LAUNCH", True), (ov, "ORDERED", True)]}

    def edit(label, plan):
        if plan.merge_in_kernel != (label != "merge launch"):
            raise RuntimeError(f"{label}: the plan's merge_in_kernel is {plan.merge_in_kernel}")
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        us, med, plans = bb.edited_plan_times(case, inp, variants, edit, variants)
        bd.report_ratios(case["name"], med, [("merge launch", "in launch"), ("merge launch", "in launch, ordered")])
        out.append(dict(case=case["name"], us=us, median=med, ordered={n: p.ordered for n, p in plans.items()}))
        del inp, plans
    common.write_probe(args.out, "bifurcated_probe_overlap_merge_in_launch.json",
                       probe="overlap path: the final merge in the two launches against a merge launch",
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out)


if __name__ == "__main__":
    main()
