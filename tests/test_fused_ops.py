"""``leanattn.models.fused_ops`` (interpreter, fp32/fp16) against the PyTorch code of ``llama.py`` they replace.

Each kernel rounds where the PyTorch code rounds, so the residual sums and the rotary embedding are equal, and the
norm and SwiGLU agree to a float32 rounding of their statistics. bf16 is GPU-only (the interpreter truncates bf16
casts): ``test_fused_ops_gpu.py``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanattn.models import build_model
from leanattn.models.fused_ops import add_rms_norm, rope_qk, silu_mul
from leanattn.models.llama import apply_rope, rms_norm

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=1e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("H", [64, 80, 96])
@pytest.mark.parametrize("lead", [(1,), (3, 5), (0,)])
def test_add_rms_norm(dtype, H, lead):
    h, d = (torch.randn(*lead, H, dtype=dtype, device=DEV) for _ in range(2))
    w = torch.randn(H, dtype=dtype, device=DEV)
    s, y = add_rms_norm(h, w, 1e-5, delta=d)
    assert s.shape == y.shape == h.shape and torch.equal(s, h + d)
    torch.testing.assert_close(y, rms_norm(h + d, w, 1e-5), **TOL[dtype])
    s, y = add_rms_norm(h, w, 1e-6)
    assert s is h or torch.equal(s, h)
    torch.testing.assert_close(y, rms_norm(h, w, 1e-6), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("D,hq,hkv", [(64, 4, 2), (32, 3, 1), (96, 2, 2), (16, 8, 8)])
def test_rope_qk(dtype, D, hq, hkv):
    B, L = 2, 3
    qkv = torch.randn(B, L, (hq + 2 * hkv) * D, dtype=dtype, device=DEV)
    pos = torch.randint(0, 100_000, (B, L), device=DEV)
    inv = 1.0 / (500_000 ** (torch.arange(0, D, 2, device=DEV).float() / D))
    ang = pos.float()[..., None] * inv
    ang = torch.cat((ang, ang), dim=-1)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    q, k = rope_qk(qkv, cos, sin, hq, hkv)
    assert torch.equal(q, apply_rope(qkv[..., :hq * D].view(B, L, hq, D), cos, sin))
    assert torch.equal(k, apply_rope(qkv[..., hq * D:(hq + hkv) * D].view(B, L, hkv, D), cos, sin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("inter", [64, 80, 5000])
def test_silu_mul(dtype, inter):
    gu = torch.randn(2, 3, 2 * inter, dtype=dtype, device=DEV) * 4
    gate, up = gu.chunk(2, dim=-1)
    out = silu_mul(gu)
    assert out.shape == (2, 3, inter)
    torch.testing.assert_close(out, F.silu(gate) * up, **TOL[dtype])


def test_views_of_other_strides():
    # a view without a unit last stride, or a strided weight, is read as its values (the kernels take unit strides)
    h, d = torch.randn(16, 6, device=DEV).T, torch.randn(16, 6, device=DEV).T  # (6, 16), last stride 6
    w = torch.randn(32, device=DEV)[::2]
    s, y = add_rms_norm(h, w, 1e-5, delta=d)
    assert torch.equal(s, h + d)
    torch.testing.assert_close(y, rms_norm(h + d, w, 1e-5), **TOL[torch.float32])
    gu = torch.randn(20, 3, device=DEV).T  # (3, 20)
    torch.testing.assert_close(silu_mul(gu), F.silu(gu[:, :10]) * gu[:, 10:], **TOL[torch.float32])
    B, L, hq, hkv, D = 1, 2, 2, 1, 8
    qkv = torch.randn((hq + 2 * hkv) * D, L, B, device=DEV).permute(2, 1, 0)
    cos, sin = torch.randn(B, L, D, device=DEV), torch.randn(B, L, D, device=DEV)
    cos, sin = torch.cat((cos[..., :4], cos[..., :4]), -1), torch.cat((sin[..., :4], sin[..., :4]), -1)
    q, k = rope_qk(qkv, cos, sin, hq, hkv)
    assert torch.equal(q, apply_rope(qkv[..., :hq * D].reshape(B, L, hq, D), cos, sin))
    assert torch.equal(k, apply_rope(qkv[..., hq * D:(hq + hkv) * D].reshape(B, L, hkv, D), cos, sin))


def test_bad_shapes():
    h = torch.randn(3, 4)
    cos = torch.randn(1, 3, 8)
    cases = [(lambda: add_rms_norm(h, torch.randn(2), 1e-6), r"weight: expected shape \(4,\)"),
             (lambda: add_rms_norm(h, torch.randn(4), 1e-6, delta=torch.randn(4, 3)),
              r"delta: expected shape \(3, 4\)"),
             (lambda: add_rms_norm(torch.randn(3, 0), torch.randn(0), 1e-6), "h: expected a last dimension >= 1"),
             (lambda: silu_mul(torch.randn(2, 5)), "gate_up: expected an even last dimension"),
             (lambda: rope_qk(torch.randn(1, 3, 32), cos, cos, 3, 1), r"qkv: expected shape \(1, 3, 40\)"),
             (lambda: rope_qk(torch.randn(1, 3, 31), cos, cos, 2, 1), r"qkv: expected shape \(1, 3, 32\)"),
             (lambda: rope_qk(torch.randn(1, 3, 28), cos[..., :7], cos[..., :7], 2, 1), "cos: expected an even"),
             (lambda: rope_qk(torch.randn(2, 3, 32), cos, cos, 2, 1), r"cos: expected shape \(2, 3, 8\)"),
             (lambda: rope_qk(torch.randn(1, 3, 32), cos, cos[..., :6], 2, 1), r"sin: expected shape \(1, 3, 8\)"),
             (lambda: rope_qk(torch.randn(3, 32), cos, cos, 2, 1), "qkv: expected a 3-D")]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("bias", [False, True])
def test_model_forward_fused(bias):
    # the whole layer loop: fused against the PyTorch ops, on a prefill-shaped forward (SDPA attention)
    model = build_model("tiny", DEV, torch.float32, seed=3).init_random(
        std=0.1, generator=torch.Generator(DEV).manual_seed(3))
    if bias:
        model.config.attention_bias = True
        for layer in model.layers:
            layer.bqkv = torch.nn.Parameter(torch.randn(layer.wqkv.shape[0], device=DEV) * 0.1, requires_grad=False)
    tokens = torch.randint(0, model.config.vocab_size, (2, 11), device=DEV)
    ref = model(tokens)
    model.fused_ops = True
    torch.testing.assert_close(model(tokens), ref, rtol=1e-4, atol=1e-4)


def test_model_without_layers():
    # no layer: the fused path is the final norm alone, as the PyTorch one (review: it indexed layer 0)
    model = build_model("tiny", DEV, torch.float32, seed=4).init_random(std=0.1)
    model.layers = torch.nn.ModuleList()
    tokens = torch.randint(0, model.config.vocab_size, (1, 5), device=DEV)
    ref = model(tokens)
    model.fused_ops = True
    torch.testing.assert_close(model(tokens), ref, rtol=1e-5, atol=1e-5)


def test_fused_ops_flag_error():
    from leanattn.models import LlamaConfig, LlamaModel
    from leanattn.models.shapes import shape_config
    with pytest.raises(TypeError, match="fused_ops: expected a bool, got str"):
        LlamaModel(LlamaConfig.from_dict(shape_config("tiny")), fused_ops="yes")
