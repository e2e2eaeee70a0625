"""``bifurcated_decode`` and ``cascade_decode`` with several query tokens a sample (``q (B, Lq, Hq, D)``: speculative
decoding of parallel samples) against the float64 reference under the interpreter: one and several prompts, ragged
and paged own caches, no own cache, empty prefixes, nested levels, causal and not, and the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, assert_states_match
from test_bifurcated import DEV, ids_tensor, make_inputs, make_prefix, multi_prompt_paged_inputs


def tokens(q: torch.Tensor, lq: int) -> torch.Tensor:
    """A random ``(B, lq, Hq, D)`` query shaped as ``q (B, Hq, D)``, through a permuted view (not contiguous)."""
    B, Hq, D = q.shape
    return torch.randn(lq, B, Hq, D, dtype=q.dtype, device=q.device).transpose(0, 1)


def check(q, pk, pv, k, v, lens=None, bt=None, plens=None, ids=None, causal=True, name="tokens", **kw):
    out, lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, return_lse=True, causal=causal, **kw)
    ref_out, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, bt, plens, ids, causal=causal)
    assert_states_match(name, q, out, lse, ref_out, ref_lse)
    return out, lse


# each head dim, dtype and causal flag at least once (the cross product of 12 cost CI about 20 s more)
@pytest.mark.parametrize("dtype,D,causal", [(torch.float16, 64, True), (torch.float32, 128, False),
                                            (torch.float16, 256, True), (torch.float32, 64, False)],
                         ids=["fp16-D64-causal", "fp32-D128-full", "fp16-D256-causal", "fp32-D64-full"])
def test_tokens_single_prefix(dtype, D, causal):
    # own lengths below the tokens (1, 0): causal tokens before the own cache see the prefix alone
    own = [3, 0, 40, 17, 1]
    q, k, v, lens, _ = make_inputs(len(own), 8, 2, D, own, dtype=dtype)
    pk, pv, _ = make_prefix(None, 45, 2, D, dtype=dtype)
    check(tokens(q, 3), pk, pv, k, v, lens, causal=causal, name=f"D={D}")


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 2, 64), (6, 1, 128)])
def test_tokens_multi_prompt_paged(hq, hkv, d):
    q, pk, pv, k, v, lens, bt, plens, ids = multi_prompt_paged_inputs(hq, hkv, d)
    q4 = tokens(q, 4)
    check(q4, pk, pv, k, v, lens, bt, plens, ids, name=f"{hq}/{hkv}")
    # a bound on the samples of a prompt: the token rows are bounded by it times the tokens
    check(q4, pk, pv, k, v, lens, bt, plens, ids, name="max_group_size", max_group_size=9)
    check(q4, pk, pv, k, v, lens, bt, plens, ids, name="4 programs", num_programs=4)


def test_tokens_each_is_a_decode_of_the_shorter_cache():
    # token s of a causal call is the one-token call over the own cache cut at its position
    q, k, v, lens, bt = make_inputs(4, 8, 2, 64, [30, 9, 21, 40], page_size=16)
    pk, pv, _ = make_prefix(None, 37, 2, 64)
    q4 = tokens(q, 4)
    out, lse = leanattn.bifurcated_decode(q4, pk, pv, k, v, lens, bt, return_lse=True, causal=True)
    for s in range(4):
        one, one_lse = leanattn.bifurcated_decode(q4[:, s], pk, pv, k, v, lens - (3 - s), bt, return_lse=True)
        assert_rel_close(f"token {s}", out[:, s], one.double(), TOLERANCE[q.dtype])
        assert torch.allclose(lse[:, s], one_lse, atol=1e-3)


def test_tokens_no_own_cache_and_empty_prefix():
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [12, 0, 5])
    pk, pv, _ = make_prefix(2, 30, 2, 64, plens=[30, 0])
    ids = ids_tensor([1, 0, 1])
    q4 = tokens(q, 3)
    # the prefix alone: every token sees all of it (the second prompt's is empty: zeros and -inf)
    check(q4, pk, pv, None, None, plens=torch.tensor([30, 0], dtype=torch.int32, device=DEV), ids=ids, name="no own")
    # no prefix tokens at all: the own tokens alone, as decode
    empty = pk[0, :0]
    out = check(q4, empty, empty, k, v, lens, name="empty prefix")[0]
    assert_rel_close("as decode", out, leanattn.decode(q4, k, v, lens, causal=True).double(), TOLERANCE[q.dtype])


def test_tokens_one_and_none():
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [12, 0, 5])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    out, lse = leanattn.bifurcated_decode(q[:, None], pk, pv, k, v, lens, return_lse=True, causal=True)
    plain, plain_lse = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, return_lse=True)
    assert torch.equal(out[:, 0], plain) and torch.equal(lse[:, 0], plain_lse)
    out, lse = leanattn.bifurcated_decode(tokens(q, 3)[:, :0], pk, pv, k, v, lens, return_lse=True)
    assert out.shape == (3, 0, 8, 64) and lse.shape == (3, 0, 8)


def test_tokens_cascade_levels():
    # a system prompt for all, a document per group, own tokens: every token sees both levels whole
    q, k, v, lens, bt = make_inputs(5, 8, 2, 64, [7, 0, 20, 3, 11], page_size=16)
    sys_k, sys_v, _ = make_prefix(None, 19, 2, 64)
    doc_k, doc_v, doc_lens = make_prefix(2, 33, 2, 64, plens=[33, 14])
    levels = [(sys_k, sys_v), (doc_k, doc_v, doc_lens, ids_tensor([0, 1, 1, 0, 1]))]
    q4 = tokens(q, 3)
    for causal in (True, False):
        out, lse = leanattn.cascade_decode(q4, levels, k, v, lens, bt, return_lse=True, causal=causal)
        ref_out, ref_lse = reference.cascade_decode(q4, levels, k, v, lens, bt, causal=causal)
        assert out.shape == q4.shape and lse.shape == q4.shape[:-1]
        assert_rel_close(f"cascade causal={causal}", out, ref_out, TOLERANCE[q.dtype])
        assert_lse_close("cascade", lse, ref_lse, atol=TOLERANCE[q.dtype])
    levels_only = leanattn.cascade_decode(q4, levels, max_group_size=3)
    assert_rel_close("levels only", levels_only, reference.cascade_decode(q4, levels)[0], TOLERANCE[q.dtype])


def packed_tokens(q: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A random packed query of ``counts[b]`` tokens for sample ``b`` (heads and dims of ``q (B, Hq, D)``) and its
    ``cu_seqlens_q``."""
    cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32, device=q.device)
    return torch.randn(sum(counts), *q.shape[1:], dtype=q.dtype, device=q.device), cu


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_packed_multi_prompt_paged(causal):
    # unequal groups, a prompt with an empty prefix, samples with no tokens and with more tokens than own keys
    q, pk, pv, k, v, lens, bt, plens, ids = multi_prompt_paged_inputs(8, 2, 64)
    counts = [(3 * b) % 5 for b in range(q.shape[0])]
    qp, cu = packed_tokens(q, counts)
    for kw in (dict(), dict(max_seqlen_q=6, max_group_size=9)):
        out, lse = leanattn.bifurcated_decode(qp, pk, pv, k, v, lens, bt, plens, ids, return_lse=True, causal=causal,
                                              cu_seqlens_q=cu, **kw)
        ref_out, ref_lse = reference.bifurcated_decode(qp, pk, pv, k, v, lens, bt, plens, ids, causal=causal,
                                                       cu_seqlens_q=cu)
        assert_states_match(f"packed {kw}", qp, out, lse, ref_out, ref_lse)
    # each sample's rows are those of its padded call
    cuts = cu.tolist()
    for b in (0, 4, 9):
        n = cuts[b + 1] - cuts[b]
        if n:
            one = leanattn.bifurcated_decode(qp[None, cuts[b]:cuts[b + 1]], pk, pv, k, v, lens[b:b + 1], bt[b:b + 1],
                                             plens, ids[b:b + 1], causal=causal)
            assert_rel_close(f"sample {b}", out[cuts[b]:cuts[b + 1]], one[0].double(), TOLERANCE[q.dtype])


def test_packed_cascade_and_no_own():
    q, k, v, lens, bt = make_inputs(4, 8, 2, 64, [7, 0, 20, 3], page_size=16)
    sys_k, sys_v, _ = make_prefix(None, 19, 2, 64)
    doc_k, doc_v, doc_lens = make_prefix(2, 33, 2, 64, plens=[33, 14])
    levels = [(sys_k, sys_v), (doc_k, doc_v, doc_lens, ids_tensor([0, 1, 1, 0]))]
    qp, cu = packed_tokens(q, [2, 3, 0, 4])
    out, lse = leanattn.cascade_decode(qp, levels, k, v, lens, bt, return_lse=True, causal=True, cu_seqlens_q=cu)
    assert_states_match("cascade", qp, out, lse, *reference.cascade_decode(qp, levels, k, v, lens, bt, causal=True,
                                                                           cu_seqlens_q=cu))
    out, lse = leanattn.cascade_decode(qp, levels, return_lse=True, cu_seqlens_q=cu, max_seqlen_q=4)
    assert_states_match("levels only", qp, out, lse, *reference.cascade_decode(qp, levels, cu_seqlens_q=cu))


def test_tokens_compile_fullgraph():
    q, k, v, lens, _ = make_inputs(3, 4, 2, 64, [9, 0, 17])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    q4 = tokens(q, 2).contiguous()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.bifurcated_decode(*a, return_lse=True, causal=True), fullgraph=True)
    out, lse = compiled(q4, pk, pv, k, v, lens)
    ref_out, ref_lse = leanattn.bifurcated_decode(q4, pk, pv, k, v, lens, return_lse=True, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_packed_errors():
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [9, 0, 17])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    qp, cu = packed_tokens(q, [1, 2, 1])
    with pytest.raises(ValueError, match=r"cu_seqlens_q: expected shape \(4,\) \(one offset more than k_cache's 3"):
        leanattn.bifurcated_decode(qp, pk, pv, k, v, lens, cu_seqlens_q=torch.tensor([0, 1, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"prefix_ids: expected shape \(3,\) \(samples of cu_seqlens_q\)"):
        leanattn.bifurcated_decode(qp, pk[None], pv[None], k, v, lens, prefix_ids=torch.zeros(4, dtype=torch.int32),
                                   cu_seqlens_q=cu)
    with pytest.raises(ValueError, match="max_seqlen_q: expected at least the longest sequence's 2"):
        leanattn.cascade_decode(qp, [(pk, pv)], k, v, lens, cu_seqlens_q=cu, max_seqlen_q=1)
    with pytest.raises(ValueError, match="max_seqlen_q: expected None without cu_seqlens_q"):
        leanattn.bifurcated_decode(q, pk, pv, k, v, lens, max_seqlen_q=2)


@pytest.mark.parametrize("name,kw,error,match", [
    ("q rank 5", dict(q=torch.randn(3, 2, 1, 8, 64, dtype=torch.float16)), ValueError, "q: expected a 3-D"),
    ("q batch", dict(q=torch.randn(4, 2, 8, 64, dtype=torch.float16)), ValueError, "batch size"),
    ("causal int", dict(causal=1), TypeError, "causal: expected a bool"),
    ("ids batch", dict(prefix_ids=torch.zeros(4, dtype=torch.int32)), ValueError, r"prefix_ids: expected shape \(3,\)"),
])
def test_tokens_errors(name, kw, error, match):
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [9, 0, 17])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    args = dict(q=tokens(q, 2), causal=True) | kw
    with pytest.raises(error, match=match):
        leanattn.bifurcated_decode(args.pop("q"), pk, pv, k, v, lens, **args)
    if name != "ids batch":
        args = dict(q=tokens(q, 2), causal=True) | kw
        with pytest.raises(error, match=match):
            leanattn.cascade_decode(args.pop("q"), [(pk, pv)], k, v, lens, **args)
