"""Small decode launches for compute-sanitizer (memcheck, racecheck): every kernel path once.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_decode.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
import leanattn  # noqa: E402

torch.manual_seed(0)
lens = [3000, 0, 1, 517, 1024]
B = len(lens)
sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
for hq, hkv, d in ((32, 8, 128), (32, 32, 64), (16, 8, 256), (64, 1, 64)):
    q = torch.randn(B, hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, max(lens), hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    for schedule in ("lean", "split"):
        leanattn.decode(q, k, v, sl, schedule=schedule, num_programs=37, num_splits=5)
        leanattn.decode(q, k, v, sl, schedule=schedule)
    page = 16
    npages = [-(-n // page) for n in lens]
    bt = torch.zeros(B, max(npages), dtype=torch.int32, device="cuda")
    ids = torch.randperm(sum(npages), device="cuda").int()
    off = 0
    for b, m in enumerate(npages):
        bt[b, :m] = ids[off:off + m]
        off += m
    kp = torch.randn(sum(npages), page, hkv, d, dtype=torch.bfloat16, device="cuda")
    vp = torch.randn_like(kp)
    for schedule in ("lean", "split"):
        leanattn.decode(q, kp, vp, sl, bt, schedule=schedule)
outs = torch.randn(4, 3, 8, 128, dtype=torch.bfloat16, device="cuda")
lses = torch.randn(4, 3, 8, device="cuda")
leanattn.merge_states(outs, lses)
torch.cuda.synchronize()
print("sanitize_decode: all launches done")
