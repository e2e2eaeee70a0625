"""``decode(cache_batch_idx=)``: sequence ``b`` reads row ``cache_batch_idx[b]`` of a contiguous cache of more rows
(flash-attn's ``cache_batch_idx``), against the float64 reference over the rows gathered.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import assert_states_match
from test_decode import SCHEDULES
from test_decode_append import DEV, make_inputs


def _slots(rows, Hkv, D, capacity, dtype=torch.float16):
    return [torch.randn(rows, capacity, Hkv, D, dtype=dtype, device=DEV) for _ in range(2)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("capacity", [12, 40])
@pytest.mark.parametrize("qlen", [0, 3], ids=["one", "three-causal"])
def test_reads_the_rows_named(schedule, capacity, qlen):
    kc, vc = _slots(5, 2, 64, capacity)
    idx = torch.tensor([4, 0, 2], dtype=torch.int32, device=DEV)
    lens = torch.tensor([capacity, 0, capacity // 2 + 1], dtype=torch.int32, device=DEV)
    shape = (3, qlen, 8, 64) if qlen else (3, 8, 64)
    q = torch.randn(shape, dtype=torch.float16, device=DEV)
    out, lse = leanattn.decode(q, kc, vc, lens, return_lse=True, schedule=schedule, causal=True,
                               cache_batch_idx=idx)
    ref_out, ref_lse = reference.decode(q, kc[idx.long()], vc[idx.long()], lens, causal=True)
    assert_states_match(f"rows {idx.tolist()}", q, out, lse, ref_out, ref_lse)


def test_appends_write_the_rows_named():
    kc, vc = _slots(4, 2, 64, 16)
    before_k, before_v = kc.clone(), vc.clone()
    idx = torch.tensor([3, 1], dtype=torch.int32, device=DEV)
    lens = torch.tensor([5, 15], dtype=torch.int32, device=DEV)
    q = torch.randn(2, 4, 64, dtype=torch.float16, device=DEV)
    kn, vn = (torch.randn(2, 1, 2, 64, dtype=torch.float16, device=DEV) for _ in range(2))
    out, lse = leanattn.decode(q, kc, vc, lens, return_lse=True, k=kn, v=vn, cache_batch_idx=idx)
    want_k, want_v = before_k.clone(), before_v.clone()
    want_k[3, 5], want_v[3, 5], want_k[1, 15], want_v[1, 15] = kn[0, 0], vn[0, 0], kn[1, 0], vn[1, 0]
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)  # rows 0 and 2 untouched
    ref_out, ref_lse = reference.decode(q, want_k[idx.long()], want_v[idx.long()], lens + 1)
    assert_states_match("appended", q, out, lse, ref_out, ref_lse)


def test_packed_query():
    kc, vc = _slots(3, 1, 64, 10)
    idx = torch.tensor([2, 0], dtype=torch.int32, device=DEV)
    lens = torch.tensor([7, 10], dtype=torch.int32, device=DEV)
    cu = torch.tensor([0, 2, 3], dtype=torch.int32, device=DEV)
    q = torch.randn(3, 2, 64, dtype=torch.float16, device=DEV)
    out, lse = leanattn.decode(q, kc, vc, lens, return_lse=True, causal=True, cu_seqlens_q=cu, max_seqlen_q=2,
                               cache_batch_idx=idx)
    ref_out, ref_lse = reference.decode(q, kc[idx.long()], vc[idx.long()], lens, causal=True, cu_seqlens_q=cu)
    assert_states_match("packed", q, out, lse, ref_out, ref_lse)


def test_errors():
    q, k_cache, v_cache, seqlens, bt = make_inputs(2, 4, 2, 64, [5, 9], capacity=12, page_size=4)
    kc, vc = _slots(3, 2, 64, 12)
    idx = torch.tensor([2, 0], dtype=torch.int32, device=DEV)
    with pytest.raises(ValueError, match="cache_batch_idx: expected None with a paged cache"):
        leanattn.decode(q, k_cache, v_cache, seqlens, bt, cache_batch_idx=idx)
    cases = [
        (idx.long(), TypeError, "cache_batch_idx: expected dtype torch.int32"),
        (idx[:1], ValueError, r"cache_batch_idx: expected shape \(2,\) \(batch size of q\), got \(1,\)"),
        (idx[None], ValueError, "cache_batch_idx: expected a 1-D tensor"),
        (idx + 1, ValueError, r"cache_batch_idx: expected rows in \[0, 3\) \(k_cache's\), got rows in \[1, 3\]"),
        (idx - 1, ValueError, r"cache_batch_idx: expected rows in \[0, 3\) \(k_cache's\), got rows in \[-1, 1\]"),
    ]
    for bad, cls, msg in cases:
        with pytest.raises(cls, match=msg):
            leanattn.decode(q, kc, vc, seqlens, cache_batch_idx=bad, validate=True)
    with pytest.raises(ValueError, match="k_cache: expected a capacity of at least one token"):
        leanattn.decode(q, kc[:, :0], vc[:, :0], seqlens * 0, cache_batch_idx=idx)
