"""Predicted tree vs ring decode latency on 8..512 GPUs: plot and table (leanattn.distributed.cost_model).

    PYTHONPATH=src python benchmarks/tree_cost_model.py                      # placeholders + decode JSONs
    PYTHONPATH=src python benchmarks/tree_cost_model.py --bench benchmarks/results/tree_h200x2/bench_tree.json

Without ``--bench`` the HBM numbers come from ``benchmarks/results/decode_*.json`` (H100, measured)
and the links are assumptions; with it, the intra-node link, P2P link, HBM line and combine cost
are refitted from the 2-GPU run (``cost_model.fit_bench``) and the 2-GPU predictions are set
beside the measurements. Inter-node numbers are always assumed. Writes ``tree_cost_model.{png,md,json}``
to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from leanattn.distributed import cost_model as cm  # noqa: E402

METHODS = ("tree-allgather", "tree-allreduce3", "tree-hier", "ring")
GPUS = (8, 16, 32, 64, 128, 256, 512)
M = 1024 * 1024


def hardware(bench: str | None) -> cm.Hardware:
    h100 = cm.from_decode_results(cm.H100)
    hw = cm.H200.replace(f"derived: H100 fit ({h100.hbm_gbs:.0f} GB/s) x 4.8 / 3.35 TB/s spec",
                         hbm_gbs=h100.hbm_gbs * 4.8 / 3.35)
    hw = hw.replace(h100.sources.get("decode_us", "placeholder") + " (H100)", decode_us=h100.decode_us)
    if bench:
        hw = cm.fit_bench(bench, hw)
    return hw


def inputs_table(hw: cm.Hardware) -> str:
    rows = [("hbm_gbs", f"{hw.hbm_gbs:.0f} GB/s"), ("decode_us", f"{hw.decode_us:.1f} us"),
            ("combine_us", f"{hw.combine_us:.1f} us"),
            ("intra", f"alpha {hw.intra.alpha_us:.1f} us, beta {hw.intra.beta_gbs:.0f} GB/s"),
            ("inter", f"alpha {hw.inter.alpha_us:.1f} us, beta {hw.inter.beta_gbs:.0f} GB/s"),
            ("p2p", f"alpha {hw.p2p.alpha_us:.1f} us, beta {hw.p2p.beta_gbs:.0f} GB/s"),
            ("gpus_per_node", str(hw.gpus_per_node))]
    lines = ["| input | value | measured or assumed |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {hw.sources.get(k, 'assumed')} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def predictions(hw, contexts, B, Hq, Hkv, D):
    out = []
    for ctx in contexts:
        for p in GPUS:
            pr = cm.predict(hw, p, ctx, B, Hq, Hkv, D)
            out.append(dict(context=ctx, gpus=p, **{k: pr[k] for k in ("single", *METHODS)},
                            shard_gib=pr["shard_bytes"] / 2**30))
    return out


def table(preds) -> str:
    lines = ["| context | GPUs | KV per GPU (GiB) | tree-allgather us | tree-allreduce3 us | tree-hier us | ring us | "
             "ring / best tree |", "|---|---|---|---|---|---|---|---|"]
    for r in preds:
        best = min(r["tree-allgather"], r["tree-allreduce3"])
        lines.append(f"| {r['context'] // M}M | {r['gpus']} | {r['shard_gib']:.2f} | {r['tree-allgather']:.0f} | "
                     f"{r['tree-allreduce3']:.0f} | {r['tree-hier']:.0f} | {r['ring']:.0f} | {r['ring'] / best:.1f}x |")
    return "\n".join(lines) + "\n"


def points(hw, gpus) -> list[dict]:
    """The model at every case of ``bench_tree.py``'s suite for each GPU count in ``gpus`` (microseconds)."""
    import bench_tree
    out = []
    for p in gpus:
        for c in bench_tree.suite(False, False, p):
            pr = cm.predict(hw, p, c["ctx"], c["B"], c["hq"], c["hkv"], c["d"])
            pr1 = cm.predict(hw, 1, c["ctx"], c["B"], c["hq"], c["hkv"], c["d"])
            out.append(dict(gpus=p, case=bench_tree.case_name(c), **c, single=pr1["single"],
                            **{k: pr[k] for k in ("tree-allgather", "tree-allreduce3", "ring")}))
    return out


def versus_bench(hw, bench, prior: list[dict] | None = None) -> tuple[str, list[dict]]:
    """The model at the bench's own points beside the measurements (graph times where recorded).

    ``prior``: predictions made before the run (``--points`` output), set beside the refitted model.
    Returns the markdown table and its rows.
    """
    with open(bench) as f:
        data = json.load(f)
    p = int(data["env"].get("world", 2))
    before = {(r["gpus"], r["case"]): r for r in prior or []}
    lines = ["| case | method | timing | measured us | model us (refitted) | off | model us (before the run) | off |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    for row in data["rows"]:
        pr = cm.predict(hw, p, row["ctx"], row["B"], row["hq"], row["hkv"], row["d"])
        pr1 = cm.predict(hw, 1, row["ctx"], row["B"], row["hq"], row["hkv"], row["d"])
        pre = before.get((p, row["case"]), {})
        for name in ("single", "tree-allgather", "tree-allreduce3", "ring"):
            m = row["methods"].get(name, {})
            timing = "graph" if m.get("graph_ms") else "eager"
            ms = m.get("graph_ms") or m.get("ms")
            if not ms:
                continue
            model = pr1["single"] if name == "single" else pr[name]
            r = dict(case=row["case"], method=name, timing=timing, measured_us=1e3 * ms, model_us=model,
                     off=model / (1e3 * ms) - 1, prior_us=pre.get(name))
            r["prior_off"] = r["prior_us"] / r["measured_us"] - 1 if r["prior_us"] else None
            rows.append(r)
            prior_cells = (f"{r['prior_us']:.0f} | {100 * r['prior_off']:+.0f}%" if r["prior_us"] else "- | -")
            lines.append(f"| {row['case']} | {name} | {timing} | {r['measured_us']:.0f} | {model:.0f} | "
                         f"{100 * r['off']:+.0f}% | {prior_cells} |")
    return "\n".join(lines) + "\n", rows


def plot(preds, contexts, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(contexts), figsize=(4.4 * len(contexts), 3.8), squeeze=False)
    styles = {"tree-allgather": "C0-s", "tree-allreduce3": "C1-^", "tree-hier": "C2--", "ring": "C3-v"}
    for ax, ctx in zip(axes[0], contexts):
        sel = [r for r in preds if r["context"] == ctx]
        for name, st in styles.items():
            ax.plot([r["gpus"] for r in sel], [r[name] / 1e3 for r in sel], st, label=name)
        ax.axhline(sel[0]["single"] / 1e3, color="k", ls=":", label="one GPU (if it fit)")
        ax.axvline(8, color="gray", lw=0.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{ctx // M}M tokens")
        ax.set_xlabel("GPUs (8 per node)")
        ax.set_ylabel("ms per decode step (one layer)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=None, help="bench_tree.json to refit from (default: newest under results/)")
    ap.add_argument("--no-bench", action="store_true", help="placeholders only, even if a bench_tree.json exists")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", default="32/8", help="query/kv heads (default 32/8)")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--contexts", default="1,16,128", help="millions of tokens (default 1,16,128)")
    ap.add_argument("--points", default="", help="GPU counts (e.g. 4,8): also write the model's predictions at "
                    "every bench_tree.py case for them to tree_cost_model_points.json, before a run measures them")
    ap.add_argument("--prior", default="", help="a tree_cost_model_points.json written before --bench was run: "
                    "its predictions are set beside the measurements")
    args = ap.parse_args(argv)
    bench = args.bench
    if bench is None and not args.no_bench:
        found = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "**", "bench_tree.json"), recursive=True),
                       key=os.path.getmtime)
        bench = found[-1] if found else None
    hw = hardware(bench)
    Hq, Hkv = map(int, args.heads.split("/"))
    contexts = [int(float(x) * M) for x in args.contexts.split(",")]
    preds = predictions(hw, contexts, args.batch, Hq, Hkv, args.head_dim)
    os.makedirs(args.out, exist_ok=True)
    title = (f"{hw.name}: B={args.batch}, heads {Hq}/{Hkv}, D={args.head_dim}, bf16, one layer; "
             f"{'links fitted on ' + os.path.basename(os.path.dirname(bench)) if bench else 'links assumed'}")
    png = os.path.join(args.out, "tree_cost_model.png")
    plot(preds, contexts, png, title)
    md = [f"# Tree vs ring decode: cost model ({hw.name})\n",
          f"One attention layer, one decode step, B={args.batch}, heads {Hq}/{Hkv}, D={args.head_dim}, bf16 KV "
          f"split evenly over the GPUs, 8 GPUs per node. Formulas: `src/leanattn/distributed/cost_model.py`. "
          f"Regenerate: `PYTHONPATH=src python benchmarks/tree_cost_model.py"
          f"{' --bench ' + os.path.relpath(bench, ROOT) if bench else ''}`.\n",
          "## Inputs\n", inputs_table(hw),
          "\nInter-node numbers stay assumed until a multi-node run exists; `cost_model.fit_bench` refits the "
          "intra-node link, the P2P link, the HBM line and the combine cost from a `bench_tree.json`.\n",
          "## Predictions (microseconds)\n", table(preds),
          "\nReading: tree decode's communication is `B * Hq * (D + 2)` 16-bit values per GPU whatever the context, so "
          "it keeps shrinking with the GPU count until the collective's latency (`(p - 1) * alpha` for the "
          "ring all-gather, `log2` for NCCL's tree all-reduce) dominates; ring decode moves the whole cache "
          "through every link each step and, once it crosses nodes, runs at the NIC's bandwidth.\n"]
    comparison = []
    if bench:
        prior = json.load(open(args.prior))["points"] if args.prior else None
        text, comparison = versus_bench(hw, bench, prior)
        md += ["\n## Model vs measurement (the bench's own points)\n",
               "Measured: CUDA-graph replay times where the bench recorded them, else eager. 'off': model / "
               "measured - 1. 'before the run': the prediction written by `--points` before this bench was run "
               f"({os.path.relpath(args.prior, ROOT) if args.prior else 'none given'}).\n", text]
        for label, k in (("refitted", "off"), ("before the run", "prior_off")):
            offs = [abs(r[k]) for r in comparison if r[k] is not None and r["method"] != "single"]
            if offs:
                within = sum(o <= 0.25 for o in offs)
                md.append(f"- {label}: {within}/{len(offs)} multi-GPU points within 25%, worst {100 * max(offs):.0f}%.")
    if args.points:
        pts = points(hw, [int(x) for x in args.points.split(",")])
        with open(os.path.join(args.out, "tree_cost_model_points.json"), "w") as f:
            json.dump(dict(hardware=hw.name, bench=bench, sources=hw.sources, points=pts), f, indent=1)
        lines = ["| GPUs | case | single us | tree-allgather us | tree-allreduce3 us | ring us |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['gpus']} | {r['case']} | {r['single']:.0f} | {r['tree-allgather']:.0f} | "
                  f"{r['tree-allreduce3']:.0f} | {r['ring']:.0f} |" for r in pts]
        md += ["\n## Predictions at the bench's cases\n", "\n".join(lines) + "\n"]
    with open(os.path.join(args.out, "tree_cost_model.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.out, "tree_cost_model.json"), "w") as f:
        json.dump(dict(hardware=hw.__dict__ | dict(intra=hw.intra.__dict__, inter=hw.inter.__dict__,
                                                      p2p=hw.p2p.__dict__), bench=bench,
                       shape=dict(B=args.batch, Hq=Hq, Hkv=Hkv, D=args.head_dim), predictions=preds,
                       versus_bench=comparison), f, indent=1)
    print("\n".join(md))
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
