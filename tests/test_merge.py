"""``leanattn.merge_states`` against the float64 reference, and its algebra: identity, associativity,
and exactness when a decode is cut into key ranges."""
from __future__ import annotations

import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close
from test_decode import DTYPES, SCHEDULES, make_inputs

LSE_ATOL = 1e-5  # lse is float32 whatever the dtype of outs


def random_states(S, B, H, D, dtype=torch.float32):
    """``outs (S, B, H, D)`` in ``dtype`` and ``lses (S, B, H)`` float32 spread over a wide range."""
    outs = torch.randn(S, B, H, D).to(dtype)
    lses = torch.randn(S, B, H) * 4
    return outs, lses


def check_merge(outs, lses, name="merge"):
    out, lse = leanattn.merge_states(outs, lses)
    ref_out, ref_lse = reference.merge_states(outs, lses)
    assert out.shape == outs.shape[1:] and out.dtype == outs.dtype
    assert lse.shape == lses.shape[1:] and lse.dtype == torch.float32
    assert_rel_close(name, out, ref_out, TOLERANCE[outs.dtype])
    assert_lse_close(name, lse, ref_lse, LSE_ATOL)
    return out, lse


_MERGE_SHAPES = [(1, 1, 1, 64), (2, 3, 4, 128), (3, 2, 5, 256), (7, 4, 33, 64), (16, 1, 2, 96), (5, 3, 70, 8),
                 (40, 2, 3, 256), (2, 1, 2051, 8), (9, 1, 5, 64), (140, 1, 3, 512), (33, 1, 2, 320)]


# the dtypes turn over the shapes, each dtype meeting the unrolled, looped and column-split forms (every dtype on
# every shape cost CI 21 s more)
@pytest.mark.parametrize("S,B,H,D,dtype", [s + (list(DTYPES.values())[i % 3],) for i, s in enumerate(_MERGE_SHAPES)],
                         ids=[f"{s}-{list(DTYPES)[i % 3]}" for i, s in enumerate(_MERGE_SHAPES)])
def test_matches_reference(S, B, H, D, dtype):
    # up to UNROLL_MAX states the unrolled loop, (2, 1, 2051, 8) at 4 rows a program with a partial last one;
    # (40, .., 256) and (9, ..): BLOCK_S states a load, at 40 several loads, the last partial; from D=256 128 columns a
    # program (320: the last 64 columns masked)
    check_merge(*random_states(S, B, H, D, dtype))


def test_matches_reference_many_rows():
    # 1200 rows, more than the interpreter's other cases (fp32 only: each dtype cost CI 11 s)
    check_merge(*random_states(3, 4, 300, 8, torch.float32))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter multiplies the NaNs it drops
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("S", [3, 10], ids=["unrolled", "blocked"])
def test_identity_ignores_garbage(dtype, S):
    # (anything, -inf) is the identity, even when "anything" is NaN or inf
    outs, lses = random_states(S, 2, 4, 64, dtype)
    outs[1] = float("nan")
    outs[2, 0] = float("inf")
    lses[1] = float("-inf")
    lses[2, 0] = float("-inf")
    out, lse = check_merge(outs, lses)
    assert not torch.isnan(out).any()
    keep = [i for i in range(S) if i != 1]
    only, only_lse = leanattn.merge_states(outs[keep][:, 1:], lses[keep][:, 1:])
    if S <= 8:  # unrolled, the empty state folds in as exactly nothing
        assert torch.equal(out[1:], only) and torch.equal(lse[1:], only_lse)
    else:  # BLOCK_S states a load, summed in another order without it
        assert_rel_close("without the empty state", out[1:], only, 1e-6 if dtype == torch.float32 else 1e-3)
        assert_lse_close("without the empty state", lse[1:], only_lse, LSE_ATOL)


def test_all_empty_rows():
    outs, lses = random_states(4, 2, 3, 64)
    outs[:, 0] = float("nan")
    lses[:, 0] = float("-inf")
    out, lse = check_merge(outs, lses)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isneginf(lse[0]).all()
    assert torch.isfinite(lse[1]).all()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter multiplies the NaNs it drops
@pytest.mark.parametrize("S", [2, 3, 10], ids=["two", "unrolled", "blocked"])
def test_infinite_lse_row(S):
    # a state of lse = +inf (out of the domain) gives its row the reference's (0, +inf), not NaN; other rows as before
    outs, lses = random_states(S, 2, 3, 64)
    lses[S - 1, 0, 1] = float("inf")
    lses[0, 1, 2] = float("inf")
    lses[1, 1, 2] = float("inf")
    out, lse = check_merge(outs, lses)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(out[0, 1], torch.zeros(64)) and lse[0, 1] == float("inf") and lse[1, 2] == float("inf")
    two, two_lse = leanattn.merge_state(outs[0], lses[0], outs[1], lses[1])
    ref, ref_lse = reference.merge_states(outs[:2], lses[:2])
    assert_rel_close("merge_state", two, ref, TOLERANCE[outs.dtype])
    assert_lse_close("merge_state", two_lse, ref_lse, LSE_ATOL)



@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter multiplies the NaNs it drops
@pytest.mark.parametrize("S", [2, 3, 10], ids=["two", "unrolled", "blocked"])
def test_nan_lse_row(S):
    # a state of lse = NaN makes its row NaN, beside a +inf state too (a max that drops the NaN made that row a clean
    # (0, +inf)); the other rows as the reference. On a GPU where there is one
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    outs, lses = (x.to(dev) for x in random_states(S, 2, 3, 64))
    lses[0, 0, 1] = float("nan")
    lses[S - 1, 0, 1] = float("inf")
    lses[S - 1, 1, 0] = float("nan")
    keep = torch.ones(2, 3, dtype=torch.bool, device=dev)
    keep[0, 1] = keep[1, 0] = False
    out, lse = leanattn.merge_states(outs, lses)
    ref, ref_lse = reference.merge_states(outs, lses)
    assert lse[~keep].isnan().all() and out[~keep].isnan().all()
    assert_rel_close("other rows", out[keep], ref[keep], TOLERANCE[outs.dtype])
    assert_lse_close("other rows", lse[keep], ref_lse[keep], LSE_ATOL)
    _, two_lse = leanattn.merge_state(outs[0], lses[0], outs[S - 1], lses[S - 1])
    assert two_lse[~keep].isnan().all() and not two_lse[keep].isnan().any()


def test_no_states():
    out, lse = leanattn.merge_states(torch.empty(0, 2, 3, 64), torch.empty(0, 2, 3))
    assert torch.equal(out, torch.zeros(2, 3, 64)) and torch.isneginf(lse).all()


def test_associative():
    outs, lses = random_states(6, 3, 4, 64)
    lses[2, 1] = float("-inf")
    whole, whole_lse = leanattn.merge_states(outs, lses)
    # ((0 1) (2 3 4)) 5, in another order
    a = leanattn.merge_states(outs[:2], lses[:2])
    b = leanattn.merge_states(outs[2:5], lses[2:5])
    ab = leanattn.merge_states(torch.stack([b[0], a[0]]), torch.stack([b[1], a[1]]))
    out, lse = leanattn.merge_states(torch.stack([ab[0], outs[5]]), torch.stack([ab[1], lses[5]]))
    assert_rel_close("merge of merges", out, whole, 1e-5)
    assert_lse_close("merge of merges", lse, whole_lse, LSE_ATOL)


def test_strided_inputs():
    outs, lses = random_states(3, 4, 2, 64)
    # batch-major storage seen as (S, B, H, D)
    check_merge(outs.transpose(0, 1).contiguous().transpose(0, 1), lses.transpose(0, 1).contiguous().transpose(0, 1))


def test_opcheck():
    torch.library.opcheck(torch.ops.leanattn.merge_states.default, random_states(3, 2, 4, 64))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("cuts", [(40,), (16, 50)], ids=["2 ranges", "3 ranges"])
def test_decode_key_ranges_merge_to_full_decode(cuts, schedule):
    # the merge is exact: decoding the keys in ranges and merging equals one decode over all keys
    lens = [0, 1, 17, 39, 60, 90]
    q, k, v, seqlens, _ = make_inputs(len(lens), 8, 2, 64, lens, torch.float32)
    bounds = [0, *cuts, k.shape[1]]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part_lens = (seqlens - lo).clamp(0, hi - lo).to(torch.int32)
        parts.append(leanattn.decode(q, k[:, lo:hi], v[:, lo:hi], part_lens, return_lse=True, schedule=schedule))
    out, lse = leanattn.merge_states(torch.stack([o for o, _ in parts]), torch.stack([l for _, l in parts]))
    full, full_lse = leanattn.decode(q, k, v, seqlens, return_lse=True, schedule=schedule)
    ref_out, ref_lse = reference.decode(q, k, v, seqlens)
    tol = TOLERANCE[torch.float32]
    assert_rel_close("merged", out, ref_out, tol)
    assert_lse_close("merged", lse, ref_lse, tol)
    assert_rel_close("merged vs full", out, full, tol)
    assert_lse_close("merged vs full", lse, full_lse, tol)


def test_merge_launch_unrolls_few_states():
    # up to UNROLL_MAX states the loop over them is unrolled: 4 rows a program of 4 warps from 2048 rows, else one
    # row of one warp; more states load BLOCK_S at once, one row a program
    from leanattn.kernels.merge import UNROLL_MAX, merge_launch
    grid, meta = merge_launch(3, 8192, 128)
    assert grid == (2048,) and (meta["UNROLL"], meta["BLOCK_M"], meta["num_warps"]) == (3, 4, 4)
    grid, meta = merge_launch(UNROLL_MAX, 2047, 96)
    assert grid == (2047,) and (meta["UNROLL"], meta["BLOCK_M"], meta["num_warps"], meta["BLOCK_D"]) == (8, 1, 1, 128)
    grid, meta = merge_launch(UNROLL_MAX + 1, 100, 128)
    assert grid == (100,) and meta.get("UNROLL", 0) == 0 and meta["BLOCK_S"] == 16 and meta["num_warps"] == 4
    # a wide head over few rows: 128 columns a program, more states a step (MLA's one sequence of 16 heads)
    grid, meta = merge_launch(132, 16, 512)
    assert grid == (16, 4) and (meta["BLOCK_D"], meta["BLOCK_S"]) == (128, 32)
    grid, meta = merge_launch(132, 4096, 512)
    assert grid == (4096,) and meta["BLOCK_D"] == 512


@pytest.mark.parametrize("S,M", [(1, 4), (3, 8192), (8, 100), (9, 100), (40, 5000)])
def test_merge_launch_names_every_constant(S, M):
    # runtime.Launcher launches a compiled kernel directly only when the launch names every constexpr parameter (a
    # parameter left to its default sends each launch through the JIT: 60 us of host time per eager decode at D=256)
    from leanattn.kernels.merge import merge_launch, merge_states_kernel
    _, meta = merge_launch(S, M, 128, pdl=False)
    import inspect
    fn = merge_states_kernel.fn  # the Python function under the JIT or the interpreter
    constants = {n for n, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}
    assert "UNROLL" in constants
    assert constants <= set(meta), constants - set(meta)


@pytest.mark.parametrize("S,M,D", [(2, 7, 64), (3, 2100, 16), (4, 3, 512), (5, 4, 64)], ids=lambda x: str(x))
def test_state_list_matches_stacked_merge_bitwise(S, M, D):
    # merge_state_list's launch (2-4 states read where they lie; 5 stacked) folds as the stacked merge does; strided
    # states, empty rows (with NaN outputs) and a row empty in every state
    from leanattn.merges.states import merge_state_list
    outs = [torch.randn(M, 2 * D, dtype=torch.float16)[:, ::2].unsqueeze(1) for _ in range(S)]
    lses = [torch.randn(M, 1) * 4 for _ in range(S)]
    lses[0][0] = float("-inf")
    for s in range(S):
        lses[s][1] = float("-inf")
    outs[1][2] = float("nan")
    lses[1][2] = float("-inf")
    out, lse = merge_state_list(outs, lses)
    ref_out, ref_lse = leanattn.merge_states(torch.stack(outs), torch.stack(lses))
    assert out.shape == (M, 1, D) and lse.shape == (M, 1)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    assert merge_state_list(outs[:1], lses[:1])[0] is outs[0]


@pytest.mark.parametrize("S", [1, 2, 4])
def test_state_list_each_launch_config(S, monkeypatch):
    # every (rows, warps) of merge_state_list's LIST_CONFIGS, reached at few rows with lowered thresholds: equal bit
    # for bit to the stacked merge, and with sinks folded in to the default's one row a program; the in-place form;
    # a partial last program
    from leanattn.merges import states
    sinks = torch.randn(1)
    for M in (7, 21, 53):  # (1, 1), (4, 4) and (8, 2), the last two ending in a partial program
        outs = [torch.randn(M, 1, 32, dtype=torch.float16) for _ in range(S)]
        lses = [torch.randn(M, 1) * 4 for _ in range(S)]
        lses[0][0] = float("-inf")
        one_row = states.merge_state_list(outs, lses, sinks)  # one row a program at these rows by default
        ref = states.merge_states(torch.stack(outs), torch.stack(lses))
        with monkeypatch.context() as mp:
            mp.setattr(states, "LIST_CONFIGS", ((48, 8, 2), (12, 4, 4), (0, 1, 1)))
            got = states.merge_state_list(outs, lses, sinks)
            plain = states.merge_state_list(outs, lses)
            if S == 2:
                leanattn.merge_state_in_place(outs[0], lses[0], outs[1], lses[1])
        assert torch.equal(got[0], one_row[0]) and torch.equal(got[1], one_row[1])
        if S > 1:  # one state without sinks is returned as it is
            assert torch.equal(plain[0], ref[0]) and torch.equal(plain[1], ref[1])
        if S == 2:
            assert torch.equal(outs[0], ref[0]) and torch.equal(lses[0], ref[1])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(3, 4, 64), (2, 5, 3, 128), (1, 2051, 16)], ids=str)
def test_merge_state_of_two(shape, dtype):
    outs = [torch.randn(shape).to(dtype) for _ in range(2)]
    lses = [torch.randn(shape[:-1]) * 4 for _ in range(2)]
    lses[1].view(-1)[:3] = float("-inf")  # rows where b attended no key: a's state
    out, lse = leanattn.merge_state(outs[0], lses[0], outs[1], lses[1])
    ref_out, ref_lse = reference.merge_states(torch.stack(outs).flatten(1, -3), torch.stack(lses).flatten(1, -2))
    assert out.shape == shape and out.dtype == dtype and lse.shape == shape[:-1] and lse.dtype == torch.float32
    assert_rel_close("merge_state", out.flatten(0, -3), ref_out, TOLERANCE[dtype])
    assert_lse_close("merge_state", lse.flatten(0, -2), ref_lse, LSE_ATOL)


def test_merge_state_errors():
    o = torch.randn(2, 3, 8)
    ls = torch.randn(2, 3)
    cases = [((o.tolist(), ls, o, ls), TypeError, "out_a: expected a torch.Tensor"),
             ((o[0, 0], ls, o, ls), ValueError, "out_a: expected a \\(..., H, D\\) tensor"),
             ((o.double(), ls, o.double(), ls), TypeError, "out_a: expected dtype in"),
             ((o, ls, o.half(), ls), TypeError, "out_b: expected dtype torch.float32 \\(as out_a\\)"),
             ((o, ls, o[:1], ls), ValueError, "out_b: expected shape \\(2, 3, 8\\) \\(as out_a\\)"),
             ((o, ls.half(), o, ls), TypeError, "lse_a: expected dtype in float32"),
             ((o, ls, o, ls[:, :2]), ValueError, "lse_b: expected shape \\(2, 3\\)"),
             ((o, ls, o, "x"), TypeError, "lse_b: expected a torch.Tensor"),
             ((o, ls, o, ls.to("meta")), ValueError, "lse_b: expected device cpu \\(as out_a\\)"),
             ((o[..., :0], ls, o[..., :0], ls), ValueError, "out_a: expected a head dim >= 1")]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            leanattn.merge_state(*args)


# a dtype a shape: the 2051-row case takes 10-14 s under the interpreter
@pytest.mark.parametrize("shape,dtype", [((1, 1, 64), torch.float32), ((2, 5, 3, 128), torch.bfloat16),
                                         ((1, 2051, 16), torch.float16)], ids=str)
def test_merge_state_in_place(shape, dtype):
    # written over (v, s): equal bit for bit to merge_state, the other state strided; rows where either state is
    # empty; 2051 rows take 4 rows a program (the barrier before the stores)
    v = torch.randn(shape).to(dtype)
    s = torch.randn(shape[:-1]) * 4
    other = torch.randn(shape[:-1] + (2 * shape[-1],)).to(dtype)[..., ::2]
    s_other = torch.randn(shape[:-1]) * 4
    s.view(-1)[:1] = float("-inf")
    s_other.view(-1)[1:3] = float("-inf")
    want_out, want_lse = leanattn.merge_state(v, s, other, s_other)
    ref_out, ref_lse = reference.merge_states(torch.stack([v, other]).flatten(1, -3), torch.stack([s, s_other])
                                              .flatten(1, -2))
    v_ptr = v.data_ptr()
    assert leanattn.merge_state_in_place(v, s, other, s_other) is None
    assert v.data_ptr() == v_ptr and torch.equal(v, want_out) and torch.equal(s, want_lse)
    assert_rel_close("merge_state_in_place", v.flatten(0, -3), ref_out, TOLERANCE[dtype])
    assert_lse_close("merge_state_in_place", s.flatten(0, -2), ref_lse, LSE_ATOL)


@pytest.mark.parametrize("config", [(0, 1, 1), (0, 4, 4), (0, 8, 2)], ids=str)
def test_merge_state_in_place_mask(config, monkeypatch):
    # rows masked out are neither read nor written: they keep (v, s) bit for bit, -0.0 and NaN included (the fold
    # starts from +0.0, so a merged -0.0 would come back as +0.0); the others merge, under each launch config (a
    # program's rows spread over masked and unmasked entries); a mask of two dimensions
    from leanattn.merges import states
    monkeypatch.setattr(states, "LIST_CONFIGS", (config,))
    v, s = torch.randn(2, 3, 5, 40, dtype=torch.float16), torch.randn(2, 3, 5) * 4
    other, s_other = torch.randn(2, 3, 5, 40, dtype=torch.float16), torch.randn(2, 3, 5) * 4
    v[0, 1, :, ::2] = -0.0
    v[1, 0, 2] = float("nan")
    s[1, 2, 1] = float("-inf")
    mask = torch.tensor([[True, False, True], [False, False, True]])
    want_out, want_lse = leanattn.merge_state(v, s, other, s_other)
    v0, s0 = v.clone(), s.clone()
    leanattn.merge_state_in_place(v, s, other, s_other, mask=mask)
    assert torch.equal(v[~mask].view(torch.int16), v0[~mask].view(torch.int16))
    assert torch.equal(s[~mask].view(torch.int32), s0[~mask].view(torch.int32))
    assert torch.equal(v[mask], want_out[mask]) and torch.equal(s[mask], want_lse[mask])
    v1, s1 = v0.clone(), s0.clone()
    torch.compile(leanattn.merge_state_in_place, fullgraph=True)(v1, s1, other, s_other, mask)
    assert torch.equal(v1.view(torch.int16), v.view(torch.int16)) and torch.equal(s1, s)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter multiplies the NaNs it drops
@pytest.mark.parametrize("config", [(0, 1, 1), (0, 4, 4), (0, 8, 2)], ids=str)
@pytest.mark.parametrize("S", [1, 2, 4])
@pytest.mark.parametrize("D", [3, 160])
@pytest.mark.parametrize("sink_dtype", [None, torch.float16, torch.float64], ids=str)
def test_state_list_odd_heads_and_sinks(config, S, D, sink_dtype, monkeypatch):
    # each launch config against float64 with head dims that are not powers of two (masked columns), strided
    # states, NaN in an empty state, a row empty in every state, a partial last program (15 rows of 3 heads), and
    # sinks of each dtype: +inf taken as 2e38, -inf no sink
    from leanattn.merges import states
    if S == 1 and sink_dtype is None:
        pytest.skip("one state without sinks is returned as it is")
    torch.manual_seed(D + S)
    monkeypatch.setattr(states, "LIST_CONFIGS", (config,))
    outs = [torch.randn(5, 3, 2 * D, dtype=torch.float16)[..., ::2] for _ in range(S)]
    lses = [torch.randn(5, 3) * 6 for _ in range(S)]
    for ls in lses:
        ls[-1, -1] = float("-inf")
    lses[-1][1, 1] = float("-inf")
    outs[-1][1, 1] = float("nan")
    sinks = None if sink_dtype is None else torch.tensor([float("inf"), float("-inf"), 0.7]).to(sink_dtype)
    out, lse = states.merge_state_list(outs, lses, sinks)
    ref_out, ref_lse = reference_with_sinks(torch.stack(outs), torch.stack(lses), sinks)
    assert not out.isnan().any() and not lse.isnan().any()
    assert torch.allclose(out.double(), ref_out, rtol=2e-3, atol=2e-3)
    assert torch.allclose(lse.double(), ref_lse, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("S", [2, 5])
def test_state_list_compiled_with_sinks_equals_eager(S):
    # compiled, two to four states go through the custom op around the eager launch and more through the stacked
    # merge with the sinks folded in: the output is rounded once either way, as eagerly (equal bit for bit)
    from leanattn.merges.states import merge_state_list
    outs = [torch.randn(8, 4, 32, dtype=torch.float16) for _ in range(S)]
    lses = [torch.randn(8, 4) * 3 for _ in range(S)]
    sinks = torch.randn(4)
    f = lambda o, ls, sk: merge_state_list(o, ls, sk)  # noqa: E731
    eager, compiled = f(outs, lses, sinks), torch.compile(f, fullgraph=True)(outs, lses, sinks)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    ref = reference_with_sinks(torch.stack(outs), torch.stack(lses), sinks)[0]
    assert_rel_close("sinks after the states", eager[0], ref.to(eager[0].dtype), TOLERANCE[torch.float16])
    # rows of no column: only the LSEs merge (the sink included)
    out, lse = merge_state_list([o[..., :0] for o in outs], lses, sinks)
    # (float32 LSEs near 0 differ from logsumexp's by a few 1e-8: an absolute tolerance, as the other LSE checks)
    ref_lse = torch.logsumexp(torch.cat([torch.stack(lses), sinks.expand(1, 8, 4)]), 0)
    assert out.shape == (8, 4, 0) and torch.allclose(lse, ref_lse, rtol=1e-6, atol=1e-5)


def reference_with_sinks(outs, lses, sinks=None):
    """float64 ``reference.merge_states`` of the states ``(S, ..., H, D)``, ``(S, ..., H)`` and, given, the sinks
    ``(H,)`` as one more state ``(0, sink)`` each, bounded as the kernels take them (magnitudes past 2e38 at 2e38,
    -inf no sink)."""
    if sinks is not None:
        sk = sinks.double()
        sk = torch.where(sk == float("-inf"), sk, sk.clamp(-2e38, 2e38))
        outs = torch.cat([outs, torch.zeros_like(outs[:1])])
        lses = torch.cat([lses, sk.expand(1, *lses.shape[1:])])
    return reference.merge_states(outs, lses)


def test_merge_state_in_place_compiles():
    # torch.compile(fullgraph=True) sees the mutating custom op; no row is a no-op
    v, s = torch.randn(3, 2, 64), torch.randn(3, 2)
    other, s_other = torch.randn(3, 2, 64), torch.randn(3, 2)
    want_out, want_lse = leanattn.merge_state(v, s, other, s_other)
    torch.compile(leanattn.merge_state_in_place, fullgraph=True)(v, s, other, s_other)
    assert torch.equal(v, want_out) and torch.equal(s, want_lse)
    empty = torch.randn(0, 2, 64)
    leanattn.merge_state_in_place(empty, torch.randn(0, 2), empty.clone(), torch.randn(0, 2))
    torch.library.opcheck(torch.ops.leanattn.merge_state_in_place, (v.clone(), s.clone(), other, s_other))
    torch.library.opcheck(torch.ops.leanattn.merge_state_in_place, (v.clone(), s.clone(), other, s_other,
                                                                     torch.tensor([True, False, True])))
    torch.library.opcheck(torch.ops.leanattn.merge_state_list, ([v, other], [s, s_other], torch.randn(2)))
    torch.library.opcheck(torch.ops.leanattn.merge_states, (torch.stack([v, other]), torch.stack([s, s_other]),
                                                            torch.randn(2)))


def test_merge_state_in_place_errors():
    o, ls = torch.randn(2, 3, 8), torch.randn(2, 3)
    cases = [((o.tolist(), ls, o, ls), TypeError, "v: expected a torch.Tensor"),
             ((o, ls, o.half(), ls), TypeError, "v_other: expected dtype torch.float32 \\(as v\\)"),
             ((o, ls, o, ls[:, :2]), ValueError, "s_other: expected shape \\(2, 3\\) \\(v.shape\\[:-1\\]\\)"),
             ((o.transpose(0, 1), ls.t(), o.transpose(0, 1), ls.t()), ValueError, "v: expected a contiguous tensor"),
             ((o, ls.t().contiguous().t(), o, ls), ValueError, "s: expected a contiguous tensor")]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            leanattn.merge_state_in_place(*args)
    for mask, err, msg in ((torch.ones(2), TypeError, "mask: expected dtype torch.bool"),
                           (torch.ones(3, dtype=torch.bool), ValueError, "mask: expected shape \\(2,\\)"),
                           ([True, False], TypeError, "mask: expected a torch.Tensor"),
                           (torch.ones(2, dtype=torch.bool, device="meta"), ValueError,
                            "mask: expected device cpu \\(as v\\)")):
        with pytest.raises(err, match=msg):
            leanattn.merge_state_in_place(o, ls, o, ls, mask=mask)
