"""``decode(schedule="batch_invariant")``: a sequence's output and LSE bitwise the same alone and in batches of other
sequences, other lengths and caches of other capacities (fixed-size splits, a configuration no batch chooses, a merge
folding the splits one at a time), and equal to the float64 reference.

Under the Triton interpreter on the CPU, or on a GPU when there is one. The splits are cut to 32 keys here (2048 in
the library), so that small caches hold several.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.ops import decode as decode_ops
from leanattn.testing import assert_states_match

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def short_splits(monkeypatch):
    """Splits of 32 keys, the plans made before and after this test dropped (the size is read when a plan is made)."""
    decode_ops._PLANS.clear()
    monkeypatch.setattr(decode_ops, "INVARIANT_SPLIT_TOKENS", 32)
    yield
    decode_ops._PLANS.clear()


def _alone_and_in_batches(q_x, k_x, v_x, n_x, **kw):
    """``(out, lse)`` of sequence x (``q_x`` its query rows, ``k_x``/``v_x`` ``(N, Hkv, D)`` its keys, ``n_x`` its
    length) alone in a cache of its length, and in two batches around other sequences in caches of other capacities."""
    Hkv, D = k_x.shape[1:]
    results = []
    # (the second capacity cut into more splits than x's own, also where x has one: its state written directly
    # against merged with empty ones)
    for capacity, before, after in ((n_x, [], []), (3 * n_x + 40, [3 * n_x + 40, 0], [7]),
                                    (n_x + 1, [1], [n_x + 1])):
        lens = before + [n_x] + after
        B, at = len(lens), len(before)
        q = torch.randn(B, *q_x.shape, dtype=q_x.dtype, device=DEV)
        q[at] = q_x
        caches = []
        for c_x in (k_x, v_x):
            c = torch.randn(B, capacity, Hkv, D, dtype=c_x.dtype, device=DEV)
            c[at, :n_x] = c_x[:n_x]
            caches.append(c)
        lens_t = torch.tensor(lens, dtype=torch.int32, device=DEV)
        out, lse = leanattn.decode(q, *caches, lens_t, return_lse=True, schedule="batch_invariant", **kw)
        results.append((out[at], lse[at]))
        if capacity == n_x:
            ref_out, ref_lse = reference.decode(q, *caches, lens_t, **{k: v for k, v in kw.items()})
            assert_states_match("batch_invariant", q, out, lse, ref_out, ref_lse)
    return results


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("n_x", [9, 37, 100], ids=["one-split", "two-splits", "four-splits"])
@pytest.mark.parametrize("form", ["mha", "gqa-tokens-causal", "window", "options"])
def test_bits_do_not_depend_on_the_batch(short_splits, dtype, n_x, form):
    Hq, Hkv, D, qlen = {"mha": (2, 2, 64, 0), "gqa-tokens-causal": (8, 2, 64, 3), "window": (4, 1, 128, 0),
                        "options": (4, 2, 64, 0)}[form]
    kw = {"gqa-tokens-causal": dict(causal=True), "window": dict(window_left=40),
          "options": dict(sinks=torch.randn(Hq, device=DEV), softcap=20.0,
                          alibi_slopes=torch.rand(Hq, device=DEV))}.get(form, {})
    q_x = torch.randn(*((qlen,) if qlen else ()), Hq, D, dtype=dtype, device=DEV)
    k_x, v_x = (torch.randn(n_x, Hkv, D, dtype=dtype, device=DEV) for _ in range(2))
    (out0, lse0), *others = _alone_and_in_batches(q_x, k_x, v_x, n_x, **kw)
    for out, lse in others:
        assert torch.equal(out, out0) and torch.equal(lse, lse0)


def test_bits_do_not_depend_on_the_batch_past_a_merge_chunk(short_splits):
    # 10 splits alone and 30 in the batch's widest cache: the merge loads kernels/merge.SEQUENTIAL_CHUNK (8) states a
    # step, so the real states themselves cross a step
    n_x = 300
    q_x = torch.randn(2, 64, dtype=torch.float16, device=DEV)
    k_x, v_x = (torch.randn(n_x, 2, 64, dtype=torch.float16, device=DEV) for _ in range(2))
    (out0, lse0), *others = _alone_and_in_batches(q_x, k_x, v_x, n_x)
    for out, lse in others:
        assert torch.equal(out, out0) and torch.equal(lse, lse0)


def test_plan_is_the_split_schedule(short_splits):
    q = torch.randn(2, 4, 64, dtype=torch.float16, device=DEV)
    k = torch.randn(2, 100, 2, 64, dtype=torch.float16, device=DEV)
    leanattn.decode(q, k, k, torch.tensor([100, 3], dtype=torch.int32, device=DEV), schedule="batch_invariant")
    facts = [p.describe() for p in decode_ops._PLANS.values()]
    assert any(f.get("batch_invariant") and f["schedule"] == "split" for f in facts)


def test_errors():
    q = torch.randn(1, 4, 64, dtype=torch.float16, device=DEV)
    k = torch.randn(1, 8, 2, 64, dtype=torch.float16, device=DEV)
    with pytest.raises(ValueError, match=r"num_splits: expected 0 with schedule='batch_invariant' \(its splits are "
                                         r"2048 tokens each\), got 3"):
        leanattn.decode(q, k, k, schedule="batch_invariant", num_splits=3)
    with pytest.raises(ValueError, match="num_programs: expected 0 with schedule='batch_invariant'"):
        leanattn.decode(q, k, k, schedule="batch_invariant", num_programs=4)
    with pytest.raises(ValueError, match="num_splits: expected 0 with schedule='batch_invariant'"):
        leanattn.decode(q, k[:, :0], k[:, :0], schedule="batch_invariant", num_splits=3)  # (an empty cache too)
    with pytest.raises(ValueError, match="schedule: expected 'lean', 'split' or 'batch_invariant', got 'fixed'"):
        leanattn.decode(q, k, k, schedule="fixed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged16"])
def test_gpu_library_splits(paged):
    # the library's 2048-key splits over bf16 GQA rows of 1, 3 and 6 splits, alone and among others; paged caches in
    # pages of 16 (a page size is the caller's, the same in every batch)
    for n_x in (1500, 5000, 12000):
        q_x = torch.randn(32, 128, dtype=torch.bfloat16, device=DEV)
        k_x, v_x = (torch.randn(n_x, 8, 128, dtype=torch.bfloat16, device=DEV) for _ in range(2))
        results = []
        for capacity, lens in ((n_x, [n_x]), (2 * n_x + 16, [2 * n_x + 16, n_x, 0, n_x // 5]), (n_x + 16, [7, n_x])):
            at = lens.index(n_x)
            q = torch.randn(len(lens), 32, 128, dtype=torch.bfloat16, device=DEV)
            q[at] = q_x
            k, v = (torch.randn(len(lens), capacity, 8, 128, dtype=torch.bfloat16, device=DEV) for _ in range(2))
            k[at, :n_x], v[at, :n_x] = k_x, v_x
            lens_t = torch.tensor(lens, dtype=torch.int32, device=DEV)
            table = None
            if paged:
                pages = -(-capacity // 16)
                k, v = (c[:, :pages * 16] if c.shape[1] >= pages * 16 else torch.cat(
                    [c, c.new_zeros(c.shape[0], pages * 16 - c.shape[1], 8, 128)], 1) for c in (k, v))
                k, v = (c.reshape(-1, 16, 8, 128) for c in (k, v))
                order = torch.randperm(len(lens) * pages, device=DEV)
                k, v = k[order.argsort()], v[order.argsort()]
                table = order.view(len(lens), pages).to(torch.int32)
            out, lse = leanattn.decode(q, k, v, lens_t, table, return_lse=True, schedule="batch_invariant")
            results.append((out[at], lse[at]))
        for out, lse in results[1:]:
            assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1]), n_x
