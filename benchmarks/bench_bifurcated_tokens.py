"""``bifurcated_decode`` with several query tokens a sample (``q (B, Lq, Hq, D)``, ``causal=True``): speculative
decoding of parallel samples of one prompt, against the same attention computed other ways, one process.

Every token attends the whole prefix, so the prefix pass takes the ``B * Lq`` token rows as samples and reads each
prefix tile once for all of them; the own tokens are one causal ``leanattn.decode`` call; a ``merge_states`` launch
merges the two. For each case (bifurcated suite shapes, bf16, D=128, 256 own tokens a sample) every method is checked
against the float64 reference (first and last sample), captured in a CUDA graph and timed in 3 interleaved rounds
(do_bench medians, L2 flushed):

* ``tokens``: ``leanattn.bifurcated_decode(q (B, Lq, Hq, D), ..., causal=True)``;
* ``one token``: ``leanattn.bifurcated_decode`` of each sample's last token (the plain shared-prefix decode step);
* ``decode copied``: ``leanattn.decode(q (B, Lq, Hq, D), causal=True)`` over caches holding a copy of the prefix per
  sample (multi-token decode without the sharing);
* peer: SDPA over the same copies with PyTorch's bottom-right causal mask (``causal_lower_right``, one call).

The IO floor is the prefix once, the own tokens, the queries and the outputs over the read ceiling.

    PYTHONPATH=src python benchmarks/bench_bifurcated_tokens.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bifurcated as bb  # noqa: E402
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402

# (bifurcated suite case, query tokens a sample)
CASES = (("mha 8k x16", 4), ("mha 8k x64", 4), ("gqa 8k x16", 4), ("gqa 8k x64", 4), ("gqa 8k x64", 8),
         ("gqa 32k x64", 4))


def measure(case, lq, ceiling):
    inp = bb.make_inputs(case, "cuda")
    n = case["samples"]
    q4 = torch.randn(n, lq, case["hq"], case["d"], dtype=torch.bfloat16, device="cuda")
    pk, pv, k, v, lens = inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"]
    kc, vc, lens_c = inp["kc"], inp["vc"], inp["lens_c"]
    idx = [0, n - 1]
    ref = leanattn.reference.bifurcated_decode(q4[idx], pk, pv, k[idx], v[idx], lens[idx], causal=True)[0]
    one_ref = leanattn.reference.bifurcated_decode(q4[idx, -1], pk, pv, k[idx], v[idx], lens[idx])[0]
    fns = {"tokens": lambda: leanattn.bifurcated_decode(q4, pk, pv, k, v, lens, causal=True),
           "one token": lambda: leanattn.bifurcated_decode(q4[:, -1], pk, pv, k, v, lens),
           "decode copied": lambda: leanattn.decode(q4, kc, vc, lens_c, causal=True)}
    refs = {"tokens": ref, "one token": one_ref, "decode copied": ref}
    from torch.nn.attention.bias import causal_lower_right
    F = torch.nn.functional
    bias = causal_lower_right(lq, kc.shape[1])
    qt, kt, vt = q4.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)
    gqa = case["hq"] != case["hkv"]
    peers = {"sdpa lower-right copied": lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias,
                                                                               enable_gqa=gqa).transpose(1, 2)}
    skipped = bd.add_peers(fns, refs, peers, ref)
    name = f"{case['name']} Lq={lq}"
    us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
    prefix, own, qo, copied = bb.case_bytes(case)
    nbytes = prefix + own + qo * lq
    floor = nbytes / ceiling / 1e3
    best = min((m for m in med if m not in ("tokens", "one token", "decode copied")), key=med.get, default=None)
    print(f"{name:22s} " + "  ".join(f"{m} {t:.1f}" for m, t in med.items())
          + f" | floor {floor:.1f}  tokens/floor {med['tokens'] / floor:.2f}"
          + f"  tokens/one {med['tokens'] / med['one token']:.3f}"
          + f"  copied/tokens {med['decode copied'] / med['tokens']:.2f}"
          + (f"  {best}/tokens {med[best] / med['tokens']:.2f}" if best else ""), flush=True)
    return dict(case=name, samples=n, q_len=lq, prefix=case["prefix"], own=case["own"], hq=case["hq"],
                hkv=case["hkv"], d=case["d"], bytes=nbytes, copied_bytes=copied, floor_us=floor, us=us, median=med,
                gbs={m: nbytes / t / 1e3 for m, t in med.items() if m != "one token"}, best_peer=best,
                speedup_vs_best_peer=med[best] / med["tokens"] if best else None,
                tokens_vs_one=med["tokens"] / med["one token"], copied_vs_tokens=med["decode copied"] / med["tokens"],
                tokens_vs_floor=med["tokens"] / floor, peers_skipped=skipped)


def main(argv=None):
    return bd.run_case_variants(__doc__, argv, CASES, measure, "bifurcated_tokens.json",
                                "bifurcated_decode of several query tokens a sample (causal) against the one-token "
                                "call, multi-token decode over copied caches and SDPA", cases_of=bb.suite)


if __name__ == "__main__":
    main()
