"""GPU-only sparse flash attention tests: bf16/fp16 at larger shapes, production tiles, determinism,
torch.compile and CUDA-graph capture. Skipped without CUDA.

Run on the device machine: ``PYTHONPATH=src python3 -m pytest -q tests/test_sparse_gpu.py``.
"""
import pytest
import torch
import torch.nn.functional as F

import leanattn
from leanattn import reference
from leanattn.sparse import lsh_buckets
from leanattn.testing import TOLERANCE, assert_rel_close

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _inputs(B, N, H, D, dtype):
    return [torch.randn(B, N, H, D, dtype=dtype, device="cuda").requires_grad_() for _ in range(3)]


def _check(fn, ref_fn, q, k, v, a, b, tol, **kw):
    out = fn(q, k, v, a, b, **kw)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = ref_fn(q, k, v, a, b)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    assert_rel_close("out", out, ref, tol)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_rel_close(f"d{name}", g, r, tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("N", [1000, 2047])
@pytest.mark.parametrize("drop", [0.0, 0.5, 0.8])
def test_qk_sparse_large(dtype, D, N, drop):
    q, k, v = _inputs(2, N, 3, D, dtype)
    q_keep = torch.rand(2, N, 3, device="cuda") >= drop
    k_keep = torch.rand(2, N, 3, device="cuda") >= drop
    q_keep[0, :, 0] = False  # an all-dropped head
    _check(leanattn.qk_sparse_attention, reference.qk_sparse_attention, q, k, v, q_keep, k_keep, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("N", [1000, 2047])
@pytest.mark.parametrize("n_buckets", [1, 2, 16, 64])
def test_hash_sparse_large(dtype, D, N, n_buckets):
    q, k, v = _inputs(2, N, 3, D, dtype)
    if n_buckets == 1:
        qb = kb = torch.zeros(2, N, 3, dtype=torch.int32, device="cuda")
    else:
        qb = lsh_buckets(q.detach(), n_buckets)
        kb = lsh_buckets(k.detach(), n_buckets)
    _check(leanattn.hash_sparse_attention, reference.hash_sparse_attention, q, k, v, qb, kb, TOLERANCE[dtype])


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_gqa_large(mode, D, deterministic):
    # grouped-query attention, 8 query heads over 2 kv heads (Llama's 4:1), production tiles; dK/dV summed over
    # the group in registers, bitwise the same on a second run
    N = 2047
    q = torch.randn(2, N, 8, D, dtype=torch.bfloat16, device="cuda").requires_grad_()
    k, v = (torch.randn(2, N, 2, D, dtype=torch.bfloat16, device="cuda").requires_grad_() for _ in range(2))
    if mode == "qk":
        a, b = torch.rand(2, N, 8, device="cuda") > 0.5, torch.rand(2, N, 2, device="cuda") > 0.5
        fn, ref_fn = leanattn.qk_sparse_attention, reference.qk_sparse_attention
    else:
        # (queries hashed with their kv head's rotations: one generator state, group = 8 // 2)
        a = lsh_buckets(q.detach(), 16, torch.Generator(device="cuda").manual_seed(0), group=4)
        b = lsh_buckets(k.detach(), 16, torch.Generator(device="cuda").manual_seed(0))
        fn, ref_fn = leanattn.hash_sparse_attention, reference.hash_sparse_attention
    _check(fn, ref_fn, q, k, v, a, b, TOLERANCE[torch.bfloat16], deterministic=deterministic)
    grads = [torch.autograd.grad(fn(q, k, v, a, b, deterministic=deterministic), (k, v), torch.ones_like(q))
             for _ in range(2)]
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("split", ["4", "16"])
def test_split_sums_under_concurrency(monkeypatch, split):
    # multi-query attention (16 query heads over one kv head) with the group cut over programs of each key block,
    # the runs summed by each block's last run, every run of a block in flight at once: the reference's gradients;
    # then, for three new output gradients, against the group left whole (a partial read before its run stored it
    # would hold the last call's values, far off) and the same bits again
    N, H = 4000, 16
    q = torch.randn(1, N, H, 128, dtype=torch.bfloat16, device="cuda").requires_grad_()
    k, v = (torch.randn(1, N, 1, 128, dtype=torch.bfloat16, device="cuda").requires_grad_() for _ in range(2))
    a, b = torch.rand(1, N, H, device="cuda") > 0.3, torch.rand(1, N, 1, device="cuda") > 0.3

    def grads(runs, dout):
        monkeypatch.setenv("LEANATTN_SPARSE_DKDV_SPLIT", runs)
        return torch.autograd.grad(leanattn.qk_sparse_attention(q, k, v, a, b), (k, v), dout)

    monkeypatch.setenv("LEANATTN_SPARSE_DKDV_SPLIT", split)
    _check(leanattn.qk_sparse_attention, reference.qk_sparse_attention, q, k, v, a, b, TOLERANCE[torch.bfloat16])
    for _ in range(3):
        dout = torch.randn_like(q)
        whole, cut = grads("1", dout), grads(split, dout)
        for name, x, y in zip(("dk", "dv"), cut, whole):
            assert_rel_close(name, x, y, 1e-2)
        again = grads(split, dout)
        assert torch.equal(again[0], cut[0]) and torch.equal(again[1], cut[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_atomic_dq(dtype, mode):
    B, N, H, D = 2, 3000, 4, 64
    q, k, v = _inputs(B, N, H, D, dtype)
    if mode == "qk":
        a, b = torch.rand(B, N, H, device="cuda") > 0.5, torch.rand(B, N, H, device="cuda") > 0.5
        _check(leanattn.qk_sparse_attention, reference.qk_sparse_attention, q, k, v, a, b, TOLERANCE[dtype],
               deterministic=False)
    else:
        a = lsh_buckets(q.detach(), 16)
        _check(leanattn.hash_sparse_attention, reference.hash_sparse_attention, q, k, v, a, a, TOLERANCE[dtype],
               deterministic=False)


@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_dense_limit_matches_sdpa(mode):
    # keep-all / one bucket vs cuDNN/flash SDPA at the same precision (flash-attn's 2x rule)
    B, N, H, D = 2, 4096, 4, 64
    q, k, v = _inputs(B, N, H, D, torch.bfloat16)
    if mode == "qk":
        a = b = torch.ones(B, N, H, dtype=torch.bool, device="cuda")
        out = leanattn.qk_sparse_attention(q, k, v, a, b)
    else:
        a = b = torch.zeros(B, N, H, dtype=torch.int32, device="cuda")
        out = leanattn.hash_sparse_attention(q, k, v, a, b)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    sdpa = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)
    ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float(), is_causal=True).transpose(1, 2)
    err = (out.float() - ref).norm() / ref.norm()
    err_sdpa = (sdpa.float() - ref).norm() / ref.norm()
    assert err <= 2 * err_sdpa + 1e-4, (err.item(), err_sdpa.item())


def test_long_sparse_and_deterministic():
    B, N, H, D = 1, 8192, 2, 64
    q, k, v = _inputs(B, N, H, D, torch.bfloat16)
    qb = lsh_buckets(q.detach(), 64)
    _check(leanattn.hash_sparse_attention, reference.hash_sparse_attention, q, k, v, qb, qb, 1e-2)
    outs = []
    for _ in range(2):
        out = leanattn.hash_sparse_attention(q, k, v, qb, qb)
        outs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for x, y in zip(*outs):
        assert torch.equal(x, y)


def test_torch_compile_fullgraph():
    B, N, H, D = 2, 1500, 4, 64
    q, k, v = _inputs(B, N, H, D, torch.bfloat16)
    keep = torch.rand(B, N, H, device="cuda") > 0.5

    def f(q, k, v, keep, buckets):
        return leanattn.qk_sparse_attention(q, k, v, keep, keep) + leanattn.hash_sparse_attention(q, k, v, buckets,
                                                                                                  buckets)
    buckets = lsh_buckets(q.detach(), 8)
    eager = f(q, k, v, keep, buckets)
    g_eager = torch.autograd.grad(eager.sum(), (q, k, v))
    compiled = torch.compile(f, fullgraph=True, dynamic=True)(q, k, v, keep, buckets)
    g_comp = torch.autograd.grad(compiled.sum(), (q, k, v))
    assert_rel_close("out", compiled, eager, 1e-3)
    for name, a, b in zip("qkv", g_comp, g_eager):
        assert_rel_close(f"d{name}", a, b, 1e-3)


def test_cuda_graph_replay_with_new_pattern():
    B, N, H, D = 2, 2000, 4, 64
    q, k, v = (torch.randn(B, N, H, D, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    keep = torch.rand(B, N, H, device="cuda") > 0.5
    leanattn.qk_sparse_attention(q, k, v, keep, keep)  # autotune outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = leanattn.qk_sparse_attention(q, k, v, keep, keep)
    keep.copy_(torch.rand(B, N, H, device="cuda") > 0.3)
    g.replay()
    torch.cuda.synchronize()
    assert_rel_close("out", out, reference.qk_sparse_attention(q, k, v, keep, keep), 1e-2)


def test_autotune_once_per_octave_of_lengths():
    # a training run with varied lengths benchmarks the configs once per power of two, not per length
    from leanattn.kernels.sparse_attn import sparse_fwd_kernel
    keep = {}
    for N in (1500, 1700, 2048):
        q, k, v = _inputs(1, N, 2, 64, torch.bfloat16)
        keep[N] = len(sparse_fwd_kernel.cache)
        out = leanattn.qk_sparse_attention(q, k, v, torch.ones(1, N, 2, dtype=torch.bool, device="cuda"),
                                           torch.ones(1, N, 2, dtype=torch.bool, device="cuda"))
        out.float().sum().backward()
        keep[N] = len(sparse_fwd_kernel.cache) - keep[N]
    assert keep[1700] == 0 and keep[2048] == 0, keep
    assert all(key[0] & (key[0] - 1) == 0 for key in sparse_fwd_kernel.cache), list(sparse_fwd_kernel.cache)
