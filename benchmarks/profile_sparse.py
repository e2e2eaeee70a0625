"""Where the time of one sparse attention call goes: torch.profiler table of its CUDA kernels and host ops.

    PYTHONPATH=src python3 benchmarks/profile_sparse.py [--B 8 --H 12 --N 4096 --mode qk --param 0.8]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sparse import D, DTYPE, make_pattern, run_ours  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--mode", default="qk", choices=("qk", "hash"))
    ap.add_argument("--param", type=float, default=0.8)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    param = args.param if args.mode == "qk" else int(args.param)
    q, k, v = (torch.randn(args.B, args.N, args.H, D, dtype=DTYPE, device="cuda", requires_grad=True) for _ in range(3))
    a, b = make_pattern(args.mode, param, args.B, args.N, args.H, "cuda")
    dout = torch.randn_like(q)
    for _ in range(3):
        run_ours(args.mode, q, k, v, a, b).backward(dout)
    torch.cuda.synchronize()
    for what, fn in (("fwd", lambda: run_ours(args.mode, q, k, v, a, b)),
                     ("fwd+bwd", lambda: run_ours(args.mode, q, k, v, a, b).backward(dout))):
        t = time.perf_counter()
        for _ in range(10):
            fn()
        host = (time.perf_counter() - t) / 10 * 1e3
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 10 * 1e3
        print(f"{what}: host {host:.3f} ms per call (launch only), wall {wall:.3f} ms per call")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run_ours(args.mode, q, k, v, a, b).backward(dout)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
