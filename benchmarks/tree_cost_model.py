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


def versus_bench(hw, bench) -> str:
    """The model at the bench's own points (2 GPUs) beside the measurements."""
    with open(bench) as f:
        data = json.load(f)
    p = int(data["env"].get("world", 2))
    lines = ["| case | method | measured us | model us |", "|---|---|---|---|"]
    for row in data["rows"]:
        pr = cm.predict(hw, p, row["ctx"], row["B"], row["hq"], row["hkv"], row["d"])
        pr1 = cm.predict(hw, 1, row["ctx"], row["B"], row["hq"], row["hkv"], row["d"])
        for name in ("single", "tree-allgather", "tree-allreduce3", "ring"):
            ms = row["methods"].get(name, {}).get("ms")
            if ms:
                model = pr1["single"] if name == "single" else pr[name]
                lines.append(f"| {row['case']} | {name} | {1e3 * ms:.0f} | {model:.0f} |")
    return "\n".join(lines) + "\n"


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
    if bench:
        md += ["\n## Model vs measurement (the bench's own points)\n", versus_bench(hw, bench)]
    with open(os.path.join(args.out, "tree_cost_model.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.out, "tree_cost_model.json"), "w") as f:
        json.dump(dict(hardware=hw.__dict__ | dict(intra=hw.intra.__dict__, inter=hw.inter.__dict__,
                                                      p2p=hw.p2p.__dict__), bench=bench,
                       shape=dict(B=args.batch, Hq=Hq, Hkv=Hkv, D=args.head_dim), predictions=preds), f, indent=1)
    print("\n".join(md))
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
