"""Whether the one-sample path's gap to decode over copied caches follows the own cache's allocation (probe 31).

Probe 29 (``probe_x1_overhead.py``, H200, 2026-12-02 14:1x) found the gap only where own tokens are read: with the
prefix alone the two paths are level (GQA 16k x1 31.5 against 31.6 us), with 256 own tokens a sample the one-sample
path is 0.32 us behind. The gap is largest on the GQA cases, whose own K and V (1 x 256 x 8 x 128 bf16, 512 KB each)
come from PyTorch's small-block pool (blocks of at most 1 MB, carved from 2 MB segments), and smallest on MHA
(2 MB each, the large pool), while the copied caches are one large allocation each. This probe times, in one process
and interleaved over three rounds (graph replays, do_bench medians, L2 flushed, us), decode over the copied caches
and the one-sample path over the same values in three placements: the suite's (own K and V allocated apart), own K
and V as views of a 64 MB allocation each, and prefix and own tokens of K (and of V) as adjacent views of one
allocation. The kernel is the same in all three. Then ours and decode over copies again, five rounds with ours first
in each and graphs captured ours first, as the suite does. Runs of 2026-12-02 (H200, raw
``bifurcated_probe_x1_alloc_H200*.json``): 0.991-1.010x in every placement and order over four runs on two machines.

    PYTHONPATH=src python benchmarks/probe_x1_alloc.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa 8k x1", "gqa 16k x1", "gqa 32k x1", "mha 8k x1", "mha 16k x1")


def in_buffer(parts, numel):
    """Copies of ``parts`` as adjacent views at the start of one new allocation of ``numel`` elements."""
    buf = torch.empty(numel, dtype=parts[0].dtype, device=parts[0].device)
    out, at = [], 0
    for p in parts:
        view = buf[at:at + p.numel()].view(p.shape)
        view.copy_(p)
        out.append(view)
        at += p.numel()
    return out


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    big = 32 * 2**20  # elements: 64 MB of bf16, from the large pool
    for case, inp in bb.probe_inputs(CASES, want):
        q, pk, pv, k, v, lens = (inp[n] for n in ("q", "pk", "pv", "k", "v", "lens"))
        (k_big,), (v_big,) = in_buffer([k], big), in_buffer([v], big)
        pk1, k1 = in_buffer([pk, k], pk.numel() + k.numel())
        pv1, v1 = in_buffer([pv, v], pv.numel() + v.numel())
        fns = {"copied": lambda: leanattn.decode(q, inp["kc"], inp["vc"], inp["lens_c"]),
               "ours, apart": lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, lens),
               "ours, own in 64 MB": lambda: leanattn.bifurcated_decode(q, pk, pv, k_big, v_big, lens),
               "ours, one allocation": lambda: leanattn.bifurcated_decode(q, pk1, pv1, k1, v1, lens)}
        us, med = bd.interleaved_graph_times(case["name"], fns, bb.reference_of(inp, [0]), pick=[0])
        bd.report_ratios(case["name"], med, [("copied", n) for n in fns if n != "copied"])
        # the suite times ours first in each round (bench_bifurcated's x1_interleaved): the same pair in that order,
        # from graphs captured ours first
        pair = {n: bd.graph_of(fns[n]).replay for n in ("ours, apart", "copied")}
        us_o, med_o = bd.interleaved_times(pair, 5)
        bd.report_ratios(case["name"] + ", ours first", med_o, [("copied", "ours, apart")])
        out.append(dict(case=case["name"], own_bytes=k.numel() * k.element_size(), us=us, median=med,
                        ours_first=dict(us=us_o, median=med_o)))
        del inp, fns, pair, q, pk, pv, k, v, lens, k_big, v_big, pk1, k1, pv1, v1
    common.write_probe(args.out, "bifurcated_probe_x1_alloc.json",
                       probe="one-sample path against decode over copies with the own cache allocated apart (small "
                             "pool on GQA), in a 64 MB allocation, and adjacent to the prefix in one allocation",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
