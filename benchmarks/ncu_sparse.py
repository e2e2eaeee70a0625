"""Launches for Nsight Compute: the sparse kernels with nothing dropped at D=128 against cuDNN's dense causal SDPA.

At D=128 with nothing dropped the sparse kernels took 1.36x cuDNN's forward + backward time on an H100 (2026-12-07
10:5x, ``probe_sparse_tiles.py``; forward 1.54x, backward 1.21x). One case of that probe (``gqa dense 8k``: B=2,
32 query heads over 8 kv heads, 8k tokens, bf16) runs forward and backward twice (the first autotunes and compiles),
then once more each, ours and cuDNN's, between ``cudaProfilerStart`` and ``Stop``, so that ``ncu --profile-from-start
off`` sees one launch of every kernel of both (``benchmarks/gpu_check.sh ncu-sparse``): whether ours waits on
memory, on the tensor cores or on issue, against the kernels of cuDNN's.

    PYTHONPATH=src python benchmarks/ncu_sparse.py [--case "gqa dense 8k"]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sparse as bs  # noqa: E402
import common  # noqa: E402
import probe_sparse_tiles as pt  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="gqa dense 8k")
    args = ap.parse_args(argv)
    names = [c[0] for c in pt.CASES]
    if args.case not in names:
        raise SystemExit(f"no probe_sparse_tiles case named {args.case!r}: {names}")
    torch.manual_seed(0)
    (_, _, _, _, _, mode, _), (q, k, v, a, b, dout) = next(bs.gqa_cases(pt.CASES, {args.case}, pt.D, pt.DTYPE, "cuda"))

    def ours():
        out = bs.run_ours(mode, q, k, v, a, b)
        return out, *torch.autograd.grad(out, (q, k, v), dout)

    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=True, enable_gqa=True).transpose(1, 2)
        return out, *torch.autograd.grad(out, (q, k, v), dout)

    got, want = common.warm_then_once([ours, cudnn], profiler_range=True)
    print(f"{args.case}: launched; ours against cuDNN's, largest relative difference {bs.max_rel_err(got, want):.1e}")


if __name__ == "__main__":
    main()
