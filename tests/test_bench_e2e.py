"""``benchmarks/bench_e2e.py --smoke``: every code path of the end-to-end benchmark on a tiny model."""
from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_e2e  # noqa: E402


def test_smoke(tmp_path):
    assert bench_e2e.main(["--smoke", "--out", str(tmp_path), "--contexts", "40", "--samples", "2", "--fused-ops"]) == 0
    (js,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    res = json.load(open(tmp_path / js))
    methods_a = {r["method"]: r for r in res["part_a"]}
    assert "step_ms" in methods_a["transformers leanattn (dynamic cache)"]
    assert "step_ms" in methods_a["transformers sdpa (static cache)"]
    assert methods_a["leanattn.generate fused_ops"]["tokens_equal_unfused"] == 5  # fp32: the same greedy tokens
    assert all("step_ms" in r for r in res["part_b"])
    assert (tmp_path / js.replace(".json", ".md")).exists()
