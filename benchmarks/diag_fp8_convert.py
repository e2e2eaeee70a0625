"""Float8 caches on the GPU: Triton's conversion of every e4m3 and e5m2 byte against torch's, then decode over e4m3
and e5m2 caches of the same shapes and scales, through each load path, against the float64 reference.

H200, 2026-12-03 (Triton 3.6): every finite byte converts exactly (to bf16 and fp16), e4m3 decode within 1e-3 of the
reference everywhere, e5m2 decode off by 0.27-0.48 everywhere, even with e5m2 rebuilt from its bytes by integer
operations. The cause was the plan cache, not the kernels: the key lacked the cache's dtype, so the e5m2 calls ran
the plan (and the kernel compiled) for the e4m3 calls before them. Fixed (``ops/decode._decode_impl``'s key); this
script, run again, should show e5m2 as close as e4m3.

    PYTHONPATH=src python benchmarks/diag_fp8_convert.py
"""
import os

import torch
import triton
import triton.language as tl

import leanattn
from leanattn.testing import rel_err


@triton.jit
def _convert(X, Y, BF16: tl.constexpr):
    offs = tl.arange(0, 256)
    x = tl.load(X + offs)
    tl.store(Y + offs, x.to(tl.bfloat16) if BF16 else x.to(tl.float16))


def main():
    for fp8 in (torch.float8_e4m3fn, torch.float8_e5m2):
        x = torch.arange(256, dtype=torch.uint8, device="cuda").view(fp8)
        for dt in (torch.bfloat16, torch.float16):
            y = torch.empty(256, dtype=dt, device="cuda")
            _convert[(1,)](x, y, BF16=dt == torch.bfloat16)
            ref = x.to(torch.float32).to(dt)
            bad = ~((y == ref) | (torch.isnan(y) & torch.isnan(ref)))
            idx = bad.nonzero().flatten().tolist()
            print(f"{fp8} -> {dt}: {len(idx)} of 256 bytes differ", [(i, x[i].float().item(), y[i].item()) for i in idx[:6]])
    q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    sl = torch.tensor([5000, 0, 1, 333], dtype=torch.int32, device="cuda")
    for fp8 in (torch.float8_e4m3fn, torch.float8_e5m2):
        k = (torch.randn(4, 5000, 8, 128, device="cuda") * 4).to(fp8)
        v = (torch.randn(4, 5000, 8, 128, device="cuda") * 2).to(fp8)
        for load in ("0", "1", "2"):
            os.environ["LEANATTN_DECODE_LOAD"] = load
            for ks, vs in ((0.25, 0.5), (1.0, 1.0), (0.25, 1.0), (1.0, 0.5)):
                errs = []
                for schedule in ("lean", "split"):
                    out = leanattn.decode(q, k, v, sl, k_scale=ks, v_scale=vs, schedule=schedule)
                    ref, _ = leanattn.reference.decode(q, k, v, sl, k_scale=ks, v_scale=vs)
                    errs.append(f"{schedule} {rel_err(out, ref):.1e}")
                print(f"{fp8} load {load} k_scale {ks} v_scale {vs}: " + ", ".join(errs))
        os.environ.pop("LEANATTN_DECODE_LOAD")

if __name__ == "__main__":
    main()
