"""``bifurcated_decode`` and ``cascade_decode`` with ``k=, v=, rotary_cos=, rotary_sin=``: the new own keys and the
query rotated at their positions in the whole sequence (the shared levels' tokens before the own ones), against the
float64 reference rotary over a cache written by hand.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_rel_close, assert_states_match
from test_decode_append import DEV, _written_by_hand, make_inputs
from test_decode_rotary import _positions, _tables


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEV)


@pytest.mark.parametrize("form,rotary_dim,interleaved", [
    ("one prompt", 64, False), ("prompts", 32, True), ("tokens causal", 16, False), ("tokens plain", 64, True),
    ("window", 32, False), ("paged prefix", 64, False), ("cascade", 32, True), ("cascade one level", 16, False),
    ("tokens window", 32, True), ("tokens wide window", 16, False), ("prefix lens", 64, True)])
@pytest.mark.parametrize("page_size", [None, 4], ids=["contiguous", "paged4"])
def test_matches_the_reference_rotary(form, rotary_dim, interleaved, page_size):
    lens = [3, 0, 12, 7]
    T = 2
    q, k_cache, v_cache, seqlens, bt = make_inputs(4, 8, 2, 64, lens, capacity=16, page_size=page_size)
    if form.startswith("tokens"):  # two query tokens a sample
        q = torch.randn(4, 2, 8, 64, dtype=q.dtype, device=DEV)
    kn, vn = (torch.randn(4, T, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    cos, sin = _tables(64, rotary_dim)
    rot = dict(k=kn, v=vn, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved)
    # windows: 9 keys; 20, longer than the own capacity (16) but not prefix and own together (36), so the query tokens
    # still turn at their own positions; 40, every key, so they all turn at the first's
    windows = {"window": 9, "tokens window": 20, "tokens wide window": 40}
    kw = dict(causal=True) if form == "tokens causal" else dict(window_left=windows[form]) if form in windows else {}
    if form.startswith("cascade"):
        system = torch.randn(2, 5, 2, 64, dtype=q.dtype, device=DEV)  # 5 keys every sample reads
        docs = torch.randn(2, 3, 9, 2, 64, dtype=q.dtype, device=DEV)  # a document per group, of 9, 4 or 6 keys
        doc_level = (docs[0], docs[1], _i32([9, 4, 6]), _i32([2, 0, 1, 1]))
        levels = [doc_level] if form == "cascade one level" else [(system[0], system[1]), doc_level]
        shared = torch.tensor([6, 9, 4, 4], device=DEV) + (0 if len(levels) == 1 else 5)
        out, lse = leanattn.cascade_decode(q, levels, k_cache, v_cache, seqlens, bt, return_lse=True, **rot)
    else:
        if form == "prompts":
            pk, pv = (torch.randn(2, 20, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
            kw.update(prefix_lens=_i32([20, 11]), prefix_ids=_i32([1, 0, 1, 1]))
            shared = torch.tensor([11, 20, 11, 11], device=DEV)
        elif form == "paged prefix":  # two prompts of 10 and 7 keys in a pool of pages of 4
            pk, pv = (torch.randn(8, 4, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
            kw.update(prefix_block_table=_i32([[5, 0, 3], [7, 2, 1]]), prefix_lens=_i32([10, 7]),
                      prefix_ids=_i32([0, 0, 1, 0]))
            shared = torch.tensor([10, 10, 7, 10], device=DEV)
        else:
            pk, pv = (torch.randn(20, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
            shared = torch.full((4,), 20, device=DEV)
            if form == "prefix lens":  # one prefix of 13 of its 20 keys
                kw.update(prefix_lens=_i32([13]))
                shared = torch.full((4,), 13, device=DEV)
        out, lse = leanattn.bifurcated_decode(q, pk, pv, k_cache, v_cache, seqlens, bt, return_lse=True, **rot, **kw)
    start = seqlens.long() + shared  # the first new token's position in the whole sequence
    k_rot = reference.rotary(kn, cos, sin, _positions(start, T), interleaved)
    q4 = q if q.dim() == 4 else q[:, None]
    # flash-attn's rule: the query tokens at their own positions when causal or windowed, else all at the first's
    q_pos = _positions(start, q4.shape[1]) if kw.get("causal") or kw.get("window_left", 99) < 36 else \
        start[:, None].expand(-1, q4.shape[1])
    q_rot = reference.rotary(q4, cos, sin, q_pos, interleaved)
    q_rot = q_rot if q.dim() == 4 else q_rot[:, 0]
    want_k = _written_by_hand(k_cache.double(), k_rot, seqlens, bt)
    want_v = _written_by_hand(v_cache.double(), vn.double(), seqlens, bt)
    assert_rel_close("keys written", k_cache.double(), want_k, TOLERANCE[q.dtype])
    if form.startswith("cascade"):
        ref_out, ref_lse = reference.cascade_decode(q_rot, levels, want_k, want_v, seqlens + T, bt)
    else:
        ref_out, ref_lse = reference.bifurcated_decode(q_rot, pk, pv, want_k, want_v, seqlens + T, bt, **kw)
    assert_states_match(form, q, out, lse, ref_out, ref_lse)


def test_samples_equal_decode_over_the_whole_sequence():
    # each sample's step over prefix + own tokens, rotated as one sequence: decode over the concatenation rotated
    # at the same positions gives the same state
    P, D = 11, 64
    cos, sin = _tables(40, D)
    q, k_cache, v_cache, seqlens, _ = make_inputs(3, 4, 2, D, [4, 0, 9], capacity=12)
    pk, pv = (torch.randn(P, 2, D, dtype=q.dtype, device=DEV) for _ in range(2))
    kn, vn = (torch.randn(3, 1, 2, D, dtype=q.dtype, device=DEV) for _ in range(2))
    whole_k = torch.cat([pk[None].expand(3, -1, -1, -1), k_cache], 1).clone()
    whole_v = torch.cat([pv[None].expand(3, -1, -1, -1), v_cache], 1).clone()
    out = leanattn.bifurcated_decode(q, pk, pv, k_cache, v_cache, seqlens, k=kn, v=vn, rotary_cos=cos,
                                     rotary_sin=sin)
    want = leanattn.decode(q, whole_k, whole_v, seqlens + P, k=kn, v=vn, rotary_cos=cos, rotary_sin=sin)
    assert_rel_close("prefix + own as one sequence", out, want.double(), TOLERANCE[q.dtype])
    assert torch.equal(whole_k[:, P:], k_cache) and torch.equal(whole_v[:, P:], v_cache)


def test_errors():
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=12)
    pk = torch.randn(8, 2, 64, dtype=q.dtype, device=DEV)
    kn = torch.randn(2, 1, 2, 64, dtype=q.dtype, device=DEV)
    cos, sin = _tables(18, 32)
    with pytest.raises(ValueError, match="rotary_cos: expected new keys k and values v"):
        leanattn.bifurcated_decode(q, pk, pk, k_cache, v_cache, seqlens, rotary_cos=cos, rotary_sin=sin)
    with pytest.raises(ValueError, match="rotary_sin: expected a tensor when rotary_cos is given"):
        leanattn.cascade_decode(q, [(pk, pk)], k_cache, v_cache, seqlens, k=kn, v=kn, rotary_cos=cos)
    # the second sample's new token at position 8 + 9 = 17: the tables hold 17 rows
    with pytest.raises(ValueError, match="rotary_cos: expected a row for every position rotated .* got 17 rows for "
                                         "a position of 17"):
        leanattn.bifurcated_decode(q, pk, pk, k_cache, v_cache, seqlens, k=kn, v=kn, rotary_cos=cos[:17],
                                   rotary_sin=sin[:17], validate=True)
    leanattn.bifurcated_decode(q, pk, pk, k_cache, v_cache, seqlens, k=kn, v=kn, rotary_cos=cos, rotary_sin=sin,
                               validate=True)
    fp8 = k_cache.to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="rotary_cos: expected k_cache in q's dtype torch.float16"):
        leanattn.bifurcated_decode(q, pk.to(fp8.dtype), pk.to(fp8.dtype), fp8, fp8.clone(), seqlens,
                                   k=kn.to(fp8.dtype), v=kn.to(fp8.dtype), rotary_cos=cos, rotary_sin=sin)


def test_compile_fullgraph():
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [3, 10], capacity=16, page_size=4)
    pk, pv = (torch.randn(2, 6, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    lens, ids = _i32([6, 2]), _i32([1, 0])
    cos, sin = _tables(24, 64)
    kn, vn = (torch.randn(2, 1, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    want = leanattn.bifurcated_decode(q, pk, pv, k_cache.clone(), v_cache.clone(), seqlens, bt, lens, ids, k=kn,
                                      v=vn, rotary_cos=cos, rotary_sin=sin)
    torch._dynamo.reset()
    step = torch.compile(lambda *a: leanattn.bifurcated_decode(*a[:9], max_group_size=2, k=a[9], v=a[10],
                                                               rotary_cos=a[11], rotary_sin=a[12]), fullgraph=True)
    out = step(q, pk, pv, k_cache, v_cache, seqlens, bt, lens, ids, kn, vn, cos, sin)
    assert_rel_close("compiled", out, want.double(), TOLERANCE[q.dtype])
