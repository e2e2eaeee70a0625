"""Room for own-token programs beside the warp-specialized prefix (probe 40).

Beside one warp-specialized prefix program (104 registers x 384 threads, 131 KB of shared memory at 3 stages) an SM
has room for two own-token programs of decode's split kernel at its overlap config (64-token tiles, 4 warps, 2
stages: 64 registers, 38 KB, offline with Triton 3.6 for sm_90a): shared memory binds. A third fits with the prefix's
ring at 2 stages (98 KB), or with 32-token own tiles (58 registers, 21 KB). This probe times the overlap path on the
suite's x256 cases (the own tokens the larger share of the bytes) in those forms against the default, in one
process, five interleaved rounds (graph replays, do_bench medians, L2 flushed, us). Two runs of 2026-12-03 (H200, raw
``bifurcated_probe_overlap_room_H200.json``, notes section 27): the default ahead on every case, the others 0.8-48%
slower (a 2-stage ring 27-48% at GQA 16k/32k x256, where the prefix is the larger share).

    PYTHONPATH=src python benchmarks/probe_overlap_room.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402

CASES = tuple(f"{m} {p} x256" for m in ("mha", "gqa") for p in ("8k", "16k", "32k"))
# LEANATTN_BIFURCATED_CONFIG: the overlap path (field 10) with the warp-specialized prefix (num_warps 12) at the
# given stages; LEANATTN_DECODE_CONFIG: the own-token kernel's block_n, num_warps, num_stages, ctas_per_sm
VARIANTS = {
    "default": (None, []),
    "ws 2 stages": ({"LEANATTN_BIFURCATED_CONFIG": "0,0,12,2,0,0,0,0,0,4"}, []),
    "own 32-token tiles": ({"LEANATTN_BIFURCATED_CONFIG": "0,0,12,0,0,0,0,0,0,4",
                            "LEANATTN_DECODE_CONFIG": "32,4,2,2"}, []),
    "ws 2 stages, own 32": ({"LEANATTN_BIFURCATED_CONFIG": "0,0,12,2,0,0,0,0,0,4",
                             "LEANATTN_DECODE_CONFIG": "32,4,2,2"}, []),
}


def main(argv=None):
    bb.variant_probe(__doc__, argv, CASES, VARIANTS, ("own_grid", lambda p: p.info.get("own_grid")),
                     "bifurcated_probe_overlap_room.json",
                     "overlap path with the warp-specialized prefix: room for a third own-token program per SM")


if __name__ == "__main__":
    main()
