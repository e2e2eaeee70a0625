"""``merge_list_kernel`` (``merge_state``, ``merge_state_in_place``, sinks) at rows and warps a program other than
``merge_state_list``'s ``(4, 4)`` from 2048 rows, on the shapes of ``bench_merge.py`` and beyond (decode probe 52).

``bench_merge.py`` (H100, 2026-12-06 01:59) put two bf16 states of 32768 rows x 128 at 52-54% of the read ceiling
and of 131072 rows at 76%. Four rows of 128 over 128 threads is 4 elements a thread, an 8-byte load; this probe
asks whether wider loads (8 or 16 elements a thread) or more rows a program close the gap. Each config is checked
against the float32 merge, then timed from a CUDA graph after an L2 flush, two interleaved rounds; GB/s counts
the states read and the one written.

    PYTHONPATH=src python benchmarks/probe_merge_list_config.py [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from leanattn.kernels.merge import merge_list_kernel  # noqa: E402

# (rows M, states N, head dim D, sinks)
SHAPES = ((2048, 2, 128, False), (32768, 2, 128, False), (131072, 2, 128, False), (32768, 4, 128, False),
          (16384, 2, 64, False), (32768, 2, 256, False), (32768, 1, 128, True), (131072, 2, 128, True),
          # the last merge of a shared-prefix window at 16 samples of 64 heads, D=64 (three states), without and
          # with sinks: probe_bifurcated_sinks.py's window case took 0.8 us more with sinks (2026-12-06 05:4x)
          (1024, 3, 64, False), (1024, 3, 64, True))
# (1, 1): merge_state_list's config below 2048 rows
CONFIGS = ((4, 4), (8, 4), (16, 4), (8, 8), (16, 8), (32, 8), (4, 1), (8, 2), (2, 1), (1, 1))


def main(argv=None):
    args, _, ceiling = common.probe_start(__doc__, argv)
    rows = []
    for M, N, D, with_sinks in SHAPES:
        o = [torch.randn(M, D, device="cuda", dtype=torch.bfloat16) for _ in range(N)]
        ls = [torch.randn(M, device="cuda") * 4 for _ in range(N)]
        sinks = torch.randn(32, device="cuda") if with_sinks else None
        out = torch.empty(M, D, device="cuda", dtype=torch.bfloat16)
        lse = torch.empty(M, device="cuda")
        lses = torch.stack(ls)
        if with_sinks:
            lses = torch.cat([lses, sinks.repeat(M // 32)[None]])
        ref = torch.logsumexp(lses, 0)
        ref_o = (torch.exp(lses[:N] - ref)[..., None] * torch.stack(o).float()).sum(0)
        pad = (o + [o[0]] * 3)[:4], (ls + [ls[0]] * 3)[:4]

        def launch(bm, w):
            merge_list_kernel[(triton.cdiv(M, bm),)](
                pad[0][0], pad[1][0], pad[0][1], pad[1][1], pad[0][2], pad[1][2], pad[0][3], pad[1][3], out, lse,
                lse if sinks is None else sinks, lse, M, 32, D, D, D, D, HEAD_DIM=D, BLOCK_M=bm, BLOCK_D=D, N=N,
                SINK_HEADS=0 if sinks is None else 32, IN_PLACE=False, ROW_MASK=False, num_warps=w)
        nbytes = (N + 1) * M * (D * 2 + 4)
        res = {}
        for bm, w in CONFIGS:
            out.zero_()
            launch(bm, w)
            err = ((out.float() - ref_o).abs().max() / ref_o.abs().max()).item()
            if err > 1e-2 or not torch.allclose(lse, ref, atol=1e-4):
                raise RuntimeError(f"M={M} N={N} D={D} {bm}r/{w}w: relative error {err:.1e}")
        for _ in range(2):
            for bm, w in CONFIGS:
                res.setdefault(f"{bm}r/{w}w", []).append(round(common.time_graph(lambda: launch(bm, w)), 2))
        med = {k: min(v) for k, v in res.items()}
        best = min(med, key=med.get)
        floor = nbytes / ceiling / 1e3
        print(f"M={M:6d} N={N} D={D:3d} sinks={int(with_sinks)} floor {floor:.1f} us | "
              + " ".join(f"{k} {v:.1f}" for k, v in med.items())
              + f" | best {best} {nbytes / med[best] / 1e3:.0f} GB/s, (4,4) {nbytes / med['4r/4w'] / 1e3:.0f}",
              flush=True)
        rows.append(dict(M=M, states=N, d=D, sinks=with_sinks, bytes=nbytes, floor_us=floor, us=res, best=best))
    common.write_probe(args.out, "probe_merge_list_config.json",
                       probe="merge_list_kernel at rows and warps a program (decode probe 52)",
                       timing="graph replays after an L2 flush (do_bench's), two interleaved rounds, us",
                       read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
