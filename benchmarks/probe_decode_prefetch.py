"""Lean with its first K/V tiles asked of the L2 before its schedule is known, against without (probe 47).

Probe 45 (2026-12-03 16:1x, code of ``f918684``, read flush): at mha B=1 16k lean with ``cache_seqlens`` took
70.7 us, lean over full caches ('full', no lengths, no search) 69.7, the bar 69.8; at d256 71.2 and 69.9. The
time from a program's start to its first K/V load is paid once by every program of a one-wave launch.
``kernels/prefetch.py`` lets each program ask the L2 for its first tiles under the cut of full caches at once
(``LEANATTN_DECODE_PREFETCH`` tiles). This probe times, in one process and interleaved over five rounds (graph
replays after the read flush, medians of 50 calls, us), lean with and without ``cache_seqlens`` at 0, 1, 2 and
4 tiles, split and a plain read of the bytes beside them, on suite cases whose lengths fill the cache and on the
ragged ones, whose cut is not that of full caches (there every prefetch but the longest rows' is wasted). Every
variant is checked against the float64 reference.

    PYTHONPATH=src python benchmarks/probe_decode_prefetch.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("mha B=1 16k", "d256 16/8 B=1 32k", "mha B=1 4k", "gqa B=1 32k", "gqa B=4 32k", "gqa B=64 4k",
         "ragged-uniform B=32", "ragged-tail B=16")
TILES = (0, 1, 2, 4)
ROUNDS = 5


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    ceiling = common.read_bandwidth_gbs()["read_ceiling_clean_flush"]
    for case, inp, ref, call in bd.probe_cases(CASES, want):
        args3 = (inp["q"], inp["k"], inp["v"])
        full = lambda: leanattn.decode(*args3)  # noqa: E731
        fns = {}
        for n in TILES:
            env = {"LEANATTN_DECODE_PREFETCH": str(n)}
            fns[f"lean pf{n}"] = bd.with_plans(call, env)
            if len(set(case["lens"])) == 1:  # full caches are the case's only where every length is the capacity
                fns[f"full pf{n}"] = bd.with_plans(full, env)
        fns["split"] = bd.with_plans(lambda: leanattn.decode(*args3, inp["seqlens"], schedule="split"))
        graphs = {}
        for label, fn in fns.items():
            err = bd.rel_err(fn(), ref)
            if err > 1e-2:
                raise RuntimeError(f"{case['name']} {label}: relative error {err:.1e}")
            graphs[label] = bd.graph_of(fn)
        nbytes = bd.kv_bytes(case)
        graphs["plain read"] = bd.graph_of(common.stream_read_fn(nbytes))
        us, med = bd.interleaved_times({lb: g.replay for lb, g in graphs.items()}, ROUNDS,
                                       time_ms=lambda run: common.bench(run, flush="read", calls=50))
        bar = nbytes / (0.85 * ceiling) / 1e3
        print(f"{case['name']} (85% of the ceiling: {bar:.1f} us) | "
              + "  ".join(f"{lb} {t:.1f}" for lb, t in med.items()), flush=True)
        out.append(dict(case=case["name"], grids=bd.plan_grids(fns), us=us, median=med, bar_us=bar,
                        kv_mb=nbytes / 1e6))
        del call, fns, graphs, full
        torch.cuda.empty_cache()
    common.write_probe(args.out, "decode_probe_prefetch.json",
                       probe="lean with 0, 1, 2, 4 first tiles prefetched into the L2, with and without "
                             "cache_seqlens, read flush",
                       read_ceiling_clean_flush=ceiling,
                       timing=f"CUDA-graph replays after a 256 MB read flush, medians of 50 calls, {ROUNDS} "
                              "interleaved rounds, us", cases=out)


if __name__ == "__main__":
    main()
