"""GPU-only decode tests: bf16 at realistic sizes, determinism, CUDA graphs, torch.compile.

Skipped without CUDA. Run on the device machine whenever a kernel changes.
"""
import pytest
import torch

import leanattn
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, paged_kv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (32, 8, 128), (32, 1, 128), (16, 8, 256), (32, 32, 64), (64, 1, 64)])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_decode_ragged_large(dtype, hq, hkv, d, schedule):
    lens = [20000, 0, 1, 4097, 333, 12345]
    B, N = len(lens), max(lens)
    q = torch.randn(B, hq, d, dtype=dtype, device="cuda")
    k = torch.randn(B, N, hkv, d, dtype=dtype, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out, lse = leanattn.decode(q, k, v, sl, return_lse=True, schedule=schedule)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("out", out, ref, TOLERANCE[dtype])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    assert torch.all(out[1] == 0)


@pytest.mark.parametrize("merge", ["", "1,3", "1,1", "2,1", "4,2"])
@pytest.mark.parametrize("hq,hkv", [(32, 8), (32, 32), (24, 8)])
def test_decode_merge_tiles_large(monkeypatch, merge, hq, hkv):
    # one long sequence over the whole GPU: ~33 pieces a head for 8 kv heads, merged several
    # pieces a step (the default and the sweep's overrides), deterministic at each setting
    from leanattn.ops import decode as dec
    if merge:
        monkeypatch.setenv("LEANATTN_MERGE", merge)
    dec._PLANS.clear()
    try:
        lens = [32768, 5000]
        q = torch.randn(2, hq, 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(2, max(lens), hkv, 128, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True)
        ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
        assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
        assert torch.equal(leanattn.decode(q, k, v, sl), out)
    finally:
        dec._PLANS.clear()


@pytest.mark.parametrize("page", [1, 16, 64, 256])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_decode_paged_large(page, schedule):
    lens = [9000, 3, 0, 2049]
    q = torch.randn(4, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(4, max(lens), 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    kp, vp, bt = paged_kv(k, v, lens, page, spare_pages=1)
    out = leanattn.decode(q, kp, vp, sl, bt, schedule=schedule)
    ref, _ = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])


def test_decode_transposed_cache():
    q = torch.randn(2, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2, 8, 5000, 128, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
    v = torch.randn(2, 8, 5000, 128, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
    out = leanattn.decode(q, k, v)
    ref, _ = leanattn.reference.decode(q, k, v)
    assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_decode_launcher_alignment(schedule):
    # after its first launch a plan calls the compiled kernel directly (runtime.Launcher); q or the
    # lengths off a 16-byte boundary (same plan: same shapes and strides) must go back through the JIT
    from leanattn.ops import decode as dec
    lens = [3000, 17, 0, 1025]
    B, hq, hkv, d = len(lens), 32, 8, 128
    qbuf = torch.randn(B * hq * d + 8, dtype=torch.bfloat16, device="cuda")
    q_al, q_off = qbuf[:B * hq * d].view(B, hq, d), qbuf[1:1 + B * hq * d].view(B, hq, d)
    k = torch.randn(B, max(lens), hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sbuf = torch.tensor([0] + lens, dtype=torch.int32, device="cuda")
    s_al, s_off = sbuf[1:].clone(), sbuf[1:]
    assert q_off.data_ptr() % 16 and s_off.data_ptr() % 16
    dec._PLANS.clear()
    for q, sl in [(q_al, s_al), (q_al, s_al), (q_off, s_al), (q_al, s_off), (q_off, s_off), (q_al, s_al)]:
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True, schedule=schedule)
        ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
        assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
    (plan,) = dec._PLANS.values()
    # the lean plan's launches: its in-kernel-merge launcher (B=4 never merges in a second launch)
    launcher = plan.launch.in_kernel if schedule == "lean" else plan.launch
    assert launcher.runner is not None and launcher.raw is not None  # the driver's launcher, no Triton runner

    class Counting:  # the JIT kernel, counting the launches that go through it
        def __init__(self, kernel):
            self.kernel, self.params, self.jit = kernel, kernel.params, 0

        def __getitem__(self, grid):
            self.jit += 1
            return self.kernel[grid]
    launcher.kernel = spy = Counting(launcher.kernel)
    for q in (q_al, q_off, q_al, q_al):
        leanattn.decode(q, k, v, s_al, schedule=schedule)
    assert spy.jit == 1  # only the misaligned q


def test_decode_launch_hook_takes_tritons_runner():
    # a registered Triton launch hook (a profiler's) sees every launch: the launcher leaves the driver's
    # launcher for Triton's runner while one is registered
    import triton
    from leanattn import runtime
    if not hasattr(getattr(triton.knobs.runtime, "launch_enter_hook", None), "add"):
        pytest.skip("this Triton keeps launch hooks as plain attributes")
    q = torch.randn(2, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2, 3000, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([3000, 17], dtype=torch.int32, device="cuda")
    ref, _ = leanattn.reference.decode(q, k, v, sl)
    leanattn.decode(q, k, v, sl)
    seen = []

    def hook(metadata):
        seen.append(metadata.get()["name"] if hasattr(metadata, "get") else metadata)
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert runtime._launch_hooked()
        out = leanattn.decode(q, k, v, sl)
        torch.cuda.synchronize()
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) == 1
    assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])


def test_decode_merge_launch_capped_at_d64(monkeypatch):
    # D=64, one sequence, merged in a second launch over the default grid: the variant that merges apart is
    # capped to the in-kernel variant's programs per SM (4 on an H100/H200: 128 registers) and stays exact
    from leanattn import runtime
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", "1")
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")  # the persistent kernel (one sequence runs even pieces)
    q = torch.randn(1, 32, 64, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, 65536, 32, 64, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([60000], dtype=torch.int32, device="cuda")
    dec._PLANS.clear()
    try:
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True)
        ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
        assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
        (plan,) = dec._PLANS.values()
        per_sm = -(-plan.grid[0] // runtime.num_sms(q.device))
        assert plan.launch.apart.meta.get("maxnreg") == runtime.register_cap(q.device, per_sm, plan.meta["num_warps"])
    finally:
        dec._PLANS.clear()


@pytest.mark.parametrize("schedule,hkv,d", [("lean", 8, 128), ("lean", 32, 128), ("lean", 8, 256), ("split", 8, 128)])
def test_decode_merge_launch_pdl_bitwise(monkeypatch, schedule, hkv, d):
    # the merge launch as a programmatic dependent launch (sm_90 and later) waits for the decode launch's
    # writes: eager and from a graph replayed with new lengths, it equals the merge launch without PDL bit
    # for bit (the same pieces or splits folded in the same order)
    from leanattn import runtime
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", "1")
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")  # the persistent kernel (one sequence runs even pieces)
    N = 40000
    q = torch.randn(1, 32, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, N, hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([N], dtype=torch.int32, device="cuda")
    runs = {}
    for pdl in ("0", "1"):
        monkeypatch.setenv("LEANATTN_PDL", pdl)
        dec._PLANS.clear()
        sl.fill_(N)
        eager = leanattn.decode(q, k, v, sl, return_lse=True, schedule=schedule)
        (plan,) = dec._PLANS.values()
        expect = pdl == "1" and torch.cuda.get_device_capability()[0] >= 9
        first, merge = (plan.launch.apart, plan.launch.merge) if schedule == "lean" else (plan.launch, plan.launch_merge)
        assert first.meta["PDL"] is expect and merge.meta.get("launch_pdl", False) is expect
        assert runtime.dependent_launch(q.device) is expect
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out, lse = leanattn.decode(q, k, v, sl, return_lse=True, schedule=schedule)
        replays = []
        for n in (N, 1, 0, 12345, 777):
            sl.fill_(n)
            g.replay()
            torch.cuda.synchronize()
            replays.append((out.clone(), lse.clone()))
        runs[pdl] = (eager, replays)
        del g
    ref, ref_lse = leanattn.reference.decode(q, k, v, torch.tensor([N], dtype=torch.int32, device="cuda"))
    assert_rel_close("out", runs["1"][0][0], ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("lse", runs["1"][0][1], ref_lse, 1e-2)
    for (o0, l0), (o1, l1) in zip([runs["0"][0]] + runs["0"][1], [runs["1"][0]] + runs["1"][1]):
        assert torch.equal(o0, o1) and torch.equal(l0, l1)
    dec._PLANS.clear()


@pytest.mark.parametrize("merge", ["0", "1"], ids=["in-kernel", "launch"])
@pytest.mark.parametrize("d", [64, 128])
def test_decode_across_rows_bitwise(monkeypatch, merge, d):
    # programs ordered across rows (the default at D=64) run the same cut as one row's programs side by side:
    # the same bits, the merge in-kernel or in a (dependent) second launch, and close to the reference
    from leanattn.ops import decode as dec
    monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
    monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")  # the persistent kernel (one sequence runs even pieces)
    q = torch.randn(1, 32, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, 65536, 32, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([65536], dtype=torch.int32, device="cuda")
    outs = []
    for order in ("0", "1"):
        monkeypatch.setenv("LEANATTN_ACROSS_ROWS", order)
        dec._PLANS.clear()
        outs.append(leanattn.decode(q, k, v, sl, return_lse=True))
        (plan,) = dec._PLANS.values()
        assert plan.meta["ACROSS_ROWS"] is (order == "1")
    dec._PLANS.clear()
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("out", outs[1][0], ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("lse", outs[1][1], ref_lse, 1e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_decode_tensors_off_the_current_device(schedule):
    # Triton launches on the current device: the op makes the tensors' device current for its launches
    lens = [5000, 3]
    q = torch.randn(2, 32, 128, dtype=torch.bfloat16, device="cuda:1")
    k = torch.randn(2, max(lens), 8, 128, dtype=torch.bfloat16, device="cuda:1")
    v = torch.randn_like(k)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda:1")
    with torch.cuda.device(0):
        for _ in range(2):  # the JIT launch, then the direct one
            out = leanattn.decode(q, k, v, sl, schedule=schedule)
            assert torch.cuda.current_device() == 0
    ref, _ = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
    # the KV append's launch too, with rotary
    kn = torch.randn(2, 1, 8, 128, dtype=torch.bfloat16, device="cuda:1")
    cos, sin = torch.randn(2, 6000, 64, device="cuda:1")
    with torch.cuda.device(0):
        leanattn.decode(q, k, v, sl - 1, k=kn, v=kn, rotary_cos=cos, rotary_sin=sin, schedule=schedule)
        torch.cuda.synchronize(1)
    pos = (sl - 1).long()[:, None]
    want = leanattn.reference.rotary(kn, cos, sin, pos)
    assert_rel_close("appended", k[torch.arange(2), pos[:, 0]].double()[:, None], want, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("merge", ["", "0", "1"], ids=["default", "in-kernel", "launch"])
@pytest.mark.parametrize("lens", [[65536, 1000, 30000, 7], [50000]], ids=["B4", "B1"])
def test_decode_deterministic_20_runs(monkeypatch, lens, merge):
    if merge:  # the persistent kernel's merges (by default one sequence runs even pieces)
        monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
        monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")
    B = len(lens)
    q = torch.randn(B, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, max(lens), 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    first, first_lse = leanattn.decode(q, k, v, sl, return_lse=True)
    ref, _ = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("out", first, ref, TOLERANCE[torch.bfloat16])
    for _ in range(20):
        o, l = leanattn.decode(q, k, v, sl, return_lse=True)
        assert torch.equal(o, first) and torch.equal(l, first_lse)


@pytest.mark.parametrize("merge", ["", "0", "1"], ids=["default", "in-kernel", "launch"])
@pytest.mark.parametrize("B", [3, 1])
def test_decode_cuda_graph_new_lengths(monkeypatch, B, merge):
    # with one sequence the persistent kernel merges in a second launch when captured (ops/stream_k_launch.py);
    # by default one sequence runs even pieces on the split kernel ("" at B=1)
    if merge:
        monkeypatch.setenv("LEANATTN_DECODE_MERGE", merge)
        monkeypatch.setenv("LEANATTN_DECODE_EVEN", "0")
    N = 40000
    q = torch.randn(B, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, N, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([N, 10, 500][:B], dtype=torch.int32, device="cuda")
    leanattn.decode(q, k, v, sl)  # compile and allocate the workspace outside capture
    torch.cuda.synchronize()
    from leanattn.ops import decode as dec
    plan = list(dec._PLANS.values())[-1]
    merges = []
    even = plan.schedule == "split"  # one sequence whose cut at capacity is even pieces a row
    if even or plan.launch.mode != 0:  # count the merge launches captured
        real_merge = plan.launch_merge if even else plan.launch.merge

        def counted(*a):
            merges.append(1)
            return real_merge(*a)
        if even:
            plan.launch_merge = counted
        else:
            plan.launch.merge = counted
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.decode(q, k, v, sl)
    # one sequence: its rows merged by a second launch in the graph (the persistent kernel's, forced or by
    # default, or the even pieces'); B=3 or forced off: none
    assert len(merges) == (1 if merge == "1" or (merge == "" and B == 1) else 0)
    assert plan is list(dec._PLANS.values())[-1]  # the capture reused the warmed plan
    for lens in ([N, 10, 500], [1, 0, N], [12345, 23456, 34567], [0, 0, 0]):
        lens = lens[:B]
        sl.copy_(torch.tensor(lens, dtype=torch.int32))
        q.normal_()
        g.replay()
        torch.cuda.synchronize()
        ref, _ = leanattn.reference.decode(q, k, v, sl)
        assert_rel_close(f"graph replay {lens}", out, ref, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("lengths", ["given", "none"])
@pytest.mark.parametrize("hq,hkv,d,n", [(32, 8, 128, 32768), (32, 32, 128, 16384), (32, 32, 64, 65536),
                                        (16, 8, 256, 32768), (32, 8, 128, 8192)])
def test_decode_even_pieces(hq, hkv, d, n, lengths):
    # rows of equal length (one sequence; or no cache_seqlens) whose cut at capacity is k pieces a row run as
    # even pieces on the split kernel: exact, the same bits from a graph as eagerly, 20 runs alike, and a graph
    # replayed with new lengths (the pieces recomputed on the device, some empty) stays exact
    from leanattn.ops import decode as dec
    B = 1 if lengths == "given" else 4
    q = torch.randn(B, hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, n, hkv, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.full((B,), n, dtype=torch.int32, device="cuda") if lengths == "given" else None
    dec._PLANS.clear()
    try:
        out, lse = leanattn.decode(q, k, v, sl, return_lse=True)
        (plan,) = dec._PLANS.values()
        if plan.schedule != "split":  # on 132 SMs (H100, H200) three of these cases are cut unevenly
            pytest.skip(f"on {torch.cuda.get_device_name()} the cut at capacity is not even pieces a row")
        assert plan.meta["EVEN"] and plan.splits > 1
        ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
        assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("lse", lse, ref_lse, 1e-2)
        for _ in range(20):
            o, l = leanattn.decode(q, k, v, sl, return_lse=True)
            assert torch.equal(o, out) and torch.equal(l, lse)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            go, gl = leanattn.decode(q, k, v, sl, return_lse=True)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(go, out) and torch.equal(gl, lse)
        if sl is None:
            return
        for m in (1, 0, 63, 64, 65, n // 3, n - 1):
            sl.fill_(m)
            q.normal_()
            g.replay()
            torch.cuda.synchronize()
            ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
            assert_rel_close(f"graph replay {m}", go, ref, TOLERANCE[torch.bfloat16])
            assert_lse_close(f"graph replay {m} lse", gl, ref_lse, 1e-2)
    finally:
        dec._PLANS.clear()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_decode_torch_compile(mode):
    torch._dynamo.reset()
    q = torch.randn(2, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2, 3000, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([3000, 1234], dtype=torch.int32, device="cuda")

    def f(q, k, v, sl):
        o, lse = leanattn.decode(q * 1.0, k, v, sl, return_lse=True)
        return o.float() * 2.0, lse

    cf = torch.compile(f, fullgraph=True, mode=mode)
    for _ in range(3):
        o, lse = cf(q, k, v, sl)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("compiled", o / 2.0, ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("compiled lse", lse, ref_lse, 1e-2)


def test_compiled_graphs_make_the_first_plan(monkeypatch):
    # a decode whose plan and workspaces are first made inside torch.compile's CUDA-graph warm-up (a compiled
    # generate's first step): they must not be left alive in the graph pool (runtime.kept allocates on a thread of
    # its own), which the graph trees refuse when they record
    from leanattn import runtime
    from leanattn.ops import decode as dec
    monkeypatch.setattr(runtime, "_WORKSPACES", {})
    dec._PLANS.clear()
    torch._dynamo.reset()
    q = torch.randn(3, 32, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(3, 2000, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([2000, 7, 1500], dtype=torch.int32, device="cuda")
    pads = torch.tensor([0, 3, 700], dtype=torch.int32, device="cuda")

    def f(q, k, v, sl):
        o, lse = leanattn.decode(q * 1.0, k, v, sl, return_lse=True, cache_leftpad=pads)
        return o.float(), lse

    try:
        cf = torch.compile(f, fullgraph=True, mode="reduce-overhead")
        for _ in range(3):
            o, lse = cf(q, k, v, sl)
        ref, ref_lse = leanattn.reference.decode(q, k, v, sl, cache_leftpad=pads)
        assert_rel_close("compiled first", o, ref, TOLERANCE[torch.bfloat16])
        assert_lse_close("compiled first lse", lse, ref_lse, 1e-2)
    finally:
        dec._PLANS.clear()
        torch._dynamo.reset()


@pytest.mark.parametrize("S", [2, 5, 12], ids=["two", "unrolled", "blocked"])
def test_merge_states_gpu(S):
    # an empty state, and rows with a state of lse = +inf: the reference's (0, +inf), no NaN; merge_state of two
    outs = torch.randn(S, 7, 32, 128, dtype=torch.bfloat16, device="cuda")
    lses = torch.randn(S, 7, 32, device="cuda") * 10
    lses[S // 2] = float("-inf")
    lses[S - 1, 3, 5] = lses[0, 6, 0] = float("inf")
    out, lse = leanattn.merge_states(outs, lses)
    ref, ref_lse = leanattn.reference.merge_states(outs, lses)
    assert_rel_close("merge", out, ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("merge lse", lse, ref_lse, 1e-4)
    assert lse[3, 5] == lse[6, 0] == float("inf") and not out[3, 5].any() and not out[6, 0].any()
    two, two_lse = leanattn.merge_state(outs[0], lses[0], outs[1], lses[1])
    ref, ref_lse = leanattn.reference.merge_states(outs[:2], lses[:2])
    assert_rel_close("merge_state", two, ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("merge_state lse", two_lse, ref_lse, 1e-4)


@pytest.mark.parametrize("rows,d", [(1, 64), (7 * 32, 128), (300 * 32, 128), (4100, 16)], ids=str)
def test_merge_state_in_place_gpu(rows, d):
    # written over (v, s), bit for bit merge_state's result, at one row (strides of 1 passed as ints), one row a
    # program, 4 rows of 4 warps, and D=16 (a layout that spreads a row's LSE over threads): the barrier before
    # the stores; 20 merges in a row, each into the last one's result
    v = torch.randn(rows, d, dtype=torch.bfloat16, device="cuda").view(-1, 1, d)
    s = torch.randn(rows, 1, device="cuda") * 4
    s[:3] = float("-inf")
    for _ in range(20):
        other, s_other = torch.randn_like(v), torch.randn_like(s) * 4
        want_out, want_lse = leanattn.merge_state(v, s, other, s_other)
        leanattn.merge_state_in_place(v, s, other, s_other)
        assert torch.equal(v, want_out) and torch.equal(s, want_lse)
    # a row mask: masked rows keep their bits, the others merge
    mask = torch.arange(rows, device="cuda") % 3 != 1
    other, s_other = torch.randn_like(v), torch.randn_like(s) * 4
    want_out, want_lse = leanattn.merge_state(v, s, other, s_other)
    v0, s0 = v.clone(), s.clone()
    leanattn.merge_state_in_place(v, s, other, s_other, mask=mask)
    assert torch.equal(v[~mask].view(torch.int16), v0[~mask].view(torch.int16)) and torch.equal(s[~mask], s0[~mask])
    assert torch.equal(v[mask], want_out[mask]) and torch.equal(s[mask], want_lse[mask])


def test_opcheck_gpu():
    q = torch.randn(2, 8, 64, dtype=torch.float16, device="cuda")
    k = torch.randn(2, 100, 2, 64, dtype=torch.float16, device="cuda")
    v = torch.randn_like(k)
    sl = torch.tensor([100, 3], dtype=torch.int32, device="cuda")
    torch.library.opcheck(torch.ops.leanattn.decode.default, (q, k, v, sl, None, 0.125, "lean", 0, 0, 0, 1.0, 1.0))


@pytest.mark.parametrize("load", ["0", "1", "2"])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (32, 32, 128), (16, 8, 256), (32, 32, 64)])
@pytest.mark.parametrize("schedule", ["lean", "split"])
def test_decode_load_paths(decode_load, load, hq, hkv, d, schedule):
    # pointers, block pointers and TMA descriptors agree with the reference; the cache tail past
    # each length holds NaN, which a zero-filled tile must never let through (p = 0 times NaN)
    from leanattn.ops import decode as dec
    decode_load(load)
    lens = [9000, 0, 1, 129, 4097]
    B, N = len(lens), max(lens) + 64
    q = torch.randn(B, hq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, hkv, N, d, dtype=torch.bfloat16, device="cuda").transpose(1, 2)  # (B, N, H, D) view
    v = torch.randn(B, N, hkv, d, dtype=torch.bfloat16, device="cuda")
    for b, n in enumerate(lens):
        k[b, n:] = float("nan")
        v[b, n:] = float("nan")
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out, lse = leanattn.decode(q, k, v, sl, return_lse=True, schedule=schedule)
    ref, ref_lse = leanattn.reference.decode(q, k, v, sl)
    assert_rel_close("out", out, ref, TOLERANCE[torch.bfloat16])
    assert_lse_close("lse", lse, ref_lse, 1e-2)
    plan = next(iter(dec._PLANS.values()))
    assert plan.meta["LOAD"] == int(load)
    # a base off the 16-byte grid falls back to pointers (TMA needs aligned row bases)
    k_off = torch.randn(B * N * hkv * d + 1, dtype=torch.bfloat16, device="cuda")[1:].view(B, N, hkv, d)
    k_off.copy_(k)
    out2 = leanattn.decode(q, k_off, v, sl, schedule=schedule)
    assert_rel_close("out", out2, ref, TOLERANCE[torch.bfloat16])
    plan2 = list(dec._PLANS.values())[-1]
    assert plan2.meta["LOAD"] == (0 if load == "2" else int(load))
    dec._PLANS.clear()


def test_validate_on_cuda():
    """CUDA values are checked only when asked (a device sync): lengths past capacity, page ids past
    the pool, prefix ids past the prompts."""
    q = torch.randn(2, 4, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(2, 64, 2, 128, dtype=torch.bfloat16, device="cuda")
    lens = torch.tensor([65, 3], dtype=torch.int32, device="cuda")
    leanattn.decode(q, k, k, lens)  # not checked by default: no sync
    with pytest.raises(ValueError, match="cache_seqlens: expected lengths <= 64"):
        leanattn.decode(q, k, k, lens, validate=True)
    pages = torch.randn(4, 16, 2, 128, dtype=torch.bfloat16, device="cuda")
    table = torch.tensor([[0, 1], [2, 9]], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="block_table"):
        leanattn.decode(q, pages, pages, torch.tensor([20, 20], dtype=torch.int32, device="cuda"), table,
                        validate=True)
    pk = torch.randn(1, 32, 2, 128, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="prefix_ids"):
        leanattn.bifurcated_decode(q, pk, pk, k, k, lens.clamp(max=64),
                                   prefix_lens=torch.tensor([32], dtype=torch.int32, device="cuda"),
                                   prefix_ids=torch.tensor([0, 1], dtype=torch.int32, device="cuda"), validate=True)
