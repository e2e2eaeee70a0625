"""Probe: where MLA decode's time goes (``leanattn.mla_decode`` at 12-60% of the read ceiling on an H200 at 3
stages, BENCHMARK_RUNS.md). Variants of one call, side by side in one process, each through plan caches of its
own (``bench_decode.with_plans``), checked against the float64 reference, captured in CUDA graphs and timed in 3
interleaved rounds (do_bench medians, L2 flushed):

* ``lean``, ``split``: the defaults (64-token tiles, 3 stages since 2026-12-05);
* tiles: ``LEANATTN_DECODE_CONFIG`` = the 64-token tiles over 2 stages (the default before: 1.16-1.23x its time on
  2026-12-05, ``mla_probe_H200.json``), 64-token tiles of 4 warps over 3 stages, 32-token tiles over 3 stages at two
  programs an SM;
* ``split x8``: FlashDecoding with 8 splits a row (few pieces to merge);
* ``fp8 ...``: the cache in float8 e4m3 (``bench_mla.fp8_case``) over the default tiles
  (``ops/decode_config._CUDA_FP8_LATENT``: 64-token tiles over 3 stages since this probe's H100 run of 2026-12-07,
  32-token ones before), 64-token tiles over 4 stages, and 32-token tiles over 3 and 5 stages (offline, since the
  latent tiles convert by inline PTX: 32-token tiles spill 0-56 bytes, 64-token ones 8-136).

The floor is the cache's bytes over the read ceiling.

``--variants lean,fp8`` times only those (the float8 conversion's A/B, ``gpu_check.sh fp8-asm``).

    PYTHONPATH=src python benchmarks/probe_mla.py [--out DIR] [--cases A,B] [--variants A,B]
"""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_mla as bm  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = (("16 heads B=1 32k", 1, 32768, 16), ("16 heads B=32 4k", 32, 4096, 16), ("128 heads B=1 32k", 1, 32768, 128))
VARIANTS = {"lean": {}, "tiles 64x2 stages (before)": {"LEANATTN_DECODE_CONFIG": "64,8,2,1"},
            "tiles 64x3, 4 warps": {"LEANATTN_DECODE_CONFIG": "64,4,3,1"},
            "tiles 32x3, 2 a SM": {"LEANATTN_DECODE_CONFIG": "32,8,3,2"}}
FP8_VARIANTS = {"fp8": {}, "fp8 tiles 64x4": {"LEANATTN_DECODE_CONFIG": "64,8,4,1"},
                "fp8 tiles 32x3": {"LEANATTN_DECODE_CONFIG": "32,8,3,1"},
                "fp8 tiles 32x5": {"LEANATTN_DECODE_CONFIG": "32,8,5,1"}}


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv, extra=(common.VARIANTS_ARG,))
    keep = common.names(args.variants)
    rows = []
    for name, B, n, heads in CASES:
        if want and name not in want:
            continue
        qn, qp, wide, lens, ckv, kpe, table, idx, ref = bm.make_case(B, n, heads)
        s8, ckv8, kpe8, ref8 = bm.fp8_case(qn, qp, wide, lens, idx)

        def call(fp8=False, **kw):
            if fp8:
                return lambda: leanattn.mla_decode(qn, qp, ckv8, kpe8, lens, table, k_scale=s8, v_scale=s8, **kw)
            return lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table, **kw)
        fns = {label: bd.with_plans(call(), env) for label, env in VARIANTS.items()}
        fns["split"] = bd.with_plans(call(schedule="split"))
        fns["split x8"] = bd.with_plans(call(schedule="split", num_splits=8))
        fns.update({label: bd.with_plans(call(fp8=True), env) for label, env in FP8_VARIANTS.items()})
        fns = bd.drop_failing(name, {k: f for k, f in fns.items() if keep is None or k in keep})
        refs = {label: ref8 if label.startswith("fp8") else ref for label in fns}
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        nbytes = B * n * (bm.DC + bm.DR) * 2
        floor = nbytes / ceiling / 1e3
        print(f"{name}: floor {floor:.1f} us (fp8 {floor / 2:.1f}) | "
              + "  ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
        rows.append(dict(case=name, batch=B, context=n, heads=heads, bytes=nbytes, floor_us=floor, us=us,
                         median=med, fp8_bytes=nbytes // 2, fp8_floor_us=floor / 2))
    common.write_probe(args.out, "probe_mla.json", probe="MLA decode variants (values apart, tiles, merge)",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, variants={**VARIANTS, **FP8_VARIANTS},
                       cases=rows)


if __name__ == "__main__":
    main()
