"""``decode(cache_leftpad=)``: sequence ``b``'s tokens are ``[cache_leftpad[b], cache_seqlens[b])`` of its cache row,
positions counted from the first (flash-attn's ``cache_leftpad``), against the float64 reference and against the same
tokens moved to the front of their rows.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.ops import decode as decode_ops
from leanattn.testing import TOLERANCE, assert_rel_close, assert_states_match
from test_decode import SCHEDULES
from test_decode_append import DEV, _written_by_hand, assert_compiled_steps, make_inputs
from test_decode_rotary import _tables


def _pads(values):
    return torch.tensor(values, dtype=torch.int32, device=DEV)


def _moved_to_front(cache, lens, pads):
    """``cache`` with each row's tokens ``[pads[b], lens[b])`` at ``[0, lens[b] - pads[b])`` and NaN after them (the
    call on it must not read past a length)."""
    out = torch.full_like(cache, float("nan"))
    for b, (n, p) in enumerate(zip(lens.tolist(), pads.tolist())):
        out[b, :n - p] = cache[b, p:n]
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("qlen,mode", [(0, "plain"), (3, "causal"), (0, "window"), (2, "window")],
                         ids=["one", "three-causal", "one-window", "two-window"])
# rows of a few tiles and of many, their first real tokens inside tiles (the kernels move each row's base there)
@pytest.mark.parametrize("capacity", [40, 90], ids=["short", "long"])
def test_matches_the_reference_and_the_tokens_moved(schedule, dtype, qlen, mode, capacity):
    # lengths and paddings: a full row padded, an empty row, a row all padding, an unpadded one
    lens, pads = [capacity, 0, 9, 23], _pads([5, 0, 9, 0])
    q, k_cache, v_cache, seqlens, _ = make_inputs(4, 8, 2, 64, lens, dtype=dtype, capacity=capacity)
    if qlen:
        q = torch.randn(4, qlen, 8, 64, dtype=dtype, device=DEV)
    kw = dict(causal=True) if mode == "causal" else dict(window_left=6, causal=qlen > 1) if mode == "window" else {}
    out, lse = leanattn.decode(q, k_cache, v_cache, seqlens, return_lse=True, schedule=schedule, cache_leftpad=pads,
                               **kw)
    ref_out, ref_lse = reference.decode(q, k_cache, v_cache, seqlens, cache_leftpad=pads, **kw)
    assert_states_match(f"leftpad {mode}", q, out, lse, ref_out, ref_lse)
    moved = [_moved_to_front(c, seqlens, pads) for c in (k_cache, v_cache)]
    want = leanattn.decode(q, *moved, seqlens - pads, schedule=schedule, **kw)
    assert_rel_close("tokens moved to the front", out, want, TOLERANCE[dtype])


@pytest.mark.parametrize("load", ["1", "2"], ids=["block-pointers", "tma"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_contiguous_load_paths(load, schedule, decode_load):
    # the moved bases through block pointers and TMA descriptors (the interpreter's default is tensors of pointers):
    # a full row padded, an empty row, a row all padding, one unpadded, one token and three causal
    decode_load(load)
    lens, pads = [90, 0, 9, 23], _pads([5, 0, 9, 0])
    q, k_cache, v_cache, seqlens, _ = make_inputs(4, 8, 2, 64, lens, capacity=90)
    for q_in, kw in ((q, {}), (torch.randn(4, 3, 8, 64, dtype=q.dtype, device=DEV), dict(causal=True))):
        out, lse = leanattn.decode(q_in, k_cache, v_cache, seqlens, return_lse=True, schedule=schedule,
                                   cache_leftpad=pads, **kw)
        ref_out, ref_lse = reference.decode(q_in, k_cache, v_cache, seqlens, cache_leftpad=pads, **kw)
        assert_states_match(f"load {load}", q_in, out, lse, ref_out, ref_lse)


def test_with_other_options():
    # ALiBi (distances from the padded positions), sinks, a soft cap, a head-major cache and the full capacity
    q, k_cache, v_cache, _, _ = make_inputs(3, 4, 1, 64, [90, 90, 90], capacity=90, layout="hnd")
    pads = _pads([0, 7, 89])
    opts = dict(alibi_slopes=torch.rand(4, device=DEV), sinks=torch.randn(4, device=DEV), softcap=15.0)
    out, lse = leanattn.decode(q, k_cache, v_cache, return_lse=True, cache_leftpad=pads, **opts)
    ref_out, ref_lse = reference.decode(q, k_cache, v_cache, cache_leftpad=pads, **opts)
    assert_states_match("options", q, out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("T,qlen,mode,capacity", [(1, 0, "plain", 16), (2, 2, "causal", 100), (3, 3, "window", 16),
                                                   (1, 0, "plain", 100)],
                         ids=["one-short", "two-causal-long", "three-window-short", "one-long"])
def test_appends_and_rotary_at_the_cache_slots(T, qlen, mode, capacity):
    lens = [4, 11, 6]
    q, k_cache, v_cache, seqlens, _ = make_inputs(3, 4, 2, 64, lens, capacity=capacity)
    pads = _pads([2, 0, 6])
    if qlen:
        q = torch.randn(3, qlen, 4, 64, dtype=q.dtype, device=DEV)
    kn, vn = (torch.randn(3, T, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    cos, sin = _tables(capacity, 32)
    kw = dict(causal=True) if mode == "causal" else dict(window_left=3) if mode == "window" else {}
    out, lse = leanattn.decode(q, k_cache, v_cache, seqlens, return_lse=True, k=kn, v=vn, rotary_cos=cos,
                               rotary_sin=sin, cache_leftpad=pads, **kw)
    # written and rotated at the lengths, the cache's slots (flash-attn's positions: its test rotates at
    # cache_seqlens with or without padding)
    at = seqlens.long()[:, None] + torch.arange(T, device=DEV)[None, :]
    want_k = _written_by_hand(k_cache.double(), reference.rotary(kn, cos, sin, at), seqlens, None)
    want_v = _written_by_hand(v_cache.double(), vn.double(), seqlens, None)
    assert_rel_close("keys written", k_cache.double(), want_k, TOLERANCE[q.dtype])
    assert torch.equal(v_cache.double(), want_v)
    q4 = q if qlen else q[:, None]
    q_at = at[:, :q4.shape[1]] if kw else at[:, :1].expand(-1, q4.shape[1])
    q_rot = reference.rotary(q4, cos, sin, q_at)
    ref_out, ref_lse = reference.decode(q_rot if qlen else q_rot[:, 0], want_k, want_v, seqlens + T,
                                        cache_leftpad=pads, **kw)
    assert_states_match(f"appended {mode}", q, out, lse, ref_out, ref_lse)


def test_with_cache_batch_idx_and_a_packed_query():
    q, k_cache, v_cache, _, _ = make_inputs(2, 4, 2, 64, [12, 12], capacity=12)
    rows = torch.randn(5, 64, 2, 64, dtype=q.dtype, device=DEV), torch.randn(5, 64, 2, 64, dtype=q.dtype, device=DEV)
    idx = torch.tensor([3, 0], dtype=torch.int32, device=DEV)
    lens, pads = torch.tensor([12, 8], dtype=torch.int32, device=DEV), _pads([4, 1])
    out, lse = leanattn.decode(q, *rows, lens, return_lse=True, cache_batch_idx=idx, cache_leftpad=pads)
    ref_out, ref_lse = reference.decode(q, rows[0][idx.long()], rows[1][idx.long()], lens, cache_leftpad=pads)
    assert_states_match("rows named", q, out, lse, ref_out, ref_lse)
    cu = torch.tensor([0, 3, 4], dtype=torch.int32, device=DEV)
    qp = torch.randn(4, 4, 64, dtype=q.dtype, device=DEV)
    out, lse = leanattn.decode(qp, k_cache, v_cache, lens, return_lse=True, causal=True, cu_seqlens_q=cu,
                               max_seqlen_q=3, cache_leftpad=pads)
    ref_out, ref_lse = reference.decode(qp, k_cache, v_cache, lens, causal=True, cu_seqlens_q=cu, cache_leftpad=pads)
    assert_states_match("packed", qp, out, lse, ref_out, ref_lse)


def test_compile_fullgraph_steps():
    # decode steps with an append, compiled once, the lengths advanced between them
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=160)
    assert_compiled_steps(q, k_cache, v_cache, seqlens, None, 2, cache_leftpad=_pads([3, 1]))


def test_rows_read_in_place_whatever_their_layout():
    # the cache is read as the contiguous cache it is (no pages, no copy), small or growing a token a step
    # (transformers' dynamic cache), K and V of different layouts, a row stride that is no whole number of tokens
    decode_ops._PLANS.clear()
    for capacity in (12, 300, 301):
        q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [capacity, 10], capacity=capacity)
        leanattn.decode(q, k_cache, v_cache, seqlens, cache_leftpad=_pads([2, 4]))
    assert {(p.meta["PAGE_SIZE"], p.meta["LEFTPAD"]) for p in decode_ops._PLANS.values()} == {(0, True)}
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=12)
    flat = torch.randn(2 * (12 * 2 * 64 + 1), dtype=q.dtype, device=DEV)
    odd = flat.as_strided((2, 12, 2, 64), (12 * 2 * 64 + 1, 128, 64, 1))
    odd.copy_(k_cache)
    head_major = v_cache.transpose(1, 2).contiguous().transpose(1, 2)
    pads = _pads([1, 2])
    out, lse = leanattn.decode(q, odd, head_major, seqlens, return_lse=True, cache_leftpad=pads)
    ref_out, ref_lse = reference.decode(q, k_cache, v_cache, seqlens, cache_leftpad=pads)
    assert_states_match("layouts", q, out, lse, ref_out, ref_lse)


def test_errors():
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [5, 9], capacity=12, page_size=4)
    pads = _pads([1, 2])
    with pytest.raises(ValueError, match=r"cache_leftpad: expected None with a paged cache \(block_table\)"):
        leanattn.decode(q, k_cache, v_cache, seqlens, bt, cache_leftpad=pads)
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=12)
    cases = [
        (pads.long(), seqlens, TypeError, "cache_leftpad: expected dtype torch.int32"),
        (pads[:1], seqlens, ValueError, r"cache_leftpad: expected shape \(2,\) \(batch size of q\), got \(1,\)"),
        (pads[None], seqlens, ValueError, "cache_leftpad: expected a 1-D tensor"),
        (_pads([6, 0]), seqlens, ValueError, r"cache_leftpad: expected 0 <= cache_leftpad <= cache_seqlens .* a "
                                             r"minimum of 0 and 1 sequences past it"),
        (_pads([-1, 0]), seqlens, ValueError, "cache_leftpad: expected 0 <= cache_leftpad <= cache_seqlens"),
        (_pads([13, 0]), None, ValueError, r"cache_leftpad: expected 0 <= cache_leftpad <= the capacity 12"),
    ]
    for bad, lens, cls, msg in cases:
        with pytest.raises(cls, match=msg):
            leanattn.decode(q, k_cache, v_cache, lens, cache_leftpad=bad, validate=True)
    with pytest.raises(ValueError, match=r"k_cache: expected a contiguous cache \(B, N, Hkv, D\) of N >= 1"):
        leanattn.decode(q, k_cache[:, :0], v_cache[:, :0], seqlens * 0, cache_leftpad=pads * 0)
