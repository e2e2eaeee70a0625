"""``decode`` over float8 KV caches (e4m3, e5m2) with dequantisation scales, against the float64 reference over
the dequantised caches: the real kernels under the interpreter."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_rel_close
from test_decode import RAGGED, SCHEDULES, check_decode, make_inputs

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def check_fp8(q, k, v, lens, bt, fp8, k_scale, v_scale, name, **kw):
    """Quantise the caches to ``fp8``, decode them with the scales and compare to the reference over
    ``cache * scale`` (the stored values exactly; ``test_decode.check_decode``); returns ``(out, lse)``."""
    softmax_scale = kw.pop("softmax_scale", None)
    return check_decode(q, k.to(fp8), v.to(fp8), lens, bt, softmax_scale, name, k_scale=k_scale, v_scale=v_scale, **kw)


@pytest.mark.parametrize("fp8", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fp8_ragged(fp8, dtype, schedule):
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    check_fp8(q, k, v, lens, None, fp8, 0.5, 3.0, f"{fp8} {dtype} {schedule}", schedule=schedule)


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 1, 128), (6, 2, 256)])
@pytest.mark.parametrize("page_size", [None, 1, 16], ids=["contiguous", "page1", "page16"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fp8_gqa_paged_head_dims(hq, hkv, d, page_size, schedule):
    q, k, v, lens, bt = make_inputs(3, hq, hkv, d, [37, 0, 70], page_size=page_size)
    check_fp8(q, k, v, lens, bt, torch.float8_e4m3fn, 1.7, 0.25, f"{hq}/{hkv} D={d} page {page_size}",
              schedule=schedule)


@pytest.mark.parametrize("lens", [[90], None], ids=["one sequence", "no lengths"])
def test_fp8_equal_rows(lens):
    # rows known to have equal lengths (the even pieces on the split kernel where the cut allows) and one sequence
    # on the persistent kernel over a small grid
    q, k, v, sl, _ = make_inputs(1 if lens else 2, 8, 2, 64, lens, capacity=90)
    check_fp8(q, k, v, sl, None, torch.float8_e5m2, 2.0, 0.5, "equal rows")
    check_fp8(q, k, v, sl, None, torch.float8_e5m2, 2.0, 0.5, "equal rows, 5 programs", num_programs=5)


@pytest.mark.parametrize("load", ["1", "2"], ids=["blockptr", "tma"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fp8_load_paths(decode_load, load, schedule):
    # block pointers and TMA descriptors read float8 tiles as the tensors of pointers do, the zero-filled tail
    # past each length included
    from leanattn.ops import decode as dec
    decode_load(load)
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, capacity=80, layout="hnd")
    check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, 0.5, 2.0, f"load {load}", schedule=schedule,
              num_programs=7 if schedule == "lean" else 0)
    assert [p.meta["LOAD"] for p in dec._PLANS.values()] == [int(load)]


def test_fp8_unit_scales_match_dequantised_cache():
    # the scales default to 1.0, and a scaled call matches decode over the dequantised cache in q's dtype (the
    # values a float8 e4m3 element holds are exact in fp16, and so are their products by powers of two; not
    # bitwise: over float8 the probabilities are exp2 of the scores less the max minus 15, kernels/attend.fp8_shift,
    # whose fp32 arguments round differently)
    q, k, v, lens, bt = make_inputs(2, 8, 2, 64, [50, 13], page_size=16)
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    plain = leanattn.decode(q, k8, v8, lens, bt)
    assert_rel_close("unit scales", plain, leanattn.decode(q, k8.to(q.dtype), v8.to(q.dtype), lens, bt).double(),
                     TOLERANCE[q.dtype])
    scaled = leanattn.decode(q, k8, v8, lens, bt, k_scale=0.5, v_scale=4.0)
    expect = leanattn.decode(q, k8.to(q.dtype) * 0.5, v8.to(q.dtype) * 4.0, lens, bt)
    assert_rel_close("scaled", scaled, expect.double(), TOLERANCE[q.dtype])


@pytest.mark.parametrize("v_scale", [1e-2, 1e-3])
def test_fp8_small_v_scale_fp16(v_scale):
    # one dominant key and many far smaller probabilities: V's scale is applied to the fp32 accumulator, not to
    # the probabilities before their cast to fp16, where a small scale rounded them away (1-25% error before)
    n = 4096
    q = torch.zeros(1, 4, 64, dtype=torch.float16)
    q[..., 0] = 4.0
    k = torch.zeros(1, n, 1, 64)
    k[0, 0, 0, 0] = 44.0  # its score 4 * 44 * k_scale 0.5 * softmax scale 0.125 = 11 nats above the others
    v = (torch.rand(1, n, 1, 64) * 0.3 / v_scale).clamp(max=448)
    lens = torch.tensor([n], dtype=torch.int32)
    check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, 0.5, v_scale, f"v_scale {v_scale}", softmax_scale=0.125)


@pytest.mark.parametrize("gap", [12.0, 18.0, 22.0])
def test_fp8_far_probabilities_fp16(gap):
    # one key ``gap`` nats above 4095 others, its V zero: the output is the others' probabilities times their V.
    # Products over float8 tiles run in fp16, and probabilities below 2**-24 of the running max would be fp16
    # zeros (relative error 1.0 from 17 nats); they are taken against the max minus 15 (in log2) instead
    # (kernels/attend.softmax_step), which fp16 holds down to 2**-39
    n = 4096
    q = torch.zeros(1, 4, 64, dtype=torch.float16)
    q[..., 0] = 4.0
    k = torch.zeros(1, n, 1, 64)
    k[0, 0, 0, 0] = gap / (4.0 * 0.5 * 0.125)  # its score: q 4 * k * k_scale 0.5 * softmax scale 0.125
    v = torch.rand(1, n, 1, 64)
    v[0, 0] = 0.0
    lens = torch.tensor([n], dtype=torch.int32)
    # V's scale keeps the output (about 4096 * e**-gap * 0.5 of it) out of fp16's subnormals
    check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, 0.5, 1024.0, f"gap {gap}", softmax_scale=0.125)


@pytest.mark.parametrize("magnitude", [1e-30, 1.0, 1e6, 1e30])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fp8_bf16_query_magnitudes(magnitude, schedule):
    # bf16 queries meet float8 tiles in fp16, each row scaled by a power of two first (kernels/attend.fp8_query):
    # rows far outside fp16's range (1e6 and 1e30 overflow it, 1e-30 underflows) keep their scores, the softmax
    # scale set so the scores are of order one
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=torch.bfloat16)
    q = (q.float() * magnitude).to(torch.bfloat16)
    q[1, 3] *= 1e-3  # rows of one block at other magnitudes than the block's largest
    check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, 0.5, 2.0, f"|q| ~ {magnitude}", schedule=schedule,
              softmax_scale=0.125 / magnitude)


@pytest.mark.parametrize("merge", ["0", "1"], ids=["in-kernel", "launch"])
def test_fp8_lean_piece_merges(monkeypatch, merge):
    # heads cut over several programs, their pieces merged in-kernel and by the merge launch; splits merged by
    # merge_states: V's scale applied once on every path
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
    dec._PLANS.clear()
    try:
        q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [70, 0, 45])
        check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, 0.5, 0.125, "lean", num_programs=7)
        assert [p.launch.mode for p in dec._PLANS.values()] == [int(merge)]
        check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, 0.5, 0.125, "split", schedule="split", num_splits=3)
    finally:
        dec._PLANS.clear()


def test_fp8_plan_keyed_on_scales():
    # a new scale with the same shapes is not served a plan made for another
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [30, 9])
    for k_scale, v_scale in ((1.0, 1.0), (0.25, 1.0), (0.25, 8.0)):
        check_fp8(q, k, v, lens, None, torch.float8_e4m3fn, k_scale, v_scale, f"scales {k_scale}, {v_scale}")


def test_fp8_plan_keyed_on_cache_dtype():
    # e4m3 and e5m2 caches of the same shapes, scales and strides get plans of their own: a plan's launchers run
    # the kernel compiled at their first launch (on a GPU; the interpreter always goes through the JIT), so a
    # shared plan read e5m2 bytes as e4m3 (H200, 2026-12-03: relative error 0.27-0.48)
    from leanattn.ops import decode as dec
    dec._PLANS.clear()
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [30, 9])
    for fp8 in FP8:
        check_fp8(q, k, v, lens, None, fp8, 0.5, 2.0, str(fp8))
    assert len(dec._PLANS) == 2
    dec._PLANS.clear()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fp8_opcheck(schedule):
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    # (not test_schema: it compares the inputs before and after with allclose, which CPU float8 lacks)
    torch.library.opcheck(torch.ops.leanattn.decode.default, (q, k8, v8, lens, bt, 0.125, schedule, 3, 2, 0, 0.5, 2.0),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_fp8_compile_fullgraph():
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    k8, v8 = k.to(torch.float8_e5m2), v.to(torch.float8_e5m2)
    torch._dynamo.reset()
    compiled = torch.compile(leanattn.decode, fullgraph=True)
    out = compiled(q, k8, v8, lens, bt, k_scale=0.5, v_scale=2.0)
    assert torch.equal(out, leanattn.decode(q, k8, v8, lens, bt, k_scale=0.5, v_scale=2.0))


def test_fp8_needs_sm89(monkeypatch):
    # a GPU before sm_89 is refused with an error naming the cache (Triton would fail inside its compiler)
    from leanattn import runtime
    from leanattn.ops import decode as dec
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [30, 9])
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    monkeypatch.setattr(runtime, "capability", lambda device: (8, 0))
    dec._PLANS.clear()
    with pytest.raises(ValueError, match=r"^k_cache: expected a GPU of compute capability 8.9 or later"):
        leanattn.decode(q, k8, v8, lens)
    leanattn.decode(q, k, v, lens)  # a cache in q's dtype is not
    dec._PLANS.clear()


def test_fp8_launch_config(monkeypatch):
    # the config a GPU would get: float8 caches at D=128 take their own table (twice bf16's tile tokens) unless
    # paged in pages of 64 tokens; other head dims keep bf16's; decode passes the cache's kind
    from leanattn import runtime
    from leanattn.ops import decode as dec, decode_config as dc
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "num_sms", lambda device: 132)
    monkeypatch.delenv("LEANATTN_DECODE_CONFIG", raising=False)
    cpu = torch.device("cpu")

    def launch(*args, **kw):
        cfg = dc.decode_config(*args, **kw)
        return cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.ctas_per_sm
    assert launch(128, 4, cpu, fp8=True) == dc._CUDA_FP8_TABLE[128] != dc._CUDA_TABLE[128]
    assert launch(128, 4, cpu) == dc._CUDA_TABLE[128]
    assert launch(128, 4, cpu, page_size=64, fp8=True) == dc._CUDA_PAGED_TABLE[128]
    assert launch(128, 4, cpu, page_size=16, fp8=True) == dc._CUDA_FP8_TABLE[128]
    assert launch(128, 4, cpu, page_size=16) == dc._CUDA_PAGED_TABLE[128]
    assert launch(64, 4, cpu, fp8=True) == dc._CUDA_TABLE[64]
    assert launch(128, 4, cpu, block_n=32, fp8=True) == (32, *dc._CUDA_FP8_TABLE[128][1:])
    # MLA's 512-wide latent over float8: its own entry, contiguous or in any pages; before sm_90 32-token tiles
    for page in (0, 64, 1):
        assert launch(512, 16, cpu, page_size=page, fp8=True) == dc._CUDA_FP8_LATENT[512]
    monkeypatch.setattr(runtime, "capability", lambda device: (8, 9))
    for page in (0, 64, 1):
        assert launch(512, 16, cpu, page_size=page, fp8=True) == dc._SMEM_HEAVY_FP8[512] != dc._SMEM_HEAVY[512]
    assert dc._SMEM_HEAVY_FP8[512][0] == 32
    assert launch(512, 16, cpu, page_size=64) == dc._SMEM_HEAVY[512]
    monkeypatch.undo()
    seen = []
    real = dc.decode_config
    monkeypatch.setattr(dec, "decode_config", lambda *a, **kw: seen.append((a[8], a[4])) or real(*a, **kw))
    dec._PLANS.clear()
    q, k, v, lens, bt = make_inputs(2, 4, 2, 64, [30, 9], page_size=16)
    k8, v8 = k.to(torch.float8_e5m2), v.to(torch.float8_e5m2)
    leanattn.decode(q, k, v, lens, bt)
    leanattn.decode(q, k8, v8, lens, bt)
    leanattn.decode(q.float(), k8, v8, lens, bt)  # fp32 queries keep bf16's tiles
    q, k, v, lens, bt = make_inputs(2, 4, 2, 64, [30, 9], page_size=8)
    leanattn.decode(q, k.to(torch.float8_e5m2), v.to(torch.float8_e5m2), lens, bt)
    assert seen == [(False, 16), (True, 16), (False, 16), (True, 8)]
    dec._PLANS.clear()


@pytest.mark.parametrize("knob", ["LEANATTN_FP8_ASM", "LEANATTN_FP8_CONVERT_ONCE"])
def test_conversion_knob_errors(knob):
    # the float8 conversion knobs are read when kernels/attend.py is imported: a bad value stops the import, naming
    # the knob (a process of its own, since this one imported it long ago)
    import os
    import subprocess
    import sys
    env = dict(os.environ, **{knob: "2"})
    run = subprocess.run([sys.executable, "-c", "import leanattn"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert f"ValueError: {knob}: expected 0 or 1, got '2'" in run.stderr
