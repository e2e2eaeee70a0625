"""Probe: where a speculative verify step's time goes, against a one-token step (llama-3-8b shape, bf16, batch 1).

For K = 0 (the one-token ``_Stepper``) and K = 2, 4, 8 (``_Verifier``, K + 1 tokens a row): the CUDA-graph replay time
(median of 50, CUDA events) and, from one eager step under ``torch.profiler``, the kernel count and the kernel time
per kind (matmul, leanattn Triton kernels, index/copy, the rest). ``--fused-ops``: each K also with the model's
``fused_ops`` (norms, rotary embedding and SwiGLU as one Triton kernel each), the two interleaved. One GPU, ~1 min.

    python benchmarks/probe_verify_step.py [--context 4096] [--fused-ops] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from leanattn.generate import _Stepper, _Verifier  # noqa: E402
from leanattn.models import PagedKVCache, build_model  # noqa: E402


def kind(name: str) -> str:
    n = name.lower()
    if "gemm" in n or "gemv" in n or "cutlass" in n or "nvjet" in n or "sm90_xmma" in n:
        return "matmul"
    if "lean" in n or "_decode" in n or "attn" in n or "merge" in n:
        return "attention (leanattn)"
    if "index" in n or "scatter" in n or "gather" in n or "copy" in n:
        return "index/copy"
    return "other"


def replay_ms(step, n=50):
    ms = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step.run()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--fused-ops", action="store_true", help="also with LlamaModel.fused_ops")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    model = build_model("llama-3-8b", "cuda", torch.bfloat16, seed=0)
    c = model.config
    rows = []
    for k, fused in [(k, f) for k in (0, 2, 4, 8) for f in ((False, True) if args.fused_ops else (False,))]:
        model.fused_ops = fused
        cache = PagedKVCache(num_layers=c.num_hidden_layers, batch=1, capacity=args.context + 64,
                             kv_heads=c.num_key_value_heads, head_dim=c.head_dim, page_size=256,
                             dtype=torch.bfloat16, device="cuda")
        for t in cache.k + cache.v:
            t.normal_()
        cache.seqlens.fill_(args.context)
        step = _Verifier(model, cache, k) if k else _Stepper(model, cache)
        step.tokens.random_(0, c.vocab_size)
        with torch.no_grad():
            step.step()
            cache.seqlens.fill_(args.context)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                step.step()
                torch.cuda.synchronize()
            cache.seqlens.fill_(args.context)
            by, count = {}, 0
            for e in prof.key_averages():
                if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
                    by[kind(e.key)] = by.get(kind(e.key), 0.0) + e.self_device_time_total / 1e3
                    count += e.count
            step.capture()
            cache.seqlens.fill_(args.context)
            ms = replay_ms(step)
        rows.append([k, fused, ms, count] + [by.get(x, 0.0) for x in
                                      ("matmul", "attention (leanattn)", "index/copy", "other")])
        print(f"K={k} fused_ops={fused}: replay {ms:.3f} ms, {count} kernels, "
              + ", ".join(f"{a} {b:.3f} ms" for a, b in by.items()), flush=True)
        step = cache = None
        torch.cuda.empty_cache()
    md = common.markdown_table(["K", "fused_ops", "graph replay ms", "kernels", "matmul ms", "attention ms",
                                "index/copy ms", "other ms"], rows)
    print(md)
    common.write_results(args.out, "probe_verify_step", dict(env=common.env_info(), context=args.context,
                                                             rows=rows), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
