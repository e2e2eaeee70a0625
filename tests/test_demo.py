"""``leanattn demo``'s schedule model and picture, and the CLI's plumbing (not the whole demo)."""
from __future__ import annotations

import pytest
import torch

from leanattn import cli, demo

SMALL = [dict(name="gqa B=1 32k", lens=[32 * 1024], hq=32, hkv=8, d=128),
         dict(name="ragged", lens=[128 * 1024, 1024, 0, 5], hq=32, hkv=8, d=128),
         dict(name="mqa d64", lens=[3000, 17], hq=16, hkv=1, d=64)]


def test_sm_loads_dispatches_to_least_loaded():
    assert demo.sm_loads([5, 1, 1, 1, 1], 2).tolist() == [5, 4]
    assert demo.sm_loads([], 3).tolist() == [0, 0, 0]


def test_schedule_summary():
    rows = demo.schedule_summary(SMALL, num_sms=132)
    for shape, r in zip(SMALL, rows):
        cfg = demo.gpu_config(shape["d"], shape["hq"] // shape["hkv"])
        assert r["block_n"] == cfg.block_n and r["lean_grid"] == 132 * demo.programs_per_sm(shape["d"], cfg)
        # both schedules do all the work, no more
        assert r["lean"].sum() == r["split"].sum() == r["tiles"]
        # stream-K: programs differ by one tile at most, so SMs by programs-per-SM tiles at most
        # balanced to a tile a program, or (equal lengths, aligned cut over fewer programs) an idle
        # slot on some SMs, never a busier SM than the split schedule's
        assert (r["lean"].max() - r["lean"].min() <= demo.programs_per_sm(shape["d"], cfg)
                or r["lean"].max() <= r["split"].max())
        assert r["speedup"] == pytest.approx(r["split"].max() / r["lean"].max())
        assert r["split_imbalance"] >= 1.0 and r["lean_imbalance"] >= 1.0
    # one long sequence among short ones: split waits on the long heads, lean does not
    assert rows[1]["speedup"] > 1.5
    table = demo.format_summary(rows)
    assert all(r["name"] in table for r in rows) and "lean speedup" in table


def test_suite_shapes_summary_is_quick():
    rows = demo.schedule_summary()
    assert [r["name"] for r in rows] == [s["name"] for s in demo.SUITE_SHAPES]
    ragged = next(r for r in rows if r["name"].startswith("ragged-tail"))
    assert ragged["speedup"] > 2 and ragged["lean_imbalance"] < 1.05


def test_plot_schedules(tmp_path):
    path = demo.plot_schedules(demo.schedule_summary(SMALL[:2], num_sms=16), str(tmp_path / "s" / "schedule.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_check_kernels_cpu():
    results = demo.check_kernels(torch.device("cpu"), log=lambda *_: None)
    assert [r["schedule"] for r in results] == ["lean", "split", "lean, 4 tokens"]
    assert all(r["ok"] and r["deterministic"] for r in results)


def test_cli_bench_missing(capsys):
    assert cli.main(["bench", "no-such-method"]) == 2
    assert "bench_no-such-method.py" in capsys.readouterr().err


def test_cli_bench_decode_without_gpu(capsys):
    if cli.find_benchmark("decode") is None:
        pytest.skip("benchmarks/bench_decode.py not in this checkout")
    if torch.cuda.is_available():
        pytest.skip("would run the real benchmark")
    assert cli.main(["bench", "decode", "--quick"]) == 0
    assert "CUDA" in capsys.readouterr().out


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])
