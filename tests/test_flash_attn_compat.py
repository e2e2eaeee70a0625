"""``leanattn.integrations.flash_attn.flash_attn_with_kvcache``: flash-attn 2's signature and defaults on
``leanattn.decode``, against the float64 reference (and decode itself where the mapping is the point). CPU under the
Triton interpreter, or a GPU."""
import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.integrations.flash_attn import flash_attn_with_kvcache
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, paged_kv


def _inputs(B, Lq, hq, hkv, d, n, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, Lq, hq, d, device=device, generator=g).half()
    k = torch.randn(B, n, hkv, d, device=device, generator=g).half()
    v = torch.randn(B, n, hkv, d, device=device, generator=g).half()
    return q, k, v


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_options_as_flash_attn(device, paged):
    # two query tokens, a left window, causal through window_size=(left, 0), soft cap, ALiBi; the LSE in
    # flash-attn's (B, H, seqlen_q) layout
    q, k, v = _inputs(3, 2, 4, 2, 64, 40, device)
    lens = [40, 17, 0]  # (the empty sequence's tokens see no key)
    sl = torch.tensor(lens, dtype=torch.int32, device=device)
    slopes = torch.rand(4, device=device)
    kc, vc, bt = paged_kv(k, v, lens, 8) if paged else (k, v, None)
    out, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=sl, block_table=bt, softmax_scale=0.2,
                                       window_size=(9, 0), softcap=20.0, alibi_slopes=slopes,
                                       return_softmax_lse=True)
    ref, ref_lse = reference.decode(q, k, v, sl, None, 0.2, softcap=20.0, window_left=9, causal=True,
                                    alibi_slopes=slopes)
    assert out.shape == q.shape and lse.shape == (3, 4, 2) and lse.is_contiguous()
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    # (a token that sees no key: +inf, as flash-attn writes it)
    ref_lse = ref_lse.transpose(1, 2).masked_fill(ref_lse.transpose(1, 2) == float("-inf"), float("inf"))
    assert torch.isinf(lse).any() and torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    assert_lse_close("lse", lse[finite], ref_lse[finite], TOLERANCE[q.dtype])
    # num_splits: FlashDecoding's splits, the same attention
    split = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=sl, block_table=bt, softmax_scale=0.2, causal=True,
                                    window_size=(9, -1), softcap=20.0, alibi_slopes=slopes, num_splits=3)
    assert_rel_close("num_splits=3", split, ref, TOLERANCE[q.dtype])


def test_append_with_interleaved_rotary_by_default(device):
    # k=, v= written at cache_seqlens (an int: every sequence's length) and rotary embedding, interleaved as
    # flash-attn's default: decode's result with rotary_interleaved=True
    q, k, v = _inputs(2, 1, 4, 4, 64, 24, device, seed=1)
    new_k, new_v = (torch.randn(2, 1, 4, 64, device=device).half() for _ in range(2))
    ang = torch.arange(32, device=device)[:, None] / 1e4 ** (torch.arange(16, device=device) / 16)
    cos, sin = ang.cos(), ang.sin()
    k1, v1, k2, v2 = k.clone(), v.clone(), k.clone(), v.clone()
    out = flash_attn_with_kvcache(q, k1, v1, new_k, new_v, cos, sin, cache_seqlens=10)
    sl = torch.full((2,), 10, dtype=torch.int32, device=device)
    want = leanattn.decode(q, k2, v2, sl, k=new_k, v=new_v, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=True)
    assert torch.equal(out, want) and torch.equal(k1, k2) and torch.equal(v1, v2)
    assert not torch.equal(out, leanattn.decode(q, k.clone(), v.clone(), sl, k=new_k, v=new_v, rotary_cos=cos,
                                                rotary_sin=sin))  # (the default mattered)


def test_errors(device):
    q, k, v = _inputs(1, 1, 2, 2, 64, 8, device)
    q4 = torch.randn(1, 4, 2, 64, device=device).half()
    with pytest.raises(ValueError, match="window_size: expected a right window of -1, 0 or at least seqlen_q - 1 = 3"):
        flash_attn_with_kvcache(q4, k, v, window_size=(-1, 1))
    # a right window past the last query token sees every key: -1's attention
    assert torch.equal(flash_attn_with_kvcache(q4, k, v, window_size=(-1, 3)), flash_attn_with_kvcache(q4, k, v))
    assert torch.equal(flash_attn_with_kvcache(q, k, v, window_size=(-1, 5)), flash_attn_with_kvcache(q, k, v))
    with pytest.raises(ValueError, match=r"window_size: expected a \(left, right\) pair"):
        flash_attn_with_kvcache(q, k, v, window_size=5)
    with pytest.raises(ValueError, match="num_splits: expected an int >= 0"):
        flash_attn_with_kvcache(q, k, v, num_splits=-1)
    with pytest.raises(ValueError, match="q: expected a 4-D tensor"):
        flash_attn_with_kvcache(q[:, 0], k, v)
