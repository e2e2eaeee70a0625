"""Launches for Nsight Compute: the one-sample bifurcated kernel against decode over the copied caches.

The one-sample path (``concat_decode_kernel``) runs 1-2.4% behind decode over copied caches
(``lean_decode_kernel``) on the GQA cases, with the same tiles, cut and launch config and a shorter tile loop
(bifurcated notes section 18). This script makes, for one case of the bifurcated suite (default GQA 16k x1), two
warm-up calls of each and then one of each, every merge in a second launch as under CUDA-graph capture
(``LEANATTN_DECODE_MERGE=1``), so that ``ncu --launch-skip 4 --launch-count 2`` profiles one launch of each
kernel (``benchmarks/gpu_check.sh ncu-x1``).

    PYTHONPATH=src python benchmarks/ncu_one_sample.py [--case "gqa 16k x1"]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["LEANATTN_DECODE_MERGE"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="gqa 16k x1")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    for name, ref, ours, copied in bb.one_sample_cases((args.case,)):
        a, b = common.warm_then_once([ours, copied])
        print(f"{name}: one-sample and decode over copies launched; max |diff| {(a - b).abs().max().item():.2e}")
        return
    raise SystemExit(f"no bifurcated suite case named {args.case!r}")


if __name__ == "__main__":
    main()
