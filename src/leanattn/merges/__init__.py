"""Merges of partial attention states: in-kernel (see kernels/decode.py), stacked (Triton), collective."""
from .sinks import apply_sinks
from .states import merge_state, merge_state_in_place, merge_states

__all__ = ["merge_states", "merge_state", "merge_state_in_place", "apply_sinks"]
