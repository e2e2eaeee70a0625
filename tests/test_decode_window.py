"""``decode`` with a sliding window (``window_left``) against the float64 reference: the real kernels under the
interpreter, both schedules, every load path, paged caches whose pages before the window are gone, float8 caches,
soft caps, the work the schedule counts, and the errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.schedules.stream_k import tiles_per_sequence, window_tokens
from leanattn.testing import TOLERANCE, assert_rel_close
from test_decode import BLOCK_N, RAGGED, SCHEDULES, check_decode, make_inputs

# no key before the query, inside the first tile, a tile, one past it, and past every length of RAGGED
WINDOWS = [0, 1, BLOCK_N - 1, BLOCK_N, BLOCK_N + 1, 40, 100]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_window_ragged(window, dtype, schedule):
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype)
    check_decode(q, k, v, lens, None, None, f"window {window}", schedule=schedule, window_left=window)


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 1, 128), (6, 2, 256)])
@pytest.mark.parametrize("page_size", [None, 1, 16, 64], ids=["contiguous", "page1", "page16", "page64"])
def test_window_gqa_paged_head_dims(hq, hkv, d, page_size):
    q, k, v, lens, bt = make_inputs(3, hq, hkv, d, [37, 0, 70], page_size=page_size)
    check_decode(q, k, v, lens, bt, None, f"{hq}/{hkv} D={d} page {page_size}", window_left=20)
    # rows cut into pieces by several programs, and several splits a row
    check_decode(q, k, v, lens, bt, None, "lean over 5 programs", window_left=20, num_programs=5)
    check_decode(q, k, v, lens, bt, None, "split in 3", window_left=33, schedule="split", num_splits=3)


@pytest.mark.parametrize("load", ["1", "2"], ids=["blockptr", "tma"])
def test_window_load_paths(decode_load, load):
    decode_load(load)
    q, k, v, lens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, capacity=80, layout="hnd")
    for schedule in SCHEDULES:
        check_decode(q, k, v, lens, None, None, f"load {load}", schedule=schedule, window_left=17)


@pytest.mark.parametrize("load", ["0", "1", "2"], ids=["pointers", "blockptr", "tma"])
@pytest.mark.parametrize("fp8", [False, True], ids=["fp16", "fp8"])
def test_window_nan_before_it(decode_load, load, fp8):
    # keys before each window hold NaN (a reused page, a cache written elsewhere): the block-pointer and TMA paths
    # load the window's first tile whole, and must not carry those rows into the product as 0 * NaN (found in
    # review: NaN outputs before the V rows were zeroed)
    decode_load(load)
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [70, 45, 33], capacity=80)
    ref = reference.decode(q, k, v, lens, window_left=17)
    if fp8:
        k, v = k.to(torch.float8_e5m2), v.to(torch.float8_e5m2)  # e5m2 holds NaN and inf
        ref = reference.decode(q, k, v, lens, window_left=17)
    for b, n in enumerate(lens.tolist()):
        k[b, :n - 18] = float("nan")
        v[b, :n - 18] = float("nan")
    for schedule in SCHEDULES:
        out = leanattn.decode(q, k, v, lens, schedule=schedule, window_left=17)
        assert_rel_close(f"load {load} {schedule}", out, ref[0], 2e-2 if fp8 else TOLERANCE[q.dtype])


def test_window_past_the_capacity_is_none():
    # a window holding the whole cache is no window (the same plan and bits), however large the int
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [70, 45, 33])
    plain = leanattn.decode(q, k, v, lens)
    for window in (69, 70, 2**40, 2**70):
        assert torch.equal(leanattn.decode(q, k, v, lens, window_left=window), plain)
    assert not torch.equal(leanattn.decode(q, k, v, lens, window_left=68), plain)
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [70, 45, 33], page_size=16)
    assert torch.equal(leanattn.decode(q, k, v, lens, bt, window_left=2**70, validate=True),
                       leanattn.decode(q, k, v, lens, bt))


@pytest.mark.parametrize("window", [0, 5, 30])
@pytest.mark.parametrize("B", [1, 3])
def test_window_full_capacity(window, B):
    # no cache_seqlens: the host plans from the window's tiles at capacity (the lean grid it launches, or even
    # pieces of each row on the split kernel)
    q, k, v, _, _ = make_inputs(B, 8, 2, 64, [75] * B)
    check_decode(q, k, v, None, None, None, f"B={B} at capacity", window_left=window)
    check_decode(q, k, v, torch.full((B,), 75, dtype=torch.int32), None, None, f"B={B} with lengths",
                 window_left=window)


def test_window_plan_tiles(monkeypatch):
    # the host plans from each row's exact tiles where every sequence fills the cache (80 tokens, a window of 32
    # keys: tiles 2 and 4 of 16 tokens, 2 tiles), from the window's bound otherwise (3 tiles)
    from leanattn.ops import decode as dec
    seen = []
    real = dec.even_pieces
    monkeypatch.setattr(dec, "even_pieces", lambda B, rows, tiles, *a: seen.append(tiles) or real(B, rows, tiles, *a))
    dec._PLANS.clear()
    q, k, v, _, _ = make_inputs(1, 8, 2, 64, [80])
    check_decode(q, k, v, None, None, None, "at capacity", window_left=31)
    check_decode(q, k, v, torch.tensor([80], dtype=torch.int32), None, None, "with lengths", window_left=31)
    assert seen == [2, 3]
    dec._PLANS.clear()


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_window_pages_before_it_are_never_read(page_size, schedule):
    # a server frees the pages that slid out of the window: their block-table ids are garbage (-1 and ids past the
    # pool), and the values checks accept them; the result is the reference's over the live pages
    q, k, v, lens, bt = make_inputs(3, 8, 2, 64, [130, 0, 70], page_size=page_size)
    window = 40
    out = leanattn.decode(q, k, v, lens, bt, schedule=schedule, window_left=window)
    stale = bt.clone()
    for b, n in enumerate(lens.tolist()):
        first_page = max(n - 1 - window, 0) // page_size
        stale[b, :first_page] = torch.where(torch.arange(first_page) % 2 == 0, -1, k.shape[0] + 7).to(torch.int32)
    again = leanattn.decode(q, k, v, lens, stale, schedule=schedule, window_left=window, validate=True)
    assert torch.equal(out, again)
    assert_rel_close("stale pages", again, reference.decode(q, k, v, lens, bt, window_left=window)[0],
                     TOLERANCE[q.dtype])
    # without the window those ids are in use, and refused
    with pytest.raises(ValueError, match="block_table: expected page ids"):
        leanattn.decode(q, k, v, lens, stale, schedule=schedule, validate=True)
    # a query of no token (B, 0, Hq, D) or packed with none, under the smallest window: no page is read, and none
    # refused (its window was taken as none, found by a fuzzer)
    cu = torch.zeros(4, dtype=torch.int32)
    for b, n in enumerate(lens.tolist()):
        stale[b, :max(n - 1, 0) // page_size] = -1  # all but the last token's page
    for q0, kw in ((q.new_empty(3, 0, 8, 64), {}), (q[:0], dict(cu_seqlens_q=cu, max_seqlen_q=1))):
        out = leanattn.decode(q0, k, v, lens, stale, schedule=schedule, window_left=0, causal=True, validate=True,
                              **kw)
        assert out.shape == q0.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_window_fp8_and_softcap(dtype):
    q, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, dtype=dtype, page_size=16)
    fp8 = torch.float8_e4m3fn
    check_decode(q, k.to(fp8), v.to(fp8), lens, bt, 2.0, "fp8", k_scale=0.5, v_scale=2.0, window_left=20)
    check_decode(q, k, v, lens, bt, 3.0, "softcap", softcap=2.0, window_left=20)


def test_window_past_every_length_is_full_attention():
    q, k, v, lens, bt = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, page_size=16)
    full = leanattn.decode(q, k, v, lens, bt)
    wide = leanattn.decode(q, k, v, lens, bt, window_left=max(RAGGED))
    assert_rel_close("wide window", wide, full.double(), TOLERANCE[q.dtype])
    # -1 is no window: the same plan and bits as a call without it
    assert torch.equal(leanattn.decode(q, k, v, lens, bt, window_left=-1), full)


def test_window_graph_lengths_change():
    # the window's tiles are counted on the device from the lengths: one plan serves new lengths
    q, k, v, _, bt = make_inputs(3, 8, 2, 64, [70, 70, 70], page_size=16)
    for lens in ([70, 3, 50], [0, 64, 17], [33, 33, 70]):
        check_decode(q, k, v, torch.tensor(lens, dtype=torch.int32), bt, None, f"lengths {lens}", window_left=24)


@pytest.mark.parametrize("block_n", [1, 16, 64])
def test_window_tiles_bound(block_n):
    # the host sizes a windowed launch from window_tokens: no row of any length up to the capacity has more tiles
    cap = 300
    lens = np.arange(cap + 1)
    for window in (0, 1, 15, 16, 17, 63, 64, 65, 200, 299, 400):
        tiles = tiles_per_sequence(lens, block_n, window)
        assert tiles.max() <= -(-window_tokens(cap, block_n, window) // block_n)
        # the tiles counted are those holding the window's keys
        first = np.maximum(lens - 1 - window, 0) // block_n
        assert np.array_equal(tiles, np.maximum(-(-lens // block_n) - first, 1))
    assert np.array_equal(tiles_per_sequence(lens, block_n), tiles_per_sequence(lens, block_n, -1))
    assert window_tokens(cap, block_n) == cap


@pytest.mark.parametrize("value,error", [(-2, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError),
                                         (torch.tensor(3), TypeError)])
def test_window_errors(value, error):
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    with pytest.raises(error, match="window_left"):
        leanattn.decode(q, k, v, lens, window_left=value)


def test_window_numpy_int():
    q, k, v, lens, _ = make_inputs(2, 4, 2, 64, [5, 9])
    check_decode(q, k, v, lens, None, None, "numpy window", window_left=np.int64(3))


def test_window_compile_fullgraph():
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    torch._dynamo.reset()
    compiled = torch.compile(leanattn.decode, fullgraph=True)
    out = compiled(q, k, v, lens, bt, window_left=9)
    assert torch.equal(out, leanattn.decode(q, k, v, lens, bt, window_left=9))
