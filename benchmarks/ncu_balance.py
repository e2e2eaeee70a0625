"""Launches for Nsight Compute: how evenly the SMs are kept busy, lean against cuDNN (decode probe 25).

Lean's persistent grid gives each program an equal share of tiles fixed at launch; cuDNN launches more
programs than fit at once. For one suite case (default ``gqa B=16 8k``), this makes two warm-up calls of
each, then one call of each between ``cudaProfilerStart`` and ``cudaProfilerStop``, so that
``ncu --profile-from-start off`` profiles just those launches (``benchmarks/gpu_check.sh ncu-balance``: the
minimum, mean and maximum active cycles over the SMs against the elapsed cycles).

    PYTHONPATH=src python benchmarks/ncu_balance.py [--case "gqa B=16 8k"]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="gqa B=16 8k")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    for case, inp, ref, call in bd.probe_cases((args.case,)):
        common.warm_then_once([call, bd.METHODS["sdpa_cudnn"](case, inp)], profiler_range=True)
        print(f"{args.case}: lean and cuDNN launched")
        return
    raise SystemExit(f"no decode suite case named {args.case!r}")


if __name__ == "__main__":
    main()
