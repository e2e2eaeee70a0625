"""Shared benchmark plumbing: environment record, bandwidth ceiling, timing, result files.

Every result file records device, torch/triton versions, date, shapes, times, achieved GB/s or
TFLOP/s, the peers measured in the same run and the measured bandwidth ceiling.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "src") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "src"))


# torch.compile's inductor points TRITON_PTXAS_PATH at torch's own ptxas for the rest of the process
# the first time it compiles (torch/_inductor/runtime/compile_tasks.py, _set_triton_ptxas_path), so
# in a benchmark our kernels would compile with Triton's ptxas before the flex peer first runs and
# with torch's after it: on the H200 image one launch of ours took 192 registers under one and 168
# with spills under the other (2026-12-01). Ours compile with what the process had at start.
_PTXAS_AT_START = os.environ.get("TRITON_PTXAS_PATH")


def compiled_as_at_start(fn):
    """``fn`` whose first call (where Triton compiles) runs with the ``TRITON_PTXAS_PATH`` the process
    started with; later calls (timed, or captured in a graph) are ``fn`` itself."""
    state = {"first": True}

    def call():
        if not state["first"]:
            return fn()
        state["first"] = False
        now = os.environ.get("TRITON_PTXAS_PATH")
        set_env("TRITON_PTXAS_PATH", _PTXAS_AT_START)
        try:
            return fn()
        finally:
            set_env("TRITON_PTXAS_PATH", now)
    call.form = getattr(fn, "form", "")
    return call


def set_env(name, value) -> None:
    """Set the environment variable ``name`` to ``value``, or remove it for None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def with_env(name, value, fn):
    """``fn`` run with the environment variable ``name`` set to ``value`` (restored after): plans keyed
    on it are made, and captured, under that value."""
    def call():
        before = os.environ.get(name)
        set_env(name, value)
        try:
            return fn()
        finally:
            set_env(name, before)
    return call


def env_info() -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "ptxas_ours": _PTXAS_AT_START or "triton's bundled ptxas",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, sms=p.multi_processor_count, cuda=torch.version.cuda,
                    memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info.update(device="cpu")
    return info


@triton.jit
def _read_kernel(X, Partial, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    # each program streams ITERS contiguous blocks; the sum keeps the loads alive
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * BLOCK * ITERS
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(X + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(Partial + pid, tl.sum(acc, 0))


def bench(fn, warmup: int = 25, rep: int = 100, flush: str = "write", calls: int = 50) -> float:
    """Median time of ``fn`` in milliseconds, L2 flushed before every call.

    ``flush="write"``: triton's ``do_bench`` (``warmup``/``rep`` in ms), whose flush zeroes 256 MB, so an
    L2 full of dirty lines is written back while ``fn`` runs. ``flush="read"``: the flush streams 256 MB
    through a read kernel instead (clean lines, nothing to write back), ``calls`` timed calls after 5
    warm-up calls. H200, same process: every decode case, ours and cuDNN alike, ran 8-9 us faster under the read
    flush; a 4 GiB read 0.8% faster (benchmarks/results/decode_probes_H200_2026-12-01.md, probe 8).
    """
    if flush == "write":
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    if flush != "read":
        raise ValueError(f"flush: expected 'write' or 'read', got {flush!r}")
    if "x" not in _CLEAN_FLUSH:
        n = 128 * 2**20  # 256 MB of bf16: several times the L2
        _CLEAN_FLUSH.update(x=torch.randn(n, dtype=torch.bfloat16, device="cuda"), n=n, grid=triton.cdiv(n, 4096 * 4))
        _CLEAN_FLUSH["part"] = torch.empty(_CLEAN_FLUSH["grid"], dtype=torch.float32, device="cuda")
    c = _CLEAN_FLUSH

    def flush_l2():
        _read_kernel[(c["grid"],)](c["x"], c["part"], c["n"], BLOCK=4096, ITERS=4, num_warps=8)
    for _ in range(5):
        flush_l2()
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    for s, e in zip(start, end):
        flush_l2()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(start, end))


_CLEAN_FLUSH: dict = {}


def read_bandwidth_gbs(gib: float = 4.0) -> dict:
    """Measured HBM read ceiling: best of a streaming Triton read kernel and ``torch.sum``."""
    n = int(gib * 2**30) // 2
    x = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    out = {}
    block, iters = 4096, 16
    grid = triton.cdiv(n, block * iters)
    partial = torch.empty(grid, dtype=torch.float32, device="cuda")
    read = lambda: _read_kernel[(grid,)](x, partial, n, BLOCK=block, ITERS=iters, num_warps=8)  # noqa: E731
    ms = bench(read)
    out["triton_read"] = 2 * n / ms / 1e6
    # the same read timed after a clean (read) flush: the ceiling of times taken with flush="read"
    out["read_ceiling_clean_flush"] = 2 * n / bench(read, flush="read", calls=20) / 1e6
    ms = bench(lambda: x.sum(dtype=torch.float32))
    out["torch_sum"] = 2 * n / ms / 1e6
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    out["copy_read_plus_write"] = 4 * n / ms / 1e6
    out["read_ceiling"] = max(out["triton_read"], out["torch_sum"])
    out["read_ceiling_clean_flush"] = max(out["read_ceiling_clean_flush"], out["read_ceiling"])
    del x, y
    torch.cuda.empty_cache()
    return out


def matmul_tflops(n: int = 8192) -> float:
    """Measured dense bf16 matmul rate (``n``^3, TFLOP/s): the compute ceiling of FLOP floors."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    ms = bench(lambda: a @ b)
    del a, b
    return 2 * n ** 3 / ms / 1e9


def write_results(out_dir: str, stem: str, payload: dict, table_md: str, plot=None) -> list[str]:
    """Write ``stem.json`` and ``stem.md`` under ``out_dir`` and, with ``plot`` (a function of the PNG path),
    ``stem.png``; a plot that fails is reported and left out. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")]
    with open(paths[0], "w") as f:
        json.dump(payload, f, indent=1, default=str)
    with open(paths[1], "w") as f:
        f.write(table_md)
    if plot is not None:
        png = os.path.join(out_dir, f"{stem}.png")
        try:
            plot(png)
            paths.append(png)
        except Exception as e:  # noqa: BLE001 - the numbers are written; a plot is not worth failing the run for
            print(f"plot failed: {e}", flush=True)
    return paths


# a variant probe's --variants flag (probe_args' extra), read by names()
VARIANTS_ARG = ("--variants", dict(default="", help="comma-separated variants (default: all)"))


def names(csv: str):
    """The set of names in the comma-separated ``csv``, or ``None`` (all) for an empty one."""
    return set(csv.split(",")) if csv else None


def probe_args(doc: str, argv=None, extra=()):
    """A probe's command line (``--out DIR``, ``--cases A,B``, and ``extra``: ``(flag, add_argument keywords)``
    pairs; ``doc``'s first line the description): ``(args, want)``, ``want`` the set of case names asked for or
    ``None`` for all."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    args = ap.parse_args(argv)
    return args, names(args.cases)


def probe_start(doc: str, argv=None, extra=()):
    """A probe's start: its command line (``probe_args``), the default generator seeded with 0, and the read ceiling
    measured in this process (GB/s): ``(args, want, ceiling)``."""
    args, want = probe_args(doc, argv, extra)
    torch.manual_seed(0)
    return args, want, read_bandwidth_gbs()["read_ceiling"]


def write_probe(out_dir: str, name: str, **payload) -> str:
    """Write a probe's ``payload`` with the environment (``env_info``) to ``out_dir/name`` as JSON; print and
    return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(dict(env=env_info(), **payload), f, indent=1)
    print("wrote", path)
    return path


def plot_probe(json_path: str, base: str, png_path: str, title: str) -> str:
    """Grouped bars of a variant probe's medians (``write_probe``'s ``cases``, each with ``median``: variant -> us),
    each over variant ``base``'s median in the same case (lower is faster); written to ``png_path``, returned."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(json_path) as f:
        probe = json.load(f)
    cases = probe["cases"]
    # every variant any case ran, in first-seen order; a case without one leaves its bar out
    variants = list(dict.fromkeys(n for c in cases for n in c["median"]))
    fig, ax = plt.subplots(figsize=(max(8, 0.2 * len(variants) * len(cases)), 4.5))
    width = 0.8 / len(variants)
    for i, name in enumerate(variants):
        at = [(j, c["median"][name] / c["median"][base]) for j, c in enumerate(cases) if name in c["median"]]
        bars = ax.bar([j + (i - (len(variants) - 1) / 2) * width for j, _ in at], [y for _, y in at], width,
                      label=name)
        ax.bar_label(bars, labels=[f"{y:.2f}" for _, y in at], fontsize=6)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["case"] for c in cases], fontsize=8, rotation=20, ha="right")
    ax.set_ylabel(f"time / {base} (same run)")
    env = probe.get("env", {})
    ax.set_title(f"{title}\n{env.get('device', '')}, {env.get('date', '')[:16]}, torch {env.get('torch', '')}, "
                 f"triton {env.get('triton', '')}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print("wrote", png_path)
    return png_path


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def geomean(xs) -> float:
    xs = [x for x in xs if x and x > 0]
    return statistics.geometric_mean(xs) if xs else float("nan")


def time_graph(fn, warmup=10, rep=40, flush="write"):
    """Median us of ``fn`` replayed from a CUDA graph (eager if capture fails), L2 flushed (``bench``'s ``flush``)."""
    from bench_decode import graph_of
    g = graph_of(fn)
    ms = bench(g.replay if g is not None else fn, warmup=warmup, rep=rep, flush=flush)
    del g
    return ms * 1e3


def warm_then_once(fns, profiler_range: bool = False) -> list:
    """For Nsight Compute: two calls of each of ``fns`` (the first compiles, the second takes the direct launch
    path), then one more of each, whose results are returned. ``profiler_range`` brackets those last calls in
    ``cudaProfilerStart``/``Stop``, for ``ncu --profile-from-start off``."""
    for _ in range(2):
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    if profiler_range:
        torch.cuda.cudart().cudaProfilerStart()
    outs = [fn() for fn in fns]
    torch.cuda.synchronize()
    if profiler_range:
        torch.cuda.cudart().cudaProfilerStop()
    return outs


def launch_latency_us():
    """An empty kernel (one program) replayed from a CUDA graph, timed as the cases are."""
    x = torch.zeros(1, device="cuda")
    part = torch.empty(1, dtype=torch.float32, device="cuda")
    return time_graph(lambda: _read_kernel[(1,)](x, part, 0, BLOCK=128, ITERS=1, num_warps=4), rep=100)


def stream_read_fn(nbytes):
    """One launch of the streaming read kernel over ``nbytes`` of fresh bf16, as a zero-argument call (its
    closure holds the buffers): what a kernel that reads those bytes once takes, launch and ramp included."""
    n = int(nbytes) // 2
    x = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    block, iters = 4096, 4
    grid = triton.cdiv(n, block * iters)
    part = torch.empty(grid, dtype=torch.float32, device="cuda")
    return lambda: _read_kernel[(grid,)](x, part, n, BLOCK=block, ITERS=iters, num_warps=8)


def stream_read_us(nbytes, flush="write"):
    """``stream_read_fn(nbytes)`` replayed from a CUDA graph with the L2 flushed (``bench``'s ``flush``), us:
    the practical floor of a kernel that reads those bytes once."""
    return time_graph(stream_read_fn(nbytes), flush=flush)
