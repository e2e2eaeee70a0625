"""Probe: what ALiBi costs a decode step, and the peers that can apply it (BLOOM-7b1 / MPT-7b attention: 32/32 heads,
D=128, bf16; GQA 32/8 for comparison).

``alibi_slopes=`` adds ``-slope * |i - j|`` to each tile's scores in registers (``kernels/attend.softmax_step``): no
extra launch, no bytes, a few more instructions a score. For each case: ``leanattn.decode`` without and with ALiBi,
``flex_attention`` (compiled, ``dynamic=True``) with an ALiBi ``score_mod``, and SDPA with the bias as a float
``attn_mask`` (``(B, Hq, 1, N)``, built outside the timing; what a PyTorch user writes); each checked against the
float64 reference (first and last sequence), captured in a CUDA graph and timed in 3 interleaved rounds (do_bench
medians, L2 flushed). The IO floor is the KV bytes over the read ceiling.

    PYTHONPATH=src python benchmarks/probe_decode_alibi.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402
import leanattn  # noqa: E402
from leanattn.testing import alibi_slopes  # noqa: E402

D = 128
# (name, batch, context, query heads, kv heads)
CASES = (("MHA B=1 4k", 1, 4096, 32, 32), ("MHA B=1 32k", 1, 32768, 32, 32), ("MHA B=1 128k", 1, 131072, 32, 32),
         ("MHA B=16 8k", 16, 8192, 32, 32), ("MHA B=64 2k", 64, 2048, 32, 32), ("GQA B=8 32k", 8, 32768, 32, 8))


def flex_alibi(q, k, v, slopes, n):
    fa = bd.compiled_flex()
    gqa = q.shape[1] != k.shape[2]

    def score_mod(score, b, h, q_idx, kv_idx):
        # the query sits at position n - 1
        return score - slopes[h] * (n - 1 - kv_idx)
    q4, kt, vt = q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)
    return lambda: fa(q4, kt, vt, score_mod=score_mod, enable_gqa=gqa).squeeze(2)


def sdpa_bias(q, k, v, slopes, n):
    keys = torch.arange(n, device="cuda")
    bias = (-slopes[None, :, None, None] * (n - 1 - keys)).to(q.dtype).expand(q.shape[0], -1, 1, -1).contiguous()
    gqa = q.shape[1] != k.shape[2]
    q4, kt, vt = q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)
    return lambda: F.scaled_dot_product_attention(q4, kt, vt, attn_mask=bias, enable_gqa=gqa).squeeze(2)


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    rows = []
    for name, B, n, hq, hkv in CASES:
        if want and name not in want:
            continue
        q = torch.randn(B, hq, D, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(B, n, hkv, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        lens = torch.full((B,), n, dtype=torch.int32, device="cuda")
        # slopes 64x under BLOOM's keep thousands of keys in each head's softmax
        slopes = alibi_slopes(hq).cuda() / 64
        idx = [0, B - 1]
        plain = leanattn.reference.decode(q[idx], k[idx], v[idx], lens[idx])[0]
        biased = leanattn.reference.decode(q[idx], k[idx], v[idx], lens[idx], alibi_slopes=slopes)[0]
        refs = {"no alibi": plain, "alibi": biased, "flex alibi": biased, "sdpa bias": biased}
        fns = {"no alibi": lambda: leanattn.decode(q, k, v, lens),
               "alibi": lambda: leanattn.decode(q, k, v, lens, alibi_slopes=slopes),
               "flex alibi": flex_alibi(q, k, v, slopes, n), "sdpa bias": sdpa_bias(q, k, v, slopes, n)}
        fns = bd.drop_failing(name, fns)
        us, med = bd.interleaved_graph_times(name, fns, refs, rounds=3, pick=idx)
        nbytes = 2 * B * n * hkv * D * 2
        floor = nbytes / ceiling / 1e3
        print(f"{name:14s} no alibi {med['no alibi']:.1f}  alibi {med['alibi']:.1f} us "
              f"({med['alibi'] / med['no alibi']:.3f}x)  floor {floor:.1f}"
              + bd.peer_summary(med, ("flex alibi", "sdpa bias"), "alibi"), flush=True)
        rows.append(dict(case=name, batch=B, context=n, hq=hq, hkv=hkv, d=D, bytes=nbytes, floor_us=floor, us=us,
                         median=med, ratio=med["alibi"] / med["no alibi"],
                         gbs=nbytes / med["alibi"] / 1e3))
    common.write_probe(args.out, "probe_decode_alibi.json", probe="decode with and without ALiBi, and peers with it "
                       "(BLOOM/MPT attention)", timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
