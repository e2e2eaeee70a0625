"""Registers, spills, shared memory and occupancy of the GPU kernels, compiled offline (no GPU).

    PYTHONPATH=/path/to/triton-3.6 python benchmarks/offline_resources.py [--ptx DIR] [--cases A,B] [decode] [bifurcated]
        [sparse] [overlap] [model] [window] [merge] [append]

Each case runs the public op on CPU tensors with the launch plan it would build for an H200
(``runtime.gpu_target`` answers True, 132 SMs); where the plan compiles a kernel to size its
persistent grid, the kernel is compiled by Triton for sm_90a instead, and ``cuobjdump`` reads the
registers and spills of the cubin (the numbers the GPU reports, for the same Triton release; use
the device image's Triton, 3.6) and the instructions of its main loop in SASS ('loop': instructions/products,
``_main_loop``). The launch itself then fails on the CPU and is skipped. With
``--ptx DIR`` the PTX (and Triton's TTGIR) of every kernel is written there, to diff two revisions of a kernel
(a refactor that leaves the PTX unchanged needs no new GPU measurement), and the cubin, for ``cuobjdump -sass``.
The ``overlap`` family compiles the overlap path's Gluon prefix kernels directly (its launches need a GPU even to
be planned), 16-bit and float8; the ``model`` family the decoder's fused elementwise kernels
(``leanattn.models.fused_ops``) at llama-3-8b sizes.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
import leanattn  # noqa: E402
from leanattn import runtime  # noqa: E402

# H200 (sm_90): per SM
SMS, REGS, SMEM, THREADS = 132, 65536, 233472, 2048


class _OfflineDriver:
    """Enough of Triton's active driver for ``JITFunction.warmup`` to compile for sm_90a."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_benchmarker(self):
        # an autotuner "times" each config by running it once (here: compiling it) and sees a tie
        def bench(fn, quantiles=None, **kwargs):
            fn()
            return [1.0] * len(quantiles) if quantiles else 1.0
        return bench


def _resources(compiled) -> dict:
    cubin = compiled.asm["cubin"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    stack = int(re.search(r"STACK:(\d+)", out).group(1))
    warps = compiled.metadata.num_warps
    smem = compiled.metadata.shared
    regs_per_warp = -(-regs * 32 // 256) * 256
    occ = min(REGS // (regs_per_warp * warps), SMEM // (smem + 1024), THREADS // (32 * warps))
    return dict(regs=regs, stack=stack, shared=smem, warps=warps, occupancy=max(occ, 0), ring=_ring(compiled),
                loop=_main_loop(sass))


def _main_loop(sass: str) -> str:
    """``instructions/products`` of the kernel's main loop in SASS: of the loops (a branch back to a lower address),
    the one with the most tensor-core instructions (``HMMA``, ``HGMMA``), counted once each as written; '-' without
    one. Why: a decode tile loop that issues many instructions a byte is bound by issue, not memory (float8 decode at
    32/8 heads, offline: 648 instructions a warp for 16 KB of tiles against bf16's 426 for 32 KB)."""
    ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);", sass)]
    best = (0, 0)
    for addr, op, rest in ins:
        target = re.search(r"0x[0-9a-f]+", rest) if op.startswith("BRA") else None
        if target and int(target.group(0), 16) < addr:
            body = [o for a, o, _ in ins if int(target.group(0), 16) <= a <= addr]
            best = max(best, (sum(o.startswith(("HMMA", "HGMMA")) for o in body), len(body)))
    return f"{best[1]}/{best[0]}" if best[0] else "-"


def _ring(compiled) -> int:
    """Buffers of the deepest ring of tiles the kernel keeps in shared memory (the leading dimension of its largest
    allocated 3-D or higher 16- or 8-bit buffer, from Triton's GPU IR); 0 without one. Why: Triton's pipeliner gives
    ``num_stages`` S rings of S - 1 buffers, and one buffer at one program an SM overlaps no load with a product
    (MLA's 2-stage kernel, 2026-12-05)."""
    best = (0, 0)
    for m in re.finditer(r"local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x([\dx]+)x(bf16|f16|f8\w*|i8)",
                         compiled.asm.get("ttgir", "")):
        dims = [int(m.group(1))] + [int(x) for x in m.group(2).split("x")]
        size = 1
        for d in dims:
            size *= d
        best = max(best, (size, dims[0]))
    return best[1]


def _comparable(ptx: str) -> str:
    """The PTX without what changes when only source lines move: the compiler banner, ``.loc`` and
    ``.file`` directives, the line-marker labels and the debug sections; two revisions whose kernels compile to the same
    instructions give the same text."""
    ptx = ptx.split(".section\t.debug", 1)[0]
    keep = [ln for ln in ptx.splitlines()[4:] if not re.match(r"\s*(\.(loc|file)\b|\$L__tmp\d+:)", ln)]
    return "\n".join(keep) + "\n"


RESULTS: list = []


class _NoLaunch:
    """Stands in for a compiled kernel in Triton's cache: launching it does nothing (the CPU has no
    GPU to launch on), so an op goes on to compile its next kernel."""

    function = packed_metadata = None

    def __init__(self, compiled):
        self.compiled = compiled
        self.metadata = compiled.metadata
        self.asm = compiled.asm

    def launch_metadata(self, *args):
        return None

    def run(self, *args):
        return None


def _install(ptx_dir: str | None, label: list):
    from triton.runtime.jit import JITFunction
    compile_ = JITFunction._do_compile
    seen = {}

    def record(fn, compiled):
        name = fn.fn.__name__
        r = seen.get(id(compiled))
        if r is None:
            r = seen[id(compiled)] = _resources(compiled)
            # a kernel compiled twice in one case (autotune configs, or the occupancy warmup's
            # specialisation next to the launch's) is numbered in order
            n = sum(1 for x in RESULTS if x["case"] == label[0] and x["kernel"].split("#")[0] == name)
            name = name if n == 0 else f"{name}#{n + 1}"
            RESULTS.append(dict(case=label[0], kernel=name, **r))
            if ptx_dir:
                tag = re.sub(r"[^A-Za-z0-9#]+", "_", f"{label[0]}_{name}").replace("#", "_")
                with open(os.path.join(ptx_dir, tag + ".ptx"), "w") as f:
                    f.write(_comparable(compiled.asm["ptx"]))
                # Triton's GPU IR beside it: layouts, shared buffers and what the pipeliner made asynchronous
                with open(os.path.join(ptx_dir, tag + ".ttgir"), "w") as f:
                    f.write(compiled.asm["ttgir"])
                # and the cubin, for its SASS: cuobjdump -sass (Triton's nvidia/bin)
                with open(os.path.join(ptx_dir, tag + ".cubin"), "wb") as f:
                    f.write(compiled.asm["cubin"])
        return r

    def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        compiled = compile_(self, key, signature, device, constexprs, options, attrs, warmup)
        record(self, compiled)
        stub = _NoLaunch(compiled)
        self.device_caches[device][0][key] = stub
        return stub

    def kernel_occupancy(kernel, args, meta, device, info=None, prefix=""):
        stub = kernel.warmup(*args, grid=(1,), **meta)
        r = record(kernel, stub.compiled)
        if info is not None:
            info.update({prefix + "n_regs": r["regs"], prefix + "occupancy": r["occupancy"]})
        return max(1, r["occupancy"])

    JITFunction._do_compile = do_compile
    runtime.gpu_target = lambda device: True
    runtime.num_sms = lambda device: SMS
    runtime.kernel_occupancy = kernel_occupancy
    triton.runtime.driver.set_active(_OfflineDriver())


def _try(name, fn):
    try:
        fn()
    except Exception as e:  # an op that reads back what a (skipped) launch wrote
        print(f"  {name}: stopped at {type(e).__name__}: {str(e)[:100]}")


def decode_cases():
    bf = torch.bfloat16
    # (capacity 64 is a small launch, ops/decode_config._CUDA_SMALL, at D <= 128; 2048 at D=64 is not)
    # ("long": a capacity whose split chunk is not 1, which Triton would specialise into a loop-free kernel)
    for hq, hkv, d, page, cap in ((32, 32, 128, 0, 64), (32, 8, 128, 0, 64), (32, 8, 128, 16, 64),
                                  (32, 32, 64, 0, 2048), (32, 32, 64, 0, 64), (16, 8, 256, 0, 64),
                                  (32, 32, 128, 0, 2048)):
        name = (f"decode {hq}/{hkv} D={d}" + (f" paged{page}" if page else "")
                + (" small" if d == 64 and cap == 64 else "") + (" long" if d > 64 and cap > 64 else ""))
        q = torch.randn(2, hq, d, dtype=bf)
        if page:
            k = torch.randn(8, page, hkv, d, dtype=bf)
            bt = torch.zeros(2, 4, dtype=torch.int32)
        else:
            k, bt = torch.randn(2, cap, hkv, d, dtype=bf), None
        lens = torch.tensor([5, 60], dtype=torch.int32)
        yield name, lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(q, k, k, lens, block_table=bt)
        yield name + " split", lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(
            q, k, k, lens, block_table=bt, schedule="split", num_splits=3)
    # batch_invariant (fixed 2048-key splits, the merge folding one state a step) and cache_leftpad (each row's base
    # moved to its first real token: the lean and the split kernel with LEFTPAD)
    q, k = torch.randn(2, 32, 128, dtype=bf), torch.randn(2, 5000, 8, 128, dtype=bf)
    lens5k = torch.tensor([5, 4999], dtype=torch.int32)
    yield "decode batch_invariant 32/8 D=128", lambda: leanattn.decode(q, k, k, lens5k, schedule="batch_invariant")
    yield "decode leftpad 32/8 D=128", lambda: leanattn.decode(q, k, k, lens5k, validate=False,
                                                               cache_leftpad=torch.tensor([0, 3], dtype=torch.int32))
    yield "decode leftpad-split 32/8 D=128", lambda: leanattn.decode(
        q, k, k, lens5k, validate=False, schedule="split", cache_leftpad=torch.tensor([0, 3], dtype=torch.int32))
    # attention sinks (gpt-oss: 64/8 heads, D=64, a window of 128), merged by one launch after the decode
    q, k = torch.randn(2, 64, 64, dtype=bf), torch.randn(2, 2048, 8, 64, dtype=bf)
    sinks = torch.randn(64, dtype=bf)
    yield "decode sinks 64/8 D=64", lambda: leanattn.decode(q, k, k, torch.tensor([5, 600], dtype=torch.int32),
                                                            window_left=127, sinks=sinks)
    # ALiBi (BLOOM/MPT: 32/32 heads, D=128), its bias added to each tile's scores (kernels/attend.softmax_step)
    q, k = torch.randn(2, 32, 128, dtype=bf), torch.randn(2, 2048, 32, 128, dtype=bf)
    slopes = torch.rand(32)
    yield "decode alibi 32/32 D=128", lambda: leanattn.decode(q, k, k, torch.tensor([5, 600], dtype=torch.int32),
                                                              alibi_slopes=slopes)
    yield "decode alibi 32/32 D=128 split", lambda: leanattn.decode(
        q, k, k, torch.tensor([5, 600], dtype=torch.int32), alibi_slopes=slopes, schedule="split", num_splits=3)
    # MLA (DeepSeek: a 512-wide latent and 64 rotary columns, 16 heads a GPU at TP=8 and 128 at TP=1), contiguous and
    # paged (FlashMLA's 64-token pages of one 576-wide cache, split into the two views), one and two query tokens
    for heads, page, tokens in ((16, 0, 1), (16, 64, 1), (128, 64, 1), (16, 64, 2)):
        name = f"mla {heads} heads" + (f" paged{page}" if page else "") + (f" tokens {tokens}" if tokens > 1 else "")
        shape = (2, tokens, heads) if tokens > 1 else (2, heads)
        qn, qp = torch.randn(*shape, 512, dtype=bf), torch.randn(*shape, 64, dtype=bf)
        cache = torch.randn(8, 64, 1, 576, dtype=bf) if page else torch.randn(2, 256, 1, 576, dtype=bf)
        bt = torch.arange(8, dtype=torch.int32).view(2, 4) if page else None
        for schedule in ("lean", "split"):
            yield name + (" split" if schedule == "split" else ""), \
                lambda qn=qn, qp=qp, cache=cache, bt=bt, schedule=schedule: leanattn.mla_decode(
                    qn, qp, cache[..., :512], cache[..., 512:], torch.tensor([5, 200], dtype=torch.int32), bt,
                    schedule=schedule, num_splits=3, causal=True)
    # one long sequence: even pieces on every SM, merged 128 columns a program (kernels/merge.py), and the lean
    # kernel's pieces merged by the merge launch (kernels/piece_merge.py)
    qn, qp = torch.randn(1, 16, 512, dtype=bf), torch.randn(1, 16, 64, dtype=bf)
    cache = torch.randn(1, 32768, 1, 576, dtype=bf)
    yield "mla 16 heads 32k", lambda: leanattn.mla_decode(qn, qp, cache[..., :512], cache[..., 512:])
    yield "mla 16 heads 32k split 33", lambda: leanattn.mla_decode(qn, qp, cache[..., :512], cache[..., 512:],
                                                                   schedule="split", num_splits=33)
    # MLA over vLLM's fp8 latent cache (one 576-wide e4m3 cache, one scale), bf16 queries scaled into fp16
    # (kernels/attend.fp8_query_rope)
    for heads, page in ((16, 0), (16, 64), (128, 64)):
        name = f"mla fp8 {heads} heads" + (f" paged{page}" if page else "")
        qn, qp = torch.randn(2, heads, 512, dtype=bf), torch.randn(2, heads, 64, dtype=bf)
        cache = (torch.randn(8, 64, 1, 576, dtype=bf) if page else torch.randn(2, 256, 1, 576, dtype=bf)).to(
            torch.float8_e4m3fn)
        bt = torch.arange(8, dtype=torch.int32).view(2, 4) if page else None
        for schedule in ("lean", "split"):
            yield name + (" split" if schedule == "split" else ""), \
                lambda qn=qn, qp=qp, cache=cache, bt=bt, schedule=schedule: leanattn.mla_decode(
                    qn, qp, cache[..., :512], cache[..., 512:], torch.tensor([5, 200], dtype=torch.int32), bt,
                    schedule=schedule, num_splits=3, k_scale=0.5, v_scale=0.5)
    # int8 caches (symmetric, per tensor) read in bf16: the float8 path's conversion in registers
    for page in (0, 16):
        name = "decode int8 32/8 D=128" + (f" paged{page}" if page else "")
        q = torch.randn(2, 32, 128, dtype=bf)
        k = torch.randint(-127, 128, (8, page, 8, 128) if page else (2, 2048, 8, 128), dtype=torch.int8)
        bt = torch.zeros(2, 4, dtype=torch.int32) if page else None
        yield name, lambda q=q, k=k, bt=bt: leanattn.decode(q, k, k, torch.tensor([5, 60], dtype=torch.int32),
                                                            block_table=bt, k_scale=0.01, v_scale=0.01)
    # float8 caches read in bf16 (kernels/attend.py)
    for hq, hkv, d, page in ((32, 8, 128, 0), (32, 32, 128, 0), (32, 8, 128, 16), (32, 32, 64, 0), (16, 8, 256, 0)):
        name = f"decode fp8 {hq}/{hkv} D={d}" + (f" paged{page}" if page else "")
        q = torch.randn(2, hq, d, dtype=bf)
        shape = (8, page, hkv, d) if page else (2, 2048, hkv, d)
        k = torch.randn(shape, dtype=bf).to(torch.float8_e4m3fn)
        bt = torch.zeros(2, 4, dtype=torch.int32) if page else None
        lens = torch.tensor([5, 60], dtype=torch.int32)
        yield name, lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(q, k, k, lens, block_table=bt, v_scale=0.5)
        yield name + " split", lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(
            q, k, k, lens, block_table=bt, schedule="split", num_splits=3, v_scale=0.5)
    # logit soft-capping (a tanh a score)
    for hq, hkv, d, fp8 in ((32, 8, 128, False), (32, 32, 128, False), (32, 8, 128, True)):
        name = f"decode softcap {hq}/{hkv} D={d}" + (" fp8" if fp8 else "")
        q = torch.randn(2, hq, d, dtype=bf)
        k = torch.randn(2, 2048, hkv, d, dtype=bf)
        k = k.to(torch.float8_e4m3fn) if fp8 else k
        lens = torch.tensor([5, 60], dtype=torch.int32)
        yield name, lambda q=q, k=k, lens=lens: leanattn.decode(q, k, k, lens, softcap=30.0)
        yield name + " split", lambda q=q, k=k, lens=lens: leanattn.decode(q, k, k, lens, schedule="split",
                                                                            num_splits=3, softcap=30.0)
    # sliding windows (a lower bound a key, and V rows before the window zeroed on whole-tile loads)
    for hq, hkv, d, page in ((32, 8, 128, 0), (32, 32, 128, 0), (32, 8, 128, 16)):
        name = f"decode window {hq}/{hkv} D={d}" + (f" paged{page}" if page else "")
        q = torch.randn(2, hq, d, dtype=bf)
        k = torch.randn(8, page, hkv, d, dtype=bf) if page else torch.randn(2, 2048, hkv, d, dtype=bf)
        bt = torch.zeros(2, 4, dtype=torch.int32) if page else None
        lens = torch.tensor([5, 60], dtype=torch.int32)
        yield name, lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(q, k, k, lens, bt, window_left=20)
        yield name + " split", lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(
            q, k, k, lens, bt, schedule="split", num_splits=3, window_left=20)
    # several query tokens a sequence (per-row key ranges; 4 tokens x 4 heads fill GQA 32/8's 16 rows, 16 tokens its 64)
    for hq, hkv, d, lq, page in ((32, 8, 128, 4, 0), (32, 8, 128, 16, 0), (32, 32, 128, 4, 0), (32, 8, 128, 4, 16)):
        name = f"decode tokens {lq} {hq}/{hkv} D={d}" + (f" paged{page}" if page else "")
        q = torch.randn(2, lq, hq, d, dtype=bf)
        k = torch.randn(8, page, hkv, d, dtype=bf) if page else torch.randn(2, 2048, hkv, d, dtype=bf)
        bt = torch.zeros(2, 4, dtype=torch.int32) if page else None
        lens = torch.tensor([5, 60], dtype=torch.int32)
        yield name, lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(q, k, k, lens, bt, causal=True)
        yield name + " split", lambda q=q, k=k, bt=bt, lens=lens: leanattn.decode(
            q, k, k, lens, bt, schedule="split", num_splits=3, causal=True)
    # a packed query of up to 4 tokens a sequence (cu_seqlens_q: rows found per sequence, the slots before its first
    # token masked)
    for hq, hkv, d, page in ((32, 8, 128, 0), (32, 32, 128, 0), (32, 8, 128, 16)):
        name = f"decode varlen 4 {hq}/{hkv} D={d}" + (f" paged{page}" if page else "")
        q = torch.randn(5, hq, d, dtype=bf)
        cu = torch.tensor([0, 1, 5], dtype=torch.int32)
        k = torch.randn(8, page, hkv, d, dtype=bf) if page else torch.randn(2, 2048, hkv, d, dtype=bf)
        bt = torch.zeros(2, 4, dtype=torch.int32) if page else None
        lens = torch.tensor([5, 60], dtype=torch.int32)
        kw = dict(causal=True, cu_seqlens_q=cu, max_seqlen_q=4)
        yield name, lambda q=q, k=k, bt=bt, lens=lens, kw=kw: leanattn.decode(q, k, k, lens, bt, **kw)
        yield name + " split", lambda q=q, k=k, bt=bt, lens=lens, kw=kw: leanattn.decode(
            q, k, k, lens, bt, schedule="split", num_splits=3, **kw)
        # the merge launch's packed rows (piece_merge_kernel with VARLEN)
        yield name + " merge launch", _with_env("1", lambda q=q, k=k, bt=bt, lens=lens, kw=kw: leanattn.decode(
            q, k, k, lens, bt, **kw), "LEANATTN_DECODE_MERGE")


def sparse_cases():
    bf = torch.bfloat16
    for d in (64, 128):
        for det in (False, True):
            def qk(d=d, det=det):
                q, k, v = (torch.randn(1, 512, 2, d, dtype=bf, requires_grad=True) for _ in range(3))
                keep = torch.rand(1, 512, 2) > 0.5
                o = leanattn.qk_sparse_attention(q, k, v, keep, keep, deterministic=det)
                o.backward(torch.randn_like(o))

            def hashed(d=d, det=det):
                q, k, v = (torch.randn(1, 512, 2, d, dtype=bf, requires_grad=True) for _ in range(3))
                buckets = torch.randint(0, 4, (1, 512, 2), dtype=torch.int32)
                o = leanattn.hash_sparse_attention(q, k, v, buckets, buckets, n_buckets=4, deterministic=det)
                o.backward(torch.randn_like(o))
            tag = f"D={d}" + (" det" if det else "")
            yield f"sparse qk {tag}", qk
            yield f"sparse hash {tag}", hashed

            def gqa(d=d, det=det):
                # grouped-query attention, 4 query heads a kv head (the dK/dV programs loop over the group)
                q = torch.randn(1, 512, 8, d, dtype=bf, requires_grad=True)
                k, v = (torch.randn(1, 512, 2, d, dtype=bf, requires_grad=True) for _ in range(2))
                o = leanattn.qk_sparse_attention(q, k, v, torch.rand(1, 512, 8) > 0.5, torch.rand(1, 512, 2) > 0.5,
                                                 deterministic=det)
                o.backward(torch.randn_like(o))
            yield f"sparse qk gqa 8/2 {tag}", gqa


def _with_env(value, fn, name="LEANATTN_BIFURCATED_CONFIG"):
    def run():
        old = os.environ.get(name)
        if value:
            os.environ[name] = value
        try:
            fn()
        finally:
            os.environ.pop(name, None)
            if old is not None:
                os.environ[name] = old
    return run


def bifurcated_cases():
    bf = torch.bfloat16
    # the default launch, then block pointers (field 6) and the multi-launch split and states paths (field 10);
    # the split path also with 128-row, 8-warp prefix blocks (fields 1, 3, 4: a prefix launch shaped apart from the own one)
    for variant, env in (("", ""), (" block-ptr", "0,0,0,0,0,2"), (" tma", "0,0,0,0,0,3"), (" split-path", "0,0,0,0,0,0,0,0,0,1"),
                         (" split-path 128-row", "128,0,8,3,0,0,0,0,0,1"), (" fused-path", "0,0,0,0,0,0,0,0,0,2")):
        for hq, hkv in ((32, 32), (32, 8)):
            for samples in (1, 32):
                if variant.endswith("-path") and samples == 1:
                    continue  # one sample per prompt always takes the concat kernel
                q = torch.randn(samples, hq, 128, dtype=bf)
                pk = torch.randn(512, hkv, 128, dtype=bf)
                k = torch.randn(samples, 256, hkv, 128, dtype=bf)
                lens = torch.full((samples,), 256, dtype=torch.int32)
                yield (f"bifurcated {hq}/{hkv} x{samples}{variant}", _with_env(
                    env, lambda q=q, pk=pk, k=k, lens=lens: leanattn.bifurcated_decode(q, pk, pk, k, k, lens)))
    # D=256 (the default launch; LEANATTN_BIFURCATED_CONFIG from the caller's environment applies)
    for samples in (1, 32):
        q = torch.randn(samples, 16, 256, dtype=bf)
        pk = torch.randn(512, 8, 256, dtype=bf)
        k = torch.randn(samples, 256, 8, 256, dtype=bf)
        lens = torch.full((samples,), 256, dtype=torch.int32)
        yield (f"bifurcated 16/8 D=256 x{samples}",
               lambda q=q, pk=pk, k=k, lens=lens: leanattn.bifurcated_decode(q, pk, pk, k, k, lens))
    # float8 caches (e4m3, one pair of scales): the concat kernel (one sample) and the states kernel
    for hq, hkv in ((32, 32), (32, 8)):
        for samples in (1, 32):
            q = torch.randn(samples, hq, 128, dtype=bf)
            pk = torch.randn(512, hkv, 128, dtype=bf).to(torch.float8_e4m3fn)
            k = torch.randn(samples, 256, hkv, 128, dtype=bf).to(torch.float8_e4m3fn)
            lens = torch.full((samples,), 256, dtype=torch.int32)
            yield (f"bifurcated fp8 {hq}/{hkv} x{samples}", lambda q=q, pk=pk, k=k, lens=lens: leanattn.bifurcated_decode(
                q, pk, pk, k, k, lens, k_scale=0.5, v_scale=2.0))


def window_cases():
    """Shared-prefix windows: the plan kernels (``kernels/window_plan.py``) over a dense prefix (one sample row per
    query) and a paged one of several prompts (packed query rows); the passes stop where they read a launch's output.
    And a paged prefix of several prompts without a window (the states kernel reading its pages)."""
    bf = torch.bfloat16
    q = torch.randn(16, 32, 128, dtype=bf)
    pk = torch.randn(8192, 8, 128, dtype=bf)
    k = torch.randn(16, 256, 8, 128, dtype=bf)
    lens = torch.full((16,), 256, dtype=torch.int32)
    yield "window dense x16", lambda: leanattn.bifurcated_decode(q, pk, pk, k, k, lens, window_left=4096)
    pool = torch.randn(64, 16, 8, 128, dtype=bf)
    table = torch.arange(64, dtype=torch.int32).view(2, 32)
    cu = torch.tensor([0, 2, 3, 6, 8], dtype=torch.int32)
    qp = torch.randn(8, 32, 128, dtype=bf)
    ids = torch.tensor([0, 1, 1, 0], dtype=torch.int32)
    yield "window paged packed", lambda: leanattn.bifurcated_decode(
        qp, pool, pool, k[:4], k[:4], lens[:4], prefix_block_table=table, prefix_ids=ids, window_left=100,
        cu_seqlens_q=cu, max_seqlen_q=3, max_group_size=4)
    # a rank's shard under a window (distributed/shard_window.py): one launch lays each sequence's run table
    from leanattn.distributed.shard_states import shard_states
    starts = torch.full((4,), 200, dtype=torch.int32)
    yield "tree shard window", lambda: shard_states(qp[:4], pool, pool, lens[:4], table.repeat(2, 1), 0.1,
                                                    shard_starts=starts, window_left=100)
    # the paged prefix pass without a window: the states kernel over the prompts' pages
    yield "paged prompts", lambda: leanattn.bifurcated_decode(
        q[:4], pool, pool, k[:4], k[:4], lens[:4], prefix_block_table=table, prefix_ids=ids, max_group_size=4)


def merge_cases():
    """The merges held apart (``merge_state`` of two, ``merge_state_list`` of three and four, ``kernels/merge.py``) and
    the grouping of samples by prompt (``kernels/group_layout.py``) at few and at many samples and prompts."""
    from leanattn.merges.states import merge_state_list
    from leanattn.ops.bifurcated import _group_layout
    outs = [torch.randn(64, 32, 128, dtype=torch.bfloat16) for _ in range(4)]
    lses = [torch.randn(64, 32) for _ in range(4)]
    yield "merge_state", lambda: leanattn.merge_state(outs[0], lses[0], outs[1], lses[1])
    yield "merge list of 3", lambda: merge_state_list(outs[:3], lses[:3])
    yield "merge list of 4", lambda: merge_state_list(outs, lses)
    yield "merge_state_in_place", lambda: leanattn.merge_state_in_place(outs[2], lses[2], outs[3], lses[3])
    # attention sinks folded in: three states, one state (apply_sinks), and the states path's merge launch
    sinks = torch.randn(32)
    yield "merge list of 3, sinks", lambda: merge_state_list(outs[:3], lses[:3], sinks)
    yield "apply_sinks", lambda: merge_state_list(outs[:1], lses[:1], sinks)
    from leanattn.ops.states_merge import states_and_merge
    for n in (6, 40):
        o, ls, launch = states_and_merge(f"offline_{n}", torch.device("cpu"), n, 64, 32, 128, sinks=True)
        yield f"merge_states {n} states, sinks", lambda o=o, ls=ls, launch=launch: launch(o, ls, outs[0], lses[0],
                                                                                          sinks)
    for b, g in ((16, 4), (4096, 2000)):
        ids = torch.randint(0, g, (b,), dtype=torch.int32)
        yield f"group layout B={b} G={g}", lambda ids=ids, g=g: _group_layout(ids, g)


def append_cases():
    """The KV append launch (``kernels/kv_append.py``): decode's (int32 positions) with and without rotary on one and
    on four query tokens, a float8 cache's bytes, and a shared-prefix call's (int64 rotary positions: the prefix's
    tokens added to the lengths)."""
    from leanattn.ops.kv_append import append_kv
    from leanattn.ops.rotary import Rotary
    B, Hq, Hkv, D = 4, 32, 8, 128
    lens = torch.tensor([0, 17, 40, 63], dtype=torch.int32)
    table = torch.arange(B * 8, dtype=torch.int32).view(B, 8)
    cos, sin = torch.randn(2, 256, 32)
    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        cache = torch.zeros(B * 8, 16, Hkv, D).to(dtype)
        new = torch.zeros(B, 1, Hkv, D).to(dtype)
        yield f"append paged16 {str(dtype)[6:]}", lambda c=cache, n=new: append_kv(c, c.clone(), n, n, lens, table,
                                                                                  False)
    cache = torch.zeros(B * 8, 16, Hkv, D, dtype=torch.bfloat16)
    new = torch.zeros(B, 4, Hkv, D, dtype=torch.bfloat16)
    for tokens, per_token in ((1, False), (4, True)):
        q = torch.zeros((B, Hq, D) if tokens == 1 else (B, tokens, Hq, D), dtype=torch.bfloat16)
        rot = Rotary(cos, sin, tokens == 4, per_token)
        yield f"append rotary q x{tokens}", lambda q=q, rot=rot: append_kv(cache, cache.clone(), new, new, lens, table,
                                                                           False, q, rot)
        yield f"append rotary q x{tokens}, int64 positions", lambda q=q, rot=rot: append_kv(
            cache, cache.clone(), new, new, lens, table, False, q, rot, lens + torch.arange(B) * 40)


def overlap_cases():
    """The Gluon prefix kernels (``ops/bifurcated_overlap.GluonPrefix``) as the overlap path launches them: 16-bit
    prefixes at 64 and 128 rows and warp-specialized, float8 ones at 64 rows over two and four stages, 128 rows,
    e5m2 with fp16 queries at D=64, and capped."""
    from leanattn.kernels import bifurcated_prefix_gluon as pg
    from leanattn.ops import bifurcated_overlap as ov
    if not pg.AVAILABLE:
        return
    bf, e4, e5 = torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2

    def compile_prefix(kv, qd, rows, stages, d=128, ws=False, softcap=0.0):
        B, hq, hkv, P = 64, 32, 8, 8192
        q = torch.randn(B, hq, d, dtype=qd)
        prefix = torch.randn(P, hkv * d).to(kv)
        gp = ov.GluonPrefix(q, P, hkv, 16, 8, 0.1, stages, False, rows, ws, softcap, kv, 0.5)
        desc = pg.TensorDescriptor(prefix, list(gp.shape), [prefix.stride(0), 1], gp.block, gp.kv_layout)
        st_o, st_l = torch.empty(16, B, hq, d), torch.empty(16, B, hq)
        L = gp.launch
        L.kernel.warmup(q, desc, desc, st_o, st_l, *L.scalars, grid=L.grid, **L.meta)

    for name, args in (("bf16 64r 3st", (bf, bf, 64, 3)), ("bf16 128r 3st", (bf, bf, 128, 3)),
                       ("bf16 ws 4st", (bf, bf, 128, 4, 128, True)), ("fp8 64r 2st", (e4, bf, 64, 2)),
                       ("fp8 64r 4st", (e4, bf, 64, 4)), ("fp8 128r 4st", (e4, bf, 128, 4)),
                       ("fp8 e5m2 fp16 D=64", (e5, torch.float16, 64, 4, 64)),
                       ("fp8 capped 64r 4st", (e4, bf, 64, 4, 128, False, 50.0))):
        yield f"overlap {name}", lambda args=args: compile_prefix(*args)


def model_cases():
    from leanattn.models.fused_ops import add_rms_norm, rope_qk, silu_mul
    bf = torch.bfloat16
    H, hq, hkv, d, inter = 4096, 32, 8, 128, 14336  # llama-3-8b
    h = torch.randn(5, H, dtype=bf)
    cs = torch.randn(1, 5, d, dtype=bf)
    yield "model add_rms_norm 4096", lambda: add_rms_norm(h, h[0], 1e-5, delta=h)
    yield "model rms_norm 4096", lambda: add_rms_norm(h, h[0], 1e-5)
    yield "model rope_qk 32/8 D=128", lambda: rope_qk(torch.randn(1, 5, (hq + 2 * hkv) * d, dtype=bf), cs, cs, hq, hkv)
    yield "model rope_qk fp32", lambda: rope_qk(torch.randn(1, 5, (hq + 2 * hkv) * d), cs.float(), cs.float(), hq, hkv)
    yield "model silu_mul 14336", lambda: silu_mul(torch.randn(5, 2 * inter, dtype=bf))


def one_row_cases():
    """Every public op at one query row (B = Hq = Hkv = 1, D=64): Triton passes an integer argument equal to 1 as a
    constant, a Python int, so a kernel that treats one as a tensor (``.to()``) compiles for other shapes and fails at
    this one, on GPUs only (the interpreter does not specialise). 2026-12-05: ``merge_states_kernel``'s slot strides,
    found by a review's fuzzing on an H100."""
    bf, i32 = torch.bfloat16, torch.int32
    q, q3 = torch.randn(1, 1, 64, dtype=bf), torch.randn(1, 3, 1, 64, dtype=bf)
    k, pages = torch.randn(1, 300, 1, 64, dtype=bf), torch.randn(300, 1, 1, 64, dtype=bf)
    lens, table = torch.tensor([290], dtype=i32), torch.arange(300, dtype=i32).view(1, 300)
    one = torch.ones(1)
    for sched in ("lean", "split"):
        kw = dict(schedule=sched)
        yield f"one row decode {sched}", lambda kw=kw: leanattn.decode(q, k, k, lens, **kw)
        yield f"one row decode {sched} page 1", lambda kw=kw: leanattn.decode(q, pages, pages, lens, table, **kw)
        yield f"one row decode {sched} window", lambda kw=kw: leanattn.decode(q, k, k, lens, window_left=5, **kw)
        yield f"one row decode {sched} tokens", lambda kw=kw: leanattn.decode(q3, k, k, lens, causal=True, **kw)
        yield f"one row decode {sched} extras", lambda kw=kw: leanattn.decode(
            q, k, k, lens, sinks=one, alibi_slopes=one, softcap=30.0, **kw)
        yield f"one row decode {sched} fp8", lambda kw=kw: leanattn.decode(
            q, k.to(torch.float8_e4m3fn), k.to(torch.float8_e4m3fn), lens, k_scale=0.5, **kw)
    # two sequences of one head: the persistent stream-K kernels (one sequence is cut into even pieces)
    k2, lens2 = torch.randn(2, 300, 1, 64, dtype=bf), torch.tensor([290, 7], dtype=i32)
    q2 = torch.randn(2, 1, 64, dtype=bf)
    yield "one head decode B=2", lambda: leanattn.decode(q2, k2, k2, lens2)
    yield "one head bifurcated 2 prompts x1", lambda: leanattn.bifurcated_decode(
        q2, torch.randn(2, 400, 1, 64, dtype=bf), torch.randn(2, 400, 1, 64, dtype=bf), k2, k2, lens2, None,
        torch.tensor([400, 7], dtype=i32), torch.tensor([1, 0], dtype=i32))
    yield "one row decode packed", lambda: leanattn.decode(q3[0], k, k, lens, cu_seqlens_q=torch.tensor([0, 3], dtype=i32),
                                                           max_seqlen_q=3, causal=True)
    qn, qp = torch.randn(1, 1, 512, dtype=bf), torch.randn(1, 1, 64, dtype=bf)
    ckv = torch.randn(1, 300, 1, 576, dtype=bf)
    yield "one row mla", lambda: leanattn.mla_decode(qn, qp, ckv[..., :512], ckv[..., 512:], lens)
    pk = torch.randn(2, 400, 1, 64, dtype=bf)
    plens, ids = torch.tensor([400, 7], dtype=i32), torch.tensor([1], dtype=i32)
    own = (k[:, :16], k[:, :16], torch.tensor([9], dtype=i32))
    yield "one row bifurcated", lambda: leanattn.bifurcated_decode(q, pk[0], pk[0], *own)
    yield "one row bifurcated prefix alone", lambda: leanattn.bifurcated_decode(q, pk[0], pk[0], None, None)
    yield "one row bifurcated prompts", lambda: leanattn.bifurcated_decode(q, pk, pk, *own, None, plens, ids)
    yield "one row bifurcated window", lambda: leanattn.bifurcated_decode(q, pk[0], pk[0], *own, window_left=5)
    yield "one row bifurcated tokens", lambda: leanattn.bifurcated_decode(q3, pk[0], pk[0], *own, causal=True)
    yield "one row bifurcated paged", lambda: leanattn.bifurcated_decode(
        q, pages, pages, *own, prefix_block_table=table, prefix_lens=torch.tensor([300], dtype=i32))
    yield "one row cascade", lambda: leanattn.cascade_decode(q, [(pk[0], pk[0]), (pk, pk, plens, ids)], *own)
    yield "one row merge_state", lambda: leanattn.merge_state(q.float(), one[None], q.float(), one[None])
    yield "one row merge_state_in_place", lambda: leanattn.merge_state_in_place(q.float(), one[None].clone(),
                                                                                 q.float(), one[None])
    for s in (3, 20):
        yield f"one row merge_states {s}", lambda s=s: leanattn.merge_states(torch.randn(s, 1, 1, 64, dtype=bf),
                                                                             torch.randn(s, 1, 1))
    x = torch.randn(1, 256, 1, 64, dtype=bf, requires_grad=True)

    def sparse():
        keep = torch.rand(1, 256, 1) > 0.5
        leanattn.qk_sparse_attention(x, x, x, keep, keep).sum().backward()
    yield "one row sparse qk", sparse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", default=["decode", "bifurcated", "sparse"])
    ap.add_argument("--ptx", default=None, help="write each kernel's PTX to this folder")
    ap.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    args = ap.parse_args(argv)
    if args.ptx:
        os.makedirs(args.ptx, exist_ok=True)
    label = [""]
    _install(args.ptx, label)
    print(f"triton {triton.__version__}; sm_90a; occupancy for an H200 SM ({REGS} registers, {SMEM} B shared)")
    families = {"decode": decode_cases, "bifurcated": bifurcated_cases, "sparse": sparse_cases,
                "overlap": overlap_cases, "model": model_cases,
                "window": window_cases, "merge": merge_cases, "one-row": one_row_cases, "append": append_cases}
    for fam in args.families:
        for name, fn in families[fam]():
            if args.cases and name not in args.cases.split(","):
                continue
            label[0] = name
            _try(name, fn)
    print(f"{'case':32s} {'kernel':30s} regs stack shared warps occ ring loop")
    for r in RESULTS:
        print(f"{r['case']:32s} {r['kernel']:30s} {r['regs']:4d} {r['stack']:5d} {r['shared']:6d} {r['warps']:5d} "
              f"{r['occupancy']:3d} {r['ring']:4d} {r['loop']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
