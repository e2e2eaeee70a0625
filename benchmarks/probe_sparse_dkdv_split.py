"""Probe: the sparse backward's dK/dV split (``sparse/plan.dkdv_split``) under every split a case allows.

With few kv heads the dK/dV grid ``(key blocks * split, B * Hkv)`` cuts each kv head's query heads into ``split``
runs, one program each, whose partial gradients the last run of each key block sums. At first the runs were summed
after the launch and the rule took the smallest power of two giving ``_DKDV_WAVES`` programs an SM: at 2, on an H100
(2026-12-07, ``bench_sparse_gqa.py``), multi-query attention's backward was 12% slower than the kernel over K/V
repeated to every head (1.99 against 1.78 ms, 50% of tokens dropped, 8k); this probe's first run (10:5x) set it to 6.
Its second run (13:2x) timed the sum in the launch beside the sum after it: the sum in the launch won at the best
split of every case, so it is the only one now, under the rule that run gave. Each case is timed backward only
(``out.backward``, which looks its plan up again under the variable) with ``LEANATTN_SPARSE_DKDV_SPLIT`` at every
power of two dividing the group and unset (the rule's choice, named), and over K/V repeated (split 1, one kv head a
query head), in 3 interleaved rounds of ``triton.testing.do_bench`` (median, L2 flushed); each split's gradients are
checked against split 1's first.

    PYTHONPATH=src python3 benchmarks/probe_sparse_dkdv_split.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sparse as bs  # noqa: E402
import common  # noqa: E402

from leanattn.sparse import plan as sparse_plan  # noqa: E402

D = 128
DEVICE, DTYPE = "cuda", torch.bfloat16  # (a CPU smoke run sets these, fp16, and tiny CASES)
ENV = "LEANATTN_SPARSE_DKDV_SPLIT"
# (name, B, H, Hkv, N, mode, parameter)
CASES = [("mqa B=1 qk 0.5 8k", 1, 32, 1, 8192, "qk", 0.5), ("mqa B=1 hash 16 8k", 1, 32, 1, 8192, "hash", 16),
         ("mqa B=1 qk 0.5 16k", 1, 32, 1, 16384, "qk", 0.5), ("gqa 32/8 B=1 qk 0.5 8k", 1, 32, 8, 8192, "qk", 0.5),
         ("gqa 32/8 B=2 qk 0.5 8k", 2, 32, 8, 8192, "qk", 0.5),
         ("gqa 64/8 B=1 hash 16 16k", 1, 64, 8, 16384, "hash", 16),
         ("gqa 32/4 B=1 qk 0.5 4k", 1, 32, 4, 4096, "qk", 0.5)]


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    T = bs.timer(DEVICE)
    rows = []
    for (name, B, H, HK, N, mode, param), (q, k, v, a, b, dout) in bs.gqa_cases(CASES, want, D, DTYPE, DEVICE):
        G = H // HK
        kr, vr = (x.detach().repeat_interleave(G, dim=2).requires_grad_() for x in (k, v))
        splits = [s for s in (1 << i for i in range(G.bit_length())) if G % s == 0]
        variants = {f"split {s}": str(s) for s in splits}
        variants["rule"] = None
        outs, first = {}, None
        for label, split in variants.items():
            common.set_env(ENV, split)
            out = bs.run_ours(mode, q, k, v, a, b)
            grads = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
            if first is None:
                first = grads
            err = bs.max_rel_err(grads, first)
            if err > 2e-2:
                raise AssertionError(f"{name} {label}: gradients off split 1's by {err:.2e} (relative)")
            outs[label] = out
        chosen = max(p.split for key, p in sparse_plan._PLANS.items() if key[-1] is None and key[1] == k.shape)
        common.set_env(ENV, None)
        outs["repeated"] = bs.run_ours(mode, q, kr, vr, a, b.repeat_interleave(G, dim=2))
        variants["repeated"] = None
        us, median = bs.backward_rounds(T, outs, dout, [q, k, v, kr, vr],
                                        lambda label: common.set_env(ENV, variants[label]))
        print(f"{name} (group {G}, rule: split {chosen}): " + "  ".join(f"{lb} {t:.0f}" for lb, t in median.items())
              + " us", flush=True)
        rows.append(dict(case=name, B=B, H=H, Hkv=HK, D=D, N=N, mode=mode, param=param, rule_split=chosen,
                         us=us, median=median))
    common.write_probe(args.out, "probe_sparse_dkdv_split.json", probe="sparse backward under each dK/dV split",
                       timing="do_bench median of the backward, L2 flushed, 3 interleaved rounds",
                       read_ceiling_gbs=ceiling, cases=rows)


if __name__ == "__main__":
    main()
