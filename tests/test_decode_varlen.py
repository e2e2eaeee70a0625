"""``decode`` with a packed query of a different number of tokens a sequence (``q (total_q, Hq, D)`` and
``cu_seqlens_q``, as flash-attn's ``flash_attn_with_kvcache(cu_seqlens_q=)``): the real kernels under the
interpreter against the float64 reference, causal and not, with sliding windows, over ragged, paged, float8 and
soft-capped caches, both schedules, both merges of the stream-K pieces, and the errors."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_rel_close
from test_decode import BLOCK_N, RAGGED, SCHEDULES, check_decode, make_inputs


def packed(counts: list[int], hq: int, d: int, dtype=torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """A random packed query of ``counts[b]`` tokens for sequence ``b``, seen through a strided view (rows 2 apart),
    and its ``cu_seqlens_q``."""
    total = sum(counts)
    q = torch.randn(2 * total, hq, d, dtype=dtype)[::2]
    cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32)
    return q, cu


def check_varlen(q, k, v, lens, bt, cu, name, max_seqlen_q=None, **kw):
    """``leanattn.decode`` over the packed query against the reference, and against the same tokens as a padded
    ``(B, Lq, Hq, D)`` query right-aligned in ``Lq = max_seqlen_q`` slots: the rows the kernels compute alike, bitwise
    without a window (with one, a sequence of fewer tokens than slots starts at its own first token's window, so its
    tiles, and the order of its sums, may differ)."""
    out, lse = check_decode(q, k, v, lens, bt, None, name, cu_seqlens_q=cu, max_seqlen_q=max_seqlen_q, **kw)
    # the padded form: sequence b's tokens in the last of lq slots, the slots before them zero
    cuts = cu.tolist()
    lq = max_seqlen_q or max(b - a for a, b in zip(cuts, cuts[1:]))
    pad = q.new_zeros(len(cuts) - 1, lq, *q.shape[1:])
    for b in range(len(cuts) - 1):
        n = cuts[b + 1] - cuts[b]
        pad[b, lq - n:] = q[cuts[b]:cuts[b + 1]]
    if lq:
        out_pad, lse_pad = leanattn.decode(pad, k, v, lens, bt, return_lse=True, **kw)
        for b in range(len(cuts) - 1):
            n = cuts[b + 1] - cuts[b]
            if kw.get("window_left", -1) < 0:
                assert torch.equal(out[cuts[b]:cuts[b + 1]], out_pad[b, lq - n:]), f"{name}: sequence {b} != padded"
                assert torch.equal(lse[cuts[b]:cuts[b + 1]], lse_pad[b, lq - n:]), f"{name}: {b} lse != padded"
            else:
                assert_rel_close(f"{name}: sequence {b}", out[cuts[b]:cuts[b + 1]], out_pad[b, lq - n:].double(),
                                 TOLERANCE[q.dtype])
    return out, lse


# a count a sequence of RAGGED's lengths: none, more tokens than keys (causal: rows that see nothing), one, ...
COUNTS = [0, 3, 1, 5, 2, 4]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_varlen_ragged(causal, dtype, schedule):
    _, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    q, cu = packed(COUNTS, 8, 64, dtype)
    check_varlen(q, k, v, lens, None, cu, "ragged", schedule=schedule, causal=causal)


# each head layout with one cache layout, each cache layout at least twice (the cross product cost CI about 80 s more)
@pytest.mark.parametrize("hq,hkv,d,counts,page_size", [
    (4, 4, 64, [4, 1, 2], None), (8, 1, 128, [3, 0, 2], 1), (6, 2, 256, [2, 1, 2], 16), (48, 1, 64, [3, 2, 1], None),
    (48, 1, 64, [3, 2, 1], 16), (8, 2, 64, [16, 5, 9], 1)], ids=str)
def test_varlen_gqa_paged_head_dims(hq, hkv, d, counts, page_size):
    # 48/1 x 3 slots: 144 rows a kv head, three head blocks, the first of them all padding for one token
    _, k, v, lens, bt = make_inputs(3, hq, hkv, d, [37, 2, 70], page_size=page_size)
    q, cu = packed(counts, hq, d)
    check_varlen(q, k, v, lens, bt, cu, f"{hq}/{hkv} D={d} page {page_size}", causal=True)
    # rows cut into pieces by several programs, and several splits a row (partial states in the packed layout)
    check_varlen(q, k, v, lens, bt, cu, "lean over 5 programs", causal=True, num_programs=5)
    check_varlen(q, k, v, lens, bt, cu, "split in 3", schedule="split", num_splits=3, causal=True)


@pytest.mark.parametrize("merge", ["0", "1"], ids=["in-kernel", "launch"])
def test_varlen_piece_merges(monkeypatch, merge):
    # the merge launch writes the cut rows: only the sequence's own tokens' rows
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
    _, k, v, lens, bt = make_inputs(4, 8, 2, 64, [70, 45, 0, 33], page_size=16)
    q, cu = packed([3, 1, 2, 4], 8, 64)
    for programs in (3, 7, 16):
        check_varlen(q, k, v, lens, bt, cu, f"merge {merge} over {programs}", causal=True, num_programs=programs)


@pytest.mark.parametrize("window", [0, 1, BLOCK_N - 1, 40])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_varlen_window(window, schedule):
    # each token's window ends at its own position; pages before the first token's window may be gone
    _, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, page_size=16)
    q, cu = packed(COUNTS, 8, 64)
    check_varlen(q, k, v, lens, bt, cu, f"window {window}", schedule=schedule, causal=True, window_left=window)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_varlen_window_pages_of_the_real_tokens(schedule):
    # a sequence with fewer tokens than the slots: only its own first token's window is in use, whatever
    # max_seqlen_q is, so the pages before it may be freed (ids -1), and keys before it may hold NaN
    _, k, v, lens, bt = make_inputs(4, 8, 2, 64, [64, 70, 50, 33], page_size=16, spare_pages=0)
    q, cu = packed([1, 12, 0, 3], 8, 64)
    window = 5
    out = check_varlen(q, k, v, lens, bt, cu, "window", schedule=schedule, causal=True, window_left=window,
                       max_seqlen_q=14)[0]
    counts = cu.diff().clamp(min=1)
    stale = bt.clone()
    for b, n in enumerate(lens.tolist()):
        stale[b, :max(n - int(counts[b]) - window, 0) // 16] = -1
    again = leanattn.decode(q, k, v, lens, stale, schedule=schedule, causal=True, window_left=window,
                            cu_seqlens_q=cu, max_seqlen_q=14, validate=True)
    assert torch.equal(again, out)
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(lens.tolist()):
        first = max(n - int(counts[b]) - window, 0)
        for pos in range(first):
            k2[bt[b, pos // 16], pos % 16] = float("nan")
            v2[bt[b, pos // 16], pos % 16] = float("nan")
    again = leanattn.decode(q, k2, v2, lens, bt, schedule=schedule, causal=True, window_left=window,
                            cu_seqlens_q=cu, max_seqlen_q=14)
    assert torch.equal(again, out)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_varlen_chunk_among_one_token_sequences(schedule):
    # 20 slots of 4 heads: several head blocks a kv head, all but the last of them padding for the one-token
    # sequences (their tiles are not read, kernels/query_rows.padding_only)
    _, k, v, lens, bt = make_inputs(5, 8, 2, 64, [40, 70, 17, 0, 33], page_size=16)
    q, cu = packed([1, 20, 1, 0, 1], 8, 64)
    for kw in (dict(), dict(num_programs=5, num_splits=3), dict(window_left=9)):
        check_varlen(q, k, v, lens, bt, cu, f"chunk {kw}", schedule=schedule, causal=True, **kw)


def test_varlen_slack_and_one_slot():
    # max_seqlen_q above the longest sequence (more slots, the same rows), and one slot a sequence
    _, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, page_size=16)
    q, cu = packed(COUNTS, 8, 64)
    check_varlen(q, k, v, lens, bt, cu, "slack", max_seqlen_q=7, causal=True)
    q, cu = packed([1, 0, 1, 1, 0, 1], 8, 64)
    out, lse = check_varlen(q, k, v, lens, bt, cu, "one slot", causal=True)
    # one token a sequence is the plain decode of the sequences that have one
    has = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    plain, plain_lse = leanattn.decode(torch.zeros(6, 8, 64, dtype=q.dtype).index_copy_(0, has.nonzero()[:, 0], q),
                                       k, v, lens, bt, return_lse=True)
    assert torch.equal(out, plain[has]) and torch.equal(lse, plain_lse[has])


def test_varlen_empty():
    _, k, v, lens, bt = make_inputs(3, 8, 2, 64, [5, 9, 0], page_size=16)
    q, cu = packed([0, 0, 0], 8, 64)
    out, lse = leanattn.decode(q, k, v, lens, bt, return_lse=True, cu_seqlens_q=cu)
    assert out.shape == (0, 8, 64) and lse.shape == (0, 8)
    # no token reads a page: under a window, the pages before a length's last key may be freed (as with one token)
    _, k, v, lens, bt = make_inputs(1, 1, 1, 64, [3], page_size=2, spare_pages=0)
    bt[0, 0] = -1
    for max_seqlen_q in (0, None, 1):
        out = leanattn.decode(q[:, :1], k, v, lens, bt, cu_seqlens_q=cu[:2], max_seqlen_q=max_seqlen_q, window_left=0,
                              validate=True)
        assert out.shape == (0, 1, 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_varlen_fp8_and_softcap(dtype):
    _, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype, page_size=16)
    q, cu = packed(COUNTS, 8, 64, dtype)
    fp8 = torch.float8_e4m3fn
    check_varlen(q, k.to(fp8), v.to(fp8), lens, bt, cu, "fp8", k_scale=0.5, v_scale=2.0, causal=True)
    check_varlen(q, k, v, lens, bt, cu, "softcap", softcap=2.0, causal=True, window_left=20)


def test_varlen_offsets_change():
    # the rows are found on the device from cu_seqlens_q: one plan serves new counts of the same total
    _, k, v, lens, bt = make_inputs(3, 8, 2, 64, [70, 20, 50], page_size=16)
    q, _ = packed([2, 2, 2], 8, 64)
    for counts in ([2, 2, 2], [4, 0, 2], [1, 4, 1]):
        cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int32)
        check_varlen(q, k, v, lens, bt, cu, f"counts {counts}", max_seqlen_q=4, causal=True)


def test_varlen_compile_fullgraph():
    _, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    q, cu = packed([3, 0, 2], 4, 64)
    q = q.contiguous()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: leanattn.decode(*a, causal=True, return_lse=True, cu_seqlens_q=cu,
                                                        max_seqlen_q=3), fullgraph=True)
    out, lse = compiled(q, k, v, lens, bt)
    ref_out, ref_lse = leanattn.decode(q, k, v, lens, bt, causal=True, return_lse=True, cu_seqlens_q=cu)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    # without max_seqlen_q the offsets would be read on the host, which a compiled graph cannot: refused (raised
    # while tracing, dynamo's error carries the message)
    torch._dynamo.reset()
    unbounded = torch.compile(lambda *a: leanattn.decode(*a, causal=True, cu_seqlens_q=cu), fullgraph=True)
    with pytest.raises(Exception, match="max_seqlen_q: expected an int while compiling or capturing a CUDA graph"):
        unbounded(q, k, v, lens, bt)


def _cu(*xs):
    return torch.tensor(xs, dtype=torch.int32)


@pytest.mark.parametrize("name,kw,error,match", [
    ("q 4-D", dict(q=torch.randn(1, 6, 4, 64, dtype=torch.float16)), ValueError, "q: expected a 3-D .total_q"),
    ("cu dtype", dict(cu_seqlens_q=torch.tensor([0, 3, 6])), TypeError, "cu_seqlens_q: expected dtype torch.int32"),
    ("cu rank", dict(cu_seqlens_q=_cu(0, 3, 6)[None]), ValueError, "cu_seqlens_q: expected a 1-D"),
    ("cu empty", dict(cu_seqlens_q=_cu()), ValueError, "cu_seqlens_q: expected at least one offset"),
    ("cu batch", dict(cu_seqlens_q=_cu(0, 2, 4, 6)), ValueError,
     r"cu_seqlens_q: expected shape \(3,\) \(one offset more than k_cache's 2 sequences\), got \(4,\)"),
    ("cu start", dict(cu_seqlens_q=_cu(1, 3, 6)), ValueError, "cu_seqlens_q: expected offsets starting at 0"),
    ("cu order", dict(cu_seqlens_q=_cu(0, 4, 3)), ValueError, "cu_seqlens_q: expected non-decreasing"),
    ("cu end", dict(cu_seqlens_q=_cu(0, 3, 5)), ValueError, "cu_seqlens_q: expected offsets ending at q's 6 rows"),
    ("max short", dict(max_seqlen_q=2), ValueError, "max_seqlen_q: expected at least the longest sequence's 3"),
    ("max type", dict(max_seqlen_q=3.0), TypeError, "max_seqlen_q: expected an int"),
    ("max bool", dict(max_seqlen_q=True), TypeError, "max_seqlen_q: expected an int"),
    ("max negative", dict(max_seqlen_q=-1), ValueError, "max_seqlen_q: expected an int >= 0"),
    ("max zero", dict(max_seqlen_q=0, validate=False), ValueError, "max_seqlen_q: expected an int >= 1 for a q of 6"),
    ("max without cu", dict(cu_seqlens_q=None, q=torch.randn(2, 4, 64, dtype=torch.float16), max_seqlen_q=3),
     ValueError, "max_seqlen_q: expected None without cu_seqlens_q"),
])
def test_varlen_errors(name, kw, error, match):
    _, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    args = dict(q=torch.randn(6, 4, 64, dtype=torch.float16), cu_seqlens_q=_cu(0, 3, 6), causal=True) | kw
    with pytest.raises(error, match=match):
        leanattn.decode(args.pop("q"), k, v, lens, **args)


def test_varlen_count_error_names_the_offsets_on_a_paged_cache():
    _, k, v, lens, bt = make_inputs(2, 4, 2, 64, [5, 9], page_size=16)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: expected shape \(3,\) \(one offset more than block_table's 2"):
        leanattn.decode(torch.randn(6, 4, 64, dtype=torch.float16), k, v, lens, bt, cu_seqlens_q=_cu(0, 2, 4, 6))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_varlen_opcheck(schedule):
    # the custom op with the packed query's offsets (its fake implementation, schema and autograd registration)
    _, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    q, cu = packed([2, 0, 3], 4, 64)
    q = q.contiguous()
    args = (q, k, v, lens, bt, 0.125, schedule, 3, 2, 0, 1.0, 1.0, 0.0, -1, True, cu, 3)
    torch.library.opcheck(torch.ops.leanattn.decode.default, args)
