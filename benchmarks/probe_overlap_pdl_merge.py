"""The overlap path's final merge as a programmatic dependent launch of the own tokens (probe 43).

Probe 41 (``probe_overlap_phases.py``) put the final merge at 3-5 us of the x16/x64 cases and 6-24 us of the x256
cases, more than its work: it is a launch that starts only after both others have finished. On the ordered path
(``ops/bifurcated_overlap.ORDERED``) the own tokens are already the prefix's programmatic dependent launch on one
stream and complete after it; here they also let the merge launch at once (their programs signal at entry,
``split_decode_kernel``'s ``PDL``), and the merge's programs wait for them (``merge_states_kernel``'s ``PDL``:
``gdc_wait`` returns once the own-token launch, and so the prefix, has completed and its writes are visible). This
probe times, on the suite cases the overlap path takes, in one process and five interleaved rounds (graph replays,
do_bench medians, L2 flushed, us): the default plan, the ordered path forced (the default up to 4096 pairs), and
the ordered path with the merge as a dependent launch; each checked against the float64 reference first.

    PYTHONPATH=src python benchmarks/probe_overlap_pdl_merge.py [--out DIR] [--cases A,B]
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

from leanattn import runtime  # noqa: E402
from leanattn.kernels.decode import split_decode_kernel  # noqa: E402
from leanattn.kernels.merge import merge_states_kernel  # noqa: E402
from leanattn.ops import bifurcated_overlap as ov  # noqa: E402


def _pdl_merge(plan):
    own = plan.own_plan
    own.launch = runtime.Launcher(split_decode_kernel, own.grid, dict(own.meta, PDL=True), (own.arrivals,) + own.tail)
    m = plan.launch_merge
    plan.launch_merge = runtime.Launcher(merge_states_kernel, m.grid, dict(m.meta, PDL=True, launch_pdl=True), m.scalars)


def _edit(case):
    def edit(label, plan):
        if label == "ordered, pdl merge":
            if not plan.ordered:
                raise RuntimeError(f"{case['name']}: expected the ordered overlap path")
            _pdl_merge(plan)
    return edit


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    forced = [(ov, "ORDERED", True)]
    variants = {"default": [], "ordered": forced, "ordered, pdl merge": forced}
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        # the dependent merge reads what both launches wrote: every variant is checked, three times
        us, med, plans = bb.edited_plan_times(case, inp, variants, _edit(case), variants)
        bd.report_ratios(case["name"], med, [("default", "ordered, pdl merge"), ("ordered", "ordered, pdl merge")])
        out.append(dict(case=case["name"], us=us, median=med, ordered={n: p.ordered for n, p in plans.items()}))
        del inp, plans
    common.write_probe(args.out, "bifurcated_probe_overlap_pdl_merge.json",
                       probe="overlap path: the final merge as a programmatic dependent launch of the own tokens",
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out)


if __name__ == "__main__":
    main()
