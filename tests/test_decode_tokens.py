"""``decode`` with several query tokens a sequence (``q (B, Lq, Hq, D)``, speculative decoding's verification step)
against the float64 reference: the real kernels under the interpreter, causal and not, with sliding windows, over
ragged, paged, float8 and soft-capped caches, both schedules and every load path, and the errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_rel_close
from test_decode import BLOCK_N, RAGGED, SCHEDULES, check_decode, make_inputs


def with_tokens(q: torch.Tensor, lq: int) -> torch.Tensor:
    """A random query of ``lq`` tokens a sequence, shaped as ``q (B, Hq, D)`` with the token axis: ``(B, lq, Hq,
    D)``, seen through a permuted view (strides not those of a contiguous tensor)."""
    B, Hq, D = q.shape
    return torch.randn(lq, B, Hq, D, dtype=q.dtype).transpose(0, 1)


@pytest.mark.parametrize("lq", [2, 3, 5])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_tokens_ragged(lq, causal, dtype, schedule):
    # lengths below lq: causal tokens before the cache's first key see nothing (zeros, -inf)
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    check_decode(with_tokens(q, lq), k, v, lens, None, None, f"{lq} tokens", schedule=schedule, causal=causal)


# each head layout with one cache layout, each cache layout at least once (the cross product cost CI about 55 s more)
@pytest.mark.parametrize("hq,hkv,d,lq,page_size", [
    (4, 4, 64, 4, None), (8, 1, 128, 3, 1), (6, 2, 256, 2, 16), (48, 1, 64, 3, 64), (8, 2, 64, 16, None),
    (8, 2, 64, 16, 16)], ids=str)
def test_tokens_gqa_paged_head_dims(hq, hkv, d, lq, page_size):
    # 48/1 x 3 tokens: 144 rows a kv head, three head blocks of 64; 8/2 x 16: 64 rows, one block
    q, k, v, lens, bt = make_inputs(3, hq, hkv, d, [37, 2, 70], page_size=page_size)
    q = with_tokens(q, lq)
    check_decode(q, k, v, lens, bt, None, f"{hq}/{hkv} D={d} page {page_size}", causal=True)
    # rows cut into pieces by several programs, and several splits a row
    check_decode(q, k, v, lens, bt, None, "lean over 5 programs", causal=True, num_programs=5)
    check_decode(q, k, v, lens, bt, None, "split in 3", schedule="split", num_splits=3, causal=True)


@pytest.mark.parametrize("window", [0, 1, BLOCK_N - 1, BLOCK_N, 40])
# each schedule with causal and full tokens once between them, at every window (the cross product cost CI 15 s more)
@pytest.mark.parametrize("causal,schedule", [(True, "lean"), (False, "split")], ids=["causal-lean", "full-split"])
def test_tokens_window(window, causal, schedule):
    # each token's window ends at its own position; the pages before the first token's window may be gone
    q, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, page_size=16)
    q = with_tokens(q, 3)
    check_decode(q, k, v, lens, bt, None, f"window {window}", schedule=schedule, causal=causal, window_left=window)
    stale = bt.clone()
    for b, n in enumerate(lens.tolist()):
        first_page = max(n - 3 - window, 0) // 16
        stale[b, :first_page] = -1
    out = leanattn.decode(q, k, v, lens, stale, schedule=schedule, causal=causal, window_left=window, validate=True)
    assert torch.equal(out, leanattn.decode(q, k, v, lens, bt, schedule=schedule, causal=causal, window_left=window))


@pytest.mark.parametrize("load", ["1", "2"], ids=["blockptr", "tma"])
def test_tokens_load_paths(decode_load, load):
    decode_load(load)
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, capacity=80, layout="hnd")
    q = with_tokens(q, 4)
    for schedule in SCHEDULES:
        check_decode(q, k, v, lens, None, None, f"load {load}", schedule=schedule, causal=True)
        check_decode(q, k, v, lens, None, None, f"load {load} window", schedule=schedule, causal=True,
                     window_left=17)


@pytest.mark.parametrize("load", ["0", "1", "2"], ids=["pointers", "blockptr", "tma"])
def test_tokens_nan_before_the_windows(decode_load, load):
    # keys before the first token's window hold NaN: no path may carry them into the product
    decode_load(load)
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [70, 45, 33], capacity=80)
    q = with_tokens(q, 3)
    ref = reference.decode(q, k, v, lens, window_left=17, causal=True)
    for b, n in enumerate(lens.tolist()):
        k[b, :n - 20] = float("nan")
        v[b, :n - 20] = float("nan")
    for schedule in SCHEDULES:
        out = leanattn.decode(q, k, v, lens, schedule=schedule, window_left=17, causal=True)
        assert_rel_close(f"load {load} {schedule}", out, ref[0], TOLERANCE[q.dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_tokens_fp8_and_softcap(dtype):
    q, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype, page_size=16)
    q = with_tokens(q, 3)
    fp8 = torch.float8_e4m3fn
    check_decode(q, k.to(fp8), v.to(fp8), lens, bt, 2.0, "fp8", k_scale=0.5, v_scale=2.0, causal=True)
    check_decode(q, k, v, lens, bt, 3.0, "softcap", softcap=2.0, causal=True, window_left=20)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_tokens_match_sdpa_lower_right(hq, hkv):
    # the causal mask is PyTorch's bottom-right one (causal_lower_right), as flash-attn's with seqlen_q < seqlen_k
    q, k, v, _, _ = make_inputs(2, hq, hkv, 64, [40, 40], dtype=torch.float32)
    q = with_tokens(q, 5)
    out = leanattn.decode(q, k, v, causal=True)
    g = hq // hkv
    kt, vt = (x.transpose(1, 2).repeat_interleave(g, 1) for x in (k, v))
    mask = causal_lower_right(5, 40)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kt, vt, attn_mask=mask).transpose(1, 2)
    assert_rel_close("sdpa lower right", out, ref.double(), 1e-4)


def test_tokens_each_is_a_decode_of_the_shorter_cache():
    # token s of a causal call is the one-token decode over the cache cut at its position
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [50, 20, 33], page_size=16)
    q = with_tokens(q, 4)
    out, lse = leanattn.decode(q, k, v, lens, bt, causal=True, return_lse=True)
    for s in range(4):
        one, one_lse = leanattn.decode(q[:, s], k, v, lens - (3 - s), bt, return_lse=True)
        assert_rel_close(f"token {s}", out[:, s], one.double(), TOLERANCE[q.dtype])
        assert torch.allclose(lse[:, s], one_lse, atol=1e-3)


def test_tokens_one_and_none():
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [50, 0, 33], page_size=16)
    out, lse = leanattn.decode(q[:, None], k, v, lens, bt, causal=True, return_lse=True)
    plain, plain_lse = leanattn.decode(q, k, v, lens, bt, return_lse=True)
    assert out.shape == (3, 1, 8, 64) and lse.shape == (3, 1, 8)
    assert torch.equal(out[:, 0], plain) and torch.equal(lse[:, 0], plain_lse)
    out, lse = leanattn.decode(q[:, None][:, :0], k, v, lens, bt, causal=True, return_lse=True)
    assert out.shape == (3, 0, 8, 64) and lse.shape == (3, 0, 8)


def test_tokens_lengths_change():
    # the schedule is counted on the device from the lengths: one plan serves new lengths
    q, k, v, _, bt = make_inputs(3, 8, 2, 64, [70, 70, 70], page_size=16)
    q = with_tokens(q, 3)
    for lens in ([70, 3, 50], [0, 64, 17], [2, 33, 70]):
        check_decode(q, k, v, torch.tensor(lens, dtype=torch.int32), bt, None, f"lengths {lens}", causal=True,
                     window_left=24)


def test_tokens_compile_fullgraph():
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    q = with_tokens(q, 3).contiguous()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.decode(*a, causal=True, return_lse=True), fullgraph=True)
    out, lse = compiled(q, k, v, lens, bt)
    ref_out, ref_lse = leanattn.decode(q, k, v, lens, bt, causal=True, return_lse=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


@pytest.mark.parametrize("name,kw,error,match", [
    ("q rank 5", dict(q=torch.randn(2, 3, 1, 4, 64, dtype=torch.float16)), ValueError, "q: expected a 3-D"),
    ("q heads", dict(q=torch.randn(2, 3, 5, 64, dtype=torch.float16)), ValueError, "multiple of"),
    ("q batch", dict(q=torch.randn(3, 3, 4, 64, dtype=torch.float16)), ValueError, "batch size"),
    ("q head dim", dict(q=torch.randn(2, 3, 4, 32, dtype=torch.float16)), ValueError, "head dim"),
    ("causal int", dict(causal=1), TypeError, "causal: expected a bool"),
    ("causal none", dict(causal=None), TypeError, "causal: expected a bool"),
])
def test_tokens_errors(name, kw, error, match):
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    args = dict(q=with_tokens(q, 3), causal=True) | kw
    with pytest.raises(error, match=match):
        leanattn.decode(args.pop("q"), k, v, lens, **args)
