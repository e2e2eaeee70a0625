"""Where the one-sample path's gap to decode over copied caches lies: per-token or per-launch (probe 29).

Nsight Compute at GQA 16k x1 (``gpu_check.sh ncu-x1-source``, raw ``decode_ncu_one_sample_full_H200.txt``): the
one-sample kernel's SMs are active as many cycles as decode's (27,536 against 27,439 on average) and its DRAM as
many (45,965 against 45,961), yet the launch takes 38,146 cycles against 35,966: about 1,750 more cycles in which
no SM is active. This probe times, in one process and interleaved over three rounds (graph replays, do_bench
medians, L2 flushed, us), each path over the same inputs at four amounts of work: the case as it is, the prefix
alone (own lengths 0; decode over copies reads the first ``P`` tokens), one 64-token tile a row (prefix length
64, own lengths 0), and nothing (every length 0), with the prefix lengths passed as a tensor in all but the
first. A gap that stays as the work shrinks is per launch; one that shrinks with it is per token. Then the GPU
kernels of one eager call of each (``torch.profiler``, merges apart as under capture), with their durations.

    PYTHONPATH=src python benchmarks/probe_x1_overhead.py [--out DIR] [--cases A,B]
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

CASES = ("gqa 16k x1", "gqa 8k x1", "mha 8k x1")


def calls(inp, prefix_len, own_len):
    """``(ours, copied)`` over ``prefix_len`` prefix tokens and ``own_len`` own tokens (None: the case as is)."""
    q, pk, pv, k, v, kc, vc = (inp[n] for n in ("q", "pk", "pv", "k", "v", "kc", "vc"))
    if prefix_len is None:
        lens, lens_c = inp["lens"], inp["lens_c"]
        return (lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, lens),
                lambda: leanattn.decode(q, kc, vc, lens_c))
    dev = q.device
    own = torch.full((1,), own_len, dtype=torch.int32, device=dev)
    plen = torch.full((1,), prefix_len, dtype=torch.int32, device=dev)
    both = torch.full((1,), prefix_len + own_len, dtype=torch.int32, device=dev)
    # the lengths live in inp as long as the graphs that read them (a freed tensor's memory is reused by the next
    # variant's lengths, which the earlier graph would then read)
    inp[f"lens {prefix_len} {own_len}"] = (own, plen, both)
    return (lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, own, prefix_lens=plen),
            lambda: leanattn.decode(q, kc, vc, both))


def kernels_of(fn, reps=20):
    """The GPU kernels of ``reps`` eager calls of ``fn``: ``{name: mean us per call}``."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.count:
            out[e.key[:60]] = round(t / reps, 2)
    return out


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp in bb.probe_inputs(CASES, want):
        P = case["prefix"]
        runs = {}
        for label, (pl, ol) in {"as is": (None, None), "prefix only": (P, 0), "one tile": (64, 0),
                                "empty": (0, 0)}.items():
            ours, copied = calls(inp, pl, ol)
            runs[f"ours, {label}"] = bd.graph_of(ours).replay
            runs[f"copied, {label}"] = bd.graph_of(copied).replay
            diff = (ours().float() - copied().float()).abs().max().item()
            if diff > 2e-2:
                raise RuntimeError(f"{case['name']} {label}: ours and decode over copies differ by {diff:.1e}")
        us, med = bd.interleaved_times(runs)
        labels = ("as is", "prefix only", "one tile", "empty")
        bd.report_ratios(case["name"], med, [(f"copied, {x}", f"ours, {x}") for x in labels])
        print(f"{'':18s} ours - copied, us: " + "  ".join(f"{x} {med[f'ours, {x}'] - med[f'copied, {x}']:+.2f}"
                                                       for x in labels), flush=True)
        os.environ["LEANATTN_DECODE_MERGE"] = "1"
        try:
            ours, copied = calls(inp, None, None)
            kern = {"ours": kernels_of(ours), "copied": kernels_of(copied)}
        finally:
            os.environ.pop("LEANATTN_DECODE_MERGE")
        print(f"{'':18s} kernels, eager, merges apart: {kern}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, kernels=kern))
        del inp, runs, ours, copied
    common.write_probe(args.out, "bifurcated_probe_x1_overhead.json",
                       probe="one-sample path against decode over copied caches at the case's work, the prefix alone, "
                             "one tile a row and none",
                       timing=bd.GRAPH_TIMING + "; kernels: torch.profiler device time per eager call", cases=out)


if __name__ == "__main__":
    main()
