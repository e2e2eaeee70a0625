"""A Gluon kernel whose warp-specialized partitions touch no shared memory of their own, for compute-sanitizer
racecheck: whatever hazards it reports come from Triton's lowering of ``gl.warp_specialize`` (the partition
index the default warps write to shared memory and the workers read, between CTA-wide barriers), not from a
kernel's own rings. ``prefix_gluon_ws_kernel`` has the same partitions: a 4-warp default, a 4-warp worker and a
1-warp worker, with registers capped.

    compute-sanitizer --tool racecheck python benchmarks/racecheck_ws_minimal.py
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _part(X, i: gl.constexpr, WARPS: gl.constexpr):
    offs = gl.arange(0, 32 * WARPS, layout=gl.BlockedLayout([1], [32], [WARPS], [0]))
    gl.store(X + i * 128 + offs, gl.full([32 * WARPS], i + 1, gl.int32, gl.BlockedLayout([1], [32], [WARPS], [0])))


@gluon.jit
def ws_minimal_kernel(X):
    gl.warp_specialize([(_part, (X, 0, 4)), (_part, (X, 1, 4)), (_part, (X, 2, 1))], [4, 1], [144, 24])


if __name__ == "__main__":
    x = torch.zeros(3 * 128, dtype=torch.int32, device="cuda")
    ws_minimal_kernel[(4,)](x, num_warps=4, maxnreg=104)
    torch.cuda.synchronize()
    want = torch.tensor([1] * 128 + [2] * 128 + [3] * 32 + [0] * 96, dtype=torch.int32)
    print("ws minimal:", "ok" if torch.equal(x.cpu(), want) else f"wrong {x.cpu().tolist()}")
