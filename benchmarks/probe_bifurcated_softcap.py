"""What logit soft-capping costs bifurcated decode (bifurcated probe 52): ``softcap=50`` against none, same process.

A capped call takes the path an uncapped one would (concat, states or, on Hopper, overlap with its Gluon prefix;
``ops/bifurcated_launch.py``). On suite cases of ``bench_bifurcated`` (bf16, 256 own tokens per sample), four
variants: the default call with and without the cap, and the states path (``LEANATTN_BIFURCATED_CONFIG`` path
field 3; the same as the default where that is not the overlap path) with and without it; each checked against
the float64 reference of the first and last sample (capped or not), then CUDA-graph replays timed in five
interleaved rounds (do_bench, L2 flushed).

    PYTHONPATH=src python benchmarks/probe_bifurcated_softcap.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa 8k x1", "gqa 8k x32", "gqa 8k x64", "mha 8k x32", "gqa 32k x64", "mha 16k x16")
CAP = 50.0  # Gemma-2's attention soft cap
STATES = "0,0,0,0,0,0,0,0,0,3"  # LEANATTN_BIFURCATED_CONFIG: the states path


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
        idx = [0, case["samples"] - 1]
        plain = bb.reference_of(inp, idx)
        capped = leanattn.reference.bifurcated_decode(q[idx], pk, pv, k[idx], v[idx], lens[idx], softcap=CAP)[0]
        call = bb.ours_call(inp)
        capped_call = functools.partial(leanattn.bifurcated_decode, q, pk, pv, k, v, lens, softcap=CAP)
        states = {"LEANATTN_BIFURCATED_CONFIG": STATES}
        fns = {"plain": bd.with_plans(call), "plain, states path": bd.with_plans(call, env=states),
               f"softcap {CAP:g}": bd.with_plans(capped_call),
               f"softcap {CAP:g}, states path": bd.with_plans(capped_call, env=states)}
        refs = {n: capped if n.startswith("softcap") else plain for n in fns}
        us, med = bd.interleaved_graph_times(case["name"], fns, refs, rounds=5, pick=idx)
        paths = {n: sorted({p.path for p in f.plans[1].values()}) for n, f in fns.items()}
        ratio = med[f"softcap {CAP:g}"] / med["plain"]
        ratio_states = med[f"softcap {CAP:g}, states path"] / med["plain, states path"]
        print(f"{case['name']:14s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
              + f" | capped / not {ratio:.3f}, on the states path {ratio_states:.3f}  paths {paths}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, ratio=ratio, ratio_states=ratio_states, paths=paths))
        del inp, fns, call, capped_call, q, pk, pv, k, v, lens
    common.write_probe(args.out, "bifurcated_probe_softcap.json", cases=out,
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"),
                       probe=f"bifurcated decode with softcap={CAP:g} against none (default and states paths)")


if __name__ == "__main__":
    main()
