"""Probe: where a windowed shared-prefix call's time goes (``bifurcated_decode(window_left=)``: 2.2-5.3x the
unwindowed call on an H200 on 2026-12-05, before its plan became two launches). One prompt, samples in step, bf16,
D=128, 256 own tokens a sample. The call and each of its parts, on the same inputs, each captured in a CUDA graph and
timed in 3 interleaved rounds (do_bench medians, L2 flushed):

* ``call``: the whole windowed call, checked against the float64 reference;
* ``no window``: the unwindowed call (its reference the unwindowed one);
* ``plan``: the two plan launches (``ops/window_plan.py``: starts and tables; the dense prefix's tail is not copied);
* ``tail pass``: the bifurcated pass over the prefix's tail where it lies (every sample's rows stacked);
* ``rest decode``: each sample's rest before the tail over one-token pages (no keys for samples in step);
* ``own decode``: the own tokens' windowed decode;
* ``merge``: the three states merged (``merge_state_list``).

The parts are checked against their own first output (their inputs do not change).

    PYTHONPATH=src python benchmarks/probe_bifurcated_window_parts.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.merges.states import merge_state_list  # noqa: E402
from leanattn.ops.bifurcated import _pass_op  # noqa: E402
from leanattn.ops.token_pages import token_pool  # noqa: E402
from leanattn.ops.window_plan import window_plan  # noqa: E402

CASES = (("gqa 8k x16", 4096), ("mha 8k x16", 4096), ("gqa 8k x64", 1024))


def parts(q, pk, pv, k, v, lens, w):
    """label -> call: the windowed call's parts over a dense single-prompt prefix ``pk/pv (P, Hkv, D)``, window
    ``w`` keys before each token (``ops/bifurcated_window.window_states``'s steps, past validation)."""
    B, Hq, D = q.shape
    P = pk.shape[0]
    scale = 1.0 / math.sqrt(D)
    W = min(w + 1, P)
    pool_k, step = token_pool(pk[None])
    pool_v, _ = token_pool(pv[None])
    op = _pass_op()

    def plan():
        return window_plan(lens, 0, None, None, None, 1, B, B, 1, w, W, P, pool_k, step, P, None)

    _, _, rest, table, tail_end, latest = plan()

    def tail_pass():
        return op(q, pk, pv, None, None, None, None, tail_end, None, scale, 0, 0, 0, 0, 0.0, 1.0, 1.0, latest, W)

    def rest_decode():
        return leanattn.decode(q, pool_k, pool_v, rest, table, scale, True, validate=False)

    def own_decode():
        return leanattn.decode(q, k, v, lens, None, scale, True, window_left=w, validate=False)

    states = [tail_pass(), rest_decode(), own_decode()]

    def merge():
        return merge_state_list([s[0] for s in states], [s[1] for s in states])

    # (each returns a tensor of one row a sample, for the probe's check)
    return {"plan": lambda: plan()[3], "tail pass": lambda: tail_pass()[0], "rest decode": lambda: rest_decode()[0],
            "own decode": lambda: own_decode()[0], "merge": lambda: merge()[0]}


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    suite = {c["name"]: c for c in bb.suite()}
    rows = []
    for base, window in CASES:
        name = f"{base} window {window}"
        if want and name not in want:
            continue
        inp = bb.make_inputs(suite[base], "cuda", copies=False)
        q, pk, pv, k, v, lens = inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"]
        n, w = q.shape[0], window - 1
        idx = [0, n - 1]
        fns = {"call": lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, lens, window_left=w),
               "no window": lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, lens)}
        refs = {"call": leanattn.reference.bifurcated_decode(q[idx], pk, pv, k[idx], v[idx], lens[idx],
                                                             window_left=w)[0],
                "no window": leanattn.reference.bifurcated_decode(q[idx], pk, pv, k[idx], v[idx], lens[idx])[0]}
        for label, fn in parts(q, pk, pv, k, v, lens, w).items():
            fns[label] = fn
            refs[label] = fn()[idx].clone()
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        print(f"{name}: " + "  ".join(f"{m} {t:.1f}" for m, t in med.items())
              + f" | parts summed {sum(t for m, t in med.items() if m not in ('call', 'no window')):.1f}", flush=True)
        rows.append(dict(case=name, samples=n, window=window, hq=q.shape[1], hkv=pk.shape[1], d=q.shape[2],
                         prefix=pk.shape[0], own=k.shape[1], us=us, median=med))
    common.write_probe(args.out, "probe_bifurcated_window_parts.json", probe="windowed shared-prefix call by part",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
