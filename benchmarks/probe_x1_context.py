"""What in the suite's process costs the one-sample path about 1% against decode over copies (probe 34).

Probe 31 (``probe_x1_alloc.py``) measured the one-sample path level with decode over copied caches (0.993-1.007x over
four runs, placement and order varied), while the suite (``bench_bifurcated.py``, whose ``x1_interleaved`` times the
same pair alternately from its own replays after every method has run) measured 0.987-0.990x at 8k on the same
machine minutes later. This probe follows the suite's steps for one case and times the pair in five alternating
rounds after each (graph replays, do_bench medians, L2 flushed, us): A, just captured; B, after the suite's timings
(write flush, read flush, eager, write again; of both methods, where the suite times the last two of ours only); C,
after the peers have run as the suite runs them (SDPA FLASH and cuDNN, flex compiled: each checked, captured and
timed under both flushes); D, after the suite's ceilings
(a 4 GiB streaming read, a matmul, an empty launch; the suite measures them before its first case). The step after
which the ratio drops is the lead. Run of 2026-12-02 (H200, raw ``bifurcated_probe_x1_context_H200.json``): none
(MHA 8k x1 1.000x after every step), while the suite over the same cases on that machine measured 0.989x: what the
probe does not reproduce is the suite's order of allocations (notes section 22).

    PYTHONPATH=src python benchmarks/probe_x1_context.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

CASES = ("mha 8k x1", "gqa 8k x1")


def suite_timings(fn, run):
    """The timings the suite takes of one method (``bench_bifurcated.run_case``)."""
    bb.time_run(run, True)
    bb.time_run(run, True, flush="read")
    common.bench(fn)
    bb.time_run(run, True)


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp in bb.probe_inputs(CASES, want):
        fns = {n: bb.METHODS[n](case, inp) for n in ("bifurcated", "decode_copied")}
        runs = {}
        for n, fn in fns.items():
            fn()
            runs[n] = bb.replayer(fn, True)[0]
        stages = {}

        def pair(label):
            us, med = bd.interleaved_times({"ours": runs["bifurcated"], "copied": runs["decode_copied"]}, 5)
            stages[label] = dict(us=us, median=med, ratio=med["copied"] / med["ours"])
            print(f"{case['name']:12s} {label:28s} ours {med['ours']:.2f}  copied {med['copied']:.2f}  "
                  f"| copied/ours {stages[label]['ratio']:.3f}", flush=True)
        pair("A just captured")
        for n in fns:
            suite_timings(fns[n], runs[n])
        pair("B after the suite's timings")
        for n in ("sdpa_flash", "sdpa_cudnn", "flex"):
            fn = bb.METHODS[n](case, inp)
            fn()
            run = bb.replayer(fn, True)[0]
            bb.time_run(run, True)
            bb.time_run(run, True, flush="read")
            del run, fn
        pair("C after the peers")
        common.read_bandwidth_gbs()
        common.matmul_tflops()
        common.launch_latency_us()
        pair("D after the ceilings")
        out.append(dict(case=case["name"], stages=stages))
        del fns, runs, inp
    common.write_probe(args.out, "bifurcated_probe_x1_context.json",
                       probe="one-sample path against decode over copies, timed alternately after each of the suite's "
                             "steps", timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
