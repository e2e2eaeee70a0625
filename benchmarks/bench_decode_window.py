"""Sliding-window decode (``window_left``) against the same attention computed other ways, one process.

A windowed call reads only each sequence's window: ``min(len, window_left + 1)`` keys a row, so its floor is those
bytes over the read ceiling, whatever the context length. For each case (the decode suite's long cases, bf16,
Mistral's and Gemma-2's window of 4096 keys, Gemma-3's of 1024): every method is checked against the float64
reference of the windowed attention, captured in a CUDA graph, and timed in 3 interleaved rounds (do_bench medians,
L2 flushed):

* ``window``: ``leanattn.decode(..., window_left=W)`` over the whole cache (contiguous or paged);
* ``window copied``: ``leanattn.decode`` without a window over a cache holding only each window (the same bytes
  read by the same kernels: what the window should cost);
* ``full``: ``leanattn.decode`` without a window over the whole length (another result: what the window saves);
* peers: SDPA (cuDNN, FLASH) over each sequence's window, one call over strided views where lengths are equal,
  else one call per sequence; ``flex_attention`` (compiled, ``dynamic=True``) with a sliding-window and length
  ``mask_mod`` over the whole cache, whose block mask skips the blocks outside the windows.

    PYTHONPATH=src python benchmarks/bench_decode_window.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402

# (suite case, window_left)
CASES = (("mha B=1 128k", 4095), ("gqa B=1 128k", 4095), ("gqa B=1 128k", 1023), ("gqa B=4 32k", 4095),
         ("gqa B=8 128k", 4095), ("ragged-tail B=16", 4095), ("ragged-uniform B=32", 4095),
         ("paged16 gqa B=4 32k", 4095), ("paged64 ragged-tail", 4095))


def window_bytes(case, window):
    keys = sum(min(n, window + 1) for n in case["lens"])
    return keys * case["hkv"] * case["d"] * 2 * 2 + 2 * len(case["lens"]) * case["hq"] * case["d"] * 2


def peers(case, inp, window):
    """SDPA and flex forms of the windowed attention (label -> call)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask
    F = torch.nn.functional
    q, k, v, lens = inp["q"], inp["k"], inp["v"], case["lens"]
    gqa = case["hq"] != case["hkv"]
    q4, kt, vt = q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)
    lo = [max(n - 1 - window, 0) for n in lens]
    out = {}
    for label, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
        if len(set(lens)) == 1:
            def one(backend=backend, a=lo[0], n=lens[0]):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q4, kt[:, :, a:n], vt[:, :, a:n], enable_gqa=gqa).squeeze(2)
            out[label] = one
        else:
            views = [(q4[b:b + 1], kt[b:b + 1, :, a:n], vt[b:b + 1, :, a:n]) for b, (a, n) in enumerate(zip(lo, lens))]

            def per_seq(backend=backend, views=views):
                with sdpa_kernel([backend]):
                    return torch.cat([F.scaled_dot_product_attention(a, b_, c, enable_gqa=gqa)
                                      for a, b_, c in views]).squeeze(2)
            out[label + " per seq"] = per_seq
    sl = inp["seqlens"]

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < sl[b]) & (kv_idx >= sl[b] - 1 - window)
    block_mask = create_block_mask(mask_mod, len(lens), None, 1, k.shape[1], device="cuda")
    out["flex"] = lambda: bd.compiled_flex()(q4, kt, vt, block_mask=block_mask, enable_gqa=gqa).squeeze(2)
    return out


def measure(case, window, ceiling):
    inp = bd.make_inputs(case)
    q, sl = inp["q"], inp["seqlens"]
    k, v, bt = inp.get("k_pages", inp["k"]), inp.get("v_pages", inp["v"]), inp.get("block_table")
    ref, _ = leanattn.reference.decode(q, inp["k"], inp["v"], sl, None, window_left=window)
    full_ref, _ = leanattn.reference.decode(q, inp["k"], inp["v"], sl)
    # each window copied to the front of a cache of its own
    W = min(window + 1, max(case["lens"]))
    kw = torch.zeros(len(case["lens"]), W, case["hkv"], case["d"], dtype=q.dtype, device="cuda")
    vw = torch.zeros_like(kw)
    for b, n in enumerate(case["lens"]):
        a = max(n - 1 - window, 0)
        kw[b, :n - a], vw[b, :n - a] = inp["k"][b, a:n], inp["v"][b, a:n]
    wl = torch.tensor([min(n, window + 1) for n in case["lens"]], dtype=torch.int32, device="cuda")
    fns = {"window": lambda: leanattn.decode(q, k, v, sl, bt, window_left=window),
           "window copied": lambda: leanattn.decode(q, kw, vw, wl),
           "full": lambda: leanattn.decode(q, k, v, sl, bt)}
    refs = {"window": ref, "window copied": ref, "full": full_ref}
    skipped = bd.add_peers(fns, refs, peers(case, inp, window), ref)
    name = f"{case['name']} W={window + 1}"
    us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3)
    nbytes = window_bytes(case, window)
    floor = nbytes / ceiling / 1e3
    best = min((n for n in med if n not in ("window", "window copied", "full")), key=med.get)
    print(f"{name:30s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | floor {floor:.1f}  window/copied {med['window'] / med['window copied']:.3f}"
          + f"  {best}/window {med[best] / med['window']:.2f}  full/window {med['full'] / med['window']:.1f}",
          flush=True)
    return dict(case=name, lens=case["lens"], window_left=window, hq=case["hq"], hkv=case["hkv"], d=case["d"],
                page=case.get("page"), bytes=nbytes, floor_us=floor, us=us, median=med,
                gbs={n: nbytes / t / 1e3 for n, t in med.items() if n != "full"}, best_peer=best,
                speedup_vs_best_peer=med[best] / med["window"], window_vs_copied=med["window"] / med["window copied"],
                peers_skipped=skipped)


def main(argv=None):
    return bd.run_case_variants(__doc__, argv, CASES, measure, "decode_window.json",
                                "decode with a sliding window against the window copied, full attention and the peers")


if __name__ == "__main__":
    main()
