"""Lean's cut of rows of equal length as even pieces on the split kernel, against the persistent kernel (probe 49).

Probes 15 and 45 timed ``schedule="split"`` over lean's cut (as many splits a row as lean's aligned pieces) ahead of
lean by 0.3-6 us on one sequence (mha 16k 68.1 against 70.1 us with ``cache_seqlens``, d64 139.4 against 145.3).
Since this probe's commit, where every row is known to have the same length (one sequence, or no
``cache_seqlens``) and the aligned cut at capacity is ``k`` pieces a row, ``schedule="lean"`` runs those pieces on
``split_decode_kernel`` with ``EVEN`` (``ops/decode.even_pieces``); ``LEANATTN_DECODE_EVEN=0`` keeps the
persistent kernel ('persistent'). This probe times both, with and without ``cache_seqlens``, and cuDNN, on the
suite's uniform contiguous cases, in one process: graph replays, interleaved rounds, under the read flush (medians
of 50 calls) and under do_bench's flush; every variant checked against the float64 reference.

    PYTHONPATH=src python benchmarks/probe_decode_even.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402

CASES = ("mha B=1 4k", "mha B=1 16k", "mha B=1 64k", "mha B=1 128k", "mha B=1 512k", "gqa B=1 32k", "gqa B=1 128k",
         "gqa B=4 32k", "gqa B=16 8k", "gqa B=64 4k", "d64 mha B=1 64k", "d256 16/8 B=1 32k")
PERSISTENT = {"LEANATTN_DECODE_EVEN": "0"}
ROUNDS = 5


def measure(case, inp, ref, call, bar):
    args3 = (inp["q"], inp["k"], inp["v"])
    full = lambda: leanattn.decode(*args3)  # noqa: E731
    fns = {"lean": bd.with_plans(call), "lean, persistent": bd.with_plans(call, PERSISTENT),
           "no lengths": bd.with_plans(full), "no lengths, persistent": bd.with_plans(full, PERSISTENT),
           "cuDNN": bd.METHODS["sdpa_cudnn"](case, inp)}
    read, med = bd.interleaved_graph_times(case["name"], fns, ref, ROUNDS, time_ms=bd.read_flush_ms)
    write, med_w = bd.interleaved_graph_times(case["name"], fns, ref, 3)
    grids = {n: [(p.schedule, p.grid) for p in f.plans[0].values()] for n, f in fns.items() if hasattr(f, "plans")}
    print(f"{case['name']} (85%: {bar:.1f} us) read | " + "  ".join(f"{lb} {t:.2f}" for lb, t in med.items())
          + " || do_bench | " + "  ".join(f"{lb} {t:.1f}" for lb, t in med_w.items()), flush=True)
    return dict(grids=grids, us_read_flush=read, median_read_flush=med, us_do_bench=write, median_do_bench=med_w)


def main(argv=None):
    bd.run_read_flush_probe(__doc__, argv, CASES, measure, "decode_probe_even.json",
                            probe="lean's cut of equal rows as even pieces on the split kernel against the persistent "
                                  "kernel, with and without cache_seqlens",
                            timing=f"CUDA-graph replays; read flush: medians of 50 calls, {ROUNDS} interleaved rounds; "
                                   "do_bench (zeroing flush): 3 interleaved rounds; us")


if __name__ == "__main__":
    main()
