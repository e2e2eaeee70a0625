"""``leanattn.bifurcated_decode`` over paged own caches against ``leanattn.decode`` over paged copies.

The bifurcated suite (``bench_bifurcated.py``) keeps each sample's own tokens contiguous. Here the
own tokens live in pages (16 or 64 tokens, random order), and the peer is what a paged-cache server
does without prefix sharing: ``leanattn.decode`` over caches whose pages hold a copy of the prefix
followed by the sample's tokens. bf16, D=128, 256 own tokens per sample; both methods timed twice,
interleaved, as CUDA-graph replays with L2 flushed (``bench_bifurcated.time_fn``).

    python benchmarks/bifurcated_paged.py [--cases 'gqa 8k x1;mha 8k x1'] [--out DIR]

Writes ``bifurcated_paged_<device>.json``; the IO floor counts the prefix once, the own tokens and
q/out over the read ceiling measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.testing import paged_kv  # noqa: E402

CASES = ("mha 8k x1", "gqa 8k x1", "mha 32k x1", "gqa 32k x1", "gqa 8k x16", "mha 8k x16")


def timed(fn):
    fn()
    torch.cuda.synchronize()
    return bb.time_fn(fn, True)[0] * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=";".join(CASES), help="';'-separated bifurcated suite case names")
    ap.add_argument("--out", default=os.environ.get("OUT", os.path.join(common.ROOT, "benchmarks", "results")))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bifurcated_paged: needs a CUDA GPU")
        return 0
    info = common.env_info()
    bw = common.read_bandwidth_gbs()
    ceil = bw["read_ceiling"]
    print(info["device"], "read ceiling", round(ceil), "GB/s")
    gen = torch.Generator().manual_seed(0)
    suite = {c["name"]: c for c in bb.suite()}
    rows = []
    for name in args.cases.split(";"):
        c = suite[name]
        inp = bb.make_inputs(c, "cuda")
        pb, ob, qb, _ = bb.case_bytes(c)
        for ps in (16, 64):
            kp, vp, tab = paged_kv(inp["k"], inp["v"], None, ps, generator=gen)
            kcp, vcp, tabc = paged_kv(inp["kc"], inp["vc"], None, ps, generator=gen)
            ours = common.compiled_as_at_start(lambda: leanattn.bifurcated_decode(
                inp["q"], inp["pk"], inp["pv"], kp, vp, inp["lens"], block_table=tab))
            dec = common.compiled_as_at_start(lambda: leanattn.decode(inp["q"], kcp, vcp, inp["lens_c"], block_table=tabc))
            # the same call over the contiguous own cache (the float64 checks are the GPU tests')
            ref = leanattn.bifurcated_decode(inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"]).float()
            err = ((ours().float() - ref).abs().max().item(), (dec().float() - ref).abs().max().item())
            a1, b1, a2, b2 = timed(ours), timed(dec), timed(ours), timed(dec)
            io_floor = (pb + ob + qb) / ceil / 1e3
            r = dict(case=name, page_size=ps, samples=c["samples"], hq=c["hq"], hkv=c["hkv"], prefix=c["prefix"],
                     own=c["own"], bifurcated_us=[a1, a2], decode_paged_copies_us=[b1, b2], ratio=(b1 + b2) / (a1 + a2),
                     io_floor_us=io_floor, bifurcated_gbs=(pb + ob + qb) / min(a1, a2) / 1e3,
                     max_abs_diff_vs_contiguous_bifurcated=err[0], decode_copies_max_abs_diff=err[1])
            rows.append(r)
            print(f"paged{ps:<3d} {name:12s} bif {a1:7.1f} {a2:7.1f}  dec_paged_copies {b1:7.1f} {b2:7.1f}  "
                  f"ratio {r['ratio']:.3f} floor {io_floor:6.1f} maxdiff {err[0]:.1e} {err[1]:.1e}", flush=True)
        del inp
    path = os.path.join(args.out, f"bifurcated_paged_{info['device'].replace(' ', '_')}.json")
    with open(path, "w") as f:
        json.dump(dict(env=info, bandwidth=bw, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
