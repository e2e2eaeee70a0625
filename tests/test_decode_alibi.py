"""ALiBi (``alibi_slopes=``, flash-attn's bias ``-slope * |i - j|``) on ``leanattn.decode`` against the float64
reference: one token, several tokens (causal or not, with windows), packed queries, paged caches, both schedules,
float8 and soft-capped caches, positions far from zero; and the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import alibi_slopes, assert_states_match
from test_decode import make_inputs


# the schedules turn over the layouts, each meeting a contiguous and a paged cache (both on every layout cost CI 19 s)
@pytest.mark.parametrize("hq,hkv,d,page,schedule", [(8, 2, 64, None, "lean"), (4, 4, 128, 4, "split"),
                                                    (6, 1, 64, 1, "lean"), (8, 2, 64, None, "split")], ids=str)
def test_decode(hq, hkv, d, page, schedule):
    # sequence 1 is empty: zeros and -inf whatever the slopes
    q, k, v, sl, bt = make_inputs(4, hq, hkv, d, [30, 0, 7, 19], page_size=page)
    s = alibi_slopes(hq) * 4  # steep enough that the bias moves the result by far more than the tolerance
    kw = dict(schedule=schedule, num_programs=5, num_splits=3)
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, alibi_slopes=s, **kw)
    assert_states_match("one token", q, out, lse, *reference.decode(q, k, v, sl, bt, alibi_slopes=s))
    assert not out[1].any() and torch.isinf(lse[1]).all()
    plain = reference.decode(q, k, v, sl, bt)
    assert (lse[0].double() - plain[1][0]).abs().max() > 0.1, "the slopes were not applied"
    # one row of slopes a sequence
    sb = torch.rand(4, hq, generator=torch.Generator().manual_seed(1))
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, alibi_slopes=sb, **kw)
    assert_states_match("per sequence", q, out, lse, *reference.decode(q, k, v, sl, bt, alibi_slopes=sb))
    q4 = torch.randn(4, 3, hq, d, dtype=q.dtype)
    for causal, window in ((True, -1), (True, 5), (False, 11), (False, -1)):
        out, lse = leanattn.decode(q4, k, v, sl, bt, return_lse=True, alibi_slopes=s, causal=causal,
                                   window_left=window, **kw)
        ref = reference.decode(q4, k, v, sl, bt, alibi_slopes=s, causal=causal, window_left=window)
        assert_states_match(f"3 tokens causal={causal} window={window}", q4, out, lse, *ref)
    cu = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int32)
    qp = torch.randn(6, hq, d, dtype=q.dtype)
    out, lse = leanattn.decode(qp, k, v, sl, bt, return_lse=True, alibi_slopes=sb, causal=True, cu_seqlens_q=cu,
                               max_seqlen_q=3, **kw)
    assert_states_match("packed", qp, out, lse, *reference.decode(qp, k, v, sl, bt, alibi_slopes=sb, causal=True,
                                                                   cu_seqlens_q=cu))


def test_one_token_query_of_four_dims_and_no_lse():
    q, k, v, sl, _ = make_inputs(3, 8, 2, 64, [25, 1, 12])
    s = alibi_slopes(8)
    out = leanattn.decode(q[:, None], k, v, sl, alibi_slopes=s)
    assert out.shape == (3, 1, 8, 64)
    assert torch.equal(out[:, 0], leanattn.decode(q, k, v, sl, return_lse=True, alibi_slopes=s)[0])


def test_float8_softcap_sinks_and_window():
    # the bias is added after the cap (flash-attn's order); sinks merge after it
    q, k, v, sl, _ = make_inputs(3, 8, 2, 64, [25, 1, 12])
    f8 = torch.float8_e4m3fn
    kq, vq = (k / 2).to(f8), (v / 4).to(f8)
    s, sinks = alibi_slopes(8) * 2, torch.randn(8)
    out, lse = leanattn.decode(q, kq, vq, sl, return_lse=True, k_scale=2.0, v_scale=4.0, softcap=3.0,
                               alibi_slopes=s, sinks=sinks, window_left=9)
    ref = reference.decode(q, kq, vq, sl, k_scale=2.0, v_scale=4.0, softcap=3.0, alibi_slopes=s, sinks=sinks,
                           window_left=9)
    assert_states_match("float8 capped", q, out, lse, *ref)


def test_far_positions():
    # keys 30k positions back: the bias is slope times an integer distance, not a difference of large biases; a
    # slope of 1e-4 over the whole range moves the scores by up to 7
    n = 30_000
    q, k, v, sl, bt = make_inputs(1, 4, 1, 64, [n], page_size=256, dtype=torch.float32)
    s = torch.full((4,), 2e-4)
    s[1] = 0.0
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, alibi_slopes=s, num_programs=3)
    assert_states_match("30k keys", q, out, lse, *reference.decode(q, k, v, sl, bt, alibi_slopes=s))


def test_huge_slopes():
    # a slope past 2.3e38 overflows log2 units: bounded, the query's own key keeps bias 0, not inf * 0 = NaN (review)
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [10, 3], dtype=torch.float32)
    s = torch.full((4,), 3e38)
    for schedule in ("lean", "split"):
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True, alibi_slopes=s, schedule=schedule)
        assert_states_match(f"huge slopes {schedule}", q, out, lse, *reference.decode(q, k, v, sl, alibi_slopes=s))


def test_slope_layouts():
    # a plan is made per slope layout: (Hq,) and (B, Hq) calls on one shape do not share one
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [9, 17])
    for s in (alibi_slopes(4), alibi_slopes(4)[None].repeat(2, 1) * torch.tensor([[1.0], [3.0]]),
              torch.rand(4, 2).T):  # (B, Hq) with strides (1, 2): made contiguous
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True, alibi_slopes=s)
        assert_states_match(f"slopes {tuple(s.shape)}", q, out, lse, *reference.decode(q, k, v, sl, alibi_slopes=s))


def test_paper_slopes():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    twelve = alibi_slopes(12).tolist()  # 8 of the power of two below, then the odd ones of 16's
    assert twelve[:8] == alibi_slopes(8).tolist() and twelve[8:] == torch.tensor([2.0 ** -i for i in (0.5, 1.5, 2.5, 3.5)]).tolist()


@pytest.mark.parametrize("slopes,err,match", [
    ([1.0] * 4, TypeError, "alibi_slopes: expected a torch.Tensor"),
    (torch.ones(4, dtype=torch.float16), TypeError, "alibi_slopes: expected dtype torch.float32"),
    (torch.ones(3), ValueError, r"alibi_slopes: expected shape \(4,\) or \(2, 4\)"),
    (torch.ones(3, 4), ValueError, r"alibi_slopes: expected shape \(4,\) or \(2, 4\)"),
    (torch.ones(2, 4, 1), ValueError, r"alibi_slopes: expected shape"),
    (torch.tensor([1.0, float("nan"), 0.0, 0.0]), ValueError, "alibi_slopes: expected finite values"),
    (torch.tensor([1.0, float("inf"), 0.0, 0.0]), ValueError, "alibi_slopes: expected finite values"),
])
def test_errors(slopes, err, match):
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [9, 17])
    with pytest.raises(err, match=match):
        leanattn.decode(q, k, v, sl, alibi_slopes=slopes)


def test_error_device():
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [9, 17])
    with pytest.raises(ValueError, match="alibi_slopes: expected device cpu"):
        leanattn.decode(q, k, v, sl, alibi_slopes=torch.ones(4, device="meta"))


def test_packed_batch_is_the_sequences():
    q, k, v, sl, _ = make_inputs(2, 4, 2, 64, [9, 17])
    cu = torch.tensor([0, 1, 3], dtype=torch.int32)
    qp = torch.randn(3, 4, 64, dtype=q.dtype)
    with pytest.raises(ValueError, match=r"alibi_slopes: expected shape \(4,\) or \(2, 4\)"):
        leanattn.decode(qp, k, v, sl, cu_seqlens_q=cu, max_seqlen_q=2, alibi_slopes=torch.ones(3, 4))


def test_custom_op_and_compile_fullgraph():
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    s = alibi_slopes(4)
    torch.library.opcheck(torch.ops.leanattn.decode.default,
                          (q, k, v, lens, bt, 0.125, "lean", 3, 2, 0, 1.0, 1.0, 0.0, -1, False, None, 0, s))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.decode(*a, alibi_slopes=s, return_lse=True), fullgraph=True)
    out, lse = compiled(q, k, v, lens, bt)
    ref_out, ref_lse = leanattn.decode(q, k, v, lens, bt, alibi_slopes=s, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
