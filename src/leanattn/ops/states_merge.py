"""Partial states in ``merge_states``' layout, held in shared workspaces, and the launch that merges them."""
from __future__ import annotations

import torch

from .. import runtime
from ..kernels.merge import merge_launch, merge_states_kernel


def states_and_merge(name: str, device: torch.device, n: int, B: int, Hq: int, D: int, pdl: bool = False,
                     sinks: bool = False, sequential: bool = False) -> tuple:
    """``(o, lse, launch)`` for ``n`` partial states of ``B * Hq`` rows.

    ``o (n, B, Hq, D)`` and ``lse (n, B, Hq)`` are float32 views of the shared workspaces ``{name}_o`` and
    ``{name}_lse`` (``runtime.workspace``), taken once when a plan is made rather than allocated per call: each
    ``torch.empty`` costs an eager call several microseconds of host time. ``launch(o, lse, out, out_lse)`` is the
    ``runtime.Launcher`` of ``merge_states_kernel`` that folds them, in slot order, into a contiguous ``out (B, Hq,
    D)`` and ``out_lse (B, Hq)``; ``launch(o, lse, out, out_lse, s)`` with ``sinks``: each query head's attention
    sink ``s (Hq,)`` folded in after the states (without, ``s`` is any tensor, not read). ``pdl``: it is a
    programmatic dependent launch of the launch that writes the states (``runtime.dependent_launch``).
    ``sequential``: the fold whose bits do not depend on ``n`` (``merge_launch``)."""
    M = B * Hq
    grid, meta = merge_launch(n, M, D, pdl, Hq if sinks else 0, sequential)
    launch = runtime.Launcher(merge_states_kernel, grid, meta, (n, M, M * D, D, M, 1))
    return (runtime.workspace(f"{name}_o", device, (n, B, Hq, D), torch.float32),
            runtime.workspace(f"{name}_lse", device, (n, B, Hq), torch.float32), launch)
