"""Gluon kernels whose warp-specialized partitions touch no shared memory of their own, for compute-sanitizer
racecheck: whatever hazards they report come from Triton's lowering of ``gl.warp_specialize`` (the partition
index the default warps write to shared memory and the workers read, between CTA-wide barriers), not from a
kernel's own rings. They have ``prefix_gluon_ws_kernel``'s partitions: a 4-warp default, a 4-warp worker and a
1-warp worker, with registers capped. ``plain``: each partition stores to global memory only; ``barriers``: the
default also initialises mbarriers before the partitions and invalidates them after, the 1-warp worker arrives on
one and the other two wait on it (as the prefix kernel's ring does).

    compute-sanitizer --tool racecheck python benchmarks/racecheck_ws_minimal.py [plain|barriers]
"""
import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier


@gluon.jit
def _part(X, bar, i: gl.constexpr, WARPS: gl.constexpr, BARRIERS: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    if BARRIERS:
        if i == 2:
            mbarrier.arrive(bar.index(0), count=1)
        else:
            mbarrier.wait(bar.index(0), 0)
    offs = gl.arange(0, 32 * WARPS, layout=layout)
    gl.store(X + i * 128 + offs, gl.full([32 * WARPS], i + 1, gl.int32, layout))


@gluon.jit
def ws_minimal_kernel(X, BARRIERS: gl.constexpr):
    bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    if BARRIERS:
        for i in gl.static_range(2):
            mbarrier.init(bar.index(i), count=1)
    gl.warp_specialize([(_part, (X, bar, 0, 4, BARRIERS)), (_part, (X, bar, 1, 4, BARRIERS)),
                        (_part, (X, bar, 2, 1, BARRIERS))], [4, 1], [144, 24])
    if BARRIERS:
        for i in gl.static_range(2):
            mbarrier.invalidate(bar.index(i))


if __name__ == "__main__":
    dev = "cpu" if "--offline" in sys.argv else "cuda"
    for variant in [a for a in sys.argv[1:] if not a.startswith("--")] or ["plain", "barriers"]:
        x = torch.zeros(3 * 128, dtype=torch.int32, device=dev)
        ws_minimal_kernel[(4,)](x, variant == "barriers", num_warps=4, maxnreg=104)
        if dev == "cuda":
            torch.cuda.synchronize()
        want = torch.tensor([1] * 128 + [2] * 128 + [3] * 32 + [0] * 96, dtype=torch.int32)
        print(f"ws minimal {variant}:", "ok" if torch.equal(x.cpu(), want) else f"wrong {x.cpu().tolist()}")
