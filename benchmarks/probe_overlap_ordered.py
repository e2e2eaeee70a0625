"""The overlap path with its two launches ordered on one stream, against two streams (probe 35).

On the overlap path the own tokens run on a side stream beside the Gluon prefix, and the hardware places the two
grids' programs in an order that varies: MHA 16k x256 measured 352.7-404.4 us and 32k x256 495.0-570.3 between
consecutive medians of one graph (probe 33, ``probe_overlap_graphs.py``), and notes section 15 found the overlap
works when the prefix programs are placed first. With ``ops/bifurcated_overlap.ORDERED`` the own tokens are the
prefix's programmatic dependent launch on one stream: they start only once every prefix program has started, and
the last of them waits for the prefix to finish (decode's ``split_decode_kernel`` with ``AFTER_PRIOR``). This probe times, in one
process and interleaved over five rounds (graph replays, do_bench medians, L2 flushed, us), both on every suite case
the overlap path takes; each round's value is kept, so the spread of each is in the results file.

    PYTHONPATH=src python benchmarks/probe_overlap_ordered.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
from probe_overlap_own import CASES  # noqa: E402

from leanattn.ops import bifurcated_overlap as ov  # noqa: E402


def main(argv=None):
    bb.variant_probe(__doc__, argv, CASES, {"two streams": (None, [(ov, "ORDERED", False)]),
                                             "ordered": (None, [(ov, "ORDERED", True)])},
                     ("ordered", lambda p: p.info.get("ordered")), "bifurcated_probe_overlap_ordered.json",
                     "overlap path: own tokens as the prefix's programmatic dependent launch on one stream, "
                     "against a second stream")


if __name__ == "__main__":
    main()
