"""Launches for Nsight Compute: how evenly the SMs are kept busy, lean against cuDNN (decode probe 25), or any
of the decode suite's methods (``--methods``, names of ``bench_decode.METHODS``).

Lean's persistent grid gives each program an equal share of tiles fixed at launch; cuDNN launches more
programs than fit at once. For one suite case (default ``gqa B=16 8k``), this makes two warm-up calls of
each, then one call of each between ``cudaProfilerStart`` and ``cudaProfilerStop``, so that
``ncu --profile-from-start off`` profiles just those launches (``benchmarks/gpu_check.sh ncu-balance``: the
minimum, mean and maximum active cycles over the SMs against the elapsed cycles).

``--methods lean,lean_full,split --case "mha B=1 16k"`` launches lean with and without ``cache_seqlens`` and split
(each over its own cut) (``gpu_check.sh ncu-gap``: where lean's time over split's goes, decode probe 46).

    PYTHONPATH=src python benchmarks/ncu_balance.py [--case "gqa B=16 8k"] [--methods lean,sdpa_cudnn]
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
    ap.add_argument("--methods", default="lean,sdpa_cudnn")
    args = ap.parse_args(argv)
    names = args.methods.split(",")
    torch.manual_seed(0)
    for case, inp, ref, call in bd.probe_cases((args.case,)):
        fns = [bd.METHODS[n](case, inp) for n in names]
        for n, out in zip(names, common.warm_then_once(fns, profiler_range=True)):
            print(f"{args.case}: {n} launched, relative error {bd.rel_err(out, ref):.1e}")
        return
    raise SystemExit(f"no decode suite case named {args.case!r}")


if __name__ == "__main__":
    main()
