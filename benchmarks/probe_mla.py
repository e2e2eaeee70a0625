"""Probe: where MLA decode's time goes (``leanattn.mla_decode`` at 10-47% of the read ceiling on an H200,
benchmarks/results/mla_H200.md). Variants of one call, side by side in one process, each through plan caches of its
own (``bench_decode.with_plans``), checked against the float64 reference, captured in CUDA graphs and timed in 3
interleaved rounds (do_bench medians, L2 flushed):

* ``lean``, ``split``: the defaults;
* ``values apart``: the latent rows loaded a second time as values (``LEANATTN_MLA_SHARED_V=0``), against the one
  tile feeding both products (does sharing it stall Triton's pipeline?);
* tiles: ``LEANATTN_DECODE_CONFIG`` = the 64-token tiles over 2 stages measured on 2026-12-05 (one shared buffer:
  no load overlaps a product; the default now takes 3 stages), 32-token tiles over 4 and 5 stages (3 and 4 buffers),
  64-token tiles of 4 warps, 128-token tiles, 32-token tiles at two programs an SM;
* ``merge in-kernel``: one sequence's pieces merged by the last to arrive (``LEANATTN_DECODE_MERGE=0``) instead of
  the merge launch, whose 16 programs fold every piece of the one row (``kernels/piece_merge.py``);
* ``split x8``: FlashDecoding with 8 splits a row (few pieces to merge).

The floor is the cache's bytes over the read ceiling.

    PYTHONPATH=src python benchmarks/probe_mla.py [--out DIR] [--cases A,B]
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
VARIANTS = {"lean": {}, "values apart": {"LEANATTN_MLA_SHARED_V": "0"},
            "tiles 64x2 stages (before)": {"LEANATTN_DECODE_CONFIG": "64,8,2,1"},
            "tiles 32x4 stages": {"LEANATTN_DECODE_CONFIG": "32,8,4,1"},
            "tiles 32x5 stages": {"LEANATTN_DECODE_CONFIG": "32,8,5,1"},
            "tiles 64, 4 warps": {"LEANATTN_DECODE_CONFIG": "64,4,2,1"},
            "tiles 128": {"LEANATTN_DECODE_CONFIG": "128,8,2,1"},
            "tiles 32, 2 a SM": {"LEANATTN_DECODE_CONFIG": "32,8,2,2"},
            "merge in-kernel": {"LEANATTN_DECODE_MERGE": "0"}}


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    for name, B, n, heads in CASES:
        if want and name not in want:
            continue
        qn, qp, _, lens, ckv, kpe, table, idx, ref = bm.make_case(B, n, heads)

        def call(**kw):
            return lambda: leanattn.mla_decode(qn, qp, ckv, kpe, lens, table, **kw)
        fns = {label: bd.with_plans(call(), env) for label, env in VARIANTS.items()}
        fns["split"] = bd.with_plans(call(schedule="split"))
        fns["split x8"] = bd.with_plans(call(schedule="split", num_splits=8))
        fns = bd.drop_failing(name, fns)
        us, med = bd.interleaved_graph_times(name, fns, ref, rounds=3, pick=idx)
        nbytes = B * n * (bm.DC + bm.DR) * 2
        floor = nbytes / ceiling / 1e3
        print(f"{name}: floor {floor:.1f} us | " + "  ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
        rows.append(dict(case=name, batch=B, context=n, heads=heads, bytes=nbytes, floor_us=floor, us=us,
                         median=med))
    common.write_probe(args.out, "probe_mla.json", probe="MLA decode variants (values apart, tiles, merge)",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, variants=VARIANTS, cases=rows)


if __name__ == "__main__":
    main()
