"""What logit soft-capping costs bifurcated decode (bifurcated probe 52): ``softcap=50`` against none, same process.

A capped call takes the path an uncapped one would (concat, states or, on Hopper, overlap with its Gluon prefix;
``ops/bifurcated_launch.py``), except where ``ops/bifurcated_overlap.preferred`` keeps capped calls off the
overlap path. On suite cases of ``bench_bifurcated`` (bf16, 256 own tokens per sample), four variants: the default
call with and without the cap, and the states path (``LEANATTN_BIFURCATED_CONFIG`` path field 3; the same as the
default where that is not the overlap path) with and without it; each checked against the float64 reference of the
first and last sample (capped or not), then CUDA-graph replays timed in five interleaved rounds (do_bench, L2
flushed; ``bench_bifurcated.variant_probe``).

    PYTHONPATH=src python benchmarks/probe_bifurcated_softcap.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402

import leanattn  # noqa: E402

CASES = ("gqa 8k x1", "gqa 8k x32", "gqa 8k x64", "mha 8k x32", "gqa 32k x64", "mha 16k x16")
CAP = 50.0  # Gemma-2's attention soft cap
STATES = {"LEANATTN_BIFURCATED_CONFIG": "0,0,0,0,0,0,0,0,0,3"}  # the states path


def capped(inp, idx):
    """The call over a case's inputs with the cap, and the capped reference of samples ``idx``."""
    q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
    ref = leanattn.reference.bifurcated_decode(q[idx], pk, pv, k[idx], v[idx], lens[idx], softcap=CAP)[0]
    return functools.partial(leanattn.bifurcated_decode, q, pk, pv, k, v, lens, softcap=CAP), ref


def main(argv=None):
    cap = f"softcap {CAP:g}"
    variants = {"plain": (None, ()), "plain, states path": (STATES, ()), cap: (None, (), capped),
                f"{cap}, states path": (STATES, (), capped)}
    bb.variant_probe(__doc__, argv, CASES, variants, ("paths", lambda p: p.path), "bifurcated_probe_softcap.json",
                     f"bifurcated decode with softcap={CAP:g} against none (default and states paths)",
                     pairs=[(cap, "plain"), (f"{cap}, states path", "plain, states path")])


if __name__ == "__main__":
    main()
