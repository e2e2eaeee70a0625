"""Stream-K piece merge: in-kernel (last arriver) against a second launch, over the decode suite and
the one-sample bifurcated cases.

``benchmarks/probe_decode_short.py`` (H200, 2026-12-01) timed split over lean's cut 5% ahead of lean
at gqa B=1 32k and mha 4k and 4% at d64 mha 64k: same programs, same pieces, only the merge differs
(split merges in a second launch). This probe times, per case, in one process, interleaved over three
rounds of CUDA-graph replays (do_bench medians, L2 flushed, us):

* ``lean/kernel``: lean with the in-kernel merge (``LEANATTN_DECODE_MERGE=0``);
* ``lean/launch``: lean with the merge launch (``LEANATTN_DECODE_MERGE=1``);
* ``split`` and cuDNN (decode cases), or decode over copied caches in both modes (bifurcated cases).

With ``--eager`` it times instead the default (no override: the merge launch only under graph capture) as
an eager call and as a graph replay, to check that eager calls keep one launch's host cost.

    PYTHONPATH=src python benchmarks/probe_decode_merge.py [--out DIR] [--cases SUBSTR,...] [--eager]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

MODES = {"kernel": "0", "launch": "1"}


def with_merge(mode, fn):
    """``fn`` run with ``LEANATTN_DECODE_MERGE`` set to ``mode`` (plans are keyed on it)."""
    return common.with_env("LEANATTN_DECODE_MERGE", MODES[mode], fn)


def decode_variants(case, inp):
    if "page" in case:
        args = (inp["q"], inp["k_pages"], inp["v_pages"], inp["seqlens"], inp["block_table"])
    else:
        args = (inp["q"], inp["k"], inp["v"], inp["seqlens"])
    fns = {f"lean/{m}": with_merge(m, lambda: leanattn.decode(*args)) for m in MODES}
    fns["split"] = lambda: leanattn.decode(*args, schedule="split")
    try:
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
    except Exception as e:  # noqa: BLE001 - a peer that cannot run this case is left out
        print(f"  cuDNN: {e}")
    ref, _ = leanattn.reference.decode(inp["q"], inp["k"], inp["v"], inp["seqlens"])
    return fns, ref


def bifurcated_variants(c, inp):
    own = (inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"])
    cop = (inp["q"], inp["kc"], inp["vc"], inp["lens_c"])
    fns = {}
    for m in MODES:
        fns[f"lean/{m}"] = with_merge(m, lambda: leanattn.bifurcated_decode(*own))
        fns[f"copies/{m}"] = with_merge(m, lambda: leanattn.decode(*cop))
    ref, _ = leanattn.reference.decode(inp["q"], inp["kc"], inp["vc"], inp["lens_c"])
    return fns, ref


def time_default(name, fn, ref):
    """The default call eager and replayed from a graph, three interleaved rounds, us."""
    err = bd.rel_err(fn(), ref)
    if err > 1e-2:
        raise RuntimeError(f"{name}: relative error {err:.1e}")
    g = bd.graph_of(fn)
    us = {"eager": [], "graph": []}
    for _ in range(3):
        us["eager"].append(round(common.bench(fn, warmup=10, rep=40) * 1e3, 2))
        us["graph"].append(round(common.bench(g.replay, warmup=10, rep=40) * 1e3, 2))
    med = {n: sorted(v)[1] for n, v in us.items()}
    print(f"{name:22s} default: eager {med['eager']:.1f}  graph {med['graph']:.1f}", flush=True)
    return dict(case=name, us=us, median=med)


def time_case(name, fns, ref, info):
    us, med = bd.interleaved_graph_times(name, fns, ref)
    ratio = med["lean/kernel"] / med["lean/launch"]
    times = "  ".join(f"{n} {t:.1f}" for n, t in med.items())
    print(f"{name:22s} {times}  | kernel/launch {ratio:.3f}", flush=True)
    return dict(case=name, us=us, median=med, kernel_over_launch=ratio, **info)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names (default: all)")
    ap.add_argument("--eager", action="store_true", help="time the default eager and as a graph instead")
    args = ap.parse_args(argv)
    keep = [s for s in args.cases.split(",") if s]
    pick = (lambda n: any(s in n for s in keep)) if keep else (lambda n: True)
    torch.manual_seed(0)
    out = []
    for case in bd.suite():
        if not pick(case["name"]):
            continue
        inp = bd.make_inputs(case)
        fns, ref = decode_variants(case, inp)
        if args.eager:
            a = (inp["q"], inp["k"], inp["v"], inp["seqlens"])
            out.append(time_default(case["name"], lambda: leanattn.decode(*a), ref))
        else:
            out.append(time_case(case["name"], fns, ref, dict(kind="decode", bytes=bd.kv_bytes(case))))
        del inp, fns
        torch.cuda.empty_cache()
    for c in bb.suite():
        if c["samples"] != 1 or not pick("bif " + c["name"]):
            continue
        inp = bb.make_inputs(c, "cuda")
        fns, ref = bifurcated_variants(c, inp)
        if args.eager:
            a = (inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"])
            out.append(time_default("bif " + c["name"], lambda: leanattn.bifurcated_decode(*a), ref))
        else:
            out.append(time_case("bif " + c["name"], fns, ref, dict(kind="bifurcated")))
        del inp, fns
        torch.cuda.empty_cache()
    common.write_probe(args.out, "decode_probe_merge_" + ("eager.json" if args.eager else "launch.json"), cases=out)


if __name__ == "__main__":
    main()
