"""``leanattn demo``: check the decode kernels against the reference, then picture the schedules.

1. Runs both decode schedules on a small ragged, paged GQA batch (under the Triton interpreter on
   a machine without a GPU) and prints their errors against the float64 reference.
2. Models the work per SM of the stream-K (lean) and fixed-split (FlashDecoding) schedules for a
   few shapes of the benchmark suite on a 132-SM GPU (H100/H200), with the tile size and grid the
   GPU launch uses: a PNG of per-SM load and a summary table. This is the occupancy picture of the
   LeanAttention paper: split leaves SMs idle when heads are few or lengths ragged; stream-K gives
   every SM the same number of tiles, to within one.
3. With a GPU, also runs the quick decode benchmark and prints its table.

The kernel modules must be imported under ``TRITON_INTERPRET=1`` when there is no GPU; the CLI
(``leanattn.cli``) takes care of that before this module is imported.
"""
from __future__ import annotations

import heapq
import os
import time

import numpy as np
import torch

from . import reference
from .ops.decode import decode
from .ops.decode_config import DecodeConfig, decode_config
from .schedules import lean_assignment, num_splits_heuristic, split_assignment, tiles_per_sequence
from .testing import TOLERANCE, rel_err

__all__ = ["SUITE_SHAPES", "check_kernels", "schedule_summary", "format_summary", "plot_schedules", "run"]

K = 1024
NUM_SMS = 132  # H100 SXM / H200
# programs per SM the decode kernel's default config fits, by head dim, as runtime.occupancy
# measured it on an H200 on 2026-12-01 (grids of 396 and 528 programs at D=128 and 64; D=256 from
# the offline compile of its 64-token tiles, benchmarks/offline_resources.py: 141 KB of shared memory);
# the grid is SMs x min(this, ctas_per_sm), which this machine cannot measure without a GPU
MEASURED_OCCUPANCY = {64: 4, 128: 3, 256: 1}

# A few shapes of the benchmark suite (benchmarks/bench_decode.py), bf16 caches padded to the longest.
SUITE_SHAPES = [
    dict(name="mha B=1 4k", lens=[4 * K], hq=32, hkv=32, d=128),
    dict(name="gqa B=1 32k", lens=[32 * K], hq=32, hkv=8, d=128),
    dict(name="gqa B=64 4k", lens=[4 * K] * 64, hq=32, hkv=8, d=128),
    dict(name="ragged-tail B=16", lens=[128 * K, 8 * K] + [4 * K] * 2 + [2 * K] * 4 + [1 * K] * 8,
         hq=32, hkv=8, d=128),
    dict(name="ragged-uniform B=32",
         lens=torch.randint(1 * K, 32 * K + 1, (32,), generator=torch.Generator().manual_seed(0)).tolist(),
         hq=32, hkv=8, d=128),
]


# --------------------------------------------------------------------------------------------
# 1. the kernels against the reference
# --------------------------------------------------------------------------------------------
def _paged_batch(lens, hq, hkv, d, page_size, dtype, device):
    """Random ``q (B, hq, d)``, paged K/V ``(pages, page_size, hkv, d)`` with pages in random order."""
    B = len(lens)
    max_pages = max(-(-max(lens) // page_size), 1)
    num_pages = B * max_pages
    block_table = torch.randperm(num_pages, device=device).view(B, max_pages).to(torch.int32)
    q = torch.randn(B, hq, d, dtype=dtype, device=device)
    k = torch.randn(num_pages, page_size, hkv, d, dtype=dtype, device=device)
    v = torch.randn_like(k)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    return q, k, v, seqlens, block_table


def check_kernels(device: torch.device, log=print) -> list[dict]:
    """Both schedules on a ragged, paged GQA batch vs the float64 reference.

    The batch: 6 sequences of 0 to 300 tokens (an empty one, a one-token one, lengths off the tile
    grid), Hq/Hkv = 16/4, D = 128, pages of 16 tokens in random order; fp16 on the CPU
    interpreter, bf16 on a GPU. Then the lean schedule again with 4 query tokens a sequence, causal (the
    verification step of speculative decoding).

    Returns
    -------
    list of dict
        Per run (``schedule``: "lean", "split", "lean, 4 tokens"): ``rel_err`` (output), ``lse_err`` (max abs,
        finite entries), ``tol``, ``deterministic`` (two runs bitwise equal), ``seconds``, ``ok``.
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    lens = [300, 0, 1, 77, 16, 130]
    torch.manual_seed(0)
    q, k, v, seqlens, block_table = _paged_batch(lens, 16, 4, 128, 16, dtype, device)
    q4 = torch.randn(len(lens), 4, 16, 128, dtype=dtype, device=device)
    tol = TOLERANCE[dtype]
    log(f"decode on {device.type}{' (Triton interpreter)' if device.type == 'cpu' else ''}: "
        f"lengths {lens}, Hq/Hkv 16/4, D 128, {dtype}, paged (16 tokens, random order)")
    results = []
    for label, schedule, query, causal in (("lean", "lean", q, False), ("split", "split", q, False),
                                           ("lean, 4 tokens", "lean", q4, True)):
        ref_out, ref_lse = reference.decode(query, k, v, seqlens, block_table, causal=causal)
        finite = torch.isfinite(ref_lse)
        t0 = time.perf_counter()
        out, lse = decode(query, k, v, seqlens, block_table, return_lse=True, schedule=schedule, causal=causal)
        seconds = time.perf_counter() - t0
        again = decode(query, k, v, seqlens, block_table, return_lse=True, schedule=schedule, causal=causal)
        res = dict(schedule=label, rel_err=rel_err(out, ref_out), tol=tol, seconds=seconds,
                   lse_err=(lse.double() - ref_lse.to(lse.device))[finite].abs().max().item(),
                   lse_inf_ok=bool(torch.equal(torch.isinf(lse).cpu(), ~finite.cpu())),
                   deterministic=torch.equal(out, again[0]) and torch.equal(lse, again[1]))
        res["ok"] = res["rel_err"] <= tol and res["lse_err"] <= tol and res["lse_inf_ok"]
        results.append(res)
        log(f"  {label:14s}  rel err {res['rel_err']:.1e} (tolerance {tol:.0e})  lse max err {res['lse_err']:.1e}  "
            f"empty rows -inf: {'yes' if res['lse_inf_ok'] else 'NO'}  bitwise deterministic: "
            f"{'yes' if res['deterministic'] else 'NO'}  {seconds:.2f} s  {'OK' if res['ok'] else 'FAIL'}")
    return results


# --------------------------------------------------------------------------------------------
# 2. the schedules' work per SM
# --------------------------------------------------------------------------------------------
def gpu_config(head_dim: int, group: int) -> DecodeConfig:
    """The launch config ``decode`` uses on a CUDA GPU, whatever this machine runs on."""
    # decode_config answers with the interpreter's tiny tiles while TRITON_INTERPRET is set
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        return decode_config(head_dim, group, torch.device("cuda"))
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def programs_per_sm(head_dim: int, cfg: DecodeConfig) -> int:
    """Persistent programs per SM of a GPU launch: the measured occupancy capped by ``ctas_per_sm``."""
    return max(1, min(MEASURED_OCCUPANCY.get(head_dim, 1), cfg.ctas_per_sm))


def sm_loads(program_tiles, num_sms: int) -> np.ndarray:
    """KV tiles each SM processes when programs are dispatched in launch order.

    The block scheduler hands the next program to an SM as soon as one has room; for
    bandwidth-bound programs that is the SM with the least work so far (ties: lowest index).

    Parameters
    ----------
    program_tiles : sequence of int
        Tiles of each program, in launch order.

    Returns
    -------
    np.ndarray
        ``(num_sms,)`` int64 tiles per SM.
    """
    heap = [(0, sm) for sm in range(num_sms)]
    loads = np.zeros(num_sms, dtype=np.int64)
    for tiles in program_tiles:
        load, sm = heapq.heappop(heap)
        loads[sm] = load + tiles
        heapq.heappush(heap, (load + tiles, sm))
    return loads


def _program_tiles(assignment) -> list[int]:
    return [sum(hi - lo for _, _, lo, hi in pieces) for pieces in assignment]


def schedule_summary(shapes=SUITE_SHAPES, num_sms: int = NUM_SMS) -> list[dict]:
    """Per-SM KV-tile loads of the lean and split schedules, as ``decode`` launches them on a GPU.

    Lean: ``num_sms x programs_per_sm`` persistent programs over all tiles (``lean_assignment``).
    Split: FlashAttention-2's heuristic picks the splits per head from the capacity (the longest
    sequence), as ``ops/decode.py`` does; the merge launch is not counted.

    Returns
    -------
    list of dict
        Per shape: ``name``, ``tiles`` (total), ``block_n``, ``lean_grid``, ``num_splits``,
        ``lean`` and ``split`` (``(num_sms,)`` tile loads), ``lean_imbalance`` and
        ``split_imbalance`` (max / mean load), ``speedup`` (split max / lean max load).
    """
    rows = []
    for shape in shapes:
        group = shape["hq"] // shape["hkv"]
        cfg = gpu_config(shape["d"], group)
        rows_per_seq = shape["hkv"] * cfg.n_hb
        lens = shape["lens"]
        grid = num_sms * programs_per_sm(shape["d"], cfg)
        lean = sm_loads(_program_tiles(lean_assignment(lens, rows_per_seq, cfg.block_n, grid, num_sms)), num_sms)
        cap_tiles = max(-(-max(lens) // cfg.block_n), 1)
        splits = num_splits_heuristic(len(lens) * rows_per_seq, 2 * num_sms, cap_tiles)
        splits = max(1, min(splits, cap_tiles))
        split = sm_loads(_program_tiles(split_assignment(lens, rows_per_seq, cfg.block_n, max(lens), splits)),
                         num_sms)
        total = int(tiles_per_sequence(lens, cfg.block_n).sum()) * rows_per_seq
        mean = total / num_sms
        rows.append(dict(name=shape["name"], tiles=total, block_n=cfg.block_n, lean_grid=grid, num_splits=splits,
                         lean=lean, split=split, lean_imbalance=lean.max() / mean,
                         split_imbalance=split.max() / mean, speedup=split.max() / lean.max(),
                         heads=f"{shape['hq']}/{shape['hkv']}", d=shape["d"], batch=len(lens)))
    return rows


def format_summary(rows: list[dict]) -> str:
    """The summary as a fixed-width table."""
    head = (f"{'shape':<20} {'Hq/Hkv':>6} {'tiles':>7} {'mean/SM':>8} | {'lean grid':>9} {'max/SM':>7} "
            f"{'max/mean':>8} | {'splits':>6} {'max/SM':>7} {'max/mean':>8} | {'lean speedup':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        mean = r["tiles"] / len(r["lean"])
        lines.append(f"{r['name']:<20} {r['heads']:>6} {r['tiles']:>7} {mean:>8.1f} | {r['lean_grid']:>9} "
                     f"{r['lean'].max():>7} {r['lean_imbalance']:>8.2f} | {r['num_splits']:>6} {r['split'].max():>7} "
                     f"{r['split_imbalance']:>8.2f} | {r['speedup']:>11.2f}x")
    return "\n".join(lines)


def plot_schedules(rows: list[dict], path: str) -> str:
    """Per-SM tile loads, one row of panels per shape: split (left) and lean (right). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2, figsize=(15, 2.7 * len(rows)), sharey="row", squeeze=False)
    for (ax_split, ax_lean), r in zip(axes, rows):
        num_sms = len(r["lean"])
        mean = r["tiles"] / num_sms
        for ax, key, color, label in ((ax_split, "split", "#d95f02", f"split: {r['num_splits']} per head"),
                                      (ax_lean, "lean", "#1b9e77", f"lean: {r['lean_grid']} programs")):
            loads = r[key]
            ax.bar(np.arange(num_sms), loads, width=0.85, color=color, edgecolor="none")
            ax.axhline(mean, color="black", lw=1, ls="--")
            ax.set_xlim(-0.5, num_sms - 0.5)
            ax.set_ylim(0, 1.4 * max(r["split"].max(), r["lean"].max()))  # headroom for the notes
            ax.set_title(f"{r['name']} (Hq/Hkv {r['heads']}, D {r['d']}) - {label}", fontsize=10, loc="left")
            ax.text(0.99, 0.95, f"max/mean = {r[key + '_imbalance']:.2f}\nmax {loads.max()}, mean {mean:.1f} tiles",
                    transform=ax.transAxes, ha="right", va="top", fontsize=9,
                    bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
        ax_split.set_ylabel(f"KV tiles per SM\n({r['block_n']} tokens)", fontsize=9)
        ax_lean.text(0.01, 0.95, f"predicted lean speedup {r['speedup']:.2f}x", transform=ax_lean.transAxes,
                     ha="left", va="top", fontsize=9, fontweight="bold",
                     bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
    for ax in axes[-1]:
        ax.set_xlabel("SM")
    fig.suptitle(f"Decode work per SM on a {len(rows[0]['lean'])}-SM GPU: fixed split (FlashDecoding) vs stream-K "
                 "(LeanAttention); dashed: mean", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# the whole demo
# --------------------------------------------------------------------------------------------
def run(out_dir: str = "demo_out", num_sms: int = NUM_SMS, bench=None, log=print) -> int:
    """Run the demo; returns a process exit status (1 when a kernel check fails).

    ``bench`` is the decode benchmark's ``main(argv)`` (or None); it runs only on a GPU.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log("== 1. decode kernels vs float64 reference ==")
    checks = check_kernels(device, log)
    log(f"\n== 2. work per SM on a {num_sms}-SM GPU (tiles and grid of the GPU launch config) ==")
    rows = schedule_summary(num_sms=num_sms)
    log(format_summary(rows))
    log("lean speedup = split max / lean max tiles per SM (decode is bandwidth-bound: time ~ the busiest SM)")
    png = plot_schedules(rows, os.path.join(out_dir, "schedule.png"))
    log(f"picture: {png}")
    if device.type == "cuda":
        log("\n== 3. quick decode benchmark ==")
        if bench is None:
            log("benchmarks/bench_decode.py not found: skipping the benchmark")
        else:
            bench(["--quick", "--out", out_dir])
    return 0 if all(c["ok"] for c in checks) else 1
