"""``leanattn.decode`` against the float64 reference, under the Triton interpreter on CPU.

Shapes are tiny, but the interpreter config uses 16-token tiles and a 4-program grid, so heads are
cut into several tiles and pieces, which is what the stream-K reduction needs to be exercised.
"""
from __future__ import annotations

import math

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.ops.stream_k_launch import GRAPHS, IN_KERNEL, LAUNCH
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, assert_states_match, paged_kv

SCHEDULES = ["lean", "split"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BLOCK_N = 16  # interpreter tile (ops/decode_config.py)


def make_inputs(B, Hq, Hkv, D, lens, dtype=torch.float16, device="cpu", capacity=None, page_size=None,
                layout="nhd", spare_pages=3):
    """Random decode inputs ``(q, k_cache, v_cache, cache_seqlens, block_table)``.

    Parameters
    ----------
    lens : list of int or None
        Tokens per sequence; ``None`` leaves ``cache_seqlens`` unset (full capacity).
    capacity : int, optional
        Cache tokens per sequence (default ``max(lens)``). With ``page_size`` it is rounded up to
        whole pages, and pages are handed out in random order from a pool with ``spare_pages``
        unused pages.
    layout : {"nhd", "hnd"}
        ``"hnd"`` stores the cache as ``(.., Hkv, N, D)`` and passes its ``.transpose(1, 2)`` view.

    Returns
    -------
    q : ``(B, Hq, D)`` dtype; k_cache, v_cache : ``(B, N, Hkv, D)`` or ``(P, page_size, Hkv, D)``;
    cache_seqlens : ``(B,)`` int32 or None; block_table : ``(B, max_pages)`` int32 or None.
    """
    if capacity is None:
        capacity = max(lens, default=0) if lens is not None else 32
    q = torch.randn(B, Hq, D, dtype=dtype, device=device)
    if page_size is None:
        rows, n, block_table = B, capacity, None
    else:
        max_pages = -(-capacity // page_size)
        rows, n = B * max_pages + spare_pages, page_size
        block_table = torch.randperm(rows, device=device)[: B * max_pages].view(B, max_pages).to(torch.int32)
    shape = (rows, Hkv, n, D) if layout == "hnd" else (rows, n, Hkv, D)
    k, v = (torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
    if layout == "hnd":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    seqlens = None if lens is None else torch.tensor(lens, dtype=torch.int32, device=device)
    return q, k, v, seqlens, block_table


def check_decode(q, k, v, seqlens, block_table, softmax_scale=None, name="decode", **kw):
    """Run ``leanattn.decode`` with ``return_lse`` and compare both outputs to the reference."""
    out, lse = leanattn.decode(q, k, v, seqlens, block_table, softmax_scale, return_lse=True, **kw)
    ref_out, ref_lse = reference.decode(q, k, v, seqlens, block_table, softmax_scale, kw.get("k_scale", 1.0),
                                        kw.get("v_scale", 1.0), kw.get("softcap", 0.0), kw.get("window_left", -1),
                                        kw.get("causal", False), kw.get("cu_seqlens_q"))
    assert_states_match(name, q, out, lse, ref_out, ref_lse)
    return out, lse


# ragged lengths: empty, one token, one tile, one token past a tile, several tiles
RAGGED = [0, 1, BLOCK_N, BLOCK_N + 1, 45, 70]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("D", [64, 128, 256], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_dtypes_and_head_dims(dtype, D, schedule):
    check_decode(*make_inputs(len(RAGGED), 4, 2, D, RAGGED, dtype), schedule=schedule)


GQA = [(4, 4), (8, 4), (8, 2), (8, 1), (6, 2), (64, 2), (48, 1), (128, 1), (192, 2)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("Hq,Hkv", GQA, ids=[f"{hq}q{hkv}kv" for hq, hkv in GQA])
def test_gqa_ratios(Hq, Hkv, schedule):
    # groups of 1..8 (MHA..MQA), 3 (padded rows), 32 (BLOCK_H 32), 48 (BLOCK_H 64, masked rows),
    # 96 and 128 (two head blocks per kv head)
    check_decode(*make_inputs(3, Hq, Hkv, 64, [33, 0, 20]), schedule=schedule)


@pytest.mark.parametrize("layout", ["nhd", "hnd"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("page_size", [1, 2, 16, 64, 256, 24, 48], ids=lambda p: f"page{p}")
def test_paged(page_size, schedule, layout):
    # 24 splits tiles across pages (per-token page lookup); 48 is a non-power-of-two multiple of the tile
    lens = [0, 1, 31, 100, 64]
    check_decode(*make_inputs(len(lens), 8, 2, 64, lens, page_size=page_size, layout=layout), schedule=schedule)


@pytest.mark.parametrize("page_size,spare", [(1, 0), (16, 3), (24, 0)])
def test_paged_kv_copies_the_real_tokens(page_size, spare):
    # leanattn.testing.paged_kv (GPU tests and benchmarks page their caches with it): the pages of
    # sequence b, read through its block-table row, hold exactly k[b, :lens[b]]
    lens = [0, 1, 24, 50, 17]
    k = torch.randn(len(lens), max(lens), 2, 8)
    v = torch.randn_like(k)
    kp, vp, bt = paged_kv(k, v, lens, page_size, spare_pages=spare, generator=torch.Generator().manual_seed(1))
    pages = [-(-n // page_size) for n in lens]
    assert kp.shape == (sum(pages) + spare, page_size, 2, 8) and vp.shape == kp.shape
    assert bt.dtype == torch.int32 and bt.shape == (len(lens), max(pages))
    used = torch.cat([bt[b, :m] for b, m in enumerate(pages)])
    assert len(set(used.tolist())) == len(used)  # no page is shared
    for b, n in enumerate(lens):
        for x, xp in ((k, kp), (v, vp)):
            got = xp[bt[b, :pages[b]].long()].reshape(-1, 2, 8)[:n]
            assert torch.equal(got, x[b, :n])
        assert (bt[b, pages[b]:] == 0).all()
    for bad in (lens[:-1], lens[:-1] + [max(lens) + 1]):
        with pytest.raises(ValueError, match="lens"):
            paged_kv(k, v, bad, page_size)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_paged_kv_decode_matches_contiguous(schedule):
    lens = [0, 40, 7, 33]
    q, k, v, sl, _ = make_inputs(len(lens), 8, 2, 64, lens)
    kp, vp, bt = paged_kv(k, v, lens, 16)
    out = leanattn.decode(q, kp, vp, sl, bt, schedule=schedule)
    ref, _ = reference.decode(q, k, v, sl)
    assert_rel_close("paged_kv", out, ref, TOLERANCE[q.dtype])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_table_column_slice(schedule):
    # a view of the first pages of a wider table (row stride > pages per row)
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 64], capacity=128, page_size=16)
    check_decode(q, k, v, lens, bt[:, :4], schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_transposed_cache(schedule):
    q, k, v, lens, _ = make_inputs(3, 8, 4, 128, [50, 7, 0], layout="hnd")
    assert not k.is_contiguous() and k.stride(-1) == 1
    check_decode(q, k, v, lens, None, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_strided_query(schedule):
    q, k, v, lens, _ = make_inputs(2, 8, 2, 64, [40, 9])
    wide = torch.randn(2, 16, 64, dtype=q.dtype)
    wide[:, ::2] = q
    check_decode(wide[:, ::2], k, v, lens, None, schedule=schedule)  # head stride 128
    check_decode(q.transpose(0, 2).contiguous().transpose(0, 2), k, v, lens, None, schedule=schedule)  # no unit stride


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_strided_seqlens(schedule):
    # a view of every other entry: the kernels must not assume unit stride
    q, k, v, lens, _ = make_inputs(3, 4, 2, 64, [50, 7, 0])
    wide = torch.zeros(6, dtype=torch.int32)
    wide[::2] = lens
    check_decode(q, k, v, wide[::2], None, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_broadcast_query_and_cache(schedule):
    # stride-0 batch dimensions (one prompt's cache shared by the batch) are read without a copy
    q, k, v, _, _ = make_inputs(1, 8, 2, 64, None, capacity=40)
    lens = torch.tensor([40, 3, 0, 21], dtype=torch.int32)
    check_decode(q.expand(4, -1, -1), k.expand(4, -1, -1, -1), v.expand(4, -1, -1, -1), lens, None,
                 schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_same_shapes_new_values(schedule):
    # launch plans are cached by shape: new lengths, pages and data must still be used
    for _ in range(3):
        lens = torch.randint(0, 65, (4,)).tolist()
        check_decode(*make_inputs(4, 8, 2, 64, lens, capacity=64, page_size=16), schedule=schedule,
                     name=f"lens={lens}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_out_without_lse(schedule):
    # a call that does not return the LSE writes it to the plan's sink: the output is the same, and a
    # later call that returns it gets a tensor of its own, not the sink
    from leanattn.ops import decode as dec
    q, k, v, seqlens, _ = make_inputs(3, 8, 2, 64, [40, 0, 17])
    ref, ref_lse = reference.decode(q, k, v, seqlens)
    dec._PLANS.clear()
    out = leanattn.decode(q, k, v, seqlens, schedule=schedule)
    assert_rel_close("out", out, ref, TOLERANCE[q.dtype])
    (plan,) = dec._PLANS.values()
    out2, lse = leanattn.decode(q, k, v, seqlens, schedule=schedule, return_lse=True)
    assert torch.equal(out2, out) and lse.data_ptr() != plan.lse_sink.data_ptr()
    assert_lse_close("lse", lse, ref_lse, TOLERANCE[q.dtype])
    leanattn.decode(q, k, v, seqlens, schedule=schedule)
    assert_lse_close("lse kept", lse, ref_lse, TOLERANCE[q.dtype])


@pytest.mark.parametrize("num_programs", [1, 2, 3, 7, 50, 1000])
def test_lean_num_programs(num_programs):
    # 1: one program does everything; 3, 7: heads cut into unequal pieces across programs;
    # 1000: more programs than tiles (idle programs)
    lens = [0, 1, 95, 17, 130, 64]
    check_decode(*make_inputs(len(lens), 8, 2, 64, lens), schedule="lean", num_programs=num_programs)


def test_lean_many_pieces_per_head():
    # one long head cut across every program, and a large batch (BLOCK_B 64)
    lens = [300] + [0, 3, 17] * 14
    q, k, v, seqlens, bt = make_inputs(len(lens), 4, 1, 64, lens, page_size=16)
    for grid in (5, 13):
        check_decode(q, k, v, seqlens, bt, schedule="lean", num_programs=grid, name=f"grid={grid}")


# each tile factor and stage count once, the head layouts turning over them (the cross product cost CI 24 s more)
@pytest.mark.parametrize("factor,stages,hq,hkv", [(1, 3, 8, 2), (1, 1, 4, 4), (2, 1, 12, 4), (4, 2, 8, 2)],
                         ids=str)
def test_lean_merge_tiles(monkeypatch, factor, stages, hq, hkv):
    # the last arriver merges the valid rows of MERGE_ROWS // VALID_ROWS pieces per step (16 MHA
    # pieces, 4 of a 4-head group, 4 of a 3-head group padded to 4): heads cut into more pieces
    # than a step holds and into fewer (partial, masked steps) give the same result
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_MERGE", f"{factor},{stages}")
    dec._PLANS.clear()
    lens = [300, 5, 77]
    q, k, v, seqlens, bt = make_inputs(len(lens), hq, hkv, 64, lens)
    try:
        for grid in (7, 29):
            check_decode(q, k, v, seqlens, bt, schedule="lean", num_programs=grid, name=f"grid={grid}")
    finally:
        dec._PLANS.clear()


@pytest.mark.parametrize("num_programs", [1, 3, 7, 29])
def test_lean_merge_launch(monkeypatch, num_programs):
    # pieces merged by a second launch (piece_merge_kernel): heads whole in one program, cut into two
    # or into many pieces, empty sequences, GQA groups of 3 (a padded row block) and MHA
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", "1")
    dec._PLANS.clear()
    lens = [300, 0, 77, 5, 16]
    try:
        for hq, hkv in ((12, 4), (4, 4), (96, 1)):  # (96, 1): two head blocks per kv head
            q, k, v, seqlens, bt = make_inputs(len(lens), hq, hkv, 64, lens, page_size=16)
            check_decode(q, k, v, seqlens, bt, schedule="lean", num_programs=num_programs, name=f"{hq}/{hkv}")
        assert all(p.launch.mode == LAUNCH for p in dec._PLANS.values())
    finally:
        dec._PLANS.clear()


def test_piece_merge_launch_constants():
    # a load holds a row's share of an even cut (one more piece than programs per row), so the many-piece rows of
    # test_lean_merge_launch loop; up to 64 fp32 values a thread
    from leanattn.kernels.piece_merge import piece_merge_launch
    # heads wider than 128 are merged 128 columns a program, over a third grid axis
    cases = {(32, 264, 128): (16, 1, 1), (8, 264, 128): (32, 2, 1), (8, 264, 256): (32, 2, 2), (10, 29, 64): (4, 1, 1),
             (1, 1, 64): (2, 1, 1), (2048, 264, 128): (2, 1, 1), (1, 132, 512): (32, 2, 4)}
    for (rows, programs, d), (block_s, warps, chunks) in cases.items():
        grid, meta = piece_merge_launch(rows, 4, 1, 16, d, programs, rows)
        assert grid == (rows, 4) + ((chunks,) if chunks > 1 else ()), (rows, programs, d, grid)
        got = (meta["BLOCK_S"], meta["num_warps"], meta["BLOCK_D"] * chunks)
        assert got == (block_s, warps, d), (rows, programs, d)


@pytest.mark.parametrize("merge", ["0", "1"], ids=["in-kernel", "launch"])
def test_lean_across_rows_order_is_bitwise_equal(monkeypatch, merge):
    # programs ordered across rows (schedules/stream_k.across_rows) run the same cut: equal lengths cut into
    # 2 or 4 pieces a row (6 rows over 12 or 24 programs) give the same bits either way; ragged lengths and a
    # grid that is no multiple of the rows keep the order
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
    cases = [([128, 128, 128], 12), ([128, 128, 128], 24), ([128, 128, 128], 7), ([128, 40, 128], 12)]
    try:
        for lens, grid in cases:
            q, k, v, seqlens, _ = make_inputs(len(lens), 4, 2, 64, lens)
            outs = []
            for order in ("0", "1"):
                monkeypatch.setenv("LEANATTN_ACROSS_ROWS", order)
                dec._PLANS.clear()
                outs.append(leanattn.decode(q, k, v, seqlens, return_lse=True, num_programs=grid))
                (plan,) = dec._PLANS.values()
                assert plan.meta["ACROSS_ROWS"] is (order == "1")
                assert (128 // plan.meta["BLOCK_N"]) % 4 == 0  # 4 pieces a row are aligned with tiles
            assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), (lens, grid)
            ref, ref_lse = reference.decode(q, k, v, seqlens)
            assert_rel_close(f"{lens} over {grid}", outs[1][0], ref, TOLERANCE[q.dtype])
    finally:
        dec._PLANS.clear()


def test_across_rows_rule(monkeypatch):
    # by default only where one head's slice of a token is one 128-byte line
    from leanattn.ops import decode_config as dc
    monkeypatch.delenv("LEANATTN_ACROSS_ROWS", raising=False)
    assert dc.across_rows(64, 2) and not dc.across_rows(128, 2) and not dc.across_rows(64, 4)
    monkeypatch.setenv("LEANATTN_ACROSS_ROWS", "1")
    assert dc.across_rows(256, 2)


@pytest.mark.parametrize("raw", ["2", "yes", ""])
def test_even_env_errors(monkeypatch, raw):
    # LEANATTN_DECODE_EVEN is read when a plan is made, by decode and by the one-sample bifurcated path
    from leanattn.ops import bifurcated as bif, decode as dec
    q, k, v, sl, _ = make_inputs(1, 4, 2, 64, [40])
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", raw)
    dec._PLANS.clear()
    bif._PLANS.clear()
    with pytest.raises(ValueError, match="LEANATTN_DECODE_EVEN: expected 0 or 1"):
        leanattn.decode(q, k, v, sl)
    with pytest.raises(ValueError, match="LEANATTN_DECODE_EVEN: expected 0 or 1"):
        leanattn.bifurcated_decode(q, k[0], v[0], k, v, sl)


@pytest.mark.parametrize("raw", ["2", "yes", ""])
def test_pdl_env_errors(monkeypatch, raw):
    from leanattn import runtime
    monkeypatch.setenv("LEANATTN_PDL", raw)
    with pytest.raises(ValueError, match="LEANATTN_PDL: expected 0 or 1"):
        runtime.dependent_launch(torch.device("cpu"))


@pytest.mark.parametrize("raw", ["2", "yes"])
def test_across_rows_env_errors(monkeypatch, raw):
    from leanattn.ops import decode_config as dc
    monkeypatch.setenv("LEANATTN_ACROSS_ROWS", raw)
    with pytest.raises(ValueError, match="LEANATTN_ACROSS_ROWS"):
        dc.across_rows(64, 2)


def test_lean_merge_launch_matches_in_kernel_merge(monkeypatch):
    # the same pieces, folded in a different order by each merge: they agree to rounding
    from leanattn.ops import decode as dec
    q, k, v, seqlens, _ = make_inputs(3, 8, 2, 64, [200, 33, 0])
    outs = []
    for mode in ("0", "1"):
        monkeypatch.setenv("LEANATTN_DECODE_MERGE", mode)
        outs.append(leanattn.decode(q, k, v, seqlens, return_lse=True, num_programs=11))
    dec._PLANS.clear()
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=2e-3, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("D,tiles,batch,rows,grid,graphs", [
    (128, 512, 1, 8, 264, True),     # gqa B=1 32k: 32 pieces a row
    (128, 64, 1, 32, 264, "pdl"),    # mha B=1 4k: 8 pieces a row, aligned: only with a dependent merge launch
    (128, 132, 1, 32, 264, True),    # mha 8448 tokens: the cut is not aligned with rows
    (256, 512, 1, 8, 132, True),     # d256 B=1 32k: 16 pieces a row
    (128, 512, 4, 8, 264, False),    # several sequences keep the in-kernel merge
    (64, 512, 1, 8, 528, False),     # D=64 keeps it (its occupancy)
    (128, 4, 1, 8, 264, False),      # whole rows per program: nothing to merge
])
@pytest.mark.parametrize("pdl", [False, True], ids=["launch", "dependent-launch"])
def test_merge_in_launch_rule(monkeypatch, D, tiles, batch, rows, grid, graphs, pdl):
    # a second launch only under CUDA-graph capture (GRAPHS), where its host cost is paid once; from 8
    # pieces a row instead of 16 where it is a programmatic dependent launch
    from leanattn import runtime
    from leanattn.ops import decode_config as dc
    monkeypatch.delenv("LEANATTN_DECODE_MERGE", raising=False)
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "dependent_launch", lambda device: pdl)
    expected = GRAPHS if (graphs == "pdl" and pdl) or graphs is True else IN_KERNEL
    assert dc.merge_in_launch(torch.device("cuda"), D, tiles, batch, rows, grid, 132) == expected
    for raw, mode in (("0", IN_KERNEL), ("1", LAUNCH)):
        monkeypatch.setenv("LEANATTN_DECODE_MERGE", raw)
        assert dc.merge_in_launch(torch.device("cuda"), D, tiles, batch, rows, grid, 132) == mode


def test_dependent_launch_plumbing(monkeypatch):
    # PDL only on a GPU of sm_90 or later and never under the interpreter; where it is on, the stream-K
    # launch's variant that merges apart lets the merge start (PDL) and the merge is launched with launch_pdl
    # and waits (PDL); the in-kernel variant and merge_states' default launch do neither
    from leanattn import runtime
    from leanattn.kernels.decode import lean_decode_kernel
    from leanattn.kernels.merge import merge_launch
    from leanattn.ops.stream_k_launch import StreamKLaunch, piece_workspaces
    assert not runtime.dependent_launch(torch.device("cpu"))

    class Props:
        major, minor = 9, 0
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "_cuda_props", lambda index: Props)
    cuda = torch.device("cuda", 0)
    assert runtime.dependent_launch(cuda)
    monkeypatch.setenv("LEANATTN_PDL", "0")
    assert not runtime.dependent_launch(cuda)
    monkeypatch.delenv("LEANATTN_PDL")
    Props.major = 8
    assert not runtime.dependent_launch(cuda)

    monkeypatch.setattr(runtime, "dependent_launch", lambda device: True)
    cpu = torch.device("cpu")
    meta = dict(ROWS=8, GROUP=4, N_HB=1, HEAD_DIM=128, BLOCK_H=16, num_warps=4, MERGE_LAUNCH=False, PDL=False)
    ws = piece_workspaces("pdl_test", cpu, 4, 16, 128, 8)
    launch = StreamKLaunch(lean_decode_kernel, (4,), meta, ws, GRAPHS, ws, 1, cpu, 0)
    assert launch.in_kernel.meta["PDL"] is False and launch.apart.meta["PDL"] is True
    assert launch.merge.meta["PDL"] is True and launch.merge.meta["launch_pdl"] is True
    plain, dependent = merge_launch(4, 8, 128)[1], merge_launch(4, 8, 128, True)[1]
    assert plain["PDL"] is False and "launch_pdl" not in plain  # Triton backends without the option refuse it
    assert dependent["PDL"] is True and dependent["launch_pdl"] is True


def test_register_cap(monkeypatch):
    # maxnreg for k programs of 4 warps per SM: 64K registers over k * 128 threads, down to a multiple of 8
    from leanattn import runtime
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "interpreting", lambda: False)

    def no_device(index):
        raise RuntimeError("no device")
    monkeypatch.setattr(runtime, "_cuda_props", no_device)
    cuda = torch.device("cuda", 0)
    assert [runtime.register_cap(cuda, k, 4) for k in (1, 2, 3, 4, 5)] == [None, None, 168, 128, 96]
    assert runtime.register_cap(cuda, 2, 8) == 128 and runtime.register_cap(cuda, 0, 4) is None
    monkeypatch.setattr(runtime, "gpu_target", lambda device: False)
    assert runtime.register_cap(cuda, 4, 4) is None


def test_stream_k_launch_caps_the_apart_variant(monkeypatch):
    # the variant that merges apart fits as many programs per SM as the grid was sized for
    from leanattn import runtime
    from leanattn.ops.stream_k_launch import StreamKLaunch
    monkeypatch.setattr(runtime, "register_cap", lambda device, per_sm, warps: 128 if per_sm == 4 else None)
    meta = dict(num_warps=4, ROWS=4, GROUP=1, N_HB=1, HEAD_DIM=64, BLOCK_H=16)
    for mode, sms, cap in ((LAUNCH, 132, 128), (GRAPHS, 132, 128), (LAUNCH, 264, None), (LAUNCH, 0, None)):
        launch = StreamKLaunch(object(), (528,), meta, (), mode, (None,) * 4, 1, torch.device("cuda", 0), sms)
        assert launch.apart.meta.get("maxnreg") == cap, (mode, sms)
        assert launch.apart.meta["MERGE_LAUNCH"] and "maxnreg" not in getattr(launch.in_kernel, "meta", {})


def test_length_block_default(monkeypatch):
    from leanattn.ops import decode_config as dc
    monkeypatch.delenv("LEANATTN_DECODE_BLOCK_B_MIN", raising=False)
    assert [dc.length_block(b) for b in (0, 1, 2, 3, 16, 17)] == [1, 1, 2, 4, 16, 32]


@pytest.mark.parametrize("floor", ["1", "4", "16"])
def test_length_block_floor(monkeypatch, floor):
    # lengths vectors wider than the batch (a probe's knob): one sequence, and three in a 4-wide vector
    # (or wider), under both merges
    from leanattn.ops import decode as dec
    from leanattn.ops import decode_config as dc
    monkeypatch.setenv("LEANATTN_DECODE_BLOCK_B_MIN", floor)
    assert dc.length_block(1) == int(floor) and dc.length_block(3) == max(4, int(floor)) and dc.length_block(17) == 32
    dec._PLANS.clear()
    try:
        for lens in ([77], [300, 0, 45]):
            q, k, v, seqlens, _ = make_inputs(len(lens), 8, 2, 64, lens)
            for mode in ("0", "1"):
                monkeypatch.setenv("LEANATTN_DECODE_MERGE", mode)
                check_decode(q, k, v, seqlens, None, schedule="lean", num_programs=7,
                             name=f"{lens} merge {mode}")
        assert {p.meta["BLOCK_B"] for p in dec._PLANS.values()} == {int(floor), max(4, int(floor))}
    finally:
        dec._PLANS.clear()


@pytest.mark.parametrize("raw", ["0", "3", "x"])
def test_length_block_env_errors(monkeypatch, raw):
    from leanattn.ops import decode_config as dc
    monkeypatch.setenv("LEANATTN_DECODE_BLOCK_B_MIN", raw)
    with pytest.raises(ValueError, match="LEANATTN_DECODE_BLOCK_B_MIN"):
        dc.length_block(1)


@pytest.mark.parametrize("raw", ["2", "yes", ""])
def test_merge_launch_env_errors(monkeypatch, raw):
    from leanattn.ops import decode_config as dc
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", raw)
    with pytest.raises(ValueError, match="LEANATTN_DECODE_MERGE"):
        dc.merge_in_launch(torch.device("cpu"), 128, 8, 1, 8, 16, 0)


@pytest.mark.parametrize("raw", ["3,1", "2", "0,1", "2,0", "a,b"])
def test_lean_merge_env_errors(monkeypatch, raw):
    from leanattn.kernels.piece_merge import merge_meta
    monkeypatch.setenv("LEANATTN_MERGE", raw)
    with pytest.raises(ValueError, match="LEANATTN_MERGE"):
        merge_meta(16, 64, 4)


@pytest.mark.parametrize("load", ["1", "2"], ids=["blockptr", "tma"])
@pytest.mark.parametrize("layout", ["nhd", "hnd"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_load_paths(decode_load, load, layout, schedule):
    # block pointers and TMA descriptors give the reference's result, with NaN in every cache
    # tail past a length (zero-filled tiles must never meet p = 0 as 0 * NaN), empty rows
    # included; a paged cache keeps tensors of pointers
    from leanattn.ops import decode as dec
    decode_load(load)
    q, k, v, seqlens, _ = make_inputs(len(RAGGED), 8, 2, 64, RAGGED, capacity=80, layout=layout)
    for b, n in enumerate(RAGGED):
        k[b, n:] = float("nan")
        v[b, n:] = float("nan")
    check_decode(q, k, v, seqlens, None, schedule=schedule, num_programs=7 if schedule == "lean" else 0)
    assert [p.meta["LOAD"] for p in dec._PLANS.values()] == [int(load)]
    q, k, v, seqlens, bt = make_inputs(3, 8, 2, 64, [40, 0, 17], page_size=16)
    check_decode(q, k, v, seqlens, bt, schedule=schedule)
    assert list(dec._PLANS.values())[-1].meta["LOAD"] == 0


@pytest.mark.parametrize("raw,var", [("3", "LEANATTN_DECODE_LOAD"), ("x", "LEANATTN_DECODE_LOAD"),
                                     ("128,4,2", "LEANATTN_DECODE_CONFIG"), ("128,4,2,4,3", "LEANATTN_DECODE_CONFIG")])
def test_load_env_errors(monkeypatch, raw, var):
    from leanattn.ops import decode_config as dc
    monkeypatch.setenv(var, raw)
    with pytest.raises(ValueError, match=var):
        dc._env_load(0) if var == "LEANATTN_DECODE_LOAD" else dc._env_override((128, 4, 2, 4))


@pytest.mark.parametrize("D,group,kv_rows,capacity,paged,small", [
    (64, 4, 8, 8448, 0, True),      # 128 KB of K and V per SM on 132 SMs: the bound itself
    (64, 4, 8, 8449, 0, False),
    (64, 4, 8, 8448, 16, False),    # paged caches (16 tokens a page) keep their table
    (64, 128, 5, 8448, 0, False),   # two head blocks per kv head: twice the work per row
    (64, 128, 4, 8448, 0, True),
    (256, 4, 1, 256, 0, False),     # D=256 keeps its table (measured level)
])
def test_small_launch_config(monkeypatch, D, group, kv_rows, capacity, paged, small):
    # the config a GPU would get; the interpreter has its own
    from leanattn import runtime
    from leanattn.ops import decode_config as dc
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "num_sms", lambda device: 132)
    monkeypatch.delenv("LEANATTN_DECODE_CONFIG", raising=False)
    cpu = torch.device("cpu")
    table = (dc._CUDA_PAGED_TABLE if paged and D in dc._CUDA_PAGED_TABLE else dc._CUDA_TABLE)[D]
    assert dc._CUDA_SMALL != table  # else the case tells nothing

    def launch(cfg):
        return cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.ctas_per_sm
    assert launch(dc.decode_config(D, group, cpu, None, paged, kv_rows, capacity)) == (dc._CUDA_SMALL if small else table)
    # a tile size the caller names keeps the table's launch, and the environment's config wins over both
    assert launch(dc.decode_config(D, group, cpu, 32, paged, kv_rows, capacity)) == (32, *table[1:4])
    # a pipeline depth the caller names (a launch sharing its SMs) replaces only the depth
    base = dc._CUDA_SMALL if small else table
    assert launch(dc.decode_config(D, group, cpu, None, paged, kv_rows, capacity, 2)) == (*base[:2], 2, base[3])
    monkeypatch.setenv("LEANATTN_DECODE_CONFIG", "128,8,2,1")
    assert launch(dc.decode_config(D, group, cpu, None, paged, kv_rows, capacity)) == (128, 8, 2, 1)
    assert launch(dc.decode_config(D, group, cpu, None, paged, kv_rows, capacity, 3)) == (128, 8, 2, 1)


@pytest.mark.parametrize("cap,stages", [((9, 0), 3), ((10, 0), 3), ((8, 0), 2), ((8, 9), 2), (None, 3)])
def test_mla_config_fits_the_shared_memory(monkeypatch, cap, stages):
    # MLA's 512-wide latent: two 72 KB buffers (3 stages) where sm_90 and later give a program that much shared
    # memory; one buffer (2 stages) on earlier GPUs (an A100 gives 163 KB); offline compiles (no capability) take 3
    from leanattn import runtime
    from leanattn.ops import decode_config as dc
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "capability", lambda device: cap)
    monkeypatch.delenv("LEANATTN_DECODE_CONFIG", raising=False)
    cfg = dc.decode_config(512, 16, torch.device("cpu"), page_size=64)
    assert (cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.ctas_per_sm) == (64, 8, stages, 1)
    assert dc.decode_config(128, 4, torch.device("cpu")).num_stages == dc._CUDA_TABLE[128][2]  # others unchanged


def test_small_launch_config_callers(monkeypatch):
    # decode and the one-sample bifurcated path size the work as (sequences x kv heads, capacity):
    # record what they pass (the interpreter then builds its own config)
    from leanattn.ops import bifurcated_launch, decode as dec, decode_config as dc
    seen = []
    real = dc.decode_config

    def spy(*args, **kw):
        seen.append(args[5:7])
        assert not (any(args[7:]) or kw.get("num_stages"))  # the table's depth: only the overlap path names one
        return real(*args, **kw)
    monkeypatch.setattr(dec, "decode_config", spy)
    monkeypatch.setattr(bifurcated_launch, "decode_config", spy)
    dec._PLANS.clear()
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [5, 0, 40], capacity=48)
    leanattn.decode(q, k, v, lens)
    # two prompts, one sample each: the one-sample (concat) path
    pk, pv = torch.randn(2, 30, 2, 64, dtype=q.dtype), torch.randn(2, 30, 2, 64, dtype=q.dtype)
    leanattn.bifurcated_decode(q[:2], pk, pv, k[:2], v[:2], lens[:2], prefix_lens=torch.tensor([30, 7], dtype=torch.int32),
                               prefix_ids=torch.tensor([1, 0], dtype=torch.int32))
    assert (3 * 2, 48) in seen      # decode: 3 sequences x 2 kv heads, 48 tokens
    assert (2 * 2, 30 + 48) in seen  # one sample per prompt: prefix capacity + own capacity


def test_split_after_prior_plan():
    # the launch the ordered overlap path of bifurcated decode makes (a GPU-only programmatic dependent launch whose
    # last program waits with inline assembly, which the interpreter has not): its launch options and counter
    from leanattn.ops import decode as dec
    q, k, v, lens, _ = make_inputs(3, 8, 2, 64, [5, 0, 40])
    plan = dec._Plan(q, k, v, lens, None, 0.125, "split", 0, 0, 0, True)
    meta = plan.launch.meta
    assert meta["AFTER_PRIOR"] is True and meta["launch_pdl"] is True
    assert meta["PDL"] is False  # it lets nothing after it start early
    assert plan.launch.scalars[0] is plan.arrivals and plan.arrivals.tolist() == [0]
    assert dec._Plan(q, k, v, lens, None, 0.125, "split", 0, 0).launch.meta["AFTER_PRIOR"] is False


@pytest.mark.parametrize("num_splits", [1, 2, 3, 5, 100])
def test_split_num_splits(num_splits):
    # 3 and 5 leave the last split short or empty for shorter sequences; 100 is clamped to the tiles
    lens = [0, 1, 95, 17, 130]
    check_decode(*make_inputs(len(lens), 8, 2, 64, lens), schedule="split", num_splits=num_splits)


@pytest.mark.parametrize("block_n", [16, 32, 64], ids=lambda n: f"block{n}")
@pytest.mark.parametrize("page_size", [None, 16, 64], ids=lambda p: f"page{p}")
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_n(block_n, page_size, schedule):
    # page 16 with 32/64-token tiles takes the per-token page lookup; page 64 the per-tile one
    q, k, v, lens, bt = make_inputs(4, 4, 2, 64, [0, 1, 70, 129], page_size=page_size)
    args = (q, k, v, lens, bt, 0.125, schedule, 3, 2, block_n)
    out, lse = torch.ops.leanattn.decode(*args)
    ref_out, ref_lse = reference.decode(q, k, v, lens, bt, 0.125)
    assert_rel_close("decode", out, ref_out, TOLERANCE[q.dtype])
    assert_lse_close("decode", lse, ref_lse, TOLERANCE[q.dtype])


@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "paged"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_default_seqlens_full_capacity(schedule, page_size):
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, None, capacity=40, page_size=page_size)
    assert lens is None
    check_decode(q, k, v, None, bt, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_random_ragged(schedule):
    # fresh lengths each run, mostly not multiples of the tile
    lens = torch.randint(0, 150, (9,)).tolist()
    check_decode(*make_inputs(9, 8, 2, 64, lens, capacity=150), schedule=schedule, name=f"lens={lens}")


@pytest.mark.parametrize("scale", [0.01, 1.0, 3.0])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_softmax_scale(scale, schedule):
    # large scales make the softmax peaky: the online max rescaling and the merge must be exact
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [80, 33, 5], torch.float32)
    check_decode(q, k, v, lens, bt, softmax_scale=scale, schedule=schedule, num_programs=3, num_splits=3)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_default_scale_is_inverse_sqrt_head_dim(schedule):
    q, k, v, lens, _ = make_inputs(2, 4, 2, 128, [30, 17], torch.float32)
    a = leanattn.decode(q, k, v, lens, schedule=schedule)
    b = leanattn.decode(q, k, v, lens, softmax_scale=1 / math.sqrt(128), schedule=schedule)
    assert torch.equal(a, b)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_all_empty(schedule):
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [0, 0, 0], capacity=20, page_size=4)
    out, lse = check_decode(q, k, v, lens, bt, schedule=schedule)
    assert torch.isneginf(lse).all()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero_capacity(schedule):
    q, k, v, _, _ = make_inputs(2, 4, 2, 64, None, capacity=0)
    out, lse = leanattn.decode(q, k, v, return_lse=True, schedule=schedule)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_empty_batch(schedule):
    q, k, v, lens, bt = make_inputs(0, 4, 2, 64, [], capacity=16, page_size=16)
    out, lse = leanattn.decode(q, k, v, lens, bt, return_lse=True, schedule=schedule)
    assert out.shape == (0, 4, 64) and lse.shape == (0, 4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_deterministic(schedule):
    q, k, v, lens, bt = make_inputs(4, 8, 2, 64, [130, 0, 77, 41], page_size=16)
    runs = [leanattn.decode(q, k, v, lens, bt, return_lse=True, schedule=schedule, num_programs=5, num_splits=3)
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_opcheck(schedule):
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    torch.library.opcheck(torch.ops.leanattn.decode.default, (q, k, v, lens, bt, 0.125, schedule, 3, 2, 0, 1.0, 1.0))
    torch.library.opcheck(torch.ops.leanattn.decode.default, (q, k, v, None, bt, 0.125, schedule, 0, 0, 0, 1.0, 1.0))


def test_compile_fullgraph():
    q, k, v, lens, bt = make_inputs(3, 4, 2, 64, [40, 0, 17], page_size=16)
    torch._dynamo.reset()
    compiled = torch.compile(leanattn.decode, fullgraph=True)
    for schedule in SCHEDULES:
        out, lse = compiled(q, k, v, lens, bt, return_lse=True, schedule=schedule)
        ref_out, ref_lse = leanattn.decode(q, k, v, lens, bt, return_lse=True, schedule=schedule)
        assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    # new lengths, same shapes: no stale schedule
    lens2 = torch.tensor([3, 48, 0], dtype=torch.int32)
    out = compiled(q, k, v, lens2, bt)
    assert_rel_close("decode", out, reference.decode(q, k, v, lens2, bt)[0], TOLERANCE[q.dtype])


@pytest.mark.parametrize("B,hkv,n", [(1, 2, 48), (3, 1, 40), (2, 4, 16), (1, 1, 200)])
def test_full_cache_launches_only_the_programs_used(monkeypatch, B, hkv, n):
    # without cache_seqlens the host knows every length, so the lean grid is the kernel's aligned cut
    # (schedules/stream_k.programs_used_py) rather than the persistent grid with idle programs; the
    # ranges, hence the bits, are those of the same call with the lengths passed (the persistent kernel:
    # where that cut is even pieces a row they run on the split kernel, test_even_pieces)
    from leanattn import runtime
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")
    from leanattn.ops.decode_config import decode_config
    from leanattn.schedules.stream_k import programs_used_py
    q, k, v, _, _ = make_inputs(B, 4 * hkv, hkv, 64, None, capacity=n)
    full = torch.full((B,), n, dtype=torch.int32)
    dec._PLANS.clear()
    out, lse = leanattn.decode(q, k, v, return_lse=True)
    out_l, lse_l = leanattn.decode(q, k, v, full, return_lse=True)
    assert torch.equal(out, out_l) and torch.equal(lse, lse_l)
    cfg = decode_config(64, 4, q.device)
    persistent = runtime.num_sms(q.device) * cfg.ctas_per_sm
    used = programs_used_py([-(-n // cfg.block_n)] * B, hkv * cfg.n_hb, persistent, runtime.num_sms(q.device))
    grids = sorted(p.grid[0] for p in dec._PLANS.values())
    assert grids == sorted([used, persistent])
    assert_rel_close("decode", out, reference.decode(q, k, v)[0], TOLERANCE[q.dtype])


@pytest.mark.parametrize("lens,page_size,hkv,d", [([96], None, 2, 64), ([37], None, 2, 64), ([0], None, 2, 64),
                                                  ([1], 16, 1, 128), ([70], 16, 2, 64), (None, None, 1, 64)])
def test_even_pieces(monkeypatch, lens, page_size, hkv, d):
    # rows of equal length (one sequence; or no cache_seqlens) whose cut at capacity is k pieces a row run as
    # k even pieces of the real tiles on the split kernel (ops/decode.even_pieces): exact, the same bits as
    # eagerly again, and the persistent kernel (LEANATTN_DECODE_EVEN=0) agrees with the reference too
    from leanattn.ops import decode as dec
    B = 1 if lens is not None else 2
    q, k, v, sl, bt = make_inputs(B, 4 * hkv, hkv, d, lens, capacity=96, page_size=page_size)
    ref, ref_lse = reference.decode(q, k, v, sl, bt)
    for even in ("1", "0"):
        monkeypatch.setenv("LEANATTN_DECODE_EVEN", even)
        dec._PLANS.clear()
        out, lse = leanattn.decode(q, k, v, sl, bt, return_lse=True)
        (plan,) = dec._PLANS.values()
        assert (plan.schedule == "split") is (even == "1")
        if even == "1":
            assert plan.meta["EVEN"] and plan.splits > 1
        assert_rel_close(f"even={even}", out, ref, TOLERANCE[q.dtype])
        assert_lse_close(f"even={even} lse", lse, ref_lse, 1e-2)
    dec._PLANS.clear()


@pytest.mark.parametrize("page_size", [None, 16])
def test_lean_grid_warmup_matches_the_kernel(monkeypatch, page_size):
    # the warmup() a GPU makes to size the persistent grid binds these arguments; the interpreter
    # never compiles, so check here that they fit the kernel's parameters
    from leanattn import runtime
    from leanattn.kernels.decode import lean_decode_kernel
    from leanattn.ops import decode as dec
    checked = []

    def kernel_occupancy(kernel, args, meta, device, info=None, prefix=""):
        params = [a for a in kernel.arg_names if a not in meta]
        assert kernel is lean_decode_kernel
        assert len(args) == len(params), f"{len(args)} positional arguments for {params}"
        assert not set(meta) - set(kernel.arg_names) - {"num_warps", "num_stages"}
        checked.append(kernel)
        return 1
    monkeypatch.setattr(runtime, "kernel_occupancy", kernel_occupancy)
    dec._PLANS.clear()
    q, k, v, lens, bt = make_inputs(2, 8, 2, 64, [5, 30], page_size=page_size)
    out = leanattn.decode(q, k, v, lens, bt)
    ref, _ = reference.decode(q, k, v, lens, bt)
    assert_rel_close("decode", out, ref, TOLERANCE[q.dtype])
    assert checked == [lean_decode_kernel]


class _FakeCompiled:
    """Stands in for a Triton CompiledKernel: ``compiled[grid](*args)`` records the launch."""

    function = object()

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("direct", grid, args))


class _FakeCompiledRaw(_FakeCompiled):
    """A CompiledKernel with the driver launcher and the handles ``runtime._raw_launch`` calls it with."""

    packed_metadata = "packed"

    def run(self, *args):
        self.log.append(("raw", args))


class _FakeKernel:
    """Stands in for a JITFunction with parameters ``a, b, n, C`` (``C`` constexpr)."""

    params = [type("P", (), {"name": n})() for n in ("a", "b", "n", "C")]

    def __init__(self, compiled=_FakeCompiled):
        self.log, self.compiled = [], compiled

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.log.append(("jit", grid, args, meta))
            return self.compiled(self.log)
        return launch


def test_launcher_raw_launch(monkeypatch):
    # with the driver's handles at hand and no launch hook registered, launches after the first skip
    # Triton's runner; a registered hook (a profiler's) sends them through the runner, which calls it
    from leanattn import runtime
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    monkeypatch.setattr(runtime, "_stream_getter", lambda: lambda: "stream")
    hooked = [False]
    monkeypatch.setattr(runtime, "_launch_hooked", lambda: hooked[0])
    kernel = _FakeKernel(_FakeCompiledRaw)
    launch = runtime.Launcher(kernel, (7, 2), dict(C=3), (5,))
    buf = torch.zeros(64, dtype=torch.float16)
    a, b = buf[:8], buf[16:24]
    launch(a, b)
    launch(a, b)
    hooked[0] = True
    launch(a, b)
    hooked[0] = False
    launch(buf[1:9], b)  # 2 bytes off: the JIT
    launch(a, b)
    launch(a, None)  # not a tensor where the first launch had one: the JIT
    assert [e[0] for e in kernel.log] == ["jit", "raw", "direct", "jit", "raw", "jit"]
    assert kernel.log[1][1] == (7, 2, 1, "stream", _FakeCompiled.function, "packed", None, None, None, a, b, 5, 3)
    assert kernel.log[2][2] == (a, b, 5, 3)


def test_launch_hooked():
    # what runtime._launch_hooked reads: Triton's launch hooks, registered and removed
    import triton
    from leanattn import runtime
    if not hasattr(getattr(triton.knobs.runtime, "launch_enter_hook", None), "add"):
        pytest.skip("this Triton keeps launch hooks as plain attributes")
    assert not runtime._launch_hooked()

    def hook(metadata):
        pass
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert runtime._launch_hooked()
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert not runtime._launch_hooked()


def test_launcher_direct_after_first_launch(monkeypatch):
    # the launcher compiles through the JIT once, then calls the compiled kernel with its scalars and
    # constants appended; a tensor off a 16-byte boundary (Triton specialises pointers on it) goes back
    # through the JIT, and the direct path stays for aligned calls
    from leanattn import runtime
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    kernel = _FakeKernel()
    launch = runtime.Launcher(kernel, (7,), dict(C=3, num_warps=4), (5,))
    buf = torch.zeros(64, dtype=torch.float16)
    a, b = buf[:8], buf[16:24]
    launch(a, b)
    launch(a, b)
    launch(buf[1:9], b)  # 2 bytes off
    launch(a, b)
    assert [e[0] for e in kernel.log] == ["jit", "direct", "jit", "direct"]
    assert kernel.log[0][2] == (a, b, 5) and kernel.log[0][3] == dict(C=3, num_warps=4)
    assert kernel.log[1][1] == (7, 1, 1) and kernel.log[1][2] == (a, b, 5, 3)


def test_launcher_misaligned_first_launch(monkeypatch):
    # the direct path is tied to the first launch's alignment, whichever it was
    from leanattn import runtime
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    kernel = _FakeKernel()
    launch = runtime.Launcher(kernel, (2, 3), dict(C=1), (9,))
    buf = torch.zeros(64, dtype=torch.float16)
    off, al = buf[1:9], buf[:8]
    for x in (off, off, al, off):
        launch(x, al)
    assert [e[0] for e in kernel.log] == ["jit", "direct", "jit", "direct"]
    assert kernel.log[1][1] == (2, 3, 1)


def test_launcher_keeps_jit(monkeypatch):
    # under the interpreter, for a kernel without a parameter list (autotuned), and when a parameter
    # is left to its default, every launch goes through the JIT
    from leanattn import runtime
    x = torch.zeros(8)
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    kernel = _FakeKernel()
    launch = runtime.Launcher(kernel, (2,), dict(C=1), (1,))
    for _ in range(3):
        launch(x, x)
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    no_params = _FakeKernel()
    no_params.params = None
    default = _FakeKernel()
    for k, meta in ((no_params, dict(C=1)), (default, {})):
        launch = runtime.Launcher(k, (2,), meta, (1,))
        for _ in range(3):
            launch(x, x)
    assert all([e[0] for e in k.log] == ["jit"] * 3 for k in (kernel, no_params, default))
