"""``merge_states``: combine partial attention states computed over disjoint key sets."""
from __future__ import annotations

import torch
from .. import checks
from ..kernels.merge import merge_launch, merge_states_kernel

__all__ = ["merge_states"]


def _merge_states_impl(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    S, B, H, D = outs.shape
    out = torch.empty((B, H, D), dtype=outs.dtype, device=outs.device)
    lse = torch.empty((B, H), dtype=torch.float32, device=outs.device)
    M = B * H
    if M == 0:
        return out, lse
    if S == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    o = outs.reshape(S, M, D)
    ls = lses.reshape(S, M)
    if o.stride(-1) != 1:
        o = o.contiguous()
    grid, meta = merge_launch(S, M, D)
    merge_states_kernel[grid](o, ls, out, lse, S, M, o.stride(0), o.stride(1), ls.stride(0), ls.stride(1), **meta)
    return out, lse


@torch.library.custom_op("leanattn::merge_states", mutates_args=())
def _merge_states_op(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _merge_states_impl(outs, lses)


@_merge_states_op.register_fake
def _(outs, lses):
    S, B, H, D = outs.shape
    return outs.new_empty((B, H, D)), lses.new_empty((B, H), dtype=torch.float32)


def merge_states(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``S`` partial attention states into one, exactly.

    State ``s`` is the softmax attention output ``outs[s]`` over a key set ``K_s`` and the
    natural-log sum ``lses[s]`` of its exponentiated scores. For disjoint ``K_s`` the result equals
    attention over their union::

        lse = log(sum_s exp(lses[s]))
        out = sum_s exp(lses[s] - lse) * outs[s]

    The merge is associative and commutative; ``(0, -inf)`` (an empty key set) is its identity,
    whatever ``outs`` holds there. A row whose states are all empty yields zeros and ``-inf``,
    never NaN.

    Parameters
    ----------
    outs : torch.Tensor
        ``(S, B, H, D)``, float16, bfloat16 or float32.
    lses : torch.Tensor
        ``(S, B, H)``, float32, natural log.

    Returns
    -------
    out : torch.Tensor
        ``(B, H, D)`` in ``outs.dtype`` (accumulated in float32).
    lse : torch.Tensor
        ``(B, H)`` float32, natural log.

    Examples
    --------
    >>> o1, l1 = leanattn.decode(q, k[:, :n], v[:, :n], return_lse=True)
    >>> o2, l2 = leanattn.decode(q, k[:, n:], v[:, n:], return_lse=True)
    >>> out, lse = leanattn.merge_states(torch.stack([o1, o2]), torch.stack([l1, l2]))
    """
    checks.check_tensor("outs", outs, 4)
    checks.check_tensor("lses", lses, 3)
    checks.check_dtype("outs", outs)
    checks.check_dtype("lses", lses, (torch.float32,))
    if tuple(lses.shape) != tuple(outs.shape[:3]):
        raise ValueError(f"lses: expected shape {tuple(outs.shape[:3])} (outs.shape[:3]), got {tuple(lses.shape)}")
    if lses.device != outs.device:
        raise ValueError(f"lses: expected device {outs.device} (as outs), got {lses.device}")
    # eager calls skip the dispatcher, as decode does; torch.compile sees the opaque custom op
    op = _merge_states_op if torch.compiler.is_compiling() else _merge_states_impl
    return op(outs, lses)
