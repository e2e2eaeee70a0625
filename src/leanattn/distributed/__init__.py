"""Decode over a KV cache sharded across ranks (torch.distributed: NCCL on GPUs, gloo on CPUs).

tree_decode       Tree Attention: local decode + one all-gather of (out, lse) + local merge
                  (or the paper's three all-reduces, ``variant="allreduce3"``)
ring_decode       Ring Attention baseline: KV shards passed around the ring, overlapped with compute
ShardedKVCache    a growing cache spread over the ranks (round-robin pages or contiguous blocks)
Placement         the token -> (rank, slot) map; shard_cache cuts a whole cache into a rank's shard
spawn             run a function on N local processes with a process group (tests, demo)
cost_model        predicted tree vs ring decode latency on 8..512 GPUs

Launch the demo with ``torchrun --nproc-per-node 2 -m leanattn.distributed.demo`` (or
``python -m leanattn.distributed.demo --nproc 2`` on a CPU).
"""
from . import cost_model
from .launch import RankError, spawn
from .placement import PLACEMENTS, Placement, ShardedKVCache, balance, shard_cache
from .tree import VARIANTS, comm_bytes, ring_decode, tree_decode

__all__ = ["tree_decode", "ring_decode", "VARIANTS", "comm_bytes", "ShardedKVCache", "Placement", "PLACEMENTS",
           "shard_cache", "balance", "spawn", "RankError", "cost_model"]
