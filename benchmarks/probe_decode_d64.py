"""Where lean loses to split at D=64 outside the tile loop (decode probe 21).

On the suite's d64 case (mha B=1 64k, D=64) lean runs 4-5% behind cuDNN in every run, while split over lean's own
cut (16 pieces a head, 512 programs of 32 tiles) runs level with cuDNN (probe 15: 139.4 against lean's 145.3 us).
Offline (Triton 3.6, sm_90a SASS) the two tile loops are the same size (432 and 440 instructions); lean compiles
to 128 registers (4 programs per SM) and split to 90 (5), and lean's 16 bytes of stack are touched once per
piece. What is left is outside the loop: the schedule computed at entry before the first K/V load, and the merge
at the end. This probe times, in one process and interleaved over three rounds (graph replays, do_bench
medians, L2 flushed, us):

* lean at its default (the aligned cut: 512 of the 528 programs that fit);
* lean over 528 programs given by the caller (``num_programs``: the kernel does not align, every slot works);
* lean over 512 programs given by the caller (the same cut as the default, without the alignment search);
* split at lean's cut (16 a head) and at its own heuristic; cuDNN;
* the fixed cost of lean and of split at that cut: the same launches with every length 0 (no K/V read).

    PYTHONPATH=src python benchmarks/probe_decode_d64.py [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn import runtime  # noqa: E402

K = 1024
CASE = dict(name="d64 mha B=1 64k", lens=[64 * K], hq=32, hkv=32, d=64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    sms = runtime.num_sms(torch.device("cuda"))
    torch.manual_seed(0)
    inp = bd.make_inputs(CASE)
    q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
    ref, _ = leanattn.reference.decode(q, k, v, sl)
    d = leanattn.decode
    full = 4 * sms  # D=64: 4 programs per SM (ops/decode_config._CUDA_TABLE)
    fns = {
        "lean": lambda: d(q, k, v, sl),
        f"lean, {full} programs": lambda: d(q, k, v, sl, num_programs=full),
        "lean, 512 programs": lambda: d(q, k, v, sl, num_programs=512),
        "split, 16 a head": lambda: d(q, k, v, sl, schedule="split", num_splits=16),
        "split": lambda: d(q, k, v, sl, schedule="split"),
        "cuDNN": bd.METHODS["sdpa_cudnn"](CASE, inp),
    }
    us, med = bd.interleaved_graph_times(CASE["name"], fns, ref)
    print(f"{CASE['name']:16s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items()), flush=True)

    # the fixed cost: every length 0, nothing read, the output zero
    zero = torch.zeros_like(sl)
    empty = {
        "lean, lengths 0": lambda: d(q, k, v, zero),
        "split 16 a head, lengths 0": lambda: d(q, k, v, zero, schedule="split", num_splits=16),
    }
    graphs = {}
    for label, fn in empty.items():
        if fn().abs().max().item() != 0:
            raise RuntimeError(f"{label}: expected a zero output")
        graphs[label] = bd.graph_of(fn)
    us0 = {}
    for _ in range(3):
        for label, g in graphs.items():
            us0.setdefault(label, []).append(round(common.bench(g.replay, warmup=10, rep=40) * 1e3, 2))
    med0 = {n: sorted(v)[len(v) // 2] for n, v in us0.items()}
    print("fixed cost       " + "  ".join(f"{n} {t:.1f}" for n, t in med0.items()), flush=True)
    common.write_probe(args.out, "decode_probe_d64.json", case=CASE["name"], us=us, median=med,
                       fixed_cost_us=us0, fixed_cost_median=med0,
                       timing=bd.GRAPH_TIMING)


if __name__ == "__main__":
    main()
