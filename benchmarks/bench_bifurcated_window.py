"""``bifurcated_decode`` with a sliding window (``window_left``): parallel samples of one prompt on a model with
sliding-window layers (Mistral v0.1: 4096 keys; Gemma-2: 4096; Gemma-3: 1024), against the same attention computed
other ways, one process.

Each case is a bifurcated suite shape (bf16, D=128, 256 own tokens a sample, in step) with a window of ``w`` keys.
Of the prefix, a sample's window holds the last ``w - 256`` tokens (none from ``w <= 256``): the windowed path
reads that tail once for all samples, where it lies (until 2026-12-05 13:58 it was copied out first); the own tokens
are a windowed decode. Every method is checked against the float64 reference (first and last sample), captured in a CUDA
graph and timed in 3 interleaved rounds (do_bench medians, L2 flushed):

* ``window``: ``leanattn.bifurcated_decode(..., window_left=w - 1)``;
* ``no window``: the same call without a window (the whole prefix: what the window saves);
* ``decode copied``: ``leanattn.decode(..., window_left=w - 1)`` over caches holding a copy of the prefix per sample
  (the windowed decode without sharing);
* peer: SDPA over the same copies with a boolean mask of each sample's window (one call).

The IO floor is the window's bytes once: the prefix tail once, each sample's own keys in its window, queries and
outputs, over the read ceiling.

    PYTHONPATH=src python benchmarks/bench_bifurcated_window.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402

# (bifurcated suite case, window in keys, as transformers' sliding_window)
CASES = (("gqa 8k x16", 4096), ("gqa 8k x64", 4096), ("gqa 8k x64", 1024), ("mha 8k x16", 4096),
         ("gqa 32k x64", 4096), ("gqa 8k x64", 16384))


def window_bytes(case, window, elt=2):
    """Bytes a windowed step must read: the prefix tail every sample's window holds, once, and each sample's own
    keys in its window, plus the queries and outputs."""
    row = case["hkv"] * case["d"] * 2 * elt
    own = min(case["own"], window)
    tail = min(case["prefix"], max(window - case["own"], 0))
    return tail * row + case["samples"] * own * row + 2 * case["samples"] * case["hq"] * case["d"] * elt


def measure(case, window, ceiling):
    inp = bb.make_inputs(case, "cuda")
    n, w = case["samples"], window - 1
    q, pk, pv, k, v, lens = inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"]
    kc, vc, lens_c = inp["kc"], inp["vc"], inp["lens_c"]
    idx = [0, n - 1]
    ref = leanattn.reference.bifurcated_decode(q[idx], pk, pv, k[idx], v[idx], lens[idx], window_left=w)[0]
    full_ref = leanattn.reference.bifurcated_decode(q[idx], pk, pv, k[idx], v[idx], lens[idx])[0]
    fns = {"window": lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, lens, window_left=w),
           "no window": lambda: leanattn.bifurcated_decode(q, pk, pv, k, v, lens),
           "decode copied": lambda: leanattn.decode(q, kc, vc, lens_c, window_left=w)}
    refs = {"window": ref, "no window": full_ref, "decode copied": ref}
    F = torch.nn.functional
    N = kc.shape[1]
    keys = torch.arange(N, device="cuda")
    mask = ((keys >= N - 1 - w) & (keys < N))[None, None, None, :]          # every sample's sequence is N long
    qt, kt, vt = q[:, :, None], kc.transpose(1, 2), vc.transpose(1, 2)                   # (B, H, L, D)
    gqa = case["hq"] != case["hkv"]
    peers = {"sdpa mask copied": lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask,
                                                                        enable_gqa=gqa)[:, :, 0]}
    skipped = bd.add_peers(fns, refs, peers, ref)
    name = f"{case['name']} window {window}"
    us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
    nbytes = window_bytes(case, window)
    floor = nbytes / ceiling / 1e3
    best = min((m for m in med if m not in ("window", "no window", "decode copied")), key=med.get, default=None)
    print(f"{name:26s} " + "  ".join(f"{m} {t:.1f}" for m, t in med.items())
          + f" | floor {floor:.1f}  window/floor {med['window'] / floor:.2f}"
          + f"  window/no-window {med['window'] / med['no window']:.2f}"
          + f"  copied/window {med['decode copied'] / med['window']:.2f}"
          + (f"  {best}/window {med[best] / med['window']:.2f}" if best else ""), flush=True)
    return dict(case=name, samples=n, window=window, prefix=case["prefix"], own=case["own"], hq=case["hq"],
                hkv=case["hkv"], d=case["d"], bytes=nbytes, floor_us=floor, us=us, median=med,
                gbs={m: nbytes / t / 1e3 for m, t in med.items() if m != "no window"}, best_peer=best,
                speedup_vs_best_peer=med[best] / med["window"] if best else None,
                window_vs_no_window=med["window"] / med["no window"],
                copied_vs_window=med["decode copied"] / med["window"], window_vs_floor=med["window"] / floor,
                peers_skipped=skipped)


def main(argv=None):
    return bd.run_case_variants(__doc__, argv, CASES, measure, "bifurcated_window.json",
                                "bifurcated_decode with a sliding window against the unwindowed call, windowed decode "
                                "over copied caches and SDPA with a window mask", cases_of=bb.suite)


if __name__ == "__main__":
    main()
