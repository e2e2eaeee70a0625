"""Triton's compile cache between device calls, which start on a bare machine.

    python3 benchmarks/triton_cache.py unpack ARCHIVE DIR   extract a carried archive into DIR (none: nothing)
    python3 benchmarks/triton_cache.py pack DIR ARCHIVE     DIR's kernels, metadata and binaries only, to ARCHIVE

Why: a bare machine compiles every kernel again. Here, 50 sparse kernels took 67 s of one core to compile and 3.8 s
to load from the cache (2026-12-07, Triton 3.6 for sm_90a), and tests-sparse-gqa took 504 s on an H100.

Triton's cache key holds the kernel's source, options, target and Triton's build, so a stale entry is never used:
a kernel changed since is compiled again. A hit needs an entry's metadata (``*.json``) and binary (``*.cubin``)
alone (``triton.compiler.compile`` skips a group's missing files), and the group files name absolute paths, so DIR
must be the same on every machine (gpu_check.sh: /tmp/triton_cache). A file comes back from a call at 16 MiB at
most: past ``LIMIT`` the oldest entries (by directory time) are left out, a half at a time. Python's own xz (preset
1: 112 MB of binaries in 4 s and 16 MB here), since the device image's tools are not listed.
"""
from __future__ import annotations

import os
import sys
import tarfile

LIMIT = 15 * 1024 * 1024
KEEP = (".json", ".cubin")


def unpack(archive: str, dir_: str) -> None:
    os.makedirs(dir_, exist_ok=True)
    if not os.path.exists(archive):
        return
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(dir_, filter="data")
    print(f"triton cache: {len(os.listdir(dir_))} kernels after unpacking {archive}")


def pack(dir_: str, archive: str) -> None:
    if not os.path.isdir(dir_):
        return
    entries = sorted(os.listdir(dir_), key=lambda e: os.path.getmtime(os.path.join(dir_, e)), reverse=True)
    n = len(entries)
    while n > 0:
        with tarfile.open(archive + ".tmp", "w:xz", preset=1) as tar:
            for entry in entries[:n]:
                path = os.path.join(dir_, entry)
                for name in sorted(os.listdir(path)) if os.path.isdir(path) else ():
                    if name.endswith(KEEP):
                        tar.add(os.path.join(path, name), arcname=f"{entry}/{name}")
        if os.path.getsize(archive + ".tmp") <= LIMIT:
            os.replace(archive + ".tmp", archive)
            print(f"triton cache: {n} of {len(entries)} kernels packed, {os.path.getsize(archive)} bytes")
            return
        n //= 2
    if os.path.exists(archive + ".tmp"):
        os.remove(archive + ".tmp")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    {"pack": pack, "unpack": unpack}[sys.argv[1]](*sys.argv[2:])
