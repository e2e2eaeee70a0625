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

from .. import checks

__all__ = ["check_sinks", "apply_sinks"]


def check_sinks(sinks, heads: int, device: torch.device) -> None:
    """``sinks``: a floating ``(heads,)`` tensor on ``device``, or None."""
    if sinks is None:
        return
    checks.check_tensor("sinks", sinks, 1)
    if not sinks.dtype.is_floating_point or sinks.dtype.itemsize == 1:
        raise TypeError(f"sinks: expected a float32, float16 or bfloat16 tensor, got dtype {sinks.dtype}")
    if sinks.shape[0] != heads:
        raise ValueError(f"sinks: expected shape ({heads},) (one logit per query head), got {tuple(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks: expected device {device} (as q), got {sinks.device}")


def apply_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state ``(out, lse)`` of attention over some keys, with the sinks merged in.

    Parameters
    ----------
    out : torch.Tensor
        ``(..., Hq, D)``.
    lse : torch.Tensor
        ``(..., Hq)`` float32, natural log; ``-inf`` where no key was attended.
    sinks : torch.Tensor
        ``(Hq,)``: each head's sink logit, in the units of the scaled (and soft-capped) scores.

    Returns
    -------
    out : torch.Tensor
        ``out``'s shape and dtype, scaled in float32 and rounded once.
    lse : torch.Tensor
        float32: the sink included. A query that attended no key gets zeros and its head's sink.
    """
    s = sinks.float()
    total = torch.logaddexp(lse, s)
    # a sink of -inf is none: the weight of the keys stays 1 (and 0 where there are no keys either)
    w = torch.where(total == float("-inf"), 0.0, torch.exp(lse - total))
    return (out.float() * w[..., None]).to(out.dtype), total
