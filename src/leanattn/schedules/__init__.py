"""Schedules: which program computes which KV tiles. Pure integer arithmetic.

Each schedule exists twice: as Triton ``@jit`` helpers used inside the kernels (so the work
partition is computed on the GPU from the lengths, with no host sync), and as plain Python used
by the tests, the demo's occupancy picture and the benchmarks. The tests check that both agree.
"""
from .fixed_split import num_splits_heuristic, split_assignment
from .stream_k import lean_assignment, lean_ranges, tiles_per_sequence

__all__ = ["lean_assignment", "lean_ranges", "num_splits_heuristic", "split_assignment", "tiles_per_sequence"]
