"""``decode`` over int8 KV caches (symmetric, per-tensor scales: TensorRT-LLM's int8 KV cache), against the float64
reference over the dequantised caches: the real kernels under the interpreter. The int8 tiles take the float8 path
(one byte an element, converted to fp16 in registers, ``kernels/attend.py``)."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import leanattn
from leanattn.kernels.attend import from_byte
from test_decode import RAGGED, SCHEDULES, check_decode, make_inputs


def quantised(x: torch.Tensor):
    """``(x8, scale)``: ``x`` as symmetric int8 with one scale, its largest magnitude at 127."""
    scale = float(x.abs().max()) / 127
    return (x.float() / scale).round().clamp(-127, 127).to(torch.int8), scale


def check_int8(q, k, v, lens, bt, name, **kw):
    (k8, ks), (v8, vs) = quantised(k), quantised(v)
    return check_decode(q, k8, v8, lens, bt, kw.pop("softmax_scale", None), name, k_scale=ks, v_scale=vs, **kw)


@triton.jit
def _convert(X, Y, DTYPE: tl.constexpr):
    offs = tl.arange(0, 256)
    tl.store(Y + offs, from_byte(tl.load(X + offs), DTYPE))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_from_byte_every_int8(device, dtype):
    # the kernels' int8 conversion through fp16's bits (kernels/attend.from_byte): all 256 values, -128 included
    # (the quantiser above never makes it), exact in either product dtype
    x = torch.arange(-128, 128, dtype=torch.int8, device=device)
    y = torch.empty(256, dtype=dtype, device=device)
    _convert[(1,)](x, y, tl.float16 if dtype == torch.float16 else tl.bfloat16)
    assert torch.equal(y, x.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_int8_ragged(dtype, schedule):
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    check_int8(q, k, v, lens, None, f"int8 {dtype} {schedule}", schedule=schedule)


@pytest.mark.parametrize("hq,hkv,d,page_size", [(4, 4, 64, 1), (8, 1, 128, 16), (6, 2, 256, None)])
def test_int8_gqa_paged_head_dims(hq, hkv, d, page_size):
    q, k, v, lens, bt = make_inputs(3, hq, hkv, d, [37, 0, 70], page_size=page_size)
    for schedule in ("lean", "split"):
        check_int8(q, k, v, lens, bt, f"{hq}/{hkv} D={d} page {page_size} {schedule}", schedule=schedule)


def test_int8_tokens_append_and_window():
    # two query tokens, causal, a window; the step's new keys and values appended as int8 first
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [40, 9], capacity=48)
    q4 = torch.randn(2, 2, 4, 64).half()
    check_int8(q4, k, v, lens, None, "tokens", causal=True, window_left=11)
    (k8, ks), (v8, vs) = quantised(k), quantised(v)
    new_k, new_v = (torch.randint(-127, 128, (2, 2, 2, 64), dtype=torch.int8) for _ in range(2))
    before = lens - 2
    out = leanattn.decode(q4, k8.clone(), v8.clone(), before, k=new_k, v=new_v, causal=True, k_scale=ks, v_scale=vs)
    k8[0, 38:40], k8[1, 7:9], v8[0, 38:40], v8[1, 7:9] = new_k[0], new_k[1], new_v[0], new_v[1]
    assert torch.equal(out, leanattn.decode(q4, k8, v8, lens, causal=True, k_scale=ks, v_scale=vs))


def test_int8_errors():
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [9, 5])
    k8 = quantised(k)[0]
    with pytest.raises(TypeError, match=r"k_cache: expected dtype torch.float16 or a float8 one \(int8 caches are "
                                        r"read by leanattn.decode\)"):
        leanattn.bifurcated_decode(q, k8[0], k8[0], k8, k8, lens)
    with pytest.raises(TypeError, match="v_cache: expected dtype torch.int8"):
        leanattn.decode(q, k8, v, lens)
    with pytest.raises(ValueError, match="k_scale: expected a finite float"):
        leanattn.decode(q, k8, k8, lens, k_scale=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("page_size", [None, 16])
def test_int8_gpu(page_size):
    # bf16 queries over int8 caches at a realistic size (GQA 32/8, D=128, ragged), contiguous and paged
    lens = [8192, 1, 3000, 0, 77]
    q, k, v, sl, bt = make_inputs(len(lens), 32, 8, 128, lens, dtype=torch.bfloat16, device="cuda",
                                  page_size=page_size)
    for schedule in SCHEDULES:
        check_int8(q, k, v, sl, bt, f"gpu {schedule} page {page_size}", schedule=schedule)
