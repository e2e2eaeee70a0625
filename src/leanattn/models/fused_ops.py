"""Triton kernels for the decoder's elementwise steps, each one launch in place of the 5 to 10 PyTorch ops it is.

At batch 1 a decode step of an 8B model is ~1,300 kernels, ~900 of them small elementwise ones around the norms, the
rotary embedding and SwiGLU (``benchmarks/probe_verify_step.py``: 1.8 ms of a 7.3 ms step on an H200, besides the
gaps between launches). These kernels round where the PyTorch code in ``llama.py`` rounds (every product and sum of
model-dtype tensors back to the model dtype; the norm's statistics in float32): residual sums and rotary outputs are
equal to it (the rotary kernel is compiled without fused multiply-adds), the norm and SwiGLU agree to a rounding of
their float32 intermediates.

All take rows of a ``(N, ...)`` view with a unit last stride and return new tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime import device_guard

__all__ = ["add_rms_norm", "rope_qk", "silu_mul"]


def _rows(name: str, t: torch.Tensor, width: int) -> torch.Tensor:
    """``t (..., width)`` as rows ``(N, width)`` of unit last stride, the kernels' layout (a copy where the view has
    another)."""
    if width < 1:
        raise ValueError(f"{name}: expected a last dimension >= 1, got shape {tuple(t.shape)}")
    x = t.reshape(-1, width)
    return x if x.stride(-1) == 1 else x.contiguous()


def _same_shape(name: str, t: torch.Tensor, shape, of: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} ({of}), got {tuple(t.shape)}")


@triton.jit
def _add_rms_norm_kernel(h_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, H, eps, stride_h, stride_d, stride_s, stride_o,
                         HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    h = tl.load(h_ptr + row * stride_h + offs, mask=mask, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + row * stride_d + offs, mask=mask, other=0.0)
        h = (h.to(tl.float32) + d.to(tl.float32)).to(h.dtype)  # the residual add rounds to the model dtype
        tl.store(sum_ptr + row * stride_s + offs, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / H + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    y = (hf * rstd).to(h.dtype).to(tl.float32) * w.to(tl.float32)  # cast back before the weight, as Llama does
    tl.store(out_ptr + row * stride_o + offs, y.to(h.dtype), mask=mask)


def add_rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float,
                 delta: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``h + delta`` (of ``h`` when ``delta`` is None).

    Parameters
    ----------
    h, delta : torch.Tensor
        ``(..., H)`` in the model dtype.
    weight : torch.Tensor
        ``(H,)``, the model dtype.
    eps : float

    Returns
    -------
    (s, y) : tuple of torch.Tensor
        ``s = h + delta`` (``h`` itself when ``delta`` is None) and ``y = weight * rms_norm(s)``, ``h``'s shape.
    """
    H = h.shape[-1]
    _same_shape("weight", weight, (H,), "h's last dimension")
    if delta is not None:
        _same_shape("delta", delta, h.shape, "as h")
    h2 = _rows("h", h, H)
    d2 = h2 if delta is None else _rows("delta", delta, H)
    weight = weight.contiguous()
    s = h2 if delta is None else torch.empty(h2.shape, dtype=h.dtype, device=h.device)
    out = torch.empty(h2.shape, dtype=h.dtype, device=h.device)
    if h2.shape[0]:
        with device_guard(h.device):
            _add_rms_norm_kernel[(h2.shape[0],)](
                h2, d2, weight, s, out, H, eps, h2.stride(0), d2.stride(0), s.stride(0), out.stride(0),
                HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(H), num_warps=4 if H <= 4096 else 8)
    return s.view(h.shape), out.view(h.shape)


@triton.jit
def _rope_qk_kernel(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, stride_x, stride_c, stride_q, stride_k, HQ, HEADS,
                    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < HEADS) & (i < HALF)
    x_ptr = qkv_ptr + row * stride_x + heads * (2 * HALF) + i  # q heads, then k heads, as the fused projection
    x1 = tl.load(x_ptr, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0)
    dt = x1.dtype
    c = tl.load(cos_ptr + row * stride_c + i, mask=i < HALF, other=0.0).to(tl.float32)  # both halves share them
    s = tl.load(sin_ptr + row * stride_c + i, mask=i < HALF, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin, each product and the sum rounded to the model dtype as in PyTorch
    a1 = (x1.to(tl.float32) * c).to(dt).to(tl.float32)
    b1 = (-x2.to(tl.float32) * s).to(dt).to(tl.float32)
    a2 = (x2.to(tl.float32) * c).to(dt).to(tl.float32)
    b2 = (x1.to(tl.float32) * s).to(dt).to(tl.float32)
    y1 = (a1 + b1).to(dt)
    y2 = (a2 + b2).to(dt)
    is_q = heads < HQ
    q_out = q_ptr + row * stride_q + heads * (2 * HALF) + i
    k_out = k_ptr + row * stride_k + (heads - HQ) * (2 * HALF) + i
    tl.store(q_out, y1, mask=mask & is_q)
    tl.store(q_out + HALF, y2, mask=mask & is_q)
    tl.store(k_out, y1, mask=mask & (heads >= HQ))
    tl.store(k_out + HALF, y2, mask=mask & (heads >= HQ))


def rope_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_q_heads: int,
            num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of the query and key heads of a fused QKV projection, half-split pairs ``(i, i + D/2)``.

    Parameters
    ----------
    qkv : torch.Tensor
        ``(B, L, (Hq + 2 Hkv) D)``, queries then keys then values, unit last stride.
    cos, sin : torch.Tensor
        ``(B, L, D)`` in the model dtype, both halves equal (:meth:`LlamaModel.rope`).
    num_q_heads, num_kv_heads : int

    Returns
    -------
    (q, k) : tuple of torch.Tensor
        ``(B, L, Hq, D)`` and ``(B, L, Hkv, D)``, contiguous, rotated.
    """
    if qkv.dim() != 3:
        raise ValueError(f"qkv: expected a 3-D (B, L, (Hq + 2 Hkv) D) tensor, got shape {tuple(qkv.shape)}")
    B, L, width = qkv.shape
    D = cos.shape[-1]
    if D < 2 or D % 2:
        raise ValueError(f"cos: expected an even head dim D >= 2 as its last dimension, got shape {tuple(cos.shape)}")
    _same_shape("cos", cos, (B, L, D), "qkv's (B, L) and the head dim")
    _same_shape("sin", sin, (B, L, D), "as cos")
    _same_shape("qkv", qkv, (B, L, (num_q_heads + 2 * num_kv_heads) * D), "(Hq + 2 Hkv) heads of cos's head dim")
    x = _rows("qkv", qkv, width)
    c, s = cos.reshape(B * L, D).contiguous(), sin.reshape(B * L, D).contiguous()
    q = torch.empty(B, L, num_q_heads, D, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(B, L, num_kv_heads, D, dtype=qkv.dtype, device=qkv.device)
    heads = num_q_heads + num_kv_heads
    block_h = min(16, triton.next_power_of_2(heads))  # 16 heads a program: many heads (Llama-405B's 136) spill less
    if B * L:
        # no fused multiply-adds: PyTorch rounds each product before the sum (in float32 the casts are no-ops)
        with device_guard(qkv.device):
            _rope_qk_kernel[(B * L, triton.cdiv(heads, block_h))](
                x, c, s, q, k, x.stride(0), c.stride(0), num_q_heads * D, num_kv_heads * D, num_q_heads, heads,
                HALF=D // 2, BLOCK_HALF=triton.next_power_of_2(D // 2), BLOCK_H=block_h, num_warps=4,
                enable_fp_fusion=False)
    return q, k


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, inter, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    g = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    u = tl.load(x_ptr + row * stride_x + inter + offs, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # SiLU rounds to the model dtype before the product, as F.silu
    tl.store(out_ptr + row * stride_o + offs, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` of a fused projection ``(..., 2 I)`` (gate first); returns ``(..., I)``."""
    width = gate_up.shape[-1]
    if width % 2:
        raise ValueError(f"gate_up: expected an even last dimension (gate, then up), got shape {tuple(gate_up.shape)}")
    x = _rows("gate_up", gate_up, width)
    inter = width // 2
    out = torch.empty(x.shape[0], inter, dtype=gate_up.dtype, device=gate_up.device)
    block = min(4096, triton.next_power_of_2(inter))
    if x.shape[0]:
        with device_guard(gate_up.device):
            _silu_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](x, out, inter, x.stride(0), out.stride(0),
                                                                      BLOCK=block, num_warps=4)
    return out.view(*gate_up.shape[:-1], inter)
