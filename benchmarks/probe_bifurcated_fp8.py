"""Bifurcated decode over float8 caches against bf16 caches (bifurcated probe 53), same process.

On suite cases of ``bench_bifurcated`` (bf16 queries, 256 own tokens per sample), prefix and own caches quantised to
e4m3 with per-tensor scales (``amax / 448``), three variants: the default call over the bf16 caches (the overlap
path where it is preferred), the states path over the bf16 caches (``LEANATTN_BIFURCATED_CONFIG`` path field 3,
the path float8 calls take), and the default call over the float8 caches; each checked against the float64
reference (over the bf16 caches, or over the stored float8 values times the scales) of the first and last sample,
then CUDA-graph replays timed in five interleaved rounds (do_bench, L2 flushed). KV bytes read are printed so that
the float8 call's ratio can be set against the halved bytes.

    PYTHONPATH=src python benchmarks/probe_bifurcated_fp8.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa 8k x1", "gqa 8k x16", "gqa 8k x64", "mha 8k x32", "gqa 32k x64", "mha 16k x16")
STATES = "0,0,0,0,0,0,0,0,0,3"  # LEANATTN_BIFURCATED_CONFIG: the states path


def quantise(t):
    """``(stored float8 e4m3, scale)`` of ``t``: per-tensor scale ``amax / 448``."""
    scale = max(t.abs().max().item() / 448.0, 1e-12)
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp in bb.probe_inputs(CASES, want, copies=False):
        q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
        idx = [0, case["samples"] - 1]
        plain = bb.reference_of(inp, idx)
        (pk8, ks), (pv8, vs) = quantise(pk), quantise(pv)
        k8, v8 = (k.float() / ks).to(torch.float8_e4m3fn), (v.float() / vs).to(torch.float8_e4m3fn)
        ref8 = leanattn.reference.bifurcated_decode(q[idx], pk8, pv8, k8[idx], v8[idx], lens[idx], k_scale=ks,
                                                    v_scale=vs)[0]
        call = bb.ours_call(inp)
        fp8_call = functools.partial(leanattn.bifurcated_decode, q, pk8, pv8, k8, v8, lens, k_scale=ks, v_scale=vs)
        fns = {"bf16": bd.with_plans(call), "bf16, states path": bd.with_plans(call, env={
                   "LEANATTN_BIFURCATED_CONFIG": STATES}), "fp8": bd.with_plans(fp8_call)}
        refs = {"bf16": plain, "bf16, states path": plain, "fp8": ref8}
        us, med = bd.interleaved_graph_times(case["name"], fns, refs, rounds=5, pick=idx)
        paths = {n: sorted({p.path for p in f.plans[1].values()}) for n, f in fns.items()}
        kv_bytes = sum(t.numel() * t.element_size() for t in (pk, pv, k, v))
        ratio = {"fp8 / bf16": med["fp8"] / med["bf16"], "fp8 / bf16 states": med["fp8"] / med["bf16, states path"]}
        print(f"{case['name']:14s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
              + "  | " + "  ".join(f"{n} {r:.3f}" for n, r in ratio.items())
              + f"  bf16 KV {kv_bytes / 1e6:.0f} MB  paths {paths}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, ratio=ratio, paths=paths, kv_mb_bf16=kv_bytes / 1e6))
        del inp, fns, call, fp8_call, q, pk, pv, k, v, lens, pk8, pv8, k8, v8
    common.write_probe(args.out, "bifurcated_probe_fp8.json", cases=out,
                       timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"),
                       probe="bifurcated decode over float8 e4m3 caches against bf16 (default and states paths)")


if __name__ == "__main__":
    main()
