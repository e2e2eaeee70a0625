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


def variant_probe(doc, argv, cases, variants, info_key, file, probe):
    """Time the overlap path's ``variants`` (label: ``(env, patches)`` of ``bench_decode.with_plans``) side by
    side on ``cases`` (or those of ``--cases``), five interleaved rounds each; print each case's ratios to the
    first variant and the plans' ``info[info_key]``; write ``file`` under ``--out`` with the description ``probe``."""
    args, want = common.probe_args(doc, argv)
    torch.manual_seed(0)
    out = []
    first = next(iter(variants))
    for case, inp in bb.probe_inputs(cases, want, copies=False):
        call = bb.ours_call(inp)
        fns = {name: bd.with_plans(call, env=env, patches=patches) for name, (env, patches) in variants.items()}
        us, med = bb.interleaved_variants(case, inp, fns)
        info = {n: [p.info.get(info_key) for p in f.plans[1].values()] for n, f in fns.items()}
        bd.report_ratios(case["name"], med, [(first, n) for n in variants if n != first])
        print(f"{'':18s} rounds: {us}  {info_key}: {info}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, **{info_key: info}))
        del inp, fns, call
    common.write_probe(args.out, file, probe=probe,
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out)


def main(argv=None):
    variant_probe(__doc__, argv, CASES, {"two streams": (None, [(ov, "ORDERED", False)]),
                                          "ordered": (None, [(ov, "ORDERED", True)])},
                  "ordered", "bifurcated_probe_overlap_ordered.json",
                  "overlap path: own tokens as the prefix's programmatic dependent launch on one stream, "
                  "against a second stream")


if __name__ == "__main__":
    main()
