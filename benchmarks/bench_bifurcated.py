"""Bifurcated (shared-prefix) decode benchmark: leanattn.bifurcated_decode against copying the prefix.

Suite (bf16, D=128, from the bifurcated-attention issue): MHA 32/32 and GQA 32/8; one prompt with a
prefix of 8k, 16k or 32k tokens sampled 1, 4, 16, 32, 64 or 256 times; 256 own tokens per sample.

Peers run in the same process on what a PyTorch user holds without shared-prefix support: one
contiguous cache per sample holding its own copy of the prefix followed by its tokens. SDPA
(FLASH, cuDNN), ``leanattn.decode`` and flex attention read it; cases whose copies would exceed
``--mem-gb`` (default 60 GB, on an 80 GB H100) are skipped for the peers and recorded as out of
memory. Every method is checked against the float64 reference (on a few samples spread over the
batch) before it is timed.

Times are medians of ``triton.testing.do_bench`` (L2 flushed) over CUDA-graph replays when capture
works (``bench_decode.graph_of``), else eager launches. The IO floor is the bytes that must be read
once (prefix once, own tokens, queries and outputs) over the measured streaming-read bandwidth; the
compute floor is the attention FLOPs over the measured bf16 matmul rate; ``x floor`` is time over
the larger of the two. Every method is also timed after an L2 flush that reads instead of writes
(``common.bench(flush="read")``: do_bench's zeroing flush makes every call write back an L2 of dirty
lines), against a read ceiling timed the same way: the 'read flush' columns.

    python benchmarks/bench_bifurcated.py [--quick] [--cases mha,gqa,8k,...] [--out DIR] [--mem-gb 60]
    python -m leanattn bench bifurcated --quick
    python benchmarks/bench_bifurcated.py --tiny     # CPU smoke run of the code paths (no timing value)
    python benchmarks/bench_bifurcated.py --sweep [--configs 'cap,block_n,warps,stages,cps[,load];...']
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.testing import TOLERANCE, rel_err  # noqa: E402

K = 1024
OWN = 256
# one sample: rounds of ours and decode over copies timed alternately after every method has run (each is timed
# once above, one after the other). H200, 2026-12-02: the 14:27 run 0.984-1.001x once, 0.988-1.002x alternately;
# probes 31 and 34, whose inputs are allocated in another order, 0.993-1.007x (notes section 22)
X1_ROUNDS = 5
# ... and over fresh copies of the inputs allocated in these orders: the two methods read the same bytes from different
# buffers, and the buffers' placement alone moved MHA 8k x1 from 1.000x (a probe's process) to 0.989x (the suite's)
# on one H200 (probe 34)
X1_PLACEMENTS = (("pk", "pv", "k", "v", "kc", "vc"), ("kc", "vc", "pk", "pv", "k", "v"),
                 ("k", "v", "kc", "vc", "pk", "pv"))
SAMPLES = (1, 4, 16, 32, 64, 256)
PREFIXES = (8 * K, 16 * K, 32 * K)
MODELS = {"mha": (32, 32), "gqa": (32, 8)}
QUICK = {("mha", 8 * K, n) for n in (1, 16, 32, 64)} | {("gqa", 8 * K, n) for n in (1, 32, 64)} | \
        {("mha", 32 * K, 16), ("gqa", 32 * K, 256)}


def suite(tiny=False):
    cases = []
    for p in PREFIXES:  # the 8k cases (the bar's) first, in case the time budget runs out
        for model, (hq, hkv) in MODELS.items():
            for n in SAMPLES:
                c = dict(name=f"{model} {p // K}k x{n}", model=model, hq=hq, hkv=hkv, d=128, prefix=p, samples=n,
                         own=OWN)
                if tiny:  # same structure, interpreter-sized
                    c.update(hq=4, hkv=4 if model == "mha" else 2, d=64, prefix=p // 256, own=16)
                cases.append(c)
    return cases


def case_bytes(c, elt=2):
    """(prefix bytes, own bytes, q + out bytes, bytes of the per-sample copies a peer holds)."""
    row = c["hkv"] * c["d"] * 2 * elt  # K and V of one token
    prefix = c["prefix"] * row
    own = c["samples"] * c["own"] * row
    qo = 2 * c["samples"] * c["hq"] * c["d"] * elt
    copied = c["samples"] * (c["prefix"] + c["own"]) * row
    return prefix, own, qo, copied


def case_flops(c):
    return 4 * c["samples"] * c["hq"] * (c["prefix"] + c["own"]) * c["d"]


def make_inputs(c, device, dtype=torch.bfloat16, copies=True):
    n, hq, hkv, d = c["samples"], c["hq"], c["hkv"], c["d"]
    q = torch.randn(n, hq, d, dtype=dtype, device=device)
    pk = torch.randn(c["prefix"], hkv, d, dtype=dtype, device=device)
    pv = torch.randn_like(pk)
    k = torch.randn(n, c["own"], hkv, d, dtype=dtype, device=device)
    v = torch.randn_like(k)
    lens = torch.full((n,), c["own"], dtype=torch.int32, device=device)
    inp = dict(q=q, pk=pk, pv=pv, k=k, v=v, lens=lens)
    if copies:
        inp["kc"] = torch.cat([pk.expand(n, -1, -1, -1), k], 1)
        inp["vc"] = torch.cat([pv.expand(n, -1, -1, -1), v], 1)
        inp["lens_c"] = torch.full((n,), c["prefix"] + c["own"], dtype=torch.int32, device=device)
    return inp


# ---------------------------------------------------------------------------------------------
# methods: each returns a zero-argument callable computing out (B, Hq, D)
# ---------------------------------------------------------------------------------------------
def ours(c, inp):
    args = (inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"])
    fn = lambda: leanattn.bifurcated_decode(*args)  # noqa: E731
    fn.form = "shared prefix + own caches"
    return common.compiled_as_at_start(fn)


def decode_copied(c, inp):
    args = (inp["q"], inp["kc"], inp["vc"], inp["lens_c"])
    fn = lambda: leanattn.decode(*args)  # noqa: E731
    fn.form = "copied caches"
    return common.compiled_as_at_start(fn)


def sdpa(backend_name):
    def make(c, inp):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        F = torch.nn.functional
        backend = getattr(SDPBackend, backend_name)
        q4, kt, vt = inp["q"].unsqueeze(2), inp["kc"].transpose(1, 2), inp["vc"].transpose(1, 2)
        gqa = c["hq"] != c["hkv"]

        def fn():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q4, kt, vt, enable_gqa=gqa).squeeze(2)
        fn.form = "copied caches, one call"
        return fn
    return make


_FLEX = {}


def flex(c, inp):
    from torch.nn.attention.flex_attention import flex_attention
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=True)
    fa = _FLEX["fn"]
    q4, kt, vt = inp["q"].unsqueeze(2), inp["kc"].transpose(1, 2), inp["vc"].transpose(1, 2)
    gqa = c["hq"] != c["hkv"]

    def fn():
        return fa(q4, kt, vt, enable_gqa=gqa).squeeze(2)
    fn.form = "copied caches, one call"
    return fn


METHODS = {"bifurcated": ours, "decode_copied": decode_copied,
           "sdpa_flash": sdpa("FLASH_ATTENTION"), "sdpa_cudnn": sdpa("CUDNN_ATTENTION"), "flex": flex}
PEERS = ["decode_copied", "sdpa_flash", "sdpa_cudnn", "flex"]
OURS = ("bifurcated",)  # launch options (block pointers, ...) are compared by --sweep / profile_bifurcated.py
CPU_METHODS = {"bifurcated", "decode_copied"}


def check_samples(n):
    """A few samples spread over the batch (the float64 reference is slow at 256 x 32k)."""
    return sorted({0, n // 3, (2 * n) // 3, n - 1})


def reference_of(inp, idx):
    q, k, v, lens = (inp[x][idx] for x in ("q", "k", "v", "lens"))
    return leanattn.reference.bifurcated_decode(q, inp["pk"], inp["pv"], k, v, lens)[0]


def probe_inputs(names, want=None, copies=True):
    """For probes: ``(case, inputs)`` of the suite's cases named in ``names`` (and in ``want``, when given), on the
    GPU, one case at a time. The caller drops what refers to the inputs before the next case allocates."""
    for case in suite():
        if case["name"] not in names or (want and case["name"] not in want):
            continue
        inp = make_inputs(case, "cuda", copies=copies)
        yield case, inp
        del inp
        torch.cuda.empty_cache()


def ours_call(inp):
    """A call of ``bifurcated_decode`` over a case's inputs (``make_inputs``), for probes to time or wrap."""
    return lambda: leanattn.bifurcated_decode(inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"])


def interleaved_variants(case, inp, fns, rounds=5):
    """``(us, med)`` of ``bench_decode.interleaved_graph_times`` over ``fns`` (variants of one call on ``inp``), each
    checked first against the float64 reference of the case's first and last sample."""
    from bench_decode import interleaved_graph_times
    idx = [0, case["samples"] - 1]
    return interleaved_graph_times(case["name"], fns, reference_of(inp, idx), rounds=rounds, pick=idx)


def variant_probe(doc, argv, cases, variants, info, file, probe, pairs=None, **payload):
    """A probe of ``variants`` of the call over a case's inputs, timed side by side on the suite ``cases`` (or those
    of ``--cases``): label -> ``(env, patches)`` of ``bench_decode.with_plans`` for the default call
    (``ours_call``), or ``(env, patches, make)`` where ``make(inp, idx)`` gives ``(call, reference of samples
    idx)`` for another call over the case's inputs (other arguments, other caches). Each is checked against its
    reference of the case's first and last sample, then CUDA-graph replays timed in five interleaved rounds. Prints
    each case's ratios of the label ``pairs`` (default: the first variant to each other) and ``info`` (name,
    function of a plan) of every variant's plans; writes ``file`` under ``--out`` with the description ``probe`` and
    ``payload``, and returns its path."""
    import bench_decode as bd
    args, want = common.probe_args(doc, argv)
    torch.manual_seed(0)
    out = []
    first = next(iter(variants))
    pairs = pairs or [(first, n) for n in variants if n != first]
    info_name, info_of = info
    for case, inp in probe_inputs(cases, want, copies=False):
        idx = [0, case["samples"] - 1]
        default = ours_call(inp), reference_of(inp, idx)
        fns, refs = {}, {}
        for name, (env, patches, *make) in variants.items():
            call, refs[name] = make[0](inp, idx) if make else default
            fns[name] = bd.with_plans(call, env=env, patches=patches)
        us, med = bd.interleaved_graph_times(case["name"], fns, refs, rounds=5, pick=idx)
        seen = {n: [info_of(p) for p in f.plans[1].values()] for n, f in fns.items()}
        bd.report_ratios(case["name"], med, pairs)
        print(f"{'':18s} rounds: {us}  {info_name}: {seen}", flush=True)
        out.append(dict(case=case["name"], us=us, median=med, **{info_name: seen}))
        del inp, fns, refs, default, call
    return common.write_probe(args.out, file, probe=probe,
                              timing=bd.GRAPH_TIMING.replace("3 interleaved", "5 interleaved"), cases=out, **payload)


def edited_plan_times(case, inp, variants, edit, checked, rounds=5):
    """For probes that time a plan of the overlap path with parts of it changed: ``(us, med, plans)`` of
    ``bifurcated_decode`` over ``inp`` under each of ``variants`` (label: ``patches`` of ``bench_decode.with_plans``).
    After a variant's first call ``edit(label, plan)`` changes its plan (or raises); the labels in ``checked`` are
    then compared three times against the float64 reference of the case's first and last sample (an edit that
    drops part of the work cannot be); each is captured in a CUDA graph and the replays timed by
    ``bench_decode.interleaved_times`` over ``rounds`` rounds. ``plans``: label -> the edited plan."""
    import bench_decode as bd
    call = ours_call(inp)
    idx = [0, case["samples"] - 1]
    ref = reference_of(inp, idx)
    fns, graphs, plans = {}, {}, {}
    for label, patches in variants.items():
        fn = fns[label] = bd.with_plans(call, patches=patches)
        fn()
        (plan,) = fn.plans[1].values()
        edit(label, plan)
        for _ in range(3 if label in checked else 0):
            err = bd.rel_err(fn()[idx], ref)
            if err > 1e-2:
                raise RuntimeError(f"{case['name']} {label}: relative error {err:.1e}")
        plans[label] = plan
        graphs[label] = bd.graph_of(fn)
    us, med = bd.interleaved_times({label: g.replay for label, g in graphs.items()}, rounds)
    return us, med, plans


def one_sample_cases(names, want=None):
    """For probes that time variants of the one-sample path side by side, over ``probe_inputs``: ``(name, ref, ours,
    copied)``, the float64 reference of sample 0 and calls of ``bifurcated_decode`` and of ``leanattn.decode`` over
    the copied caches. The caller drops the calls before the next case allocates."""
    for case, inp in probe_inputs(names, want):
        ours = ours_call(inp)
        copied = functools.partial(leanattn.decode, inp["q"], inp["kc"], inp["vc"], inp["lens_c"])
        yield case["name"], reference_of(inp, [0]), ours, copied
        del inp, ours, copied


def replayer(fn, cuda):
    """``(run, timing)``: ``fn`` captured once in a CUDA graph and ``run`` its replay when capture
    works, else ``fn`` itself (eager launches; on the CPU, the interpreter). Time every variant of a
    method (flushes, repeats) from the one ``run``; drop it before the next case allocates, so the
    graph's memory pool is freed."""
    if not cuda:
        return fn, "cpu-interpreter (meaningless)"
    from bench_decode import graph_of
    g = graph_of(fn)
    return (g.replay, "graph") if g is not None else (fn, "eager")


def time_run(run, cuda, flush="write"):
    """Milliseconds of ``run`` (from ``replayer``): ``common.bench`` with ``flush`` on a GPU, one call
    on the CPU."""
    if not cuda:
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3
    return common.bench(run, flush=flush)


def time_fn(fn, cuda, flush="write"):
    """(ms, timing) of ``fn`` as CUDA-graph replays when capture works, else eager launches; ``flush``
    as ``common.bench``. One capture per call: to time several variants, use ``replayer``."""
    run, timing = replayer(fn, cuda)
    return time_run(run, cuda, flush), timing


def run_case(c, ceilings, mem_gb, log, device, over_budget=lambda: False):
    cuda = device == "cuda"
    prefix_b, own_b, qo_b, copied_b = case_bytes(c)
    copies = copied_b <= mem_gb * 1e9
    inp = make_inputs(c, device, copies=copies)
    idx = torch.tensor(check_samples(c["samples"]), device=device)
    ref = reference_of(inp, idx)
    io_us = (prefix_b + own_b + qo_b) / ceilings["read_gbs"] / 1e3
    flop_us = case_flops(c) / ceilings["matmul_tflops"] / 1e6
    row = dict(case=c["name"], model=c["model"], hq=c["hq"], hkv=c["hkv"], d=c["d"], prefix=c["prefix"],
               samples=c["samples"], own=c["own"], prefix_mb=prefix_b / 1e6, own_mb=own_b / 1e6,
               kv_held_mb=(prefix_b + own_b) / 1e6, copied_kv_mb=copied_b / 1e6, io_floor_us=io_us,
               flop_floor_us=flop_us, floor_us=max(io_us, flop_us), results={},
               # the same bytes streamed by one plain read kernel: the floor one launch reaches in practice
               stream_read_us=common.stream_read_us(prefix_b + own_b + qo_b) if cuda else float("nan"))
    tol = TOLERANCE[torch.bfloat16]
    kept = {}  # one sample: the replays of ours and of decode over copies, timed again side by side below
    for name, make in METHODS.items():
        if not cuda and name not in CPU_METHODS:
            continue
        if name not in OURS and over_budget():
            row["results"][name] = dict(error="skipped: past the --budget-s time budget")
            log(f"  {c['name']:18s} {name:14s} skipped (time budget)")
            continue
        if name not in OURS and not copies:
            row["results"][name] = dict(error=f"out of memory: per-sample copies need {copied_b / 1e9:.0f} GB "
                                              f"(> --mem-gb {mem_gb:g})")
            log(f"  {c['name']:18s} {name:14s} skipped: {row['results'][name]['error']}")
            continue
        try:
            fn = make(c, inp)
            out = fn()
            if cuda:
                torch.cuda.synchronize()
            err = rel_err(out[idx], ref)
            if not err <= (tol if name in OURS + ("decode_copied",) else 2 * tol):
                raise RuntimeError(f"wrong result: rel err {err:.2e}")
            run, timing = replayer(fn, cuda)  # one capture serves every timing of this method
            r = dict(us=time_run(run, cuda) * 1e3, err=err, form=getattr(fn, "form", ""), timing=timing)
            if cuda:  # after a flush that leaves no dirty lines to write back inside the call (common.bench)
                r["us_clean"] = time_run(run, cuda, flush="read") * 1e3
            if name == "bifurcated":
                from leanattn.ops import bifurcated as bif
                r["launch"] = next(reversed(bif._PLANS.values())).info  # the plan this case built last
                if cuda:
                    r["us_eager"] = common.bench(fn) * 1e3
                    r["us_repeat"] = time_run(run, cuda) * 1e3  # the noise
            if c["samples"] == 1 and name in ("bifurcated", "decode_copied"):
                kept[name] = run
            del run
            row["results"][name] = r
        except torch.OutOfMemoryError as e:
            row["results"][name] = dict(error=f"OutOfMemoryError: {str(e)[:120]}")
        except Exception as e:  # a peer that cannot run this case is recorded, not fatal
            row["results"][name] = dict(error=f"{type(e).__name__}: {str(e)[:160]}")
        res = row["results"][name]
        log(f"  {c['name']:18s} {name:14s} " + (f"{res['us']:10.1f} us  err {res['err']:.1e}  ({res['timing']})"
                                                if "us" in res else res["error"])
            + (f"  {res['launch']}" if "launch" in res else ""))
    ours_r = row["results"].get("bifurcated", {})
    peers = {p: row["results"][p]["us"] for p in PEERS if "us" in row["results"].get(p, {})}
    if "us" in ours_r:
        row["x_io_floor"] = ours_r["us"] / io_us
        row["x_stream_read"] = ours_r["us"] / row["stream_read_us"]
        row["x_floor"] = ours_r["us"] / row["floor_us"]
        row["achieved_gbs"] = (prefix_b + own_b + qo_b) / ours_r["us"] / 1e3
        if "us_clean" in ours_r:
            row["x_io_floor_clean"] = ours_r["us_clean"] / ((prefix_b + own_b + qo_b) / ceilings["read_gbs_clean"] / 1e3)
            clean = {p: row["results"][p]["us_clean"] for p in peers if "us_clean" in row["results"][p]}
            if clean:
                row["speedup_vs_best_peer_clean"] = min(clean.values()) / ours_r["us_clean"]
            if "decode_copied" in clean:
                row["speedup_vs_decode_copied_clean"] = clean["decode_copied"] / ours_r["us_clean"]
        if peers:
            best = min(peers, key=peers.get)
            row["best_peer"], row["best_peer_us"] = best, peers[best]
            row["speedup_vs_best_peer"] = peers[best] / ours_r["us"]
        if "decode_copied" in peers:
            row["speedup_vs_decode_copied"] = peers["decode_copied"] / ours_r["us"]
    if len(kept) == 2:
        # each was timed once above, one after the other; alternating rounds keep drift out of their ratio
        try:
            us, med = alternate({"ours": kept["bifurcated"], "copied": kept["decode_copied"]}, cuda)
            row["x1_interleaved"] = dict(us=us, median=med, speedup_vs_decode_copied=med["copied"] / med["ours"])
            kept.clear()  # the replays' graphs, freed before the fresh copies are made
            row["x1_placements"] = x1_placements(c, inp, cuda)
        except Exception as e:  # recorded, as a method's failure is
            row["x1_error"] = f"{type(e).__name__}: {str(e)[:160]}"
    del inp, ref, kept
    if cuda:
        torch.cuda.empty_cache()
    return row


def alternate(runs, cuda):
    """``runs`` (label -> call from ``replayer``) timed in ``X1_ROUNDS`` alternating rounds (on a GPU with do_bench's
    shorter windows, as the probes: ``bench_decode.interleaved_times``):
    ``({label: [us per round]}, {label: median us})``."""
    from bench_decode import interleaved_times
    return interleaved_times(runs, X1_ROUNDS, None if cuda else (lambda run: time_run(run, False)))


def x1_placements(c, inp, cuda):
    """One sample: ours against decode over copies over fresh copies of the inputs allocated in each order of
    ``X1_PLACEMENTS``, both captured and timed by ``alternate``: ``{"ratios": [...], "median": ...}``."""
    ratios = []
    for order in X1_PLACEMENTS:
        fresh = dict(inp)
        for name in order:
            fresh[name] = inp[name].clone()
        runs = {}
        for name, make in (("ours", ours), ("copied", decode_copied)):
            fn = make(c, fresh)
            fn()
            runs[name] = replayer(fn, cuda)[0]
        _, med = alternate(runs, cuda)
        ratios.append(med["copied"] / med["ours"])
        del fresh, runs, fn
        if cuda:
            torch.cuda.empty_cache()
    return dict(ratios=ratios, median=sorted(ratios)[len(ratios) // 2])


def table(rows):
    header = ["case", "KV held MB", "copies MB", "ours us", "IO floor us", "stream read us", "x IO floor",
              "x stream read", "x floor",
              "decode copied us", "flash us", "cudnn us", "flex us", "best peer", "x best peer", "x decode copied",
              "err", "ours us, read flush", "x IO floor, read flush", "x best peer, read flush",
              "x decode copied, read flush", "x decode copied, interleaved", "x decode copied, placements"]
    out = []
    for r in rows:
        res = r["results"]

        def us(n):
            x = res.get(n, {})
            return x["us"] if "us" in x else ("OOM" if "memory" in x.get("error", "") else "-")
        out.append([r["case"], r["kv_held_mb"], r["copied_kv_mb"], us("bifurcated"), r["io_floor_us"],
                    r.get("stream_read_us", "-"), r.get("x_io_floor", "-"), r.get("x_stream_read", "-"),
                    r.get("x_floor", "-"), us("decode_copied"), us("sdpa_flash"),
                    us("sdpa_cudnn"), us("flex"), r.get("best_peer", "-"), r.get("speedup_vs_best_peer", "-"),
                    r.get("speedup_vs_decode_copied", "-"), res.get("bifurcated", {}).get("err", "-"),
                    res.get("bifurcated", {}).get("us_clean", "-"), r.get("x_io_floor_clean", "-"),
                    r.get("speedup_vs_best_peer_clean", "-"), r.get("speedup_vs_decode_copied_clean", "-"),
                    r.get("x1_interleaved", {}).get("speedup_vs_decode_copied", "-"),
                    r.get("x1_placements", {}).get("median", "-")])
    return common.markdown_table(header, out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({r["model"] for r in rows})
    prefixes = sorted({r["prefix"] for r in rows})
    fig, axes = plt.subplots(len(models), len(prefixes), figsize=(4.5 * len(prefixes), 4.2 * len(models)),
                             squeeze=False)
    for (i, model), (j, prefix) in itertools.product(enumerate(models), enumerate(prefixes)):
        ax = axes[i][j]
        rs = sorted([r for r in rows if (r["model"], r["prefix"]) == (model, prefix)], key=lambda r: r["samples"])
        if not rs:
            ax.axis("off")
            continue
        xs = [r["samples"] for r in rs]
        for name, style in (("bifurcated", "o-"), ("decode_copied", "s--"),
                            ("sdpa_flash", "^:"),
                            ("sdpa_cudnn", "v:"), ("flex", "d:")):
            ys = [r["results"].get(name, {}).get("us", float("nan")) for r in rs]
            ax.plot(xs, ys, style, label=name)
        ax.plot(xs, [r["io_floor_us"] for r in rs], "k-", lw=0.8, label="IO floor")
        ax.plot(xs, [r["floor_us"] for r in rs], "k:", lw=0.8, label="max(IO, FLOP) floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{model} prefix {prefix // K}k" if prefix >= K else f"{model} prefix {prefix}")
        ax.set_xlabel("samples")
        ax.set_ylabel("us per decode step (one layer)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


SWEEP_CASES = {"mha 8k x1", "mha 8k x32", "mha 8k x256", "gqa 8k x1", "gqa 8k x32", "gqa 8k x64", "gqa 32k x256"}
SWEEP_CONFIGS = ["0,0,0,0,0", "64,0,0,0,0", "128,64,8,2,0", "128,128,8,2,0", "128,64,4,2,0", "0,64,0,0,0",
                 "0,0,0,3,0", "0,0,0,0,2", "32,0,0,0,0",
                 "0,0,0,0,0,2", "64,0,0,0,0,2", "0,0,0,0,2,2", "0,64,0,3,0,2", "0,0,0,0,0,3"]


def sweep(cases, configs, log):
    """Time bifurcated_decode under ``LEANATTN_BIFURCATED_CONFIG`` overrides
    (``block_h_cap,block_n,num_warps,num_stages,ctas_per_sm[,load]``, 0 = default; load 1 pointers,
    2 block pointers, 3 TMA)."""
    from bench_decode import graph_of
    from leanattn.ops import bifurcated as bif
    results = []
    old = os.environ.get("LEANATTN_BIFURCATED_CONFIG")
    for c in cases:
        inp = make_inputs(c, "cuda", copies=False)
        idx = torch.tensor(check_samples(c["samples"]), device="cuda")
        ref = reference_of(inp, idx)
        prefix_b, own_b, qo_b, _ = case_bytes(c)
        for cfg in configs:
            os.environ["LEANATTN_BIFURCATED_CONFIG"] = cfg
            bif._PLANS.clear()
            try:
                fn = ours(c, inp)
                err = rel_err(fn()[idx], ref)
                g = graph_of(fn)
                us = common.bench(g.replay if g is not None else fn, warmup=10, rep=40) * 1e3
                del g
            except Exception as e:
                err, us = float("nan"), float("nan")
                log(f"    fail {cfg}: {type(e).__name__} {str(e)[:100]}")
            results.append(dict(case=c["name"], cfg=cfg, us=us, err=err, gbs=(prefix_b + own_b + qo_b) / us / 1e3))
            log(f"  sweep {c['name']:14s} cfg={cfg:16s} {us:9.1f} us {results[-1]['gbs']:6.0f} GB/s err {err:.1e}")
        del inp
        torch.cuda.empty_cache()
    if old is None:
        os.environ.pop("LEANATTN_BIFURCATED_CONFIG", None)
    else:
        os.environ["LEANATTN_BIFURCATED_CONFIG"] = old
    bif._PLANS.clear()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a nine-case subset")
    ap.add_argument("--cases", default="", help="comma-separated filters: mha, gqa, 8k, x32, or case names")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results"))
    ap.add_argument("--mem-gb", type=float, default=60.0, help="largest per-sample copies a peer may hold (GB)")
    ap.add_argument("--tiny", action="store_true", help="interpreter-sized shapes: a CPU smoke run of the code")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="after this many seconds, peers are skipped (ours still runs): the suite fits in 6 min")
    ap.add_argument("--sweep", action="store_true", help="time launch configs of bifurcated_decode instead")
    ap.add_argument("--configs", default="", help="sweep only these: 'cap,block_n,warps,stages,cps[,load];...'")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("bench_bifurcated: needs a CUDA GPU (use --tiny for a CPU smoke run of the code paths)")
        return 0
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    cases = suite(tiny=args.tiny)
    if args.quick:
        cases = [c for c in cases if (c["model"], c["prefix"] * (256 if args.tiny else 1), c["samples"]) in QUICK]
    if args.cases:
        keys = set(args.cases.split(","))
        cases = [c for c in cases if keys & {c["model"], f"{c['prefix'] // K}k", f"x{c['samples']}", c["name"]}]

    def log(msg):
        print(msg, flush=True)
    info = common.env_info()
    log(f"{info}")
    if args.sweep:
        if not cuda:
            print("bench_bifurcated --sweep: needs a CUDA GPU")
            return 0
        picked = cases if (args.cases or args.quick) else [c for c in cases if c["name"] in SWEEP_CASES]
        res = sweep(picked, [c for c in args.configs.split(";") if c] or SWEEP_CONFIGS, log)
        stem = "bifurcated_sweep_" + info["device"].replace(" ", "_")
        common.write_results(args.out, stem, dict(env=info, sweep=res), "")
        return 0
    if cuda:
        bw = common.read_bandwidth_gbs()
        ceilings = dict(read_gbs=bw["read_ceiling"], read_gbs_clean=bw["read_ceiling_clean_flush"],
                        matmul_tflops=common.matmul_tflops(), bandwidth=bw,
                        launch_us=common.launch_latency_us())
    else:
        ceilings = dict(read_gbs=1.0, matmul_tflops=1.0, bandwidth={})
    log(f"ceilings: {ceilings}")
    t0 = time.time()
    start = time.time()
    rows = [run_case(c, ceilings, args.mem_gb, log, device, lambda: time.time() - start > args.budget_s)
            for c in cases]
    ge16 = [r["x_io_floor"] for r in rows if r["samples"] >= 16 and "x_io_floor" in r]
    ge16_floor = [r["x_floor"] for r in rows if r["samples"] >= 16 and "x_floor" in r]

    def at(n, prefix=8 * K):
        return {r["model"]: r.get("speedup_vs_best_peer") for r in rows
                if r["samples"] == n and r["prefix"] == (prefix if not args.tiny else prefix // 256)}
    summary = dict(
        max_x_io_floor_ge16=max(ge16, default=None), max_x_floor_ge16=max(ge16_floor, default=None),
        read_flush=dict(
            x_io_floor_ge16={r["case"]: r["x_io_floor_clean"] for r in rows
                             if r["samples"] >= 16 and "x_io_floor_clean" in r},
            speedup_vs_best_peer_8k_x32={r["model"]: r.get("speedup_vs_best_peer_clean") for r in rows
                                         if r["samples"] == 32 and r["prefix"] == 8 * K},
            speedup_vs_best_peer_8k_x64={r["model"]: r.get("speedup_vs_best_peer_clean") for r in rows
                                         if r["samples"] == 64 and r["prefix"] == 8 * K},
            min_speedup_vs_decode_copied=min([r["speedup_vs_decode_copied_clean"] for r in rows
                                              if "speedup_vs_decode_copied_clean" in r], default=None)),
        speedup_vs_best_peer_8k_x32=at(32), speedup_vs_best_peer_8k_x64=at(64),
        min_speedup_vs_decode_copied=min([r["speedup_vs_decode_copied"] for r in rows
                                          if "speedup_vs_decode_copied" in r], default=None),
        geomean_vs_best_peer=common.geomean([r.get("speedup_vs_best_peer") for r in rows]),
        max_x_stream_read_ge16=max([r["x_stream_read"] for r in rows if r["samples"] >= 16 and "x_stream_read" in r],
                                   default=None),
        speedup_vs_decode_copied_x1={r["case"]: r.get("speedup_vs_decode_copied") for r in rows if r["samples"] == 1},
        speedup_vs_decode_copied_x1_interleaved={r["case"]: r["x1_interleaved"]["speedup_vs_decode_copied"]
                                                 for r in rows if "x1_interleaved" in r},
        speedup_vs_decode_copied_x1_placements={r["case"]: r["x1_placements"]["median"]
                                                for r in rows if "x1_placements" in r},
        config=os.environ.get("LEANATTN_BIFURCATED_CONFIG", ""),
        wall_s=time.time() - t0)
    md = (f"# bifurcated decode benchmark\n\n{info['device']}, torch {info['torch']}, triton {info['triton']}, "
          f"{info['date']}; bf16, D=128, one prompt, {OWN if not args.tiny else 16} own tokens per sample. "
          f"Read ceiling {ceilings['read_gbs']:.0f} GB/s, bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s, "
          f"empty-kernel graph replay {ceilings.get('launch_us', float('nan')):.1f} us. 'stream read' = one launch of a "
          f"plain streaming read kernel over the same bytes (the floor one launch reaches in practice). "
          f"Times: medians of triton do_bench (L2 flushed) of CUDA-graph replays. 'KV held' = prefix once + own "
          f"tokens (ours); 'copies' = per-sample caches with the prefix copied (peers); OOM = copies above "
          f"{args.mem_gb:g} GB, not run. 'x floor' = time over max(IO floor, FLOP floor). 'read flush': every "
          f"method's replays timed again after a flush that reads 256 MB instead of zeroing it (do_bench's "
          f"zeroing leaves an L2 of dirty lines written back inside the timed call), against the read ceiling "
          f"timed the same way "
          f"({ceilings.get('read_gbs_clean', float('nan')):.0f} GB/s). 'interleaved' (one sample): ours and decode "
          f"over copies timed again in {X1_ROUNDS} alternating rounds from the same replays, medians; 'placements': "
          f"the same over fresh copies of the inputs allocated in {len(X1_PLACEMENTS)} orders, the median ratio.\n\n"
          + table(rows) + f"\nSummary: {summary}\n")
    stem = "bifurcated_" + info["device"].replace(" ", "_") + ("_quick" if args.quick else "") + \
           ("_tiny" if args.tiny else "")
    paths = common.write_results(args.out, stem, dict(env=info, ceilings=ceilings, summary=summary, rows=rows), md,
                                 plot=lambda png: plot(rows, png))
    print(md)
    log(f"wrote {paths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
