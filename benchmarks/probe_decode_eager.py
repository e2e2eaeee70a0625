"""Why an eager decode call can take longer in the suite's process than in a process of its own (decode probe 19).

In the suite runs of 2026-12-02 (02:27, 03:01) eager gqa B=1 32k took 61.7-65.8 us against 49.8 from a CUDA
graph, while every other case's eager time matched its graph time within 1 us; in a process of its own the
same eager call took 51.1 us (decode probe 18). This probe times, in one process, after each of a series of
steps that the suite process goes through:

1. nothing else run yet;
2. a CUDA graph captured over the call as the suite captures it (warm-up on a side stream);
3. ``torch.compile`` of ``flex_attention`` run once (the suite's flex peer; it also swaps ptxas process-wide);
4. SDPA's cuDNN backend run once;

three numbers: the host time per call on a 256-token cache (a loop the host bounds), and the eager and graph
do_bench medians of gqa B=1 32k and mha B=1 4k (us).

    PYTHONPATH=src python benchmarks/probe_decode_eager.py [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402
from host_overhead import per_call_us  # noqa: E402

import leanattn  # noqa: E402


def inputs(n, hq, hkv):
    q = torch.randn(1, hq, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, n, hkv, 128, dtype=torch.bfloat16, device="cuda")
    return q, k, torch.randn_like(k), torch.tensor([n], dtype=torch.int32, device="cuda")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    tiny = inputs(256, 32, 8)
    cases = {"gqa B=1 32k": inputs(32768, 32, 8), "mha B=1 4k": inputs(4096, 32, 32)}
    calls = {name: (lambda a=a: leanattn.decode(*a)) for name, a in cases.items()}
    graphs = {}
    rows = []

    def measure(step):
        row = dict(step=step, host_us=round(per_call_us(lambda: leanattn.decode(*tiny)), 2))
        for name, fn in calls.items():
            row[f"{name} eager"] = round(common.bench(fn) * 1e3, 2)
            if name in graphs:
                row[f"{name} graph"] = round(common.bench(graphs[name].replay) * 1e3, 2)
        rows.append(row)
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    measure("1 fresh")
    for name, fn in calls.items():
        graphs[name] = bd.graph_of(fn)
    measure("2 graphs captured")
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v, _ = cases["gqa B=1 32k"]
    flex = torch.compile(flex_attention, dynamic=True)
    flex(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)
    torch.cuda.synchronize()
    measure("3 flex compiled")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        F.scaled_dot_product_attention(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)
    torch.cuda.synchronize()
    measure("4 cuDNN run")
    common.write_probe(args.out, "decode_probe_eager_steps.json", unit="us", rows=rows)


if __name__ == "__main__":
    main()
