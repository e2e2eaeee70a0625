"""Sparse flash attention (QK-sparse, hash-sparse) against the float64 dense masked reference.

Runs on the CPU under the Triton interpreter (tiny shapes, 16x16 tiles) or on a GPU.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import leanattn
from leanattn import reference
from leanattn.sparse import api, lsh_buckets
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# tile configs (block_m, block_n, block_m_bwd, block_n_bwd): square, and both rectangular ways
CONFIGS = [(16, 16, 16, 16), (32, 16, 16, 32), (16, 32, 32, 16)]


@pytest.fixture
def config(request, monkeypatch):
    cfg = getattr(request, "param", None)
    if cfg is not None:
        monkeypatch.setattr(api, "_override", api.SparseConfig(*cfg))
    return cfg


def _inputs(B, N, H, D, dtype, device):
    return [torch.randn(B, N, H, D, dtype=dtype, device=device).requires_grad_() for _ in range(3)]


def _check(fn, ref_fn, q, k, v, a, b, tol=None, **kw):
    """Output and gradients of ``fn`` against the float64 reference; returns (out, grads)."""
    tol = tol or TOLERANCE[q.dtype]
    out = fn(q, k, v, a, b, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = ref_fn(q, k, v, a, b, softmax_scale=kw.get("softmax_scale"))
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    assert_rel_close("out", out, ref, tol)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_rel_close(f"d{name}", g, r, tol)
    return out, grads


def _qk(q, k, v, a, b, **kw):
    return leanattn.qk_sparse_attention(q, k, v, a, b, **kw)


def _hash(q, k, v, a, b, **kw):
    return leanattn.hash_sparse_attention(q, k, v, a, b, **kw)


# ----------------------------------------------------------------------------------------------
# agreement with the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [45, 64])
@pytest.mark.parametrize("drop", [0.3, 0.7])
def test_qk_sparse_matches_reference(device, dtype, N, drop):
    q, k, v = _inputs(2, N, 2, 64, dtype, device)
    q_keep = torch.rand(2, N, 2, device=device) > drop
    k_keep = torch.rand(2, N, 2, device=device) > drop
    out, grads = _check(_qk, reference.qk_sparse_attention, q, k, v, q_keep, k_keep)
    # dropped queries: zero output and zero dQ; dropped keys: zero dK, dV
    assert (out.transpose(1, 2)[~q_keep.transpose(1, 2)] == 0).all()
    assert (grads[0].transpose(1, 2)[~q_keep.transpose(1, 2)] == 0).all()
    assert (grads[1].transpose(1, 2)[~k_keep.transpose(1, 2)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_buckets", [2, 5])
def test_hash_sparse_matches_reference(device, dtype, n_buckets):
    N = 53
    q, k, v = _inputs(1, N, 3, 64, dtype, device)
    qb = torch.randint(0, n_buckets, (1, N, 3), device=device)
    kb = torch.randint(0, n_buckets, (1, N, 3), device=device)
    _check(_hash, reference.hash_sparse_attention, q, k, v, qb, kb)


@pytest.mark.parametrize("config", CONFIGS, indirect=True)
@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_tile_configs(device, config, mode):
    N = 70
    q, k, v = _inputs(1, N, 2, 64, torch.float32, device)
    if mode == "qk":
        a, b = torch.rand(1, N, 2, device=device) > 0.4, torch.rand(1, N, 2, device=device) > 0.4
        _check(_qk, reference.qk_sparse_attention, q, k, v, a, b)
    else:
        # a few large buckets: full (unmasked) tiles occur inside buckets
        a = torch.randint(0, 3, (1, N, 2), device=device)
        _check(_hash, reference.hash_sparse_attention, q, k, v, a, a)


@pytest.mark.parametrize("config", CONFIGS[:2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_atomic_dq(device, config, dtype, mode):
    # deterministic=False: dQ accumulated by float32 atomics in the dK/dV pass
    N = 61
    q, k, v = _inputs(1, N, 2, 64, dtype, device)
    if mode == "qk":
        a, b = torch.rand(1, N, 2, device=device) > 0.3, torch.rand(1, N, 2, device=device) > 0.3
        a[:, :, 1] = False
        _check(_qk, reference.qk_sparse_attention, q, k, v, a, b, deterministic=False)
    else:
        a = torch.randint(0, 3, (1, N, 2), device=device)
        _check(_hash, reference.hash_sparse_attention, q, k, v, a, a, deterministic=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_atomic_dq_padding_keys_of_a_full_tile(device, dtype):
    # the last key block (keys 0..7 of bucket 1, then padding) is seen in full by queries 16..31, whose every score
    # is very negative: a padding key's exp2(0 - lse) overflows, and the atomic dQ once took inf * 0 = NaN from it
    N, a = 40, (2.0 if dtype == torch.float16 else 4.0)
    q = (a + 0.1 * torch.randn(1, N, 1, 64, device=device)).to(dtype).requires_grad_()
    k = (-a + 0.1 * torch.randn(1, N, 1, 64, device=device)).to(dtype).requires_grad_()
    v = torch.randn(1, N, 1, 64, device=device, dtype=dtype).requires_grad_()
    qb = torch.ones(1, N, 1, dtype=torch.int32, device=device)
    kb = torch.zeros_like(qb)
    kb[:, :8] = 1
    # scores of -32 to -64 rounded to fp16 leave dQ at ~7e-3 of the reference on both dQ paths: fp16 gets bf16's bound
    tol = TOLERANCE[torch.bfloat16] if dtype == torch.float16 else None
    for det in (True, False):
        _check(_hash, reference.hash_sparse_attention, q, k, v, qb, kb, tol=tol, deterministic=det)


def test_head_stride_beyond_int32(device):
    # heads 2**30 + 64 elements apart (a (B, H, N, D) buffer seen as (B, N, H, D)): head 2 starts past 2**31, which
    # an int32 head offset wrapped. The storage is left unwritten but for the rows read (lazily mapped pages).
    N, H, D, sh = 16, 3, 64, 2**30 + 64
    views = []
    for _ in range(3):
        x = torch.as_strided(torch.empty(2 * sh + N * D, dtype=torch.float16, device=device), (1, N, H, D),
                             (0, D, sh, 1))
        x.copy_(torch.randn(1, N, H, D))
        views.append(x.requires_grad_())
    keep = torch.rand(1, N, H, device=device) > 0.2
    keep[:, :, 2] = True
    _check(_qk, reference.qk_sparse_attention, *views, keep, keep)


@pytest.mark.parametrize("scale", [0.2, -0.3, 0.0])
@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_head_dim_128_and_scale(device, mode, scale):
    # a negative scale and zero (uniform weights over the visible keys) are legal too: a row max over unscaled
    # products, right for a positive scale only, would get them wrong (the masked -inf times the scale among them)
    N = 33
    q, k, v = _inputs(1, N, 1, 128, torch.float16, device)
    if mode == "qk":
        a, b = torch.rand(1, N, 1, device=device) > 0.3, torch.rand(1, N, 1, device=device) > 0.3
        _check(_qk, reference.qk_sparse_attention, q, k, v, a, b, softmax_scale=scale)
    else:
        a, b = torch.randint(0, 3, (1, N, 1), device=device), torch.randint(0, 3, (1, N, 1), device=device)
        _check(_hash, reference.hash_sparse_attention, q, k, v, a, b, softmax_scale=scale)


# ----------------------------------------------------------------------------------------------
# edge cases


def test_all_dropped_heads(device):
    N = 40
    q, k, v = _inputs(1, N, 3, 64, torch.float32, device)
    q_keep = torch.rand(1, N, 3, device=device) > 0.3
    k_keep = torch.rand(1, N, 3, device=device) > 0.3
    q_keep[:, :, 0] = False  # head 0: every query dropped
    k_keep[:, :, 1] = False  # head 1: every key dropped
    out, (dq, dk, dv) = _check(_qk, reference.qk_sparse_attention, q, k, v, q_keep, k_keep)
    for x in (out, dq, dk, dv):
        assert (x[:, :, :2] == 0).all()
        assert torch.isfinite(x).all()


def test_stranded_queries(device):
    N = 37
    q, k, v = _inputs(1, N, 2, 64, torch.float32, device)
    q_keep = torch.ones(1, N, 2, dtype=torch.bool, device=device)
    k_keep = torch.rand(1, N, 2, device=device) > 0.5
    k_keep[:, :20] = False  # queries 0..19 are kept but see no key
    out, (dq, dk, dv) = _check(_qk, reference.qk_sparse_attention, q, k, v, q_keep, k_keep)
    assert (out[:, :20] == 0).all() and (dq[:, :20] == 0).all()
    # hash: a query whose bucket has no key at or before it
    qb = torch.randint(0, 3, (1, N, 2), device=device)
    kb = qb.clone()
    kb[:, :25] = 7
    out, _ = _check(_hash, reference.hash_sparse_attention, q, k, v, qb, kb)
    assert (out[:, :25] == 0).all()


def _dense_causal(q, k, v):
    q, k, v = (x.transpose(1, 2).double() for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_keep_all_and_one_bucket_equal_dense_causal(device, mode):
    N = 50
    q, k, v = _inputs(2, N, 2, 64, torch.float32, device)
    if mode == "qk":
        a = b = torch.ones(2, N, 2, dtype=torch.bool, device=device)
    else:
        a = b = torch.full((2, N, 2), 3, dtype=torch.int64, device=device)
    fn = _qk if mode == "qk" else _hash
    out = fn(q, k, v, a, b)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = _dense_causal(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    assert_rel_close("out", out, ref, 1e-5)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_rel_close(f"d{name}", g, r, 1e-5)


def test_self_attention_included(device):
    # every token in its own bucket: each query sees exactly itself, so out == v
    N = 20
    q, k, v = _inputs(1, N, 1, 64, torch.float32, device)
    ids = torch.arange(N, device=device).view(1, N, 1)
    out = leanattn.hash_sparse_attention(q, k, v, ids, ids)
    torch.testing.assert_close(out, v.detach())


def test_tiny_and_empty_lengths(device):
    for N in (0, 1, 3):
        q, k, v = _inputs(1, N, 2, 64, torch.float32, device)
        keep = torch.ones(1, N, 2, dtype=torch.bool, device=device)
        out = leanattn.qk_sparse_attention(q, k, v, keep, keep)
        assert out.shape == (1, N, 2, 64)
        out.sum().backward()
        if N:
            assert_rel_close("out", out, reference.qk_sparse_attention(q, k, v, keep, keep), 1e-5)


@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_return_lse(device, mode):
    # time order, natural log, -inf for dropped queries and for queries that see no key; no gradient
    N = 45
    q, k, v = _inputs(2, N, 3, 64, torch.float16, device)
    if mode == "qk":
        a, b = torch.rand(2, N, 3, device=device) > 0.4, torch.rand(2, N, 3, device=device) > 0.4
        b[0, :, 0] = False  # a head that sees no key at all
    else:
        a, b = torch.randint(0, 4, (2, N, 3), device=device), torch.randint(0, 4, (2, N, 3), device=device)
    fn, ref_fn = (_qk, reference.qk_sparse_attention) if mode == "qk" else (_hash, reference.hash_sparse_attention)
    out, lse = fn(q, k, v, a, b, return_lse=True)
    ref_out, ref_lse = ref_fn(q, k, v, a, b, return_lse=True)
    assert lse.shape == (2, N, 3) and lse.dtype == torch.float32 and lse.is_contiguous() and not lse.requires_grad
    assert torch.isinf(ref_lse).any()
    assert_rel_close("out", out, ref_out, TOLERANCE[q.dtype])
    assert_lse_close("lse", lse, ref_lse, 2e-3)
    assert torch.equal(out, fn(q, k, v, a, b))
    # the output stays differentiable
    g = torch.autograd.grad(out.sum(), q)[0]
    assert_rel_close("dq", g, torch.autograd.grad(ref_out.sum(), q)[0], TOLERANCE[q.dtype])
    with pytest.raises(TypeError, match="return_lse: expected a bool, got str"):
        fn(q, k, v, a, b, return_lse="yes")


def test_strided_inputs_no_grad_and_determinism(device):
    # q, k, v as slices of one fused projection (unit stride on D only)
    N = 41
    qkv = torch.randn(1, N, 3, 2, 64, device=device)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    keep = torch.rand(1, N, 2, device=device) > 0.3
    ref = reference.qk_sparse_attention(q, k, v, keep, keep)
    with torch.no_grad():
        out = leanattn.qk_sparse_attention(q, k, v, keep, keep)
    assert_rel_close("out", out, ref, 1e-5)
    qkv.requires_grad_()
    q, k, v = qkv.unbind(2)
    grads = []
    for _ in range(2):
        out = leanattn.qk_sparse_attention(q, k, v, keep, keep)
        grads.append(torch.autograd.grad(out, qkv, torch.ones_like(out))[0])
    assert torch.equal(grads[0], grads[1])  # no atomics: bitwise deterministic


# ----------------------------------------------------------------------------------------------
# torch.library registration


@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_opcheck(device, mode):
    N = 20
    q, k, v = _inputs(1, N, 2, 64, torch.float32, device)
    if mode == "qk":
        a, b = torch.rand(1, N, 2, device=device) > 0.3, torch.rand(1, N, 2, device=device) > 0.3
    else:
        a = b = torch.randint(0, 2, (1, N, 2), dtype=torch.int32, device=device)
    cfg = api.sparse_config(64, q.device)
    args = (q, k, v, a, b, 0.125, [cfg.block_m, cfg.block_n, cfg.block_m_bwd, cfg.block_n_bwd, 1])
    torch.library.opcheck(torch.ops.leanattn.sparse_attn_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_sparse_config(monkeypatch):
    # the GPU's tiles (H100-tuned at D=128: wider forward key tiles for dropped tokens, not for buckets), the
    # override's parsing, and each public op asking for its mode's tiles
    from leanattn import runtime
    monkeypatch.delenv("LEANATTN_SPARSE_TILES", raising=False)
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    cpu = torch.device("cpu")
    assert api.sparse_config(128, cpu) == api.SparseConfig(128, 128, 64, 128)
    assert api.sparse_config(128, cpu, hashed=True) == api.SparseConfig(128, 64, 64, 128)
    assert api.sparse_config(64, cpu) == api.sparse_config(64, cpu, hashed=True) == api.SparseConfig(128, 64, 64, 128)
    monkeypatch.setenv("LEANATTN_SPARSE_TILES", "32,16,16,64")
    assert api.sparse_config(128, cpu) == api.SparseConfig(32, 16, 16, 64)
    for bad in ("32,16,16", "32,16,16,48", "8,16,16,16", "32,16,x,64"):
        monkeypatch.setenv("LEANATTN_SPARSE_TILES", bad)
        with pytest.raises(ValueError, match="LEANATTN_SPARSE_TILES: expected four powers of two >= 16"):
            api.sparse_config(64, cpu)
    monkeypatch.delenv("LEANATTN_SPARSE_TILES")
    monkeypatch.undo()
    asked, real = [], api.sparse_config
    monkeypatch.setattr(api, "sparse_config", lambda d, dev, hashed=False: asked.append(hashed) or real(d, dev))
    x = torch.randn(1, 8, 1, 64)
    leanattn.qk_sparse_attention(x, x, x, torch.ones(1, 8, 1, dtype=torch.bool), torch.ones(1, 8, 1, dtype=torch.bool))
    leanattn.hash_sparse_attention(x, x, x, torch.zeros(1, 8, 1, dtype=torch.int32),
                                   torch.zeros(1, 8, 1, dtype=torch.int32))
    assert asked == [False, True]


# ----------------------------------------------------------------------------------------------
# bad inputs


def _good(device, N=8):
    q = torch.randn(1, N, 2, 64, device=device)
    return q, q.clone(), q.clone(), torch.ones(1, N, 2, dtype=torch.bool, device=device)


@pytest.mark.parametrize("case, exc, match", [
    ("q_3d", ValueError, "q: expected a 4-D tensor"),
    ("k_shape", ValueError, "k: expected shape"),
    ("v_dtype", TypeError, "v: expected dtype"),
    ("int_q", TypeError, "q: expected dtype in"),
    ("head_dim", ValueError, "head dim in"),
    ("q_stride", ValueError, "q: expected unit stride"),
    ("keep_dtype", TypeError, "q_keep: expected dtype torch.bool"),
    ("keep_shape", ValueError, r"k_keep: expected shape \(1, 8, 2\)"),
    ("keep_device", ValueError, r"k_keep: expected device .+ \(as k\), got meta"),
    ("keep_type", TypeError, "q_keep: expected a torch.Tensor"),
    ("scale", TypeError, "softmax_scale: expected a float"),
    ("grid", ValueError, "q: expected batch x heads <= 65535"),
    ("deterministic", TypeError, "deterministic: expected a bool"),
])
def test_qk_bad_inputs(device, case, exc, match):
    q, k, v, keep = _good(device)
    a, b, kw = keep, keep, {}
    if case == "q_3d":
        q = q[0]
    elif case == "k_shape":
        k = k[:, :4]
    elif case == "v_dtype":
        v = v.half()
    elif case == "int_q":
        q, k, v = (x.to(torch.int32) for x in (q, k, v))
    elif case == "head_dim":
        q, k, v = (x[..., :32] for x in (q, k, v))
    elif case == "q_stride":
        q = torch.randn(1, 8, 2, 128, device=device)[..., ::2]
    elif case == "keep_dtype":
        a = keep.float()
    elif case == "keep_shape":
        b = keep[:, :4]
    elif case == "keep_device":
        b = keep.to("meta")
    elif case == "keep_type":
        a = [True] * 8
    elif case == "scale":
        kw = dict(softmax_scale="0.1")
    elif case == "grid":
        q, k, v = (torch.empty(256, 0, 257, 64, device=device) for _ in range(3))
    elif case == "deterministic":
        kw = dict(deterministic="yes")
    with pytest.raises(exc, match=match):
        leanattn.qk_sparse_attention(q, k, v, a, b, **kw)


@pytest.mark.parametrize("case, exc, match", [
    ("negative", ValueError, "q_buckets: expected bucket ids >= 0, got a minimum of -1"),
    ("above_n", ValueError, r"k_buckets: expected bucket ids <= 3 \(n_buckets=4\), got a maximum of 4"),
    ("above_int32", ValueError, "k_buckets: expected bucket ids <= 2147483647"),
    ("float_ids", TypeError, "q_buckets: expected an integer dtype"),
    ("bool_ids", TypeError, "k_buckets: expected an integer dtype"),
    ("shape", ValueError, r"q_buckets: expected shape \(1, 8, 2\)"),
    ("device", ValueError, r"q_buckets: expected device .+ \(as q\), got meta"),
    ("n_buckets", ValueError, "n_buckets: expected a positive int"),
    ("n_buckets_type", TypeError, "n_buckets: expected a positive int or None, got str"),
])
def test_hash_bad_inputs(device, case, exc, match):
    q, k, v, _ = _good(device)
    a = torch.zeros(1, 8, 2, dtype=torch.int64, device=device)
    b, kw = a.clone(), {}
    if case == "negative":
        a[0, 3, 1] = -1
    elif case == "above_n":
        b[0, 5, 0] = 4
        kw = dict(n_buckets=4)
    elif case == "above_int32":
        b[0, 5, 0] = 2**31
    elif case == "float_ids":
        a = a.float()
    elif case == "bool_ids":
        b = b.bool()
    elif case == "shape":
        a = a[:, :, :1]
    elif case == "device":
        a = a.to("meta")
    elif case == "n_buckets":
        kw = dict(n_buckets=0)
    elif case == "n_buckets_type":
        kw = dict(n_buckets="4")
    with pytest.raises(exc, match=match):
        leanattn.hash_sparse_attention(q, k, v, a, b, validate=True, **kw)


# ----------------------------------------------------------------------------------------------
# LSH


def test_lsh_buckets(device):
    x = torch.randn(2, 30, 3, 64, device=device)
    g = torch.Generator(device=device).manual_seed(1)
    ids = lsh_buckets(x, 8, generator=g)
    assert ids.shape == (2, 30, 3) and ids.dtype == torch.int32
    assert ids.min() >= 0 and ids.max() < 8
    # same generator state, same rotations; scale-invariant; -x lands n/2 buckets away
    for y, expect in ((x, ids), (3.0 * x, ids), (-x, (ids + 4) % 8)):
        g.manual_seed(1)
        assert torch.equal(lsh_buckets(y, 8, generator=g), expect)
    # one rotation per head: identical tokens in different heads may hash differently,
    # identical tokens in the same head always hash the same
    same = x[:, :1].expand(2, 30, 3, 64)
    g.manual_seed(1)
    ids = lsh_buckets(same, 8, generator=g)
    assert (ids == ids[:, :1]).all()
    # half precision input works; so does a numpy integer count, here and in hash_sparse_attention
    assert lsh_buckets(x.half(), 16).max() < 16
    ids = lsh_buckets(x, np.int64(4))
    assert ids.max() < 4
    q = x[:, :, :, :].requires_grad_()
    out = leanattn.hash_sparse_attention(q, q, q, ids, ids, n_buckets=np.int64(4))
    assert_rel_close("out", out, reference.hash_sparse_attention(q, q, q, ids, ids), TOLERANCE[torch.float32])


@pytest.mark.parametrize("kw, exc, match", [
    (dict(n_buckets=3), ValueError, r"n_buckets: expected an even int in \[2, 2\*\*31\], got 3"),
    (dict(n_buckets=0), ValueError, "n_buckets: expected an even int"),
    (dict(n_buckets=2**40), ValueError, "n_buckets: expected an even int in"),
    (dict(n_buckets=4.0), TypeError, "n_buckets: expected an even int"),
    (dict(n_buckets=None), TypeError, "n_buckets: expected an even int"),
    (dict(n_buckets=4, generator=1), TypeError, "generator: expected a torch.Generator"),
])
def test_lsh_bad_inputs(device, kw, exc, match):
    with pytest.raises(exc, match=match):
        lsh_buckets(torch.randn(1, 4, 2, 64, device=device), **kw)
    with pytest.raises(TypeError, match="x: expected a floating-point dtype"):
        lsh_buckets(torch.ones(1, 4, 2, 64, dtype=torch.int32, device=device), 4)


def test_torch_compile_fullgraph(device):
    # validation traces; the layout and the kernels run inside the custom ops
    f = torch.compile(lambda q, k, v, a, b: leanattn.hash_sparse_attention(q, k, v, a, b), fullgraph=True,
                      dynamic=True)
    for N in (24, 37):
        q, k, v = _inputs(1, N, 2, 64, torch.float32, device)
        a = torch.randint(0, 3, (1, N, 2), device=device)
        out = f(q, k, v, a, a)
        dq = torch.autograd.grad(out.sum(), q)[0]
        ref = reference.hash_sparse_attention(q, k, v, a, a)
        assert_rel_close("out", out, ref, 1e-5)
        assert_rel_close("dq", dq, torch.autograd.grad(ref.sum(), q)[0], 1e-5)
    # with the LSE: its time order is torch ops on the layout, traced in the same graph
    g = torch.compile(lambda q, k, v, a, b: leanattn.hash_sparse_attention(q, k, v, a, b, return_lse=True),
                      fullgraph=True, dynamic=True)
    out, lse = g(q, k, v, a, a)
    assert torch.equal(lse, leanattn.hash_sparse_attention(q, k, v, a, a, return_lse=True)[1])


def test_tune_once():
    # LEANATTN_SPARSE_TUNE_ONCE=1 (benchmarks/sanitize.py): the autotuners launch each config once, untimed, so ties
    # keep the first config
    from leanattn.kernels.sparse_attn import _launch_once
    calls = []
    assert _launch_once(lambda: calls.append(1), quantiles=(0.5, 0.2, 0.8)) == [0.0, 0.0, 0.0]
    assert calls == [1]


@pytest.mark.parametrize("raw", ["1", "2"])
def test_tune_once_knob(raw):
    # read when kernels/sparse_attn.py is imported (a process of its own): 1 wires _launch_once into the three
    # autotuners; any value but 0 or 1 stops the import, naming the knob
    import os
    import subprocess
    import sys
    code = "from leanattn.kernels import sparse_attn as s; print(s._TUNE['do_bench'] is s._launch_once)"
    env = dict(os.environ, LEANATTN_SPARSE_TUNE_ONCE=raw)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if raw == "1":
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "True"
    else:
        assert "ValueError: LEANATTN_SPARSE_TUNE_ONCE: expected 0 or 1, got '2'" in run.stderr
