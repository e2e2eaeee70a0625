"""Where the time of one sparse attention call goes: host time, launches, and the profiler's tables.

    PYTHONPATH=src python3 benchmarks/profile_sparse.py [--B 8 --H 12 --N 4096] [--cases qk:0.0,hash:1,qk:0.8]

For every case (mode:param), forward and forward+backward:

* ``host``: host time per call of 10 back-to-back calls before synchronizing (what the Python
  path and the launches cost while the GPU queue is not full); ``wall``: the same with the
  synchronization, per call;
* ``tiny wall``: wall time per call at B=1, H=1, N=256, where the kernels are tiny, so it is the
  whole host cost of a call;
* ``aten ops`` (top-level torch ops, the custom ops' insides included) and ``triton launches``
  per call; on CUDA also ``gpu kernels``, the kernels the profiler saw per call (a sort counts
  several).

Then the profiler's tables for the first case. On a CPU (no CUDA) only the counts are printed:
kernels run under the interpreter there.
"""
import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import triton  # noqa: E402
from bench_sparse import D, make_pattern, run_ours  # noqa: E402


_LAUNCH = "triton launch"


def _top_level_ops(events) -> int:
    """aten ops not called from inside another aten op (custom ops' insides count, composites
    once) nor from a Triton launch (the interpreter's own copies)."""
    n = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::") and p.name != _LAUNCH:
            p = p.cpu_parent
        n += p is None
    return n


class _CountLaunches:
    """Counts Triton launches (``JITFunction.run``, or the interpreter's ``InterpretedFunction.run``);
    an autotuned kernel counts once."""

    def __enter__(self):
        from triton.runtime.interpreter import InterpretedFunction
        self.n = 0
        self._saved = [(cls, cls.run) for cls in (triton.runtime.jit.JITFunction, InterpretedFunction)]
        for cls, orig in self._saved:
            cls.run = self._wrap(orig)
        return self

    def _wrap(self, orig):
        def run(fn, *args, **kwargs):
            if not kwargs.get("warmup", False):
                self.n += 1
            with torch.profiler.record_function(_LAUNCH):
                return orig(fn, *args, **kwargs)
        return run

    def __exit__(self, *exc):
        for cls, orig in self._saved:
            cls.run = orig


def _count(fn, cuda: bool, n: int = 5) -> dict:
    """Per call: top-level aten ops, Triton launches and (CUDA) kernels that ran on the GPU."""
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with _CountLaunches() as launches, torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            fn()
        _sync()
    events = prof.events()
    out = {"aten ops": _top_level_ops(events) / n, "triton launches": launches.n / n}
    if cuda:
        out["gpu kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / n
    return out


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _host_and_wall(fn, n=10):
    _sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e3
    _sync()
    wall = (time.perf_counter() - t) / n * 1e3
    return host, wall


def _calls(mode, param, B, N, H, device, dtype):
    q, k, v = (torch.randn(B, N, H, D, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
    a, b = make_pattern(mode, param, B, N, H, device)
    dout = torch.randn_like(q)

    def fwd():
        return run_ours(mode, q, k, v, a, b)

    def both():
        run_ours(mode, q, k, v, a, b).backward(dout)
    return fwd, both


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--cases", default="qk:0.0,hash:1,qk:0.8",
                    help="mode:param,... (qk: drop rate, hash: buckets)")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--json", default="", help="also write the summary here")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = (args.B, args.N, args.H) if cuda else (1, 64, 2)  # the interpreter is slow: counts only on a CPU
    cases = [(m, float(p) if m == "qk" else int(p)) for m, p in (c.split(":") for c in args.cases.split(","))]
    summary = []
    for mode, param in cases:
        row = dict(mode=mode, param=param, B=shape[0], N=shape[1], H=shape[2])
        fwd, both = _calls(mode, param, shape[0], shape[1], shape[2], device, dtype)
        for _ in range(3):
            both()
        for what, fn in (("fwd", fwd), ("fwd+bwd", both)):
            for name, x in _count(fn, cuda).items():
                row[f"{what} {name}"] = x
            if cuda:
                row[f"{what} host ms"], row[f"{what} wall ms"] = _host_and_wall(fn)
        if cuda:
            tf, tb = _calls(mode, param, 1, 256, 1, device, dtype)
            for _ in range(3):
                tb()
            row["tiny fwd wall ms"] = _host_and_wall(tf, 200)[1]
            row["tiny fwd+bwd wall ms"] = _host_and_wall(tb, 200)[1]
        summary.append(row)
        print(json.dumps(row), flush=True)
    if cuda:
        mode, param = cases[0]
        _, both = _calls(mode, param, *shape, device, dtype)
        both()
        _sync()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                both()
            _sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
    keys = [k for k in summary[0] if k not in ("mode", "param", "B", "N", "H")]
    print("\n| case | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for r in summary:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print(f"| {r['mode']} {r['param']} B={r['B']} N={r['N']} H={r['H']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if cuda else "cpu", rows=summary), f, indent=1)


if __name__ == "__main__":
    main()
