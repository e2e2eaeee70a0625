"""Float8 V converted along D pairs against the operand-layout conversion (decode probe 55), alternating processes.

``kernels/attend.FP8_V_PAIRS`` is read when ``attend`` is imported (``LEANATTN_FP8_V_PAIRS=1``), so the two forms
cannot share a process: each round runs a worker process per form, off then on, over the same cases with the same
seeds, and the parent takes each form's median over the rounds. A worker times, on float8 e4m3 caches with
per-tensor scales, ``leanattn.decode`` on cases of ``bench_decode_fp8`` (uniform, ragged, paged, D=64) and
``bifurcated_decode`` on suite cases of ``bench_bifurcated`` whose own tokens or single sample run through
``attend`` (the states and concat paths; the Gluon prefix converts its tiles itself). Each call is checked against
the float64 reference over the stored values times the scales first (relative error under 2e-2), then replayed from
a CUDA graph and timed with ``do_bench`` (median, L2 flushed).

    PYTHONPATH=src python benchmarks/probe_fp8_v_pairs.py [--out DIR] [--rounds 3] [--cases A,B]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

DECODE = ["mha B=1 64k", "gqa B=4 32k", "gqa B=64 4k", "ragged-tail B=16", "paged16 gqa B=4 32k",
          "paged64 gqa B=4 32k", "d64 mha B=1 64k"]
BIFURCATED = ["gqa 8k x1", "gqa 8k x16", "mha 8k x32"]


def worker(cases):
    """One process: ``{case: (us, rel err)}`` of every case in ``cases``, as one JSON line on stdout."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_bifurcated as bb
    import bench_decode as bd
    import bench_decode_fp8 as bf8
    import common
    from probe_bifurcated_fp8 import quantised

    import leanattn
    from leanattn.testing import rel_err

    def timed(fn, ref, pick=None):
        out = fn()
        torch.cuda.synchronize()
        err = rel_err(out if pick is None else out[pick], ref)
        if not err <= 2e-2:
            return None, err
        g = bd.graph_of(fn)
        return common.bench(g.replay if g is not None else fn) * 1e3, err

    torch.manual_seed(0)
    res = {}
    for case in bd.suite():
        if case["name"] in cases and case["name"] in DECODE:
            inp = bf8.fp8_inputs(case)
            q, sl, bt = inp["q"], inp["seqlens"], inp["block_table8"]
            ref, _ = leanattn.reference.decode(q, inp["k8"], inp["v8"], sl, bt, k_scale=inp["ks"], v_scale=inp["vs"])
            res[case["name"]] = timed(lambda: leanattn.decode(q, inp["k8"], inp["v8"], sl, bt, k_scale=inp["ks"],
                                                              v_scale=inp["vs"]), ref)
            del inp, ref
            torch.cuda.empty_cache()
    for case, inp in bb.probe_inputs([c for c in BIFURCATED if c in cases], copies=False):
        idx = [0, case["samples"] - 1]
        call, ref = quantised(inp, idx)
        res[case["name"]] = timed(call, ref, idx)
        del call, ref
    print(json.dumps(res), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cases = args.cases.split(",") if args.cases else DECODE + BIFURCATED
    if args.worker:
        worker(cases)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common
    forms = {"operand layout": "0", "D pairs": "1"}
    rounds = {form: [] for form in forms}
    for r in range(args.rounds):
        for form, flag in forms.items():
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--cases", ",".join(cases)],
                                 capture_output=True, text=True, env=dict(os.environ, LEANATTN_FP8_V_PAIRS=flag))
            if run.returncode != 0:
                print(f"round {r} {form}: worker failed\n{run.stderr[-3000:]}", flush=True)
                return 1
            rounds[form].append(json.loads(run.stdout.strip().splitlines()[-1]))
    out = []
    for case in cases:
        us = {form: [rd[case][0] for rd in rounds[form]] for form in forms}
        err = {form: max(rd[case][1] for rd in rounds[form]) for form in forms}
        med = {form: statistics.median(v) if None not in v else None for form, v in us.items()}
        ratio = med["D pairs"] / med["operand layout"] if None not in med.values() else None
        out.append(dict(case=case, us=us, median=med, max_rel_err=err, pairs_over_operand=ratio))
        print(f"{case:22s} " + "  ".join(f"{f} {m:.1f}" if m else f"{f} WRONG" for f, m in med.items())
              + (f"  | D pairs / operand {ratio:.3f}" if ratio else "") + f"  rounds {us}", flush=True)
    common.write_probe(args.out, "decode_probe_fp8_v_pairs.json",
                       probe="float8 V converted along D pairs against the operand-layout conversion",
                       timing=f"CUDA-graph replays, do_bench medians (L2 flushed), {args.rounds} rounds of one "
                              "process per form, us", cases=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
