"""Programs ordered across rows (decode probe 23).

With equal lengths the stream-K cut is aligned with the rows (``schedules/stream_k.programs_used``): ``k``
pieces a row, the ``k`` pieces of one row taken by programs next to each other. Programs start in the order
of their ids, so the programs that start together read one head's 128 bytes (D=64) to 512 bytes (D=256) out of
every token's row of the cache ``(B, N, H, D)``, while the other heads of those tokens are read by programs
that started elsewhere. Ordered across rows (``schedules/stream_k.across_rows``) the programs that start
together take the same piece of neighbouring rows: the same tokens of every head, side by side in memory,
as FlashDecoding's grid ``(rows, splits)`` does. Split over lean's cut (16 pieces a head) runs level with
cuDNN at D=64 where lean runs 3-4% behind (decode probe 21). This probe times, in one process and
interleaved over three rounds (graph replays, do_bench medians, L2 flushed, us), lean with its programs one
row after another (``LEANATTN_ACROSS_ROWS=0``) and across rows (``1``), cuDNN beside them, on the decode suite's
uniform cases, and the one-sample bifurcated cases and decode over their copied caches the same way.

    PYTHONPATH=src python benchmarks/probe_order.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

DECODE_CASES = ("d64 mha B=1 64k", "mha B=1 4k", "mha B=1 16k", "mha B=1 64k", "gqa B=1 32k", "gqa B=1 128k",
                "gqa B=4 32k", "gqa B=16 8k", "gqa B=64 4k", "d256 16/8 B=1 32k", "ragged-tail B=16")
X1_CASES = ("gqa 8k x1", "mha 8k x1", "gqa 16k x1")
ORDERS = {"one row": {"LEANATTN_ACROSS_ROWS": "0"}, "across": {"LEANATTN_ACROSS_ROWS": "1"}}


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp, ref, call in bd.probe_cases(DECODE_CASES, want):
        fns = {n: bd.with_plans(call, e) for n, e in ORDERS.items()}
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        bd.report_ratios(case["name"], med, [("across", "one row"), ("across", "cuDNN")])
        out.append(dict(case=case["name"], us=us, median=med))
        del inp, call, fns
    for name, ref, ours, copied in bb.one_sample_cases(X1_CASES, want):
        fns = {}
        for n, e in ORDERS.items():
            fns["ours " + n] = bd.with_plans(ours, e)
            fns["copied " + n] = bd.with_plans(copied, e)
        us, med = bd.interleaved_graph_times(name, fns, ref)
        bd.report_ratios(name, med, [("ours across", "ours one row"), ("copied across", "copied one row"),
                                     ("ours across", "copied across")])
        out.append(dict(case=name, us=us, median=med))
        del ours, copied, fns
    common.write_probe(args.out, "decode_probe_order.json",
                       probe="stream-K programs of an aligned cut ordered one row after another against across rows",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
