"""GPU-only tests of ``bifurcated_decode`` and ``cascade_decode`` over float8 caches: bf16 queries at realistic sizes
on the path a call takes, the overlap path's Gluon prefix over float8 tiles in each of its forms (Hopper; bf16 and
fp16 queries, ragged last tiles, soft caps), the one-sample (concat) paths, paged own caches, several prompts, and
CUDA-graph replay with new lengths. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close
from test_bifurcated_gpu import HOPPER, REPLAY_LENGTHS, _path, check_cascade, check_replays, multi_prompt_paged

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
KS, VS = 0.05, 0.5  # stored values are the values over these: randn / 0.05 fills e4m3's range


def inputs(n, hq, hkv, d, P, own, fp8=torch.float8_e4m3fn, G=None, qdtype=torch.bfloat16):
    """``qdtype`` queries, float8 prefix ``(P, hkv, d)`` (or ``(G, P, hkv, d)``) and own caches ``(n, max(own), hkv,
    d)``."""
    def cache(*shape, scale):
        return (torch.randn(*shape, device="cuda") / scale).to(fp8)
    q = torch.randn(n, hq, d, dtype=qdtype, device="cuda")
    shape = (P, hkv, d) if G is None else (G, P, hkv, d)
    pk, pv = cache(*shape, scale=KS), cache(*shape, scale=VS)
    k, v = cache(n, max(own), hkv, d, scale=KS), cache(n, max(own), hkv, d, scale=VS)
    return q, pk, pv, k, v, torch.tensor(own, dtype=torch.int32, device="cuda")


def check(q, pk, pv, k, v, sl, bt=None, plens=None, ids=None, name="fp8", **kw):
    from leanattn.ops import bifurcated as bif
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, return_lse=True, k_scale=KS,
                                          v_scale=VS, **kw)
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pk, pv, k, v, sl, bt, plens, ids, k_scale=KS, v_scale=VS,
                                                        softcap=kw.get("softcap", 0.0))
    assert_rel_close(name, out, ref, TOLERANCE[q.dtype])
    assert_lse_close(name + " lse", lse, ref_lse, 1e-2)
    return next(reversed(bif._PLANS.values()))


@pytest.mark.parametrize("fp8", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("n,hq,hkv,d", [(16, 32, 8, 128), (64, 32, 8, 128), (32, 32, 32, 128), (8, 16, 8, 256),
                                        (16, 32, 32, 64)])
def test_fp8_single_prompt(fp8, n, hq, hkv, d):
    # the overlap path where a 16-bit call takes it (on Hopper, D of 64 or 128), the states path otherwise
    from leanattn.ops import bifurcated_overlap as ov
    own = torch.randint(0, 600, (n,)).tolist()
    own[0] = 0
    plan = check(*inputs(n, hq, hkv, d, 9000, own, fp8), name=f"{fp8} {n} x {hq}/{hkv} D={d}")
    overlap = HOPPER and d in (64, 128) and ov.preferred(n * hq // hkv, hq // hkv)
    assert plan.path == ("overlap" if overlap else "states")


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("fp8", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("n,hq,hkv,d,P", [(64, 32, 8, 128, 8192), (5, 32, 8, 64, 1000), (33, 32, 4, 64, 63),
                                          (100, 32, 32, 128, 4097)])
@pytest.mark.parametrize("warps,stages", [(4, 0), (8, 0), (4, 2), (12, 3)])
def test_fp8_overlap(monkeypatch, fp8, n, hq, hkv, d, P, warps, stages):
    # the Gluon prefix over float8 tiles at 64 rows a program, 128 over two warp groups (which the warp-specialized
    # field 12 also gives: float8 takes the plain kernel), a ring of two and three stages; a ragged last tile, a
    # prefix of one tile, with and without own tokens
    from leanattn import runtime
    from leanattn.ops import bifurcated as bif
    monkeypatch.setattr(bif, "_PLANS", runtime.PlanCache())
    own = torch.randint(0, 300, (n,)).tolist()
    own[0] = 0
    args = inputs(n, hq, hkv, d, P, own, fp8)
    name = f"overlap {fp8} {n} {hq}/{hkv} D={d} P={P} warps {warps} stages {stages}"
    with _path(4, warps, stages):
        plan = check(*args, name=name)
        assert plan.path == "overlap" and not plan.info["prefix_warp_specialized"]
        assert plan.info["prefix_rows"] == (64 if warps == 4 else 128)
        plan = check(*args[:3], None, None, None, name=name + " prefix only")
        assert plan.path == "overlap"


@pytest.mark.skipif(not HOPPER, reason="the overlap path runs on sm_90 only")
@pytest.mark.parametrize("n,hq,hkv,P", [(64, 32, 8, 32768), (16, 32, 32, 9000), (256, 32, 8, 1000)])
def test_fp8_overlap_default(n, hq, hkv, P):
    # the overlap path's own choices over float8 (two programs an SM and two stages at GQA 32k x64) with fp16 and
    # bf16 queries, and a soft cap
    for qdtype in (torch.float16, torch.bfloat16):
        args = inputs(n, hq, hkv, 128, P, [256] * n, qdtype=qdtype)
        assert check(*args, name=f"overlap {qdtype} {n} {hq}/{hkv} P={P}").path == "overlap"
    if n * hq // hkv >= 256:
        assert check(*args, name=f"overlap capped {n} {hq}/{hkv} P={P}", softcap=30.0).path == "overlap"


@pytest.mark.parametrize("page", [16, 64])
def test_fp8_multi_prompt_paged(page):
    check(*multi_prompt_paged(inputs, page), name=f"multi-prompt paged {page}")


@pytest.mark.parametrize("hq,hkv", [(32, 8), (32, 32)])
def test_fp8_one_sample(hq, hkv):
    # one sample: even pieces of each row (one prompt) and the persistent stream-K kernel (one sample per prompt)
    assert check(*inputs(1, hq, hkv, 128, 20000, [3000]), name="one sample").path == "concat"
    ids = torch.tensor([1, 0, 2], dtype=torch.int32, device="cuda")
    q, pk, pv, k, v, sl = inputs(3, hq, hkv, 128, 9000, [5000, 0, 77], G=3)
    assert check(q, pk, pv, k, v, sl, ids=ids, name="one sample per prompt").path == "concat"


def test_fp8_softcap_and_prefix_only():
    q, pk, pv, k, v, sl = inputs(16, 32, 8, 128, 8192, [256] * 16)
    check(q, pk, pv, k, v, sl, name="softcap", softcap=30.0)
    check(q, pk, pv, None, None, None, name="prefix only")


def test_fp8_cascade():
    check_cascade(inputs, k_scale=KS, v_scale=VS)


def test_fp8_cuda_graph_new_lengths():
    check_replays(*inputs(16, 32, 8, 128, 8192, [256] * 16), REPLAY_LENGTHS, k_scale=KS, v_scale=VS)
