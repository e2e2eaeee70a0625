"""The warp-specialized prefix with its consumers taking turns (ping-pong) on the overlap path, against without
(probe 39).

Probe 38 (``probe_ws_prefix.py``) times the prefix pass alone; here the whole call, with the own tokens beside it,
on the suite cases where ``ops/bifurcated_overlap.prefix_warp_specialized`` takes the warp-specialized prefix
(GQA 16k and 32k, x64 and x256) and, with the num_warps field forcing it, on GQA 8k x256 and MHA x256.
``ops/bifurcated_overlap.WS_PINGPONG`` on and off; the stages are the rule's. In one process, five interleaved
rounds (graph replays, do_bench medians, L2 flushed, us).

    PYTHONPATH=src python benchmarks/probe_overlap_pingpong.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402

from leanattn.ops import bifurcated_overlap as ov  # noqa: E402

CASES = ("gqa 16k x64", "gqa 16k x256", "gqa 32k x64", "gqa 32k x256", "gqa 8k x256", "mha 8k x256", "mha 16k x256",
         "mha 32k x256")
# path field 4 (overlap) with num_warps 12 (the warp-specialized prefix); 0 elsewhere: the rule's stages
WS = {"LEANATTN_BIFURCATED_CONFIG": "0,0,12,0,0,0,0,0,0,4"}


def main(argv=None):
    bb.variant_probe(__doc__, argv, CASES, {"ws": (WS, [(ov, "WS_PINGPONG", False)]),
                                            "ws ping-pong": (WS, [(ov, "WS_PINGPONG", True)]),
                                            "default": (None, [])},
                     ("prefix_stages", lambda p: p.info.get("prefix_stages")), "bifurcated_probe_overlap_pingpong.json",
                     "overlap path with the warp-specialized prefix, its consumers taking turns or not, and the "
                     "default")


if __name__ == "__main__":
    main()
