"""``benchmarks/offline_resources.py``: kernels compile for sm_90a without a GPU, and every launch of a
case is reached (a launch path that cannot take the tool's non-launching kernels stops the case early)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decode_split_case_compiles_both_kernels():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.join(ROOT, "src")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "offline_resources.py"), "decode",
                          "--cases", "decode 32/32 D=64 split"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped at" not in run.stdout, run.stdout
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("decode 32/32 D=64 split")]
    assert {r[4] for r in rows} == {"split_decode_kernel", "merge_states_kernel"}, run.stdout
    assert all(int(r[5]) > 0 for r in rows)  # registers read from the cubin
