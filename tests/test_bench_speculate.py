"""``benchmarks/bench_speculate.py --smoke``: every code path of the speculative decoding benchmark on a tiny model."""
from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_speculate  # noqa: E402


def test_smoke(tmp_path):
    assert bench_speculate.main(["--smoke", "--out", str(tmp_path)]) == 0
    (js,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.load(open(tmp_path / js))["rows"]
    assert all("error" not in r for r in rows), [r["error"] for r in rows if "error" in r]
    by = {(r["batch"], r["method"], r["K"]): r for r in rows}
    # oracle drafts are all kept: 8 tokens after the first in steps of K + 1 = 3 (one row) and 4 (two rows)
    assert by[(1, "leanattn speculate, oracle drafts", 2)]["steps"] == 3
    assert by[(2, "leanattn speculate, oracle drafts", 3)]["tokens_per_step"] == 4
    assert by[(1, "leanattn speculate, wrong drafts", 2)]["tokens_per_step"] == 1
    assert all(r["tokens_equal"] == r["new_tokens"] for r in rows)  # fp32: the greedy tokens everywhere
    assert "ms_per_token" in by[(1, "transformers sdpa, prompt lookup", 2)]
    assert (tmp_path / js.replace(".json", ".md")).exists()
