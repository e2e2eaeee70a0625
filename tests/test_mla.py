"""``leanattn.mla_decode`` (multi-head latent attention, DeepSeek) against the float64 reference: both schedules,
contiguous and paged latent caches (separate tensors, and FlashMLA's one wide cache split into two views), ragged
and empty sequences, head counts that fill one or several row blocks, several query tokens; the custom op and
torch.compile; the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import assert_states_match, paged_kv


def inputs(B, H, dc, dr, lens, dtype=torch.float16, page=None, wide=False, tokens=0, seed=0):
    """``(q_nope, q_pe, ckv, kpe, cache_seqlens, block_table)``: a cache of ``max(lens)`` tokens a sequence, paged
    (pages of ``page`` in random order) where given; ``wide``: ckv and kpe are views of one ``dc + dr`` cache."""
    g = torch.Generator().manual_seed(seed)
    lead = (B, tokens) if tokens else (B,)
    qn = torch.randn(*lead, H, dc, generator=g).to(dtype)
    qp = torch.randn(*lead, H, dr, generator=g).to(dtype)
    n = max(max(lens), 1)
    cache = torch.randn(B, n, 1, dc + dr, generator=g).to(dtype)
    sl = torch.tensor(lens, dtype=torch.int32)
    bt = None
    if page:
        cache, _, bt = paged_kv(cache, cache, lens, page)
    if wide:
        ckv, kpe = cache[..., :dc], cache[..., dc:]
    else:
        ckv, kpe = cache[..., 0, :dc].contiguous(), cache[..., 0, dc:].contiguous()
    return qn, qp, ckv, kpe, sl, bt


def check(name, qn, qp, ckv, kpe, sl, bt, **kw):
    out, lse = leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, return_lse=True, **kw)
    ref = reference.mla_decode(qn, qp, ckv, kpe, sl, bt, softmax_scale=kw.get("softmax_scale"),
                               causal=kw.get("causal", False))
    assert_states_match(name, qn, out, lse, *ref)
    return out, lse


@pytest.mark.parametrize("schedule", ["lean", "split"])
@pytest.mark.parametrize("heads,dc,dr,page,wide", [(8, 128, 16, None, False), (16, 128, 32, 4, True),
                                                    (20, 256, 32, 1, False), (1, 128, 64, 16, True),
                                                    (40, 128, 16, None, True)])
def test_mla(heads, dc, dr, page, wide, schedule):
    # sequence 1 is empty; 40 heads take two row blocks of a kv head (and 20 a padded one)
    args = inputs(4, heads, dc, dr, [37, 0, 5, 20], page=page, wide=wide)
    for programs in (0, 5):
        check(f"programs {programs}", *args, schedule=schedule, num_programs=programs, num_splits=3)
    # no lengths: every sequence fills the cache (one sequence: even pieces of each row)
    one = inputs(1, heads, dc, dr, [33], page=page, wide=wide, seed=1)
    check("one sequence", *one[:4], None, one[5], schedule=schedule)


@pytest.mark.parametrize("causal", [True, False])
def test_tokens(causal):
    # two query tokens a sequence (DeepSeek-V3's multi-token prediction, verified in one call)
    args = inputs(3, 8, 128, 32, [1, 30, 9], page=4, wide=True, tokens=2, seed=2)
    for schedule in ("lean", "split"):
        check(f"tokens causal={causal} {schedule}", *args, causal=causal, schedule=schedule, num_splits=2)
    qn, qp, *rest = args
    # one token as a 4-D query: the 3-D call's result
    out = leanattn.mla_decode(qn[:, :1], qp[:, :1], *rest)
    assert torch.equal(out[:, 0], leanattn.mla_decode(qn[:, 0], qp[:, 0], *rest))


@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_packed(schedule):
    # 2, 0, 3 and 1 tokens a sequence (FlashInfer's qo_indptr), the query a view of one wide tensor
    qn, qp, ckv, kpe, sl, bt = inputs(4, 8, 128, 32, [12, 7, 30, 1], page=4, wide=True, seed=4)
    cu = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int32)
    q = torch.randn(6, 8, 160).half()
    out, lse = leanattn.mla_decode(q[..., :128], q[..., 128:], ckv, kpe, sl, bt, return_lse=True, causal=True,
                                   cu_seqlens_q=cu, max_seqlen_q=3, schedule=schedule, num_splits=2)
    ref = reference.mla_decode(q[..., :128], q[..., 128:], ckv, kpe, sl, bt, causal=True, cu_seqlens_q=cu)
    assert_states_match("packed", q[..., :128], out, lse, *ref)
    with pytest.raises(ValueError, match="cu_seqlens_q: expected offsets ending at q_nope's 6 rows"):
        leanattn.mla_decode(q[..., :128], q[..., 128:], ckv, kpe, sl, bt, cu_seqlens_q=cu.clone().fill_(0))
    with pytest.raises(ValueError, match=r"q_pe: expected shape \(6, 8, 32\)"):
        leanattn.mla_decode(q[..., :128], q[:5, :, 128:], ckv, kpe, sl, bt, cu_seqlens_q=cu, max_seqlen_q=3)


def test_values_loaded_apart(monkeypatch):
    # LEANATTN_MLA_SHARED_V=0 (a probe's variant) loads the latent rows again as values: the same result
    args = inputs(3, 8, 128, 16, [20, 0, 9], page=4, wide=True, seed=5)
    shared = leanattn.mla_decode(*args, num_programs=3)
    monkeypatch.setenv("LEANATTN_MLA_SHARED_V", "0")
    apart = check("values apart", *args, num_programs=3)[0]
    assert (apart.float() - shared.float()).abs().max() < 1e-3
    from leanattn.ops import decode as dec
    metas = [p.meta for p in dec._PLANS.values() if p.meta["ROPE_DIM"]]
    assert any(m["V_IS_K"] for m in metas) and any(not m["V_IS_K"] for m in metas)
    monkeypatch.setenv("LEANATTN_MLA_SHARED_V", "2")
    with pytest.raises(ValueError, match="LEANATTN_MLA_SHARED_V: expected 0 or 1, got '2'"):
        leanattn.mla_decode(*args, num_programs=3)


@pytest.mark.parametrize("merge", ["0", "1"], ids=["in-kernel", "launch"])
def test_latent_512_merged_in_column_blocks(monkeypatch, merge):
    # 512-wide pieces merged 128 columns a program (kernels/merge.py, kernels/piece_merge.py): two sequences cut
    # over 7 programs, and one sequence in 12 even pieces, more than the unrolled merge takes
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
    dec._PLANS.clear()
    try:
        args = inputs(2, 16, 512, 64, [200, 90], page=16, wide=True, seed=6)
        check("two sequences", *args, num_programs=7)
        one = inputs(1, 16, 512, 64, [200], seed=7)
        check("one sequence", *one, num_programs=12)
        check("one sequence, split", *one, schedule="split", num_splits=12)
    finally:
        dec._PLANS.clear()


def test_latent_512_bf16_scale_and_no_lse():
    args = inputs(2, 16, 512, 64, [70, 3], dtype=torch.bfloat16, page=16, wide=True, seed=3)
    check("DeepSeek dims", *args, softmax_scale=0.1352)
    out = leanattn.mla_decode(*args)
    assert torch.equal(out, leanattn.mla_decode(*args, return_lse=True)[0])


def test_custom_op_and_compile_fullgraph():
    qn, qp, ckv, kpe, sl, bt = inputs(3, 8, 128, 16, [40, 0, 17], page=16)
    torch.library.opcheck(torch.ops.leanattn.mla_decode.default,
                          (qn, qp, ckv.unsqueeze(2), kpe.unsqueeze(2), sl, bt, 0.125, "lean", 3, 2, False))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.mla_decode(*a, return_lse=True), fullgraph=True)
    out, lse = compiled(qn, qp, ckv, kpe, sl, bt)
    ref_out, ref_lse = leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def _errors():
    qn, qp, ckv, kpe, sl, _ = inputs(2, 4, 128, 16, [9, 17])
    return [
        (dict(q_nope=qn[..., :96]), ValueError, r"q_nope: expected head dim in \(128, 256, 512\)"),
        (dict(q_pe=qp[..., :8]), ValueError, r"q_pe: expected head dim in \(16, 32, 64\)"),
        (dict(q_pe=qp[:, :3]), ValueError, r"q_pe: expected shape \(2, 4, 16\)"),
        (dict(q_pe=qp.float()), TypeError, "q_pe: expected dtype torch.float16"),
        (dict(ckv_cache=ckv[..., :64].contiguous()), ValueError, r"ckv_cache: expected head dim in"),
        (dict(ckv_cache=torch.randn(2, 17, 256, dtype=qn.dtype)), ValueError, "ckv_cache: expected latent dim 128"),
        (dict(kpe_cache=torch.randn(2, 17, 32, dtype=qn.dtype)), ValueError, "kpe_cache: expected rotary dim 16"),
        (dict(kpe_cache=kpe[:, :5]), ValueError, r"kpe_cache: expected \(B, N\) = \(2, 17\)"),
        (dict(ckv_cache=ckv.unsqueeze(2).expand(-1, -1, 2, -1)), ValueError, "ckv_cache: expected a 3-D"),
        (dict(ckv_cache=ckv.float()), TypeError, "ckv_cache: expected dtype torch.float16"),
        (dict(ckv_cache=ckv.transpose(1, 2).contiguous().transpose(1, 2)), ValueError,
         "ckv_cache: expected unit stride"),
        (dict(cache_seqlens=sl.long()), TypeError, "cache_seqlens: expected dtype torch.int32"),
        (dict(cache_seqlens=torch.tensor([9, 18], dtype=torch.int32)), ValueError, "cache_seqlens: expected lengths"),
        (dict(causal=1), TypeError, "causal"),
        (dict(return_lse=0), TypeError, "return_lse: expected a bool"),
        (dict(ckv_cache=torch.randn(3, 17, 128, dtype=qn.dtype), kpe_cache=torch.randn(3, 17, 16, dtype=qn.dtype)),
         ValueError, r"ckv_cache: expected batch size 2 \(as q_nope\)"),
        (dict(cache_seqlens=torch.tensor([9, 18], dtype=torch.int32)), ValueError, r"\(ckv_cache capacity\)"),
    ]


def raises(change, err, match):
    """``mla_decode`` of valid small inputs with the arguments ``change`` replaced raises ``err`` matching ``match``."""
    qn, qp, ckv, kpe, sl, _ = inputs(2, 4, 128, 16, [9, 17])
    kw = dict(q_nope=qn, q_pe=qp, ckv_cache=ckv, kpe_cache=kpe, cache_seqlens=sl)
    kw.update(change)
    with pytest.raises(err, match=match):
        leanattn.mla_decode(**kw)


@pytest.mark.parametrize("case", range(len(_errors())))
def test_errors(case):
    raises(*_errors()[case])


def test_topk_token_selection_as_pages_of_one_token():
    # DeepSeek-V3.2's sparse attention (its indexer's top-k tokens of each sequence) is paged MLA over pages of one
    # token: the selected token ids are the block table, their count the length; the order of the ids is free
    B, N, heads, dc, dr, topk = 3, 40, 16, 128, 32, 12
    qn, qp, ckv, kpe, _, _ = inputs(B, heads, dc, dr, [N] * B, seed=8)
    counts = torch.tensor([12, 5, 0], dtype=torch.int32)
    g = torch.Generator().manual_seed(9)
    ids = torch.stack([torch.randperm(N, generator=g)[:topk] for _ in range(B)]).to(torch.int32)
    table = ids + torch.arange(B, dtype=torch.int32)[:, None] * N  # into the pool of every sequence's tokens
    out, lse = leanattn.mla_decode(qn, qp, ckv.reshape(B * N, 1, dc), kpe.reshape(B * N, 1, dr), counts, table,
                                   return_lse=True)
    picked = [ids[b, :int(counts[b])].long() for b in range(B)]
    sel_c = torch.zeros(B, topk, dc, dtype=ckv.dtype)
    sel_p = torch.zeros(B, topk, dr, dtype=kpe.dtype)
    for b in range(B):
        sel_c[b, :len(picked[b])] = ckv[b, picked[b]]
        sel_p[b, :len(picked[b])] = kpe[b, picked[b]]
    assert_states_match("top-k", qn, out, lse, *reference.mla_decode(qn, qp, sel_c, sel_p, counts))
