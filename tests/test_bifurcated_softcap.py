"""``bifurcated_decode`` and ``cascade_decode`` with logit soft-capping (``softcap``, Gemma-2) against the float64
reference: the real kernels under the interpreter, on every path that takes a cap, and its errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close
from test_bifurcated import (forced_path_inputs, ids_tensor, make_inputs, make_prefix, multi_prompt_paged_inputs,
                             one_sample_cases, shared_prefix_inputs)


def check(q, pk, pv, k, v, lens=None, bt=None, plens=None, ids=None, scale=2.0, softcap=3.0, name="", **kw):
    """``bifurcated_decode`` against the reference with the same cap; returns the plan the call ran."""
    from leanattn.ops import bifurcated as bif
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, scale, return_lse=True,
                                          softcap=softcap, **kw)
    ref, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, scale, softcap=softcap)
    assert_rel_close(name, out, ref, TOLERANCE[q.dtype])
    assert_lse_close(name, lse, ref_lse, atol=TOLERANCE[q.dtype])
    return next(reversed(bif._PLANS.values()))


@pytest.mark.parametrize("softcap", [0.5, 5.0, 1e6])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16], ids=["fp16", "fp32", "bf16"])
def test_softcap_shared_prefix(softcap, dtype):
    # scores of order 10 (softmax scale 2): a cap of 0.5 flattens them, one of 1e6 leaves them as they are
    plan = check(*shared_prefix_inputs(dtype), softcap=softcap, name=f"cap {softcap}")
    assert plan.path == "states" and plan.meta["SOFTCAP"]


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 1, 128), (4, 2, 256)])
def test_softcap_multi_prompt_paged(hq, hkv, d):
    # unequal groups (a prompt of 9 samples, one of 1, an empty one), paged own caches, prefixes of unequal length;
    # a small grid and 3 prefix splits cut the rows into pieces
    args = multi_prompt_paged_inputs(hq, hkv, d)
    for grid in (0, 5):
        check(*args, name=f"{hq}/{hkv} D={d} grid {grid}", num_programs=grid)


@pytest.mark.parametrize("even", ["1", "0"], ids=["even-pieces", "persistent"])
@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "page16"])
def test_softcap_one_sample(monkeypatch, even, page_size):
    # one sample per prompt: the decode-style kernels over prefix + own tokens (concat path)
    for i, (args, kw, name) in enumerate(one_sample_cases(monkeypatch, even, page_size)):
        plan = check(*args, name=name, **kw)
        assert plan.path == "concat" and (i > 0 or (plan.even > 0) is (even == "1"))


@pytest.mark.parametrize("path", ["1", "2"], ids=["split", "fused"])
def test_softcap_other_paths_give_way_to_states(monkeypatch, path):
    # the split and fused paths (benchmark options, LEANATTN_BIFURCATED_CONFIG's tenth field) take no cap: a
    # capped call runs on the states path, an uncapped one where it was asked to
    from leanattn.ops import bifurcated as bif
    for args in forced_path_inputs(monkeypatch, path):
        assert check(*args, name=f"path {path}").path == "states"
        check(*args, softcap=0.0, name=f"path {path}, no cap")
        assert next(reversed(bif._PLANS.values())).path == {"1": "split", "2": "fused"}[path]


def test_softcap_cascade():
    # system prompt for every sample, one of 3 documents per group, each sample's own tokens (paged): every level
    # capped before the merge, so the result is attention over the concatenation with its scores capped
    ids = ids_tensor([0, 0, 1, 2, 2, 2])
    q, k, v, lens, bt = make_inputs(6, 8, 2, 64, [4, 0, 20, 16, 1, 33], page_size=16)
    sk, sv, _ = make_prefix(None, 21, 2, 64)
    dk, dv, dlens = make_prefix(3, 30, 2, 64, plens=[30, 0, 11])
    levels = [(sk, sv), (dk, dv, dlens, ids)]
    for own in ((k, v, lens, bt), (None, None, None, None)):
        out, lse = leanattn.cascade_decode(q, levels, *own, softmax_scale=2.0, return_lse=True, softcap=3.0)
        ref, ref_lse = reference.cascade_decode(q, levels, *own, softmax_scale=2.0, softcap=3.0)
        assert_rel_close("cascade", out, ref, TOLERANCE[q.dtype])
        assert_lse_close("cascade", lse, ref_lse, atol=TOLERANCE[q.dtype])


def test_softcap_zero_is_plain():
    # 0 is no capping: a call without it takes the same plan (no SOFTCAP) and gives the uncapped reference; a cap
    # makes a plan of its own and changes the result
    from leanattn.ops import bifurcated as bif
    bif._PLANS.clear()
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [30, 0, 45])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    plain = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, softmax_scale=2.0, softcap=0.0)
    assert len(bif._PLANS) == 1 and not next(iter(bif._PLANS.values())).meta["SOFTCAP"]
    assert_rel_close("softcap 0", plain, reference.bifurcated_decode(q, pk, pv, k, v, lens, softmax_scale=2.0)[0],
                     TOLERANCE[q.dtype])
    leanattn.bifurcated_decode(q, pk, pv, k, v, lens, softmax_scale=2.0)
    assert len(bif._PLANS) == 1
    assert not torch.equal(leanattn.bifurcated_decode(q, pk, pv, k, v, lens, softmax_scale=2.0, softcap=1.0), plain)
    assert len(bif._PLANS) == 2


def test_softcap_compiled():
    # the cap is an argument of the custom op: torch.compile(fullgraph=True) keeps it
    q, k, v, lens, _ = make_inputs(3, 4, 2, 64, [9, 0, 17])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    fn = torch.compile(lambda *a: leanattn.bifurcated_decode(*a, softmax_scale=2.0, softcap=3.0), fullgraph=True)
    ref, _ = reference.bifurcated_decode(q, pk, pv, k, v, lens, softmax_scale=2.0, softcap=3.0)
    assert_rel_close("compiled", fn(q, pk, pv, k, v, lens), ref, TOLERANCE[q.dtype])


@pytest.mark.parametrize("value,error", [(-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                                         (3e38, ValueError), ("1", TypeError), (True, TypeError)])
def test_softcap_errors(value, error):
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    with pytest.raises(error, match="softcap"):
        leanattn.bifurcated_decode(q, pk, pv, k, v, lens, softcap=value)
    with pytest.raises(error, match="softcap"):
        leanattn.cascade_decode(q, [(pk, pv)], k, v, lens, softcap=value)

