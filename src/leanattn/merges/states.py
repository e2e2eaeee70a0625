"""``merge_states``: combine partial attention states computed over disjoint key sets."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton

from .. import checks
from ..kernels.merge import merge_launch, merge_list_kernel, merge_states_kernel

__all__ = ["merge_states", "merge_state", "merge_state_in_place", "merge_state_list"]


def _merge_states_impl(outs: torch.Tensor, lses: torch.Tensor,
                       sinks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    S, B, H, D = outs.shape
    out = torch.empty((B, H, D), dtype=outs.dtype, device=outs.device)
    lse = torch.empty((B, H), dtype=torch.float32, device=outs.device)
    M = B * H
    if M == 0:
        return out, lse
    if S == 0:  # (sinks come only with more than four states: merge_state_list)
        return out.zero_(), lse.fill_(float("-inf"))
    o = outs.reshape(S, M, D)
    ls = lses.reshape(S, M)
    if o.stride(-1) != 1:
        o = o.contiguous()
    grid, meta = merge_launch(S, M, D, sink_heads=0 if sinks is None else sinks.shape[0])
    merge_states_kernel[grid](o, ls, out, lse, lse if sinks is None else sinks.contiguous(), S, M, o.stride(0),
                              o.stride(1), ls.stride(0), ls.stride(1), **meta)
    return out, lse


@torch.library.custom_op("leanattn::merge_states", mutates_args=())
def _merge_states_op(outs: torch.Tensor, lses: torch.Tensor,
                     sinks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _merge_states_impl(outs, lses, sinks)


@_merge_states_op.register_fake
def _(outs, lses, sinks=None):
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
    never NaN. A row with a state of ``lse = +inf`` (which no finite scores give) yields zeros and
    ``+inf``, as :func:`leanattn.reference.merge_states` does.

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
    if outs.shape[3] == 0:
        raise ValueError(f"outs: expected a head dim >= 1, got shape {tuple(outs.shape)}")
    if tuple(lses.shape) != tuple(outs.shape[:3]):
        raise ValueError(f"lses: expected shape {tuple(outs.shape[:3])} (outs.shape[:3]), got {tuple(lses.shape)}")
    if lses.device != outs.device:
        raise ValueError(f"lses: expected device {outs.device} (as outs), got {lses.device}")
    # eager calls skip the dispatcher, as decode does; torch.compile sees the opaque custom op
    op = _merge_states_op if torch.compiler.is_compiling() else _merge_states_impl
    return op(outs, lses)


# merge_list_kernel's (rows a program, warps) from a number of rows on: one row a program for few rows; 8 rows over
# 2 warps (16-byte loads at D=128) from 16384 rows, level with 4 rows over 4 warps to 14% ahead there (2 and 4 states,
# D 64 to 256, sinks), 14% behind at 2048 rows (H100, 2026-12-06, benchmarks/probe_merge_list_config.py)
LIST_CONFIGS = ((16384, 8, 2), (2048, 4, 4), (0, 1, 1))


def merge_state_list(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor],
                     sinks: torch.Tensor = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge_states` of states held apart, past validation: ``outs[s]`` of one shape ``(..., H, D)``,
    ``lses[s]`` of ``(..., H)`` float32, in one device and dtype. Up to four states are merged in one launch that
    reads each where it lies (``merge_list_kernel``; while compiling, the custom op ``leanattn::merge_state_list``
    around it): stacking them first cost two more launches, a few microseconds each even replayed from a CUDA graph.
    One state is returned as it is; more than four are stacked (``merge_states_kernel``).

    ``sinks (H,)``: attention sinks, folded in by the same launch after every state (``merges/sinks.py``), so the
    output is rounded once; one state with sinks is one launch."""
    if sinks is None and len(outs) == 1:
        return outs[0], lses[0]
    assert all(o.dtype == outs[0].dtype for o in outs), [o.dtype for o in outs]
    shape, D = outs[0].shape, outs[0].shape[-1]
    M = shape.numel() // D if D else 0
    if M == 0:  # no row, or rows of no column: only the LSEs merge
        lse = torch.logsumexp(torch.stack([ls.float() for ls in lses]), 0)
        if sinks is not None:  # bounded as the kernels take them (kernels/merge.fold_sinks), -inf no sink
            sk = sinks.float()
            lse = torch.logaddexp(lse, torch.where(sk == float("-inf"), sk, sk.clamp(-2e38, 2e38)).expand_as(lse))
        return outs[0].new_empty(shape), lse
    if len(outs) > 4:
        op = _merge_states_op if torch.compiler.is_compiling() else _merge_states_impl
        out, lse = op(torch.stack([o.reshape(M, 1, D) for o in outs]), torch.stack([ls.reshape(M, 1) for ls in lses]),
                      sinks)
        return out.view(shape), lse.view(shape[:-1])
    if torch.compiler.is_compiling():
        return _list_op(list(outs), list(lses), sinks)
    return _list_impl(outs, lses, sinks)


def _list_impl(outs, lses, sinks=None, in_place=False, row_mask=None):
    """``merge_state_list``'s launch of two to four states, or of one with sinks, of at least one row and column.
    ``in_place``: the result is written over ``outs[0]`` and ``lses[0]`` (contiguous, two states:
    ``merge_state_in_place``); with ``row_mask`` (bool, ``outs[0].shape[:-2]``, contiguous), a row whose entry is
    False is neither read nor written."""
    shape, D = outs[0].shape, outs[0].shape[-1]
    M = shape.numel() // D
    os_ = [o.reshape(M, D) for o in outs]
    os_ = [o if o.stride(-1) == 1 else o.contiguous() for o in os_]
    ls_ = [ls.reshape(M).contiguous() for ls in lses]
    if in_place:
        out, lse = outs[0], lses[0]
    else:
        out = torch.empty(shape, dtype=outs[0].dtype, device=outs[0].device)
        lse = torch.empty(shape[:-1], dtype=torch.float32, device=outs[0].device)
    pad = (os_ + [os_[0]] * 3)[:4], (ls_ + [ls_[0]] * 3)[:4]  # unused slots: never read (N)
    rows, warps = next((r, w) for least, r, w in LIST_CONFIGS if M >= least)
    merge_list_kernel[(triton.cdiv(M, rows),)](
        pad[0][0], pad[1][0], pad[0][1], pad[1][1], pad[0][2], pad[1][2], pad[0][3], pad[1][3], out, lse,
        lse if sinks is None else sinks.contiguous(), lse if row_mask is None else row_mask.view(torch.uint8), M,
        shape[-2], *(o.stride(0) for o in pad[0]), HEAD_DIM=D, BLOCK_M=rows, BLOCK_D=triton.next_power_of_2(D),
        N=len(outs), SINK_HEADS=0 if sinks is None else sinks.shape[0], IN_PLACE=in_place,
        ROW_MASK=row_mask is not None, num_warps=warps)
    return out, lse


@torch.library.custom_op("leanattn::merge_state_list", mutates_args=())
def _list_op(outs: list[torch.Tensor], lses: list[torch.Tensor],
             sinks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _list_impl(outs, lses, sinks)


@_list_op.register_fake
def _(outs, lses, sinks=None):
    return outs[0].new_empty(outs[0].shape), lses[0].new_empty(lses[0].shape, dtype=torch.float32)


def check_state(out, lse, names=("out", "lse")) -> None:
    """Checks of one state ``out (..., H, D)``, ``lse (..., H)`` float32, under the caller's argument names."""
    no, nl = names
    checks.check_tensor(no, out)
    if out.dim() < 2:
        raise ValueError(f"{no}: expected a (..., H, D) tensor of at least 2 dimensions, got shape "
                         f"{tuple(out.shape)}")
    checks.check_dtype(no, out)
    if out.shape[-1] == 0:
        raise ValueError(f"{no}: expected a head dim >= 1, got shape {tuple(out.shape)}")
    _check_lse(nl, lse, no, out)


def _check_lse(name, lse, out_name, out) -> None:
    checks.check_tensor(name, lse)
    checks.check_dtype(name, lse, (torch.float32,))
    if lse.shape != out.shape[:-1]:
        raise ValueError(f"{name}: expected shape {tuple(out.shape[:-1])} ({out_name}.shape[:-1]), got "
                         f"{tuple(lse.shape)}")
    if lse.device != out.device:
        raise ValueError(f"{name}: expected device {out.device} (as {out_name}), got {lse.device}")


def _check_two_states(out_a, lse_a, out_b, lse_b, names=("out_a", "lse_a", "out_b", "lse_b")) -> None:
    """``merge_state``'s checks of two states ``(..., H, D)``, ``(..., H)``, under the caller's argument names."""
    na, nla, nb, nlb = names
    check_state(out_a, lse_a, (na, nla))
    checks.check_tensor(nb, out_b)
    checks.check_same(nb, out_b, na, out_a)
    if out_b.shape != out_a.shape:
        raise ValueError(f"{nb}: expected shape {tuple(out_a.shape)} (as {na}), got {tuple(out_b.shape)}")
    _check_lse(nlb, lse_b, na, out_a)


def merge_state(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention states, exactly (FlashInfer's ``merge_state``, natural-log LSE).

    :func:`merge_states` of ``[(out_a, lse_a), (out_b, lse_b)]`` without stacking them: one launch reads each state
    where it lies. Over disjoint key sets the result is attention over their union; ``(0, -inf)`` is the identity.

    Parameters
    ----------
    out_a, out_b : torch.Tensor
        ``(..., H, D)`` of one shape, device and dtype (float16, bfloat16 or float32).
    lse_a, lse_b : torch.Tensor
        ``(..., H)`` float32, natural log (``-inf`` where a state attended no key).

    Returns
    -------
    out : torch.Tensor
        ``out_a``'s shape and dtype (accumulated in float32).
    lse : torch.Tensor
        ``lse_a``'s shape, float32, natural log.

    Examples
    --------
    >>> o1, l1 = leanattn.decode(q, k[:, :n], v[:, :n], return_lse=True)
    >>> o2, l2 = leanattn.decode(q, k[:, n:], v[:, n:], return_lse=True)
    >>> out, lse = leanattn.merge_state(o1, l1, o2, l2)
    """
    _check_two_states(out_a, lse_a, out_b, lse_b)
    return merge_state_list([out_a, out_b], [lse_a, lse_b])


def _merge_in_place_impl(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> None:
    if v.numel():
        _list_impl([v, v_other], [s, s_other], in_place=True, row_mask=None if mask is None else mask.contiguous())


@torch.library.custom_op("leanattn::merge_state_in_place", mutates_args=("v", "s"))
def _merge_in_place_op(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> None:
    _merge_in_place_impl(v, s, v_other, s_other, mask)


@_merge_in_place_op.register_fake
def _(v, s, v_other, s_other, mask=None):
    return None


def merge_state_in_place(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                         mask: torch.Tensor = None) -> None:
    """Merge the state ``(v_other, s_other)`` into ``(v, s)``, in place (FlashInfer's ``merge_state_in_place``,
    natural-log LSE).

    After the call ``(v, s)`` holds :func:`merge_state` of the two states: one launch that reads both and writes
    over ``v`` and ``s``, nothing allocated (a cascade's levels folded into one running state, or a state kept in a
    static buffer across CUDA-graph replays).

    Parameters
    ----------
    v : torch.Tensor
        ``(..., H, D)``, float16, bfloat16 or float32, contiguous; overwritten with the merged output.
    s : torch.Tensor
        ``(..., H)`` float32, natural log, contiguous; overwritten with the merged LSE.
    v_other, s_other : torch.Tensor
        The other state: ``v``'s shape, device and dtype (any strides with a unit stride on ``D``), and ``s``'s
        shape, float32. ``s_other = -inf`` (no key attended) leaves the row as it was. They may be ``v`` and ``s``
        themselves, but not views that overlap them at an offset: rows written early would be read late (not
        checked, as in FlashInfer).
    mask : torch.Tensor, optional
        ``v.shape[:-2]`` bool: where False, the row keeps ``(v, s)`` bit for bit (the launch neither reads nor
        writes it). Elsewhere a row whose ``s`` is ``-inf`` takes the other state, and zeros and ``-inf`` where
        both are ``-inf``.

    Examples
    --------
    >>> o, s = leanattn.decode(q, k[:, :n], v[:, :n], return_lse=True)
    >>> o2, s2 = leanattn.decode(q, k[:, n:], v[:, n:], return_lse=True)
    >>> leanattn.merge_state_in_place(o, s, o2, s2)  # o, s: attention over all the keys
    """
    _check_two_states(v, s, v_other, s_other, ("v", "s", "v_other", "s_other"))
    for name, t in (("v", v), ("s", s)):
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor (the merge is written over it), got strides "
                             f"{t.stride()} for shape {tuple(t.shape)}")
    if mask is not None:
        checks.check_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask: expected dtype torch.bool, got {mask.dtype}")
        if mask.shape != v.shape[:-2]:
            raise ValueError(f"mask: expected shape {tuple(v.shape[:-2])} (v.shape[:-2]), got {tuple(mask.shape)}")
        if mask.device != v.device:
            raise ValueError(f"mask: expected device {v.device} (as v), got {mask.device}")
    op = _merge_in_place_op if torch.compiler.is_compiling() else _merge_in_place_impl
    op(v, s, v_other, s_other, mask)
