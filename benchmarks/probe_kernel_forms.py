"""An experimental kernel form against the default one (decode probes 55 and 56), in alternating processes.

``kernels/attend`` reads ``LEANATTN_KERNEL_FORMS`` when it is imported (the kernels take the forms as compile-time
constants), so a form and the default cannot share a process: each round runs one worker process without the form,
then one with it, over the same cases with the same seeds, and the parent takes each side's median over the rounds.
Each call is checked against the float64 reference first (relative error under 2e-2), then replayed from a CUDA
graph and timed with ``do_bench`` (median, L2 flushed).

* ``fp8_v_pairs`` (probe 55): float8 V converted along D pairs. ``leanattn.decode`` on float8 e4m3 caches with
  per-tensor scales, cases of ``bench_decode_fp8`` (uniform, ragged, paged, D=64), and ``bifurcated_decode`` on
  suite cases of ``bench_bifurcated`` whose own tokens or single sample run through ``attend`` (states and concat
  paths; the Gluon prefix converts its tiles itself).
* ``tanh_rational`` (probe 56): the soft cap's tanh as a rational function. ``softcap=50`` on decode suite cases
  (bf16, and float8 as above) and on bifurcated suite cases on the overlap and states paths (bf16).

    PYTHONPATH=src python benchmarks/probe_kernel_forms.py FORM [--out DIR] [--rounds 3] [--cases A,B]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CAP = 50.0  # Gemma-2's attention soft cap
# form -> (decode cases over float8 caches, decode cases over bf16 caches, bifurcated cases), and the cap
FORMS = {
    "fp8_v_pairs": (["mha B=1 64k", "gqa B=4 32k", "gqa B=64 4k", "ragged-tail B=16", "paged16 gqa B=4 32k",
                     "paged64 gqa B=4 32k", "d64 mha B=1 64k"], [], ["gqa 8k x1", "gqa 8k x16", "mha 8k x32"], 0.0),
    "tanh_rational": (["gqa B=64 4k"], ["gqa B=4 32k", "gqa B=64 4k", "mha B=1 64k"],
                      ["gqa 8k x32", "gqa 8k x64", "gqa 32k x64", "mha 16k x16"], CAP),
}


def worker(form, cases):
    """One process: ``{case: (us, rel err)}`` of ``form``'s cases among ``cases``, as one JSON line on stdout."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_bifurcated as bb
    import bench_decode as bd
    import bench_decode_fp8 as bf8
    import common
    from probe_bifurcated_fp8 import quantised
    from probe_bifurcated_softcap import CAP as BIF_CAP, capped

    import leanattn
    from leanattn.testing import rel_err

    fp8_cases, bf16_cases, bif_cases, cap = FORMS[form]
    assert BIF_CAP == CAP or form == "fp8_v_pairs"

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
        name = case["name"]
        if name not in cases or name not in fp8_cases + bf16_cases:
            continue
        for fp8 in ([True] if name in fp8_cases else []) + ([False] if name in bf16_cases else []):
            if fp8:
                inp = bf8.fp8_inputs(case)
                k, v, bt, kw = inp["k8"], inp["v8"], inp["block_table8"], dict(k_scale=inp["ks"], v_scale=inp["vs"])
            else:
                inp = bd.make_inputs(case)
                bt = inp.get("block_table")
                k, v = (inp["k_pages"], inp["v_pages"]) if bt is not None else (inp["k"], inp["v"])
                kw = {}
            q, sl = inp["q"], inp["seqlens"]
            ref, _ = leanattn.reference.decode(q, k, v, sl, bt, None, kw.get("k_scale", 1.0), kw.get("v_scale", 1.0),
                                               softcap=cap)
            res[("fp8 " if fp8 and bf16_cases else "") + name] = timed(
                lambda: leanattn.decode(q, k, v, sl, bt, softcap=cap, **kw), ref)
            del inp, ref
            torch.cuda.empty_cache()
    for case, inp in bb.probe_inputs([c for c in bif_cases if c in cases], copies=False):
        idx = [0, case["samples"] - 1]
        # the call over the case's caches stored as e4m3, or capped at 50 (probe 52's), and its reference
        call, ref = (quantised if form == "fp8_v_pairs" else capped)(inp, idx)
        res[case["name"]] = timed(call, ref, idx)
        del call, ref, inp
    print(json.dumps(res), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("form", choices=sorted(FORMS))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all of the form's)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    fp8_cases, bf16_cases, bif_cases, _ = FORMS[args.form]
    cases = args.cases.split(",") if args.cases else list(dict.fromkeys(fp8_cases + bf16_cases + bif_cases))
    if args.worker:
        worker(args.form, cases)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common
    sides = {"default": "", args.form: args.form}
    rounds = {side: [] for side in sides}
    for r in range(args.rounds):
        for side, forms in sides.items():
            run = subprocess.run([sys.executable, os.path.abspath(__file__), args.form, "--worker", "--cases",
                                  ",".join(cases)], capture_output=True, text=True,
                                 env=dict(os.environ, LEANATTN_KERNEL_FORMS=forms))
            if run.returncode != 0:
                print(f"round {r} {side}: worker failed\n{run.stderr[-3000:]}", flush=True)
                return 1
            # the worker's last line that is a JSON object (a library may print after it)
            rounds[side].append(json.loads([ln for ln in run.stdout.splitlines() if ln.startswith("{")][-1]))
    out = []
    for name in rounds["default"][0]:
        us = {side: [rd[name][0] for rd in rounds[side]] for side in sides}
        err = {side: max(rd[name][1] for rd in rounds[side]) for side in sides}
        med = {side: statistics.median(v) if None not in v else None for side, v in us.items()}
        ratio = med[args.form] / med["default"] if None not in med.values() else None
        out.append(dict(case=name, us=us, median=med, max_rel_err=err, form_over_default=ratio))
        print(f"{name:22s} " + "  ".join(f"{s} {m:.1f}" if m else f"{s} WRONG" for s, m in med.items())
              + (f"  | {args.form} / default {ratio:.3f}" if ratio else "  | no ratio") + f"  rounds {us}", flush=True)
    common.write_probe(args.out, f"decode_probe_form_{args.form}.json",
                       probe=f"kernel form {args.form} against the default" + (f", softcap={CAP:g}" if
                                                                                 FORMS[args.form][3] else ""),
                       timing=f"CUDA-graph replays, do_bench medians (L2 flushed), {args.rounds} rounds of one "
                              "process per side, us", cases=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
