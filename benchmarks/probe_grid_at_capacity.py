"""A persistent grid sized to the cut at full capacity (decode probe 24).

With ``cache_seqlens`` the lengths live on the GPU, so a lean plan launches the grid its occupancy allows (528
programs at D=64 on an H200, 264 at D=128) and the kernel cuts the work over as many of them as an aligned cut
needs (``schedules/stream_k.programs_used``). At d64 mha B=1 64k that is 512: the 16 programs left idle cost
1.2 us (decode probe 21: 141.2 against 140.0 us over exactly 512 given). A plan could instead launch the
programs the cut at full capacity uses, and let the kernel cut the real lengths over those; where the real
lengths are shorter than the capacity, or ragged, the kernel then has up to 3% fewer programs to cut over.
This probe times both grids, in one process and interleaved over three rounds (graph replays, do_bench
medians, L2 flushed, us), on one sequence at full capacity and shorter, and on several ragged sequences.

    PYTHONPATH=src python benchmarks/probe_grid_at_capacity.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn import runtime  # noqa: E402
from leanattn.ops import decode as dec_ops  # noqa: E402
from leanattn.schedules.stream_k import programs_used_py, tiles_per_sequence  # noqa: E402

K = 1024
# (name, Hq, Hkv, D, capacity, lengths)
CASES = [
    ("d64 mha 64k, full", 32, 32, 64, 64 * K, [64 * K]),
    ("d64 mha 64k cap, 60000", 32, 32, 64, 64 * K, [60000]),
    ("d64 mha 64k cap, 40000", 32, 32, 64, 64 * K, [40000]),
    ("mha 64k, full", 32, 32, 128, 64 * K, [64 * K]),
    ("gqa 32k, full", 32, 8, 128, 32 * K, [32 * K]),
    ("gqa 32k cap, 30000", 32, 8, 128, 32 * K, [30000]),
    ("gqa 128k cap, 100000", 32, 8, 128, 128 * K, [100000]),
    ("gqa B=16 8k cap, ragged", 32, 8, 128, 8 * K, [8192, 8000, 7000, 6000, 5000, 4000, 3000, 2000] * 2),
    ("gqa B=4 32k, full", 32, 8, 128, 32 * K, [32 * K] * 4),
]
_DEFAULT_GRID = dec_ops._Plan._lean_grid


def _grid_at_capacity(self, cfg, q, k_cache, v_cache, workers):
    grid = _DEFAULT_GRID(self, cfg, q, k_cache, v_cache, workers)
    if workers > 0:
        return grid
    tiles = tiles_per_sequence([self.cap] * q.shape[0], cfg.block_n)
    return programs_used_py(tiles, self.meta["ROWS"], grid, runtime.num_sms(q.device))


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for name, hq, hkv, d, cap, lens in CASES:
        if want and name not in want:
            continue
        B = len(lens)
        q = torch.randn(B, hq, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(B, cap, hkv, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
        ref, _ = leanattn.reference.decode(q, k, v, sl)
        call = lambda: leanattn.decode(q, k, v, sl)  # noqa: E731
        at_capacity = ((dec_ops._Plan, "_lean_grid", _grid_at_capacity),)
        fns = {"default grid": bd.with_plans(call), "grid at capacity": bd.with_plans(call, patches=at_capacity)}
        us, med = bd.interleaved_graph_times(name, fns, ref)
        grids = bd.plan_grids(fns)
        bd.report_ratios(name, med, [("grid at capacity", "default grid")])
        print(f"{'':18s} grids {grids}", flush=True)
        out.append(dict(case=name, capacity=cap, lengths=lens, grids=grids, us=us, median=med))
        del q, k, v, sl, call, fns
        torch.cuda.empty_cache()
    common.write_probe(args.out, "decode_probe_grid_at_capacity.json",
                       probe="lean grid sized by occupancy (default) against the aligned cut at full capacity",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
