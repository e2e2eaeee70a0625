"""What a KV append (``decode(k=, v=)``) and rotary embedding (``rotary_cos=``) cost an eager decode step: the one
launch of ``kernels/kv_append.py`` against the PyTorch ops it replaced (the form ``torch.compile`` traces), and
against decode alone, same process.

Eager calls back to back, as a loop without CUDA graphs runs them: microseconds a call over 200 calls (CUDA events),
the median of 5 rounds, after a check of each form against the others. Shapes: llama-8B's attention (32/8 heads,
D=128) at batch 1 and 8, 4k keys a sequence, pages of 16; one new token a step.

    PYTHONPATH=src python benchmarks/probe_decode_append.py [--out DIR]
"""
from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.ops.kv_append import _index_writes, new_positions  # noqa: E402
from leanattn.ops.rotary import Rotary  # noqa: E402
from leanattn.testing import paged_kv  # noqa: E402


def per_call_us(fn, calls=200, rounds=5):
    for _ in range(10):
        fn()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(times)


def measure(B, n=4096, page=16):
    dt = torch.bfloat16
    k, v = (torch.randn(B, n + 64, 8, 128, device="cuda", dtype=dt) for _ in range(2))
    kp, vp, bt = paged_kv(k, v, page_size=page)
    q = torch.randn(B, 32, 128, device="cuda", dtype=dt)
    kn, vn = (torch.randn(B, 1, 8, 128, device="cuda", dtype=dt) for _ in range(2))
    lens = torch.full((B,), n, dtype=torch.int32, device="cuda")
    ang = torch.arange(n + 64, device="cuda")[:, None] * torch.rand(64, device="cuda")[None]
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    rot = Rotary(cos, sin, False, False)

    def torch_ops(rotary):
        qq, kk = rot.qk(q, kn, new_positions(lens, 1)) if rotary else (q, kn)
        _index_writes(kp, vp, kk, vn, lens, bt)
        return leanattn.decode(qq, kp, vp, lens + 1, bt, validate=False)

    forms = {
        "decode alone": lambda: leanattn.decode(q, kp, vp, lens + 1, bt, validate=False),
        "append, torch ops": lambda: torch_ops(False),
        "append, one launch": lambda: leanattn.decode(q, kp, vp, lens, bt, k=kn, v=vn, validate=False),
        "append+rotary, torch ops": lambda: torch_ops(True),
        "append+rotary, one launch": lambda: leanattn.decode(q, kp, vp, lens, bt, k=kn, v=vn, rotary_cos=cos,
                                                             rotary_sin=sin, validate=False),
    }
    outs = {name: fn().float() for name, fn in forms.items()}
    pairs = (("append, torch ops", "append, one launch"), ("append+rotary, torch ops", "append+rotary, one launch"))
    for a, b in pairs:
        err = (outs[a] - outs[b]).abs().max().item()
        assert err < 2e-2, (a, b, err)
    us = {name: per_call_us(fn) for name, fn in forms.items()}
    print(f"B={B} 4k paged16 " + "  ".join(f"{k_} {t:.1f}" for k_, t in us.items()), flush=True)
    return dict(B=B, keys=n, page=page, us=us)


def main(argv=None):
    args, _ = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    rows = [measure(B) for B in (1, 8)]
    common.write_probe(args.out, "decode_probe_append.json", cases=rows,
                       probe="eager decode with a KV append and rotary: one launch against PyTorch ops")


if __name__ == "__main__":
    main()
