"""Probe: what attention sinks cost the shared-prefix ops (gpt-oss-20b's attention: 64/8 heads, D=64, bf16; 256 own
tokens a sample).

Where an op's last launch merges states (the states and overlap paths, a cascade's levels, a window's parts, a
sample's even pieces), that launch folds the sinks in after them (``kernels/merge.fold_sinks``); before, every call
with sinks took one more launch (``merges.apply_sinks`` on the op's state), which "sinks apart" times. For each case:
the op without sinks, with them, and with them merged apart, each checked against the float64 reference (first and
last sample), captured in CUDA graphs and timed in 3 interleaved rounds (do_bench medians, L2 flushed). The IO floor
is the prefix bytes once and the own bytes over the read ceiling.

    PYTHONPATH=src python benchmarks/probe_bifurcated_sinks.py [--out DIR] [--cases A,B]
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

HQ, HKV, D, OWN = 64, 8, 64, 256
# (name, samples, prompts, prefix tokens a prompt, system prompt tokens before them (a cascade level) or 0,
#  window_left or -1)
CASES = (("1 sample 8k", 1, 1, 8192, 0, -1), ("x16 8k", 16, 1, 8192, 0, -1), ("x64 8k", 64, 1, 8192, 0, -1),
         ("4 prompts x4 8k", 16, 4, 8192, 0, -1), ("cascade 2k + 4 prompts x4 8k", 16, 4, 8192, 2048, -1),
         ("x16 8k window 128", 16, 1, 8192, 0, 127))


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    bf = dict(dtype=torch.bfloat16, device="cuda")
    for name, B, G, P, system, window in CASES:
        if want and name not in want:
            continue
        q = torch.randn(B, HQ, D, **bf)
        k = torch.randn(B, OWN, HKV, D, **bf)
        v = torch.randn_like(k)
        lens = torch.full((B,), OWN, dtype=torch.int32, device="cuda")
        pk, pv = torch.randn(G, P, HKV, D, **bf), torch.randn(G, P, HKV, D, **bf)
        ids = (torch.arange(B, device="cuda") % G).to(torch.int32)
        levels = ([(torch.randn(system, HKV, D, **bf), torch.randn(system, HKV, D, **bf))] if system else [])
        levels.append((pk, pv, None, ids) if G > 1 else (pk[0], pv[0]))
        sinks = torch.randn(HQ, **bf) * 2
        idx = [0, B - 1]
        opts = dict(window_left=window, max_group_size=B // G if G > 1 else 0)

        def op(s=None, lse=False):
            return leanattn.cascade_decode(q, levels, k, v, lens, return_lse=lse, sinks=s, **opts)

        def ref(s=None):
            lv = [tuple(t[idx] if t is not None and j == 3 else t for j, t in enumerate(level)) for level in levels]
            return leanattn.reference.cascade_decode(q[idx], lv, k[idx], v[idx], lens[idx], window_left=window,
                                                     sinks=s)[0]
        with_sink = ref(sinks.float())
        refs = {"no sinks": ref(), "sinks": with_sink, "sinks apart": with_sink}
        fns = {"no sinks": lambda: op(), "sinks": lambda: op(sinks),
               "sinks apart": lambda: apply_sinks(*op(lse=True), sinks)[0]}
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        keys = min(P, window + 1) if window >= 0 else P
        nbytes = 2 * (G * keys + system + B * OWN) * HKV * D * 2
        floor = nbytes / ceiling / 1e3
        print(f"{name:30s} no sinks {med['no sinks']:.1f}  sinks {med['sinks']:.1f}  apart {med['sinks apart']:.1f} us"
              f" | sinks {med['sinks'] / med['no sinks']:.3f}x, apart {med['sinks apart'] / med['no sinks']:.3f}x"
              f"  floor {floor:.1f}", flush=True)
        rows.append(dict(case=name, samples=B, prompts=G, prefix=P, system=system, own=OWN, window_left=window,
                         hq=HQ, hkv=HKV, d=D, bytes=nbytes, floor_us=floor, us=us, median=med,
                         ratio=med["sinks"] / med["no sinks"], ratio_apart=med["sinks apart"] / med["no sinks"]))
    common.write_probe(args.out, "probe_bifurcated_sinks.json", probe="shared-prefix decode with and without "
                       "attention sinks (gpt-oss-20b attention), the sinks in the merge launch against a launch apart",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
