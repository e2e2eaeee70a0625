"""Attention sinks (gpt-oss's learnable sinks; FlashInfer's and vLLM's ``sinks``, transformers' ``s_aux``): one logit
per query head that joins every query's softmax as a key whose value is zero.

A sink is a partial state of its own, ``(out, lse) = (0, sink)``, so it merges exactly into the state of the real
keys::

    lse' = log(exp(lse) + exp(sink))          out' = exp(lse - lse') * out

It is merged once, after every other merge (of pieces, levels or ranks): the merge is associative, and a sink merged
into each part would be counted once a part. Where an op's last launch merges states (``merge_states_kernel``,
``merge_list_kernel``), that launch folds the sinks in after them (``kernels/merge.fold_sinks``): the op takes no
launch for them, and its output is rounded to its dtype once. Decode's kernels start each row's first piece from its
sink instead (``kernels/attend.initial_state``). Elsewhere :func:`apply_sinks` merges them in a launch of their own.
"""
from __future__ import annotations

import torch

from .. import checks
from .states import check_state, merge_state_list

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


def apply_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state ``(out, lse)`` of attention over some keys, with the sinks merged in (one launch).

    Parameters
    ----------
    out : torch.Tensor
        ``(..., Hq, D)``.
    lse : torch.Tensor
        ``(..., Hq)`` float32, natural log; ``-inf`` where no key was attended.
    sinks : torch.Tensor or None
        ``(Hq,)``: each head's sink logit, in the units of the scaled (and soft-capped) scores; any float dtype.
        None: the state as it is.

    Returns
    -------
    out : torch.Tensor
        ``out``'s shape and dtype, merged in float32 and rounded once.
    lse : torch.Tensor
        float32: the sink included. A query that attended no key gets zeros and its head's sink (zeros and ``-inf``
        where the sink is ``-inf`` too).
    """
    check_state(out, lse)
    check_sinks(sinks, out.shape[-2], out.device)
    return with_sinks(out, lse, sinks)


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_sinks` without its checks of ``sinks``, for the ops that checked them on entry."""
    # one merge_list_kernel launch of one state, the sinks folded in (while compiling, a custom op: merges/states.py)
    return merge_state_list([out], [lse], sinks=sinks)
