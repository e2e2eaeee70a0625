"""Probe, not part of the library: the bifurcated prefix pass as a Gluon kernel (Hopper only, no CPU
interpreter) whose softmax of tile j overlaps the P@V wgmma of tile j-1 (FA3's intra-warpgroup
pipelining, which Triton 3.6's own pipeliner does not do: bifurcated_H200_notes.md section 10), timed
against the states path's prefix-only launch (``leanattn.bifurcated_decode`` with no own cache) on the
same inputs, and checked against it through ``leanattn.merge_states``. Prefix lengths must be whole
multiples of ``S x 64`` tokens and the stacked rows of 64; no masking. Results: section 14 of the notes.
The library's version, with masking, any row count and any q strides, is ``kernels/bifurcated_prefix_gluon.py``
(the overlap path, section 15).

GPU:     PYTHONPATH=src python benchmarks/probe_gluon_prefix.py          (writes $OUT/gluon_prefix_probe_H200.json)
offline: PYTHONPATH=/path/to/triton-3.6:src python benchmarks/probe_gluon_prefix.py --offline   (compiles for sm_90a)
"""
from __future__ import annotations

import json
import math
import os
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.experimental.gluon.language.nvidia.hopper import (tma, mbarrier, warpgroup_mma, warpgroup_mma_wait)

LOG2E = 1.4426950408889634


@gluon.jit
def prefix_fa_kernel(q_desc, k_desc, v_desc, O, L, qk_scale, rows_total, n_hb, chunk,  #
                     HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, S: gl.constexpr, TRIGGER: gl.constexpr = False):
    if TRIGGER:
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
    pid = gl.program_id(0)
    s_id = pid % S
    col = pid // S  # (kv head, head block)
    h = col // n_hb
    row0 = col * BLOCK_M
    t0 = s_id * chunk

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    qbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    vbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(qbar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kbar.index(i), count=1)
        mbarrier.init(vbar.index(i), count=1)

    mbarrier.expect(qbar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [row0, 0], qbar, q_smem)
    for i in gl.static_range(STAGES):
        mbarrier.expect(kbar.index(i), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [(t0 + i) * BLOCK_N, h * HEAD_DIM], kbar.index(i), k_smem.index(i))
        mbarrier.expect(vbar.index(i), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [(t0 + i) * BLOCK_N, h * HEAD_DIM], vbar.index(i), v_smem.index(i))
    mbarrier.wait(qbar, 0)

    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    # tile 0: scores only
    mbarrier.wait(kbar.index(0), 0)
    st = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    sc = warpgroup_mma_wait(0, deps=(st,)) * qk_scale
    m_i = gl.max(sc, axis=1)
    p = gl.exp2(sc - gl.expand_dims(m_i, 1))
    l_i = gl.sum(p, axis=1)
    p_prev = gl.convert_layout(p.to(gl.bfloat16), p_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    for j in range(1, chunk):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(kbar.index(slot), (j // STAGES) & 1)
        st = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        mbarrier.wait(vbar.index(prev), ((j - 1) // STAGES) & 1)
        acc_t = warpgroup_mma(p_prev, v_smem.index(prev), acc, is_async=True)
        sc = warpgroup_mma_wait(1, deps=(st,)) * qk_scale  # the scores of tile j; P@V of tile j-1 runs on
        m_new = gl.maximum(m_i, gl.max(sc, axis=1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(sc - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, axis=1)
        m_i = m_new
        acc = warpgroup_mma_wait(0, deps=(acc_t,))
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        p_prev = gl.convert_layout(p.to(gl.bfloat16), p_layout)
        # tile j-1's K and V are consumed: its slot takes tile j-1+STAGES
        nxt = j - 1 + STAGES
        if nxt < chunk:
            mbarrier.expect(kbar.index(prev), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [(t0 + nxt) * BLOCK_N, h * HEAD_DIM], kbar.index(prev),
                                            k_smem.index(prev))
            mbarrier.expect(vbar.index(prev), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [(t0 + nxt) * BLOCK_N, h * HEAD_DIM], vbar.index(prev),
                                            v_smem.index(prev))
    last = (chunk - 1) % STAGES
    mbarrier.wait(vbar.index(last), ((chunk - 1) // STAGES) & 1)
    acc_t = warpgroup_mma(p_prev, v_smem.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc_t,))

    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    out = acc / gl.expand_dims(l_o, 1)
    offs_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    rows = s_id * rows_total + row0 + offs_m
    gl.store(O + gl.expand_dims(rows.to(gl.int64) * HEAD_DIM, 1) + gl.expand_dims(offs_d, 0), out)
    lse = (gl.convert_layout(m_i, gl.SliceLayout(1, o_layout)) + gl.log2(l_o)) * 0.6931471805599453
    gl.store(L + rows, lse)


def prefix_states(q, pk, pv, S, block_m=64, block_n=64, stages=3, scale=None, trigger=False):
    """``q (B, Hq, D)``, ``pk/pv (P, Hkv, D)`` bf16 -> states ``(S, B, Hq, D)`` fp32, ``(S, B, Hq)``."""
    B, Hq, D = q.shape
    P, Hkv, _ = pk.shape
    G = Hq // Hkv
    R = B * G
    assert R % block_m == 0 and P % (S * block_n) == 0
    # rows of kv head h: sample-major, then the group's heads (row b * G + g is q[b, h * G + g])
    qs = q.view(B, Hkv, G, D).permute(1, 0, 2, 3).reshape(Hkv * R, D).contiguous()
    q_layout = gl.NVMMASharedLayout.get_default_for([block_m, D], gl.bfloat16)
    kv_layout = gl.NVMMASharedLayout.get_default_for([block_n, D], gl.bfloat16)
    q_desc = TensorDescriptor(qs, list(qs.shape), list(qs.stride()), [block_m, D], q_layout)
    k2, v2 = pk.view(P, Hkv * D), pv.view(P, Hkv * D)
    k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [block_n, D], kv_layout)
    v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [block_n, D], kv_layout)
    rows_total = Hkv * R
    O = torch.empty(S, rows_total, D, dtype=torch.float32, device=q.device)
    L = torch.empty(S, rows_total, dtype=torch.float32, device=q.device)
    scale = (1.0 / math.sqrt(D) if scale is None else scale) * LOG2E
    chunk = P // (S * block_n)
    grid = (Hkv * (R // block_m) * S,)

    def launch():
        prefix_fa_kernel[grid](q_desc, k_desc, v_desc, O, L, scale, rows_total, R // block_m, chunk,
                               HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, S=S, TRIGGER=trigger, num_warps=4)

    def states():
        o = O.view(S, Hkv, B, G, D).permute(0, 2, 1, 3, 4).reshape(S, B, Hq, D)
        lse = L.view(S, Hkv, B, G).permute(0, 2, 1, 3).reshape(S, B, Hq)
        return o, lse

    return launch, states


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offline", action="store_true", help="compile for sm_90a on a machine without a GPU")
    ap.add_argument("--configs", default="64,3", help="semicolon-separated block_n,stages pairs (default 64,3)")
    args = ap.parse_args()
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";")]
    off = None
    if args.offline:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import offline_resources as off  # installs the offline driver
        off._install(None, [""])
    dev = "cpu" if args.offline else "cuda"
    torch.manual_seed(0)
    res = []
    for name, B, Hq, Hkv, P, S in (("gqa 8k x64", 64, 32, 8, 8192, 8), ("gqa 32k x64", 64, 32, 8, 32768, 8),
                                   ("gqa 16k x256", 256, 32, 8, 16384, 2), ("mha 8k x64", 64, 32, 32, 8192, 8)):
        q = torch.randn(B, Hq, 128, dtype=torch.bfloat16, device=dev)
        pk = torch.randn(P, Hkv, 128, dtype=torch.bfloat16, device=dev)
        pv = torch.randn_like(pk)
        flops = 4.0 * B * Hq * P * 128
        t = {}
        if dev == "cuda":
            import leanattn
            ref, ref_lse = leanattn.bifurcated_decode(q, pk, pv, None, None, return_lse=True)
            t["triton_states_prefix_only"] = _graph(lambda: leanattn.bifurcated_decode(q, pk, pv, None, None))
        errs = {}
        for block_n, stages in configs:
            launch, states = prefix_states(q, pk, pv, S, block_n=block_n, stages=stages)
            launch()
            tag = f"gluon_{block_n}_{stages}"
            if dev == "cpu":
                print(name, tag, off.RESULTS[-1] if off.RESULTS else "(no compile recorded)")
                continue
            out, lse_m = leanattn.merge_states(*states())
            errs[tag] = (((out.float() - ref.float()).norm() / ref.float().norm()).item(),
                         (lse_m - ref_lse).abs().max().item())
            t[tag] = _graph(launch)
        if dev == "cpu":
            continue
        us = {}
        for _ in range(2):  # two interleaved rounds, the best kept
            for key, fn in t.items():
                us[key] = min(us.get(key, float("inf")), triton.testing.do_bench(fn, warmup=25, rep=200) * 1e3)
        r = dict(case=name, S=S, err=errs, us=us, tflops={k: flops / (v * 1e-6) / 1e12 for k, v in us.items()})
        print(json.dumps(r))
        res.append(r)
    if dev == "cuda":
        out_dir = os.environ.get("OUT", "/tmp")
        with open(os.path.join(out_dir, "gluon_prefix_probe_H200.json"), "w") as f:
            json.dump(dict(torch=torch.__version__, triton=triton.__version__,
                           device=torch.cuda.get_device_name(), results=res), f, indent=1)


def _graph(fn):
    """``fn`` captured in a CUDA graph (after one eager call); returns the replay."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


if __name__ == "__main__":
    main()
