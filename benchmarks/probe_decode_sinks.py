"""Probe: what attention sinks cost a decode step (gpt-oss-20b's attention: 64/8 heads, D=64, bf16; its sliding
layers attend 128 keys, its full layers the whole context).

``sinks=`` starts the state of each row's first piece from its sink (``kernels/attend.initial_state``), so it adds
no launch. For each case: ``leanattn.decode`` without sinks, with them, and with them merged apart by one more launch
(``merges.apply_sinks`` on decode's state: how they were applied before), each checked against the float64
reference (first and last sequence), captured in CUDA graphs and timed in 3 interleaved rounds (do_bench medians,
L2 flushed); the differences are what sinks cost a step either way. The IO floor is the KV bytes attended over the
read ceiling.

    PYTHONPATH=src python benchmarks/probe_decode_sinks.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.merges import apply_sinks  # noqa: E402

HQ, HKV, D = 64, 8, 64
# (name, batch, context, window_left or -1)
CASES = (("B=1 4k full", 1, 4096, -1), ("B=1 32k full", 1, 32768, -1), ("B=1 32k window 128", 1, 32768, 127),
         ("B=16 8k full", 16, 8192, -1), ("B=16 8k window 128", 16, 8192, 127), ("B=64 4k full", 64, 4096, -1),
         ("B=64 4k window 128", 64, 4096, 127))


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    for name, B, n, window in CASES:
        if want and name not in want:
            continue
        q = torch.randn(B, HQ, D, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(B, n, HKV, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        lens = torch.full((B,), n, dtype=torch.int32, device="cuda")
        sinks = torch.randn(HQ, dtype=torch.bfloat16, device="cuda") * 2
        idx = [0, B - 1]
        with_sink = leanattn.reference.decode(q[idx], k[idx], v[idx], lens[idx], window_left=window,
                                              sinks=sinks.float())[0]
        refs = {"no sinks": leanattn.reference.decode(q[idx], k[idx], v[idx], lens[idx], window_left=window)[0],
                "sinks": with_sink, "sinks apart": with_sink}
        fns = {"no sinks": lambda: leanattn.decode(q, k, v, lens, window_left=window),
               "sinks": lambda: leanattn.decode(q, k, v, lens, window_left=window, sinks=sinks),
               "sinks apart": lambda: apply_sinks(*leanattn.decode(q, k, v, lens, window_left=window, return_lse=True),
                                                  sinks)[0]}
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        keys = n if window < 0 else min(n, window + 1)
        nbytes = 2 * B * keys * HKV * D * 2
        floor = nbytes / ceiling / 1e3
        extra = med["sinks"] - med["no sinks"]
        print(f"{name:22s} no sinks {med['no sinks']:.1f}  sinks {med['sinks']:.1f}  apart {med['sinks apart']:.1f} us"
              f" | +{extra:.1f} us ({med['sinks'] / med['no sinks']:.3f}x; apart "
              f"{med['sinks apart'] / med['no sinks']:.3f}x)  floor {floor:.1f}", flush=True)
        rows.append(dict(case=name, batch=B, context=n, window_left=window, hq=HQ, hkv=HKV, d=D, bytes=nbytes,
                         floor_us=floor, us=us, median=med, extra_us=extra, ratio=med["sinks"] / med["no sinks"],
                         ratio_apart=med["sinks apart"] / med["no sinks"]))
    common.write_probe(args.out, "probe_decode_sinks.json", probe="decode with and without attention sinks "
                       "(gpt-oss-20b attention)", timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
