"""Short uniform decode cases: why ``schedule="split"`` can beat lean there (the cut or the merge).

On gqa B=1 32k and mha 4k the suite run of 2026-12-01 22:31 timed split 3-5% ahead of lean. The two cut
the work differently: split takes FlashAttention-2's split count (29 a head at gqa B=1 32k: 232 programs of 18 tiles)
and merges in a second launch; lean takes 256 programs cut aligned with the heads (16 tiles each) and merges
in-kernel (last arriver). This probe times, in one process and interleaved over three rounds:
* lean and split at their defaults;
* lean over split's program count (``num_programs``): split's cut, lean's in-kernel merge;
* split with lean's pieces per head (``num_splits``): lean's cut, split's merge launch;
lean with a 16-wide lengths vector (``LEANATTN_DECODE_BLOCK_B_MIN=16``, the floor until decode probe 17; the
default is as wide as the batch: fewer block-wide reductions in the schedule before the first K/V load, 0.3 us
faster at B=1 on an H200, run 2026-12-02 02:19); and cuDNN. At mha 4k the
crossed variants cut as the defaults do (256 programs of 8 tiles: 8 splits a head), so there only the merge
differs. Graph replays, do_bench medians (L2 flushed), us.

    PYTHONPATH=src python benchmarks/probe_decode_short.py [--out DIR]
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
from leanattn.schedules.fixed_split import num_splits_heuristic  # noqa: E402
from leanattn.schedules.stream_k import programs_used_py  # noqa: E402
from leanattn.ops.decode_config import decode_config  # noqa: E402

K = 1024
CASES = [dict(name="gqa B=1 32k", lens=[32 * K], hq=32, hkv=8, d=128),
         dict(name="mha B=1 4k", lens=[4 * K], hq=32, hkv=32, d=128),
         dict(name="gqa B=16 8k", lens=[8 * K] * 16, hq=32, hkv=8, d=128),
         dict(name="d64 mha B=1 64k", lens=[64 * K], hq=32, hkv=32, d=64)]


def variants(case, inp, sms):
    q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
    B, N = len(case["lens"]), max(case["lens"])
    cfg = decode_config(case["d"], case["hq"] // case["hkv"], q.device, kv_rows=B * case["hkv"], capacity=N)
    rows = B * case["hkv"] * cfg.n_hb
    tiles = -(-N // cfg.block_n)
    splits = num_splits_heuristic(rows, 2 * sms, tiles)
    lean_grid = programs_used_py([tiles] * B, case["hkv"] * cfg.n_hb, sms * cfg.ctas_per_sm, sms)
    d = leanattn.decode
    return {
        "lean": lambda: d(q, k, v, sl),
        # a lengths vector 16 wide, not as wide as the batch (the default since probe 17)
        "lean, BLOCK_B=16": common.with_env("LEANATTN_DECODE_BLOCK_B_MIN", "16", lambda: d(q, k, v, sl)),
        "split": lambda: d(q, k, v, sl, schedule="split"),
        f"lean, {rows * splits} programs": lambda: d(q, k, v, sl, num_programs=rows * splits),
        f"split, {lean_grid // rows} a head": lambda: d(q, k, v, sl, schedule="split",
                                                       num_splits=max(1, lean_grid // rows)),
    }, dict(block_n=cfg.block_n, rows=rows, tiles=tiles, split_count=splits, lean_grid=lean_grid)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    sms = runtime.num_sms(torch.device("cuda"))
    out = []
    torch.manual_seed(0)
    for case in CASES:
        inp = bd.make_inputs(case)
        ref, _ = leanattn.reference.decode(inp["q"], inp["k"], inp["v"], inp["seqlens"])
        fns, info = variants(case, inp, sms)
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        times = "  ".join(f"{n} {t:.1f}" for n, t in med.items())
        print(f"{case['name']:16s} {times}  | {info}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, **info))
        del inp, fns
        torch.cuda.empty_cache()
    common.write_probe(args.out, "decode_probe_short_cut_or_merge.json", cases=out)


if __name__ == "__main__":
    main()
