"""Probe: a shared prefix held in the page pool of every sample's own tokens (``bifurcated_decode(prefix_block_table=)``)
against the same prefix as dense tensors (the bifurcated kernels' own paths) and against ``leanattn.decode`` over
each sample's block table of prefix pages then own pages (what a paged engine runs without cascade: no copy, the
prefix read once per sample). One 8k prompt, or 4 and 8 of them with their samples interleaved, 256 own tokens a
sample, bf16, D=128; each call checked against the
float64 reference (first and last sample), captured in a CUDA graph, 3 interleaved do_bench rounds (L2 flushed).
The IO floor is the prefix's bytes once plus the own tokens' over the read ceiling measured in the same process.
With ``--window W`` every call (and the reference) takes ``window_left=W`` and the floor counts the window's bytes:
a paged prefix's window tail read where it lies, against the dense prefix's, and against windowed decode over pages.

    PYTHONPATH=src python benchmarks/probe_bifurcated_paged.py [--out DIR] [--cases A,B] [--window W]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

PREFIX, OWN, D = 8192, 256, 128
CASES = [(f"{kind} x{n} page{page}", hq, hkv, n, page, 1) for kind, hq, hkv in (("gqa", 32, 8), ("mha", 32, 32))
         for n, page in ((4, 16), (16, 16), (64, 16), (64, 64), (256, 16))]
# several prompts of PREFIX tokens each, their samples interleaved
CASES += [(f"gqa {g} prompts x{n} page16", 32, 8, n, 16, g) for g, n in ((4, 16), (8, 64))]


def make_case(hq, hkv, n, page, prompts=1, window=-1):
    """The pool holding the prompts' pages and every sample's, in random order (sample ``i`` of prompt ``i %
    prompts``): ``(q, pool_k, pool_v, prefix_table (prompts, P / page), prefix_ids (n,) or None, own_table (n, OWN /
    page), own_lens, combined_table (n, (P + OWN) / page), picked rows, their reference output)``."""
    pp, op = PREFIX // page, OWN // page
    pages = prompts * pp + n * op
    pool_k = torch.randn(pages, page, hkv, D, dtype=torch.bfloat16, device="cuda") / 4
    pool_v = torch.randn_like(pool_k)
    perm = torch.randperm(pages, device="cuda").to(torch.int32)
    ptab = perm[:prompts * pp].view(prompts, pp).contiguous()
    otab = perm[prompts * pp:].view(n, op).contiguous()
    ids = torch.arange(n, device="cuda").remainder(prompts).to(torch.int32)
    both = torch.cat([ptab[ids.long()], otab], 1).contiguous()
    ids = ids if prompts > 1 else None
    q = torch.randn(n, hq, D, dtype=torch.bfloat16, device="cuda")
    lens = torch.full((n,), OWN, dtype=torch.int32, device="cuda")
    idx = [0, n - 1]
    ref = leanattn.reference.bifurcated_decode(q[idx], pool_k, pool_v, pool_k, pool_v, lens[idx], otab[idx],
                                               prefix_ids=None if ids is None else ids[idx],
                                               prefix_block_table=ptab, window_left=window)[0]
    return q, pool_k, pool_v, ptab, ids, otab, lens, both, idx, ref


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv, [("--window", dict(type=int, default=-1))])
    w = args.window
    rows = []
    for name, hq, hkv, n, page, prompts in CASES:
        if want and name not in want:
            continue
        q, pool_k, pool_v, ptab, ids, otab, lens, both, idx, ref = make_case(hq, hkv, n, page, prompts, w)
        dense_k = pool_k[ptab.long()].reshape(prompts, PREFIX, hkv, D)
        dense_v = pool_v[ptab.long()].reshape(prompts, PREFIX, hkv, D)
        if prompts == 1:
            dense_k, dense_v = dense_k[0], dense_v[0]
        group = dict(prefix_ids=ids, max_group_size=n // prompts) if ids is not None else {}
        group["window_left"] = w
        fns = {"paged prefix": lambda: leanattn.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, lens, otab,
                                                                  prefix_block_table=ptab, **group),
               "dense prefix": lambda: leanattn.bifurcated_decode(q, dense_k, dense_v, pool_k, pool_v, lens, otab,
                                                                  **group),
               "decode over pages": lambda: leanattn.decode(q, pool_k, pool_v, lens + PREFIX, both, window_left=w)}
        fns = bd.drop_failing(name, fns)
        us, med = bd.interleaved_graph_times(name, fns, ref, rounds=3, pick=idx)
        token = hkv * D * 2 * 2  # K and V bytes of one token
        # a window reads at most w + 1 keys of a sequence: the prompts' tails once, the own tokens
        keys = w + 1 if w >= 0 else PREFIX + OWN
        io = (prompts * min(PREFIX, max(keys - OWN, 0)) + n * min(OWN, keys)) * token
        floor = io / ceiling / 1e3
        print(f"{name}: IO floor {floor:.1f} us | " + "  ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
        rows.append(dict(case=name, hq=hq, hkv=hkv, samples=n, prompts=prompts, page_size=page, prefix=PREFIX,
                         own=OWN, io_bytes=io,
                         copied_bytes=n * (PREFIX + OWN) * token, io_floor_us=floor, us=us, median=med))
    out_name = "probe_bifurcated_paged.json" if w < 0 else f"probe_bifurcated_paged_window{w}.json"
    common.write_probe(args.out, out_name, window_left=w, probe="paged shared prefix against dense and decode",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
