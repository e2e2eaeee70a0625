"""Lean against split, each over its own cut and over the other's, and a plain read of the same bytes (probe 45).

Under the read flush a plain streaming read of the KV bytes reaches 90% of the read ceiling at 268 MB and lean
83.3-83.6% (suite run of 2026-12-03 11:24: mha 16k 69.6 us, 69.1 without ``cache_seqlens``, against the read's
64.3 and split's 68.0; the bar, 85%, is 68.45 us). Without ``cache_seqlens`` on full caches lean launches exactly
the programs its aligned cut uses ('full'). Split cuts each row by FlashAttention's heuristic, which is not lean's
cut: 7 splits a row at mha 4k and 16k (224 programs) against lean's 8 pieces (256), 29 at gqa 32k and d256
against 32 and 16. This probe times, in one process and interleaved over five rounds (graph replays after the read
flush, ``common.bench(flush="read")`` medians of 50 calls, us), lean without ``cache_seqlens`` as it is and with
each remaining difference from split turned: its programs across rows (split's order), its cut rows merged
in-kernel instead of by ``piece_merge_kernel``, no programmatic dependent launch; split with and without it; lean
with ``cache_seqlens``, cuDNN and the plain read beside them; then each cut on the other's grid: split with as
many splits a row as lean's pieces, lean over split's rows x splits programs; and lean with ``cache_seqlens`` over
full's grid (given a grid, the kernel compiles no search: the lengths' load without the search). Every variant is
checked against the float64 reference.

    PYTHONPATH=src python benchmarks/probe_decode_read_gap.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("mha B=1 16k", "d256 16/8 B=1 32k", "mha B=1 4k", "gqa B=1 32k")
FULL_KNOBS = {"full": {}, "full, across rows": {"LEANATTN_ACROSS_ROWS": "1"},
              "full, in-kernel merge": {"LEANATTN_DECODE_MERGE": "0"}, "full, no PDL": {"LEANATTN_PDL": "0"}}
SPLIT_KNOBS = {"split": {}, "split, no PDL": {"LEANATTN_PDL": "0"}}
ROUNDS = 5


def check(case, label, fn, ref):
    err = bd.rel_err(fn(), ref)
    if err > 1e-2:
        raise RuntimeError(f"{case['name']} {label}: relative error {err:.1e}")


def measure(case, inp, ref, call, bar):
    args3 = (inp["q"], inp["k"], inp["v"])
    full = lambda: leanattn.decode(*args3)  # noqa: E731
    split = lambda: leanattn.decode(*args3, inp["seqlens"], schedule="split")  # noqa: E731
    fns = {"lean": bd.with_plans(call)}
    fns.update({n: bd.with_plans(full, e) for n, e in FULL_KNOBS.items()})
    fns.update({n: bd.with_plans(split, e) for n, e in SPLIT_KNOBS.items()})
    fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
    graphs = {}
    for label, fn in fns.items():
        check(case, label, fn, ref)
        graphs[label] = bd.graph_of(fn)
    # each cut on the other's grid: split with lean's pieces a row, lean over split's rows x splits programs
    rows, splits = next(iter(fns["split"].plans[0].values())).grid
    pieces = next(iter(fns["full"].plans[0].values())).grid[0] // rows
    swapped = {"split, full's pieces": lambda: leanattn.decode(*args3, inp["seqlens"], schedule="split",
                                                               num_splits=pieces),
               "full, split's grid": lambda: leanattn.decode(*args3, num_programs=rows * splits),
               # the lengths read but no search: a grid given is cut as it is
               "lean, full's grid": lambda: leanattn.decode(*args3, inp["seqlens"], num_programs=pieces * rows)}
    for label, fn in swapped.items():
        fns[label] = bd.with_plans(fn)
        check(case, label, fns[label], ref)
        graphs[label] = bd.graph_of(fns[label])
    graphs["plain read"] = bd.graph_of(common.stream_read_fn(bd.kv_bytes(case)))
    us, med = bd.interleaved_times({lb: g.replay for lb, g in graphs.items()}, ROUNDS, time_ms=bd.read_flush_ms)
    grids = bd.plan_grids(fns)
    print(f"{case['name']} (85% of the ceiling: {bar:.1f} us) | "
          + "  ".join(f"{lb} {t:.1f}" for lb, t in med.items()), flush=True)
    return dict(grids=grids, us=us, median=med)


def main(argv=None):
    bd.run_read_flush_probe(__doc__, argv, CASES, measure, "decode_probe_read_gap.json",
                            probe="lean with and without cache_seqlens against split, knobs turned, each cut on the "
                                  "other's grid, read flush",
                            timing=f"CUDA-graph replays after a 256 MB read flush, medians of 50 calls, {ROUNDS} "
                                   "interleaved rounds, us")


if __name__ == "__main__":
    main()
