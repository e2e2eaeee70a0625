"""Launch shapes of the overlap path's Gluon prefix over float8 tiles (bifurcated probe 54), same process.

On suite cases of ``bench_bifurcated`` whose calls take the overlap path, the caches quantised to e4m3 as
``probe_bifurcated_fp8.quantised`` does, the default call against the overlap path forced
(``LEANATTN_BIFURCATED_CONFIG`` path field 4) with each of these prefix shapes: 64 rows a program, one program an SM
over a ring of four stages; 64 rows, two an SM, two stages; 128 rows over two warp groups, four and three stages;
and the default call over the bf16 caches. Each checked against the float64 reference of the first and last sample,
then CUDA-graph replays timed in five interleaved rounds (do_bench, L2 flushed; ``bench_bifurcated.variant_probe``).
H200, 2026-12-04 13:59: raw ``bifurcated_probe_overlap_fp8_H200.json``.

A second form (14:03, raw ``bifurcated_probe_overlap_fp8_ahead_H200.json``) timed the kernel converting tile j+1's K
during tile j's softmax, at the default shapes and three others; it was level or slower and was removed (its code:
``git show cb215c1:src/leanattn/kernels/bifurcated_prefix_gluon.py``, the ``AHEAD`` constexpr).

    PYTHONPATH=src python benchmarks/probe_overlap_fp8.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
from probe_bifurcated_fp8 import quantised  # noqa: E402

CASES = ("gqa 8k x64", "gqa 16k x64", "gqa 32k x64", "gqa 8k x256", "mha 16k x16")


def forced(warps, stages, per_sm):
    """The overlap path with the num_warps (4: 64 rows, 8: 128), num_stages and ctas_per_sm fields."""
    return {"LEANATTN_BIFURCATED_CONFIG": f"0,0,{warps},{stages},{per_sm},0,0,0,0,4"}


def main(argv=None):
    variants = {"fp8": (None, (), quantised),
                "64r 1/SM 4st": (forced(4, 4, 1), (), quantised),
                "64r 2/SM 2st": (forced(4, 2, 2), (), quantised),
                "128r 4st": (forced(8, 4, 0), (), quantised),
                "128r 3st": (forced(8, 3, 0), (), quantised),
                "bf16": (None, ())}
    info = ("prefix", lambda p: (p.path, p.info.get("prefix_rows"), p.info.get("prefix_stages"),
                                 p.info.get("prefix_programs")))
    bb.variant_probe(__doc__, argv, CASES, variants, info, "bifurcated_probe_overlap_fp8.json",
                     "overlap path's Gluon prefix over float8 e4m3 tiles: rows, programs an SM and stages")


if __name__ == "__main__":
    main()
