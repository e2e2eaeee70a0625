"""Launch plans of sparse causal attention: the layout kernels, the forward and the backward.

A call at B=8, H=12, N=4k runs ~1 ms of forward kernels, so its host work must stay far below
that: everything that depends only on shapes, strides, dtype, device and tiles (grids, strides,
kernel flags, the layout buffer's sizes) is computed once per signature and cached in a
:class:`Plan`. A forward is then three allocations and three launches (QK mode: compaction,
block ranges, attention) or two launches and two torch ops (hash mode: stacking and one stable
sort of the bucket ids), and a backward four allocations and two launches.

The layout of one call (``BH = B * H`` query rows, ``BHK = B * Hkv`` key rows: grouped-query attention pairs
query head ``h`` with kv head ``h // (H / Hkv)``) lives in one int32 buffer, the custom op's ``meta``
output, so that the backward gets it as one saved tensor. Its segments, back to back (no
padding: every element is written, so the buffer is a deterministic function of the inputs):

=============  ================  =============================================================
q_perm         ``(BH, N)``       original position of the ``r``-th sorted query
k_perm         ``(BHK, N)``      the same for keys
q_group        ``(BH, N)``       group id of the ``r``-th sorted query
k_group        ``(BHK, N)``      the same for keys
q_ranges       ``(BH, n_q, 4)``  ``[lo, full_lo, full_hi, hi]`` in key blocks of ``block_n``, per
                                 query block of ``block_m`` (forward, dQ)
kv_ranges      ``(BH, n_kv, 4)`` the same in query blocks of ``block_m_bwd``, per key block of
                                 ``block_n_bwd`` (dK/dV), per query row
live           ``BH + BHK``      live (kept) queries per query row, then live keys per key row;
                                 ``N`` in hash mode
=============  ================  =============================================================
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

from .. import runtime
from ..kernels.sparse_attn import (
    sparse_bwd_preprocess_kernel,
    sparse_dkdv_kernel,
    sparse_dq_kernel,
    sparse_fwd_kernel,
)
from ..kernels.sparse_ranges import block_ranges_kernel, qk_compact_kernel

__all__ = ["Meta", "meta_sizes", "get_plan", "Plan"]

LOG2E = 1.4426950408889634


class Meta(NamedTuple):
    """Flat int32 views of the layout buffer, in the order of the module docstring."""

    q_perm: torch.Tensor
    k_perm: torch.Tensor
    q_group: torch.Tensor
    k_group: torch.Tensor
    q_ranges: torch.Tensor
    kv_ranges: torch.Tensor
    live: torch.Tensor


def meta_sizes(B, H, HK, N, block_m: int, block_n_bwd: int) -> list:
    """Element counts of the layout segments (ints, or SymInts for the fake op) of ``H`` query and ``HK`` kv heads."""
    BH, BHK = B * H, B * HK
    return [BH * N, BHK * N, BH * N, BHK * N,
            BH * ((N + block_m - 1) // block_m) * 4, BH * ((N + block_n_bwd - 1) // block_n_bwd) * 4, BH + BHK]


def _bnh(x: torch.Tensor):
    # (B, N, H, D) or (B, N, H) -> batch, token, head strides
    return x.stride(0), x.stride(1), x.stride(2)


class Plan:
    """Launches of one signature ``(q.shape, k.shape, strides of q, k, v, dtype, device, tiles)``.

    ``tiles = (block_m, block_n, block_m_bwd, block_n_bwd)``: the forward and the dQ pass use
    ``block_m`` queries x ``block_n`` keys, the dK/dV pass ``block_n_bwd`` keys per program x
    ``block_m_bwd`` queries per step.
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tiles: tuple):
        B, N, H, D = q.shape
        HK = k.shape[2]
        self.B, self.N, self.H, self.BH, self.HK, self.BHK = B, N, H, B * H, HK, B * HK
        self.bm, self.bn, self.bm_bwd, self.bn_bwd = tiles
        self.empty = q.numel() == 0
        self.sizes = meta_sizes(B, H, HK, N, self.bm, self.bn_bwd)
        self.meta_numel = sum(self.sizes)
        self.n_q = triton.cdiv(N, self.bm)
        self.n_kv = triton.cdiv(N, self.bn_bwd)
        self.tune_n = triton.next_power_of_2(N)  # the autotuners' key
        # the layout: one program per CHUNK sorted positions of a row, 8 blocks of each side
        chunk = 8 * max(self.bm, self.bn_bwd)
        self.ranges_grid = (triton.cdiv(N, chunk), self.BH)
        self.ranges_args = (N, self.n_q, self.n_kv, N.bit_length(), H, H // HK)
        self.ranges_meta = dict(CHUNK=chunk, BLOCK_M=self.bm, BLOCK_N=self.bn, BLOCK_M_BWD=self.bm_bwd,
                                BLOCK_N_BWD=self.bn_bwd, num_warps=4)
        self.compact_chunk = 1024
        # kernels
        upcast = runtime.interpreting() and q.dtype == torch.bfloat16  # bf16 tl.dot is broken in the interpreter
        self.flags = dict(HEAD_DIM=D, UPCAST=upcast, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                          GROUP=H // HK)
        self.out_strides = _bnh(torch.empty_like(q, device="meta"))  # out = empty_like(q)
        self.qkv_strides = (*_bnh(q), *_bnh(k), *_bnh(v))
        self.fwd_grid = (self.n_q, self.BH)
        # grouped-query attention with few kv heads: the group's query heads cut over SPLIT programs of a key block
        self.split = dkdv_split(self.n_kv * self.BHK, H // HK, q.device)
        self.dkdv_grid = (self.n_kv * self.split, self.BHK)
        self.f32_strides = (N * H * D, H * D, D)  # the float32 dQ of the atomic backward is contiguous
        self.dummy = (runtime.workspace("sparse_dummy_f32", q.device, (1,), torch.float32)
                      if not self.empty else None)

    def describe(self) -> dict:
        """The tiles and grids of this signature's launches (what the ``leanattn`` logger records of a new plan)."""
        return dict(block_m=self.bm, block_n=self.bn, block_m_bwd=self.bm_bwd, block_n_bwd=self.bn_bwd,
                    forward_grid=self.fwd_grid, dkdv_grid=self.dkdv_grid)

    # ----------------------------------------------------------------------------------------
    # forward

    def layout(self, q_ids: torch.Tensor, k_ids: torch.Tensor, m: Meta):
        """Fill ``m`` from ``(B, N, H)`` keep masks (bool: QK mode) or bucket ids (integers)."""
        if q_ids.dtype == torch.bool:
            qk_compact_kernel[(self.BH, 2)](
                q_ids, k_ids, m.q_perm, m.k_perm, m.q_group, m.k_group, m.live,
                *_bnh(q_ids), *_bnh(k_ids), self.H, self.N, self.HK, self.BHK, CHUNK=self.compact_chunk, num_warps=4)
            src = (m.q_perm, m.q_group, m.k_perm, m.k_group, 0)
            has_dead, copy = True, False
        else:
            # one stable sort of both sides: B*H query rows, then B*HK key rows, positions kept in time order per group
            ids = torch.cat((q_ids.transpose(1, 2).reshape(self.BH, self.N),
                             k_ids.transpose(1, 2).reshape(self.BHK, self.N)))
            groups, perm = torch.sort(ids, dim=-1, stable=True)
            src = (perm, groups, perm, groups, self.BH * self.N)  # keys: the rows after the queries
            has_dead, copy = False, True
        block_ranges_kernel[self.ranges_grid](
            *src[:4], m.q_perm, m.q_group, m.k_perm, m.k_group, m.live, m.q_ranges, m.kv_ranges, src[4],
            *self.ranges_args, HAS_DEAD=has_dead, COPY=copy, **self.ranges_meta)

    def forward(self, q, k, v, q_ids, k_ids, scale: float):
        """``(out (B, N, H, D), lse (BH, N) float32, meta (int32 layout buffer))``.

        ``lse`` is in log2 units and sorted order, ``+inf`` where a query sees no key.
        """
        out = torch.empty_like(q)
        lse = torch.empty((self.BH, self.N), dtype=torch.float32, device=q.device)
        meta = torch.empty((self.meta_numel,), dtype=torch.int32, device=q.device)
        if self.empty:
            return out, lse, meta.zero_()  # (every element written: no token, nothing live)
        m = Meta(*meta.split_with_sizes(self.sizes))
        self.layout(q_ids, k_ids, m)
        sparse_fwd_kernel[self.fwd_grid](
            q, k, v, out, lse, m.q_perm, m.q_group, m.k_perm, m.k_group, m.q_ranges,
            *self.qkv_strides, *self.out_strides, scale * LOG2E, self.H, self.N, self.n_q, self.tune_n,
            BLOCK_M=self.bm, BLOCK_N=self.bn, **self.flags)
        return out, lse, meta

    # ----------------------------------------------------------------------------------------
    # backward

    def backward(self, dout, q, k, v, out, lse, meta, scale: float, deterministic: bool):
        """``(dq, dk, dv)``, each of its input's shape (``(B, N, H, D)``, ``(B, N, Hkv, D)``) and dtype.

        Deterministic: the dQ pass runs first and also writes ``delta = rowsum(out * dout)``,
        which the dK/dV pass reads. Otherwise a preprocess launch writes delta and zeroes a
        float32 dQ, and the dK/dV pass adds dQ into it with atomics.
        """
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        if self.empty:
            # (no query or no token: k and v may still hold tokens, of a query with no head, which get no gradient)
            return torch.zeros_like(q), dk.zero_(), dv.zero_()
        m = Meta(*meta.split_with_sizes(self.sizes))
        delta = torch.empty((self.BH, self.N), dtype=torch.float32, device=q.device)
        strides = (*self.qkv_strides, *_bnh(dout))
        tail = (scale, scale * LOG2E, self.H, self.N)
        if deterministic:
            dq = torch.empty_like(q)
            sparse_dq_kernel[self.fwd_grid](
                q, k, v, dout, dq, out, lse, delta, m.q_perm, m.q_group, m.k_perm, m.k_group, m.q_ranges,
                *strides, *_bnh(dq), *self.out_strides, *tail, self.n_q, self.tune_n,
                BLOCK_M=self.bm, BLOCK_N=self.bn, **self.flags)
            # the autotuner zeroes DQ around its trial runs: give it a dummy, dQ is already done
            dq_acc, dq_strides = self.dummy, (0, 0, 0)
        else:
            dq = dq_acc = torch.empty(q.shape, dtype=torch.float32, device=q.device)
            dq_strides = self.f32_strides
            sparse_bwd_preprocess_kernel[self.fwd_grid](
                out, dout, delta, dq_acc, m.q_perm, *self.out_strides, *_bnh(dout), *dq_strides, self.H, self.N,
                HEAD_DIM=self.flags["HEAD_DIM"], BLOCK_M=self.bm, num_warps=4)
        part = arrivals = self.dummy
        if self.split > 1:  # the runs' float32 partial sums, and a count of the runs in for each key block
            part = torch.empty((self.split, 2, self.BHK, self.N, k.shape[-1]), dtype=torch.float32, device=k.device)
            arrivals = torch.zeros((self.BHK * self.n_kv,), dtype=torch.int32, device=k.device)
        sparse_dkdv_kernel[self.dkdv_grid](
            q, k, v, dout, dk, dv, lse, delta, m.q_perm, m.q_group, m.k_perm, m.k_group, m.kv_ranges,
            *strides, *_bnh(dk), *_bnh(dv), dq_acc, *dq_strides, part, arrivals, *tail, self.n_kv, self.tune_n,
            BLOCK_M=self.bm_bwd, BLOCK_N=self.bn_bwd, ATOMIC_DQ=not deterministic, SPLIT=self.split, **self.flags)
        return (dq, dk, dv) if deterministic else (dq.to(q.dtype), dk, dv)


# the dK/dV programs a launch should have at most, in SMs, once a group is cut at all. H100 2026-12-07 13:2x
# (probe_sparse_dkdv_split.py, D=128, the runs summed in the launch): the best split of all seven cases gave about 4
# programs an SM (multi-query 8k: split 8 of 64 key blocks, 13% ahead of split 16), and cutting a group in two won
# even where the grid already held 4 or 8 an SM (GQA 32/8, 64/8: 4-11% ahead of no cut): shorter runs of heads
# balance the causal key blocks' unequal work
_DKDV_WAVES = 4
# below this many programs an SM an even group is cut in two at least: measured up to 7.8 (1024 at 132 SMs). Past it
# no gain was measured, and the float32 partials would cost memory (Llama-3-8B's 32/8 at B=8, 8k: 1.07 GB)
_DKDV_CUT_BELOW = 8


def dkdv_split(programs: int, group: int, device: torch.device) -> int:
    """Runs the ``group`` query heads of a kv head are cut into over the ``programs`` dK/dV programs of its key
    blocks: the largest power of two dividing ``group`` that keeps ``programs * split`` within ``_DKDV_WAVES``
    programs an SM, and at least 2 where the group is even and ``programs`` below ``_DKDV_CUT_BELOW`` an SM (1 for
    multi-head attention and under the interpreter).
    ``LEANATTN_SPARSE_DKDV_SPLIT`` (a power of two dividing the group) overrides, for tests and probes."""
    raw = os.environ.get("LEANATTN_SPARSE_DKDV_SPLIT")
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1 or int(raw) & (int(raw) - 1):
            raise ValueError(f"LEANATTN_SPARSE_DKDV_SPLIT: expected a power of two >= 1, got {raw!r}")
        split = int(raw)
        if group % split:
            raise ValueError(f"LEANATTN_SPARSE_DKDV_SPLIT: expected a divisor of the {group} query heads a kv head, "
                             f"got {split}")
        return split
    if group % 2 or programs <= 0 or not runtime.gpu_target(device):
        return 1
    sms = runtime.num_sms(device)
    if programs >= _DKDV_CUT_BELOW * sms:
        return 1
    split, most = 2, _DKDV_WAVES * sms
    while programs * split * 2 <= most and group % (2 * split) == 0:
        split *= 2
    return split


_PLANS = runtime.PlanCache(name="sparse attention")  # a training run sees few signatures


def get_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tiles) -> Plan:
    """The cached :class:`Plan` of this signature; ``tiles``: its first four entries are used."""
    tiles = tuple(tiles[:4])
    key = (q.shape, k.shape, q.stride(), k.stride(), v.stride(), q.dtype, q.device, tiles, runtime.interpreting(),
           os.environ.get("LEANATTN_SPARSE_DKDV_SPLIT"))
    return _PLANS.get_or_make(key, lambda: Plan(q, k, v, tiles))
