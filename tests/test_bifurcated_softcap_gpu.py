"""GPU-only tests of ``bifurcated_decode`` and ``cascade_decode`` with logit soft-capping: bf16 at realistic sizes on
the path an uncapped call takes, the Gluon prefix of the overlap path in each of its forms (Hopper), the one-sample
(concat) paths, CUDA-graph replay with new lengths. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close
from test_bifurcated_gpu import HOPPER, REPLAY_LENGTHS, _path, check_cascade, check_replays, inputs, multi_prompt_paged

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CAP, SCALE = 30.0, 0.3  # softmax scale 0.3 over randn: scores of order 10-20 against the cap (Gemma-2's is 50)


def check(q, pk, pv, k, v, sl, bt=None, plens=None, ids=None, name="softcap"):
    from leanattn.ops import bifurcated as bif
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, SCALE, return_lse=True, softcap=CAP)
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, SCALE, softcap=CAP)
    assert_rel_close(name, out, ref, TOLERANCE[q.dtype])
    assert_lse_close(name + " lse", lse, ref_lse, 1e-2)
    return next(reversed(bif._PLANS.values()))


@pytest.mark.parametrize("n,hq,hkv,d,overlap", [(16, 32, 8, 128, False), (64, 32, 8, 128, True),
                                                (32, 32, 32, 128, False), (8, 16, 8, 256, False),
                                                (16, 32, 32, 64, False)])
def test_softcap_single_prompt(n, hq, hkv, d, overlap):
    # the overlap path from 256 stacked rows on Hopper; MHA x16, which overlaps uncapped, on the states path
    own = torch.randint(0, 600, (n,)).tolist()
    own[0] = 0
    plan = check(*inputs(n, hq, hkv, d, 9000, own), name=f"{n} x {hq}/{hkv} D={d}")
    assert plan.path == ("overlap" if overlap and HOPPER else "states")


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("n,hq,hkv,d,P", [(64, 32, 8, 128, 8192), (5, 32, 8, 64, 1000), (33, 32, 4, 64, 63),
                                          (100, 32, 32, 128, 4097)])
@pytest.mark.parametrize("warps,pingpong", [(4, False), (8, False), (12, False), (12, True)])
def test_softcap_overlap(monkeypatch, n, hq, hkv, d, P, warps, pingpong):
    # the Gluon prefix at 64 rows a program, 128 over two warp groups, 128 warp-specialized, with ping-pong turns;
    # a ragged last tile, with and without own tokens
    from leanattn import runtime
    from leanattn.ops import bifurcated as bif, bifurcated_overlap as ov
    monkeypatch.setattr(ov, "WS_PINGPONG", pingpong)
    monkeypatch.setattr(bif, "_PLANS", runtime.PlanCache())
    own = torch.randint(0, 300, (n,)).tolist()
    own[0] = 0
    args = inputs(n, hq, hkv, d, P, own)
    with _path(4, warps):
        plan = check(*args, name=f"overlap {n} {hq}/{hkv} D={d} P={P} warps {warps}")
        assert plan.path == "overlap" and plan.info["prefix_warp_specialized"] == (warps == 12)
        plan = check(*args[:3], None, None, None, name=f"overlap prefix only {n} {hq}/{hkv} D={d} P={P}")
        assert plan.path == "overlap"


def test_softcap_multi_prompt_paged():
    check(*multi_prompt_paged(inputs, 16), name="multi-prompt paged")


@pytest.mark.parametrize("hq,hkv", [(32, 8), (32, 32)])
def test_softcap_one_sample(hq, hkv):
    # one sample: even pieces of each row (one prompt) and the persistent stream-K kernel (one sample per prompt)
    plan = check(*inputs(1, hq, hkv, 128, 20000, [3000]), name="one sample")
    assert plan.path == "concat"
    ids = torch.tensor([1, 0, 2], dtype=torch.int32, device="cuda")
    q, pk, pv, k, v, sl = inputs(3, hq, hkv, 128, 9000, [5000, 0, 77], G=3)
    plan = check(q, pk, pv, k, v, sl, ids=ids, name="one sample per prompt")
    assert plan.path == "concat"


def test_softcap_cascade():
    check_cascade(inputs, softmax_scale=SCALE, softcap=CAP)


def test_softcap_cuda_graph_new_lengths():
    check_replays(*inputs(16, 32, 8, 128, 8192, [256] * 16), REPLAY_LENGTHS, softmax_scale=SCALE, softcap=CAP)
