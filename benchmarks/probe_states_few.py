"""The bifurcated states path at few samples a prompt: launch settings swept, against a plain read of the bytes.

On an H100 (2026-12-05 16:02) four prompts of four GQA samples (16 stacked rows a column, 32 columns) took 105.6 us
against a 48.2 us floor, while one MHA prompt of four samples (4 rows a column, 32 columns, the same bytes) took
69.4. This probe times both, one GQA prompt of four samples and eight prompts of eight, with the prefix dense and
the own tokens in 16-token pages (``probe_bifurcated_paged.make_case``), under each ``LEANATTN_BIFURCATED_CONFIG`` of
``CONFIGS`` (launch fields: rows, tile, warps, stages, programs per SM, load path, in-kernel merge). It also times,
under the default, the prefix alone (no own cache) and a plain streaming read of the call's bytes. Each variant is
checked against the float64 reference first; all are CUDA-graph replays timed in interleaved rounds.

    PYTHONPATH=src python benchmarks/probe_states_few.py [--out DIR] [--cases A,B] [--precompile N] [--call-only]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402
from probe_bifurcated_paged import D, OWN, PREFIX, make_case  # noqa: E402

import leanattn  # noqa: E402

ENV = "LEANATTN_BIFURCATED_CONFIG"
# (label, config): fields block_h_cap, block_np, num_warps, num_stages, ctas_per_sm, load, block_no, order, merge
CONFIGS = [("default", ""), ("block ptr", "0,0,0,0,0,2"), ("tma", "0,0,0,0,0,3"), ("2 stages", "0,0,0,2"),
           ("4 stages", "0,0,0,4"), ("2 warps", "0,0,2"), ("8 warps", "0,0,8"), ("32-key tiles", "0,32"),
           ("128-key tiles", "0,128"), ("3 a SM", "0,0,0,0,3"), ("merge in kernel", "0,0,0,0,0,0,0,0,2")]
# (name, hq, hkv, samples, prompts): make_case's cases with 16-token own pages
CASES = [("gqa 4 prompts x16", 32, 8, 16, 4), ("mha x4", 32, 32, 4, 1), ("gqa x4", 32, 8, 4, 1),
         ("gqa 8 prompts x64", 32, 8, 64, 8)]


def build(hq, hkv, n, prompts):
    q, pool_k, pool_v, ptab, ids, otab, lens, _, idx, ref = make_case(hq, hkv, n, 16, prompts)
    pk = pool_k[ptab.long()].reshape(prompts, PREFIX, hkv, D)
    pv = pool_v[ptab.long()].reshape(prompts, PREFIX, hkv, D)
    if prompts == 1:
        pk, pv = pk[0], pv[0]
    group = dict(prefix_ids=ids, max_group_size=n // prompts) if ids is not None else {}
    return dict(q=q, pk=pk, pv=pv, k=pool_k, v=pool_v, lens=lens, table=otab, group=group, idx=idx, ref=ref)


def call(inp, config, own=True):
    """``bifurcated_decode`` under ``config`` (read when its plan is built: at the first call and at capture)."""
    os.environ[ENV] = config
    if own:
        return leanattn.bifurcated_decode(inp["q"], inp["pk"], inp["pv"], inp["k"], inp["v"], inp["lens"],
                                          inp["table"], **inp["group"])
    return leanattn.bifurcated_decode(inp["q"], inp["pk"], inp["pv"], None, None, **inp["group"])


def last_info():
    from leanattn.ops import bifurcated as bif
    info = next(reversed(bif._PLANS.values())).info
    keys = ("path", "grid", "prefix_programs", "splits", "own_splits", "BLOCK_HP", "N_HB", "BLOCK_NP", "BLOCK_NO",
            "num_warps", "num_stages", "n_regs", "n_spills", "occupancy", "workers")
    return {k: info[k] for k in keys if k in info}


def _compile_one(job):
    name, config = job
    torch.manual_seed(0)
    c = next(c for c in CASES if c[0] == name)
    inp = build(*c[1:])
    try:
        call(inp, config)
        if config == "":
            call(inp, config, own=False)
    except Exception as exc:  # reported again when timed
        print(f"precompile {name} {config!r}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
    torch.cuda.synchronize()
    return name


def main(argv=None):
    extra = [("--precompile", dict(type=int, default=0)), ("--call-only", dict(action="store_true"))]
    args, want = common.probe_args(__doc__, argv, extra)
    cases = [c for c in CASES if not want or c[0] in want]
    if args.call_only:  # one default call a case, for a profiler: no ceiling measured
        torch.manual_seed(0)
        for c in cases:
            call(build(*c[1:]), "")
        torch.cuda.synchronize()
        return
    args, want, ceiling = common.probe_start(__doc__, argv, extra)
    if args.precompile:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(args.precompile) as pool:
            pool.map(_compile_one, [(c[0], cfg) for c in cases for _, cfg in CONFIGS], chunksize=1)
    rows = []
    for name, hq, hkv, n, prompts in cases:
        inp = build(hq, hkv, n, prompts)
        token = hkv * D * 2 * 2
        io = (prompts * PREFIX + n * OWN) * token
        fns, infos = {}, {}
        for label, config in CONFIGS:
            fn = (lambda config=config: call(inp, config))
            try:
                fn()
                infos[label] = last_info()
                fns[label] = fn
            except Exception as exc:  # a setting the kernel cannot take: reported, not timed
                print(f"{name}: {label} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
        us, med = bd.interleaved_graph_times(name, fns, inp["ref"], rounds=3, pick=inp["idx"])
        prefix_fn = lambda: call(inp, "", own=False)  # noqa: E731
        prefix_fn()
        extra = {"prefix only": common.time_graph(prefix_fn), "stream read": common.stream_read_us(io)}
        os.environ.pop(ENV, None)
        floor = io / ceiling / 1e3
        print(f"{name}: IO floor {floor:.1f} us | " + "  ".join(f"{k} {v:.1f}" for k, v in {**med, **extra}.items()),
              flush=True)
        for label in med:
            print(f"    {label}: {infos[label]}", flush=True)
        rows.append(dict(case=name, hq=hq, hkv=hkv, samples=n, prompts=prompts, prefix=PREFIX, own=OWN,
                         own_page=16, io_bytes=io, io_floor_us=floor, us=us, median=med, extra_us=extra,
                         info=infos))
        inp = fns = None  # the next case's buffers replace these
        torch.cuda.empty_cache()
    common.write_probe(args.out, "probe_states_few.json", probe="states path launch settings at few samples a prompt",
                       timing=bd.GRAPH_TIMING, read_ceiling_gbs=ceiling, configs=dict(CONFIGS), cases=rows)


if __name__ == "__main__":
    main()
