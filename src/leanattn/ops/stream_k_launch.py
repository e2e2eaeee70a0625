"""A stream-K launch and the merge of its cut rows: in-kernel, in a second launch, or chosen by capture.

``kernels/piece_merge.py`` merges the pieces of a row cut over several programs either in-kernel (the
last piece to arrive) or in a second launch (``piece_merge_kernel``). The second launch shortens the
GPU time of one sequence cut into many pieces, but costs the host a second launch on every call: eager
calls of a 50 us decode became host-bound (gqa B=1 32k on an H200: 98 us per eager call against 50 us,
suite run of 2026-12-02 00:24). Under CUDA-graph capture that cost is paid once, so ``GRAPHS`` merges in
a second launch when captured and in-kernel otherwise. The two merges fold the same pieces in a
different order: each is bitwise deterministic, and they agree to rounding.
"""
from __future__ import annotations

import torch

from .. import runtime
from ..kernels.piece_merge import piece_merge_kernel, piece_merge_launch
from ..schedules.stream_k import search_launch

IN_KERNEL, LAUNCH, GRAPHS = 0, 1, 2


def with_search(meta: dict, head: tuple, items: int, rows: int, grid: int, sms: int) -> tuple:
    """The scalar arguments of a stream-K kernel whose schedule (``schedules/stream_k.schedule``) cuts ``items``
    items of ``rows`` rows over ``grid`` programs on ``sms`` SMs (0: no search, the grid is the host's): ``head``
    followed by the search's host-side arguments (``search_launch``), whose launch constants go into ``meta``."""
    args, consts = search_launch(items, rows, grid, sms)
    meta.update(consts)
    return head + args


def piece_workspaces(name: str, device: torch.device, programs: int, block_h: int, head_dim: int,
                     rows: int = 0) -> tuple:
    """The piece workspaces of a stream-K launch of ``programs`` programs with ``block_h``-row pieces:
    ``(acc, ml, counters)``, 2 slots of ``(block_h, head_dim)`` fp32 and their ``(m, l)`` per program and one
    zeroed counter per program, and with ``rows`` scheduling rows their ``(first slot, pieces)`` entries
    (``record_row``), for a merge launch. Cached per ``name`` (``runtime.workspace``)."""
    ws = (runtime.workspace(f"{name}_acc", device, (2 * programs, block_h, head_dim), torch.float32),
          runtime.workspace(f"{name}_ml", device, (2 * programs, 2, block_h), torch.float32),
          runtime.workspace(f"{name}_counters", device, (programs,), torch.int32, zero=True))
    return ws + (runtime.workspace(f"{name}_rows", device, (rows, 2), torch.int32),) if rows else ws


class StreamKLaunch:
    """``kernel`` over ``grid`` with ``meta`` and ``tail`` (``runtime.Launcher``; ``tail`` holds the arguments
    after the tensors of each call), its ``MERGE_LAUNCH`` constant set by ``mode`` (``IN_KERNEL``, ``LAUNCH`` or
    ``GRAPHS``), followed where it merges apart by ``piece_merge_kernel`` over the workspaces ``(acc, ml, _,
    rows)`` (``piece_workspaces``) the kernel writes, for ``batch`` sequences of ``meta["ROWS"]`` scheduling rows
    into a contiguous ``(batch, QLEN, Hq, HEAD_DIM)`` output and ``(batch, QLEN, Hq)`` LSE (``QLEN`` query tokens a
    sequence, 1 where ``meta`` has none), or with ``meta["VARLEN"]`` a packed ``(total_q, Hq, HEAD_DIM)`` one.

    ``grid`` is sized for the in-kernel variant's programs per SM (``device``'s SM count ``sms``; 0: a grid the
    caller chose). The variant that merges apart compiles to more registers where they are scarce (D=64: 140
    against 128, so 3 programs per SM instead of 4; Triton 3.6, sm_90a, ``benchmarks/offline_resources.py``), so
    it is capped (``maxnreg``) to fit as many programs per SM as the grid was sized for.

    On sm_90 and later the merge is a programmatic dependent launch (``runtime.dependent_launch``, off with
    ``LEANATTN_PDL=0``; the kernel's ``PDL`` constant lets it start at once): its programs become resident
    while the stream-K launch runs and wait for its writes, so the gap between the two launches is not paid."""

    def __init__(self, kernel, grid: tuple, meta: dict, tail: tuple, mode: int, workspaces: tuple, batch: int,
                 device: torch.device = None, sms: int = 0):
        self.mode = mode
        self.in_kernel = self.apart = None
        if mode != LAUNCH:
            self.in_kernel = runtime.Launcher(kernel, grid, dict(meta, MERGE_LAUNCH=False, PDL=False), tail)
        if mode != IN_KERNEL:
            pdl = device is not None and runtime.dependent_launch(device)
            apart = dict(meta, MERGE_LAUNCH=True, PDL=pdl)
            cap = runtime.register_cap(device, -(-grid[0] // sms), meta["num_warps"]) if sms and device else None
            if cap is not None:
                apart["maxnreg"] = cap
            self.apart = runtime.Launcher(kernel, grid, apart, tail)
            rows, group, n_hb, d = meta["ROWS"], meta["GROUP"], meta["N_HB"], meta["HEAD_DIM"]
            qlen, varlen = meta.get("QLEN", 1), meta.get("VARLEN", False)
            hq = group * (rows // n_hb)
            mgrid, mmeta = piece_merge_launch(batch * rows, group, n_hb, meta["BLOCK_H"], d, grid[0], rows, pdl, qlen,
                                              varlen)
            acc, ml, _, row_info = workspaces
            self.merge = runtime.Launcher(piece_merge_kernel, mgrid, mmeta,
                                          (acc, ml, row_info, qlen * hq * d, d, qlen * hq, hq * d, hq))
        # GRAPHS: both variants run once outside capture (the first call), so that capture compiles nothing
        self.warm = mode != GRAPHS

    def __call__(self, tensors: tuple, out: torch.Tensor, lse: torch.Tensor, cu_q: torch.Tensor) -> None:
        """Launch ``kernel`` over ``tensors`` (its arguments before ``tail``), which write ``out`` and ``lse`` (with
        ``meta["VARLEN"]``, of the packed query whose offsets are ``cu_q``; without it any int32 tensor, unread)."""
        apart = self.mode == LAUNCH
        if self.mode == GRAPHS:
            # (off CUDA, as in benchmarks/offline_resources.py's compiles, nothing is being captured)
            apart = tensors[0].is_cuda and torch.cuda.is_current_stream_capturing()
            if not self.warm and not apart:
                self.apart(*tensors)
                self.merge(out, lse, cu_q)
                self.warm = True
        if apart:
            self.apart(*tensors)
            self.merge(out, lse, cu_q)
        else:
            self.in_kernel(*tensors)
