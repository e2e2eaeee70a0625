"""Document masking of packed sequences (flash-attn's varlen training) through ``leanattn.hash_sparse_attention`` with
each token's document id as its bucket, forward + backward, against the peers in the image, one process.

A row of ``N`` tokens packs documents whose lengths are drawn log-normally (median 1k tokens, seed 0), bf16, D=128,
Llama-3-8B's heads (32 over 8 kv heads). Timed with ``triton.testing.do_bench`` (median, L2 flushed), forward +
backward:

* ``leanattn``: the public function, the layout (one stable sort of the ids, the block ranges) included;
* ``flex``: ``flex_attention`` (compiled once, ``dynamic=True``) with a document-causal ``BlockMask`` built once
  outside the timing by ``create_block_mask``, GQA through ``enable_gqa``; ``flex_e2e`` builds the mask in the
  timing too, as a training step whose packing changes does;
* ``sdpa_loop``: SDPA (FLASH) causal, one call per document, what a PyTorch user without varlen does;
* ``sdpa_dense``: SDPA (FLASH) causal over the whole row, which attends across documents: the time of the work
  document masking saves, not a peer.

``leanattn`` is checked against ``sdpa_loop`` (output and the three gradients). TFLOP/s count useful work only:
``4 * D`` flops per visible (query, key) pair forward, 2.5x that backward.

    PYTHONPATH=src python3 benchmarks/bench_sparse_docs.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import bench_sparse as bs  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.testing import rel_err  # noqa: E402

H, HK, D = 32, 8, 128
CASES = (("8k", 8192), ("16k", 16384), ("32k", 32768))


def doc_lengths(n: int, seed: int = 0) -> list:
    """Document lengths filling ``n`` tokens: log-normal, median 1024, at least 16, the last one cut to fit."""
    rng = np.random.default_rng(seed)
    lens, left = [], n
    while left > 0:
        x = int(min(max(16, rng.lognormal(np.log(1024), 1.0)), left))
        lens.append(x)
        left -= x
    return lens


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask
    T = bs.timer("cuda")
    flex = bd.compiled_flex()
    rows = []
    for name, N in CASES:
        if want and name not in want:
            continue
        lens = doc_lengths(N)
        doc = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
        q = torch.randn(1, N, H, D, dtype=torch.bfloat16, device="cuda", requires_grad=True)
        k, v = (torch.randn(1, N, HK, D, dtype=torch.bfloat16, device="cuda", requires_grad=True) for _ in range(2))
        q_ids, k_ids = doc.view(1, N, 1).expand(1, N, H), doc.view(1, N, 1).expand(1, N, HK)

        def mask_mod(b, h, qi, ki):
            return (doc[qi] == doc[ki]) & (qi >= ki)

        block_mask = create_block_mask(mask_mod, 1, None, N, N, device="cuda")
        bounds = np.cumsum([0] + lens).tolist()

        def sdpa_loop():
            outs = []
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                for s, e in zip(bounds[:-1], bounds[1:]):
                    outs.append(F.scaled_dot_product_attention(
                        q[:, s:e].transpose(1, 2), k[:, s:e].transpose(1, 2), v[:, s:e].transpose(1, 2),
                        is_causal=True, enable_gqa=True).transpose(1, 2))
            return torch.cat(outs, 1)

        def sdpa_dense():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      is_causal=True, enable_gqa=True).transpose(1, 2)

        fns = {"leanattn": lambda: leanattn.hash_sparse_attention(q, k, v, q_ids, k_ids),
               "flex": lambda: flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask,
                                    enable_gqa=True).transpose(1, 2),
               "flex_e2e": lambda: flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        block_mask=create_block_mask(mask_mod, 1, None, N, N, device="cuda"),
                                        enable_gqa=True).transpose(1, 2),
               "sdpa_loop": sdpa_loop, "sdpa_dense": sdpa_dense}
        fns = bd.drop_failing(name, fns)
        # correctness: leanattn and flex against the per-document loop, output and gradients
        dout = torch.randn(1, N, H, D, dtype=torch.bfloat16, device="cuda")
        ref = sdpa_loop()
        ref_g = torch.autograd.grad(ref, (q, k, v), dout)
        errs = {}
        for label in ("leanattn", "flex"):
            if label in fns:
                out = fns[label]()
                g = torch.autograd.grad(out, (q, k, v), dout)
                errs[label] = dict(out=rel_err(out, ref),
                                   **{f"d{n}": rel_err(x, y) for n, x, y in zip("qkv", g, ref_g)})
                if max(errs[label].values()) > 2e-2:
                    raise AssertionError(f"{name} {label}: relative errors against the per-document loop {errs[label]}")
        times = {}
        for label, f in fns.items():
            times[label] = bs.time_fwd_bwd(T, f, [q, k, v])
        pairs = sum(n * (n + 1) // 2 for n in lens) * H
        flops = pairs * 4 * D * 3.5
        both = {label: t["both_ms"] for label, t in times.items()}
        print(f"{name} ({len(lens)} documents): " + "  ".join(f"{lb} {ms:.2f} ms" for lb, ms in both.items())
              + f"  | leanattn {flops / both['leanattn'] / 1e9:.0f} TFLOP/s", flush=True)
        rows.append(dict(case=name, N=N, H=H, Hkv=HK, D=D, documents=lens, visible_pairs=pairs, errors=errs,
                         times=times, median=both, tflops={lb: flops / ms / 1e9 for lb, ms in both.items()}))
    path = common.write_probe(args.out, "bench_sparse_docs.json",
                              probe="document masking of packed sequences: hash_sparse_attention with document ids "
                              "against flex and SDPA", timing="do_bench median, L2 flushed, forward + backward",
                              read_ceiling_gbs=ceiling, cases=rows)
    common.plot_probe(path, "leanattn", path[:-5] + ".png", "document masking, forward + backward (time / leanattn)")


if __name__ == "__main__":
    main()
