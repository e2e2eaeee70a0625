"""``leanattn.models.fused_ops`` on a GPU: bf16 at llama-3-8b sizes, and a bf16 model's forward with and without
them. Skips without CUDA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanattn.models import build_model
from leanattn.models.fused_ops import add_rms_norm, rope_qk, silu_mul
from leanattn.models.llama import apply_rope, rms_norm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
BF16 = dict(rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("rows", [1, 5, 300])
def test_kernels_bf16_llama_sizes(rows):
    dt, dev = torch.bfloat16, "cuda"
    H, hq, hkv, D, inter = 4096, 32, 8, 128, 14336
    h, d = torch.randn(rows, H, dtype=dt, device=dev), torch.randn(rows, H, dtype=dt, device=dev)
    w = torch.rand(H, dtype=dt, device=dev) + 0.5
    s, y = add_rms_norm(h, w, 1e-5, delta=d)
    assert torch.equal(s, h + d)
    ref = rms_norm(h + d, w, 1e-5)
    torch.testing.assert_close(y, ref, **BF16)
    assert (y == ref).float().mean() > 0.99  # apart from a float32 rounding of the statistics, the same bits
    qkv = torch.randn(1, rows, (hq + 2 * hkv) * D, dtype=dt, device=dev)
    pos = torch.randint(0, 131072, (1, rows), device=dev)
    inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = pos.float()[..., None] * inv
    ang = torch.cat((ang, ang), dim=-1)
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    q, k = rope_qk(qkv, cos, sin, hq, hkv)
    assert torch.equal(q, apply_rope(qkv[..., :hq * D].view(1, rows, hq, D), cos, sin))
    assert torch.equal(k, apply_rope(qkv[..., hq * D:(hq + hkv) * D].view(1, rows, hkv, D), cos, sin))
    gu = torch.randn(rows, 2 * inter, dtype=dt, device=dev) * 3
    gate, up = gu.chunk(2, dim=-1)
    out, ref = silu_mul(gu), F.silu(gate) * up
    torch.testing.assert_close(out, ref, **BF16)
    assert (out == ref).float().mean() > 0.99


def test_model_forward_bf16():
    model = build_model("llama-3.2-1b", "cuda", torch.bfloat16, seed=0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 64), device="cuda")
    ref = model(tokens).float()
    model.fused_ops = True
    got = model(tokens).float()
    cos = F.cosine_similarity(got.flatten(1), ref.flatten(1), dim=1)
    assert (cos > 0.999).all(), cos
