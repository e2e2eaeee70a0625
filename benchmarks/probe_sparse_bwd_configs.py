"""Probe: the sparse backward under each of its autotuned configs, against the autotuner's pick.

Why: across three H100 runs of ``probe_sparse_dkdv_split.py`` with the same tiles (2026-12-07 10:5x after the D=128
tiles changed, 13:2x, 16:2x) the case GQA 32/4 B=1 4k took one of two times: K/V repeated 564, 837 and 563 us, the
group cut in runs 682-701, 866-1014 and 571-621 us, while the group left whole (split 1) took 904-913 us each time.
The other six cases' K/V repeated agreed across those runs within 2%. A choice between configs that differ by 1.5x
is one candidate: the dK/dV
and dQ kernels are autotuned over ``_BWD_CONFIGS`` (8 warps, 2 or 3 stages) once per key, and their keys differ
between those calls (``GROUP``, ``SPLIT``). This probe times each case's backward, with the rule's split and over
K/V repeated, under the autotuner's pick and under each config forced on both backward kernels, in 3 interleaved
rounds of ``triton.testing.do_bench`` (median, L2 flushed), and records the configs the autotuner picked for each
key and the autotuner's own timings of each config. Gradients under each forced config are checked against the
autotuned call's.

    PYTHONPATH=src python3 benchmarks/probe_sparse_bwd_configs.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sparse as bs  # noqa: E402
import common  # noqa: E402
from probe_sparse_dkdv_split import CASES  # noqa: E402

from leanattn.kernels import sparse_attn  # noqa: E402

D = 128
DEVICE, DTYPE = "cuda", torch.bfloat16  # (a CPU smoke run sets these, fp16, and tiny CASES)
TUNED = {"dkdv": sparse_attn.sparse_dkdv_kernel, "dq": sparse_attn.sparse_dq_kernel}
ALL_CONFIGS = {name: list(kernel.configs) for name, kernel in TUNED.items()}


def config_name(config) -> str:
    return f"{config.num_warps}w{config.num_stages}s"


def use(variant, tuned_cache):
    """Both backward kernels under ``variant``: "auto" (every config, the autotuner's picks kept in ``tuned_cache``
    across variants) or a config's name (that config alone, which Triton runs without benchmarking)."""
    for name, kernel in TUNED.items():
        if variant == "auto":
            kernel.configs = ALL_CONFIGS[name]
            kernel.cache = tuned_cache[name]
        else:
            kernel.configs = [c for c in ALL_CONFIGS[name] if config_name(c) == variant]
            kernel.cache = {}


def picks(tuned_cache):
    """The autotuner's picks so far: kernel -> {key: config name}."""
    return {name: {str(key): config_name(cfg) for key, cfg in cache.items()} for name, cache in tuned_cache.items()}


def new_trials(seen):
    """The autotuner's own timings (ms; median, 20th and 80th percentiles) of each config, for each backward kernel
    that benchmarked a new key since the last look (``seen``: kernel -> the timings object last looked at)."""
    out = {}
    for name, kernel in TUNED.items():
        timings = getattr(kernel, "configs_timings", None)
        if timings is not None and timings is not seen.get(name):
            seen[name] = timings
            out[name] = {config_name(c): t for c, t in timings.items()}
    return out


def main(argv=None):
    args, want, ceiling = common.probe_start(__doc__, argv)
    T = bs.timer(DEVICE)
    tuned_cache = {name: {} for name in TUNED}
    seen = {}
    variants = ["auto"] + [config_name(c) for c in ALL_CONFIGS["dkdv"]]
    rows = []
    for (name, B, H, HK, N, mode, param), (q, k, v, a, b, dout) in bs.gqa_cases(CASES, want, D, DTYPE, DEVICE):
        G = H // HK
        kr, vr = (x.detach().repeat_interleave(G, dim=2).requires_grad_() for x in (k, v))
        calls = {"grouped": (k, v, b), "repeated": (kr, vr, b.repeat_interleave(G, dim=2))}
        outs, first, trials = {}, {}, {}
        for call, (kk, vv, bb) in calls.items():
            out = bs.run_ours(mode, q, kk, vv, a, bb)
            for variant in variants:
                use(variant, tuned_cache)
                grads = torch.autograd.grad(out, (q, kk, vv), dout, retain_graph=True)
                if variant == "auto":
                    trials[call] = new_trials(seen)
                first.setdefault(call, grads)
                err = bs.max_rel_err(grads, first[call])
                if err > 2e-2:
                    raise AssertionError(f"{name} {call} {variant}: gradients off the autotuned call's by {err:.2e}")
                outs[f"{call} {variant}"] = out
        us, median = bs.backward_rounds(T, outs, dout, [q, k, v, kr, vr],
                                        lambda label: use(label.split()[1], tuned_cache))
        use("auto", tuned_cache)
        print(f"{name} (group {G}): " + "  ".join(f"{lb} {t:.0f}" for lb, t in median.items()) + " us", flush=True)
        print(f"  autotuner's trials (ms): {trials}", flush=True)
        rows.append(dict(case=name, B=B, H=H, Hkv=HK, D=D, N=N, mode=mode, param=param, us=us, median=median,
                         autotune_trials_ms=trials))
    print("autotuner picks:", picks(tuned_cache), flush=True)
    common.write_probe(args.out, "probe_sparse_bwd_configs.json", probe="sparse backward under each autotuned config",
                       timing="do_bench median of the backward, L2 flushed, 3 interleaved rounds",
                       read_ceiling_gbs=ceiling, picks=picks(tuned_cache), cases=rows)


if __name__ == "__main__":
    main()
