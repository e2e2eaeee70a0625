"""Bifurcated decode over float8 caches against bf16 caches (bifurcated probe 53), same process.

On suite cases of ``bench_bifurcated`` (bf16 queries, 256 own tokens per sample), prefix and own caches quantised to
e4m3 with per-tensor scales (``amax / 448``), four variants: the default call over the bf16 caches (the overlap
path where it is preferred), the states path over the bf16 caches (``LEANATTN_BIFURCATED_CONFIG`` path field 3),
the default call over the float8 caches (the overlap path where a bf16 call takes it, its Gluon prefix converting
the float8 tiles), and the states path over them; each checked against
the float64 reference (over the bf16 caches, or over the stored float8 values times the scales) of the first and
last sample, then CUDA-graph replays timed in five interleaved rounds (do_bench, L2 flushed;
``bench_bifurcated.variant_probe``). The float8 caches hold half the bytes of the bf16 ones.

    PYTHONPATH=src python benchmarks/probe_bifurcated_fp8.py [--out DIR] [--cases A,B]
    PYTHONPATH=src python benchmarks/probe_bifurcated_fp8.py --plot RESULT.json   (its plot, beside it)
"""
from __future__ import annotations

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa 8k x1", "gqa 8k x16", "gqa 8k x64", "mha 8k x32", "gqa 32k x64", "mha 16k x16", "gqa 8k x256")
STATES = {"LEANATTN_BIFURCATED_CONFIG": "0,0,0,0,0,0,0,0,0,3"}  # the states path


def quantised(inp, idx):
    """The call over a case's caches stored as e4m3 with per-tensor scales ``amax / 448`` (one for keys, prefix and
    own alike, one for values), and the reference over the stored values times the scales for samples ``idx``."""
    q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
    ks = max(pk.abs().max().item(), k.abs().max().item()) / 448.0
    vs = max(pv.abs().max().item(), v.abs().max().item()) / 448.0
    pk8, k8 = ((t.float() / ks).to(torch.float8_e4m3fn) for t in (pk, k))
    pv8, v8 = ((t.float() / vs).to(torch.float8_e4m3fn) for t in (pv, v))
    ref = leanattn.reference.bifurcated_decode(q[idx], pk8, pv8, k8[idx], v8[idx], lens[idx], k_scale=ks,
                                               v_scale=vs)[0]
    return functools.partial(leanattn.bifurcated_decode, q, pk8, pv8, k8, v8, lens, k_scale=ks, v_scale=vs), ref


TITLE = "bifurcated decode over float8 e4m3 caches, bf16 queries, CUDA-graph replays with L2 flushed"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--plot"]:  # the plot of a result file: --plot FILE.json
        common.plot_probe(argv[1], "bf16", argv[1].replace(".json", ".png"), TITLE)
        return
    variants = {"bf16": (None, ()), "bf16, states path": (STATES, ()), "fp8": (None, (), quantised),
                "fp8, states path": (STATES, (), quantised)}
    path = bb.variant_probe(__doc__, argv, CASES, variants, ("paths", lambda p: p.path), "bifurcated_probe_fp8.json",
                            "bifurcated decode over float8 e4m3 caches against bf16 (default and states paths)",
                            pairs=[("fp8", "bf16"), ("fp8", "fp8, states path"),
                                   ("fp8, states path", "bf16, states path")])
    common.plot_probe(path, "bf16", path.replace(".json", ".png"), TITLE)


if __name__ == "__main__":
    main()
