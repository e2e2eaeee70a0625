"""Attention sinks (gpt-oss's learnable sinks; FlashInfer's and vLLM's ``sinks``, transformers' ``s_aux``): one logit
per query head that joins every query's softmax as a key whose value is zero.

A sink is a partial state of its own, ``(out, lse) = (0, sink)``, so it merges exactly into the state of the real
keys::

    lse' = log(exp(lse) + exp(sink))          out' = exp(lse - lse') * out

It is merged once, after every other merge (of pieces, levels or ranks): the merge is associative, and a sink merged
into each part would be counted once a part.
"""
from __future__ import annotations

import torch
import triton

from .. import checks
from ..kernels.sinks import sinks_kernel

__all__ = ["check_sinks", "apply_sinks", "with_sinks"]


def check_sinks(sinks, heads: int, device: torch.device) -> None:
    """``sinks``: a floating ``(heads,)`` tensor on ``device``, or None; no NaN, where its values can be read without
    a device sync (``checks.values_checkable``: a NaN sink gave each of its rows an LSE of -2e38)."""
    if sinks is None:
        return
    checks.check_tensor("sinks", sinks, 1)
    if not sinks.dtype.is_floating_point or sinks.dtype.itemsize == 1:
        raise TypeError(f"sinks: expected a float32, float16, bfloat16 or float64 tensor, got dtype {sinks.dtype}")
    if sinks.shape[0] != heads:
        raise ValueError(f"sinks: expected shape ({heads},) (one logit per query head), got {tuple(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks: expected device {device} (as q), got {sinks.device}")
    if checks.values_checkable(sinks) and bool(sinks.isnan().any()):
        raise ValueError("sinks: expected logits or -inf (no sink), got NaN")


def with_sinks(q, sinks: torch.Tensor, return_lse: bool, states):
    """An op's result with ``sinks`` merged in: ``sinks`` checked against ``q``'s heads, then ``states()`` (the op's
    ``(out, lse)`` without sinks) merged with them; ``out``, or ``(out, lse)`` with ``return_lse``."""
    checks.check_tensor("q", q)
    check_sinks(sinks, q.shape[-2], q.device)
    out, lse = apply_sinks(*states(), sinks)
    return (out, lse) if return_lse else out


def _apply_sinks_impl(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    D, H = out.shape[-1], sinks.shape[0]
    o = out.reshape(-1, D)
    if o.stride(-1) != 1:
        o = o.contiguous()
    ls = lse.reshape(-1).contiguous()
    new_out = torch.empty(out.shape, dtype=out.dtype, device=out.device)
    new_lse = torch.empty(lse.shape, dtype=torch.float32, device=out.device)
    M = ls.shape[0]
    if M:
        block_m = 16
        sinks_kernel[(triton.cdiv(M, block_m),)](o, ls, sinks.contiguous(), new_out, new_lse, M, H, o.stride(0), D,
                                                 HEAD_DIM=D, BLOCK_M=block_m, BLOCK_D=triton.next_power_of_2(D),
                                                 num_warps=4)
    return new_out, new_lse


@torch.library.custom_op("leanattn::apply_sinks", mutates_args=())
def _apply_sinks_op(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _apply_sinks_impl(out, lse, sinks)


@_apply_sinks_op.register_fake
def _(out, lse, sinks):
    return out.new_empty(out.shape), lse.new_empty(lse.shape, dtype=torch.float32)


def apply_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state ``(out, lse)`` of attention over some keys, with the sinks merged in (one launch).

    Parameters
    ----------
    out : torch.Tensor
        ``(..., Hq, D)``.
    lse : torch.Tensor
        ``(..., Hq)`` float32, natural log; ``-inf`` where no key was attended.
    sinks : torch.Tensor
        ``(Hq,)``: each head's sink logit, in the units of the scaled (and soft-capped) scores; any float dtype.

    Returns
    -------
    out : torch.Tensor
        ``out``'s shape and dtype, merged in float32 and rounded once.
    lse : torch.Tensor
        float32: the sink included. A query that attended no key gets zeros and its head's sink (zeros and ``-inf``
        where the sink is ``-inf`` too).
    """
    # eager calls skip the dispatcher, as merge_states does; torch.compile sees the opaque custom op
    op = _apply_sinks_op if torch.compiler.is_compiling() else _apply_sinks_impl
    return op(out, lse, sinks)
