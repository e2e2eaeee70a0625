"""Probe: what attention sinks cost a decode step (gpt-oss-20b's attention: 64/8 heads, D=64, bf16; its sliding
layers attend 128 keys, its full layers the whole context).

``sinks=`` is merged into decode's final state by one more launch (``kernels/sinks.py``: each row's state and its
head's sink state folded by the merge's steps). For each case: ``leanattn.decode`` without and with sinks, both
checked against the float64 reference (first and last sequence), captured in CUDA graphs and timed in 3 interleaved
rounds (do_bench medians, L2 flushed); the difference is the sink launch's cost in a graph, the ratio what it adds
to the step. The IO floor is the KV bytes attended over the read ceiling.

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

HQ, HKV, D = 64, 8, 64
# (name, batch, context, window_left or -1)
CASES = (("B=1 4k full", 1, 4096, -1), ("B=1 32k full", 1, 32768, -1), ("B=1 32k window 128", 1, 32768, 127),
         ("B=16 8k full", 16, 8192, -1), ("B=16 8k window 128", 16, 8192, 127), ("B=64 4k full", 64, 4096, -1),
         ("B=64 4k window 128", 64, 4096, 127))


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    ceiling = common.read_bandwidth_gbs()["read_ceiling"]
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
        refs = {"no sinks": leanattn.reference.decode(q[idx], k[idx], v[idx], lens[idx], window_left=window)[0],
                "sinks": leanattn.reference.decode(q[idx], k[idx], v[idx], lens[idx], window_left=window,
                                                   sinks=sinks.float())[0]}
        fns = {"no sinks": lambda: leanattn.decode(q, k, v, lens, window_left=window),
               "sinks": lambda: leanattn.decode(q, k, v, lens, window_left=window, sinks=sinks)}
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        keys = n if window < 0 else min(n, window + 1)
        nbytes = 2 * B * keys * HKV * D * 2
        floor = nbytes / ceiling / 1e3
        extra = med["sinks"] - med["no sinks"]
        print(f"{name:22s} no sinks {med['no sinks']:.1f}  sinks {med['sinks']:.1f} us | +{extra:.1f} us "
              f"({med['sinks'] / med['no sinks']:.3f}x)  floor {floor:.1f}", flush=True)
        rows.append(dict(case=name, batch=B, context=n, window_left=window, hq=HQ, hkv=HKV, d=D, bytes=nbytes,
                         floor_us=floor, us=us, median=med, extra_us=extra, ratio=med["sinks"] / med["no sinks"]))
    common.write_probe(args.out, "probe_decode_sinks.json", probe="decode with and without attention sinks "
                       "(gpt-oss-20b attention)", timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
