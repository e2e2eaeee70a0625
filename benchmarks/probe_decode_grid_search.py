"""Lean with ``cache_seqlens``: is its last microsecond over full caches the search or the idle programs (probe 48).

Probe 45 on ``f918684`` (H200, 2026-12-03 16:1x, read flush): lean with ``cache_seqlens`` ('lean': the lengths'
load, the search over 264 programs, 256 of them used) 0.7-1.2 us over 'lean, full's grid' (the lengths' load, no
search, 256 launched) at mha B=1 16k, gqa B=1 32k and d256. Probe 47 (L2 prefetch of each program's first tiles
before the schedule) took nothing off: the time before the first load is not it. Two things differ: the search's
instructions and the 8 idle programs. This probe adds 'lean, search over 128 SMs': the search as in 'lean' but
told the GPU has 128 SMs, so the grid is the 256 programs it uses (d256, one program per SM: 128, all used).
'lean' against it is the idle programs; it against 'lean, full's grid' is the search. On the ragged cases,
'lean, full's grid' is the grid of the cut of full caches, the grid the host would launch if it always launched
that one (probe 28, 2026-12-02: level on 14 suite cases). Timed in one process, interleaved over seven rounds
(graph replays after the read flush, medians of 50 calls, us), each variant checked against the float64
reference. The second run (2026-12-03 16:5x) also timed lean leaving idle the programs spread evenly over the
launch order, or the first ones, instead of the last ('lean, idle spread', 'lean, idle first'): the kernel knob
it took (``LEANATTN_IDLE_ORDER``, ``schedules/stream_k.place_idle``) is in ``b6033ab``, reverted after (no order
was ahead on every case).

    PYTHONPATH=src python benchmarks/probe_decode_grid_search.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402
from leanattn import runtime  # noqa: E402

CASES = ("mha B=1 16k", "d256 16/8 B=1 32k", "mha B=1 4k", "gqa B=1 32k", "ragged-tail B=16", "ragged-uniform B=32")
ROUNDS = 7


def measure(case, inp, ref, call, bar):
    args3 = (inp["q"], inp["k"], inp["v"])
    fns = {"lean": bd.with_plans(call),
           "lean, search over 128 SMs": bd.with_plans(call, patches=((runtime, "num_sms", lambda d: 128),)),
           "full": bd.with_plans(lambda: leanattn.decode(*args3))}
    fns["full"]()  # the programs of the cut of full caches (on ragged caches not the case's result)
    used = next(iter(fns["full"].plans[0].values())).grid[0]
    if len(set(case["lens"])) > 1:
        del fns["full"]
    fns["lean, full's grid"] = bd.with_plans(lambda: leanattn.decode(*args3, inp["seqlens"], num_programs=used))
    us, med = bd.interleaved_graph_times(case["name"], fns, ref, ROUNDS, time_ms=bd.read_flush_ms)
    grids = bd.plan_grids(fns)
    print(f"{case['name']} (85%: {bar:.1f} us; grids {grids}) | "
          + "  ".join(f"{lb} {t:.2f}" for lb, t in med.items()), flush=True)
    return dict(grids=grids, us=us, median=med)


def main(argv=None):
    bd.run_read_flush_probe(__doc__, argv, CASES, measure, "decode_probe_grid_search.json",
                            probe="lean with cache_seqlens: the search over the grid it uses against the idle programs",
                            timing=f"CUDA-graph replays after a 256 MB read flush, medians of 50 calls, {ROUNDS} "
                                   "interleaved rounds, us")


if __name__ == "__main__":
    main()
