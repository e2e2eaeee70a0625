"""The tree/ring cost model: formulas, orderings the model must show, and refits from bench JSONs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from leanattn.distributed import cost_model as cm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_collective_formulas():
    hw = cm.H200
    assert cm.allgather_us(1, 1e6, hw) == 0 and cm.allreduce_us(1, 1e6, hw) == 0
    m = 4096
    # inside a node: ring all-gather = (p - 1) (alpha + m / beta)
    assert math.isclose(cm.allgather_us(8, m, hw), 7 * (hw.intra.alpha_us + m / (hw.intra.beta_gbs * 1e3)))
    # across nodes the all-gather runs at the inter-node link and grows linearly with p
    assert cm.allgather_us(64, m, hw) > 7 * cm.allgather_us(8, m, hw)
    # NCCL's tree all-reduce keeps the latency logarithmic in the node count
    assert cm.allreduce_us(512, 128, hw) < 2 * cm.allreduce_us(64, 128, hw)


def test_tree_comm_independent_of_context_ring_not():
    hw = cm.H200
    for p in (8, 64):
        a, b = cm.predict(hw, p, 1 << 20), cm.predict(hw, p, 1 << 24)
        dec = lambda ctx: cm.decode_us(cm.kv_bytes(ctx, 1, 8, 128) / p, hw)  # noqa: E731
        for name in ("tree-allgather", "tree-allreduce3"):
            assert math.isclose(a[name] - dec(1 << 20), b[name] - dec(1 << 24), rel_tol=1e-9)
        assert b["ring"] - dec(1 << 24) > 10 * (a["ring"] - dec(1 << 20))


def test_orderings():
    hw = cm.H200
    for p in (8, 16, 64, 512):
        pr = cm.predict(hw, p, 16 << 20)
        assert min(pr["tree-allgather"], pr["tree-allreduce3"]) < pr["ring"]
    # at scale the log-latency all-reduces beat the ring all-gather
    big = cm.predict(hw, 512, 1 << 20)
    assert big["tree-allreduce3"] < big["tree-allgather"]
    # more GPUs cut a long context's tree latency while the decode dominates
    assert cm.predict(hw, 64, 128 << 20)["tree-allreduce3"] < cm.predict(hw, 8, 128 << 20)["tree-allreduce3"]


def test_fit_line_and_decode_results():
    a, b = cm.fit_line([1.0, 2.0, 3.0], [12.0, 14.0, 16.0])
    assert math.isclose(a, 10.0) and math.isclose(b, 2.0)
    with pytest.raises(ValueError, match="^xs: expected at least one point, got none$"):
        cm.fit_line([], [])
    hw = cm.from_decode_results(cm.H100)
    assert 500 < hw.hbm_gbs < 5000 and hw.decode_us >= 0
    assert "measured" in hw.sources["hbm_gbs"]


def synthetic_bench(tmp_path, alpha=3.0, beta=300.0, hbm=4000.0, dec=15.0, combine=12.0, p=2):
    """A bench_tree.json made by the model itself, to check that the refit recovers its inputs."""
    coll = []
    for i in range(8):
        m = 256 * 4 ** i
        coll.append(dict(bytes=m, all_gather_us=(p - 1) * (alpha + m / (beta * 1e3)),
                         all_reduce_us=2 * (p - 1) * alpha + 2 * (p - 1) / p * m / (beta * 1e3),
                         sendrecv_us=alpha + 2 + m / (beta * 1.1e3)))
    rows = []
    for ctx in (1 << 17, 1 << 19, 1 << 20):
        kv = cm.kv_bytes(ctx, 1, 8, 128)
        local = dec + kv / p / (hbm * 1e3)
        ag = local + combine + (p - 1) * (alpha + 32 * (2 * 128 + 4) / (beta * 1e3))
        rows.append(dict(case=f"gqa {ctx}", B=1, hq=32, hkv=8, d=128, ctx=ctx, kv_bytes_total=kv,
                         kv_bytes_per_rank=[kv // p] * p,
                         methods={"single": dict(ms=(dec + kv / (hbm * 1e3)) / 1e3),
                                  "local": dict(ms=local / 1e3, ms_per_rank=[local / 1e3] * p),
                                  "tree-allgather": dict(ms=ag / 1e3)}))
    path = tmp_path / "bench_tree.json"
    path.write_text(json.dumps(dict(env=dict(world=p, device="fake GPU"), collectives=coll, rows=rows)))
    return str(path)


def test_fit_bench_recovers_inputs(tmp_path):
    hw = cm.fit_bench(synthetic_bench(tmp_path))
    assert math.isclose(hw.intra.alpha_us, 3.0, rel_tol=1e-6) and math.isclose(hw.intra.beta_gbs, 300.0, rel_tol=1e-6)
    assert math.isclose(hw.p2p.alpha_us, 5.0, rel_tol=1e-6) and math.isclose(hw.p2p.beta_gbs, 330.0, rel_tol=1e-6)
    assert math.isclose(hw.hbm_gbs, 4000.0, rel_tol=1e-6) and math.isclose(hw.decode_us, 15.0, rel_tol=1e-6)
    assert math.isclose(hw.combine_us, 12.0, rel_tol=1e-6)
    assert hw.sources["intra"].startswith("measured") and hw.sources["inter"].startswith("assumed")
    with pytest.raises(ValueError, match="^timing: expected 'auto', 'graph' or 'eager', got 'cuda'$"):
        cm.fit_bench(synthetic_bench(tmp_path), timing="cuda")


def test_script_writes_plot_and_table(tmp_path):
    bench = synthetic_bench(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tree_cost_model.py"), "--bench", bench,
                        "--out", str(tmp_path / "out"), "--contexts", "1,4"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    md = (tmp_path / "out" / "tree_cost_model.md").read_text()
    assert "measured" in md and "assumed" in md and "Model vs measurement" in md
    assert (tmp_path / "out" / "tree_cost_model.png").stat().st_size > 1000
