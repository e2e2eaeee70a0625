"""Launch configs of the overlap path's own-token kernel, beside the Gluon prefix (probe 32).

On the overlap path (``ops/bifurcated_overlap.py``) the own tokens are read by decode's split kernel on a side
stream. With decode's table config (64-token tiles, 4 warps, 3 stages: 70 KB of shared memory) one program fits
beside a Gluon prefix program of 115 KB. At MHA x256 the own tokens are two thirds of the bytes and the case ran
at 1.27x (16k) and 1.40x (32k) the IO floor; read alone they stream at about 85% of the read ceiling (notes section
11). Smaller programs (2 stages, or 32-token tiles) fit two beside each prefix program and keep more loads in flight;
8 warps or 128-token tiles keep more in flight per program. This probe times, in one process and interleaved over
five rounds (graph replays, do_bench medians, L2 flushed, us), the whole op under each own-token config
(``LEANATTN_DECODE_CONFIG``, read when the plan is made; it reaches only the own-token plan on this path) on the
overlap path's suite cases.

Run of 2026-12-02 14:24 (H200, raw ``bifurcated_probe_overlap_own_H200.json``; the default was then 3 stages):
64-token tiles over 2 stages ahead or level on 11 of 12 cases (MHA 16k x256 347.6 against 380.3 us), kept as
``ops/bifurcated_overlap.OWN_STAGES``, so "default" is now 2 stages and "64,4,3" the former default. The first run
(14:19, five cases, three rounds, ``_first_H200.json``) also timed 64,8,3 (2-6% slower than the 3-stage default at MHA
x256), 128,4,2 (level with it, 2.7% ahead at MHA 16k x256, 6.7% behind 64,4,2 there) and 128,8,2 (level to 3.4%
slower): dropped.

    PYTHONPATH=src python benchmarks/probe_overlap_own.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402


# the suite's cases that take the overlap path (ops/bifurcated_overlap.preferred)
CASES = tuple(f"{m} {p} x{n}" for m, ns in (("mha", (16, 256)), ("gqa", (64, 256))) for n in ns
              for p in ("8k", "16k", "32k"))
# block_n, num_warps, num_stages, ctas_per_sm (the last does not bind the split schedule's grid)
CONFIGS = {"default": None, "64,4,3": "64,4,3,2", "32,4,3": "32,4,3,2", "32,4,2": "32,4,2,2"}


def main(argv=None):
    bb.variant_probe(__doc__, argv, CASES,
                     {label: ({"LEANATTN_DECODE_CONFIG": cfg} if cfg else None, []) for label, cfg in CONFIGS.items()},
                     ("paths", lambda p: (p.path, p.info.get("own_grid"))), "bifurcated_probe_overlap_own.json",
                     "overlap path: the own-token split kernel's launch config beside the Gluon prefix",
                     configs=CONFIGS)


if __name__ == "__main__":
    main()
