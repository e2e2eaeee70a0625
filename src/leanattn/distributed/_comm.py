"""Collectives with a deadline, and agreement of shapes across ranks.

Two failure modes of a distributed decode are worse than an exception: a hang (a peer is gone,
or called a different collective) and silent garbage (ranks pass tensors of different shapes to
the same collective). This module turns both into errors that name the rank and the collective.

Deadlines. Every collective is issued with ``async_op=True`` and waited with
``work.wait(timeout)`` when the caller gives a timeout (gloo honours it; on NCCL it makes the host
block until the collective finishes, so give NCCL groups their deadline at creation instead:
``init_process_group(..., timeout=...)`` or ``dist.new_group(timeout=...)``, and leave the NCCL
watchdog on). Without a per-call timeout the group's own timeout applies.

Shape agreement. Before the first collective of a given signature, the ranks all-gather a few
integers describing what they are about to send (``B``, heads, head dim, dtype, ...) and every rank
raises the same ``ValueError`` when they differ, so no rank is left waiting.
"""
from __future__ import annotations

import datetime
import numbers
import struct
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

Timeout = Union[None, float, int, datetime.timedelta]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def as_timedelta(name: str, timeout: Timeout) -> Optional[datetime.timedelta]:
    """``None``, seconds (float/int) or a ``timedelta`` -> ``timedelta`` or ``None``."""
    if timeout is None:
        return timeout
    if isinstance(timeout, datetime.timedelta):
        if timeout <= datetime.timedelta(0):
            raise ValueError(f"{name}: expected a positive timedelta, got {timeout!r}")
        return timeout
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"{name}: expected seconds (float), a datetime.timedelta or None, got {type(timeout).__name__}")
    # (inf or past timedelta's range: OverflowError; pass None for no timeout)
    if not 0 < timeout < datetime.timedelta.max.total_seconds():
        raise ValueError(f"{name}: expected a positive, finite number of seconds (None: no timeout), got {timeout}")
    return datetime.timedelta(seconds=float(timeout))


def world(group) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("group: given, but torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def comm_device(group, like: torch.device) -> torch.device:
    """Where tensors for ``group``'s collectives live: ``like`` where the group reduces ``like``'s device type with
    NCCL, else the CPU (gloo and others). The group's backend configuration names a backend a device type
    (``"cpu:gloo,cuda:nccl"`` for a group made without a backend, whose ``get_backend`` is ``"undefined"``, or
    ``"cuda:nccl"``): matching the backend's name alone sent CUDA states of such groups through the CPU."""
    if like.type != "cuda":
        return like if like.type == "cpu" else torch.device("cpu")
    try:
        config = dict(part.split(":", 1) for part in dist.get_backend_config(group).split(",") if ":" in part)
        on_device = config.get("cuda") == "nccl"
    except (AttributeError, RuntimeError, ValueError):  # no configuration (an older torch): the backend's name
        on_device = dist.get_backend(group) in ("nccl", dist.Backend.NCCL)
    return like if on_device else torch.device("cpu")


def wait(work, what: str, group, timeout: Optional[datetime.timedelta]) -> None:
    """Wait for ``work``; a timeout or a lost peer becomes an error naming ``what`` and the rank."""
    if work is None:
        return
    try:
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout)
    except RuntimeError as e:
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        low = str(e).lower()
        if "timed out" in low or "timeout" in low:
            limit = f"{timeout.total_seconds():g} s" if timeout is not None else "the group's timeout"
            raise TimeoutError(f"{what}: rank {rank} of {size} waited longer than {limit}; a peer is missing, "
                               f"stuck, or called a different collective ({first})") from e
        raise RuntimeError(f"{what}: failed on rank {rank} of {size}: {first}") from e


def all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group, what: str, timeout) -> None:
    """All-gather of a 1-D ``inp (n,)`` into ``out (world * n,)`` in rank order: one collective."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    wait(fn(out, inp, group=group, async_op=True), what, group, timeout)


def all_reduce(x: torch.Tensor, op, group, what: str, timeout, wait_now: bool = True):
    work = dist.all_reduce(x, op=op, group=group, async_op=True)
    if wait_now:
        wait(work, what, group, timeout)
        return None
    return work


def dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else 99


def float_bits(x: float) -> int:
    """The bits of a float64 as an int64, so that a float travels exactly in an integer descriptor."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


_CHECKED: set = set()


def checked(group, cache_key) -> bool:
    """Whether :func:`agree` already succeeded for ``cache_key`` on ``group`` in this process."""
    return (id(group), world(group)[1], cache_key) in _CHECKED


def gather_descriptors(desc: Sequence[int], group, device: torch.device, what: str, timeout) -> list[list[int]]:
    """All-gather ``desc`` (a few int64) from every rank: ``rows[r]`` is rank ``r``'s descriptor."""
    rank, size = world(group)
    n = len(desc)
    mine = torch.tensor(list(desc), dtype=torch.int64).to(comm_device(group, device))
    allv = torch.empty(size * n, dtype=torch.int64, device=mine.device)
    all_gather_flat(allv, mine, group, what, timeout)
    return allv.view(size, n).tolist()


def agree(fields: Sequence[tuple[str, tuple[int, ...]]], local_error: Optional[BaseException], group,
          device: torch.device, what: str, timeout, cache_key=None) -> None:
    """Raise the same error on every rank unless all ranks agree on ``fields`` and accept their inputs.

    Parameters
    ----------
    fields : sequence of (name, values)
        What must be equal on every rank, e.g. ``("q shape (B, Hq, D)", (2, 32, 128))``.
    local_error : exception or None
        This rank's own validation error: it is re-raised here after the exchange, and the other
        ranks raise a ``ValueError`` that points at this rank, so none of them hangs.
    cache_key : hashable, optional
        When given, a successful check is remembered and later calls with the same key (in this
        process) skip the exchange.
    """
    key = None if cache_key is None else (id(group), world(group)[1], cache_key)
    if key is not None and key in _CHECKED and local_error is None:
        return
    flat = [0 if local_error is None else 1]
    for _, vals in fields:
        flat += list(vals)
    rows = gather_descriptors(flat, group, device, what + " (shape agreement)", timeout)
    if local_error is not None:
        raise local_error
    check_rows(rows, fields, what)
    if key is not None:
        _CHECKED.add(key)


def check_rows(rows: list[list[int]], fields: Sequence[tuple[str, tuple[int, ...]]], what: str) -> None:
    """Raise unless every rank's row (``[rejected, *field values, ...]``) accepts and agrees on ``fields``."""
    bad = [r for r, row in enumerate(rows) if row[0]]
    if bad:
        raise ValueError(f"{what}: rank(s) {bad} rejected their inputs (see the error raised there)")
    off = 1
    for name, vals in fields:
        k = len(vals)
        seen = [tuple(row[off:off + k]) for row in rows]
        if len(set(seen)) > 1:
            per_rank = ", ".join(f"rank {r}: {_show(name, s)}" for r, s in enumerate(seen))
            raise ValueError(f"{what}: ranks disagree on {name}; expected the same on every rank, got {per_rank}")
        off += k


def _show(name: str, vals: tuple[int, ...]):
    if name == "dtype":
        return str(_DTYPES[vals[0]]).replace("torch.", "") if vals[0] < len(_DTYPES) else "other"
    if name == "softmax_scale":
        return f"{struct.unpack('<d', struct.pack('<q', vals[0]))[0]:.6g}"
    return vals[0] if len(vals) == 1 else vals
