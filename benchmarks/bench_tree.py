"""Tree attention on 2 or more GPUs: tree_decode (one all-gather / three all-reduces) vs ring_decode vs one GPU.

One long sequence per batch row, its KV cache split in two equal contiguous halves (one per GPU).
Cases (issue 5): B = 1 and 4; GQA 32/8 and MHA 32/32; D = 128; bf16; 128k, 512k, 1M and 2M tokens
of context in total. In the same run, per case:

- ``single``: ``leanattn.decode`` of the whole cache on rank 0 alone (when it fits in one GPU);
- ``local``: each rank's decode of its own half, no communication (the compute floor);
- ``tree-allgather``, ``tree-allreduce3``: ``leanattn.distributed.tree_decode``;
- ``ring``: ``leanattn.distributed.ring_decode`` (when a second shard fits for the double buffer).

Latency per step is the median over repetitions of back-to-back steps timed with CUDA events
after a barrier, the maximum over ranks. Bytes are those each rank sends per step; peak memory is
``torch.cuda.max_memory_allocated`` per GPU while the method runs. A collective micro-benchmark
(all-gather, all-reduce, send/recv over message sizes) and the HBM read ceiling are recorded for
the cost model (``leanattn.distributed.cost_model.fit_bench``). Every tree/ring output is compared
with the one-GPU decode of the same cache (same seeds).

Run (repo root, 2 GPUs; NVLink SHARP/multicast off as the issue asks; the script also sets it)::

    NCCL_NVLS_ENABLE=0 PYTHONPATH=src torchrun --nproc-per-node 2 benchmarks/bench_tree.py \
        --out benchmarks/results/tree_h200x2
    # --quick: B = 1, 512k and 1M only (about a minute); --graphs: also time CUDA-graph replays
    # CPU check of the plumbing (gloo, Triton interpreter, tiny sizes): python benchmarks/bench_tree.py --smoke

Writes ``bench_tree.json``, ``bench_tree.md`` and ``bench_tree.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # before any NCCL communicator exists
if "--smoke" in sys.argv:  # before any @triton.jit runs (common.py has one): Triton reads this once
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

K = 1024
METHODS = ("single", "local", "tree-allgather", "tree-allreduce3", "ring")


ISSUE5_CONTEXTS = (128 * K, 512 * K, 1024 * K, 2048 * K)        # 2 GPUs
ISSUE7_CONTEXTS = (512 * K, 1024 * K, 2048 * K, 4096 * K)       # 4 and 8 GPUs


def parse_tokens(text: str) -> int:
    """``"512k"`` -> 524288, ``"2M"`` -> 2097152, ``"100"`` -> 100."""
    t = text.strip().lower()
    scale = {"k": K, "m": K * K}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def token_counts(text: str) -> tuple[int, ...]:
    """``"1,4"`` -> (1, 4): ``--tokens``."""
    return tuple(int(x) for x in text.split(","))


def suite(quick: bool, smoke: bool, world: int = 2, contexts: str = "", tokens: int | tuple[int, ...] = 1):
    """The cases: issue 5's contexts on 2 GPUs, issue 7's on 4 or more, or ``contexts`` if given; ``tokens`` query
    tokens a sequence (> 1: a causal verification step of that many draft tokens), or a tuple of such counts: every
    case once for each."""
    counts = (tokens,) if isinstance(tokens, int) else tuple(tokens)
    return [dict(c, tokens=n) for n in counts for c in _suite(quick, smoke, world, contexts)]


def _suite(quick: bool, smoke: bool, world: int, contexts: str):
    if smoke:
        return [dict(B=b, hq=4, hkv=kv, d=64, ctx=n) for b in (1, 2) for kv in (2, 4) for n in (64, 160)]
    if contexts:
        ctxs = tuple(parse_tokens(x) for x in contexts.split(","))
    else:
        ctxs = ISSUE5_CONTEXTS if world <= 2 else ISSUE7_CONTEXTS
    if quick:
        return [dict(B=1, hq=32, hkv=kv, d=128, ctx=n) for kv in (8, 32) for n in ctxs[1:3]]
    return [dict(B=b, hq=32, hkv=kv, d=128, ctx=n) for b in (1, 4) for kv in (8, 32) for n in ctxs]


def case_name(c) -> str:
    n = c["ctx"]
    size = f"{n // (1024 * K)}M" if n >= 1024 * K and n % (1024 * K) == 0 else (f"{n // K}k" if n >= K else str(n))
    kind = "mha" if c["hq"] == c["hkv"] else "gqa"
    toks = f" x{c['tokens']} tokens" if c.get("tokens", 1) > 1 else ""
    return f"{kind} {c['hq']}/{c['hkv']} B={c['B']} {size}{toks}"


class Env:
    """Device, synchronisation, timing and memory, for CUDA (NCCL) or the CPU (gloo, smoke)."""

    def __init__(self, smoke: bool):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.smoke = smoke
        self.cuda = torch.cuda.is_available() and not smoke
        self.dev = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float16

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def barrier(self):
        self.sync()
        dist.barrier()
        self.sync()

    def free_bytes(self) -> int:
        if not self.cuda:
            return 1 << 40
        free, _ = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None

    def time_ms(self, fn, reps: int, collective: bool, target_ms: float = 30.0, keep: list | None = None) -> float:
        """Median over ``reps`` of the mean time of back-to-back calls (max over ranks if collective); ``keep``, a
        list, gets the first call's result."""
        if self.smoke:
            # the interpreter has nothing to compile and takes about a second a decode, past any target: no warm-up
            # or calibration call, and the result kept is the first timed call's (each call more would add about a
            # second a method to a run whose times mean nothing)
            iters = 1
        else:
            first = fn()
            if keep is not None:
                keep.append(first)
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            one = (time.perf_counter() - t) * 1e3
            iters = max(1, min(200, int(target_ms / max(one, 1e-3))))
            if collective:  # every rank must run the same number of calls
                iters = int(self.max_all(float(iters)))
        times = []
        for _ in range(reps):
            if collective:
                self.barrier()
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(iters):
                    fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / iters)
            else:
                t = time.perf_counter()
                for _ in range(iters):
                    out = fn()
                times.append((time.perf_counter() - t) * 1e3 / iters)
                if keep is not None and not keep:
                    keep.append(out)
        med = statistics.median(times)
        return self.max_all(med) if collective else med

    def max_all(self, x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64, device=self.dev if self.cuda else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def gather(self, x) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, x)
        return out


def graph_ms(env: Env, fn, reps: int, collective: bool) -> float:
    """Time CUDA-graph replays of ``fn`` (captured after warm-up on a side stream)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    settle = env.barrier if collective else env.sync
    settle()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    settle()
    return env.time_ms(g.replay, reps, collective)


def fill_kv(k: torch.Tensor, v: torch.Tensor, lo: int, hi: int, seed: int) -> None:
    """Fill tokens ``[lo, hi)`` of ``k, v (B, N, Hkv, D)`` from a generator seeded with ``seed``.

    Row by row, so the values of a half depend only on its seed and shape: a rank's shard and the
    same tokens inside the whole cache on rank 0 are equal without ever holding both.
    """
    if hi <= lo:
        return
    g = torch.Generator(device=k.device).manual_seed(seed)
    for x in (k, v):
        for b in range(x.shape[0]):
            x[b, lo:hi].normal_(generator=g)


def make_kv(env: Env, B, n, hkv, d, seed):
    """K and V ``(B, n, hkv, d)`` (see :func:`fill_kv`)."""
    k = torch.empty(B, n, hkv, d, dtype=env.dtype, device=env.dev)
    v = torch.empty_like(k)
    fill_kv(k, v, 0, n, seed)
    return k, v


def run_case(env: Env, c, args, log):
    from leanattn import decode
    from leanattn.distributed import comm_bytes, ring_decode, tree_decode
    from leanattn.distributed.shard_states import shard_states
    from leanattn.testing import rel_err

    B, hq, hkv, d, n, Lq = c["B"], c["hq"], c["hkv"], c["d"], c["ctx"], c.get("tokens", 1)
    p, r = env.world, env.rank
    bounds = [n * i // p for i in range(p + 1)]
    mine = bounds[r + 1] - bounds[r]
    item = torch.empty((), dtype=env.dtype).element_size()
    shard_bytes = [2 * B * (bounds[i + 1] - bounds[i]) * hkv * d * item for i in range(p)]
    full_bytes = 2 * B * n * hkv * d * item
    row = dict(case=case_name(c), **c, world=p, kv_bytes_total=full_bytes, kv_bytes_per_rank=shard_bytes, methods={})
    gq = torch.Generator(device=env.dev).manual_seed(1234)
    q = torch.randn(*(B, Lq)[:1 if Lq == 1 else 2], hq, d, dtype=env.dtype, device=env.dev, generator=gq)
    # drafts: the last Lq positions, all in the last rank's half; each attends the positions up to its own
    tok = None
    if Lq > 1:
        ends = torch.arange(Lq, device=env.dev) + (mine - Lq + 1 if r == p - 1 else mine)
        tok = ends.clamp(0, mine).to(torch.int32)[None].expand(B, Lq).contiguous()
    reps = args.reps
    # -- phase 1: every rank holds its half
    fits_shard = env.max_all(float(max(shard_bytes) + (4 << 30) - env.free_bytes())) <= 0
    outs = {}
    if fits_shard:
        k, v = make_kv(env, B, mine, hkv, d, seed=100 + r)
        env.barrier()
        plans = [("local", lambda: shard_states(q, k, v, tok, None, d ** -0.5), False),
                 ("tree-allgather", lambda: tree_decode(q, k, v, tok, variant="allgather"), True),
                 ("tree-allreduce3", lambda: tree_decode(q, k, v, tok, variant="allreduce3"), True)]
        # ring double-buffers: the shard it holds and the one arriving (the own shard is already allocated)
        in_flight = (1 if p == 2 else 2) * max(shard_bytes)
        fits_ring = env.max_all(float(in_flight + (4 << 30) - 0.9 * env.free_bytes())) <= 0
        if fits_ring:
            plans.append(("ring", lambda: ring_decode(q, k, v, tok), True))
        else:
            row["methods"]["ring"] = dict(skipped=f"shards in flight ({in_flight / 2**30:.1f} GiB) do not fit")
        for name, fn, coll in plans:
            env.reset_peak()
            res, got = {}, []
            try:
                res["ms"] = env.time_ms(fn, reps, coll, keep=got)
                outs[name] = got[0][0] if isinstance(got[0], tuple) else got[0]
                if args.graphs and env.cuda and name != "ring":
                    try:
                        res["graph_ms"] = graph_ms(env, fn, reps, coll)
                    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                        res["graph_error"] = f"{type(e).__name__}: {e}"[:200]
            except Exception as e:  # noqa: BLE001
                res["error"] = f"{type(e).__name__}: {e}"[:300]
                log(f"  {name}: {res['error']}")
            res["peak_bytes_per_rank"] = env.gather(env.peak())
            if name == "local":
                res["ms_per_rank"] = env.gather(res.get("ms"))
                res["ms"] = max(x for x in res["ms_per_rank"] if x is not None) if res.get("ms") else None
                res["bytes_sent_per_rank"] = 0
            else:
                meth = "ring" if name == "ring" else name.split("-")[1]
                # each query token is a row of its own to the merge
                res["bytes_sent_per_rank"] = comm_bytes(meth, B * Lq, hq, d, p, shard_bytes, r, item)["sent"]
                res["collectives"] = comm_bytes(meth, B * Lq, hq, d, p, shard_bytes=shard_bytes)["collectives"]
            row["methods"][name] = res
            log(f"  {name:16s} {res.get('ms') or float('nan'):9.3f} ms" +
                (f"  graph {res['graph_ms']:.3f} ms" if "graph_ms" in res else ""))
        del k, v, plans
    else:
        for name in ("local", "tree-allgather", "tree-allreduce3", "ring"):
            row["methods"][name] = dict(skipped=f"a shard of {max(shard_bytes) / 2**30:.1f} GiB does not fit")
    if env.cuda:
        torch.cuda.empty_cache()
    # -- phase 2: rank 0 alone decodes the whole cache (the halves, concatenated: same seeds)
    env.barrier()
    fits_full = full_bytes + (6 << 30) <= env.free_bytes()
    res = {}
    if r == 0 and fits_full:
        try:
            kf = torch.empty(B, n, hkv, d, dtype=env.dtype, device=env.dev)
            vf = torch.empty_like(kf)
            for i in range(p):
                fill_kv(kf, vf, bounds[i], bounds[i + 1], seed=100 + i)
            env.reset_peak()
            fn = lambda: decode(q, kf, vf, causal=Lq > 1)  # noqa: E731
            got = []
            res["ms"] = env.time_ms(fn, reps, False, keep=got)
            ref = got[0]
            if args.graphs and env.cuda:
                try:
                    res["graph_ms"] = graph_ms(env, fn, reps, False)
                except Exception as e:  # noqa: BLE001
                    res["graph_error"] = f"{type(e).__name__}: {e}"[:200]
            res["peak_bytes_per_rank"] = [env.peak()] + [None] * (p - 1)
            res["bytes_sent_per_rank"] = 0
            res["err_vs_single"] = {name: rel_err(o, ref) for name, o in outs.items() if name != "local"}
            del kf, vf, ref, got, fn
            log(f"  {'single':16s} {res['ms']:9.3f} ms")
        except Exception as e:  # noqa: BLE001 - rank 0 alone: no peer waits on it
            res = dict(error=f"{type(e).__name__}: {e}"[:300])
            log(f"  single: {res['error']}")
    elif r == 0:
        res["skipped"] = f"the whole cache ({full_bytes / 2**30:.1f} GiB) does not fit in one GPU"
    res = env.gather(res)[0]
    row["methods"]["single"] = res
    if env.cuda:
        torch.cuda.empty_cache()
    env.barrier()
    return row


def collectives_bench(env: Env, smoke: bool, graphs: bool = False) -> list[dict]:
    """Time all-gather (bytes per rank), all-reduce and a ring send/recv over message sizes.

    With ``graphs`` (CUDA only) the all-gather and all-reduce are also timed as CUDA-graph replays
    (``*_graph_us``): the cost inside a captured decode step, without the host's launch time.
    """
    sizes = [256 * 4 ** i for i in range(4 if smoke else 10)]  # 256 B .. 64 MiB
    dev = env.dev if env.cuda else torch.device("cpu")
    p, r = env.world, env.rank
    rows = []
    ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    for size in sizes:
        n = size // 4
        x = torch.ones(n, dtype=torch.float32, device=dev)
        y = torch.empty(p * n, dtype=torch.float32, device=dev)
        z = torch.empty(n, dtype=torch.float32, device=dev)

        def sendrecv():
            ops = [dist.P2POp(dist.isend, x, (r + 1) % p), dist.P2POp(dist.irecv, z, (r - 1) % p)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        row = dict(bytes=size)
        for name, fn in (("all_gather", lambda: ag(y, x)), ("all_reduce", lambda: dist.all_reduce(x)),
                         ("sendrecv", sendrecv)):
            row[name + "_us"] = 1e3 * env.time_ms(fn, 3 if smoke else 5, True, target_ms=5 if smoke else 10)
            if graphs and env.cuda and name != "sendrecv":
                try:
                    row[name + "_graph_us"] = 1e3 * graph_ms(env, fn, 5, True)
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    row[name + "_graph_error"] = f"{type(e).__name__}: {e}"[:200]
        rows.append(row)
    return rows


def single_fit(rows, key: str):
    """Line ``ms = a + b * bytes`` through the run's measured one-GPU rows (``key`` = ms or graph_ms)."""
    from leanattn.distributed.cost_model import fit_line
    pts = [(r["kv_bytes_total"], r["methods"]["single"][key]) for r in rows
           if r["methods"].get("single", {}).get(key)]
    return fit_line(*zip(*pts)) if len(pts) >= 2 else None


def single_ms(row, rows, key: str):
    """(ms, scaled): the one-GPU time of ``row``; scaled from the run's line when the cache did not fit."""
    x = row["methods"].get("single", {}).get(key)
    if x:
        return x, False
    # a decode of several query tokens costs more than one token's over the same bytes: its own rows only
    line = single_fit([r for r in rows if r.get("tokens", 1) == row.get("tokens", 1)], key)
    return (line[0] + line[1] * row["kv_bytes_total"], True) if line else (None, False)


def speedups(row, rows) -> dict:
    """tree-allgather over one GPU and over ring: from CUDA-graph times where both have them, else eager."""
    m = row["methods"]
    out = {}
    for key in ("graph_ms", "ms"):
        ag = m.get("tree-allgather", {}).get(key)
        one, scaled = single_ms(row, rows, key)
        if ag and one and "vs_single" not in out:
            out.update(vs_single=one / ag, vs_single_timing=key, vs_single_scaled=scaled)
    ag, ring = m.get("tree-allgather", {}).get("ms"), m.get("ring", {}).get("ms")
    if ag and ring:
        out["vs_ring"] = ring / ag  # ring is never captured (its P2P schedule is host-driven): eager vs eager
    return out


def table(rows) -> str:
    header = ["case", "single ms", "local ms", "tree-AG ms", "tree-AR3 ms", "ring ms", "single graph ms",
              "local graph ms", "tree-AG graph ms", "tree-AR3 graph ms", "tree-AG vs single", "tree-AG vs ring",
              "AG bytes/step", "ring bytes/step", "peak GiB/GPU (tree, ring, single)", "max err"]
    out = []

    def ms(m, name, key="ms"):
        x = m.get(name, {})
        return x.get(key) if x.get(key) is not None else ("skip" if "skipped" in x else "-")

    def peak(m, name):
        x = m.get(name, {}).get("peak_bytes_per_rank")
        vals = [v for v in (x or []) if v]
        return f"{max(vals) / 2**30:.1f}" if vals else "-"

    for row in rows:
        m = row["methods"]
        sp = speedups(row, rows)
        sp1 = (f"{sp['vs_single']:.2f}x" + (" (graphs)" if sp["vs_single_timing"] == "graph_ms" else "") +
               (" vs scaled" if sp["vs_single_scaled"] else "")) if "vs_single" in sp else "-"
        sp2 = f"{sp['vs_ring']:.2f}x" if "vs_ring" in sp else "-"
        single, scaled = single_ms(row, rows, "ms")
        single_g, scaled_g = single_ms(row, rows, "graph_ms")
        errs = m.get("single", {}).get("err_vs_single", {})
        err = f"{max(errs.values()):.1e}" if errs else "-"
        out.append([row["case"], (f"~{single:.3g} (scaled)" if scaled else single) if single else ms(m, "single"),
                    ms(m, "local"), ms(m, "tree-allgather"), ms(m, "tree-allreduce3"), ms(m, "ring"),
                    (f"~{single_g:.3g} (scaled)" if scaled_g else single_g) if single_g else "-",
                    ms(m, "local", "graph_ms"), ms(m, "tree-allgather", "graph_ms"),
                    ms(m, "tree-allreduce3", "graph_ms"), sp1, sp2,
                    m.get("tree-allgather", {}).get("bytes_sent_per_rank", "-"),
                    m.get("ring", {}).get("bytes_sent_per_rank", "-"),
                    f"{peak(m, 'tree-allgather')}, {peak(m, 'ring')}, {peak(m, 'single')}", err])
    return common.markdown_table(header, out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["B"], r["hq"], r["hkv"], r.get("tokens", 1)) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, grp in zip(axes[0], groups):
        sel = sorted([r for r in rows if (r["B"], r["hq"], r["hkv"], r.get("tokens", 1)) == grp],
                     key=lambda r: r["ctx"])
        for name, key, style in (("single", "ms", "k-o"), ("tree-allgather", "ms", "C0-s"),
                                 ("tree-allreduce3", "ms", "C1-^"), ("ring", "ms", "C3-v"), ("local", "ms", "C7:"),
                                 ("single", "graph_ms", "k--o"), ("tree-allgather", "graph_ms", "C0--s")):
            pts = [(r["ctx"], r["methods"].get(name, {}).get(key)) for r in sel]
            pts = [(x, y) for x, y in pts if y]
            if pts:
                ax.plot(*zip(*pts), style, label=name + (" (graph)" if key == "graph_ms" else ""),
                        mfc="none" if key == "graph_ms" else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"B={grp[0]} heads {grp[1]}/{grp[2]}" + (f" x{grp[3]} tokens" if grp[3] > 1 else ""))
        ax.set_xlabel("context tokens (total)")
        ax.set_ylabel("ms per decode step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def worker(rank: int, world: int, args) -> dict | None:
    """The whole benchmark on one rank (after the process group exists)."""
    env = Env(args.smoke)
    log = print if rank == 0 else (lambda *a, **k: None)
    t0 = time.time()
    info = common.env_info()
    info.update(world=world, backend=dist.get_backend(), nccl_nvls_enable=os.environ.get("NCCL_NVLS_ENABLE"),
                nccl=".".join(map(str, torch.cuda.nccl.version())) if env.cuda else None)
    bw = common.read_bandwidth_gbs() if env.cuda else {}
    log(f"bench_tree: {info.get('device')} x{world}, read ceiling {bw.get('read_ceiling', float('nan')):.0f} GB/s")
    coll = collectives_bench(env, args.smoke, args.graphs)
    for c in coll:
        log(f"  {c['bytes']:>9d} B  all_gather {c['all_gather_us']:8.1f} us  all_reduce {c['all_reduce_us']:8.1f} us"
            f"  sendrecv {c['sendrecv_us']:8.1f} us" +
            (f"  graphs: all_gather {c['all_gather_graph_us']:7.1f} us" if "all_gather_graph_us" in c else "") +
            (f" all_reduce {c['all_reduce_graph_us']:7.1f} us" if "all_reduce_graph_us" in c else ""))
    rows = []
    for c in suite(args.quick, args.smoke, world, args.contexts, args.tokens):
        if args.cases and not any(s in case_name(c) for s in args.cases.split(",")):
            continue
        log(case_name(c))
        rows.append(run_case(env, c, args, log))
    for row in rows:
        row["speedups"] = speedups(row, rows)
    payload = dict(env=info, bandwidth=bw, collectives=coll, rows=rows, seconds=time.time() - t0,
                   command=" ".join(sys.argv))
    if rank == 0:
        md = (f"# Tree attention decode, {info.get('device')} x{world} ({info.get('backend')}, "
              f"NCCL_NVLS_ENABLE={info.get('nccl_nvls_enable')})\n\n"
              f"{info.get('date')}, torch {info.get('torch')}, triton {info.get('triton')}, "
              f"read ceiling {bw.get('read_ceiling', float('nan')):.0f} GB/s. Latency: median of back-to-back steps "
              f"(CUDA events, after a barrier), max over ranks. Bytes: sent per rank per step. "
              f"Graph: the same step captured in a CUDA graph and replayed (no host time; ring is not captured). "
              f"Speedups use graph times where both sides have them. '(scaled)': the cache does not fit in one "
              f"GPU; the one-GPU time is the line through this run's measured one-GPU rows at its bytes. "
              f"max err: relative error of tree/ring outputs vs the one-GPU decode.\n\n" + table(rows))
        paths = common.write_results(args.out, "bench_tree", payload, md)
        try:
            plot(rows, os.path.join(args.out, "bench_tree.png"))
            paths.append(os.path.join(args.out, "bench_tree.png"))
        except Exception as e:  # noqa: BLE001
            print(f"plot failed: {e}")
        print(md)
        print("wrote " + ", ".join(paths) + f" in {time.time() - t0:.0f} s")
    return payload if rank == 0 else None


def _spawned(rank, world, args):
    return worker(rank, world, args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/tree", help="folder for bench_tree.{json,md,png}")
    ap.add_argument("--quick", action="store_true", help="B=1, the middle two contexts only")
    ap.add_argument("--contexts", default="", help="comma-separated total contexts, e.g. 512k,1M,2M,4M "
                    "(default: 128k..2M on 2 GPUs, 512k..4M on 4 or more)")
    ap.add_argument("--graphs", action="store_true", help="also time CUDA-graph replays (tree, local, single)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; 1 with --smoke)")
    ap.add_argument("--tokens", type=token_counts, default=(1,),
                    help="query tokens a sequence: > 1 times a causal verification step of that many draft tokens "
                    "(speculative decoding, multi-token prediction); comma-separated counts run every case for each")
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names to keep")
    ap.add_argument("--smoke", action="store_true", help="CPU: gloo, Triton interpreter, tiny sizes")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.smoke else 5
    if not args.smoke and not torch.cuda.is_available():
        print("bench_tree needs CUDA GPUs (or --smoke for a tiny CPU run)")
        return 2
    if "RANK" in os.environ:  # torchrun
        if args.smoke:
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        else:
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=300),
                                    device_id=torch.device("cuda", local))
        try:
            worker(dist.get_rank(), dist.get_world_size(), args)
        finally:
            dist.destroy_process_group()
        return 0
    if not args.smoke:
        print("run under torchrun (see the module docstring), or pass --smoke for a CPU check")
        return 2
    from leanattn.distributed import spawn
    spawn(_spawned, 2, (args,), deadline=900, group_timeout=300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
