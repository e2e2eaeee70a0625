"""Decode with several query tokens a sequence (``q (B, Lq, Hq, D)``, ``causal=True``): speculative decoding's
verification step, against the same attention computed other ways, one process.

The ``Lq`` tokens of a GQA group share the rows of one product, so a call reads each sequence's K and V once: its
floor is the decode floor (the KV bytes over the read ceiling) however many tokens are verified, until the rows
outgrow the tile. For each case (decode suite shapes, bf16, Llama-3-8B's 32/8 heads and MHA 32/32, D=128) every
method is checked against the float64 reference, captured in a CUDA graph and timed in 3 interleaved rounds
(do_bench medians, L2 flushed):

* ``tokens``: ``leanattn.decode(q (B, Lq, Hq, D), ..., causal=True)``;
* ``one token``: ``leanattn.decode`` of the last token alone (a plain decode step: what verifying ``Lq`` costs
  over it);
* ``per token``: ``Lq`` one-token ``leanattn.decode`` calls over the cache cut at each token (the same result
  without the query-length support);
* peers: SDPA with PyTorch's bottom-right causal mask (``causal_lower_right``, which dispatches to the FLASH or
  efficient kernel itself) with ``enable_gqa``, and cuDNN with the mask materialised; one call where the lengths
  are equal, one per sequence otherwise; ``flex_attention`` (compiled, ``dynamic=True``) with a length and
  bottom-right causal ``mask_mod``.

    PYTHONPATH=src python benchmarks/bench_decode_tokens.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402

# (suite case, query tokens a sequence)
CASES = (("gqa B=1 32k", 2), ("gqa B=1 32k", 4), ("gqa B=1 32k", 8), ("gqa B=1 32k", 16), ("gqa B=1 128k", 4),
         ("gqa B=4 32k", 4), ("gqa B=16 8k", 4), ("gqa B=64 4k", 4), ("mha B=1 64k", 4), ("ragged-tail B=16", 4),
         ("paged64 ragged-tail", 4))


def token_bytes(case, lq):
    """KV bytes of the real lengths, the queries and the outputs (bf16)."""
    return sum(case["lens"]) * case["hkv"] * case["d"] * 2 * 2 + 2 * lq * len(case["lens"]) * case["hq"] * case["d"] * 2


def peers(case, inp, q4):
    """SDPA and flex forms of the bottom-right causal attention of ``q4 (B, Lq, Hq, D)`` (label -> call)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    from torch.nn.attention.flex_attention import create_block_mask
    F = torch.nn.functional
    k, v, lens = inp["k"], inp["v"], case["lens"]
    lq = q4.shape[1]
    gqa = case["hq"] != case["hkv"]
    qt, kt, vt = q4.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    views = [(qt[b:b + 1], kt[b:b + 1, :, :n], vt[b:b + 1, :, :n]) for b, n in enumerate(lens)]
    if len(set(lens)) == 1:
        views = [(qt, kt[:, :, :lens[0]], vt[:, :, :lens[0]])]
    suffix = "" if len(views) == 1 else " per seq"
    biases = [causal_lower_right(lq, x[1].shape[2]) for x in views]
    masks = [torch.ones(lq, x[1].shape[2], dtype=torch.bool, device="cuda").tril(x[1].shape[2] - lq) for x in views]

    def lower_right():
        return torch.cat([F.scaled_dot_product_attention(a, b_, c, attn_mask=m, enable_gqa=gqa)
                          for (a, b_, c), m in zip(views, biases)]).transpose(1, 2)

    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.cat([F.scaled_dot_product_attention(a, b_, c, attn_mask=m, enable_gqa=gqa)
                              for (a, b_, c), m in zip(views, masks)]).transpose(1, 2)
    out = {"sdpa lower-right" + suffix: lower_right, "sdpa cudnn mask" + suffix: cudnn}
    sl = inp["seqlens"]

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < sl[b]) & (kv_idx <= sl[b] - lq + q_idx)
    block_mask = create_block_mask(mask_mod, len(lens), None, lq, k.shape[1], device="cuda")
    out["flex"] = lambda: bd.compiled_flex()(qt, kt, vt, block_mask=block_mask, enable_gqa=gqa).transpose(1, 2)
    return out


def measure(case, lq, ceiling):
    inp = bd.make_inputs(case)
    sl = inp["seqlens"]
    k, v, bt = inp.get("k_pages", inp["k"]), inp.get("v_pages", inp["v"]), inp.get("block_table")
    q4 = torch.randn(len(case["lens"]), lq, case["hq"], case["d"], dtype=torch.bfloat16, device="cuda")
    ref, _ = leanattn.reference.decode(q4, inp["k"], inp["v"], sl, causal=True)
    one_ref, _ = leanattn.reference.decode(q4[:, -1], inp["k"], inp["v"], sl)
    cut = [sl - (lq - 1 - s) for s in range(lq)]

    def per_token():
        return torch.stack([leanattn.decode(q4[:, s], k, v, cut[s], bt) for s in range(lq)], 1)
    fns = {"tokens": lambda: leanattn.decode(q4, k, v, sl, bt, causal=True),
           "one token": lambda: leanattn.decode(q4[:, -1], k, v, sl, bt),
           "per token": per_token}
    refs = {"tokens": ref, "one token": one_ref, "per token": ref}
    skipped = bd.add_peers(fns, refs, peers(case, inp, q4), ref)
    name = f"{case['name']} Lq={lq}"
    us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3)
    nbytes = token_bytes(case, lq)
    floor = nbytes / ceiling / 1e3
    ours = ("tokens", "one token", "per token")
    best = min((n for n in med if n not in ours), key=med.get)
    print(f"{name:26s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | floor {floor:.1f}  tokens/one {med['tokens'] / med['one token']:.3f}"
          + f"  per-token/tokens {med['per token'] / med['tokens']:.2f}  {best}/tokens {med[best] / med['tokens']:.2f}",
          flush=True)
    return dict(case=name, lens=case["lens"], q_len=lq, hq=case["hq"], hkv=case["hkv"], d=case["d"],
                page=case.get("page"), bytes=nbytes, floor_us=floor, us=us, median=med,
                gbs={n: nbytes / t / 1e3 for n, t in med.items() if n != "one token"}, best_peer=best,
                speedup_vs_best_peer=med[best] / med["tokens"], tokens_vs_one=med["tokens"] / med["one token"],
                per_token_vs_tokens=med["per token"] / med["tokens"], peers_skipped=skipped)


def main(argv=None):
    return bd.run_case_variants(__doc__, argv, CASES, measure, "decode_tokens.json",
                                "decode of several query tokens a sequence (causal) against one-token decode, "
                                "per-token calls and the peers")


if __name__ == "__main__":
    main()
