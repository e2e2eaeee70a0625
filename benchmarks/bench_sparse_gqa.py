"""Sparse flash attention with grouped-query attention (``k, v (B, N, Hkv, D)``), forward + backward, one process.

Llama-3-8B's heads (32 query heads over 8 kv heads, D=128), bf16, B=2, N 8k and 16k; QK-sparse at a drop rate of 0.5
(queries per query head, keys per kv head), hash-sparse with 16 buckets, and the dense limit (every token kept); and
multi-query attention (32 heads over one, B=1, N 8k), where the dK/dV grid has one row of programs. For each case,
timed with ``triton.testing.do_bench`` (median, L2 flushed), forward + backward:

* ``gqa``: ``leanattn`` with the kv heads as they are (each kv head's keys read by the programs of its 4 query
  heads, dK/dV summed over the group in registers);
* ``repeated``: ``leanattn`` over K/V (and the key ids) repeated to 32 heads, with the repeats' backward, what a
  model without GQA support does;
* ``sdpa_flash``, ``sdpa_cudnn``: dense causal ``scaled_dot_product_attention`` with ``enable_gqa``.

Before timing, ``gqa`` is checked against the float64 reference on one kv head's group, the first 1024 tokens
(output and the three gradients). TFLOP/s count useful work only: ``4 * D`` flops per visible (query, key) pair
forward, 2.5x that backward.

    PYTHONPATH=src python3 benchmarks/bench_sparse_gqa.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sparse as bs  # noqa: E402
import common  # noqa: E402


D = 128
# (name, B, H, Hkv, N, mode, parameter): a drop rate, a bucket count, or the dense limit (keep all)
CASES = [(f"gqa {mode} {param} {n // 1024}k", 2, 32, 8, n, mode, param) for n in (8192, 16384)
         for mode, param in (("qk", 0.5), ("hash", 16), ("qk", 0.0))]
CASES += [(f"mqa B=1 {mode} {param} 8k", 1, 32, 1, 8192, mode, param) for mode, param in (("qk", 0.5), ("hash", 16))]


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    T = bs.timer("cuda")
    rows = []
    for name, B, H, HK, N, mode, param in CASES:
        if want and name not in want:
            continue
        G = H // HK
        q, k, v, a, b = bs.gqa_case(B, N, H, HK, D, mode, param, torch.bfloat16, "cuda")
        errs = bs.check_ours(mode, q, k, v, a, b, heads=G, kv_heads=1)  # one kv head's group
        pairs = bs.visible_pairs(bs.sparse_layout(mode, a, b.repeat_interleave(G, dim=2)))
        fns = {"gqa": lambda: bs.run_ours(mode, q, k, v, a, b),
               "repeated": lambda: bs.run_ours(mode, q, k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2),
                                               a, b.repeat_interleave(G, dim=2))}
        for backend, label in ((torch.nn.attention.SDPBackend.FLASH_ATTENTION, "sdpa_flash"),
                               (torch.nn.attention.SDPBackend.CUDNN_ATTENTION, "sdpa_cudnn")):
            def dense(backend=backend):
                with torch.nn.attention.sdpa_kernel([backend]):
                    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       is_causal=True, enable_gqa=True)
                return o.transpose(1, 2)
            fns[label] = dense
        times = {}
        for label, f in fns.items():
            try:
                times[label] = bs.time_fwd_bwd(T, f, [q, k, v])
            except Exception as e:  # a peer that cannot run a case is reported and skipped
                print(f"  {name} {label}: {e!r}", flush=True)
        flops = pairs * 4 * D * 3.5
        both = {label: t["both_ms"] for label, t in times.items()}
        summary = ""
        if "gqa" in both and "repeated" in both:
            summary = (f"  | gqa {flops / both['gqa'] / 1e9:.0f} TFLOP/s, "
                       f"repeated/gqa {both['repeated'] / both['gqa']:.2f}x")
        print(f"{name:18s} " + "  ".join(f"{label} {ms:.2f} ms" for label, ms in both.items()) + summary, flush=True)
        rows.append(dict(case=name, B=B, H=H, Hkv=HK, D=D, N=N, mode=mode, param=param, visible_pairs=pairs,
                         errors=errs, times=times, median=both,
                         tflops={lb: flops / ms / 1e9 for lb, ms in both.items()}))
    path = common.write_probe(args.out, "bench_sparse_gqa.json",
                              probe="sparse attention with GQA against K/V repeated and dense SDPA",
                              timing="do_bench median, L2 flushed, forward + backward", read_ceiling_gbs=ceiling,
                              cases=rows)
    common.plot_probe(path, "gqa", path[:-5] + ".png", "sparse attention with GQA, forward + backward (time / gqa)")


if __name__ == "__main__":
    main()
