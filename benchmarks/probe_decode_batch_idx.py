"""What flash-attn's ``cache_batch_idx`` and ``cache_leftpad`` cost decode: a contiguous cache read through them
(``cache_batch_idx`` as pages of ``N`` tokens, one a sequence; ``cache_leftpad`` as each row's base moved to its
first real token) against the same cache read directly, same process.

On contiguous suite cases (``bench_decode.suite``, bf16), each call is checked against the float64 reference, then
CUDA-graph replays are timed in interleaved rounds (do_bench, L2 flushed): the plain call, ``cache_batch_idx`` of
the identity, the rows reversed, and ``cache_leftpad``: the same keys in a cache of ``N + N / 4`` tokens a row,
each row's keys after a random padding of up to ``N / 4`` tokens (the same bytes attended, from unaligned starts);
``leftpad 0``, the same with no padding (the kernels' ``LEFTPAD`` path, nothing moved); ``paged256``, the cache as
256-token pages through a block table (the paged path's loads over the plain call's addresses).

    PYTHONPATH=src python benchmarks/probe_decode_batch_idx.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

PAGE = 256  # flash-attn's paged caches' page size
CASES = ("mha B=1 64k", "gqa B=4 32k", "gqa B=64 4k", "ragged-tail B=16", "d64 mha B=1 64k")


def measure(case, inp, ref) -> dict:
    q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
    B = q.shape[0]
    ident = torch.arange(B, dtype=torch.int32, device=q.device)
    rev = ident.flip(0)
    refs = {"plain": ref, "idx identity": ref}
    fns = {"plain": bd.with_plans(lambda: leanattn.decode(q, k, v, sl)),
           "idx identity": bd.with_plans(lambda: leanattn.decode(q, k, v, sl, cache_batch_idx=ident))}
    if B > 1:
        sl_rev = sl.flip(0).contiguous() if sl is not None else None
        refs["idx reversed"] = leanattn.reference.decode(q, k.flip(0), v.flip(0), sl_rev)[0]
        fns["idx reversed"] = bd.with_plans(lambda: leanattn.decode(q, k, v, sl_rev, cache_batch_idx=rev))
    refs["leftpad"] = refs["leftpad 0"] = ref
    fns["leftpad"] = left_padded_call(q, k, v, sl)
    fns["leftpad 0"] = left_padded_call(q, k, v, sl, max_pad=0)
    if k.shape[1] % PAGE == 0:
        refs["paged256"] = ref
        fns["paged256"] = paged_call(q, k, v, sl)
    us, med = bd.interleaved_graph_times(case["name"], fns, refs, rounds=3)
    print(f"{case['name']:22s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | identity / plain {med['idx identity'] / med['plain']:.3f}"
          + "".join(f" | {n} / plain {med[n] / med['plain']:.3f}" for n in ("leftpad", "leftpad 0", "paged256")
                    if n in med), flush=True)
    return dict(case=case["name"], us=us, median=med, ratio=med["idx identity"] / med["plain"],
                leftpad_ratio=med["leftpad"] / med["plain"],
                ratios={n: t / med["plain"] for n, t in med.items()})


def left_padded_call(q, k, v, sl, max_pad=None):
    """The decode of ``(q, k, v, sl)`` through ``cache_leftpad``: each row's keys moved after a random padding of up
    to ``max_pad`` tokens (a quarter of the capacity by default), in a cache that much longer (the padding holds NaN:
    never read). ``max_pad=0``: the same path with every row's keys at slot 0."""
    B, N = k.shape[:2]
    lens = sl.tolist() if sl is not None else [N] * B
    max_pad = N // 4 if max_pad is None else max_pad
    pads = torch.randint(0, max_pad + 1, (B,), dtype=torch.int32, device=q.device)
    kp, vp = (torch.full((B, N + max_pad, *c.shape[2:]), float("nan"), dtype=c.dtype, device=c.device) for c in (k, v))
    for b, (n, p) in enumerate(zip(lens, pads.tolist())):
        kp[b, p:p + n], vp[b, p:p + n] = k[b, :n], v[b, :n]
    lens_p = torch.tensor(lens, dtype=torch.int32, device=q.device) + pads
    return bd.with_plans(lambda: leanattn.decode(q, kp, vp, lens_p, cache_leftpad=pads))


def paged_call(q, k, v, sl):
    """The decode of ``(q, k, v, sl)`` with the contiguous cache seen as ``PAGE``-token pages in order (the paged
    path's loads over the plain call's addresses)."""
    B, N, H, D = k.shape
    n = N // PAGE
    table = torch.arange(B * n, dtype=torch.int32, device=q.device).view(B, n)
    kp, vp = (c.view(B * n, PAGE, H, D) for c in (k, v))
    lens = sl if sl is not None else torch.full((B,), N, dtype=torch.int32, device=q.device)
    return bd.with_plans(lambda: leanattn.decode(q, kp, vp, lens, block_table=table))


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = [measure(case, inp, ref) for case, inp, ref, _ in bd.probe_cases(CASES, want)]
    common.write_probe(args.out, "decode_probe_batch_idx.json", cases=out, timing=bd.GRAPH_TIMING,
                       probe="decode through cache_batch_idx and cache_leftpad against the contiguous cache read "
                             "directly")


if __name__ == "__main__":
    main()
