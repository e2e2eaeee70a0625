"""Where the time of ``leanattn.bifurcated_decode`` goes, on the bar cases of the bifurcated issue.

For each case (bf16, D=128, one prompt, 256 own tokens per sample) this prints and records

* the floors: bytes read once (prefix once + own tokens + q/out) over the measured read ceiling,
  the prefix pass's FLOPs over the measured bf16 matmul rate, and what a plain streaming read of
  the same bytes takes in one launch (the floor a single kernel can reach, launch included);
* the launch latency: an empty kernel replayed from a CUDA graph, timed like everything else;
* ours under each launch config of ``--configs`` (``LEANATTN_BIFURCATED_CONFIG`` strings, see
  ``ops/bifurcated.py``), checked against the float64 reference on a few samples first, with the
  plan's launch facts (kernel, grid, registers, spills, occupancy, tiles);
* the two passes alone (prefix only: no own cache; own only: an empty prefix) under the default
  config, and ``leanattn.decode`` over copied caches.

Compiles dominate a cold run, so ``--precompile N`` first runs every (case, config) once in N
worker processes (Triton's on-disk cache is shared), then times in this process.

    python benchmarks/profile_bifurcated.py [--cases 'gqa 8k x16,...'] [--configs ';0,0,0,0,0,0,0,2'] \
        [--precompile 12] [--label new] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import launch_latency_us, stream_read_us, time_graph  # noqa: E402
from bench_bifurcated import K, case_bytes, case_flops, check_samples, make_inputs, reference_of  # noqa: E402

import leanattn  # noqa: E402
from leanattn.testing import TOLERANCE, rel_err  # noqa: E402

BAR_CASES = ["gqa 8k x1", "gqa 8k x16", "gqa 8k x32", "gqa 8k x64", "mha 8k x1", "mha 8k x16", "mha 8k x32",
             "mha 8k x64", "gqa 32k x16", "mha 32k x16"]
ENV = "LEANATTN_BIFURCATED_CONFIG"


def parse_case(name):
    model, prefix, n = name.split()
    hq, hkv = {"mha": (32, 32), "gqa": (32, 8)}[model]
    return dict(name=name, model=model, hq=hq, hkv=hkv, d=128, prefix=int(prefix[:-1]) * K, samples=int(n[1:]),
                own=256)


def call_ours(inp, config, phase="both"):
    """One call under ``config``; ``phase`` "prefix" drops the own cache, "own" empties the prefix."""
    from leanattn.ops import bifurcated as bif
    if config:
        os.environ[ENV] = config
    else:
        os.environ.pop(ENV, None)
    q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
    if phase == "prefix":
        return bif._bifurcated_impl(q, pk.unsqueeze(0), pv.unsqueeze(0), None, None, None, None, None, None,
                                    q.shape[-1] ** -0.5, 0, 0, 0, 0)[0]
    if phase == "own":
        pk, pv = pk[:0], pv[:0]
    return leanattn.bifurcated_decode(q, pk, pv, k, v, lens)


def last_info():
    from leanattn.ops import bifurcated as bif
    plan = next(reversed(bif._PLANS.values()))
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in plan.info.items()}


def states_launches(inp):
    """The launches of the last plan if it took the ``states`` path, each a callable: the prefix and
    own split states, and the merge launch if the rows are not merged in-kernel."""
    from leanattn.ops import bifurcated as bif
    from leanattn.ops import bifurcated_launch as launch
    plan = next(reversed(bif._PLANS.values()))
    if plan.path != "states":
        return {}
    q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
    pk, pv = pk.unsqueeze(0), pv.unsqueeze(0)
    st_o, st_l, arrivals = plan.states
    d = plan.dummy_i32
    out, lse = torch.empty_like(q), torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    parts = {"states": lambda: launch.bifurcated_states_kernel[plan.grid](
        q, pk, pv, k, v, st_o, st_l, arrivals, out, lse, d, d, d, d, lens, d, d, d, *plan.tail, **plan.meta)}
    if not plan.merge_in_kernel:
        m = plan.launch_merge
        parts["merge"] = lambda: m.kernel[m.grid](st_o, st_l, out, lse, *m.scalars, **m.meta)
    return parts


def _precompile_worker(args):
    names, configs, phases = args
    torch.manual_seed(0)
    for name in names:
        c = parse_case(name)
        inp = make_inputs(c, "cuda", copies=False)
        for cfg in configs:
            for phase in (phases if cfg == configs[0] else ("both",)):
                try:
                    call_ours(inp, cfg, phase)
                except Exception as e:  # reported again, with its error, when timed
                    print(f"precompile {name} {cfg!r} {phase}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        torch.cuda.synchronize()
        del inp
    return len(names)


def precompile(cases, configs, workers, phases=True):
    """Run every (case, config) once, spread over ``workers`` processes: fills Triton's cache."""
    import multiprocessing as mp
    jobs = [([c], [cfg], ("both", "prefix", "own") if phases and cfg == configs[0] else ("both",)) for c in cases
            for cfg in configs]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_precompile_worker, jobs, chunksize=1)


def profile_case(c, configs, ceilings, phases, log):
    prefix_b, own_b, qo_b, copied_b = case_bytes(c)
    nbytes = prefix_b + own_b + qo_b
    io_us = nbytes / ceilings["read_gbs"] / 1e3
    flop_us = case_flops(c) / ceilings["matmul_tflops"] / 1e6
    row = dict(case=c["name"], bytes=nbytes, io_floor_us=io_us, flop_floor_us=flop_us,
               stream_read_us=stream_read_us(nbytes), configs={}, phases={})
    inp = make_inputs(c, "cuda", copies=phases)
    idx = torch.tensor(check_samples(c["samples"]), device="cuda")
    ref = reference_of(inp, idx)
    tol = TOLERANCE[torch.bfloat16]
    for cfg in configs:
        try:
            out = call_ours(inp, cfg)
            err = rel_err(out[idx], ref)
            if not err <= tol:
                raise RuntimeError(f"wrong result: rel err {err:.2e}")
            info = last_info()
            parts = {name: time_graph(fn) for name, fn in states_launches(inp).items()}
            us = time_graph(lambda: call_ours(inp, cfg))
            row["configs"][cfg] = dict(us=us, err=err, info=info, launches=parts)
            if parts:
                info = dict(info, launches_us={n: round(t, 1) for n, t in parts.items()})
            log(f"  {c['name']:12s} cfg={cfg!r:24s} {us:8.1f} us  x{us / io_us:5.2f} IO floor  err {err:.1e}  {info}")
        except Exception as e:
            row["configs"][cfg] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
            log(f"  {c['name']:12s} cfg={cfg!r:24s} FAILED {row['configs'][cfg]['error']}")
    if phases:
        cfg = configs[0]
        for phase in ("prefix", "own"):
            try:
                call_ours(inp, cfg, phase)
                row["phases"][phase] = dict(us=time_graph(lambda: call_ours(inp, cfg, phase)), info=last_info())
            except Exception as e:
                row["phases"][phase] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
        try:
            args = (inp["q"], inp["kc"], inp["vc"], inp["lens_c"])
            out = leanattn.decode(*args)
            row["phases"]["decode_copied"] = dict(us=time_graph(lambda: leanattn.decode(*args)),
                                                  err=rel_err(out[idx], ref))
        except Exception as e:
            row["phases"]["decode_copied"] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
        log(f"  {c['name']:12s} phases " + ", ".join(f"{k} {v.get('us', float('nan')):.1f} us"
                                                      for k, v in row["phases"].items()))
    os.environ.pop(ENV, None)
    del inp
    torch.cuda.empty_cache()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(BAR_CASES), help="comma-separated case names, or 'all' (the bench suite)")
    ap.add_argument("--configs", default="", help="';'-separated LEANATTN_BIFURCATED_CONFIG strings ('' = default)")
    ap.add_argument("--x1-configs", default=None, help="configs for 1-sample cases (default: --configs)")
    ap.add_argument("--precompile", type=int, default=0, help="worker processes that compile first (0: none)")
    ap.add_argument("--precompile-only", action="store_true")
    ap.add_argument("--no-phases", action="store_true")
    ap.add_argument("--label", default="new")
    ap.add_argument("--best-out", default="", help="write the config with the lowest geometric-mean time over the "
                                                   "multi-sample cases to this file")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    if args.cases == "all":
        from bench_bifurcated import suite
        cases = suite()
    else:
        cases = [parse_case(n.strip()) for n in args.cases.split(",") if n.strip()]
    configs = args.configs.split(";")
    x1_configs = configs if args.x1_configs is None else args.x1_configs.split(";")
    t0 = time.time()
    if args.precompile:
        phases = not args.no_phases
        precompile([c["name"] for c in cases if c["samples"] > 1], configs, args.precompile, phases)
        precompile([c["name"] for c in cases if c["samples"] == 1], x1_configs, args.precompile, phases)
        print(f"[{args.label}] precompiled in {time.time() - t0:.0f} s", flush=True)
    if args.precompile_only:
        return 0
    info = common.env_info()
    bw = common.read_bandwidth_gbs(2.0)
    ceilings = dict(read_gbs=bw["read_ceiling"], matmul_tflops=common.matmul_tflops(), bandwidth=bw,
                    launch_us=launch_latency_us())
    print(f"[{args.label}] {info['device']} ceilings {ceilings}", flush=True)
    rows = []
    for c in cases:
        rows.append(profile_case(c, x1_configs if c["samples"] == 1 else configs, ceilings, not args.no_phases,
                                 lambda m: print(f"[{args.label}]{m}", flush=True)))
    # -- summary table: best config per case --
    lines = [f"[{args.label}] case | floor us | stream us | best us (cfg) | x floor | x stream | prefix/own/decode_copied"]
    for r in rows:
        ok = {k: v["us"] for k, v in r["configs"].items() if "us" in v}
        best = min(ok, key=ok.get) if ok else None
        ph = "/".join(f"{r['phases'].get(p, {}).get('us', float('nan')):.1f}" for p in ("prefix", "own", "decode_copied"))
        default = ok.get(configs[0] if r["case"].split()[-1] != "x1" else x1_configs[0], float("nan"))
        lines.append(f"[{args.label}] {r['case']:12s} | {r['io_floor_us']:6.1f} | {r['stream_read_us']:6.1f} | "
                     f"{ok.get(best, float('nan')):7.1f} ({best!r}) default {default:7.1f} | "
                     f"{ok.get(best, float('nan')) / r['io_floor_us']:5.2f} | "
                     f"{ok.get(best, float('nan')) / r['stream_read_us']:5.2f} | {ph}")
    print("\n".join(lines), flush=True)
    if args.best_out:
        multi = [r for r in rows if r["case"].split()[-1] != "x1"]
        ok = [cfg for cfg in configs if all("us" in r["configs"].get(cfg, {}) for r in multi)]
        if ok:
            best = min(ok, key=lambda cfg: common.geomean([r["configs"][cfg]["us"] for r in multi]))
            with open(args.best_out, "w") as f:
                f.write(best)
            print(f"[{args.label}] best config by geometric mean: {best!r}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"profile_bifurcated_{args.label}.json"), "w") as f:
        json.dump(dict(env=info, ceilings=ceilings, configs=configs, x1_configs=x1_configs, rows=rows,
                       wall_s=time.time() - t0), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
