"""The merge launch as a programmatic dependent launch (decode probe 22).

A stream-K decode that merges its cut rows apart is two launches (``ops/stream_k_launch.py``): the decode
kernel, then ``piece_merge_kernel``. Between two launches of one stream the GPU drains the first before it
starts the second. On sm_90 the second may be a programmatic dependent launch (PDL): the first kernel lets it
start at once (``gdc_launch_dependents``), its programs become resident while the first runs and wait at
``gdc_wait`` until the first's writes are visible. This probe times, in one process and interleaved over
three rounds (graph replays, do_bench medians, L2 flushed, us), each case with its rows merged in-kernel
(``LEANATTN_DECODE_MERGE=0``), in a merge launch without PDL (``LEANATTN_DECODE_MERGE=1 LEANATTN_PDL=0``) and
with it (``LEANATTN_PDL=1``), cuDNN beside them; the one-sample bifurcated cases and decode over their copied
caches the same way; the fixed cost of one short case with every length 0; and decode's split schedule (splits,
then ``merge_states``) with PDL off and on. (Its run of 2026-12-02 06:5x also timed the multi-sample bifurcated
states path, states then ``merge_states``, with the states kernel letting the merge start at once: 1.5-4% slower
at GQA 8k x16 and x32, 0.5-4.7% faster at MHA 8k x32 and GQA 8k x64; that path keeps a plain launch.)

    PYTHONPATH=src python benchmarks/probe_pdl.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

DECODE_CASES = ("mha B=1 4k", "mha B=1 16k", "mha B=1 64k", "gqa B=1 32k", "gqa B=1 128k", "gqa B=4 32k",
                "gqa B=16 8k", "ragged-tail B=16", "d64 mha B=1 64k", "d256 16/8 B=1 32k")
X1_CASES = ("gqa 8k x1", "mha 8k x1", "gqa 16k x1", "gqa 32k x1")
SPLIT_CASES = ("gqa B=1 32k", "mha B=1 16k")  # decode's split schedule: splits, then merge_states
PDL_ONLY = {"PDL off": {"LEANATTN_PDL": "0"}, "PDL on": {"LEANATTN_PDL": "1"}}
VARIANTS = {"in-kernel": {"LEANATTN_DECODE_MERGE": "0", "LEANATTN_PDL": "0"},
            "launch": {"LEANATTN_DECODE_MERGE": "1", "LEANATTN_PDL": "0"},
            "launch+PDL": {"LEANATTN_DECODE_MERGE": "1", "LEANATTN_PDL": "1"}}


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = []
    for case, inp, ref, call in bd.probe_cases(DECODE_CASES, want):
        fns = {n: bd.with_plans(call, e) for n, e in VARIANTS.items()}
        fns["cuDNN"] = bd.METHODS["sdpa_cudnn"](case, inp)
        us, med = bd.interleaved_graph_times(case["name"], fns, ref)
        bd.report_ratios(case["name"], med,
                         [("launch+PDL", "launch"), ("launch+PDL", "in-kernel"), ("launch+PDL", "cuDNN")])
        out.append(dict(case=case["name"], us=us, median=med))
        if case["name"] == "gqa B=1 32k":
            zero = torch.zeros_like(inp["seqlens"])
            empty = lambda: leanattn.decode(inp["q"], inp["k"], inp["v"], zero)  # noqa: E731
            zfns = {n: bd.with_plans(empty, e) for n, e in VARIANTS.items()}
            us0, med0 = bd.interleaved_graph_times("lengths 0", zfns, torch.zeros_like(ref))
            bd.report_ratios("  lengths 0", med0, [("launch+PDL", "launch"), ("launch+PDL", "in-kernel")])
            out.append(dict(case=case["name"] + ", every length 0", us=us0, median=med0))
        del inp, call, fns
    for name, ref, ours, copied in bb.one_sample_cases(X1_CASES, want):
        fns = {}
        for n, e in VARIANTS.items():
            fns["ours " + n] = bd.with_plans(ours, e)
            fns["copied " + n] = bd.with_plans(copied, e)
        us, med = bd.interleaved_graph_times(name, fns, ref)
        bd.report_ratios(name, med, [("ours launch+PDL", "ours launch"), ("copied launch+PDL", "copied launch"),
                                     ("ours launch+PDL", "copied launch+PDL")])
        out.append(dict(case=name, us=us, median=med))
        del ours, copied, fns
    for case, inp, ref, call in bd.probe_cases(SPLIT_CASES, want, schedule="split"):
        fns = {n: bd.with_plans(call, e) for n, e in PDL_ONLY.items()}
        us, med = bd.interleaved_graph_times("split " + case["name"], fns, ref)
        bd.report_ratios("split " + case["name"], med, [("PDL on", "PDL off")])
        out.append(dict(case="split " + case["name"], us=us, median=med))
        del inp, call, fns
    common.write_probe(args.out, "decode_probe_pdl.json",
                       probe="merge launch without and with programmatic dependent launch, and the in-kernel merge",
                       timing=bd.GRAPH_TIMING, cases=out)


if __name__ == "__main__":
    main()
