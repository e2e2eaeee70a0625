"""A compact Llama-family decoder (Llama 2/3, Mistral, with its sliding window, Qwen2-style biases,
Phi-3 once split): RMSNorm, rotary embeddings (with llama3 / linear scaling), GQA, SwiGLU.

The model owns only weights and the per-layer arithmetic. Where keys and values go and how a layer
attends is decided by an ``attend`` callback passed to :meth:`LlamaModel.hidden`, so one layer loop
serves the cache-free SDPA forward (the reference), chunked prefill into a paged cache, and the
decode step (see ``leanattn.generate``).

Shapes use NHD, as the caches do: activations ``(B, L, H, D)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..runtime import interpreting
from .fused_ops import add_rms_norm, rope_qk, silu_mul

__all__ = ["LlamaConfig", "LlamaModel", "rope_inv_freq", "sdpa_causal"]


@dataclass
class LlamaConfig:
    """The fields of a Llama-family ``config.json`` that the decoder uses."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[object] = None
    # keys a query attends, itself included, in every layer (Mistral v0.1, Phi-3; transformers' meaning); None: all
    sliding_window: Optional[int] = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.sliding_window is not None and (isinstance(self.sliding_window, bool)
                                                or not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"sliding_window: expected None or an int >= 1, got {self.sliding_window!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads: expected a divisor of num_attention_heads "
                             f"({self.num_attention_heads}), got {self.num_key_value_heads}")

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """From a ``config.json`` dictionary (transformers 4.x ``rope_scaling`` + ``rope_theta`` or
        5.x ``rope_parameters``); unknown keys are kept in ``extra``."""
        d = dict(d)
        rope = d.pop("rope_parameters", None)
        if rope:
            rope = dict(rope)
            d.setdefault("rope_theta", rope.pop("rope_theta", 10000.0))
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                d["rope_scaling"] = rope
        if d.get("rope_scaling") and d["rope_scaling"].get("rope_type", d["rope_scaling"].get("type")) == "default":
            d["rope_scaling"] = None
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names and v is not None}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Rotary inverse frequencies ``(head_dim // 2,)`` float32, with the config's scaling applied.

    Supports no scaling, ``linear`` (positions divided by ``factor``) and ``llama3`` (Llama 3.1's
    wavelength-banded scaling: long wavelengths divided by ``factor``, short ones kept, a linear
    blend in between). Other types raise ``ValueError``.
    """
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = config.rope_scaling
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / float(rs["factor"])
    if kind == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_len = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        # band position: 0 at the long-wavelength edge (scaled fully), 1 at the short edge (kept)
        blend = (old_len / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old_len / lo, inv / factor, inv)
        mid = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        return torch.where(mid, (1 - blend) * scaled / factor + blend * scaled, scaled)
    raise ValueError(f"rope_scaling: expected rope_type None, 'default', 'linear' or 'llama3', got {kind!r}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # normalised in float32, then cast back before the weight (as the reference Llama does)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x (B, L, H, D)`` rotated by ``cos, sin (B, L, D)`` (half-split pairs ``(i, i + D/2)``)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                window: Optional[int] = None) -> torch.Tensor:
    """Causal attention of ``q (B, Lq, Hq, D)`` over ``k, v (B, Lk, Hkv, D)``, ``Lk >= Lq``, the
    mask aligned bottom-right (query ``i`` sees keys ``<= Lk - Lq + i``), and with a sliding ``window`` only the
    last ``window`` of those (itself included). Returns ``(B, Lq, Hq, D)``.

    ``Lq == Lk`` without a window takes SDPA's ``is_causal`` (flash kernel, GQA without expanding). Otherwise
    SDPA's own causal flag would align top-left, so a lower-right mask is used; its fused kernels do not take GQA,
    so kv heads are expanded first.
    """
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    Lq, Lk = q.shape[1], k.shape[1]
    group = q.shape[2] // k.shape[2]
    if window is not None and window < Lk:
        if group > 1:
            kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
        pos = torch.arange(Lk - Lq, Lk, device=q.device)[:, None]
        keys = torch.arange(Lk, device=q.device)[None, :]
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=(keys <= pos) & (keys > pos - window), scale=scale)
    elif Lq == Lk:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=group > 1)
    else:
        from torch.nn.attention.bias import causal_lower_right
        if group > 1:
            kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=causal_lower_right(Lq, Lk), scale=scale)
    return out.transpose(1, 2)


class LlamaLayer(nn.Module):
    """One decoder block. Q/K/V and gate/up projections are fused: one matmul each."""

    def __init__(self, c: LlamaConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        hq, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.splits = (hq * d, hkv * d, hkv * d)
        self.attn_norm = nn.Parameter(torch.ones(c.hidden_size, **kw), requires_grad=False)
        self.wqkv = nn.Parameter(torch.empty(sum(self.splits), c.hidden_size, **kw), requires_grad=False)
        self.bqkv = nn.Parameter(torch.zeros(sum(self.splits), **kw), requires_grad=False) if c.attention_bias \
            else None
        self.wo = nn.Parameter(torch.empty(c.hidden_size, hq * d, **kw), requires_grad=False)
        self.mlp_norm = nn.Parameter(torch.ones(c.hidden_size, **kw), requires_grad=False)
        self.w_gate_up = nn.Parameter(torch.empty(2 * c.intermediate_size, c.hidden_size, **kw), requires_grad=False)
        self.w_down = nn.Parameter(torch.empty(c.hidden_size, c.intermediate_size, **kw), requires_grad=False)


class LlamaModel(nn.Module):
    """Llama-family causal LM: weights plus the layer loop; attention is supplied by the caller.

    Parameters
    ----------
    config : LlamaConfig
    device, dtype : optional
        Where and in what dtype the weights live (uninitialised: load or call :meth:`init_random`).
    fused_ops : bool
        Run the norms (with the residual adds), the rotary embedding and SwiGLU as one Triton kernel each
        (:mod:`leanattn.models.fused_ops`) on CUDA tensors and under the Triton interpreter. Off by default: not yet
        measured on a GPU. An attribute, so it can be switched on a built model.
    """

    def __init__(self, config: LlamaConfig, device=None, dtype=None, fused_ops: bool = False):
        super().__init__()
        self.fused_ops = checks.flag("fused_ops", fused_ops)
        c = self.config = config
        kw = dict(device=device, dtype=dtype)
        self.embed = nn.Parameter(torch.empty(c.vocab_size, c.hidden_size, **kw), requires_grad=False)
        self.layers = nn.ModuleList(LlamaLayer(c, device, dtype) for _ in range(c.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(c.hidden_size, **kw), requires_grad=False)
        self.lm_head = self.embed if c.tie_word_embeddings else \
            nn.Parameter(torch.empty(c.vocab_size, c.hidden_size, **kw), requires_grad=False)
        self.register_buffer("inv_freq", rope_inv_freq(c).to(device), persistent=False)
        self.scale = c.head_dim ** -0.5

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @torch.no_grad()
    def init_random(self, std: float = 0.02, generator: Optional[torch.Generator] = None) -> "LlamaModel":
        """Normal(0, std) matrices and unit norms, drawn on the weights' device (fast for 8B)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, std, generator=generator)
            elif name.endswith("norm"):
                p.fill_(1.0)
            else:
                p.zero_()  # biases
        return self

    def weight_bytes(self) -> int:
        """Bytes of all weights (the tied embedding counted once)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of ``positions (B, L)`` (int): ``(B, L, head_dim)`` in the model dtype.

        Computed from the positions on the device (no table, no host sync: graph capturable).
        """
        ang = positions.float()[..., None] * self.inv_freq
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos().to(self.dtype), ang.sin().to(self.dtype)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor,
               attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Final-norm hidden states ``(B, L, hidden)`` of ``tokens (B, L)`` at ``positions (B, L)``.

        ``attend(layer, q (B, L, Hq, D), k (B, L, Hkv, D), v (B, L, Hkv, D)) -> (B, L, Hq, D)`` stores
        the new keys and values wherever the caller keeps them and returns the attention output.
        """
        c = self.config
        B, L = tokens.shape
        h = F.embedding(tokens, self.embed)
        cos, sin = self.rope(positions)
        if self.fused_ops and (h.is_cuda or interpreting()):
            return self._hidden_fused(h, cos, sin, attend)
        nq, nkv = c.num_attention_heads, c.num_key_value_heads
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer.attn_norm, c.rms_norm_eps)
            qkv = F.linear(x, layer.wqkv, layer.bqkv)
            q, k, v = qkv.split(layer.splits, dim=-1)
            q = apply_rope(q.view(B, L, nq, c.head_dim), cos, sin)
            k = apply_rope(k.view(B, L, nkv, c.head_dim), cos, sin)
            o = attend(i, q, k, v.view(B, L, nkv, c.head_dim))
            h = h + F.linear(o.reshape(B, L, nq * c.head_dim), layer.wo)
            x = rms_norm(h, layer.mlp_norm, c.rms_norm_eps)
            gate, up = F.linear(x, layer.w_gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer.w_down)
        return rms_norm(h, self.norm, c.rms_norm_eps)

    def _hidden_fused(self, h, cos, sin, attend):
        """:meth:`hidden`'s layer loop with :mod:`fused_ops`: each norm takes the residual add before it, so a
        layer is its four matmuls, its attention, one rotary kernel, one SwiGLU kernel and two norm kernels."""
        c = self.config
        B, L = h.shape[:2]
        nq, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        eps = c.rms_norm_eps
        norms = [layer.attn_norm for layer in self.layers[1:]] + [self.norm]
        h, x = add_rms_norm(h, self.layers[0].attn_norm if len(self.layers) else self.norm, eps)
        for i, layer in enumerate(self.layers):
            qkv = F.linear(x, layer.wqkv, layer.bqkv)
            q, k = rope_qk(qkv, cos, sin, nq, nkv)
            o = attend(i, q, k, qkv[..., (nq + nkv) * d:].view(B, L, nkv, d))
            h, x = add_rms_norm(h, layer.mlp_norm, eps, delta=F.linear(o.reshape(B, L, nq * d), layer.wo))
            h, x = add_rms_norm(h, norms[i], eps, delta=F.linear(silu_mul(F.linear(x, layer.w_gate_up)), layer.w_down))
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., vocab)`` float32 logits of final hidden states."""
        return F.linear(hidden, self.lm_head).float()

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cache-free causal forward with SDPA: logits ``(B, L, vocab)`` float32 of ``tokens (B, L)``.

        The reference path of the tests (greedy decoding by re-running the whole sequence).
        """
        B, L = tokens.shape
        pos = torch.arange(L, device=tokens.device).expand(B, L)
        window = self.config.sliding_window
        return self.logits(self.hidden(tokens, pos, lambda i, q, k, v: sdpa_causal(q, k, v, self.scale, window)))
