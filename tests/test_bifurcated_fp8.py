"""``bifurcated_decode`` and ``cascade_decode`` over float8 caches (e4m3, e5m2) with dequantisation scales, against the
float64 reference over the dequantised caches: the real kernels under the interpreter, on every path that reads
them, and the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close
from test_bifurcated import (forced_path_inputs, ids_tensor, make_inputs, make_prefix, multi_prompt_paged_inputs,
                             one_sample_cases, shared_prefix_inputs)

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
E4M3 = torch.float8_e4m3fn


def quantise(*tensors, fp8=E4M3):
    return tuple(None if t is None else t.to(fp8) for t in tensors)


def check(q, pk, pv, k, v, lens=None, bt=None, plens=None, ids=None, fp8=E4M3, k_scale=0.5, v_scale=3.0, name="",
          **kw):
    """``bifurcated_decode`` over the caches quantised to ``fp8`` against the reference over the stored values times
    the scales; returns the plan the call ran."""
    from leanattn.ops import bifurcated as bif
    pk, pv, k, v = quantise(pk, pv, k, v, fp8=fp8)
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True, k_scale=k_scale,
                                          v_scale=v_scale, **kw)
    ref, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, kw.get("softmax_scale"),
                                               kw.get("softcap", 0.0), k_scale, v_scale)
    assert out.dtype == q.dtype
    assert_rel_close(name, out, ref, TOLERANCE[q.dtype])
    assert_lse_close(name, lse, ref_lse, atol=TOLERANCE[q.dtype])
    return next(reversed(bif._PLANS.values()))


@pytest.mark.parametrize("fp8", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16], ids=["fp16", "fp32", "bf16"])
def test_fp8_shared_prefix(fp8, dtype):
    # one prompt, ragged own tokens (an empty one among them): the states path, prefix rows stacked
    plan = check(*shared_prefix_inputs(dtype), fp8=fp8, name=f"{fp8} {dtype}")
    assert plan.path == "states"


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 1, 128), (4, 2, 256)])
def test_fp8_multi_prompt_paged(hq, hkv, d):
    # unequal groups (9 samples, 1, none, 2), paged own caches, prefixes of unequal length; a small grid
    args = multi_prompt_paged_inputs(hq, hkv, d)
    for grid in (0, 5):
        check(*args, k_scale=1.7, v_scale=0.25, name=f"{hq}/{hkv} D={d} grid {grid}", num_programs=grid)


@pytest.mark.parametrize("even", ["1", "0"], ids=["even-pieces", "persistent"])
@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "page16"])
def test_fp8_one_sample(monkeypatch, even, page_size):
    # one sample per prompt: the concat path's kernels over prefix + own tokens
    for i, (args, kw, name) in enumerate(one_sample_cases(monkeypatch, even, page_size)):
        plan = check(*args, fp8=torch.float8_e5m2, name=name, **kw)
        assert plan.path == "concat" and (i > 0 or (plan.even > 0) is (even == "1"))


def test_fp8_prefix_only_and_empty_prefix():
    # no own cache (attention over the prefix alone), and an empty prefix (own tokens alone): the dummy tensors that
    # stand in for the absent side are float8 too
    q, k, v, lens, _ = make_inputs(4, 8, 2, 64, [5, 0, 12, 30])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    check(q, pk, pv, None, None, name="prefix only")
    check(q, pk[:0], pv[:0], k, v, lens, name="empty prefix")
    check(q[:1], pk[:0], pv[:0], k[:1], v[:1], lens[:1], name="empty prefix, one sample")


@pytest.mark.parametrize("path", ["1", "2"], ids=["split", "fused"])
def test_fp8_other_paths_give_way_to_states(monkeypatch, path):
    # the split and fused paths (benchmark options, LEANATTN_BIFURCATED_CONFIG's tenth field) read no float8 caches
    for args in forced_path_inputs(monkeypatch, path):
        assert check(*args, name=f"path {path}").path == "states"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fp8_softcap(dtype):
    # bf16 queries: scaled into fp16 rows (attend.fp8_query) before the capped scores, on the states and concat paths
    q, k, v, lens, bt = make_inputs(5, 8, 2, 64, [3, 0, 40, 17, 25], page_size=16, dtype=dtype)
    pk, pv, _ = make_prefix(None, 45, 2, 64)
    check(q, pk, pv, k, v, lens, bt, name="softcap", softcap=2.0, softmax_scale=1.0)
    check(q[:1], pk, pv, k, v, lens[:1], bt[:1], name="softcap, one sample", softcap=2.0, softmax_scale=1.0)


def test_fp8_cascade():
    # system prompt for every sample, one of 3 documents per group, each sample's own tokens (paged)
    ids = ids_tensor([0, 0, 1, 2, 2, 2])
    q, k, v, lens, bt = make_inputs(6, 8, 2, 64, [4, 0, 20, 16, 1, 33], page_size=16)
    sk, sv, _ = make_prefix(None, 21, 2, 64)
    dk, dv, dlens = make_prefix(3, 30, 2, 64, plens=[30, 0, 11])
    sk, sv, dk, dv, k, v = quantise(sk, sv, dk, dv, k, v, fp8=torch.float8_e5m2)
    levels = [(sk, sv), (dk, dv, dlens, ids)]
    for own in ((k, v, lens, bt), (None, None, None, None)):
        out, lse = leanattn.cascade_decode(q, levels, *own, return_lse=True, k_scale=0.5, v_scale=2.0)
        ref, ref_lse = reference.cascade_decode(q, levels, *own, k_scale=0.5, v_scale=2.0)
        assert_rel_close("cascade", out, ref, TOLERANCE[q.dtype])
        assert_lse_close("cascade", lse, ref_lse, atol=TOLERANCE[q.dtype])
    out = leanattn.cascade_decode(q, [], k, v, lens, bt, k_scale=0.5, v_scale=2.0)
    assert_rel_close("own only", out, reference.cascade_decode(q, [], k, v, lens, bt, k_scale=0.5, v_scale=2.0)[0],
                     TOLERANCE[q.dtype])


def test_fp8_unit_scales_match_the_dequantised_cache():
    # scales of 1.0 by default; a scaled call matches the call over the caches dequantised into fp16 (every e4m3
    # value and its product by a power of two is exact in fp16)
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [30, 0, 45])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    pk8, pv8, k8, v8 = quantise(pk, pv, k, v)
    a = leanattn.bifurcated_decode(q, pk8, pv8, k8, v8, lens, k_scale=0.5, v_scale=4.0)
    b = leanattn.bifurcated_decode(q, pk8.half() * 0.5, pv8.half() * 4.0, k8.half() * 0.5, v8.half() * 4.0, lens)
    assert_rel_close("scaled against dequantised", a, b.double(), TOLERANCE[q.dtype])
    c = leanattn.bifurcated_decode(q, pk8, pv8, k8, v8, lens)
    assert_rel_close("unit scales", c, reference.bifurcated_decode(q, pk8, pv8, k8, v8, lens)[0], TOLERANCE[q.dtype])


def test_fp8_errors():
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    pk, pv, _ = make_prefix(None, 10, 2, 64)
    pk8, pv8, k8, v8 = quantise(pk, pv, k, v)
    with pytest.raises(TypeError, match="prefix_k.*float8_e4m3fn"):
        leanattn.bifurcated_decode(q, pk, pv, k8, v8, lens)  # a 16-bit prefix beside float8 own caches
    with pytest.raises(TypeError, match="prefix_k.*float16"):
        leanattn.bifurcated_decode(q, pk8, pv8, k, v, lens)
    with pytest.raises(TypeError, match="prefix_k.*float8_e4m3fn.*float8_e5m2"):
        leanattn.bifurcated_decode(q, pk8.to(torch.float8_e5m2), pv8.to(torch.float8_e5m2), k8, v8, lens)
    with pytest.raises(TypeError, match="prefix_v"):
        leanattn.bifurcated_decode(q, pk8, pv8.to(torch.float8_e5m2), None, None)
    with pytest.raises(ValueError, match="k_scale.*1.0"):
        leanattn.bifurcated_decode(q, pk, pv, k, v, lens, k_scale=0.5)  # scales dequantise float8 caches only
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="v_scale"):
            leanattn.bifurcated_decode(q, pk8, pv8, k8, v8, lens, v_scale=bad)
    with pytest.raises(TypeError, match="k_scale"):
        leanattn.bifurcated_decode(q, pk8, pv8, k8, v8, lens, k_scale=torch.tensor(0.5))
    with pytest.raises(TypeError, match=r"levels\[1\]_k.*levels\[0\]_k"):
        leanattn.cascade_decode(q, [(pk8, pv8), (pk, pv)])
    with pytest.raises(TypeError, match=r"levels\[0\]_k.*k_cache"):
        leanattn.cascade_decode(q, [(pk, pv)], k8, v8, lens)
    with pytest.raises(ValueError, match="k_scale"):
        leanattn.cascade_decode(q, [(pk, pv)], k, v, lens, k_scale=2.0)
