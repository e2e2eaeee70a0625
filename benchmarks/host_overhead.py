"""Host time of an eager call, whole and in parts (decode probe 18).

Each row is the wall time per call of a loop of back-to-back calls, synchronised once at the end. On the
tiny cases (256 cache tokens) the GPU finishes each launch before the host issues the next, so the row is
host time; on ``gqa B=1 32k`` (a 50 us kernel) it is the larger of the two. Parts:

* ``decode()``, and with ``return_lse=True`` (an LSE allocated per call instead of the plan's sink);
* ``validate_decode``; two ``torch.empty`` (what a call allocated before the sink), and two of the even pieces'
  partial states (what a call of one sequence allocated before they were workspaces);
* the plan's launches (``plan.run``), its first ``runtime.Launcher``, Triton's runner of the compiled kernel
  (what the launcher called before ``runtime._raw_launch``), and the driver's launcher alone;
* SDPA (default backend) over the same cache, for scale; one-sample and 16-sample bifurcated calls.

Cases: gqa B=1 at 256 and 32k tokens, d256 B=1 32k (a merge of 16 states), mha B=1 4k, gqa B=4 32k (the persistent
kernel). ``pieces``: the even pieces of a row of one sequence (0: the persistent kernel).

    PYTHONPATH=src python benchmarks/host_overhead.py [--out DIR] [--name FILE]
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


def decode_parts(n_tok: int, hq: int = 32, hkv: int = 8, d: int = 128, batch: int = 1) -> dict:
    q = torch.randn(batch, hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, n_tok, hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.full((batch,), n_tok, dtype=torch.int32, device="cuda")
    dec._PLANS.clear()
    leanattn.decode(q, k, v, sl)
    torch.cuda.synchronize()
    (plan,) = dec._PLANS.values()
    out = torch.empty_like(q)
    lse = torch.empty(batch, hq, dtype=torch.float32, device="cuda")
    if plan.schedule == "lean":  # the persistent kernel
        launch = plan.launch
        launcher = launch.in_kernel if launch.in_kernel is not None else launch.apart
        tensors = (q, k, v, out, lse, sl, plan.dummy_i32, *plan.extras())
        splits = 0
    else:  # one sequence as even pieces on the split kernel, then a merge launch
        splits = plan.splits
        # (code before the pieces' partial states were workspaces allocated them per call)
        o, ls = getattr(plan, "partials", None) or (torch.empty(splits, batch, hq, d, device="cuda"),
                                                     torch.empty(splits, batch, hq, device="cuda"))
        launcher = plan.launch
        tensors = (q, k, v, o, ls, sl, plan.dummy_i32, *plan.extras()) if splits > 1 else \
            (q, k, v, out, lse, sl, plan.dummy_i32, *plan.extras())
    parts = {
        "decode()": lambda: leanattn.decode(q, k, v, sl),
        "decode(return_lse=True)": lambda: leanattn.decode(q, k, v, sl, return_lse=True),
        "validate_decode": lambda: dec.validate_decode(q, k, v, sl, None, None, "lean", None, 1.0, 1.0, fp8=True),
        "torch.empty x2": lambda: (torch.empty((batch, hq, d), dtype=q.dtype, device=q.device),
                                   torch.empty((batch, hq), dtype=torch.float32, device=q.device)),
        "torch.empty x2, pieces' states": (lambda: (
            torch.empty((splits, batch, hq, d), dtype=torch.float32, device=q.device),
            torch.empty((splits, batch, hq), dtype=torch.float32, device=q.device))) if splits > 1 else None,
        "plan.run": lambda: plan.run(q, k, v, sl, None, out, lse),
        "runtime.Launcher": lambda: launcher(*tensors),
        "Triton runner": lambda: launcher.runner(*tensors, *launcher.tail),
        "driver launcher (raw)": (lambda: launcher.raw(*tensors)) if launcher.raw is not None else None,
        "sdpa": lambda: F.scaled_dot_product_attention(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2),
                                                       enable_gqa=True),
        # the first row again: the spread of a row within one process
        "decode(), again": lambda: leanattn.decode(q, k, v, sl),
    }
    res = {name: round(per_call_us(fn), 2) for name, fn in parts.items() if fn is not None}
    res["pieces"] = splits
    return res


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
    ap.add_argument("--name", default="decode_probe_host_parts.json", help="results file name")
    args = ap.parse_args()
    rows = {"tiny 256": decode_parts(256), "gqa B=1 32k": decode_parts(32768),
            "d256 B=1 32k": decode_parts(32768, 16, 8, 256), "mha B=1 4k": decode_parts(4096, 32, 32),
            "gqa B=4 32k": decode_parts(32768, batch=4), "bifurcated 256+64": bifurcated_calls()}
    for case, parts in rows.items():
        print(f"{case:18s} " + "  ".join(f"{k} {v:.1f}" for k, v in parts.items()), flush=True)
    common.write_probe(args.out, args.name, unit="us per call", rows=rows)


if __name__ == "__main__":
    main()
