"""Probe, not part of the library: the bifurcated prefix pass of the Gluon kernel alone
(``kernels/bifurcated_prefix_gluon.py``, Hopper only, no CPU interpreter), timed against the Triton states
path's prefix-only launch (``leanattn.bifurcated_decode`` with no own cache) on the same inputs, and checked
against it through ``leanattn.merge_states``.

Section 14 of the notes measured this probe's first version, a copy of the kernel of its own (query rows by
TMA, splits as the outer program index; ``git show 4723d7c:benchmarks/probe_gluon_prefix.py``). The library
kernel grew out of it, and the probe now drives that kernel (section 15), with its ring depth as the one knob.

GPU:     PYTHONPATH=src python benchmarks/probe_gluon_prefix.py          (writes $OUT/gluon_prefix_probe_H200.json)
offline: PYTHONPATH=/path/to/triton-3.6:src python benchmarks/probe_gluon_prefix.py --offline   (compiles for sm_90a)
"""
from __future__ import annotations

import json
import math
import os
import sys

import torch
import triton

from leanattn.ops.bifurcated_overlap import GluonPrefix

LOG2E = 1.4426950408889634


def prefix_states(q, pk, pv, S, stages=3, scale=None):
    """``q (B, Hq, D)``, ``pk/pv (P, Hkv, D)`` -> ``(launch, states)``: ``launch()`` runs the kernel with
    ``S`` splits of ``cdiv(cdiv(P, 64), S)`` tiles each (``S`` must leave none empty); ``states()`` gives its
    ``(S, B, Hq, D)`` fp32 and ``(S, B, Hq)`` states in ``merge_states``' layout."""
    B, Hq, D = q.shape
    P, Hkv, _ = pk.shape
    chunk = triton.cdiv(triton.cdiv(P, 64), S)
    assert triton.cdiv(triton.cdiv(P, 64), chunk) == S, "a split would be empty"
    O = torch.empty(S, B, Hq, D, dtype=torch.float32, device=q.device)
    L = torch.empty(S, B, Hq, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    gp = GluonPrefix(q, P, Hkv, S, chunk, scale * LOG2E, stages)
    pk4, pv4 = pk.unsqueeze(0), pv.unsqueeze(0)
    return (lambda: gp(q, pk4, pv4, O, L)), (lambda: (O, L))


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offline", action="store_true", help="compile for sm_90a on a machine without a GPU")
    ap.add_argument("--stages", default="3", help="comma-separated K/V ring depths (default 3)")
    args = ap.parse_args()
    configs = [int(x) for x in args.stages.split(",")]
    off = None
    if args.offline:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import offline_resources as off  # installs the offline driver
        off._install(None, [""])
    dev = "cpu" if args.offline else "cuda"
    torch.manual_seed(0)
    res = []
    for name, B, Hq, Hkv, P, S in (("gqa 8k x64", 64, 32, 8, 8192, 8), ("gqa 32k x64", 64, 32, 8, 32768, 8),
                                   ("gqa 16k x256", 256, 32, 8, 16384, 2), ("mha 8k x64", 64, 32, 32, 8192, 8)):
        q = torch.randn(B, Hq, 128, dtype=torch.bfloat16, device=dev)
        pk = torch.randn(P, Hkv, 128, dtype=torch.bfloat16, device=dev)
        pv = torch.randn_like(pk)
        flops = 4.0 * B * Hq * P * 128
        t = {}
        if dev == "cuda":
            import leanattn
            ref, ref_lse = leanattn.bifurcated_decode(q, pk, pv, None, None, return_lse=True)
            t["triton_states_prefix_only"] = _graph(lambda: leanattn.bifurcated_decode(q, pk, pv, None, None))
        errs = {}
        for stages in configs:
            launch, states = prefix_states(q, pk, pv, S, stages=stages)
            launch()
            tag = f"gluon_64_{stages}"
            if dev == "cpu":
                print(name, tag, off.RESULTS[-1] if off.RESULTS else "(no compile recorded)")
                continue
            out, lse_m = leanattn.merge_states(*states())
            errs[tag] = (((out.float() - ref.float()).norm() / ref.float().norm()).item(),
                         (lse_m - ref_lse).abs().max().item())
            t[tag] = _graph(launch)
        if dev == "cpu":
            continue
        us = {}
        for _ in range(2):  # two interleaved rounds, the best kept
            for key, fn in t.items():
                us[key] = min(us.get(key, float("inf")), triton.testing.do_bench(fn, warmup=25, rep=200) * 1e3)
        r = dict(case=name, S=S, err=errs, us=us, tflops={k: flops / (v * 1e-6) / 1e12 for k, v in us.items()})
        print(json.dumps(r))
        res.append(r)
    if dev == "cuda":
        out_dir = os.environ.get("OUT", "/tmp")
        with open(os.path.join(out_dir, "gluon_prefix_probe_H200.json"), "w") as f:
            json.dump(dict(torch=torch.__version__, triton=triton.__version__,
                           device=torch.cuda.get_device_name(), results=res), f, indent=1)


def _graph(fn):
    """``fn`` captured in a CUDA graph (``bench_decode.graph_of``, which keeps ``fn`` alive); returns the replay."""
    from bench_decode import graph_of
    return graph_of(fn).replay


if __name__ == "__main__":
    main()
