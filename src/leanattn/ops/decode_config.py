"""Launch configuration of the decode kernels: tile sizes, warps, pipelining, grid.

Tuned on an H100/H200 (see benchmarks/results/); the interpreter gets small tiles so that CPU
tests cut heads into several tiles and exercise the stream-K reduction.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import triton

from .. import runtime


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    block_n: int      # KV tokens per tile
    block_h: int      # query-head rows per tl.dot (one GQA group, padded to >= 16)
    n_hb: int         # head blocks per kv head (groups larger than block_h)
    num_warps: int
    num_stages: int
    ctas_per_sm: int  # cap on resident programs per SM for the persistent grid


# (head_dim) -> (block_n, num_warps, num_stages, ctas_per_sm) on CUDA. From the H100 sweeps in
# benchmarks/results/decode_sweep*_NVIDIA_H100_80GB_HBM3.json (geometric mean over their cases):
# the best configs are within 1-2% of each other on long contexts; short ones and D=64 separate them.
_CUDA_TABLE = {
    64: (128, 4, 2, 4),
    128: (128, 4, 2, 4),
    256: (32, 4, 3, 1),
}


def _env_override(cfg: tuple) -> tuple:
    """``LEANATTN_DECODE_CONFIG=block_n,num_warps,num_stages,ctas_per_sm`` (benchmark sweeps)."""
    raw = os.environ.get("LEANATTN_DECODE_CONFIG")
    if not raw:
        return cfg
    return tuple(int(x) for x in raw.split(","))


def decode_config(head_dim: int, group: int, device: torch.device, block_n: int | None = None) -> DecodeConfig:
    block_h = max(16, min(64, triton.next_power_of_2(group)))
    n_hb = triton.cdiv(group, block_h)
    if runtime.interpreting() or not runtime.gpu_target(device):
        return DecodeConfig(block_n or 16, block_h, n_hb, 4, 1, 1)
    bn, warps, stages, cps = _env_override(_CUDA_TABLE[head_dim])
    return DecodeConfig(block_n or bn, block_h, n_hb, warps, stages, cps)
