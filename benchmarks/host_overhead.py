"""Host time of an eager call, whole and in parts (decode probe 18).

Each row is the wall time per call of a loop of back-to-back calls, synchronised once at the end. On the
tiny cases (256 cache tokens) the GPU finishes each launch before the host issues the next, so the row is
host time; on ``gqa B=1 32k`` (a 50 us kernel) it is the larger of the two. Parts:

* ``decode()``, and with ``return_lse=True`` (an LSE allocated per call instead of the plan's sink);
* ``validate_decode``; two ``torch.empty`` (what a call allocated before the sink);
* the plan's launch (``StreamKLaunch``), its ``runtime.Launcher``, Triton's runner of the compiled kernel
  (what the launcher called before ``runtime._raw_launch``), and the driver's launcher alone;
* SDPA (default backend) over the same cache, for scale; one-sample and 16-sample bifurcated calls.

    PYTHONPATH=src python benchmarks/host_overhead.py [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.ops import decode as dec  # noqa: E402


def per_call_us(fn, n=3000) -> float:
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def decode_parts(n_tok: int) -> dict:
    q = torch.randn(1, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, n_tok, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([n_tok], dtype=torch.int32, device="cuda")
    dec._PLANS.clear()
    leanattn.decode(q, k, v, sl)
    torch.cuda.synchronize()
    (plan,) = dec._PLANS.values()
    out = torch.empty_like(q)
    lse = torch.empty(1, 32, dtype=torch.float32, device="cuda")
    launch = plan.launch
    launcher = launch.in_kernel if launch.in_kernel is not None else launch.apart
    tensors = (q, k, v, out, lse, sl, plan.dummy_i32)
    parts = {
        "decode()": lambda: leanattn.decode(q, k, v, sl),
        "decode(return_lse=True)": lambda: leanattn.decode(q, k, v, sl, return_lse=True),
        "validate_decode": lambda: dec.validate_decode(q, k, v, sl, None, None, "lean", None),
        "torch.empty x2": lambda: (torch.empty((1, 32, 128), dtype=q.dtype, device=q.device),
                                   torch.empty((1, 32), dtype=torch.float32, device=q.device)),
        "StreamKLaunch": lambda: launch(tensors, out, lse),
        "runtime.Launcher": lambda: launcher(*tensors),
        "Triton runner": lambda: launcher.runner(*tensors, *launcher.tail),
        "driver launcher (raw)": (lambda: launcher.raw(*tensors)) if launcher.raw is not None else None,
        "sdpa": lambda: F.scaled_dot_product_attention(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2),
                                                       enable_gqa=True),
        # the first row again: the spread of a row within one process
        "decode(), again": lambda: leanattn.decode(q, k, v, sl),
    }
    return {name: round(per_call_us(fn), 2) for name, fn in parts.items() if fn is not None}


def bifurcated_calls() -> dict:
    res = {}
    for n in (1, 16):
        q = torch.randn(n, 32, 128, dtype=torch.bfloat16, device="cuda")
        pk = torch.randn(256, 8, 128, dtype=torch.bfloat16, device="cuda")
        pv = torch.randn_like(pk)
        k = torch.randn(n, 64, 8, 128, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        sl = torch.full((n,), 64, dtype=torch.int32, device="cuda")
        res[f"bifurcated x{n}"] = round(per_call_us(lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, sl)), 2)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    rows = {"tiny 256": decode_parts(256), "gqa B=1 32k": decode_parts(32768), "bifurcated 256+64": bifurcated_calls()}
    for case, parts in rows.items():
        print(f"{case:18s} " + "  ".join(f"{k} {v:.1f}" for k, v in parts.items()), flush=True)
    common.write_probe(args.out, "decode_probe_host_parts.json", unit="us per call", rows=rows)


if __name__ == "__main__":
    main()
