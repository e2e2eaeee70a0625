"""``out=`` and ``lse=`` of the decode ops: the caller's buffers, written in place and returned (FlashInfer's).

Against the float64 reference: under the Triton interpreter on the CPU, or on a GPU when there is one; the tests
of bf16 CUDA-graph capture and compile at large shapes skip without CUDA.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import assert_states_match
from test_decode import SCHEDULES
from test_decode import make_inputs as _make_inputs

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def make_inputs(*args, **kw):
    """``test_decode.make_inputs`` on this module's device."""
    return _make_inputs(*args, **{"device": DEV, **kw})


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEV)


def _buffers(q, fill=7.0):
    """Buffers holding garbage, so that a row left unwritten shows."""
    return torch.full_like(q, fill), torch.full(q.shape[:-1], fill, dtype=torch.float32, device=q.device)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "paged16"])
def test_written_in_place_and_returned(schedule, page_size):
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [40, 0, 17], page_size=page_size)
    ref_out, ref_lse = reference.decode(q, k, v, lens, bt)
    out, lse = _buffers(q)
    res = leanattn.decode(q, k, v, lens, bt, return_lse=True, schedule=schedule, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    assert_states_match("out=, lse=", q, out, lse, ref_out, ref_lse)
    # the LSE buffer is written when the call does not return it
    out2, lse2 = _buffers(q)
    assert leanattn.decode(q, k, v, lens, bt, schedule=schedule, out=out2, lse=lse2) is out2
    assert torch.equal(out2, out) and torch.equal(lse2, lse)
    # only one of them
    out3 = torch.empty_like(q)
    res3 = leanattn.decode(q, k, v, lens, bt, return_lse=True, schedule=schedule, out=out3)
    assert res3[0] is out3 and torch.equal(out3, out) and torch.equal(res3[1], lse)
    lse4 = torch.empty_like(lse)
    res4 = leanattn.decode(q, k, v, lens, bt, return_lse=True, schedule=schedule, lse=lse4)
    assert res4[1] is lse4 and torch.equal(lse4, lse) and torch.equal(res4[0], out)


@pytest.mark.parametrize("qlen", [1, 3])
def test_query_tokens(qlen):
    # (B, Lq, Hq, D): one token goes through the 3-D call with views of the buffers
    _, k, v, lens, bt = make_inputs(2, 4, 2, 64, [30, 9], page_size=8)
    q = torch.randn(2, qlen, 4, 64, dtype=torch.float16, device=DEV)
    out, lse = _buffers(q)
    res = leanattn.decode(q, k, v, lens, bt, causal=True, return_lse=True, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    ref_out, ref_lse = reference.decode(q, k, v, lens, bt, causal=True)
    assert_states_match(f"Lq={qlen}", q, out, lse, ref_out, ref_lse)


def test_packed_query():
    _, k, v, lens, _ = make_inputs(3, 4, 2, 64, [30, 9, 12])
    cu = _i32([0, 3, 3, 5])
    q = torch.randn(5, 4, 64, dtype=torch.float16, device=DEV)
    out, lse = _buffers(q)
    leanattn.decode(q, k, v, lens, causal=True, cu_seqlens_q=cu, max_seqlen_q=3, out=out, lse=lse)
    ref_out, ref_lse = reference.decode(q, k, v, lens, causal=True, cu_seqlens_q=cu)
    assert_states_match("packed", q, out, lse, ref_out, ref_lse)


def test_empty_cache_and_empty_batch():
    # no key anywhere: zeros and -inf, or with sinks (merged by a launch that returns tensors of its own) the sinks
    q = torch.randn(3, 4, 64, dtype=torch.float16, device=DEV)
    k = torch.empty(3, 0, 2, 64, dtype=torch.float16, device=DEV)
    out, lse = _buffers(q)
    leanattn.decode(q, k, k, out=out, lse=lse)
    assert not out.any() and torch.isneginf(lse).all()
    sinks = torch.randn(4, device=DEV)
    res = leanattn.decode(q, k, k, return_lse=True, sinks=sinks, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    assert not out.any() and torch.allclose(lse, sinks.expand(3, 4))
    q0 = q[:0]
    out0, lse0 = _buffers(q0)
    res0 = leanattn.decode(q0, k[:0], k[:0], return_lse=True, out=out0, lse=lse0)
    assert res0[0] is out0 and res0[1] is lse0


def test_errors():
    q, k, v, lens, _ = make_inputs(3, 4, 2, 64, [40, 0, 17])
    out, lse = _buffers(q)
    cases = [
        (dict(out=3), TypeError, "out: expected a torch.Tensor, got int"),
        (dict(out=out.float()), TypeError, "out: expected dtype torch.float16, got torch.float32"),
        (dict(lse=lse.double()), TypeError, "lse: expected dtype torch.float32, got torch.float64"),
        (dict(out=out[:, :2]), ValueError, r"out: expected shape \(3, 4, 64\) \(q's shape\), got shape \(3, 2, 64\)"),
        (dict(lse=lse[None]), ValueError, r"lse: expected shape \(3, 4\) \(q.shape\[:-1\]\), got shape \(1, 3, 4\)"),
        (dict(out=out.transpose(0, 1).contiguous().transpose(0, 1)), ValueError, "out: expected a contiguous tensor"),
        (dict(lse=lse.t().contiguous().t()), ValueError, "lse: expected a contiguous tensor"),
        (dict(lse=lse.to("meta")), ValueError, "lse: expected device .+, got meta"),
        (dict(out=q), ValueError, "out: expected memory apart from q"),
        (dict(out=k.view(-1)[:q.numel()].view(q.shape)), ValueError, "out: expected memory apart from k_cache"),
        (dict(out=v.view(-1)[-q.numel():].view(q.shape)), ValueError, "out: expected memory apart from v_cache"),
        (dict(out=out, lse=out.view(-1).view(torch.float32)[:12].view(3, 4)), ValueError,
         "lse: expected memory apart from out"),
    ]
    # the lengths inside the output's allocation (the kernels read them while writing it)
    pool = torch.zeros(q.numel() + 8, dtype=q.dtype, device=DEV)
    lens_in = pool[-8:].view(torch.int32)[:3]
    lens_in.copy_(lens)
    cases.append((dict(out=pool[4:4 + q.numel()].view(q.shape), cache_seqlens=lens_in), ValueError,
                  "out: expected memory apart from cache_seqlens"))
    if CUDA:
        cases.append((dict(out=out.cpu()), ValueError, "out: expected device cuda:0, got cpu"))
    for kw, cls, msg in cases:
        with pytest.raises(cls, match=msg):
            leanattn.decode(q, k, v, **{"cache_seqlens": lens, **kw})
    # buffers next to the inputs, not on them, are taken
    pool = torch.randn(2 * q.numel(), dtype=q.dtype, device=DEV)
    q2, out2 = pool[:q.numel()].view(q.shape), pool[q.numel():].view(q.shape)
    leanattn.decode(q2, k, v, lens, out=out2)
    assert torch.equal(out2, leanattn.decode(q2, k, v, lens))


def test_compile_fullgraph():
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    torch._dynamo.reset()

    def step(q, k, v, lens, bt, out, lse):
        return leanattn.decode(q, k, v, lens, bt, return_lse=True, out=out, lse=lse)

    compiled = torch.compile(step, fullgraph=True)
    out, lse = _buffers(q)
    res = compiled(q, k, v, lens, bt, out, lse)
    ref_out, ref_lse = leanattn.decode(q, k, v, lens, bt, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    assert torch.equal(res[0], out) and torch.equal(res[1], lse)


@pytest.mark.parametrize("tokens", [0, 1, 2])
def test_mla_decode(tokens):
    from test_mla import inputs
    qn, qp, ckv, kpe, sl, bt = (None if t is None else t.to(DEV)
                                for t in inputs(3, 8, 128, 16, [37, 0, 5], page=4, wide=True, tokens=tokens))
    out, lse = _buffers(qn)
    res = leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, return_lse=True, causal=True, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    ref_out, ref_lse = reference.mla_decode(qn, qp, ckv, kpe, sl, bt, causal=True)
    assert_states_match(f"mla tokens={tokens}", qn, out, lse, ref_out, ref_lse)
    # an output whose first element is q_pe's last
    pool = torch.randn(qp.numel() + qn.numel() - 1, device=DEV).half()
    qp2 = pool[:qp.numel()].view(qp.shape).copy_(qp)
    with pytest.raises(ValueError, match="out: expected memory apart from q_pe"):
        leanattn.mla_decode(qn, qp2, ckv, kpe, sl, bt, out=pool[-qn.numel():].view(qn.shape))
    with pytest.raises(ValueError, match="out: expected memory apart from ckv_cache"):
        leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, out=ckv.as_strided(qn.shape, qn.stride()))
    with pytest.raises(ValueError, match=r"lse: expected shape .* \(q_nope.shape\[:-1\]\)"):
        leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, lse=lse[:1])


def _bifurcated_inputs(B=4, Hq=8, Hkv=2, D=64, tokens=0, G=None):
    g = torch.Generator().manual_seed(B + tokens)
    lead = (B, tokens) if tokens else (B,)
    q = torch.randn(*lead, Hq, D, generator=g).half().to(DEV)
    pshape = (45, Hkv, D) if G is None else (G, 45, Hkv, D)
    pk, pv = (torch.randn(pshape, generator=g).half().to(DEV) for _ in range(2))
    _, k, v, lens, _ = make_inputs(B, Hq, Hkv, D, [3, 0, 40, 17][:B])
    return q, pk, pv, k, v, lens


@pytest.mark.parametrize("form", ["one token", "prompts", "tokens", "window", "one token 4-D"])
def test_bifurcated_decode(form):
    # the one-token launches write the buffers in place; the other forms copy their states in
    tokens = {"tokens": 2, "one token 4-D": 1}.get(form, 0)
    G = 2 if form == "prompts" else None
    q, pk, pv, k, v, lens = _bifurcated_inputs(tokens=tokens, G=G)
    kw = dict(window_left=20) if form == "window" else dict(causal=True) if tokens else {}
    if G:
        kw.update(prefix_lens=_i32([45, 30]), prefix_ids=_i32([1, 0, 1, 1]))
    out, lse = _buffers(q)
    res = leanattn.bifurcated_decode(q, pk, pv, k, v, lens, return_lse=True, out=out, lse=lse, **kw)
    assert res[0] is out and res[1] is lse
    ref_out, ref_lse = reference.bifurcated_decode(q, pk, pv, k, v, lens, **kw)
    assert_states_match(form, q, out, lse, ref_out, ref_lse)
    with pytest.raises(ValueError, match="out: expected memory apart from prefix_v"):
        leanattn.bifurcated_decode(q, pk, pv, k, v, lens, out=pv.view(-1)[:q.numel()].view(q.shape), **kw)


@pytest.mark.parametrize("tokens", [0, 2])
def test_cascade_decode(tokens):
    q, pk, pv, k, v, lens = _bifurcated_inputs(tokens=tokens)
    doc_k, doc_v = (torch.randn(2, 20, 2, 64, device=DEV).half() for _ in range(2))
    levels = [(pk, pv), (doc_k, doc_v, None, _i32([0, 1, 1, 0]))]
    out, lse = _buffers(q)
    res = leanattn.cascade_decode(q, levels, k, v, lens, return_lse=True, causal=True, out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    ref_out, ref_lse = reference.cascade_decode(q, levels, k, v, lens, causal=True)
    assert_states_match(f"cascade tokens={tokens}", q, out, lse, ref_out, ref_lse)
    with pytest.raises(ValueError, match=r"out: expected memory apart from levels\[1\]\[0\]"):
        leanattn.cascade_decode(q, levels, k, v, lens, out=doc_k.view(-1)[:q.numel()].view(q.shape))


# ------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gpu_cuda_graph_writes_the_static_buffers(schedule):
    # a captured call writes the caller's static buffers on every replay, the lengths changed between replays
    torch.manual_seed(0)
    q, k, v, lens, bt = make_inputs(4, 32, 8, 128, [4000, 1, 0, 2500], dtype=torch.bfloat16, device="cuda",
                                    page_size=16)
    out, lse = _buffers(q)
    leanattn.decode(q, k, v, lens, bt, schedule=schedule, out=out, lse=lse)  # warm-up: plans made outside capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        leanattn.decode(q, k, v, lens, bt, schedule=schedule, out=out, lse=lse)
    for new in ([4000, 1, 0, 2500], [17, 3999, 64, 0]):
        lens.copy_(torch.tensor(new, dtype=torch.int32))
        out.fill_(7.0)
        lse.fill_(7.0)
        g.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = reference.decode(q, k, v, lens, bt)
        assert_states_match(f"graph {new}", q, out, lse, ref_out, ref_lse)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_compile_and_eager_agree():
    torch.manual_seed(1)
    q, k, v, lens, _ = make_inputs(2, 32, 8, 128, [8192, 300], dtype=torch.bfloat16, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, lens, out, lse: leanattn.decode(q, k, v, lens, out=out, lse=lse),
                             fullgraph=True)
    out, lse = _buffers(q)
    compiled(q, k, v, lens, out, lse)
    ref_out, ref_lse = leanattn.decode(q, k, v, lens, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
