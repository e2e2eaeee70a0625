"""The warp-specialized Gluon prefix pass against the plain one, prefix states only (probe 38).

The library's Gluon prefix (``kernels/bifurcated_prefix_gluon.py``) runs 64 rows a warp group; at 128 rows its two
warp groups share one K/V ring and meet at a block-wide barrier before each refill, which the compiler places
because the same warps issue the TMA loads. In ``prefix_gluon_ws_kernel``, as in FlashAttention-3, one producer warp
issues the loads and each 64-row consumer warp group is its own partition: a consumer releases a ring slot through an
mbarrier (both must arrive) and never waits on the other, so the two drift apart and one's softmax can run under the
other's products. On the overlap path ``ops/bifurcated_overlap.prefix_warp_specialized`` chooses it (since
2026-12-03, from this probe's run and a launch sweep; notes section 25), and ``LEANATTN_BIFURCATED_CONFIG``'s
num_warps field 12 (path field 4) forces it. The ping-pong variants make the two consumers take turns issuing their
products (``ops/bifurcated_overlap.WS_PINGPONG``, FlashAttention-3's schedule); the uncapped-register variant of the
first run (1-5% behind the cap of 104) is dropped.

The prefix-bound suite cases (GQA 16k/32k x64/x256, MHA 32k x256) without own tokens: the states of each kernel
through ``merge_states`` against ``leanattn.bifurcated_decode(q, pk, pv, None, None)``, then graph replays timed in
three interleaved rounds (do_bench medians, L2 flushed), us and TFLOP/s of the prefix FLOPs.

    PYTHONPATH=src python benchmarks/probe_ws_prefix.py [--out DIR] [--cases A,B]
    offline: PYTHONPATH=/path/to/triton-3.6:src python benchmarks/probe_ws_prefix.py --offline   (compiles for sm_90a)
"""
from __future__ import annotations

import math
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from leanattn.kernels import bifurcated_prefix_gluon as pg  # noqa: E402
from leanattn.ops import bifurcated_overlap as ov  # noqa: E402
from leanattn.ops.bifurcated_overlap import GluonPrefix, prefix_splits  # noqa: E402

LOG2E = 1.4426950408889634
K = 1024
CASES = [("gqa", 16 * K, 64), ("gqa", 16 * K, 256), ("gqa", 32 * K, 64), ("gqa", 32 * K, 256), ("mha", 32 * K, 256)]

def library_states(q, pk, pv, rows, per_sm, stages, ws=False, sms=132, pingpong=False):
    """The library's Gluon prefix (``GluonPrefix``) at ``rows`` a program, ``per_sm`` programs per SM, or its
    warp-specialized kernel (``ws``, 128 rows, one per SM): ``(launch, states)``, ``states()`` the launch's
    ``(S, B, Hq, D)`` fp32 and ``(S, B, Hq)`` states in ``merge_states``' layout."""
    B, Hq, D = q.shape
    P, Hkv, _ = pk.shape
    S, chunk = prefix_splits(Hkv * triton.cdiv(B * Hq // Hkv, rows), triton.cdiv(P, pg.BLOCK_N), per_sm, sms)
    O = torch.empty(S, B, Hq, D, dtype=torch.float32, device=q.device)
    L = torch.empty(S, B, Hq, dtype=torch.float32, device=q.device)
    old = ov.WS_PINGPONG
    ov.WS_PINGPONG = pingpong  # read when the launch constants are made
    try:
        gp = GluonPrefix(q, P, Hkv, S, chunk, LOG2E / math.sqrt(D), stages, False, rows, ws)
    finally:
        ov.WS_PINGPONG = old
    pk4, pv4 = pk.unsqueeze(0), pv.unsqueeze(0)
    return (lambda: gp(q, pk4, pv4, O, L)), (lambda: (O, L))


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="")
    ap.add_argument("--offline", action="store_true", help="compile for sm_90a on a machine without a GPU")
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="no timing: each variant launched N times eagerly, then N graph replays, synchronised and "
                         "checked after each, with progress printed (to find which launch fails)")
    args = ap.parse_args(argv)
    if args.offline:
        import offline_resources as off
        off._install(None, [""])
    dev = "cpu" if args.offline else "cuda"
    torch.manual_seed(0)
    variants = {"64 rows, 2 per SM": lambda q, pk, pv: library_states(q, pk, pv, 64, 2, 3),
                "128 rows": lambda q, pk, pv: library_states(q, pk, pv, 128, 1, 3),
                "ws 128 rows, 3 stages": lambda q, pk, pv: library_states(q, pk, pv, 128, 1, 3, ws=True),
                "ws 128 rows, 4 stages": lambda q, pk, pv: library_states(q, pk, pv, 128, 1, 4, ws=True),
                "ws 128 rows, 3 stages, ping-pong": lambda q, pk, pv: library_states(q, pk, pv, 128, 1, 3, ws=True,
                                                                                     pingpong=True),
                "ws 128 rows, 4 stages, ping-pong": lambda q, pk, pv: library_states(q, pk, pv, 128, 1, 4, ws=True,
                                                                                     pingpong=True)}
    res = []
    for model, P, n in CASES:
        name = f"{model} {P // K}k x{n}"
        if args.cases and name not in args.cases.split(","):
            continue
        hq, hkv = (32, 32) if model == "mha" else (32, 8)
        q = torch.randn(n, hq, 128, dtype=torch.bfloat16, device=dev)
        pk = torch.randn(P, hkv, 128, dtype=torch.bfloat16, device=dev)
        pv = torch.randn_like(pk)
        flops = 4.0 * n * hq * P * 128
        if dev == "cpu":
            for tag, make in variants.items():
                make(q, pk, pv)[0]()
                print(name, tag, off.RESULTS[-1] if off.RESULTS else "(no compile recorded)")
            continue
        import leanattn
        from bench_decode import graph_of, interleaved_times
        ref, ref_lse = leanattn.bifurcated_decode(q, pk, pv, None, None, return_lse=True)
        graphs, errs = {}, {}
        for tag, make in variants.items():
            launch, states = make(q, pk, pv)

            def check(when):
                out, lse = leanattn.merge_states(*states())
                errs[tag] = (((out.float() - ref.float()).norm() / ref.float().norm()).item(),
                             (lse - ref_lse).abs().max().item())
                if errs[tag][0] > 1e-2:
                    raise RuntimeError(f"{name} {tag}: relative error {errs[tag][0]:.1e} {when}")
            launch()
            check("after the first launch")
            for i in range(args.stress):
                launch()
                torch.cuda.synchronize()
                check(f"after eager launch {i + 2}")
            g = graph_of(launch)  # keeps the launch, and the state tensors its replays write to, alive
            if g is None:
                raise RuntimeError(f"{name} {tag}: could not be captured in a CUDA graph")
            graphs[tag] = g.replay
            for i in range(args.stress):
                g.replay()
                torch.cuda.synchronize()
                check(f"after graph replay {i + 1}")
            if args.stress:
                print(f"{name} {tag}: {args.stress} launches and {args.stress} replays checked, error "
                      f"{errs[tag][0]:.1e}", flush=True)
        if args.stress:
            for _ in range(args.stress):
                for replay in graphs.values():
                    replay()
            torch.cuda.synchronize()
            print(f"{name}: {args.stress} interleaved rounds of replays done", flush=True)
            continue
        us, med = interleaved_times(graphs, 3)
        r = dict(case=name, err=errs, us=us, median=med, tflops={k: flops / (v * 1e-6) / 1e12 for k, v in med.items()})
        print(f"{name:14s} " + "  ".join(f"{k} {v:.1f} us ({r['tflops'][k]:.0f} TFLOP/s)" for k, v in med.items()),
              flush=True)
        res.append(r)
        del graphs
        torch.cuda.empty_cache()
    if dev == "cuda" and not args.stress:
        import common
        common.write_probe(args.out, "bifurcated_probe_ws_prefix.json",
                           probe="warp-specialized Gluon prefix (producer warp, two consumer warp groups) against the "
                                 "library's Gluon prefix at 64 and 128 rows, prefix states only",
                           timing="graph replays, do_bench medians of 3 interleaved rounds, L2 flushed", cases=res)


if __name__ == "__main__":
    main()
