"""Merge benchmark: ``leanattn.merge_states`` (stacked states), ``leanattn.merge_state`` (two states held apart) and
``leanattn.merge_state_in_place`` against the merge a PyTorch user writes (``torch.logsumexp`` and a weighted sum in
float32), eager and compiled.

A merge reads every state once and writes one: it is memory-bound, its floor the bytes read and written
(``S`` states of ``rows x D`` in bf16 and their float32 LSEs, one state out) over the read ceiling measured in the
same run. Each method is checked against the float64 reference (``leanattn.reference.merge_states``), captured in a
CUDA graph and timed over 3 interleaved rounds (do_bench medians, L2 flushed). The states hold random outputs and
LSEs (a few percent ``-inf``: states that attended no key).

    PYTHONPATH=src python benchmarks/bench_merge.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

# (name, op, states S, batch B, heads H, head dim D): tree decode's all-gathered shards (B=1), decode's splits,
# a cascade's two levels (merge_state) at serving batches
CASES = (("tree 8 shards B=1", "merge_states", 8, 1, 32, 128),
         ("splits 4 B=64", "merge_states", 4, 64, 32, 128),
         ("splits 16 B=16", "merge_states", 16, 16, 32, 128),
         ("splits 2 B=256 D=64", "merge_states", 2, 256, 64, 64),
         ("two states B=64", "merge_state", 2, 64, 32, 128),
         ("two states B=1024", "merge_state", 2, 1024, 32, 128),
         ("two states B=4096", "merge_state", 2, 4096, 32, 128),
         ("in place B=1024", "merge_state_in_place", 2, 1024, 32, 128))
PEERS = ("torch", "torch.compile")


def torch_merge(outs, lses):
    """The merge in PyTorch, float32 (the user's version): ``(S, ..., D)``, ``(S, ...)`` -> ``(out, lse)``."""
    lse = torch.logsumexp(lses, dim=0)
    w = torch.exp(lses - lse).nan_to_num(0.0)  # all-empty rows: -inf - -inf
    return (w.unsqueeze(-1) * outs.float()).sum(0).to(outs.dtype), lse


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    compiled = torch.compile(torch_merge, dynamic=True)
    rows = []
    for name, op, S, B, H, D in CASES:
        if want and name not in want:
            continue
        outs = torch.randn(S, B, H, D, dtype=torch.bfloat16, device="cuda")
        lses = torch.randn(S, B, H, device="cuda") * 4
        lses[torch.rand_like(lses) < 0.03] = float("-inf")
        ref = leanattn.reference.merge_states(outs, lses)[0]
        if op != "merge_states":
            # two states held apart, as two launches leave them: the peers stack them first, as they must
            a, b = outs[0].clone(), outs[1].clone()
            la, lb = lses[0].clone(), lses[1].clone()
            a2, la2 = a.clone(), la.clone()  # written over by the in-place merge, checked on its first call

        def ours():
            if op == "merge_states":
                return leanattn.merge_states(outs, lses)[0]
            if op == "merge_state":
                return leanattn.merge_state(a, la, b, lb)[0]
            leanattn.merge_state_in_place(a2, la2, b, lb)
            return a2
        stacked = (lambda: (outs, lses)) if op == "merge_states" else (
            lambda: (torch.stack([a, b]), torch.stack([la, lb])))
        fns = {"leanattn": ours, "torch": lambda: torch_merge(*stacked())[0],
               "torch.compile": lambda: compiled(*stacked())[0]}
        us, med = bd.interleaved_graph_times(name, fns, ref)
        nbytes = (S + 1) * B * H * (D * 2 + 4)
        floor = nbytes / ceiling / 1e3
        gbs = {k: nbytes / v / 1e3 for k, v in med.items()}
        print(f"{name:22s} {op:12s} leanattn {med['leanattn']:.1f} us ({gbs['leanattn']:.0f} GB/s, floor "
              f"{floor:.1f})" + bd.peer_summary(med, PEERS, "leanattn"), flush=True)
        rows.append(dict(case=name, op=op, states=S, batch=B, heads=H, d=D, dtype="bfloat16", bytes=nbytes,
                         floor_us=floor, us=us, median=med, gbs=gbs,
                         best_peer_over_ours=min(med[p] for p in PEERS) / med["leanattn"]))
    path = common.write_probe(args.out, "bench_merge.json", probe="merge_states / merge_state against PyTorch's "
                              "merge, eager and compiled", timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling,
                              cases=rows)
    common.plot_probe(path, "leanattn", path.replace(".json", ".png"), "state merges: time over leanattn's")


if __name__ == "__main__":
    main()
