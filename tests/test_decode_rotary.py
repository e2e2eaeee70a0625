"""``decode(k=, v=, rotary_cos=, rotary_sin=)``: the new keys and the query rotated before the keys are written and
attended (flash-attn's ``flash_attn_with_kvcache`` with rotary tables), against the float64 reference rotary written
as a complex product, over a float64 cache written by hand.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_rel_close, assert_states_match
from test_decode_append import DEV, _written_by_hand, make_inputs


def _tables(n, rotary_dim, dtype=torch.float32):
    inv = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    return angles.cos().to(dtype).to(DEV), angles.sin().to(dtype).to(DEV)


def _positions(lens, n):
    return lens.long()[:, None] + torch.arange(n, device=DEV)[None, :]


@pytest.mark.parametrize("page_size", [None, 4], ids=["contiguous", "paged4"])
# each form of query and new tokens meets one rotary width and pairing (their full product cost CI 20 s)
@pytest.mark.parametrize("T,qlen,mode,rotary_dim,interleaved", [
    (1, 0, "plain", 64, False), (2, 2, "causal", 32, True), (2, 2, "plain", 16, False), (3, 3, "window", 64, True),
    (2, 0, "plain", 32, False), (1, 3, "causal", 16, True), (2, 2, "wide", 64, False), (1, 0, "plain", 32, True)],
    ids=["one", "two-causal", "two-plain", "three-window", "3d-q-two-new", "three-q-one-new", "window-of-capacity-1",
         "one-interleaved"])
def test_matches_the_reference_rotary(page_size, T, qlen, mode, rotary_dim, interleaved):
    lens = [0, 5, 8 - T, 13]
    q, k_cache, v_cache, seqlens, bt = make_inputs(4, 4, 2, 64, lens, capacity=20, page_size=page_size)
    if qlen:
        q = torch.randn(4, qlen, 4, 64, dtype=q.dtype, device=DEV)
    kn, vn = (torch.randn(4, T, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    cos, sin = _tables(24, rotary_dim)
    windows = {"window": 4, "wide": 19}  # 19: one short of the capacity, still a window to flash-attn's rule
    kw = dict(causal=True) if mode == "causal" else dict(window_left=windows[mode]) if mode in windows else {}
    q_in, kn_in = q.clone(), kn.clone()
    out, lse = leanattn.decode(q, k_cache, v_cache, seqlens, bt, return_lse=True, k=kn, v=vn, rotary_cos=cos,
                               rotary_sin=sin, rotary_interleaved=interleaved, **kw)
    assert torch.equal(q, q_in) and torch.equal(kn, kn_in)  # the inputs are not rotated in place
    k_rot = reference.rotary(kn, cos, sin, _positions(seqlens, T), interleaved)
    # flash-attn's rule: the query tokens at their own positions when causal or windowed, else all at the lengths
    q4 = q if qlen else q[:, None]
    q_pos = _positions(seqlens, q4.shape[1]) if kw else seqlens.long()[:, None].expand(-1, q4.shape[1])
    q_rot = reference.rotary(q4, cos, sin, q_pos, interleaved)
    q_rot = q_rot if qlen else q_rot[:, 0]
    want_k = _written_by_hand(k_cache.double(), k_rot, seqlens, bt)
    want_v = _written_by_hand(v_cache.double(), vn.double(), seqlens, bt)
    assert_rel_close("keys written", k_cache.double(), want_k, TOLERANCE[q.dtype])
    ref_out, ref_lse = reference.decode(q_rot, want_k, want_v, seqlens + T, bt, **kw)
    assert_states_match(f"rotary {rotary_dim}", q, out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("table_dtype", [torch.float16, torch.float32])
def test_with_other_options(table_dtype):
    # the split schedule, sinks, ALiBi and a soft cap beside the rotary; tables in q's dtype, as flash-attn takes them
    q, k_cache, v_cache, seqlens, bt = make_inputs(3, 4, 2, 64, [6, 0, 11], capacity=16, page_size=8)
    kn, vn = (torch.randn(3, 1, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    cos, sin = _tables(16, 32, table_dtype)
    opts = dict(sinks=torch.randn(4, device=DEV), alibi_slopes=torch.rand(4, device=DEV), softcap=20.0)
    out, lse = leanattn.decode(q, k_cache, v_cache, seqlens, bt, return_lse=True, schedule="split", k=kn, v=vn,
                               rotary_cos=cos, rotary_sin=sin, rotary_interleaved=True, **opts)
    k_rot = reference.rotary(kn, cos, sin, _positions(seqlens, 1), True)
    q_rot = reference.rotary(q[:, None], cos, sin, _positions(seqlens, 1), True)[:, 0]
    want_k = _written_by_hand(k_cache.double(), k_rot, seqlens, bt)
    want_v = _written_by_hand(v_cache.double(), vn.double(), seqlens, bt)
    ref_out, ref_lse = reference.decode(q_rot, want_k, want_v, seqlens + 1, bt, **opts)
    assert_states_match("options", q, out, lse, ref_out, ref_lse)


def test_rotated_steps_equal_a_rotated_prefill():
    # a prompt rotated at its positions, then three decode steps that rotate their own token: attention over the
    # whole sequence rotated at once
    L, D = 9, 64
    cos, sin = _tables(16, D)
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 4, D, [L, L], capacity=16)
    keys = torch.randn(2, 12, 4, D, dtype=q.dtype, device=DEV)
    values = torch.randn_like(keys)
    pos = torch.arange(12, device=DEV)[None].expand(2, -1)
    rotated = reference.rotary(keys, cos, sin, pos)
    k_cache[:, :L] = rotated[:, :L].to(q.dtype)
    v_cache[:, :L] = values[:, :L]
    for step in range(3):
        q = torch.randn(2, 4, D, dtype=q.dtype, device=DEV)
        out = leanattn.decode(q, k_cache, v_cache, seqlens, k=keys[:, L + step:L + step + 1],
                              v=values[:, L + step:L + step + 1], rotary_cos=cos, rotary_sin=sin)
        n = L + step + 1
        q_rot = reference.rotary(q[:, None], cos, sin, torch.full((2, 1), n - 1, device=DEV))[:, 0]
        ref = reference.decode(q_rot, rotated[:, :n], values[:, :n].double(), seqlens + 1)[0]
        assert_rel_close(f"step {step}", out, ref, TOLERANCE[q.dtype])
        seqlens += 1


def test_errors():
    q, k_cache, v_cache, seqlens, _ = make_inputs(2, 4, 2, 64, [5, 9], capacity=12)
    kn = torch.randn(2, 1, 2, 64, dtype=q.dtype, device=DEV)
    cos, sin = _tables(12, 32)
    new = dict(k=kn, v=kn)
    cases = [
        (dict(rotary_cos=cos, **new), ValueError, "rotary_sin: expected a tensor when rotary_cos is given"),
        (dict(rotary_sin=sin, **new), ValueError, "rotary_cos: expected a tensor when rotary_sin is given"),
        (dict(rotary_cos=cos, rotary_sin=sin), ValueError, "rotary_cos: expected new keys k and values v"),
        (dict(rotary_cos=cos, rotary_sin=sin[:, :8], **new), ValueError, r"rotary_sin: expected shape \(12, 16\)"),
        (dict(rotary_cos=cos[0], rotary_sin=sin[0], **new), ValueError, "rotary_cos: expected a 2-D tensor"),
        (dict(rotary_cos=cos.int(), rotary_sin=sin, **new), TypeError, "rotary_cos: expected a floating dtype"),
        (dict(rotary_cos=cos, rotary_sin=sin.to("meta"), **new), ValueError,
         r"rotary_sin: expected device .+ \(q's\), got meta"),
        (dict(rotary_cos=torch.ones(12, 40, device=DEV), rotary_sin=torch.ones(12, 40, device=DEV), **new),
         ValueError, r"0 < rotary_dim <= 64 \(q's head dim\), got \(12, 40\)"),
        (dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=1, **new), TypeError,
         "rotary_interleaved: expected a bool, got int"),
        # the second sequence's new token at position 9 + 1 > 9 rows
        (dict(rotary_cos=cos[:9], rotary_sin=sin[:9], validate=True, **new), ValueError,
         "rotary_cos: expected a row for every position rotated .* got 9 rows for a position of 9"),
    ]
    for kw, cls, msg in cases:
        with pytest.raises(cls, match=msg):
            leanattn.decode(q, k_cache, v_cache, seqlens, **kw)
    fp8 = k_cache.to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="rotary_cos: expected k_cache in q's dtype torch.float16"):
        leanattn.decode(q, fp8, fp8.clone(), seqlens, k=kn.to(fp8.dtype), v=kn.to(fp8.dtype), rotary_cos=cos,
                        rotary_sin=sin)


def test_compile_fullgraph():
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [3, 10], capacity=16, page_size=4)
    cos, sin = _tables(16, 64)
    kn, vn = (torch.randn(2, 1, 2, 64, dtype=q.dtype, device=DEV) for _ in range(2))
    want = leanattn.decode(q, k_cache.clone(), v_cache.clone(), seqlens, bt, k=kn, v=vn, rotary_cos=cos,
                           rotary_sin=sin)
    torch._dynamo.reset()
    step = torch.compile(lambda *a: leanattn.decode(*a[:5], k=a[5], v=a[6], rotary_cos=a[7], rotary_sin=a[8]),
                         fullgraph=True)
    out = step(q, k_cache, v_cache, seqlens, bt, kn, vn, cos, sin)
    assert_rel_close("compiled", out, want.double(), TOLERANCE[q.dtype])


@pytest.mark.skipif(DEV != "cuda", reason="needs CUDA")
def test_gpu_cuda_graph_rotates_at_each_replays_lengths():
    torch.manual_seed(0)
    q, k_cache, v_cache, seqlens, bt = make_inputs(3, 32, 8, 128, [100, 0, 4000], dtype=torch.bfloat16, capacity=4096,
                                                   page_size=16)
    cos, sin = _tables(4096, 128, torch.bfloat16)
    kn, vn = (torch.randn(3, 1, 8, 128, dtype=q.dtype, device=DEV) for _ in range(2))
    out = torch.empty_like(q)
    kw = dict(k=kn, v=vn, rotary_cos=cos, rotary_sin=sin, out=out)
    leanattn.decode(q, k_cache, v_cache, seqlens, bt, **kw)  # warm-up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        leanattn.decode(q, k_cache, v_cache, seqlens, bt, **kw)
    for new in ([101, 1, 4001], [7, 3000, 2]):
        seqlens.copy_(torch.tensor(new, dtype=torch.int32))
        kn.normal_()
        vn.normal_()
        k_rot = reference.rotary(kn, cos, sin, _positions(seqlens, 1))
        q_rot = reference.rotary(q[:, None], cos, sin, _positions(seqlens, 1))[:, 0]
        want_k = _written_by_hand(k_cache.double(), k_rot, seqlens, bt)
        want_v = _written_by_hand(v_cache.double(), vn.double(), seqlens, bt)
        g.replay()
        torch.cuda.synchronize()
        assert_rel_close(f"keys written {new}", k_cache.double(), want_k, 1e-2)
        assert_rel_close(f"replay {new}", out, reference.decode(q_rot, want_k, want_v, seqlens + 1, bt)[0], 1e-2)
