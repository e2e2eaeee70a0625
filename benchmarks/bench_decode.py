"""Decode attention benchmark: leanattn (lean and split schedules) against the peers in the image.

Suite (bf16, from the LeanAttention issue): MHA 32/32 over 4k..512k; GQA 32/8 over batch x length;
ragged batches; paged caches (page 16 and 64, pages in random order); head dims 64 and 256.

For each case: check every method against the float64 reference, then time it with
``triton.testing.do_bench`` (median, L2 flushed). Peers get the best form they support: one call
on the padded cache when all lengths are equal, otherwise one call per sequence (SDPA) or a
length mask (flex_attention, cuDNN with a boolean mask). Bytes are the real KV bytes. Every method
is also timed after an L2 flush that reads instead of writes (``common.bench(flush="read")``:
do_bench's zeroing flush makes every call write back an L2 of dirty lines), against a read ceiling
timed the same way: the 'read flush' columns.

    python benchmarks/bench_decode.py [--quick] [--cases mha,gqa,...] [--out DIR] [--sweep]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.testing import paged_kv, rel_err  # noqa: E402

K = 1024


def suite():
    cases = []
    for n in (4, 16, 64, 128, 256, 512):
        cases.append(dict(name=f"mha B=1 {n}k", group="mha", lens=[n * K], hq=32, hkv=32, d=128))
    for b, n in ((1, 32), (1, 128), (4, 32), (16, 8), (64, 4), (8, 128)):
        cases.append(dict(name=f"gqa B={b} {n}k", group="gqa", lens=[n * K] * b, hq=32, hkv=8, d=128))
    tail = [128 * K, 8 * K] + [4 * K] * 2 + [2 * K] * 4 + [1 * K] * 8
    cases.append(dict(name="ragged-tail B=16", group="ragged", lens=tail, hq=32, hkv=8, d=128))
    g = torch.Generator().manual_seed(0)
    uni = torch.randint(1 * K, 32 * K + 1, (32,), generator=g).tolist()
    cases.append(dict(name="ragged-uniform B=32", group="ragged", lens=uni, hq=32, hkv=8, d=128))
    for ps in (16, 64):
        cases.append(dict(name=f"paged{ps} gqa B=4 32k", group="paged", lens=[32 * K] * 4, hq=32, hkv=8, d=128,
                          page=ps))
        cases.append(dict(name=f"paged{ps} ragged-tail", group="paged", lens=tail, hq=32, hkv=8, d=128, page=ps))
    cases.append(dict(name="d64 mha B=1 64k", group="headdim", lens=[64 * K], hq=32, hkv=32, d=64))
    cases.append(dict(name="d256 16/8 B=1 32k", group="headdim", lens=[32 * K], hq=16, hkv=8, d=256))
    return cases


QUICK = {"mha B=1 4k", "mha B=1 64k", "gqa B=4 32k", "gqa B=64 4k", "ragged-tail B=16", "paged16 ragged-tail"}


def make_inputs(case, dtype=torch.bfloat16):
    lens = case["lens"]
    B, N = len(lens), max(lens)
    q = torch.randn(B, case["hq"], case["d"], dtype=dtype, device="cuda")
    k = torch.randn(B, N, case["hkv"], case["d"], dtype=dtype, device="cuda")
    v = torch.randn_like(k)
    seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    inp = dict(q=q, k=k, v=v, seqlens=seqlens)
    if "page" in case:
        kp, vp, bt = paged_kv(k, v, lens, case["page"])
        inp.update(k_pages=kp, v_pages=vp, block_table=bt)
    return inp


def kv_bytes(case, elt=2):
    return sum(case["lens"]) * case["hkv"] * case["d"] * 2 * elt + 2 * len(case["lens"]) * case["hq"] * case["d"] * elt


# ---------------------------------------------------------------------------------------------
# methods: each returns a zero-argument callable computing out (B, Hq, D), or raises if unsupported
# ---------------------------------------------------------------------------------------------
def ours(schedule):
    def make(case, inp):
        if "page" in case:
            args = (inp["q"], inp["k_pages"], inp["v_pages"], inp["seqlens"], inp["block_table"])
        else:
            args = (inp["q"], inp["k"], inp["v"], inp["seqlens"])
        return common.compiled_as_at_start(lambda: leanattn.decode(*args, schedule=schedule))
    return make


def ours_full_cache(case, inp):
    """Lean without ``cache_seqlens`` on a cache every sequence fills: the host then knows the cut and
    launches only the programs in use (``ops/decode.py``). Contiguous equal-length cases only."""
    if "page" in case or len(set(case["lens"])) > 1:
        raise RuntimeError("ragged or paged: the lengths must be passed")
    args = (inp["q"], inp["k"], inp["v"])
    return common.compiled_as_at_start(lambda: leanattn.decode(*args))


def sdpa(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, backend_name)
    F = torch.nn.functional

    def make(case, inp):
        q, k, v, lens = inp["q"], inp["k"], inp["v"], case["lens"]
        gqa = case["hq"] != case["hkv"]
        q4 = q.unsqueeze(2)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        if len(set(lens)) == 1:
            def fn():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q4, kt, vt, enable_gqa=gqa).squeeze(2)
            fn.form = "one call"
            return fn
        views = [(q4[b:b + 1], kt[b:b + 1, :, :n], vt[b:b + 1, :, :n]) for b, n in enumerate(lens)]

        def per_seq():
            with sdpa_kernel([backend]):
                return torch.cat([F.scaled_dot_product_attention(a, b_, c, enable_gqa=gqa) for a, b_, c in views]).squeeze(2)
        per_seq.form = "per sequence"
        return per_seq
    return make


def sdpa_masked(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, backend_name)
    F = torch.nn.functional

    def make(case, inp):
        q, k, v = inp["q"], inp["k"], inp["v"]
        if len(set(case["lens"])) == 1:
            raise RuntimeError("uniform lengths: the unmasked form applies")
        N = k.shape[1]
        mask = (torch.arange(N, device="cuda")[None, :] < inp["seqlens"][:, None])[:, None, None, :]
        gqa = case["hq"] != case["hkv"]

        def fn():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2),
                                                      attn_mask=mask, enable_gqa=gqa).squeeze(2)
        fn.form = "padded + mask"
        return fn
    return make


_FLEX = {}


def compiled_flex():
    """``flex_attention`` compiled once a process with ``dynamic=True`` (compiled per shape, it falls back to eager
    after 8 recompiles)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=True)
    return _FLEX["fn"]


def flex(case, inp):
    from torch.nn.attention.flex_attention import create_block_mask
    fa = compiled_flex()
    q, k, v, lens = inp["q"], inp["k"], inp["v"], inp["seqlens"]
    B, N = k.shape[0], k.shape[1]
    block_mask = None
    if len(set(case["lens"])) > 1:
        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx < lens[b]
        block_mask = create_block_mask(mask_mod, B, None, 1, N, device="cuda")
    gqa = case["hq"] != case["hkv"]
    q4, kt, vt = q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)

    def fn():
        return fa(q4, kt, vt, block_mask=block_mask, enable_gqa=gqa).squeeze(2)
    fn.form = "length mask" if block_mask is not None else "one call"
    return fn


def varlen(case, inp):
    """torch's varlen_attn (FlashAttention varlen): the packed real tokens, one call for any raggedness."""
    from torch.nn.attention.varlen import varlen_attn
    lens = case["lens"]
    B = len(lens)
    kp = torch.cat([inp["k"][b, :n] for b, n in enumerate(lens)])
    vp = torch.cat([inp["v"][b, :n] for b, n in enumerate(lens)])
    cu_k = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device="cuda")
    cu_q = torch.arange(B + 1, dtype=torch.int32, device="cuda")
    q = inp["q"]
    kw = {"enable_gqa": True} if case["hq"] != case["hkv"] else {}

    def fn():
        return varlen_attn(q, kp, vp, cu_q, cu_k, 1, max(lens), **kw)
    fn.form = "packed real tokens"
    return fn


METHODS = {
    "lean": ours("lean"),
    "split": ours("split"),
    "lean_full": ours_full_cache,
    "sdpa_flash": sdpa("FLASH_ATTENTION"),
    "sdpa_cudnn": sdpa("CUDNN_ATTENTION"),
    "sdpa_cudnn_mask": sdpa_masked("CUDNN_ATTENTION"),
    "flex": flex,
    "varlen": varlen,
}
PEERS = ["sdpa_flash", "sdpa_cudnn", "sdpa_cudnn_mask", "flex", "varlen"]


def graph_of(fn):
    """``fn`` captured in a CUDA graph (after warm-up on a side stream), or None if it cannot be."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        g.keep = fn  # the graph writes to tensors that fn's closure may hold: they must outlive its replays
        return g
    except Exception:
        torch.cuda.synchronize()
        return None


def probe_cases(names, want=None, **options):
    """For the suite's cases named in ``names`` (and in ``want``, when given), for probes that time variants
    side by side: ``(case, inp, ref, call)``, the inputs on the GPU, the float64 reference and a call of
    ``leanattn.decode`` over the contiguous caches with ``options``. The caller drops ``inp`` and ``call``
    before the next case allocates."""
    for case in suite():
        if case["name"] not in names or (want and case["name"] not in want):
            continue
        inp = make_inputs(case)
        q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
        ref, _ = leanattn.reference.decode(q, k, v, sl)
        yield case, inp, ref, lambda: leanattn.decode(q, k, v, sl, **options)
        del inp, q, k, v, sl
        torch.cuda.empty_cache()


def add_peers(fns, refs, peers, ref):
    """Each of ``peers`` (label -> call) that runs added to ``fns`` with ``ref`` as its reference in ``refs``; returns
    those that raised (label -> error): a backend that refuses a form is reported, not fatal."""
    skipped = {}
    for label, fn in peers.items():
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            skipped[label] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        fns[label], refs[label] = fn, ref
    return skipped


def run_case_variants(doc, argv, cases, measure, filename, probe, cases_of=None):
    """The loop of a benchmark over ``cases``, (suite case name, parameter) pairs: its command line
    (``common.probe_args``), the read ceiling, then ``measure(case, parameter, ceiling)`` for each pair whose case
    is asked for, all written by ``common.write_probe`` to ``filename`` with the timing and the ``probe`` line.
    ``cases_of``: the suite the names are of (default: this benchmark's)."""
    args, want = common.probe_args(doc, argv)
    torch.manual_seed(0)
    ceilings = common.read_bandwidth_gbs()
    ceiling = ceilings["read_ceiling"]
    by_name = {c["name"]: c for c in (cases_of or suite)()}
    out = []
    for name, param in cases:
        if want and name not in want:
            continue
        out.append(measure(by_name[name], param, ceiling))
        torch.cuda.empty_cache()
    return common.write_probe(args.out, filename, cases=out, timing=GRAPH_TIMING, read_ceiling_gbs=ceiling,
                              read_bandwidth=ceilings, probe=probe)


def read_flush_ms(run):
    """``run`` timed under the read flush, the median of 50 calls (``common.bench``), ms: the probes' timing."""
    return common.bench(run, flush="read", calls=50)


def run_read_flush_probe(doc, argv, names, measure, filename, **payload):
    """The loop of a probe held against the 85% bar: its command line (``common.probe_args``: ``--out``,
    ``--cases``), the read ceiling under the read flush, then for each of the suite's cases ``names`` the dict
    ``measure(case, inp, ref, call, bar)`` returns (``probe_cases``' arguments and the case's 85% bar in us, what
    takes 85% of that ceiling to read its KV bytes), with the case's name and bar, all written by
    ``common.write_probe`` to ``filename`` with ``payload``. Returns the path."""
    args, want = common.probe_args(doc, argv)
    torch.manual_seed(0)
    ceiling = common.read_bandwidth_gbs()["read_ceiling_clean_flush"]
    out = []
    for case, inp, ref, call in probe_cases(names, want):
        bar = kv_bytes(case) / (0.85 * ceiling) / 1e3
        out.append(dict(case=case["name"], **measure(case, inp, ref, call, bar), bar_us=bar))
        del inp, call  # probe_cases frees the case's inputs before the next one allocates
        torch.cuda.empty_cache()
    return common.write_probe(args.out, filename, read_ceiling_clean_flush=ceiling, cases=out, **payload)


def with_plans(fn, env=None, patches=()):
    """``fn`` (a call of ``leanattn.decode`` or ``bifurcated_decode``) through plan caches of its own, under the
    environment variables ``env`` and with the attributes ``patches`` (``(object, name, value)``) set while it
    runs, for probes that time variants of one op side by side: a plan reads them when it is made (by the check
    call, before capture) and is reused. The caches are ``run.plans``. For graph replays: the patching costs an
    eager call 10-450 us of host time (``mock.patch``)."""
    from unittest import mock

    from leanattn import runtime
    from leanattn.ops import bifurcated as bif_ops, decode as dec_ops
    plans = runtime.PlanCache(), runtime.PlanCache()

    def run():
        with contextlib.ExitStack() as stack:
            if env:  # patching os.environ copies and restores all of it: 150-450 us a call, a bound on eager timings
                stack.enter_context(mock.patch.dict(os.environ, env))
            stack.enter_context(mock.patch.object(dec_ops, "_PLANS", plans[0]))
            stack.enter_context(mock.patch.object(bif_ops, "_PLANS", plans[1]))
            for obj, name, value in patches:
                stack.enter_context(mock.patch.object(obj, name, value))
            return fn()
    run.plans = plans
    return run


def report_ratios(name, med, pairs):
    """Print a probe case's median times ``med`` (label -> us) and the ratios of the label ``pairs``."""
    line = f"{name:18s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
    line += "  | " + "  ".join(f"{a}/{b} {med[a] / med[b]:.3f}" for a, b in pairs)
    print(line, flush=True)


def report_best(name, med, base, peer="cuDNN"):
    """``report_ratios`` for a probe of variants against a baseline ``base`` and a ``peer``: the fastest
    variant (not the peer) against both, and the baseline against the peer. Returns the fastest variant."""
    best = min((n for n in med if n != peer), key=med.get)
    report_ratios(name, med, [(best, base), (base, peer), (best, peer)])
    return best


def interleaved_times(runs, rounds=3, time_ms=None):
    """Each of ``runs`` (label -> call) timed over ``rounds`` interleaved rounds (do_bench medians, L2 flushed; or
    ``time_ms(run)``, milliseconds): ``({label: [us per round]}, {label: median us})``."""
    time_ms = time_ms or (lambda run: common.bench(run, warmup=10, rep=40))
    us = {}
    for _ in range(rounds):
        for label, run in runs.items():
            us.setdefault(label, []).append(round(time_ms(run) * 1e3, 2))
    return us, {n: sorted(v)[len(v) // 2] for n, v in us.items()}


# what interleaved_graph_times' numbers are, for a probe's results file (common.write_probe's timing=)
GRAPH_TIMING = "CUDA-graph replays, do_bench medians (L2 flushed), 3 interleaved rounds, us"


def drop_failing(name, fns):
    """``fns`` (label -> call) without the calls that raise when called once, each reported: a peer that cannot
    run a case is skipped, not timed."""
    kept = {}
    for label, fn in fns.items():
        try:
            fn()
        except Exception as exc:  # (any failure of a peer's library)
            print(f"{name}: {label} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            continue
        kept[label] = fn
    return kept


def peer_summary(med, peers, ours):
    """``"  sdpa 12.3  flex 14.0 | best peer / lean 1.23x"``: the medians (us) of the ``peers`` timed in ``med`` and
    the best one's over ``med[ours]``; empty where none was timed."""
    timed = [p for p in peers if p in med]
    if not timed:
        return ""
    best = min(timed, key=med.get)
    return "  " + "  ".join(f"{p} {med[p]:.1f}" for p in timed) + f" | best peer / {ours} {med[best] / med[ours]:.2f}x"


def interleaved_graph_times(name, fns, ref, rounds=3, pick=None, time_ms=None):
    """Each of ``fns`` (label -> call) checked against ``ref`` (its output's rows ``pick`` where given; a dict:
    label -> its own reference), captured in a CUDA graph and its replays timed by ``interleaved_times``
    (``time_ms`` passed on). For probes that compare variants of one case side by side."""
    graphs = {}
    for label, fn in fns.items():
        out = fn()
        err = rel_err(out if pick is None else out[pick], ref[label] if isinstance(ref, dict) else ref)
        if err > 1e-2:
            raise RuntimeError(f"{name} {label}: relative error {err:.1e}")
        graphs[label] = graph_of(fn)
        if graphs[label] is None:
            raise RuntimeError(f"{name} {label}: could not be captured in a CUDA graph")
    return interleaved_times({label: g.replay for label, g in graphs.items()}, rounds, time_ms)


def plan_grids(fns):
    """The grids of the decode plans each of ``fns`` (``with_plans`` calls; others are skipped) has made."""
    return {n: [p.grid[0] for p in f.plans[0].values()] for n, f in fns.items() if hasattr(f, "plans")}


def run_case(case, ceiling, log, ceiling_clean=None):
    inp = make_inputs(case)
    ref, _ = leanattn.reference.decode(inp["q"], inp["k"], inp["v"], inp["seqlens"])
    nbytes = kv_bytes(case)
    row = dict(case=case["name"], group=case["group"], B=len(case["lens"]), hq=case["hq"], hkv=case["hkv"],
               d=case["d"], page=case.get("page"), tokens=sum(case["lens"]), kv_mb=nbytes / 1e6, results={})
    for name, make in METHODS.items():
        try:
            fn = make(case, inp)
            out = fn()
            torch.cuda.synchronize()
            err = rel_err(out, ref)
            if not err <= 2e-2:
                raise RuntimeError(f"wrong result: rel err {err:.2e}")
            # every method is timed as CUDA-graph replays (GPU time, no host overhead), falling back
            # to eager launches where capture fails; ours are also timed eagerly
            g = graph_of(fn)
            ms = common.bench(g.replay if g is not None else fn)
            r = dict(ms=ms, us=ms * 1e3, gbs=nbytes / ms / 1e6, err=err, form=getattr(fn, "form", ""),
                     timing="graph" if g is not None else "eager")
            # the same replays after a flush that leaves no dirty lines (common.bench): do_bench's own
            # flush costs every method a write-back of the L2 inside the timed call
            r["us_clean"] = common.bench(g.replay if g is not None else fn, flush="read") * 1e3
            if name in ("lean", "split"):
                r["us_eager"] = common.bench(fn) * 1e3
            if name == "lean":  # time it twice to know the noise
                r["us_repeat"] = common.bench(g.replay if g is not None else fn) * 1e3
            del g
            row["results"][name] = r
        except Exception as e:  # a peer that cannot run this case is recorded, not fatal
            row["results"][name] = dict(error=f"{type(e).__name__}: {str(e)[:160]}")
        log(f"  {case['name']:24s} {name:16s} " + (f"{row['results'][name]['us']:9.1f} us "
            f"{row['results'][name]['gbs']:7.0f} GB/s err {row['results'][name]['err']:.1e}"
            if "us" in row["results"][name] else row["results"][name]["error"]))
    peers = {p: row["results"][p]["us"] for p in PEERS if "us" in row["results"].get(p, {})}
    if peers:
        best = min(peers, key=peers.get)
        row["best_peer"], row["best_peer_us"] = best, peers[best]
    lean = row["results"].get("lean", {})
    if "us" in lean:
        row["lean_frac_ceiling"] = lean["gbs"] / ceiling
        if peers:
            row["speedup_vs_best_peer"] = row["best_peer_us"] / lean["us"]
        # the same under the clean flush: the best peer there, and lean against the clean-flush ceiling
        clean = {p: row["results"][p]["us_clean"] for p in peers}
        if clean:
            row["best_peer_clean"] = min(clean, key=clean.get)
            row["speedup_vs_best_peer_clean"] = clean[row["best_peer_clean"]] / lean["us_clean"]
        row["lean_frac_ceiling_clean"] = nbytes / lean["us_clean"] / 1e3 / (ceiling_clean or ceiling)
        if "us" in row["results"].get("split", {}):
            row["speedup_vs_split"] = row["results"]["split"]["us"] / lean["us"]
    # a plain streaming read of the same bytes, timed the same two ways: what any kernel that reads them once
    # takes at this size (launch and ramp included), so a miss of the ceiling bar reads against what is reachable
    read = common.stream_read_fn(nbytes)
    sr = {flush: common.time_graph(read, flush=flush) for flush in ("write", "read")}
    del read
    row["stream_read_us"], row["stream_read_us_clean"] = sr["write"], sr["read"]
    row["stream_read_frac_ceiling"] = nbytes / sr["write"] / 1e3 / ceiling
    row["stream_read_frac_ceiling_clean"] = nbytes / sr["read"] / 1e3 / (ceiling_clean or ceiling)
    if "us" in lean:
        row["lean_x_stream_read"] = lean["us"] / sr["write"]
        row["lean_x_stream_read_clean"] = lean["us_clean"] / sr["read"]
    log(f"  {case['name']:24s} {'stream read':16s} {sr['write']:9.1f} us, {sr['read']:.1f} us read flush")
    del inp, ref
    torch.cuda.empty_cache()
    return row


def table(rows, ceiling):
    header = ["case", "KV MB", "lean us", "lean GB/s", "% ceil", "lean eager us", "lean no-lengths us", "split us",
              "flash us", "cudnn us",
              "flex us", "varlen us", "best peer", "x best peer", "x split", "err",
              "lean us, read flush", "% ceil, read flush", "x best peer, read flush",
              "stream read us", "% ceil, stream read", "lean / stream read",
              "stream read us, read flush", "% ceil, stream read, read flush", "lean / stream read, read flush"]
    out = []
    for r in rows:
        res = r["results"]

        def us(n):
            x = res.get(n, {})
            return x["us"] if "us" in x else "-"
        cudnn = min([x for x in (us("sdpa_cudnn"), us("sdpa_cudnn_mask")) if x != "-"], default="-")
        lean = res.get("lean", {})
        out.append([r["case"], r["kv_mb"], us("lean"), lean.get("gbs", "-"),
                    100 * r.get("lean_frac_ceiling", float("nan")), lean.get("us_eager", "-"), us("lean_full"),
                    us("split"),
                    us("sdpa_flash"), cudnn, us("flex"), us("varlen"),
                    r.get("best_peer", "-"), r.get("speedup_vs_best_peer", "-"), r.get("speedup_vs_split", "-"),
                    lean.get("err", "-"), lean.get("us_clean", "-"),
                    100 * r.get("lean_frac_ceiling_clean", float("nan")), r.get("speedup_vs_best_peer_clean", "-"),
                    r.get("stream_read_us", "-"), 100 * r.get("stream_read_frac_ceiling", float("nan")),
                    r.get("lean_x_stream_read", "-"), r.get("stream_read_us_clean", "-"),
                    100 * r.get("stream_read_frac_ceiling_clean", float("nan")),
                    r.get("lean_x_stream_read_clean", "-")])
    return common.markdown_table(header, out)


def plot(rows, ceiling, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["case"] for r in rows]
    x = range(len(rows))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(10, 0.6 * len(rows)), 9), sharex=True)
    for name, color in (("lean", "C0"), ("split", "C1")):
        a1.plot(x, [r["results"].get(name, {}).get("gbs", float("nan")) for r in rows], "o-", color=color,
                label=f"leanattn {name}")
    a1.plot(x, [r["kv_mb"] / r["best_peer_us"] * 1e3 if "best_peer_us" in r else float("nan")
                for r in rows], "s--", color="C2", label="best peer")
    a1.axhline(ceiling, color="k", ls=":", label=f"read ceiling {ceiling:.0f} GB/s")
    a1.axhline(0.85 * ceiling, color="gray", ls=":", label="85% of ceiling")
    a1.set_ylabel("achieved GB/s (real KV bytes)")
    a1.set_title("leanattn decode vs peers, bf16, CUDA-graph replays with L2 flushed")
    a1.legend(fontsize=8)
    sp = [r.get("speedup_vs_best_peer", float("nan")) for r in rows]
    bars = a2.bar(x, sp, color=["C0" if s >= 1 else "C3" for s in sp])
    a2.bar_label(bars, labels=[f"{s:.2f}" for s in sp], fontsize=7)
    a2.axhline(1.0, color="k", lw=1)
    a2.set_ylabel("lean speed-up over best peer (same run)")
    a2.set_xticks(list(x))
    a2.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sweep(cases, log, configs=None):
    """Time the lean schedule over launch configurations (tile, warps, stages, programs per SM[,
    merge rows factor, merge stages[, load path]]); a tile of 0 keeps the case's default launch config
    (recorded as 'launched'), a merge factor of 0 the default merge; load 0 pointers, 1 block
    pointers, 2 TMA.

    cuDNN (its best form for the case) is timed in the same process before and after each case's
    configs, so every config's ratio to the peer is a same-run ratio (``x_peer``)."""
    from leanattn.ops import decode as dec
    results = []
    for case in cases:
        inp = make_inputs(case)
        ref, _ = leanattn.reference.decode(inp["q"], inp["k"], inp["v"], inp["seqlens"])
        fn = ours("lean")(case, inp)
        peer_us, first = [], len(results)

        def time_peer(check):
            us = []
            for name in ("sdpa_cudnn", "sdpa_cudnn_mask"):
                try:
                    peer = METHODS[name](case, inp)
                except RuntimeError:
                    continue  # the masked form is only built for unequal lengths
                try:
                    err = rel_err(peer(), ref) if check else 0.0
                    if err > 2e-2:
                        raise RuntimeError(f"relative error {err:.1e}")
                    us.append(common.time_graph(peer))
                except Exception as e:
                    log(f"    peer {name} failed: {type(e).__name__} {str(e)[:80]}")
            if us:
                peer_us.append(min(us))
        time_peer(check=True)
        grid = configs or [(bn, w, st, c) for bn in (32, 64, 128) for w in (4, 8) for st in (2, 3) for c in (1, 2, 4)
                           if not (case["d"] == 256 and bn == 128)]
        for cfg in grid:
            # LEANATTN_DECODE_CONFIG wins over every default (the table and the small-launch rule of
            # ops/decode_config.py); a tile of 0 is the case's own default ('launched' records what ran)
            if cfg[0] == 0:
                os.environ.pop("LEANATTN_DECODE_CONFIG", None)
            else:
                os.environ["LEANATTN_DECODE_CONFIG"] = ",".join(map(str, cfg[:4]))
            if len(cfg) > 4 and cfg[4]:
                os.environ["LEANATTN_MERGE"] = f"{cfg[4]},{cfg[5]}"
            else:
                os.environ.pop("LEANATTN_MERGE", None)
            if len(cfg) > 6:
                os.environ["LEANATTN_DECODE_LOAD"] = str(cfg[6])
            else:
                os.environ.pop("LEANATTN_DECODE_LOAD", None)
            dec._PLANS.clear()
            try:
                out = fn()
                err = rel_err(out, ref)
                g = graph_of(fn)
                us = common.bench(g.replay if g is not None else fn, warmup=10, rep=40) * 1e3
            except Exception as e:
                err, us = float("nan"), float("nan")
                log(f"    fail {cfg}: {type(e).__name__} {str(e)[:80]}")
            # the persistent grid actually launched (SMs x min(measured occupancy, cps))
            plan = next((p for p in dec._PLANS.values() if p.schedule == "lean"), None)
            programs = plan.grid[0] if plan else None
            launched = tuple(plan.meta[k] for k in ("BLOCK_N", "num_warps", "num_stages")) if plan else None
            results.append(dict(case=case["name"], cfg=tuple(cfg), launched=launched, us=us, err=err,
                                gbs=kv_bytes(case) / us / 1e3, programs=programs))
            log(f"  sweep {case['name']:22s} {','.join(map(str, cfg)):14s}: {us:8.1f} us "
                f"{kv_bytes(case) / us / 1e3:6.0f} GB/s err {err:.1e} launched {launched} programs {programs}")
        time_peer(check=False)
        peer = sum(peer_us) / len(peer_us) if peer_us else float("nan")
        for r in results[first:]:
            r.update(peer_us=peer, peer_us_runs=list(peer_us), x_peer=peer / r["us"])
        log(f"  sweep {case['name']:22s} cuDNN: {peer:8.1f} us (runs {', '.join(f'{x:.1f}' for x in peer_us)})")
        os.environ.pop("LEANATTN_DECODE_CONFIG", None)
        os.environ.pop("LEANATTN_MERGE", None)
        os.environ.pop("LEANATTN_DECODE_LOAD", None)
        dec._PLANS.clear()
        del inp
        torch.cuda.empty_cache()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a six-case subset")
    ap.add_argument("--cases", default="", help="comma-separated case groups or names")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results"))
    ap.add_argument("--sweep", action="store_true", help="sweep launch configs of the lean schedule instead")
    ap.add_argument("--tag", default="", help="appended to the result file names")
    ap.add_argument("--configs", default="", help="sweep only these: 'bn,warps,stages,cps[,merge_factor,merge_stages[,load]];...' (0: default)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_decode: needs a CUDA GPU (nothing to time on the CPU interpreter)")
        return 0
    torch.manual_seed(0)
    cases = suite()
    if args.quick:
        cases = [c for c in cases if c["name"] in QUICK]
    if args.cases:
        keys = set(args.cases.split(","))
        cases = [c for c in cases if c["group"] in keys or c["name"] in keys]

    def log(msg):
        print(msg, flush=True)
    info = common.env_info()
    log(f"{info}")
    if args.sweep:
        configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";") if c]
        res = sweep(cases, log, configs or None)
        stem = "decode_sweep_" + info["device"].replace(" ", "_") + args.tag
        common.write_results(args.out, stem, dict(env=info, sweep=res), "")
        return 0
    bw = common.read_bandwidth_gbs()
    ceiling = bw["read_ceiling"]
    log(f"bandwidth: {bw}")
    rows = []
    t0 = time.time()
    for case in cases:
        rows.append(run_case(case, ceiling, log, bw["read_ceiling_clean_flush"]))
    md = table(rows, ceiling)
    speed = [r["speedup_vs_best_peer"] for r in rows if "speedup_vs_best_peer" in r]
    ragged = [r["speedup_vs_best_peer"] for r in rows if r["group"] in ("ragged",) and "speedup_vs_best_peer" in r]
    big = [r["lean_frac_ceiling"] for r in rows if r["kv_mb"] >= 256 and "lean_frac_ceiling" in r]
    big_clean = [r["lean_frac_ceiling_clean"] for r in rows if r["kv_mb"] >= 256 and "lean_frac_ceiling_clean" in r]
    speed_clean = [r["speedup_vs_best_peer_clean"] for r in rows if "speedup_vs_best_peer_clean" in r]
    big_rows = [r for r in rows if r["kv_mb"] >= 256]

    def reach(key):
        # of the >= 256 MB cases, how many a plain streaming read of the bytes brings to 85% of the ceiling
        return f"{sum(r.get(key, 0) >= 0.85 for r in big_rows)} of {len(big_rows)}"
    summary = dict(geomean_vs_best_peer=common.geomean(speed), min_vs_best_peer=min(speed, default=None),
                   ragged_min_vs_best_peer=min(ragged, default=None), min_frac_ceiling_256mb=min(big, default=None),
                   n_256mb_at_85=f"{sum(f >= 0.85 for f in big)} of {len(big)}",
                   n_256mb_stream_read_at_85=reach("stream_read_frac_ceiling"),
                   read_flush=dict(geomean_vs_best_peer=common.geomean(speed_clean),
                                   min_vs_best_peer=min(speed_clean, default=None),
                                   n_256mb_at_85=f"{sum(f >= 0.85 for f in big_clean)} of {len(big_clean)}",
                                   n_256mb_stream_read_at_85=reach("stream_read_frac_ceiling_clean")),
                   wall_s=time.time() - t0)
    md = (f"# decode benchmark\n\n{info['device']}, torch {info['torch']}, triton {info['triton']}, {info['date']}; "
          f"bf16; read ceiling {ceiling:.0f} GB/s (streaming read), copy {bw['copy_read_plus_write']:.0f} GB/s "
          f"(read+write). Times are medians of triton do_bench with L2 flushed, every method replayed from a CUDA "
          f"graph (GPU time; 'lean eager us' is the same kernel launched from Python; 'lean no-lengths us' is lean "
          f"called without cache_seqlens on equal-length contiguous cases); GB/s count real KV bytes. "
          f"'read flush' columns: the same replays after a flush that reads 256 MB instead of zeroing it "
          f"(do_bench's zeroing leaves an L2 of dirty lines written back inside the timed call), against "
          f"the read ceiling timed the same way ({bw['read_ceiling_clean_flush']:.0f} GB/s); "
          f"'stream read' columns: one launch of the ceiling's streaming read kernel over the case's KV bytes, "
          f"replayed from a graph under each flush (what reading those bytes once takes at this size); "
          f"peers get their best form (see JSON 'form').\n\n"
          + md + f"\nSummary: {summary}\n")
    stem = "decode_" + info["device"].replace(" ", "_") + ("_quick" if args.quick else "") + args.tag
    common.write_results(args.out, stem, dict(env=info, bandwidth=bw, summary=summary, rows=rows), md,
                         plot=lambda png: plot(rows, ceiling, png))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
