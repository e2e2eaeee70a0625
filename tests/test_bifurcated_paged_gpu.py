"""GPU-only tests of shared prefixes held in a page pool (``bifurcated_decode(prefix_block_table=)``): bf16 at
realistic sizes (an 8k prompt in the pool that holds every sample's own tokens, pages of 16 and 64), one and several
prompts, several query tokens, a window, CUDA-graph replay with new lengths, torch.compile, against the float64
reference and the same prefixes given as dense tensors. Skipped without CUDA."""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_graph_replays, assert_lse_close, assert_rel_close
from test_bifurcated_paged import unified_pool

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def i32(values):
    return torch.tensor(values, dtype=torch.int32, device="cuda")


def check(q, pool_k, pool_v, ptab, plens, ids, lens, otab, dense=None, **kw):
    out, lse = leanattn.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, lens, otab, plens, ids, return_lse=True,
                                          prefix_block_table=ptab, **kw)
    ref_kw = {name: kw[name] for name in ("causal", "window_left") if name in kw}
    ref, ref_lse = leanattn.reference.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, lens, otab, plens, ids,
                                                        prefix_block_table=ptab, **ref_kw)
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    if dense is not None:  # the same prefixes as dense tensors
        d_out = leanattn.bifurcated_decode(q, *dense, pool_k, pool_v, lens, otab, plens, ids, **kw)
        assert_rel_close("paged vs dense", out, d_out.double(), TOLERANCE[q.dtype])
    return out


@pytest.mark.parametrize("page", [16, 64])
@pytest.mark.parametrize("hq,hkv", [(32, 8), (32, 32)], ids=["gqa", "mha"])
@pytest.mark.parametrize("n", [4, 64])
def test_one_prompt_in_the_pool(n, hq, hkv, page):
    own = [256 - 37 * (i % 5) for i in range(n)]
    own[-1] = 0
    pool_k, pool_v, ptab, otab, dk, dv = unified_pool([8192], own, hkv, 128, page, torch.bfloat16)
    q = torch.randn(n, hq, 128, dtype=torch.bfloat16, device="cuda")
    check(q, pool_k, pool_v, ptab, i32([8192]), None, i32(own), otab, dense=(dk[0], dv[0]))


def test_several_prompts_tokens_window():
    ids = [0] * 9 + [2] * 6 + [1]
    own = [(37 * i) % 300 + 2 for i in range(len(ids))]
    pool_k, pool_v, ptab, otab, dk, dv = unified_pool([5000, 0, 1234], own, 8, 128, 16, torch.bfloat16)
    plens, pids = i32([5000, 0, 1234]), i32(ids)
    q = torch.randn(len(ids), 32, 128, dtype=torch.bfloat16, device="cuda")
    check(q, pool_k, pool_v, ptab, plens, pids, i32(own), otab, dense=(dk, dv))
    check(q, pool_k, pool_v, ptab, plens, pids, i32(own), otab, max_group_size=9)
    check(q, pool_k, pool_v, ptab, plens, pids, i32(own), otab, window_left=700)
    q2 = torch.randn(len(ids), 2, 32, 128, dtype=torch.bfloat16, device="cuda")
    check(q2, pool_k, pool_v, ptab, plens, pids, i32(own), otab, causal=True)


def test_graph_replay_and_compile():
    own = [256] * 16
    ids = [i % 3 for i in range(16)]
    pool_k, pool_v, ptab, otab, _, _ = unified_pool([4096, 100, 2048], own, 8, 128, 16, torch.bfloat16)
    q = torch.randn(16, 32, 128, dtype=torch.bfloat16, device="cuda")
    sl, plens, pids = i32(own), i32([4096, 100, 2048]), i32(ids)

    def call():
        return leanattn.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, sl, otab, plens, pids,
                                          prefix_block_table=ptab, max_group_size=6)
    assert_graph_replays(call, sl, ([256] * 16, [1, 0, 256] * 5 + [3], list(range(0, 256, 16))),
                         lambda: leanattn.reference.bifurcated_decode(q, pool_k, pool_v, pool_k, pool_v, sl, otab,
                                                                      plens, pids, prefix_block_table=ptab)[0],
                         TOLERANCE[torch.bfloat16])
    compiled = torch.compile(lambda *a: leanattn.bifurcated_decode(*a, prefix_block_table=ptab, max_group_size=6),
                             fullgraph=True)
    args = (q, pool_k, pool_v, pool_k, pool_v, sl, otab, plens, pids)
    assert torch.equal(compiled(*args), leanattn.bifurcated_decode(*args, prefix_block_table=ptab, max_group_size=6))


@pytest.mark.parametrize("S", [2, 3, 4])
@pytest.mark.parametrize("M", [100, 4096])
def test_state_list_merge_matches_stacked_merge(S, M):
    from leanattn.merges.states import merge_state_list
    outs = [torch.randn(M, 1, 128, dtype=torch.bfloat16, device="cuda") for _ in range(S)]
    lses = [torch.randn(M, 1, device="cuda") * 4 for _ in range(S)]
    lses[0][:7] = float("-inf")
    out, lse = merge_state_list(outs, lses)
    ref_out, ref_lse = leanattn.merge_states(torch.stack(outs), torch.stack(lses))
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
