"""``benchmarks/offline_resources.py``: kernels compile for sm_90a without a GPU, and every launch of a
case is reached (a launch path that cannot take the tool's non-launching kernels stops the case early)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile_offline(script, *args, timeout=600):
    """``benchmarks/<script> args`` in a process of its own, outside the interpreter (it compiles for sm_90a)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.join(ROOT, "src")
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_decode_split_case_compiles_both_kernels():
    run = _compile_offline("offline_resources.py", "decode", "--cases", "decode 32/32 D=64 split")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped at" not in run.stdout, run.stdout
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("decode 32/32 D=64 split")]
    assert {r[4] for r in rows} == {"split_decode_kernel", "merge_states_kernel"}, run.stdout
    assert all(int(r[5]) > 0 for r in rows)  # registers read from the cubin
    # the split kernel's tile loop read from its SASS: instructions/products of a warp
    loop = next(r[-1] for r in rows if r[4] == "split_decode_kernel")
    assert loop != "-" and all(int(x) > 0 for x in loop.split("/")), run.stdout


def test_gluon_prefix_kernels_compile_for_sm90():
    # every variant of bifurcated probe 38 (the plain Gluon prefix at 64 and 128 rows, the warp-specialized one at 3
    # and 4 stages, with and without ping-pong turns) compiles for sm_90a: no stack, the register cap of the
    # warp-specialized kernel (ops/bifurcated_overlap.WS_MAXNREG) and one program per SM at 128 rows
    import ast

    from leanattn.kernels import bifurcated_prefix_gluon as pg
    from leanattn.ops import bifurcated_overlap as ov
    if not pg.AVAILABLE:
        import pytest
        pytest.skip("this Triton has no Gluon")
    run = _compile_offline("probe_ws_prefix.py", "--offline", "--cases", "gqa 16k x64", timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line[:line.index(" {")]: ast.literal_eval(line[line.index(" {") + 1:])
            for line in run.stdout.splitlines() if line.startswith("gqa 16k x64") and " {" in line}
    assert len(rows) == 6, run.stdout
    for tag, r in rows.items():
        assert r["stack"] == 0, (tag, r)
        if " ws " in tag:
            assert r["regs"] == ov.WS_MAXNREG and r["warps"] == 12 and r["occupancy"] == 1, (tag, r)


def test_gluon_prefix_float8_kernels_compile_for_sm90():
    # the Gluon prefix over float8 tiles (ops/bifurcated_overlap.GluonPrefix, kernels/bifurcated_prefix_gluon) beside
    # the 16-bit kernels: no stack, and two programs an SM at 64 rows over two stages (the shape
    # bifurcated_overlap.fp8_stages gives where two programs share an SM)
    from leanattn.kernels import bifurcated_prefix_gluon as pg
    if not pg.AVAILABLE:
        import pytest
        pytest.skip("this Triton has no Gluon")
    run = _compile_offline("offline_resources.py", "overlap", timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped at" not in run.stdout, run.stdout
    rows = {line[:32].strip(): line[32:].split() for line in run.stdout.splitlines() if line.startswith("overlap ")}
    assert len(rows) == 8, run.stdout
    for case, (kernel, regs, stack, shared, warps, occ, ring, loop) in rows.items():
        assert int(stack) == 0 and int(regs) > 0, (case, regs, stack)
    assert rows["overlap fp8 64r 2st"][5] == "2" and rows["overlap bf16 64r 3st"][5] == "2"
    assert rows["overlap fp8 128r 4st"][4] == "8" and rows["overlap bf16 ws 4st"][4] == "12"


def test_one_query_row_compiles():
    # an integer argument equal to 1 reaches a kernel as a constant (a Python int) on GPUs only: the merge of one
    # query row's states once failed to compile there (merge_states_kernel's slot strides; review, 2026-12-05)
    cases = "one row merge_states 3,one row bifurcated prefix alone,one row bifurcated window"
    run = _compile_offline("offline_resources.py", "one-row", "--cases", cases)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped at" not in run.stdout, run.stdout
    kernels = {w.split("#")[0] for line in run.stdout.splitlines() if line.startswith("one row")
               for w in line.split() if "_kernel" in w}
    assert {"merge_states_kernel", "bifurcated_states_kernel", "merge_list_kernel"} <= kernels, run.stdout


def test_append_kernel_compiles_for_sm90():
    # the KV append compiled for sm_90a as the GPU compiles it, each form of positions included: the interpreter does
    # not check what compiled Triton refuses (a variable of two types across a runtime if's branches once a
    # shared-prefix call passed int64 rotary positions failed every such call on an H100, 2026-12-06)
    run = _compile_offline("offline_resources.py", "append")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped at" not in run.stdout, run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("append") and "append_kv_kernel" in line]
    assert len(rows) == 6, run.stdout


def test_batch_invariant_and_leftpad_cases_compile():
    # schedule="batch_invariant" (the split kernel and the merge folding one state a step) and cache_leftpad (the
    # lean and split kernels with LEFTPAD) compile for sm_90a
    cases = "decode batch_invariant 32/8 D=128,decode leftpad 32/8 D=128,decode leftpad-split 32/8 D=128"
    run = _compile_offline("offline_resources.py", "decode", "--cases", cases)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stopped at" not in run.stdout, run.stdout
    kernels = {line.split()[4] for line in run.stdout.splitlines()
               if line.startswith("decode batch_invariant") or line.startswith("decode leftpad")}
    assert kernels == {"split_decode_kernel", "merge_states_kernel", "lean_decode_kernel"}, run.stdout
