"""Latency model of one decode step of one attention layer, sharded over ``p`` GPUs: tree vs ring.

Inputs (a :class:`Hardware`):

- ``hbm_gbs``, ``decode_us``: a GPU decodes ``bytes`` of KV in ``decode_us + bytes / hbm_gbs``
  (measured: the decode benchmark, or bench_tree's one-GPU rows);
- ``combine_us``: host and kernel cost of packing, merging and casting around a collective;
- ``intra`` / ``inter``: alpha-beta links inside a node (NVLink) and between nodes (InfiniBand),
  ``alpha_us`` per step of a collective algorithm, ``beta_gbs`` bandwidth per GPU and direction;
- ``p2p``: the link a ring step uses inside a node (send/recv of a KV shard).

Collectives follow the usual alpha-beta forms (Thakur et al. 2005; NCCL's algorithms): a message
of ``m`` bytes per rank,

=====================  ==================================================================
ring all-gather        ``(p - 1) * (alpha + m / beta)``
ring all-reduce        ``2 (p - 1) * alpha + 2 (p - 1) / p * m / beta``
tree all-reduce        ``2 ((g - 1) alpha_intra + ceil(log2 n) alpha_inter) + 2 m / beta``
=====================  ==================================================================

with ``g`` GPUs per node and ``n`` nodes; across nodes a ring's step runs at the inter-node link
(every ring crosses nodes), NCCL's all-reduce takes the faster of ring and tree, and all-gather
has only the ring (NVLS and PAT are left out: multicast is off, and PAT is for one GPU per node).

Methods (per layer and step; ``S = KV bytes / p``):

- ``tree-allgather``: ``decode(S) + combine + allgather(B Hq (D itemsize + 4))``
- ``tree-allreduce3``: ``decode(S) + 3 * combine + allreduce(4 B Hq) + allreduce(4 B Hq D) + allreduce(4 B Hq)``
  (the last two issued together: counted as their sum minus one alpha);
- ``tree-hier`` (model only, not implemented): all-gather inside each node, merge, then the three
  all-reduces across the node leaders' rails;
- ``ring``: ``decode(S) + (p - 1) * max(decode(S), alpha + S / beta)`` with the ring's slowest link
  (the inter-node one as soon as ``p`` exceeds a node), then a merge.

:func:`fit_bench` refits ``hbm_gbs``, ``decode_us``, ``combine_us``, the intra-node link and the
P2P link from a ``bench_tree.json``; :func:`from_decode_results` takes the HBM numbers from the
decode benchmark's results.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from typing import Optional

__all__ = ["Link", "Hardware", "H100", "H200", "allgather_us", "allreduce_us", "decode_us", "predict", "fit_bench",
           "from_decode_results", "kv_bytes", "fit_line"]


@dataclasses.dataclass(frozen=True)
class Link:
    """An alpha-beta link: ``alpha_us`` per algorithm step, ``beta_gbs`` GB/s per GPU and direction."""

    alpha_us: float
    beta_gbs: float

    def us(self, nbytes: float) -> float:
        return self.alpha_us + nbytes / (self.beta_gbs * 1e3)


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the model needs of a GPU cluster; ``sources`` says which numbers are measured."""

    name: str
    hbm_gbs: float
    decode_us: float
    combine_us: float
    intra: Link
    inter: Link
    p2p: Link
    gpus_per_node: int = 8
    sources: dict = dataclasses.field(default_factory=dict, compare=False)

    def replace(self, source: str = "", **kw) -> "Hardware":
        src = dict(self.sources)
        for k in kw:
            src[k] = source
        return dataclasses.replace(self, sources=src, **kw)


# Placeholders until bench_tree runs. H100 HBM: a line fit of the decode sweep's best rows
# (benchmarks/results/decode_sweep*_H100*.json, see from_decode_results); H200: the same fraction
# of its 4.8 TB/s spec. Links: NVLink 4 (450 GB/s per direction, ~80% reached by NCCL) and one
# NDR 400 Gb/s NIC per GPU (50 GB/s, ~90% reached), alphas typical of NCCL's LL protocol.
_ASSUMED_LINKS = dict(
    intra=Link(alpha_us=4.0, beta_gbs=360.0),
    inter=Link(alpha_us=8.0, beta_gbs=45.0),
    p2p=Link(alpha_us=10.0, beta_gbs=370.0),
)
_LINK_SOURCES = {
    "intra": "assumed: NVLink 4 via NVSwitch, 80% of 450 GB/s per direction, 4 us per ring step",
    "inter": "assumed: InfiniBand NDR, one 400 Gb/s NIC per GPU at 90%, 8 us per step",
    "p2p": "assumed: NVLink send/recv, 370 GB/s, 10 us per message",
    "gpus_per_node": "assumed: 8 GPUs per node (HGX)",
    "combine_us": "assumed: pack + merge + cast launches, 15 us",
}

H100 = Hardware("H100 SXM (placeholder)", hbm_gbs=2900.0, decode_us=20.0, combine_us=15.0, **_ASSUMED_LINKS,
                sources={"hbm_gbs": "placeholder: ~86% of the 3.35 TB/s spec (decode sweep best rows)",
                         "decode_us": "placeholder: fixed cost of a decode launch", **_LINK_SOURCES})
H200 = Hardware("H200 (placeholder)", hbm_gbs=4100.0, decode_us=20.0, combine_us=15.0, **_ASSUMED_LINKS,
                sources={"hbm_gbs": "derived: H100's measured fraction of spec x the H200's 4.8 TB/s",
                         "decode_us": "placeholder: as H100", **_LINK_SOURCES})


def kv_bytes(context: int, B: int, Hkv: int, D: int, itemsize: int = 2) -> int:
    """Bytes of K and V of ``B`` sequences of ``context`` tokens."""
    return 2 * B * context * Hkv * D * itemsize


def _nodes(p: int, hw: Hardware) -> tuple[int, int]:
    g = min(p, hw.gpus_per_node)
    return g, math.ceil(p / g)


def allgather_us(p: int, m: float, hw: Hardware) -> float:
    """Ring all-gather of ``m`` bytes per rank over ``p`` GPUs (microseconds)."""
    if p <= 1:
        return 0.0
    g, n = _nodes(p, hw)
    link = hw.intra if n == 1 else hw.inter
    return (p - 1) * link.us(m)


def allreduce_us(p: int, m: float, hw: Hardware) -> float:
    """All-reduce of ``m`` bytes: the faster of ring and (two-level) tree, as NCCL's tuner picks."""
    if p <= 1:
        return 0.0
    g, n = _nodes(p, hw)
    link = hw.intra if n == 1 else hw.inter
    ring = 2 * (p - 1) * link.alpha_us + 2 * (p - 1) / p * m / (link.beta_gbs * 1e3)
    depth = (g - 1) * hw.intra.alpha_us + (math.ceil(math.log2(n)) * hw.inter.alpha_us if n > 1 else 0.0)
    tree = 2 * depth + 2 * m / (link.beta_gbs * 1e3)
    return min(ring, tree)


def decode_us(nbytes: float, hw: Hardware) -> float:
    return hw.decode_us + nbytes / (hw.hbm_gbs * 1e3)


def predict(hw: Hardware, p: int, context: int, B: int = 1, Hq: int = 32, Hkv: int = 8, D: int = 128,
            itemsize: int = 2) -> dict:
    """Predicted microseconds per decode step and layer of each method on ``p`` GPUs.

    Returns
    -------
    dict
        ``single`` (one GPU, whatever its memory), ``tree-allgather``, ``tree-allreduce3``,
        ``tree-hier``, ``ring``, and ``shard_bytes``.
    """
    kv = kv_bytes(context, B, Hkv, D, itemsize)
    S = kv / p
    dec = decode_us(S, hw)
    small, big = 4 * B * Hq, 4 * B * Hq * D
    out = dict(single=decode_us(kv, hw), shard_bytes=S)
    packed = B * Hq * (D * itemsize + 4)                          # out in q.dtype + float32 lse
    out["tree-allgather"] = dec + hw.combine_us + allgather_us(p, packed, hw)
    ar3 = allreduce_us(p, small, hw) + allreduce_us(p, big, hw) + allreduce_us(p, small, hw)
    out["tree-allreduce3"] = dec + 3 * hw.combine_us + ar3 - (hw.intra.alpha_us if p > 1 else 0.0)
    g, n = _nodes(p, hw)
    inner = dataclasses.replace(hw, gpus_per_node=g)
    hier = allgather_us(g, packed, inner) + hw.combine_us
    if n > 1:
        rails = dataclasses.replace(hw, gpus_per_node=1)
        hier += 3 * hw.combine_us + 2 * allreduce_us(n, small, rails) + allreduce_us(n, big, rails)
    out["tree-hier"] = dec + hier
    if p <= 1:
        out["ring"] = dec
    else:
        link = hw.p2p if n == 1 else hw.inter
        out["ring"] = dec + (p - 1) * max(dec, link.us(S)) + hw.combine_us
    return out


# ------------------------------------------------------------------------------------------------
# calibration


def fit_line(xs, ys) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns ``(a, b)`` (``a`` clamped at 0)."""
    n = len(xs)
    if n == 0:
        raise ValueError("xs: expected at least one point, got none")
    if n == 1:
        return 0.0, ys[0] / xs[0] if xs[0] else 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    if a < 0:  # a negative intercept is noise: refit through the origin
        a, b = 0.0, sum(x * y for x, y in zip(xs, ys)) / max(sum(x * x for x in xs), 1e-30)
    return a, b


def from_decode_results(hw: Hardware, pattern: Optional[str] = None) -> Hardware:
    """``hw`` with ``hbm_gbs`` and ``decode_us`` fitted on the decode benchmark's best rows.

    Reads ``benchmarks/results/decode_*.json`` (``sweep`` lists of ``{case, us, gbs}``); for each
    case the fastest configuration, then ``us = decode_us + bytes / hbm_gbs``.
    """
    if pattern is None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        pattern = os.path.join(root, "benchmarks", "results", "decode_*.json")
    best: dict = {}
    files = sorted(glob.glob(pattern))
    for path in files:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):  # a probe's list of rows, not a suite or sweep file
            continue
        for row in data.get("sweep", []):
            if row.get("us") and row.get("gbs"):
                key = row["case"]
                if key not in best or row["us"] < best[key]["us"]:
                    best[key] = row
    if len(best) < 2:
        return hw
    xs = [r["gbs"] * r["us"] * 1e3 for r in best.values()]   # bytes
    ys = [r["us"] for r in best.values()]
    a, b = fit_line(xs, ys)
    names = ", ".join(os.path.basename(p) for p in files)
    return hw.replace(f"measured: line fit of {len(best)} decode cases ({names})",
                      hbm_gbs=1.0 / (b * 1e3), decode_us=a)


def fit_bench(path: str, hw: Hardware = H200, timing: str = "auto") -> Hardware:
    """Refit ``hw`` from a ``bench_tree.json`` (2 or more GPUs of one node).

    ``timing``: ``"graph"`` fits the CUDA-graph replay times (the device's cost of a step, no host
    launch time), ``"eager"`` the back-to-back eager times; ``"auto"`` takes graph times when the
    bench recorded them (``--graphs``).

    - intra-node link: ``alpha``/``beta`` by least squares over the all-gather and all-reduce rows
      of the collective micro-benchmark (``t = steps * alpha + volume / beta`` with the ring's
      steps and volumes);
    - P2P link: a line fit of the ring's measured hops (``(ring - decode(S) - combine) / (p - 1)``
      against the shard bytes ``S``) when the bench timed ring decode, else of the send/recv rows
      (the micro-benchmark stops at 64 MiB, far below the GiB shards a ring step moves);
    - ``hbm_gbs``/``decode_us``: a line fit of the one-GPU (``single``) rows, with the per-rank
      ``local`` rows when there are few;
    - ``combine_us``: median of ``tree-allgather - local - allgather(message)`` over the cases.
    """
    with open(path) as f:
        data = json.load(f)
    p = int(data["env"].get("world", 2))
    coll = data.get("collectives", [])
    if timing == "auto":
        timing = "graph" if any(r.get("all_gather_graph_us") for r in coll) else "eager"
    if timing not in ("graph", "eager"):
        raise ValueError(f"timing: expected 'auto', 'graph' or 'eager', got {timing!r}")
    g = "_graph" if timing == "graph" else ""
    key = "graph_ms" if g else "ms"
    src = f"measured: {os.path.basename(path)} ({data['env'].get('device')} x{p}, {timing} times)"
    # -- links: t = s * alpha + v / beta, solved for (alpha, 1 / beta)
    obs = []
    for row in coll:
        m = row["bytes"]
        if row.get(f"all_gather{g}_us"):
            obs.append((p - 1, (p - 1) * m, row[f"all_gather{g}_us"]))
        if row.get(f"all_reduce{g}_us"):
            obs.append((2 * (p - 1), 2 * (p - 1) / p * m, row[f"all_reduce{g}_us"]))
    if len(obs) >= 2:
        alpha, inv_beta = _lstsq2(obs)
        hw = hw.replace(src + ", collective micro-benchmark", intra=Link(max(alpha, 0.1), 1.0 / max(inv_beta, 1e-9) / 1e3))
    sr = [(row["bytes"], row["sendrecv_us"]) for row in coll if row.get("sendrecv_us")]
    if len(sr) >= 2:
        a, b = fit_line(*zip(*sr))
        hw = hw.replace(src + ", send/recv rows", p2p=Link(max(a, 0.1), 1.0 / max(b, 1e-12) / 1e3))
    # -- HBM: one-GPU decode rows
    pts = []
    for row in data.get("rows", []):
        single = row["methods"].get("single", {})
        if single.get(key):
            pts.append((row["kv_bytes_total"], 1e3 * single[key]))
    if len(pts) < 3:
        for row in data.get("rows", []):
            loc = row["methods"].get("local", {})
            if g and loc.get("graph_ms"):  # graph times are recorded for rank 0 only
                pts.append((row["kv_bytes_per_rank"][0], 1e3 * loc["graph_ms"]))
                continue
            for nbytes, ms in zip(row.get("kv_bytes_per_rank", []), loc.get("ms_per_rank") or []):
                if ms:
                    pts.append((nbytes, 1e3 * ms))
    if len(pts) >= 2:
        a, b = fit_line(*zip(*pts))
        hw = hw.replace(src + ", one-GPU decode rows", hbm_gbs=1.0 / (b * 1e3), decode_us=a)
    # -- what a tree step costs beyond its local decode and the collective itself
    extra = []
    for row in data.get("rows", []):
        m = row["methods"]
        ag, loc = m.get("tree-allgather", {}).get(key), m.get("local", {}).get(key)
        if ag and loc:
            msg = row["B"] * row["hq"] * (row["d"] * 2 + 4)
            extra.append(1e3 * (ag - loc) - allgather_us(p, msg, hw))
    if extra:
        extra.sort()
        hw = hw.replace(src + ", tree-allgather minus local decode minus all-gather", combine_us=max(extra[len(extra) // 2], 0.0))
    # -- the ring's hop, from its own rows (eager: the ring is never captured)
    hops = []
    for row in data.get("rows", []):
        ring = row["methods"].get("ring", {}).get("ms")
        if ring and p > 1:
            S = max(row["kv_bytes_per_rank"])
            hops.append((S, (1e3 * ring - decode_us(S, hw) - hw.combine_us) / (p - 1)))
    if len(hops) >= 2:
        a, b = fit_line(*zip(*hops))
        hw = hw.replace(src + ", ring decode rows (per-hop time vs shard bytes)",
                        p2p=Link(max(a, 0.1), 1.0 / max(b, 1e-12) / 1e3))
    return dataclasses.replace(hw, name=f"{data['env'].get('device')} (fitted)")


def _lstsq2(obs) -> tuple[float, float]:
    """Least squares ``t = s * x + v * y`` over ``(s, v, t)``; returns ``(x, y)``."""
    ss = sum(s * s for s, v, t in obs)
    sv = sum(s * v for s, v, t in obs)
    vv = sum(v * v for s, v, t in obs)
    st = sum(s * t for s, v, t in obs)
    vt = sum(v * t for s, v, t in obs)
    det = ss * vv - sv * sv
    if abs(det) < 1e-30:
        return st / ss, 0.0
    x = (st * vv - vt * sv) / det
    y = (ss * vt - sv * st) / det
    if x < 0 or y < 0:  # keep the physical sign: fit the other alone
        if y < 0:
            return st / ss, 0.0
        return 0.0, vt / vv
    return x, y
