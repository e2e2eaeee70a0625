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


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("D", [64, 128, 256], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
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


def test_tokens_compile_fullgraph():
    q, k, v, lens, _ = make_inputs(3, 4, 2, 64, [9, 0, 17])
    pk, pv, _ = make_prefix(None, 20, 2, 64)
    q4 = tokens(q, 2).contiguous()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.bifurcated_decode(*a, return_lse=True, causal=True), fullgraph=True)
    out, lse = compiled(q4, pk, pv, k, v, lens)
    ref_out, ref_lse = leanattn.bifurcated_decode(q4, pk, pv, k, v, lens, return_lse=True, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


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
