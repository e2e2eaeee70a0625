"""Training-step benchmark: a GPT-2-small-shaped model with dense, QK-sparse and hash-sparse attention.

Model (as in the SCFA paper's nanoGPT setup, section 1.5 of notes/sparse_flash.md): 12 layers,
12 heads, head dim 64 (d_model 768), GELU MLP 4x, LayerNorm, learned positions, tied
embeddings, vocab 50304, bf16 autocast. Attention variants:

* ``dense``: ``scaled_dot_product_attention(is_causal=True)`` (PyTorch picks its backend);
* ``qk``: :func:`leanattn.qk_sparse_attention` with fresh Bernoulli keep masks per call, queries
  and keys dropped independently at ``--drop`` (the paper's D-LM);
* ``hash``: :func:`leanattn.hash_sparse_attention` with angular LSH buckets of the queries and
  keys (one fresh rotation per head per call, shared by queries and keys; the paper's H-LM).

One timed step = forward, cross-entropy loss, backward (no optimizer step), median of
``triton.testing.do_bench``. Reports ms/step, tokens/s and the speed-up over dense.

    PYTHONPATH=src python3 benchmarks/train_step.py [--seqlens 8192 16384] [--batch 2] [--drop 0.5] [--buckets 16]
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import leanattn
from leanattn.sparse import lsh_buckets


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    head_dim: int = 64
    vocab: int = 50304
    max_len: int = 16384
    attention: str = "dense"  # dense | qk | hash
    drop: float = 0.5  # qk: probability of dropping a query / a key
    n_buckets: int = 16  # hash


def attention(q, k, v, cfg: GPTConfig):
    """``q, k, v (B, N, H, D)`` -> ``(B, N, H, D)``, causal, with the configured sparsity."""
    B, N, H, _ = q.shape
    if cfg.attention == "dense":
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True).transpose(1, 2)
    if cfg.attention == "qk":
        q_keep = torch.rand(B, N, H, device=q.device) >= cfg.drop
        k_keep = torch.rand(B, N, H, device=q.device) >= cfg.drop
        return leanattn.qk_sparse_attention(q, k, v, q_keep, k_keep)
    if cfg.attention == "hash":
        # one rotation for queries and keys: hash them together
        with torch.no_grad():
            buckets = lsh_buckets(torch.cat([q, k], dim=1), cfg.n_buckets)
        return leanattn.hash_sparse_attention(q, k, v, buckets[:, :N], buckets[:, N:])
    raise ValueError(f"attention: expected 'dense', 'qk' or 'hash', got {cfg.attention!r}")


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_head * cfg.head_dim
        self.cfg = cfg
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.fc_out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, N, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, N, 3, self.cfg.n_head, self.cfg.head_dim).unbind(2)
        x = x + self.proj(attention(q, k, v, self.cfg).reshape(B, N, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_head * cfg.head_dim
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, d)
        self.pos = nn.Embedding(cfg.max_len, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets):
        N = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(N, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = F.linear(self.ln_f(x), self.tok.weight)  # tied embeddings
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--drop", type=float, default=0.5)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    import triton

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common

    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for N in args.seqlens:
        torch.manual_seed(0)
        idx = torch.randint(0, 50304, (args.batch, N + 1), device="cuda")
        x, y = idx[:, :-1], idx[:, 1:]
        dense_ms = None
        for variant in ("dense", "qk", "hash"):
            cfg = GPTConfig(max_len=max(args.seqlens), attention=variant, drop=args.drop, n_buckets=args.buckets)
            model = GPT(cfg).cuda()

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(x, y)
                loss.backward()
                return loss

            loss = step()
            assert torch.isfinite(loss), f"{variant}: loss {loss.item()}"
            ms = triton.testing.do_bench(step, warmup=10, rep=50, grad_to_none=list(model.parameters()),
                                         return_mode="median")
            dense_ms = ms if variant == "dense" else dense_ms
            label = {"dense": "dense", "qk": f"qk drop {args.drop}", "hash": f"hash {args.buckets} buckets"}[variant]
            rows.append(dict(N=N, B=args.batch, variant=label, ms=ms, tokens_per_s=args.batch * N / ms * 1e3,
                             speedup_vs_dense=dense_ms / ms, loss=loss.item()))
            print(rows[-1], flush=True)
            model = None
            torch.cuda.empty_cache()
    payload = dict(env=common.env_info(), suite="train_step", args=vars(args),
                   model="GPT-2 small shape: 12 layers, 12 heads, head dim 64, vocab 50304, bf16 autocast", rows=rows)
    md = "# Training step (fwd + loss + bwd), GPT-2-small shape\n\n" + common.markdown_table(
        ["N", "B", "attention", "ms/step", "tokens/s", "speed-up vs dense"],
        [[r["N"], r["B"], r["variant"], r["ms"], r["tokens_per_s"], r["speedup_vs_dense"]] for r in rows])
    stem = "train_step_" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    print(md)
    print("wrote", *common.write_results(args.out, stem, payload, md))


if __name__ == "__main__":
    main()
