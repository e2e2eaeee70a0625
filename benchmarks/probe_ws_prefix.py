"""A warp-specialized Gluon prefix pass against the library's, prefix states only (probe 38).

The library's Gluon prefix (``kernels/bifurcated_prefix_gluon.py``) runs 64 rows a warp group; at 128 rows its two
warp groups share one K/V ring and meet at a block-wide barrier before each refill, which the compiler places
because the same warps issue the TMA loads. Here, as in FlashAttention-3, one producer warp issues the loads and each
64-row consumer warp group is its own partition: a consumer releases a ring slot through an mbarrier (both must
arrive) and never waits on the other, so the two drift apart and one's softmax can run under the other's products.
Offline (Triton 3.6, sm_90a) Gluon's ``warp_specialize`` compiles with a wgmma in a worker partition, and each
partition's mbarrier arrive synchronises only its own 128 threads (notes section 24).

The prefix-bound suite cases (GQA 16k/32k x64/x256, MHA 32k x256) without own tokens: the states of each kernel
through ``merge_states`` against ``leanattn.bifurcated_decode(q, pk, pv, None, None)``, then graph replays timed in
three interleaved rounds (do_bench medians, L2 flushed), us and TFLOP/s of the prefix FLOPs.

    PYTHONPATH=src python benchmarks/probe_ws_prefix.py [--out DIR] [--cases A,B]
    offline: PYTHONPATH=/path/to/triton-3.6:src python benchmarks/probe_ws_prefix.py --offline   (compiles for sm_90a)
"""
from __future__ import annotations

import math
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from leanattn.kernels import bifurcated_prefix_gluon as pg  # noqa: E402
from leanattn.ops.bifurcated_overlap import GluonPrefix, prefix_splits  # noqa: E402

LOG2E = 1.4426950408889634
K = 1024
CASES = [("gqa", 16 * K, 64), ("gqa", 16 * K, 256), ("gqa", 32 * K, 64), ("gqa", 32 * K, 256), ("mha", 32 * K, 256)]

if pg.AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)

    @gluon.jit
    def _ws_consumer(Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh, qk_scale, B, P, R,
                     hb, s, h, t0, n_j, HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
                     BLOCK_N: gl.constexpr, STAGES: gl.constexpr, MASK_TAIL: gl.constexpr, HALF: gl.constexpr):
        """One 64-row warp group: rows ``hb * 128 + HALF * 64 ..`` of kv head ``h`` against the split's tiles,
        the library kernel's loop with the slot released through ``free`` instead of refilled."""
        dtype: gl.constexpr = q_smem.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        q_load: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        base = hb * 128 + HALF * 64
        rq = base + gl.arange(0, 64, layout=gl.SliceLayout(1, q_load))
        dq = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, q_load))
        q_off = (rq // GROUP).to(gl.int64) * stride_qb + (h * GROUP + rq % GROUP) * stride_qh
        qv = gl.load(Q + gl.expand_dims(q_off, 1) + gl.expand_dims(dq, 0), mask=gl.expand_dims(rq < R, 1), other=0.0)
        q_half = q_smem.index(HALF)
        q_half.store(qv)
        fence_async_shared()

        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        zero_s = gl.zeros([64, BLOCK_N], gl.float32, s_layout)
        mbarrier.wait(kbar.index(0), 0)
        st = warpgroup_mma(q_half, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        sc = warpgroup_mma_wait(0, deps=(st,)) * qk_scale
        if MASK_TAIL:
            sc = gl.where(gl.expand_dims(t0 * BLOCK_N + offs_n < P, 0), sc, float("-inf"))
        m_i = gl.max(sc, axis=1)
        p = gl.exp2(sc - gl.expand_dims(m_i, 1))
        l_i = gl.sum(p, axis=1)
        p_prev = gl.convert_layout(p.to(dtype), p_layout)
        acc = gl.zeros([64, HEAD_DIM], gl.float32, o_layout)
        for j in range(1, n_j):
            slot = j % STAGES
            prev = (j - 1) % STAGES
            mbarrier.wait(kbar.index(slot), (j // STAGES) & 1)
            st = warpgroup_mma(q_half, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            mbarrier.wait(vbar.index(prev), ((j - 1) // STAGES) & 1)
            acc_t = warpgroup_mma(p_prev, v_smem.index(prev), acc, is_async=True)
            sc = warpgroup_mma_wait(1, deps=(st,)) * qk_scale
            if MASK_TAIL:
                sc = gl.where(gl.expand_dims((t0 + j) * BLOCK_N + offs_n < P, 0), sc, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(sc - gl.expand_dims(m_new, 1))
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            acc = warpgroup_mma_wait(0, deps=(acc_t,))
            # tile j-1's K and V are consumed by this warp group: the producer refills the slot once both have said so
            mbarrier.arrive(free.index(prev), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            p_prev = gl.convert_layout(p.to(dtype), p_layout)
        last = (n_j - 1) % STAGES
        mbarrier.wait(vbar.index(last), ((n_j - 1) // STAGES) & 1)
        acc_t = warpgroup_mma(p_prev, v_smem.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc_t,))

        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        out = acc / gl.expand_dims(l_o, 1)
        ro = base + gl.arange(0, 64, layout=gl.SliceLayout(1, o_layout))
        do = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        row = (s * B + ro // GROUP).to(gl.int64) * HQ + h * GROUP + ro % GROUP
        gl.store(StO + gl.expand_dims(row * HEAD_DIM, 1) + gl.expand_dims(do, 0), out, mask=gl.expand_dims(ro < R, 1))
        lse = (gl.convert_layout(m_i, gl.SliceLayout(1, o_layout)) + gl.log2(l_o)) * 0.6931471805599453
        gl.store(StL + row, lse, mask=ro < R)

    @gluon.jit
    def _ws_first(Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh, qk_scale, B, P, R,
                  hb, s, h, t0, n_j, HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
                  BLOCK_N: gl.constexpr, STAGES: gl.constexpr, MASK_TAIL: gl.constexpr):
        _ws_consumer(Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh, qk_scale, B, P, R,
                     hb, s, h, t0, n_j, HQ, GROUP, HEAD_DIM, BLOCK_N, STAGES, MASK_TAIL, 0)

    @gluon.jit
    def _ws_second(Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh, qk_scale, B, P, R,
                   hb, s, h, t0, n_j, HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
                   BLOCK_N: gl.constexpr, STAGES: gl.constexpr, MASK_TAIL: gl.constexpr):
        _ws_consumer(Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh, qk_scale, B, P, R,
                     hb, s, h, t0, n_j, HQ, GROUP, HEAD_DIM, BLOCK_N, STAGES, MASK_TAIL, 1)

    @gluon.jit
    def _ws_producer(k_desc, v_desc, k_smem, v_smem, kbar, vbar, free, t0, n_j, col,
                     BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        for i in range(n_j):
            slot = i % STAGES
            if i >= STAGES:  # the slot's previous tile, i - STAGES, released by both consumers
                mbarrier.wait(free.index(slot), ((i // STAGES) - 1) & 1)
            mbarrier.expect(kbar.index(slot), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [(t0 + i) * BLOCK_N, col], kbar.index(slot), k_smem.index(slot))
            mbarrier.expect(vbar.index(slot), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [(t0 + i) * BLOCK_N, col], vbar.index(slot), v_smem.index(slot))

    @gluon.jit
    def ws_prefix_kernel(Q, k_desc, v_desc, StO, StL,  #
                         stride_qb, stride_qh, qk_scale, B, P, R, n_hb, S, chunk, n_tiles,  #
                         HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                         STAGES: gl.constexpr, MASK_TAIL: gl.constexpr, Q_SMEM: gl.constexpr,
                         CONSUMER_REGS: gl.constexpr):
        """The library kernel's program ``(kv head h, split s, head block hb)`` at 128 rows, warp-specialized:
        the default partition and a 4-warp worker each take 64 of the rows, a 1-warp worker loads the tiles."""
        pid = gl.program_id(0)
        hb = pid % n_hb
        s = (pid // n_hb) % S
        h = pid // (n_hb * S)
        t0 = s * chunk
        n_j = gl.minimum(chunk, n_tiles - t0)
        dtype: gl.constexpr = k_desc.dtype
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        q_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], Q_SMEM)
        kbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        vbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(kbar.index(i), count=1)
            mbarrier.init(vbar.index(i), count=1)
            mbarrier.init(free.index(i), count=2)
        # the argument tuples are written out in the call: a tuple held in a variable loses its constexprs (3.6)
        gl.warp_specialize([(_ws_first, (Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh,
                                         qk_scale, B, P, R, hb, s, h, t0, n_j, HQ, GROUP, HEAD_DIM, BLOCK_N, STAGES,
                                         MASK_TAIL)),
                            (_ws_second, (Q, q_smem, k_smem, v_smem, kbar, vbar, free, StO, StL, stride_qb, stride_qh,
                                          qk_scale, B, P, R, hb, s, h, t0, n_j, HQ, GROUP, HEAD_DIM, BLOCK_N, STAGES,
                                          MASK_TAIL)),
                            (_ws_producer, (k_desc, v_desc, k_smem, v_smem, kbar, vbar, free, t0, n_j,
                                            h * HEAD_DIM, BLOCK_N, STAGES))],
                           [4, 1], [CONSUMER_REGS, 24])
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(kbar.index(i))
            mbarrier.invalidate(vbar.index(i))
            mbarrier.invalidate(free.index(i))


def ws_states(q, pk, pv, stages=3, regs=232, sms=132):
    """``q (B, Hq, D)``, ``pk/pv (P, Hkv, D)`` -> ``(launch, states)``: the warp-specialized kernel at 128 rows, one
    program per SM's worth of splits; ``states()`` gives its ``(S, B, Hq, D)`` fp32 and ``(S, B, Hq)`` states."""
    B, Hq, D = q.shape
    P, Hkv, _ = pk.shape
    group = Hq // Hkv
    R = B * group
    n_hb = triton.cdiv(R, 128)
    tiles = triton.cdiv(P, pg.BLOCK_N)
    S, chunk = prefix_splits(Hkv * n_hb, tiles, 1, sms)
    O = torch.empty(S, B, Hq, D, dtype=torch.float32, device=q.device)
    L = torch.empty(S, B, Hq, dtype=torch.float32, device=q.device)
    gl_dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[q.dtype]
    kv_layout = gl.NVMMASharedLayout.get_default_for([pg.BLOCK_N, D], gl_dtype)
    q_layout = gl.NVMMASharedLayout.get_default_for([64, D], gl_dtype)
    k2, v2 = pk.view(P, Hkv * D), pv.view(P, Hkv * D)
    kd = pg.TensorDescriptor(k2, [P, Hkv * D], [k2.stride(0), 1], [pg.BLOCK_N, D], kv_layout)
    vd = pg.TensorDescriptor(v2, [P, Hkv * D], [v2.stride(0), 1], [pg.BLOCK_N, D], kv_layout)
    scale = LOG2E / math.sqrt(D)

    def launch():
        ws_prefix_kernel[(Hkv * S * n_hb,)](q, kd, vd, O, L, q.stride(0), q.stride(1), scale, B, P, R, n_hb, S, chunk,
                                           tiles, HQ=Hq, GROUP=group, HEAD_DIM=D, BLOCK_N=pg.BLOCK_N, STAGES=stages,
                                           MASK_TAIL=P % pg.BLOCK_N != 0, Q_SMEM=q_layout, CONSUMER_REGS=regs,
                                           num_warps=4)
    return launch, (lambda: (O, L))


def library_states(q, pk, pv, rows, per_sm, stages, sms=132):
    """The library's Gluon prefix (``GluonPrefix``) at ``rows`` a program, ``per_sm`` programs per SM."""
    B, Hq, D = q.shape
    P, Hkv, _ = pk.shape
    S, chunk = prefix_splits(Hkv * triton.cdiv(B * Hq // Hkv, rows), triton.cdiv(P, pg.BLOCK_N), per_sm, sms)
    O = torch.empty(S, B, Hq, D, dtype=torch.float32, device=q.device)
    L = torch.empty(S, B, Hq, dtype=torch.float32, device=q.device)
    gp = GluonPrefix(q, P, Hkv, S, chunk, LOG2E / math.sqrt(D), stages, False, rows)
    pk4, pv4 = pk.unsqueeze(0), pv.unsqueeze(0)
    return (lambda: gp(q, pk4, pv4, O, L)), (lambda: (O, L))


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="")
    ap.add_argument("--offline", action="store_true", help="compile for sm_90a on a machine without a GPU")
    args = ap.parse_args(argv)
    if args.offline:
        import offline_resources as off
        off._install(None, [""])
    dev = "cpu" if args.offline else "cuda"
    torch.manual_seed(0)
    variants = {"64 rows, 2 per SM": lambda q, pk, pv: library_states(q, pk, pv, 64, 2, 3),
                "128 rows": lambda q, pk, pv: library_states(q, pk, pv, 128, 1, 3),
                "ws 128 rows, 3 stages": lambda q, pk, pv: ws_states(q, pk, pv, 3),
                "ws 128 rows, 4 stages": lambda q, pk, pv: ws_states(q, pk, pv, 4)}
    res = []
    for model, P, n in CASES:
        name = f"{model} {P // K}k x{n}"
        if args.cases and name not in args.cases.split(","):
            continue
        hq, hkv = (32, 32) if model == "mha" else (32, 8)
        q = torch.randn(n, hq, 128, dtype=torch.bfloat16, device=dev)
        pk = torch.randn(P, hkv, 128, dtype=torch.bfloat16, device=dev)
        pv = torch.randn_like(pk)
        flops = 4.0 * n * hq * P * 128
        if dev == "cpu":
            for tag, make in variants.items():
                make(q, pk, pv)[0]()
                print(name, tag, off.RESULTS[-1] if off.RESULTS else "(no compile recorded)")
            continue
        import leanattn
        from bench_decode import interleaved_times
        ref, ref_lse = leanattn.bifurcated_decode(q, pk, pv, None, None, return_lse=True)
        graphs, errs = {}, {}
        for tag, make in variants.items():
            launch, states = make(q, pk, pv)
            launch()
            out, lse = leanattn.merge_states(*states())
            errs[tag] = (((out.float() - ref.float()).norm() / ref.float().norm()).item(),
                         (lse - ref_lse).abs().max().item())
            if errs[tag][0] > 1e-2:
                raise RuntimeError(f"{name} {tag}: relative error {errs[tag][0]:.1e}")
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                launch()
            graphs[tag] = g.replay
        us, med = interleaved_times(graphs, 3)
        r = dict(case=name, err=errs, us=us, median=med, tflops={k: flops / (v * 1e-6) / 1e12 for k, v in med.items()})
        print(f"{name:14s} " + "  ".join(f"{k} {v:.1f} us ({r['tflops'][k]:.0f} TFLOP/s)" for k, v in med.items()),
              flush=True)
        res.append(r)
        del graphs
        torch.cuda.empty_cache()
    if dev == "cuda":
        import common
        common.write_probe(args.out, "bifurcated_probe_ws_prefix.json",
                           probe="warp-specialized Gluon prefix (producer warp, two consumer warp groups) against the "
                                 "library's Gluon prefix at 64 and 128 rows, prefix states only",
                           timing="graph replays, do_bench medians of 3 interleaved rounds, L2 flushed", cases=res)


if __name__ == "__main__":
    main()
