"""What logit soft-capping costs decode (decode probe 51): ``softcap=50`` against none, same process.

The soft cap adds, per score, a multiply, one ``exp2``, an add, a reciprocal and a multiply-add
(``kernels/attend.tanh``) to a loop bound by memory on bf16 caches and, on float8 caches, by issue
(``BENCHMARK_RUNS.md``, float8 section). On suite cases (``bench_decode.suite``, bf16 caches) and on float8 e4m3
caches of some of them (``bench_decode_fp8.fp8_inputs``), each call is checked against the float64 reference
(capped or not), then CUDA-graph replays are timed in interleaved rounds (do_bench, L2 flushed); cuDNN SDPA, which
has no soft cap, beside them for scale.

    PYTHONPATH=src python benchmarks/probe_decode_softcap.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_decode_fp8 as bf  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("mha B=1 16k", "mha B=1 64k", "gqa B=1 128k", "gqa B=4 32k", "gqa B=64 4k", "ragged-tail B=16",
         "paged16 gqa B=4 32k", "d64 mha B=1 64k", "d256 16/8 B=1 32k")
FP8_CASES = ("mha B=1 64k", "gqa B=4 32k", "gqa B=64 4k")
CAP = 50.0  # Gemma-2's attention soft cap


def measure(case, fp8: bool) -> dict:
    inp = bf.fp8_inputs(case) if fp8 else bd.make_inputs(case)
    q, sl = inp["q"], inp["seqlens"]
    if fp8:
        k, v, bt, kw = inp["k8"], inp["v8"], inp["block_table8"], dict(k_scale=inp["ks"], v_scale=inp["vs"])
    else:
        k, v, bt, kw = inp.get("k_pages", inp["k"]), inp.get("v_pages", inp["v"]), inp.get("block_table"), {}
    refs = {"plain": leanattn.reference.decode(q, k, v, sl, bt, None, kw.get("k_scale", 1.0),
                                               kw.get("v_scale", 1.0))[0],
            f"softcap {CAP:g}": leanattn.reference.decode(q, k, v, sl, bt, None, kw.get("k_scale", 1.0),
                                                          kw.get("v_scale", 1.0), CAP)[0]}
    fns = {"plain": bd.with_plans(lambda: leanattn.decode(q, k, v, sl, bt, **kw)),
           f"softcap {CAP:g}": bd.with_plans(lambda: leanattn.decode(q, k, v, sl, bt, softcap=CAP, **kw))}
    if not fp8 and bt is None and len(set(case["lens"])) == 1:
        # cuDNN over the same bf16 cache, no cap (checked against the uncapped reference)
        fns["cudnn (no cap)"] = bd.sdpa("CUDNN_ATTENTION")(case, inp)
        refs["cudnn (no cap)"] = refs["plain"]
    name = ("fp8 " if fp8 else "") + case["name"]
    us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3)
    capped = med[f"softcap {CAP:g}"]
    print(f"{name:26s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | softcap / plain {capped / med['plain']:.3f}", flush=True)
    return dict(case=name, us=us, median=med, ratio=capped / med["plain"])


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for fp8, names in ((False, CASES), (True, FP8_CASES)):
        for case in bd.suite():
            if case["name"] in names and (not want or case["name"] in want):
                out.append(measure(case, fp8))
                torch.cuda.empty_cache()
    common.write_probe(args.out, "decode_probe_softcap.json", cases=out, timing=bd.GRAPH_TIMING,
                       probe=f"decode with softcap={CAP:g} against none, bf16 and float8 caches")


if __name__ == "__main__":
    main()
