"""Decode launch configs at D=256 over shapes beyond the suite's one, cuDNN in the same process.

Per shape through ``bench_decode.sweep`` (graph replays, do_bench medians, L2 flushed): the 32-token
tiles D=256 had before 2026-12-01 and the 64-token tiles it has now, each first and last, and two other
configs between. The data behind the D=256 entry of ``ops/decode_config.py`` (decode probe 14 in
``benchmarks/results/decode_probes_H200_2026-12-01.md``).

    PYTHONPATH=src python benchmarks/probe_decode_d256.py [--out DIR] [--cases NAME;NAME] [--configs 'a;b']
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402

K = 1024
TAIL = [128 * K, 8 * K] + [4 * K] * 2 + [2 * K] * 4 + [1 * K] * 8
CASES = [
    dict(name="d256 16/8 B=1 32k", lens=[32 * K], hq=16, hkv=8),
    dict(name="d256 16/8 B=1 8k", lens=[8 * K], hq=16, hkv=8),
    dict(name="d256 16/8 B=1 128k", lens=[128 * K], hq=16, hkv=8),
    dict(name="d256 32/8 B=4 16k", lens=[16 * K] * 4, hq=32, hkv=8),
    dict(name="d256 16/16 B=8 8k", lens=[8 * K] * 8, hq=16, hkv=16),
    dict(name="d256 32/4 B=16 4k", lens=[4 * K] * 16, hq=32, hkv=4),
    dict(name="d256 16/8 ragged-tail", lens=TAIL, hq=16, hkv=8),
    dict(name="d256 16/8 paged64 B=4 16k", lens=[16 * K] * 4, hq=16, hkv=8, page=64),
]
# tokens per tile, warps, stages, programs per SM[, merge factor, merge stages[, load]]; 0: the default
CONFIGS = "32,4,3,1;64,4,3,1;64,4,2,2;64,4,3,1,0,0,1;32,4,3,1;64,4,3,1"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="", help="';'-separated case names (default: all)")
    ap.add_argument("--configs", default=CONFIGS)
    args = ap.parse_args(argv)
    cases = [dict(c, group="headdim", d=256) for c in CASES
             if not args.cases or c["name"] in args.cases.split(";")]
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";") if c]
    res = bd.sweep(cases, lambda m: print(m, flush=True), configs)
    env = bd.common.env_info()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"decode_sweep_{env['device'].replace(' ', '_')}_d256_shapes.json")
    with open(path, "w") as f:
        json.dump(dict(env=env, sweep=res), f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
