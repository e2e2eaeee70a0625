"""Stream-K pieces called or inlined: decode and the one-sample bifurcated kernel (decode probe 20).

``decode_piece`` (``kernels/decode.py``) and ``concat_piece`` (``kernels/bifurcated_concat.py``) are
``noinline`` calls: when pieces became calls, inlining them cost 214-216 registers at D=128. Offline today
(Triton 3.6, sm_90a, ``benchmarks/offline_resources.py``) inlined pieces compile to 156 registers (decode,
D=128; 146 called) and 148 (one-sample bifurcated, GQA; 114 called), both within the 2 programs per SM
that D=128 grids hold. The one-sample path runs 1-2% behind decode over copied caches on the GQA cases
(bifurcated suite, 2026-12-02 04:31: 0.979-0.981x), a gap an older ncu profile tied to longer memory
stalls with fewer instructions. This probe times, in one process and interleaved over three rounds,
each kernel called (the default) and inlined, loaded as a second copy of its module whose piece is not
``noinline``. Graph replays, do_bench medians (L2 flushed), us.

    PYTHONPATH=src python benchmarks/probe_piece_inline.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

from leanattn.kernels import bifurcated_concat, decode as decode_kernels  # noqa: E402
from leanattn.ops import bifurcated_launch, decode as dec_ops  # noqa: E402

K = 1024
DECODE_CASES = ("gqa B=1 32k", "mha B=1 16k", "gqa B=16 8k", "ragged-tail B=16", "d64 mha B=1 64k")
X1_CASES = ("gqa 8k x1", "mha 8k x1", "gqa 16k x1", "gqa 32k x1")


def inlined(module, piece: str):
    """A second copy of kernel ``module`` whose ``piece`` is inlined (fresh JIT functions, own cache keys)."""
    name = module.__name__ + "_inlined"
    spec = importlib.util.spec_from_file_location(name, module.__file__)
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy
    spec.loader.exec_module(copy)
    getattr(copy, piece).noinline = False
    return copy


def with_kernels(lean, concat, fn):
    """``fn`` with the op modules launching ``lean`` and ``concat`` (``bench_decode.with_plans``)."""
    return bd.with_plans(fn, patches=((dec_ops, "lean_decode_kernel", lean),
                                      (bifurcated_launch, "concat_decode_kernel", concat)))


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    called = (decode_kernels.lean_decode_kernel, bifurcated_concat.concat_decode_kernel)
    inl = (inlined(decode_kernels, "decode_piece").lean_decode_kernel,
           inlined(bifurcated_concat, "concat_piece").concat_decode_kernel)
    torch.manual_seed(0)
    out = []
    for case, inp, ref, call in bd.probe_cases(DECODE_CASES, want):
        fns = {"lean called": with_kernels(*called, call), "lean inlined": with_kernels(*inl, call),
               "cuDNN": bd.METHODS["sdpa_cudnn"](case, inp)}
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        print(f"{case['name']:18s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
              + f"  | inlined/called {med['lean inlined'] / med['lean called']:.3f}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med))
        del inp, call, fns
    for name, ref, ours, copied in bb.one_sample_cases(X1_CASES, want):
        fns = {"concat called": with_kernels(*called, ours), "concat inlined": with_kernels(*inl, ours),
               "decode copied, called": with_kernels(*called, copied),
               "decode copied, inlined": with_kernels(*inl, copied)}
        us, med = bd.interleaved_graph_times(name, fns, ref)
        dc = med["decode copied, called"]
        print(f"{name:18s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
              + f"  | over decode copied: called {dc / med['concat called']:.3f}"
              f" inlined {dc / med['concat inlined']:.3f}", flush=True)
        out.append(dict(case=name, us=us, median=med))
        del ours, copied, fns
    common.write_probe(args.out, "decode_probe_piece_inline.json",
                       probe="stream-K pieces called (noinline) against inlined, decode and one-sample bifurcated",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
