"""The merge of a few states per row: ``merge_states_kernel`` loading ``BLOCK_S`` states at once (one row a
program, ``merge_launch``'s config before 2026-12-03) against its unrolled loop (``UNROLL``: one tile per state)
at several rows and warps a program (probe 42).

Probe 41 (``probe_overlap_phases.py``) put the overlap path's final merge at 2.8-4.9 us of the x16/x64 cases and
6-20 us of the x256 cases (8192 rows of 2-3 states), the launch that runs after both others. This probe times the
merge alone on the shapes the suites use, in one process: graph replays of one merge after an L2 flush (the states
in HBM) and of 20 merges back to back per replay (the states in the L2, as after the launches that write them), us.

    PYTHONPATH=src python benchmarks/probe_merge_layout.py [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_decode import graph_of  # noqa: E402

from leanattn.kernels import merge as mk  # noqa: E402

# (rows M, states S): the overlap path's x256 (8192 rows, 2-3 states) and x16/x64 cases, and decode's split merges
SHAPES = ((8192, 3), (8192, 2), (2048, 3), (512, 5), (2048, 7), (32, 45))
CONFIGS = ((1, 1), (2, 1), (4, 4), (8, 4), (16, 4), (4, 2))
D = 128


def _times(fn):
    one = common.time_graph(fn)
    g = graph_of(lambda: [fn() for _ in range(20)])
    hot = common.bench(g.replay, warmup=10, rep=40) * 1e3 / 20
    return round(one, 2), round(hot, 2)


def main(argv=None):
    args, _ = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    rows = []
    for M, S in SHAPES:
        o = torch.randn(S, M, D, device="cuda")
        ls = torch.randn(S, M, device="cuda")
        out = torch.empty(M, D, device="cuda", dtype=torch.bfloat16)
        lse = torch.empty(M, device="cuda")
        ref = torch.logsumexp(ls, 0)
        ref_o = (torch.exp(ls - ref)[..., None] * o).sum(0)
        unroll_max, mk.UNROLL_MAX = mk.UNROLL_MAX, 0
        grid, meta = mk.merge_launch(S, M, D)
        mk.UNROLL_MAX = unroll_max
        runs = {f"blocked {meta['BLOCK_S']}s/{meta['num_warps']}w": lambda: mk.merge_states_kernel[grid](
            o, ls, out, lse, lse, S, M, M * D, D, M, 1, **meta)}
        for bm, w in CONFIGS:
            runs[f"unrolled {bm}r/{w}w"] = (lambda bm=bm, w=w: mk.merge_states_kernel[(triton.cdiv(M, bm),)](
                o, ls, out, lse, lse, S, M, M * D, D, M, 1, HEAD_DIM=D, BLOCK_M=bm, BLOCK_D=D, BLOCK_S=1,
                PDL=False, UNROLL=S, SINK_HEADS=0, num_warps=w))
        res = {}
        for label, fn in runs.items():
            out.zero_()
            fn()
            err = ((out.float() - ref_o).abs().max() / ref_o.abs().max()).item()
            if err > 1e-2 or not torch.allclose(lse, ref, atol=1e-4):
                raise RuntimeError(f"M={M} S={S} {label}: relative error {err:.1e}")
            res[label] = _times(fn)
        best = min(res, key=lambda k: res[k][1])
        print(f"M={M:5d} S={S:2d} " + "  ".join(f"{k} {a:.1f}/{b:.1f}" for k, (a, b) in res.items())
              + f"  | best hot {best}", flush=True)
        rows.append(dict(M=M, S=S, us_flushed_hot=res))
        del o, ls, out, lse
    common.write_probe(args.out, "probe_merge_layout.json",
                       probe="merge of a few states: BLOCK_S states a load against the unrolled loop",
                       timing="graph replays; one merge after an L2 flush / 20 back to back per replay, us",
                       head_dim=D, cases=rows)


if __name__ == "__main__":
    main()
