"""``leanattn.mla_decode`` over float8 latent caches (e4m3, e5m2; vLLM's fp8 MLA cache) with per-tensor scales,
against the float64 reference over the dequantised caches: the real kernels under the interpreter."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_rel_close, assert_states_match
from test_mla import inputs, raises

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def quantised(args, fp8):
    """``inputs``' tuple with the latent caches stored in ``fp8``; a wide cache's two views (4-D) become views of one
    float8 tensor."""
    qn, qp, ckv, kpe, sl, bt = args
    if ckv.dim() == 4:
        wide = torch.cat([ckv, kpe], -1).to(fp8)
        return qn, qp, wide[..., :ckv.shape[-1]], wide[..., ckv.shape[-1]:], sl, bt
    return qn, qp, ckv.to(fp8), kpe.to(fp8), sl, bt


def check(name, qn, qp, ckv, kpe, sl, bt, **kw):
    out, lse = leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, return_lse=True, **kw)
    ref = reference.mla_decode(qn, qp, ckv, kpe, sl, bt, softmax_scale=kw.get("softmax_scale"),
                               causal=kw.get("causal", False), k_scale=kw.get("k_scale", 1.0),
                               v_scale=kw.get("v_scale", 1.0))
    assert_states_match(name, qn, out, lse, *ref)
    return out, lse


@pytest.mark.parametrize("fp8", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("schedule", ["lean", "split", "batch_invariant"])
def test_fp8_latent_cache(fp8, dtype, schedule):
    # ragged with an empty sequence, FlashMLA's one wide cache in pages of 4 (its two views of one float8 tensor)
    args = quantised(inputs(4, 8, 128, 32, [37, 0, 5, 20], dtype=dtype, page=4, wide=True), fp8)
    kw = dict(schedule=schedule) if schedule == "batch_invariant" else dict(schedule=schedule, num_programs=5,
                                                                             num_splits=3)
    check(f"{fp8} {dtype} {schedule}", *args, k_scale=0.75, v_scale=2.5, **kw)


@pytest.mark.parametrize("page,wide", [(None, False), (1, False), (16, True)], ids=["contiguous", "page1", "page16"])
def test_fp8_layouts_and_unequal_scales(page, wide):
    args = quantised(inputs(3, 20, 256, 16, [9, 70, 1], page=page, wide=wide, seed=1), torch.float8_e4m3fn)
    check(f"page {page}", *args, k_scale=3.0, v_scale=0.125)
    # one sequence filling the cache: even pieces of the row on the split kernel
    one = quantised(inputs(1, 20, 256, 16, [33], page=page, wide=wide, seed=2), torch.float8_e4m3fn)
    check("one sequence", *one[:4], None, one[5], k_scale=3.0, v_scale=0.125)


def test_fp8_rotary_part_larger_than_latent_part():
    # bf16 query rows are scaled into fp16 by one power of two a row (kernels/attend.fp8_query_rope): taken from the
    # latent part alone, a rotary part 2**9 times larger would overflow fp16 (2**13 * 2**9 > 65504)
    qn, qp, ckv, kpe, sl, bt = quantised(inputs(2, 16, 128, 64, [40, 13], dtype=torch.bfloat16, page=16, wide=True,
                                                seed=3), torch.float8_e4m3fn)
    qp = (qp.float() * 512).bfloat16()
    check("rotary x512", qn, qp, ckv, kpe, sl, bt, softmax_scale=2.0 ** -14, k_scale=0.5, v_scale=1.5)
    # and the other way round
    check("latent x512", (qn.float() * 512).bfloat16(), qp, ckv, kpe, sl, bt, softmax_scale=2.0 ** -14)


def test_fp8_deepseek_dims_tokens():
    # Dc 512 + Dr 64 in one cache, two query tokens a sequence (multi-token prediction), causal
    args = quantised(inputs(2, 16, 512, 64, [70, 3], dtype=torch.bfloat16, page=16, wide=True, tokens=2, seed=4),
                     torch.float8_e4m3fn)
    check("DeepSeek dims, 2 tokens", *args, causal=True, k_scale=0.25, v_scale=0.25, num_programs=6)


def test_fp8_unit_scales_match_dequantised_cache():
    # the scales default to 1.0, and a scaled call matches mla_decode over the cache dequantised in q's dtype (a
    # float8 e4m3 element and its products by powers of two are exact in fp16)
    qn, qp, ckv, kpe, sl, bt = inputs(3, 8, 128, 32, [25, 0, 12], page=4, wide=True, seed=5)
    _, _, c8, p8, _, _ = quantised((qn, qp, ckv, kpe, sl, bt), torch.float8_e4m3fn)
    plain = leanattn.mla_decode(qn, qp, c8, p8, sl, bt)
    assert_rel_close("unit scales", plain, leanattn.mla_decode(qn, qp, c8.half(), p8.half(), sl, bt).double(),
                     TOLERANCE[qn.dtype])
    scaled = leanattn.mla_decode(qn, qp, c8, p8, sl, bt, k_scale=0.5, v_scale=4.0)
    # (values scaled apart from keys: a reference of two caches, keys (ckv, kpe) * 0.5 and values ckv * 4)
    ref = reference.decode(torch.cat([qn, qp], -1).double(), torch.cat([c8, p8], -1).double() * 0.5,
                           torch.cat([c8.double() * 4.0, torch.zeros_like(p8, dtype=torch.float64)], -1),
                           sl, bt, (128 + 32) ** -0.5)[0][..., :128]
    assert_rel_close("scaled", scaled, ref, TOLERANCE[qn.dtype])


def test_fp8_custom_op_and_compile_fullgraph():
    qn, qp, ckv, kpe, sl, bt = quantised(inputs(3, 8, 128, 16, [40, 0, 17], page=16, seed=6), torch.float8_e5m2)
    # (torch has no CPU arithmetic on float8 tensors, which opcheck's schema check needs: the other three)
    torch.library.opcheck(torch.ops.leanattn.mla_decode.default,
                          (qn, qp, ckv.unsqueeze(2), kpe.unsqueeze(2), sl, bt, 0.125, "lean", 3, 2, False, None, 0,
                           0.5, 2.0),
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic", "test_autograd_registration"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.mla_decode(*a, return_lse=True, k_scale=0.5, v_scale=2.0),
                             fullgraph=True)
    out, lse = compiled(qn, qp, ckv, kpe, sl, bt)
    ref_out, ref_lse = leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, return_lse=True, k_scale=0.5, v_scale=2.0)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_fp8_scales_as_compiled_inputs():
    # scales passed into a compiled function, as symbolic floats once torch makes them dynamic: the checks trace
    # (comparisons, not math.isfinite); the custom op's float arguments are specialised, so each value compiles once
    qn, qp, ckv, kpe, sl, bt = quantised(inputs(3, 8, 128, 16, [40, 0, 17], page=16, seed=7), torch.float8_e4m3fn)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a, s: leanattn.mla_decode(*a, k_scale=s, v_scale=2 * s), fullgraph=True)
    for s in (0.5, 0.25, 3.0):
        out = compiled(qn, qp, ckv, kpe, sl, bt, s=s)
        assert torch.equal(out, leanattn.mla_decode(qn, qp, ckv, kpe, sl, bt, k_scale=s, v_scale=2 * s))
    with pytest.raises(Exception, match="k_scale: expected a finite float"):
        compiled(qn, qp, ckv, kpe, sl, bt, s=float("nan"))


def _errors():
    qn, qp, ckv, kpe, sl, _ = inputs(2, 4, 128, 16, [9, 17])
    c8, p8 = ckv.to(torch.float8_e4m3fn), kpe.to(torch.float8_e4m3fn)
    return [
        (dict(ckv_cache=c8), TypeError, r"kpe_cache: expected dtype torch.float8_e4m3fn \(as ckv_cache\)"),
        (dict(ckv_cache=c8, kpe_cache=kpe.to(torch.float8_e5m2)), TypeError,
         r"kpe_cache: expected dtype torch.float8_e4m3fn \(as ckv_cache\)"),
        (dict(kpe_cache=p8), TypeError, r"kpe_cache: expected dtype torch.float16 \(as ckv_cache\)"),
        (dict(k_scale=0.5), ValueError, "k_scale: expected 1.0 for a torch.float16 cache"),
        (dict(ckv_cache=c8, kpe_cache=p8, v_scale=-1.0), ValueError, r"v_scale: expected a finite float in \(0, "),
        (dict(ckv_cache=c8, kpe_cache=p8, k_scale=float("inf")), ValueError, "k_scale: expected a finite float"),
        (dict(ckv_cache=c8, kpe_cache=p8, k_scale=torch.tensor(0.5)), TypeError, "k_scale: expected a float"),
        (dict(ckv_cache=c8, kpe_cache=p8, v_scale=True), TypeError, "v_scale: expected a float, got bool"),
        (dict(q_nope=qn.float(), q_pe=qp.float(), ckv_cache=c8, kpe_cache=p8), TypeError,
         "q_nope: expected float16 or bfloat16 with a float8 latent cache, got torch.float32"),
    ]


@pytest.mark.parametrize("case", range(len(_errors())))
def test_fp8_errors(case):
    raises(*_errors()[case])
