"""``leanattn.decode`` over float8 KV caches against bf16 caches and the SDPA peers, on decode suite cases.

Each case's cache is quantised to float8 e4m3 with per-tensor scales (``amax / 448``, as FlashInfer's and vLLM's
``k_scale``/``v_scale``). Methods, all checked against the float64 reference over the dequantised cache first, then
replayed from CUDA graphs and timed with ``do_bench`` (median, L2 flushed):

* ``lean fp8``: ``leanattn.decode`` over the float8 cache with ``k_scale``/``v_scale``, also under the read flush;
* ``lean int8``: the same values quantised to int8 instead (``amax / 127``, TensorRT-LLM's int8 cache), checked
  against the reference over its own dequantised cache (contiguous cases);
* ``lean bf16``: ``leanattn.decode`` over the dequantised cache in bf16 (the same values up to bf16 rounding);
* ``best peer``: the fastest of SDPA FLASH and cuDNN (cuDNN with a padding mask for ragged batches) over that bf16
  cache; none of them reads a float8 cache with a bf16 query;
* ``dequant + peer``: what a PyTorch user does with a float8 cache: upcast K and V to bf16 times their scales, then
  the best peer's form, in one graph.

Bytes are the float8 cache's for ``lean fp8`` and the bf16 cache's for the others; the floor is those bytes over the
read ceiling measured in the same run.

    PYTHONPATH=src python benchmarks/bench_decode_fp8.py [--out DIR] [--cases NAME,...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.testing import paged_kv, rel_err  # noqa: E402

FP8 = torch.float8_e4m3fn
CASES = ["mha B=1 16k", "mha B=1 64k", "mha B=1 256k", "gqa B=1 32k", "gqa B=1 128k", "gqa B=4 32k", "gqa B=64 4k",
         "ragged-tail B=16", "ragged-uniform B=32", "paged16 gqa B=4 32k", "paged64 gqa B=4 32k", "d64 mha B=1 64k",
         "d256 16/8 B=1 32k"]
PEERS = ["sdpa_flash", "sdpa_cudnn", "sdpa_cudnn_mask"]


def quantise(x: torch.Tensor):
    """``(x8, scale)``: ``x / scale`` in float8 e4m3 with ``scale = amax / 448``."""
    scale = x.abs().amax().float().item() / torch.finfo(FP8).max
    return (x.float() / scale).to(FP8), scale


def int8_of(x: torch.Tensor):
    """``(x8, scale)``: ``x`` in symmetric int8 with ``scale = amax / 127``."""
    scale = x.abs().amax().float().item() / 127
    return (x.float() / scale).round().clamp(-127, 127).to(torch.int8), scale


def fp8_inputs(case):
    """The suite case's inputs (``bench_decode.make_inputs``) with the caches replaced by their dequantised bf16
    values, plus the float8 caches (paged where the case is) and their scales."""
    inp = bd.make_inputs(case)
    (k8, ks), (v8, vs) = quantise(inp["k"]), quantise(inp["v"])
    inp.update(k=(k8.float() * ks).to(torch.bfloat16), v=(v8.float() * vs).to(torch.bfloat16), ks=ks, vs=vs)
    if "page" in case:
        # page the float8 values exactly (as float32), then store the pages as float8 again; lean bf16 reads the
        # same pages dequantised
        kp, vp, bt = paged_kv(k8.float(), v8.float(), case["lens"], case["page"])
        inp.update(k8=kp.to(FP8), v8=vp.to(FP8), block_table8=bt, block_table=bt,
                   k_pages=(kp * ks).to(torch.bfloat16), v_pages=(vp * vs).to(torch.bfloat16))
    else:
        inp.update(k8=k8, v8=v8, block_table8=None)
    return inp


def time_us(fn):
    g = bd.graph_of(fn)
    us = common.bench(g.replay if g is not None else fn) * 1e3
    return us, g


def run_case(case, ceiling, ceiling_clean, log):
    inp = fp8_inputs(case)
    q, sl = inp["q"], inp["seqlens"]
    ref, _ = leanattn.reference.decode(q, inp["k8"], inp["v8"], sl, inp["block_table8"], k_scale=inp["ks"],
                                       v_scale=inp["vs"])
    bf_bytes = bd.kv_bytes(case)
    fp8_bytes = bd.kv_bytes(case, elt=1) + len(case["lens"]) * case["hq"] * case["d"] * 2  # q and out stay bf16
    row = dict(case=case["name"], kv_mb_bf16=bf_bytes / 1e6, kv_mb_fp8=fp8_bytes / 1e6, k_scale=inp["ks"],
               v_scale=inp["vs"], results={})
    methods = {
        "lean_fp8": lambda: leanattn.decode(q, inp["k8"], inp["v8"], sl, inp["block_table8"], k_scale=inp["ks"],
                                            v_scale=inp["vs"]),
        "lean_bf16": bd.ours("lean")(case, inp),
    }
    refs = {}
    if "page" not in case:
        (k_i8, ks_i8), (v_i8, vs_i8) = int8_of(inp["k"]), int8_of(inp["v"])
        refs["lean_int8"] = leanattn.reference.decode(q, k_i8, v_i8, sl, k_scale=ks_i8, v_scale=vs_i8)[0]
        methods["lean_int8"] = lambda: leanattn.decode(q, k_i8, v_i8, sl, k_scale=ks_i8, v_scale=vs_i8)
    for p in PEERS:
        try:
            methods[p] = bd.METHODS[p](case, inp)
        except Exception as e:  # a form the case does not take (the mask for uniform lengths)
            row["results"][p] = dict(error=f"{type(e).__name__}: {str(e)[:120]}")
    for name, fn in methods.items():
        out = fn()
        torch.cuda.synchronize()
        err = rel_err(out, refs.get(name, ref))
        if not err <= 2e-2:
            row["results"][name] = dict(error=f"wrong result: rel err {err:.2e}")
            continue
        us, g = time_us(fn)
        nbytes = fp8_bytes if name in ("lean_fp8", "lean_int8") else bf_bytes
        r = dict(us=us, gbs=nbytes / us / 1e3, err=err, frac_ceiling=nbytes / us / 1e3 / ceiling)
        if name == "lean_fp8":
            r["us_clean"] = common.bench(g.replay if g is not None else fn, flush="read") * 1e3
            r["frac_ceiling_clean"] = nbytes / r["us_clean"] / 1e3 / ceiling_clean
            r["us_repeat"] = common.bench(g.replay if g is not None else fn) * 1e3
        del g
        row["results"][name] = r
    peers = {p: row["results"][p]["us"] for p in PEERS if "us" in row["results"].get(p, {})}
    best = min(peers, key=peers.get)
    row["best_peer"], row["best_peer_us"] = best, peers[best]
    # the user's float8 route: upcast both caches (times their scales) into bf16 buffers, then the best peer's
    # form over those buffers
    # (contiguous cases: the peers read contiguous caches)
    kd, vd = torch.empty_like(inp["k"]), torch.empty_like(inp["v"])
    if "page" not in case:
        peer = bd.METHODS[best](case, dict(inp, k=kd, v=vd))

        def dequant_peer():
            kd.copy_(inp["k8"]).mul_(inp["ks"])
            vd.copy_(inp["v8"]).mul_(inp["vs"])
            return peer()
        out = dequant_peer()
        torch.cuda.synchronize()
        us, g = time_us(dequant_peer)
        del g
        row["results"]["dequant_peer"] = dict(us=us, err=rel_err(out, ref), form=f"upcast + {best}")
    lean8 = row["results"].get("lean_fp8", {})
    if "us" in lean8:
        for other in ("lean_bf16", "dequant_peer"):
            if "us" in row["results"].get(other, {}):
                row[f"fp8_speedup_vs_{other}"] = row["results"][other]["us"] / lean8["us"]
        row["fp8_speedup_vs_best_peer"] = row["best_peer_us"] / lean8["us"]
        row["fp8_floor_us"] = fp8_bytes / ceiling / 1e3
    log(f"  {case['name']:22s} " + "  ".join(
        f"{n} {r['us']:.1f}" for n, r in row["results"].items() if "us" in r) +
        f"  fp8 x bf16 lean {row.get('fp8_speedup_vs_lean_bf16', float('nan')):.2f}"
        f"  x best peer {row.get('fp8_speedup_vs_best_peer', float('nan')):.2f}")
    return row


def table(rows) -> str:
    header = ["case", "KV MB fp8", "lean fp8 us", "% of ceiling", "% of ceiling, read flush", "lean bf16 us",
              "best peer (bf16)", "best peer us", "dequant + peer us", "fp8 / lean bf16", "fp8 / best peer",
              "fp8 / dequant + peer", "err fp8"]
    out = []
    for r in rows:
        res = r["results"]
        f8 = res.get("lean_fp8", {})
        out.append([r["case"], round(r["kv_mb_fp8"]), round(f8.get("us", float("nan")), 1),
                    round(100 * f8.get("frac_ceiling", float("nan")), 1),
                    round(100 * f8.get("frac_ceiling_clean", float("nan")), 1),
                    round(res.get("lean_bf16", {}).get("us", float("nan")), 1), r["best_peer"],
                    round(r["best_peer_us"], 1), round(res.get("dequant_peer", {}).get("us", float("nan")), 1),
                    f"{r.get('fp8_speedup_vs_lean_bf16', float('nan')):.2f}x",
                    f"{r.get('fp8_speedup_vs_best_peer', float('nan')):.2f}x",
                    f"{r.get('fp8_speedup_vs_dequant_peer', float('nan')):.2f}x" if "dequant_peer" in res else "-",
                    f"{f8.get('err', float('nan')):.1e}"])
    return common.markdown_table(header, out)


def plot(rows, path):
    """Time of each method per case, normalised to lean bf16 (lower is faster), as grouped bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = [("lean_fp8", "leanattn, float8 e4m3 cache"), ("lean_bf16", "leanattn, bf16 cache"),
               ("best_peer", "best SDPA peer, bf16 cache")]
    fig, ax = plt.subplots(figsize=(max(10, 0.8 * len(rows)), 5))
    width = 0.8 / len(methods)
    for i, (name, label) in enumerate(methods):
        ys = []
        for r in rows:
            base = r["results"].get("lean_bf16", {}).get("us")
            us = r["best_peer_us"] if name == "best_peer" else r["results"].get(name, {}).get("us")
            ys.append(us / base if us and base else float("nan"))
        bars = ax.bar([j + (i - 1) * width for j in range(len(rows))], ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["case"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("time / leanattn bf16 time (same run)")
    ax.set_title("decode over float8 KV caches, bf16 queries, CUDA-graph replays with L2 flushed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: " + ", ".join(CASES) + ")")
    args = ap.parse_args(argv)
    names = args.cases.split(",") if args.cases else CASES
    torch.manual_seed(0)
    t0 = time.time()
    bw = common.read_bandwidth_gbs()
    ceiling, ceiling_clean = bw["read_ceiling"], bw["read_ceiling_clean_flush"]
    print(f"read ceiling {ceiling:.0f} GB/s, {ceiling_clean:.0f} GB/s under the read flush", flush=True)
    rows = []
    for case in bd.suite():
        if case["name"] in names:
            rows.append(run_case(case, ceiling, ceiling_clean, lambda s: print(s, flush=True)))
            torch.cuda.empty_cache()  # the case's tensors went with run_case's frame
    summary = dict(
        fp8_speedup_vs_lean_bf16={r["case"]: r.get("fp8_speedup_vs_lean_bf16") for r in rows},
        fp8_speedup_vs_best_peer={r["case"]: r.get("fp8_speedup_vs_best_peer") for r in rows},
        geomean_vs_best_peer=common.geomean([r.get("fp8_speedup_vs_best_peer") for r in rows]),
        max_err=max(r["results"].get("lean_fp8", {}).get("err", float("inf")) for r in rows),
        wall_s=time.time() - t0)
    env = common.env_info()
    md = (f"# decode over float8 KV caches\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
          f"{env['date']}; bf16 queries, float8 e4m3 caches with per-tensor scales. Read ceiling {ceiling:.0f} GB/s "
          f"({ceiling_clean:.0f} under the read flush). Times: medians of do_bench (L2 flushed) of CUDA-graph replays, "
          f"us. Method: `benchmarks/bench_decode_fp8.py`'s docstring.\n\n" + table(rows) + f"\n\nSummary: {summary}\n")
    name = env["device"].replace(" ", "_")
    for p in common.write_results(args.out, f"decode_fp8_{name}", dict(env=env, read_ceiling=bw, cases=rows,
                                                                     summary=summary), md):
        print("wrote", p)
    plot(rows, os.path.join(args.out, f"decode_fp8_{name}.png"))
    print("Summary:", summary)


if __name__ == "__main__":
    main()
