"""Launches for Nsight Compute: MLA decode's tile loop at the 2-stage config measured on 2026-12-05 and at the 3-stage
default since (``ops/decode_config._CUDA_TABLE[512]``).

For one case of ``bench_mla.py`` (default 16 heads, 32 sequences of 4k: 2048 tiles over 132 programs, pieces
merged in-kernel), two warm-up calls of each config and then one of each, so that ``ncu -k regex:lean_decode_kernel
--launch-skip 4 --launch-count 2`` profiles one launch of each (``benchmarks/gpu_check.sh ncu-mla``): what the
2-stage kernel waits on (one shared buffer: no load overlaps a product) and whether two buffers keep DRAM busy.

    PYTHONPATH=src python benchmarks/ncu_mla.py [--case "16 heads B=32 4k"]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_mla as bm  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CONFIGS = {"2 stages (measured 2026-12-05)": "64,8,2,1", "3 stages (default since)": "64,8,3,1"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="16 heads B=32 4k")
    args = ap.parse_args(argv)
    cases = {name: (B, n, heads) for name, B, n, heads in bm.CASES}
    if args.case not in cases:
        raise SystemExit(f"no bench_mla case named {args.case!r}: {sorted(cases)}")
    torch.manual_seed(0)
    qn, qp, _, lens, ckv, kpe, table, idx, ref = bm.make_case(*cases[args.case])
    fns = [bd.with_plans(lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table),
                         {"LEANATTN_DECODE_CONFIG": cfg}) for cfg in CONFIGS.values()]
    outs = common.warm_then_once(fns)
    for label, out in zip(CONFIGS, outs):
        err = ((out[idx].double() - ref).norm() / ref.norm()).item()
        print(f"{args.case}, {label}: launched; relative error {err:.1e}")


if __name__ == "__main__":
    main()
