"""Decode over a packed query of a different number of tokens a sequence (``q (total_q, Hq, D)``, ``cu_seqlens_q``,
``causal=True``): speculative decoding's verification step when each sequence has its own number of drafts, or mixed
decode and short prefill chunks, against the same attention computed other ways, one process.

The kernels stack ``max_seqlen_q`` token slots a sequence, as for a padded ``(B, Lq, Hq, D)`` query, and read each
sequence's K and V once, so the floor is the decode floor (the real KV bytes over the read ceiling). For each case
(decode suite shapes, bf16, Llama-3-8B's 32/8 heads, D=128; token counts a sequence drawn uniformly from ``[1,
max]``, seed 0) every method is checked against the float64 reference, captured in a CUDA graph and timed in 3
interleaved rounds (do_bench medians, L2 flushed):

* ``packed``: ``leanattn.decode(q (total_q, Hq, D), ..., causal=True, cu_seqlens_q=, max_seqlen_q=)``;
* ``padded``: ``leanattn.decode`` of the same tokens padded into ``(B, max, Hq, D)``, right-aligned (what a caller
  without the packed form runs; its copies in and out not timed);
* ``one token``: ``leanattn.decode`` of each sequence's last token (a plain decode step);
* peers: torch's ``varlen_attn`` (FlashAttention varlen) over the packed real keys (a copy of the cache made
  before timing), bottom-right causal; SDPA with PyTorch's bottom-right causal mask (``causal_lower_right``), one call
  per sequence; ``flex_attention`` (compiled, ``dynamic=True``) over the same packed keys with a document and
  bottom-right causal ``mask_mod``.

    PYTHONPATH=src python benchmarks/bench_decode_varlen.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402

import leanattn  # noqa: E402

# (suite case, most query tokens a sequence; negative: one prefill chunk of that many tokens among one-token sequences)
CASES = (("gqa B=16 8k", 4), ("gqa B=16 8k", 8), ("gqa B=64 4k", 4), ("gqa B=4 32k", 16), ("ragged-tail B=16", 8),
         ("ragged-uniform B=32", 4), ("paged64 ragged-tail", 8), ("gqa B=16 8k", -64), ("ragged-tail B=16", -64))


def counts_for(case, most):
    """Query tokens of each sequence, uniform in ``[1, most]`` (seed 0), none above the sequence's length; for
    ``most < 0`` one token each but ``-most`` for the first sequence (chunked prefill beside decodes)."""
    if most < 0:
        return [min(-most, case["lens"][0])] + [1] * (len(case["lens"]) - 1)
    g = torch.Generator().manual_seed(0)
    drawn = torch.randint(1, most + 1, (len(case["lens"]),), generator=g).tolist()
    return [min(c, n) for c, n in zip(drawn, case["lens"])]


def varlen_bytes(case, total):
    """KV bytes of the real lengths, the queries and the outputs (bf16)."""
    return sum(case["lens"]) * case["hkv"] * case["d"] * 2 * 2 + 2 * total * case["hq"] * case["d"] * 2


def peers(case, inp, qp, counts, cu):
    """The peers' forms of the packed bottom-right causal attention of ``qp (total_q, Hq, D)`` (label -> call)."""
    from torch.nn.attention.bias import causal_lower_right
    from torch.nn.attention.flex_attention import create_block_mask
    F = torch.nn.functional
    k, v, lens = inp["k"], inp["v"], case["lens"]
    gqa = case["hq"] != case["hkv"]
    kp = torch.cat([k[b, :n] for b, n in enumerate(lens)])
    vp = torch.cat([v[b, :n] for b, n in enumerate(lens)])
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device="cuda")
    out = {}
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        kw = {"enable_gqa": True} if gqa else {}

        def varlen():
            # (-1, 0): causal, bottom-right as flash-attn's; older releases take is_causal
            try:
                return varlen_attn(qp, kp, vp, cu, cu_k, max(counts), max(lens), window_size=(-1, 0), **kw)
            except TypeError:
                return varlen_attn(qp, kp, vp, cu, cu_k, max(counts), max(lens), is_causal=True, **kw)
        out["varlen_attn"] = varlen
    cuts = cu.tolist()
    views = [(qp[None, cuts[b]:cuts[b + 1]].transpose(1, 2), k[b:b + 1, :n].transpose(1, 2),
              v[b:b + 1, :n].transpose(1, 2)) for b, n in enumerate(lens)]
    biases = [causal_lower_right(c, n) for c, n in zip(counts, lens)]

    def lower_right():
        return torch.cat([F.scaled_dot_product_attention(a, b_, c, attn_mask=m, enable_gqa=gqa)[0].transpose(0, 1)
                          for (a, b_, c), m in zip(views, biases)])
    out["sdpa lower-right per seq"] = lower_right
    # one packed sequence for flex: query row i belongs to sequence doc_q[i] at position pos_q[i] of its keys
    doc_q = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(counts, device="cuda"))
    end_k = cu_k[1:].long()
    pos_q = end_k[doc_q] - (cu[1:].long()[doc_q] - torch.arange(qp.shape[0], device="cuda"))
    doc_k = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc_k[kv_idx] == doc_q[q_idx]) & (kv_idx <= pos_q[q_idx])
    block_mask = create_block_mask(mask_mod, 1, None, qp.shape[0], kp.shape[0], device="cuda")
    qt, kt, vt = qp[None].transpose(1, 2), kp[None].transpose(1, 2), vp[None].transpose(1, 2)
    out["flex"] = lambda: bd.compiled_flex()(qt, kt, vt, block_mask=block_mask, enable_gqa=gqa)[0].transpose(0, 1)
    return out


def measure(case, spec, ceiling):
    inp = bd.make_inputs(case)
    sl = inp["seqlens"]
    k, v, bt = inp.get("k_pages", inp["k"]), inp.get("v_pages", inp["v"]), inp.get("block_table")
    counts = counts_for(case, spec)
    most = max(counts)
    cu = torch.tensor([0] + list(itertools.accumulate(counts)), dtype=torch.int32, device="cuda")
    total = cu[-1].item()
    qp = torch.randn(total, case["hq"], case["d"], dtype=torch.bfloat16, device="cuda")
    pad = qp.new_zeros(len(counts), most, case["hq"], case["d"])
    for b, c in enumerate(counts):
        pad[b, most - c:] = qp[cu[b + 1] - c:cu[b + 1]]
    last = qp[cu[1:].long() - 1]
    ref, _ = leanattn.reference.decode(qp, inp["k"], inp["v"], sl, causal=True, cu_seqlens_q=cu)
    pad_ref, _ = leanattn.reference.decode(pad, inp["k"], inp["v"], sl, causal=True)
    one_ref, _ = leanattn.reference.decode(last, inp["k"], inp["v"], sl)
    fns = {"packed": lambda: leanattn.decode(qp, k, v, sl, bt, causal=True, cu_seqlens_q=cu, max_seqlen_q=most),
           "padded": lambda: leanattn.decode(pad, k, v, sl, bt, causal=True),
           "one token": lambda: leanattn.decode(last, k, v, sl, bt)}
    refs = {"packed": ref, "padded": pad_ref, "one token": one_ref}
    skipped = bd.add_peers(fns, refs, peers(case, inp, qp, counts, cu), ref)
    name = f"{case['name']} " + (f"chunk {most} + 1s" if spec < 0 else f"Lq<={most}")
    us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3)
    nbytes = varlen_bytes(case, total)
    floor = nbytes / ceiling / 1e3
    ours = ("packed", "padded", "one token")
    best = min((n for n in med if n not in ours), key=med.get, default=None)
    print(f"{name:30s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | floor {floor:.1f}  packed/padded {med['packed'] / med['padded']:.3f}"
          + f"  packed/one {med['packed'] / med['one token']:.3f}"
          + (f"  {best}/packed {med[best] / med['packed']:.2f}" if best else ""), flush=True)
    return dict(case=name, lens=case["lens"], q_counts=counts, max_seqlen_q=most, hq=case["hq"], hkv=case["hkv"],
                d=case["d"], page=case.get("page"), bytes=nbytes, floor_us=floor, us=us, median=med,
                gbs={n: nbytes / t / 1e3 for n, t in med.items() if n not in ("one token", "padded")}, best_peer=best,
                speedup_vs_best_peer=med[best] / med["packed"] if best else None,
                packed_vs_padded=med["packed"] / med["padded"], packed_vs_one=med["packed"] / med["one token"],
                peers_skipped=skipped)


def main(argv=None):
    return bd.run_case_variants(__doc__, argv, CASES, measure, "decode_varlen.json",
                                "decode over a packed query of a different number of tokens a sequence (causal) "
                                "against the padded query, one-token decode and the peers")


if __name__ == "__main__":
    main()
