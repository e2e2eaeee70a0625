"""GPU-only tests of ``bifurcated_decode`` and ``cascade_decode`` over float8 caches: bf16 queries at realistic sizes
on the states path (where an uncapped 16-bit call may take the overlap path, which reads no float8), the one-sample
(concat) paths, paged own caches, several prompts, soft caps, and CUDA-graph replay with new lengths. Skipped
without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close
from test_bifurcated_gpu import REPLAY_LENGTHS, check_cascade, check_replays, multi_prompt_paged

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
KS, VS = 0.05, 0.5  # stored values are the values over these: randn / 0.05 fills e4m3's range


def inputs(n, hq, hkv, d, P, own, fp8=torch.float8_e4m3fn, G=None):
    """bf16 queries, float8 prefix ``(P, hkv, d)`` (or ``(G, P, hkv, d)``) and own caches ``(n, max(own), hkv, d)``."""
    def cache(*shape, scale):
        return (torch.randn(*shape, device="cuda") / scale).to(fp8)
    q = torch.randn(n, hq, d, dtype=torch.bfloat16, device="cuda")
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
    own = torch.randint(0, 600, (n,)).tolist()
    own[0] = 0
    plan = check(*inputs(n, hq, hkv, d, 9000, own, fp8), name=f"{fp8} {n} x {hq}/{hkv} D={d}")
    assert plan.path == "states"


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
