"""``decode`` with logit soft-capping (``softcap``, Gemma-2) against the float64 reference: the real kernels under
the interpreter, both schedules, every load path, paged caches, float8 caches, and its errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from test_decode import RAGGED, SCHEDULES, check_decode, make_inputs


@pytest.mark.parametrize("softcap", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_softcap_ragged(softcap, dtype, schedule):
    # scores of order 10 (softmax scale 3): a cap of 0.5 flattens them, one of 50 barely touches them
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    check_decode(q, k, v, lens, None, 3.0, f"softcap {softcap}", schedule=schedule, softcap=softcap)


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 1, 128), (6, 2, 256)])
@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "page16"])
def test_softcap_gqa_paged_head_dims(hq, hkv, d, page_size):
    q, k, v, lens, bt = make_inputs(3, hq, hkv, d, [37, 0, 70], page_size=page_size)
    check_decode(q, k, v, lens, bt, None, f"{hq}/{hkv} D={d} page {page_size}", softcap=1.0)
    check_decode(q, k, v, lens, bt, None, "lean over 5 programs", softcap=1.0, num_programs=5)


@pytest.mark.parametrize("load", ["1", "2"], ids=["blockptr", "tma"])
def test_softcap_load_paths(decode_load, load):
    decode_load(load)
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, capacity=80, layout="hnd")
    for schedule in SCHEDULES:
        check_decode(q, k, v, lens, None, 2.0, f"load {load}", schedule=schedule, softcap=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_softcap_fp8_cache(dtype):
    # bf16 queries over float8 tiles are scaled per row (kernels/attend.fp8_query) inside the tanh's argument
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    fp8 = torch.float8_e4m3fn
    check_decode(q, k.to(fp8), v.to(fp8), lens, None, 2.0, "fp8", k_scale=0.5, v_scale=2.0, softcap=3.0)
    check_decode(q[:1], k[:1].to(fp8), v[:1].to(fp8), None, None, 2.0, "fp8 one sequence", k_scale=0.5,
                 softcap=3.0)


@pytest.mark.parametrize("softcap", [1e4, 1e6, 1e8])
def test_softcap_large(softcap):
    # a cap far above the scores leaves them as they are: tanh keeps its relative precision near 0
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=torch.float32)
    check_decode(q, k, v, lens, None, 3.0, f"softcap {softcap:g}", softcap=softcap)


def test_softcap_zero_is_plain_decode():
    # 0 is no capping: the same plan and bits as a call without it; a cap changes the result and gets its own plan
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [30, 0, 45])
    plain = leanattn.decode(q, k, v, lens)
    assert torch.equal(leanattn.decode(q, k, v, lens, softcap=0.0), plain)
    capped = leanattn.decode(q, k, v, lens, softmax_scale=3.0, softcap=1.0)
    assert not torch.equal(capped, leanattn.decode(q, k, v, lens, softmax_scale=3.0))


@pytest.mark.parametrize("value,error", [(-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                                         (3e38, ValueError), (1.1e30, ValueError), ("1", TypeError), (True, TypeError),
                                         (torch.tensor(1.0), TypeError)])
def test_softcap_errors(value, error):
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    with pytest.raises(error, match="softcap"):
        leanattn.decode(q, k, v, lens, softcap=value)
