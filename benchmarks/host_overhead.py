"""Host-side cost per call of decode and peers: wall time of N back-to-back calls on a tiny case.

The kernels are tiny, so the loop is bound by the host: the number is the Python + launch cost.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
import leanattn  # noqa: E402
from leanattn.ops.decode import _decode_impl  # noqa: E402


def per_call_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


q = torch.randn(1, 32, 128, dtype=torch.bfloat16, device="cuda")
k = torch.randn(1, 256, 8, 128, dtype=torch.bfloat16, device="cuda")
v = torch.randn_like(k)
sl = torch.tensor([256], dtype=torch.int32, device="cuda")
F = torch.nn.functional
rows = {
    "leanattn.decode lean": lambda: leanattn.decode(q, k, v, sl),
    "leanattn.decode split": lambda: leanattn.decode(q, k, v, sl, schedule="split"),
    "_decode_impl lean (no validation)": lambda: _decode_impl(q, k, v, sl, None, 0.088, "lean", 0, 0, 0),
    "custom op lean": lambda: torch.ops.leanattn.decode(q, k, v, sl, None, 0.088, "lean", 0, 0, 0),
    "sdpa (default backend)": lambda: F.scaled_dot_product_attention(q.unsqueeze(2), k.transpose(1, 2),
                                                                     v.transpose(1, 2), enable_gqa=True),
    "torch.empty x2": lambda: (torch.empty(1, 32, 128, device="cuda"), torch.empty(1, 32, device="cuda")),
}
for name, fn in rows.items():
    print(f"{name:40s} {per_call_us(fn):8.1f} us/call")
