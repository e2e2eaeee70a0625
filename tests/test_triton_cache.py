"""``benchmarks/triton_cache.py``: Triton's compile cache packed for the next device call and unpacked there."""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import triton_cache  # noqa: E402


def _entry(root, name, age_s, payload=b"x" * 100):
    """A cache entry as Triton 3.6 writes one: the group file, metadata, binary and IRs; its directory ``age_s``
    seconds old."""
    path = root / name
    path.mkdir()
    for suffix, data in ((".json", b"{}"), (".cubin", payload), (".ptx", b"ptx"), (".llir", b"llir"), (".ttgir", b"")):
        (path / f"kernel{suffix}").write_bytes(data)
    (path / "__grp__kernel.json").write_bytes(b'{"child_paths": {}}')
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_round_trip_keeps_metadata_and_binaries_only(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(3):
        _entry(src, f"K{i}", age_s=i)
    archive = str(tmp_path / "cache.tar.xz")
    triton_cache.pack(str(src), archive)
    triton_cache.unpack(archive, str(dst))
    assert sorted(os.listdir(dst)) == ["K0", "K1", "K2"]
    assert sorted(os.listdir(dst / "K1")) == ["__grp__kernel.json", "kernel.cubin", "kernel.json"]
    assert (dst / "K2" / "kernel.cubin").read_bytes() == b"x" * 100


def test_pack_past_the_limit_keeps_the_newest_half(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):  # incompressible binaries of 64 KiB each
        _entry(src, f"K{i}", age_s=10 * i, payload=os.urandom(1 << 16))
    monkeypatch.setattr(triton_cache, "LIMIT", 3 << 16)
    archive = str(tmp_path / "cache.tar.xz")
    triton_cache.pack(str(src), archive)
    triton_cache.unpack(archive, str(tmp_path / "dst"))
    assert sorted(os.listdir(tmp_path / "dst")) == ["K0", "K1"]
    assert not os.path.exists(archive + ".tmp")


def test_nothing_to_pack_or_unpack(tmp_path):
    archive = str(tmp_path / "cache.tar.xz")
    triton_cache.pack(str(tmp_path / "missing"), archive)
    (tmp_path / "empty").mkdir()
    triton_cache.pack(str(tmp_path / "empty"), archive)
    assert not os.path.exists(archive) and not os.path.exists(archive + ".tmp")
    triton_cache.unpack(archive, str(tmp_path / "dst"))
    assert os.listdir(tmp_path / "dst") == []
