"""Bad inputs to ``decode`` and ``merge_states`` raise the right error type, naming the argument."""
from __future__ import annotations

import re

import pytest
import torch

import leanattn


def base(paged=False):
    """Valid inputs: ``q (2, 4, 64)`` fp16, cache ``(2, 32, 2, 64)`` or 8 pages of 8 tokens."""
    q = torch.randn(2, 4, 64, dtype=torch.float16)
    if paged:
        k = torch.randn(8, 8, 2, 64, dtype=torch.float16)
        block_table = torch.tensor([[3, 1, 6], [0, 2, 7]], dtype=torch.int32)
    else:
        k, block_table = torch.randn(2, 32, 2, 64, dtype=torch.float16), None
    return dict(q=q, k_cache=k, v_cache=torch.randn_like(k), block_table=block_table,
                cache_seqlens=torch.tensor([10, 20], dtype=torch.int32))


def _apply(kw, changes):
    kw.update({name: change(kw) if callable(change) else change for name, change in changes.items()})
    return kw


def replace(paged=False, **changes):
    """Valid inputs with some replaced; a callable change gets the inputs and returns the new value."""
    return _apply(base(paged), changes)


def half(shape):
    return torch.randn(shape, dtype=torch.float16)


E4M3 = torch.float8_e4m3fn


def fp8(**changes):
    """Valid inputs with float8 e4m3 caches, then ``changes`` as in ``replace``."""
    return _apply(replace(k_cache=lambda kw: kw["k_cache"].to(E4M3), v_cache=lambda kw: kw["v_cache"].to(E4M3)),
                  changes)


# (id, inputs, error type, argument named first in the message)
DECODE_CASES = [
    ("q rank 2", replace(q=half((2, 256))), ValueError, "q"),
    ("q not a tensor", replace(q=[[0.0]]), TypeError, "q"),
    ("k rank 3", replace(k_cache=half((2, 32, 128))), ValueError, "k_cache"),
    ("v rank 5", replace(v_cache=half((2, 32, 2, 1, 64))), ValueError, "v_cache"),
    ("v shape differs", replace(v_cache=half((2, 16, 2, 64))), ValueError, "v_cache"),
    ("batch mismatch", replace(k_cache=half((3, 32, 2, 64)), v_cache=half((3, 32, 2, 64))), ValueError, "k_cache"),
    ("head dim mismatch", replace(k_cache=half((2, 32, 2, 128)), v_cache=half((2, 32, 2, 128))), ValueError,
     "k_cache"),
    ("Hq not multiple of Hkv", replace(q=half((2, 5, 64))), ValueError, "q"),
    ("no kv heads", replace(k_cache=half((2, 32, 0, 64)), v_cache=half((2, 32, 0, 64))), ValueError, "k_cache"),
    ("head dim 96", replace(q=half((2, 4, 96)), k_cache=half((2, 32, 2, 96)), v_cache=half((2, 32, 2, 96))),
     ValueError, "q"),
    ("float64", replace(**{n: (lambda kw, n=n: kw[n].double()) for n in ("q", "k_cache", "v_cache")}), TypeError, "q"),
    ("int", replace(**{n: (lambda kw, n=n: kw[n].to(torch.int16)) for n in ("q", "k_cache", "v_cache")}), TypeError,
     "q"),
    ("mixed dtypes", replace(k_cache=lambda kw: kw["k_cache"].float()), TypeError, "k_cache"),
    ("mixed dtypes v", replace(v_cache=lambda kw: kw["v_cache"].bfloat16()), TypeError, "v_cache"),
    ("mixed devices", replace(q=lambda kw: kw["q"].to("meta")), ValueError, "k_cache"),
    ("seqlens on another device", replace(cache_seqlens=lambda kw: kw["cache_seqlens"].to("meta")), ValueError,
     "cache_seqlens"),
    ("length beyond capacity", replace(cache_seqlens=torch.tensor([10, 33], dtype=torch.int32)), ValueError,
     "cache_seqlens"),
    ("negative length", replace(cache_seqlens=torch.tensor([-1, 3], dtype=torch.int32)), ValueError, "cache_seqlens"),
    ("seqlens int64", replace(cache_seqlens=torch.tensor([1, 3])), TypeError, "cache_seqlens"),
    ("seqlens float", replace(cache_seqlens=torch.tensor([1.0, 3.0])), TypeError, "cache_seqlens"),
    ("seqlens wrong batch", replace(cache_seqlens=torch.tensor([1, 2, 3], dtype=torch.int32)), ValueError,
     "cache_seqlens"),
    ("seqlens rank 2", replace(cache_seqlens=torch.tensor([[1, 2]], dtype=torch.int32)), ValueError, "cache_seqlens"),
    ("seqlens not a tensor", replace(cache_seqlens=[1, 2]), TypeError, "cache_seqlens"),
    ("block table int64", replace(True, block_table=lambda kw: kw["block_table"].long()), TypeError, "block_table"),
    ("block table rank 1", replace(True, block_table=torch.arange(6, dtype=torch.int32)), ValueError, "block_table"),
    ("block table too few rows", replace(True, block_table=lambda kw: kw["block_table"][:1]), ValueError,
     "block_table"),
    # 2 pages of 8 tokens cannot hold 20 tokens: the lengths exceed what the block table maps
    ("block table too few pages", replace(True, block_table=lambda kw: kw["block_table"][:, :2].contiguous()),
     ValueError, "cache_seqlens"),
    ("block table strided", replace(True, block_table=lambda kw: kw["block_table"].repeat(1, 2)[:, ::2]), ValueError,
     "block_table"),
    ("page size 0", replace(True, k_cache=lambda kw: kw["k_cache"][:, :0], v_cache=lambda kw: kw["v_cache"][:, :0],
                            cache_seqlens=None), ValueError, "k_cache"),
    ("page id too large", replace(True, block_table=torch.tensor([[3, 1, 6], [0, 8, 7]], dtype=torch.int32)),
     ValueError, "block_table"),
    ("page id negative", replace(True, block_table=torch.tensor([[-1, 1, 6], [0, 2, 7]], dtype=torch.int32)),
     ValueError, "block_table"),
    ("block table strided", replace(True, block_table=lambda kw: kw["block_table"].repeat_interleave(2, 1)[:, ::2]),
     ValueError, "block_table"),
    ("k strided head dim", replace(k_cache=half((2, 32, 2, 128))[..., ::2]), ValueError, "k_cache"),
    ("v strided head dim", replace(v_cache=half((2, 32, 2, 128))[..., ::2]), ValueError, "v_cache"),
    ("bad schedule", dict(base(), schedule="stream-k"), ValueError, "schedule"),
    ("scale as string", dict(base(), softmax_scale="0.1"), TypeError, "softmax_scale"),
    ("scale as bool", dict(base(), softmax_scale=True), TypeError, "softmax_scale"),
    ("scale as tensor", dict(base(), softmax_scale=torch.tensor(0.1)), TypeError, "softmax_scale"),
    ("validate as string", dict(base(), validate="yes"), TypeError, "validate"),
    ("scale nan", dict(base(), softmax_scale=float("nan")), ValueError, "softmax_scale"),
    ("scale inf", dict(base(), softmax_scale=float("inf")), ValueError, "softmax_scale"),
    ("scale past fp32 with log2(e)", dict(base(), softmax_scale=-3e38), ValueError, "softmax_scale"),
    # float8 caches
    ("q float8", replace(**{n: (lambda kw, n=n: kw[n].to(E4M3)) for n in ("q", "k_cache", "v_cache")}), TypeError,
     "q"),
    ("v float8, k not", replace(v_cache=lambda kw: kw["v_cache"].to(E4M3)), TypeError, "v_cache"),
    ("k float8, v not", replace(k_cache=lambda kw: kw["k_cache"].to(E4M3)), TypeError, "v_cache"),
    ("k e4m3, v e5m2", fp8(v_cache=lambda kw: kw["v_cache"].to(torch.float8_e5m2)), TypeError, "v_cache"),
    ("float8 cache on another device", fp8(k_cache=lambda kw: kw["k_cache"].to("meta")), ValueError, "k_cache"),
    ("k_scale with an fp16 cache", dict(base(), k_scale=0.5), ValueError, "k_scale"),
    ("v_scale with an fp16 cache", dict(base(), v_scale=2.0), ValueError, "v_scale"),
    ("k_scale zero", dict(fp8(), k_scale=0.0), ValueError, "k_scale"),
    ("v_scale negative", dict(fp8(), v_scale=-1.0), ValueError, "v_scale"),
    ("k_scale nan", dict(fp8(), k_scale=float("nan")), ValueError, "k_scale"),
    ("v_scale inf", dict(fp8(), v_scale=float("inf")), ValueError, "v_scale"),
    ("k_scale past fp32", dict(fp8(), k_scale=1e39), ValueError, "k_scale"),
    ("k_scale as tensor", dict(fp8(), k_scale=torch.tensor(0.5)), TypeError, "k_scale"),
    ("v_scale as bool", dict(fp8(), v_scale=True), TypeError, "v_scale"),
    ("k_scale as string", dict(fp8(), k_scale="0.5"), TypeError, "k_scale"),
    # launch counts (TypeError for another type): a negative one reached the schedule's search as a grid of no
    # program (a ZeroDivisionError)
    ("num_programs negative", dict(base(), num_programs=-100), ValueError, "num_programs"),
    ("num_programs float", dict(base(), num_programs=2.7), TypeError, "num_programs"),
    ("num_programs None", dict(base(), num_programs=None), TypeError, "num_programs"),
    ("num_programs string", dict(base(), num_programs="3"), TypeError, "num_programs"),
    ("num_splits negative", dict(base(), schedule="split", num_splits=-3), ValueError, "num_splits"),
    ("num_splits bool", dict(base(), schedule="split", num_splits=True), TypeError, "num_splits"),
    ("num_programs 2**31", dict(base(), num_programs=2**31), ValueError, "num_programs"),
    ("num_splits 65537", dict(base(), schedule="split", num_splits=65537), ValueError, "num_splits"),
    ("sinks NaN", dict(base(), sinks=torch.tensor([0.0, float("nan"), 1.0, 2.0])), ValueError, "sinks"),
    ("return_lse not a bool", dict(base(), return_lse="yes"), TypeError, "return_lse"),
    ("return_lse None", dict(base(), return_lse=None), TypeError, "return_lse"),
    ("schedule None", dict(base(), schedule=None), TypeError, "schedule"),
]


@pytest.mark.parametrize("kwargs,error,name", [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES])
def test_decode_rejects(kwargs, error, name):
    with pytest.raises(error, match=rf"^{re.escape(name)}: expected"):
        leanattn.decode(**kwargs)


def test_page_table_layout_messages():
    # checks.page_table, shared with bifurcated_decode's prefix_block_table: what each layout error says
    with pytest.raises(ValueError, match=r"block_table: expected unit stride on the last dimension, got \(6, 2\)"):
        leanattn.decode(**replace(True, block_table=lambda kw: kw["block_table"].repeat(1, 2)[:, ::2]))
    with pytest.raises(ValueError, match="k_cache: expected a page size >= 1, got 0"):
        leanattn.decode(**replace(True, k_cache=lambda kw: kw["k_cache"][:, :0],
                                  v_cache=lambda kw: kw["v_cache"][:, :0], cache_seqlens=None))


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_valid_inputs_pass(paged):
    # the cases above fail because of their one change, not because the base inputs are wrong
    assert leanattn.decode(**base(paged)).shape == (2, 4, 64)
    assert leanattn.decode(**fp8(k_scale=0.5, v_scale=2.0)).shape == (2, 4, 64)


def test_unused_page_ids_are_not_checked():
    # page ids past a sequence's length are never read (vLLM pads block tables with garbage)
    kw = replace(True, block_table=torch.tensor([[3, 1, 99], [0, 2, 7]], dtype=torch.int32))
    assert leanattn.decode(**kw).shape == (2, 4, 64)


def test_validate_true_inside_fullgraph_compile():
    # the value checks read lengths on the host: fullgraph=True says so, without it they run after a graph break
    kw = base()
    lens = kw.pop("cache_seqlens")
    for fullgraph in (True, False):
        torch._dynamo.reset()
        f = torch.compile(lambda sl: leanattn.decode(cache_seqlens=sl, validate=True, **kw), fullgraph=fullgraph)
        if fullgraph:
            with pytest.raises(torch._dynamo.exc.Unsupported, match="validate=True reads lengths and ids on the host"):
                f(lens)
        else:
            assert torch.equal(f(lens), leanattn.decode(cache_seqlens=lens, **kw))
            with pytest.raises(ValueError, match="cache_seqlens: expected lengths <="):
                f(lens + 1000)


def states(S=3, B=2, H=4, D=64):
    return torch.randn(S, B, H, D, dtype=torch.float16), torch.randn(S, B, H)


MERGE_CASES = [
    ("outs rank 3", (torch.randn(3, 2, 64), torch.randn(3, 2)), ValueError, "outs"),
    ("outs not a tensor", ([[0.0]], torch.randn(3, 2, 4)), TypeError, "outs"),
    ("lses rank 2", (states()[0], torch.randn(3, 8)), ValueError, "lses"),
    ("lses shape", (states()[0], torch.randn(3, 2, 5)), ValueError, "lses"),
    ("lses fp16", (states()[0], torch.randn(3, 2, 4, dtype=torch.float16)), TypeError, "lses"),
    ("outs float64", (states()[0].double(), states()[1]), TypeError, "outs"),
    ("outs int", (states()[0].to(torch.int32), states()[1]), TypeError, "outs"),
    ("lses on another device", (states()[0], states()[1].to("meta")), ValueError, "lses"),
    ("outs head dim 0", (torch.randn(3, 2, 4, 0), states()[1]), ValueError, "outs"),
]


@pytest.mark.parametrize("args,error,name", [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_merge_states_rejects(args, error, name):
    with pytest.raises(error, match=rf"^{re.escape(name)}: expected"):
        leanattn.merge_states(*args)
