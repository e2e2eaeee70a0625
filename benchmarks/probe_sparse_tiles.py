"""Probe: the sparse kernels' tiles at D=128 (``sparse/api.sparse_config``), forward and backward, one process.

At D=128 with nothing dropped the kernels took 1.7x cuDNN's dense causal time on an H100 (2026-12-07,
``bench_sparse_gqa.py``: 3.24 / 9.85 ms forward / backward against 1.89 / 5.81 at B=2, 32 over 8 heads, 8k) under
tiles chosen from ptxas reports, ``(block_m, block_n, block_m_bwd, block_n_bwd) = (128, 64, 32, 128)``. This
probe's first run (H100, 10:5x) timed single changes to them; the defaults since take 64-query backward steps and,
for dropped tokens, 128-key forward tiles. The variants now are those defaults, the old ones and each change alone.
Each variant sets ``LEANATTN_SPARSE_TILES`` (read at each call; plans and autotuning are keyed by the tiles)
and is timed forward and backward (``triton.testing.do_bench``, median, L2 flushed) in 3 interleaved rounds, after
its output and gradients are checked against the default tiles'. cuDNN's dense causal SDPA is timed beside them.

``--variants default`` times the default tiles alone beside cuDNN: a source change's A/B across processes
(``gpu_check.sh sparse-ab``).

    PYTHONPATH=src python3 benchmarks/probe_sparse_tiles.py [--out DIR] [--cases A,B] [--variants A,B]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sparse as bs  # noqa: E402
import common  # noqa: E402

DEVICE, DTYPE, D = "cuda", torch.bfloat16, 128  # (a CPU smoke run sets these, fp16 and D=64, and tiny CASES)
ENV = "LEANATTN_SPARSE_TILES"
# (name, B, H, Hkv, N, mode, parameter)
CASES = [("gqa dense 8k", 2, 32, 8, 8192, "qk", 0.0), ("gqa qk 0.5 8k", 2, 32, 8, 8192, "qk", 0.5),
         ("gqa hash 16 8k", 2, 32, 8, 8192, "hash", 16)]  # (one autotune key: the variants' compiles fit one call)
VARIANTS = {"default": None, "old 128x64 bwd 32": "128,64,32,128", "128x64 bwd 64": "128,64,64,128",
            "128x128 bwd 64": "128,128,64,128", "128x128 bwd 32": "128,128,32,128"}


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv, extra=(common.VARIANTS_ARG,))
    keep = common.names(args.variants)
    T = bs.timer(DEVICE)
    rows = []
    for (name, B, H, HK, N, mode, param), (q, k, v, a, b, dout) in bs.gqa_cases(CASES, want, D, DTYPE, DEVICE):
        first, fns = None, {}
        for label, tiles in VARIANTS.items():
            if keep is not None and label not in keep:
                continue
            common.set_env(ENV, tiles)
            try:
                out = bs.run_ours(mode, q, k, v, a, b)
                res = (out, *torch.autograd.grad(out, (q, k, v), dout))
            except Exception as e:  # a tile set that does not compile (shared memory) is reported and skipped
                print(f"  {name} {label}: {e!r}"[:300], flush=True)
                continue
            if first is None:
                first = res
            err = bs.max_rel_err(res, first)
            if err > 2e-2:
                raise AssertionError(f"{name} {label}: off the default tiles' results by {err:.2e} (relative)")
            fns[label] = (tiles, lambda: bs.run_ours(mode, q, k, v, a, b))
        if DEVICE == "cuda":
            def dense():
                with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.CUDNN_ATTENTION]):
                    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                          is_causal=True, enable_gqa=True).transpose(1, 2)
            fns["sdpa_cudnn (dense)"] = (None, dense)
        ms = {label: {"fwd": [], "bwd": []} for label in fns}
        for _ in range(3):
            for label, (tiles, f) in fns.items():
                common.set_env(ENV, tiles)
                out = f()
                ms[label]["fwd"].append(T(f))
                bwd = lambda out=out: out.backward(dout, retain_graph=True)  # noqa: E731
                ms[label]["bwd"].append(T(bwd, grad_to_none=[q, k, v]))
        common.set_env(ENV, None)
        median = {label: {p: sorted(t)[1] for p, t in parts.items()} for label, parts in ms.items()}
        print(f"{name}: " + "  ".join(f"{lb} {m['fwd']:.2f}/{m['bwd']:.2f}" for lb, m in median.items())
              + " ms (fwd/bwd)", flush=True)
        rows.append(dict(case=name, B=B, H=H, Hkv=HK, D=D, N=N, mode=mode, param=param, ms=ms,
                         median={lb: m["fwd"] + m["bwd"] for lb, m in median.items()}, median_parts=median))
    path = common.write_probe(args.out, "probe_sparse_tiles.json", probe="sparse kernels' tiles at D=128",
                              timing="do_bench medians, L2 flushed, forward and backward apart, 3 interleaved rounds",
                              variants=VARIANTS, read_ceiling_gbs=ceiling, cases=rows)
    if rows and all("default" in row["median"] for row in rows):
        common.plot_probe(path, "default", path[:-5] + ".png", "sparse tiles at D=128, forward + backward "
                          "(time / default tiles)")


if __name__ == "__main__":
    main()
