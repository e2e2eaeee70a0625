"""Random combinations of the options of ``decode``, ``bifurcated_decode``, ``cascade_decode``, ``mla_decode`` and
the sparse ops against the float64 reference: each test draws its shapes, lengths, cache layout and options from the
run's fresh seed (``conftest._fresh_seed``, recorded in the report), so every run tries combinations that the
parametrized files name one at a time.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import random

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import assert_states_match, paged_kv
from leanattn.sparse import api
from test_decode import make_inputs
from test_decode_append import _written_by_hand
from test_mla import check as check_mla
from test_mla import inputs as mla_inputs
from test_sparse import CONFIGS
from test_sparse_gqa import _check as check_sparse

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn
# float32 stands in for bf16 on the CPU, whose interpreter's bf16 dot is broken
DTYPES = [torch.float16, torch.float32] if DEV == "cpu" else [torch.float16, torch.bfloat16]


def _rng() -> random.Random:
    # from torch's generator, which the run's seed set: a failure reproduces from the recorded seed
    return random.Random(int(torch.randint(2**31, ())))


def _shared_options(rng: random.Random, hq: int, lq: int) -> dict:
    """Options both ops take: soft cap, sliding window, causal tokens, sinks."""
    kw = {}
    if rng.random() < 0.3:
        kw["softcap"] = 30.0
    if rng.random() < 0.3:
        kw["window_left"] = rng.choice([0, 5, 40])
    if lq > 1:
        kw["causal"] = rng.random() < 0.7
    if rng.random() < 0.25:
        kw["sinks"] = torch.randn(hq, device=DEV)
    return kw


@pytest.mark.parametrize("case", range(40))
def test_decode_combinations(case):
    rng = _rng()
    B, hkv = rng.randint(1, 4), rng.choice([1, 2])
    hq, D = hkv * rng.choice([1, 2, 3, 4, 8]), rng.choice([64, 64, 128])
    lens = [rng.choice([0, 1, 15, 16, 17, 33, 64, 100, 150]) for _ in range(B)]
    page = rng.choice([None, None, 1, 4, 16, 64])
    dtype, lq = rng.choice(DTYPES), rng.choice([1, 1, 2, 3])
    appended = lq if rng.random() < 0.25 else 0
    kw = _shared_options(rng, hq, lq)
    if rng.random() < 0.25:
        kw["alibi_slopes"] = torch.rand(hq, device=DEV) * 0.1
    schedule = rng.choice(["lean", "lean", "split", "batch_invariant"])
    if schedule == "lean" and rng.random() < 0.5:
        kw["num_programs"] = rng.randint(1, 9)
    if schedule == "split" and rng.random() < 0.5:
        kw["num_splits"] = rng.randint(1, 5)
    q, k, v, sl, bt = make_inputs(B, hq, hkv, D, lens, dtype=dtype, device=DEV, page_size=page,
                                  capacity=max(lens) + appended + 1)
    if lq > 1:
        q = torch.randn(B, lq, hq, D, dtype=dtype, device=DEV)
    if rng.random() < 0.2:
        k, v = k.to(FP8), v.to(FP8)
        kw.update(k_scale=1.5, v_scale=0.5)
    ref_k, ref_v, ref_lens = k.clone(), v.clone(), sl
    if page is None and rng.random() < 0.2:
        idx = torch.randperm(B, device=DEV).to(torch.int32)
        kw["cache_batch_idx"] = idx
        ref_k, ref_v = ref_k[idx.long()], ref_v[idx.long()]
    elif page is None and not appended and rng.random() < 0.2:
        kw["cache_leftpad"] = torch.tensor([rng.randint(0, n) for n in lens], dtype=torch.int32, device=DEV)
    if appended:
        kw["k"], kw["v"] = (torch.randn(B, appended, hkv, D, dtype=dtype, device=DEV).to(k.dtype) for _ in range(2))
        ref_k, ref_v = (_written_by_hand(c, kw[x], sl, bt) for c, x in ((ref_k, "k"), (ref_v, "v")))
        ref_lens = sl + appended
    name = f"{schedule} {kw.keys()} B={B} {hq}/{hkv} D={D} lens {lens} page {page} {dtype} lq={lq} +{appended}"
    out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True, schedule=schedule, **kw)
    ref = {x: kw[x] for x in ("k_scale", "v_scale", "softcap", "window_left", "causal", "sinks", "alibi_slopes",
                              "cache_leftpad") if x in kw}
    assert_states_match(name, q, out, lse, *reference.decode(q, ref_k, ref_v, ref_lens, bt, **ref))


@pytest.mark.parametrize("case", range(24))
def test_bifurcated_combinations(case):
    rng = _rng()
    B, hkv = rng.randint(1, 5), rng.choice([1, 2])
    hq, D = hkv * rng.choice([1, 2, 4]), rng.choice([64, 128])
    dtype, lq = rng.choice(DTYPES), rng.choice([1, 1, 2, 3])
    prompts, P = rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 17, 64, 90])  # 0 prompts: one prefix, (P, Hkv, D)
    own = [rng.choice([0, 1, 16, 33, 70]) for _ in range(B)]
    kw = _shared_options(rng, hq, lq)
    if prompts:
        pk, pv = (torch.randn(prompts, P, hkv, D, dtype=dtype, device=DEV) for _ in range(2))
        kw["prefix_lens"] = torch.tensor([rng.randint(0, P) for _ in range(prompts)], dtype=torch.int32, device=DEV)
        kw["prefix_ids"] = torch.tensor([rng.randrange(prompts) for _ in range(B)], dtype=torch.int32, device=DEV)
    else:
        pk, pv = (torch.randn(P, hkv, D, dtype=dtype, device=DEV) for _ in range(2))
    kc, vc = (torch.randn(B, max(own + [1]), hkv, D, dtype=dtype, device=DEV) for _ in range(2))
    sl, bt = torch.tensor(own, dtype=torch.int32, device=DEV), None
    if rng.random() < 0.4:
        kc, vc, bt = paged_kv(kc, vc, sl, page_size=rng.choice([1, 4, 16]))
    q = torch.randn(B, *((lq,) if lq > 1 else ()), hq, D, dtype=dtype, device=DEV)
    if rng.random() < 0.3:
        kw["num_programs"] = rng.randint(1, 7)
    name = f"{kw.keys()} B={B} {hq}/{hkv} D={D} prompts {prompts} P={P} own {own} paged {bt is not None} lq={lq}"
    out, lse = leanattn.bifurcated_decode(q, pk, pv, kc, vc, sl, bt, return_lse=True, **kw)
    ref = {x: y for x, y in kw.items() if x != "num_programs"}
    assert_states_match(name, q, out, lse, *reference.bifurcated_decode(q, pk, pv, kc, vc, sl, bt, **ref))


@pytest.mark.parametrize("case", range(16))
def test_cascade_combinations(case):
    rng = _rng()
    B, hkv = rng.randint(1, 5), rng.choice([1, 2])
    hq, D = hkv * rng.choice([1, 2, 4]), rng.choice([64, 128])
    dtype, lq = rng.choice(DTYPES), rng.choice([1, 1, 2])
    levels = []
    for _ in range(rng.randint(1, 3)):
        groups, P = rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 17, 40])  # 0 groups: one segment, (P, Hkv, D)
        if groups:
            k, v = (torch.randn(groups, P, hkv, D, dtype=dtype, device=DEV) for _ in range(2))
            lens = torch.tensor([rng.randint(0, P) for _ in range(groups)], dtype=torch.int32, device=DEV)
            ids = torch.tensor([rng.randrange(groups) for _ in range(B)], dtype=torch.int32, device=DEV)
            levels.append((k, v, lens, ids))
        else:
            levels.append(tuple(torch.randn(P, hkv, D, dtype=dtype, device=DEV) for _ in range(2)))
    own = [rng.choice([0, 1, 16, 33]) for _ in range(B)]
    kc = vc = sl = None
    if rng.random() < 0.8:
        kc, vc = (torch.randn(B, max(own + [1]), hkv, D, dtype=dtype, device=DEV) for _ in range(2))
        sl = torch.tensor(own, dtype=torch.int32, device=DEV)
    kw = _shared_options(rng, hq, lq)
    if rng.random() < 0.3:
        kw["num_programs"] = rng.randint(1, 7)
    q = torch.randn(B, *((lq,) if lq > 1 else ()), hq, D, dtype=dtype, device=DEV)
    name = f"{kw.keys()} B={B} {hq}/{hkv} D={D} levels {[tuple(x[0].shape) for x in levels]} own {own} lq={lq}"
    out, lse = leanattn.cascade_decode(q, levels, kc, vc, sl, return_lse=True, **kw)
    ref = {x: y for x, y in kw.items() if x != "num_programs"}
    assert_states_match(name, q, out, lse, *reference.cascade_decode(q, levels, kc, vc, sl, **ref))


@pytest.mark.parametrize("case", range(16))
def test_sparse_combinations(case, monkeypatch):
    # forward, LSE and the three gradients of either sparse op: GQA, lengths off the tiles, a tile shape, both dQ
    # modes, from nothing kept to everything kept
    rng = _rng()
    mode, B, N = rng.choice(["qk", "hash"]), rng.randint(1, 2), rng.choice([1, 7, 16, 33, 45, 64, 100])
    hk, D = rng.choice([1, 2]), rng.choice([64, 128])
    h = hk * rng.choice([1, 2, 3, 4])
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])  # the sparse kernels' bf16 runs on the CPU
    if DEV == "cpu":  # the interpreter's tile shapes
        monkeypatch.setattr(api, "_override", api.SparseConfig(*rng.choice(CONFIGS)))
    q = torch.randn(B, N, h, D, dtype=dtype, device=DEV, requires_grad=True)
    k, v = (torch.randn(B, N, hk, D, dtype=dtype, device=DEV, requires_grad=True) for _ in range(2))
    if mode == "qk":
        keep = rng.choice([0.0, 0.3, 0.7, 1.0])
        a, b = (torch.rand(B, N, x, device=DEV) < keep for x in (h, hk))
    else:
        buckets = rng.randint(1, 8)
        a, b = (torch.randint(0, buckets, (B, N, x), device=DEV) for x in (h, hk))
    check_sparse(mode, q, k, v, a, b, lowp=True, deterministic=rng.random() < 0.5)


@pytest.mark.parametrize("case", range(8))
def test_mla_combinations(case):
    rng = _rng()
    B, heads, dc, dr = rng.randint(1, 4), rng.choice([1, 8, 16, 20, 40]), rng.choice([128, 256]), rng.choice([16, 64])
    lens, page, tokens = [rng.choice([0, 1, 5, 20, 37, 70]) for _ in range(B)], rng.choice([None, 1, 4, 16]), 0
    if rng.random() < 0.3:
        tokens = rng.choice([1, 2])
    args = mla_inputs(B, heads, dc, dr, lens, dtype=rng.choice(DTYPES), page=page, wide=rng.random() < 0.5,
                      tokens=tokens, seed=rng.randrange(2**31))
    kw = dict(schedule=rng.choice(["lean", "split"]))
    if tokens:
        kw["causal"] = rng.random() < 0.7
    if rng.random() < 0.4:
        kw.update(num_programs=rng.randint(1, 7), num_splits=rng.randint(1, 4))
    name = f"{kw} B={B} heads {heads} dc={dc} dr={dr} lens {lens} page {page} tokens {tokens}"
    check_mla(name, *(x if x is None else x.to(DEV) for x in args), **kw)


def test_seed_variable_error():
    # a seed that is not an integer stops the run before any test, naming the variable (tests/conftest.py)
    import os
    import subprocess
    import sys
    env = dict(os.environ, LEANATTN_TEST_SEED="x1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", __file__], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode != 0
    assert "LEANATTN_TEST_SEED: expected a non-negative integer, got 'x1'" in run.stdout + run.stderr
