"""Sparse flash attention with grouped-query attention (``k, v (B, N, Hkv, D)``, ``Hkv`` dividing the query heads):
forward, LSE and gradients against the float64 reference over kv heads repeated for their query heads, the layout
kernels against the torch layout of the repeated key ids, and the errors. CPU under the Triton interpreter, or a
GPU."""
import pytest
import torch

import leanattn
from leanattn import reference
from leanattn.sparse import api, layout, lsh
from leanattn.testing import TOLERANCE, assert_lse_close, assert_rel_close, rel_err
from test_sparse import CONFIGS
from test_sparse_layout import kernel_layout, torch_layout


def _inputs(B, N, H, HK, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, N, H, 64, dtype=dtype, device=device, generator=g).requires_grad_()
    k, v = (torch.randn(B, N, HK, 64, dtype=dtype, device=device, generator=g).requires_grad_() for _ in range(2))
    return q, k, v


def _ids(mode, B, N, heads, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    if mode == "qk":
        return torch.rand(B, N, heads, device=device, generator=g) > 0.4
    return torch.randint(0, 3, (B, N, heads), device=device, generator=g)


def _check(mode, q, k, v, a, b, lowp=False, **kw):
    """Output, LSE and the three gradients against the reference; returns the gradients.

    ``lowp``: each gradient within 3x the error of PyTorch's dense attention in ``q``'s dtype where that exceeds the
    tolerance (flash-attn's convention). Where one query row and few keys carry a gradient, the backward's ``delta =
    rowsum(dO * O)`` over the output rounded to fp16 is off by up to ``eps |dO| |O|``, which ``p (dP - delta)``
    amplifies as ``|dP - delta|`` shrinks: 2.7e-3 in a case of 7 tokens, PyTorch's fp16 math 1.0e-3."""
    fn = leanattn.qk_sparse_attention if mode == "qk" else leanattn.hash_sparse_attention
    ref_fn = reference.qk_sparse_attention if mode == "qk" else reference.hash_sparse_attention
    tol = TOLERANCE[q.dtype]
    out, lse = fn(q, k, v, a, b, return_lse=True, **kw)
    ref, ref_lse = ref_fn(q, k, v, a, b, return_lse=True)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert_rel_close("out", out, ref, tol)
    assert_lse_close("lse", lse, ref_lse, 2e-3)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    tols = [tol] * 3
    if lowp:
        k_rep, v_rep, b_rep = reference._kv_heads_per_query(q, k, v, b)
        mask = (reference.qk_sparse_mask if mode == "qk" else reference.hash_sparse_mask)(a, b_rep)
        low = reference.masked_attention(q, k_rep, v_rep, mask, dtype=q.dtype)
        low_grads = torch.autograd.grad(low, (q, k, v), dout)
        tols = [max(tol, 3 * rel_err(x, want)) for x, want in zip(low_grads, ref_grads)]
    for name, got, want, t in zip("qkv", grads, ref_grads, tols):
        assert got.shape == want.shape, name
        assert_rel_close(f"d{name}", got, want, t)
    return grads


# each mode over each dtype, GQA and MQA taking turns (the full product cost CI 10 s more)
@pytest.mark.parametrize("mode,dtype,heads", [
    (mode, dtype, heads) for i, mode in enumerate(["qk", "hash"])
    for j, dtype in enumerate([torch.float32, torch.float16, torch.bfloat16])
    for heads in [[(4, 2), (3, 1)][(i + j) % 2]]], ids=str)
def test_gqa_matches_reference(device, mode, dtype, heads):
    H, HK = heads
    B, N = 2, 45
    q, k, v = _inputs(B, N, H, HK, dtype, device)
    a, b = _ids(mode, B, N, H, device, 1), _ids(mode, B, N, HK, device, 2)
    if mode == "qk":
        b[0, :, 0] = False  # a kv head with every key dropped: its group's queries see nothing
    _check(mode, q, k, v, a, b)


@pytest.mark.parametrize("tiles", CONFIGS[1:], ids=str)
@pytest.mark.parametrize("mode", ["qk", "hash"])
def test_gqa_rectangular_tiles_and_atomic_dq(device, monkeypatch, tiles, mode):
    # dK/dV over the group's query heads in turn, with dQ by a separate pass or by atomics
    monkeypatch.setattr(api, "_override", api.SparseConfig(*tiles))
    B, N, H, HK = 1, 70, 4, 2
    q, k, v = _inputs(B, N, H, HK, torch.float32, device, seed=3)
    a, b = _ids(mode, B, N, H, device, 4), _ids(mode, B, N, HK, device, 5)
    torch.manual_seed(0)
    det = _check(mode, q, k, v, a, b)
    torch.manual_seed(0)  # (the same upstream gradient)
    atomic = _check(mode, q, k, v, a, b, deterministic=False)
    # dK, dV summed over the group in registers, in order: the same bits either way, and run to run
    assert torch.equal(det[1], atomic[1]) and torch.equal(det[2], atomic[2])
    torch.manual_seed(0)
    assert torch.equal(_check(mode, q, k, v, a, b)[1], det[1])


@pytest.mark.parametrize("mode", ["qk", "hash3", "big"])
def test_gqa_layout_kernels_equal_torch_layout(device, mode):
    # the kernels' layout of (B, N, Hkv) key ids is the torch layout of the ids repeated for each query head: the
    # query rows' ranges alike, the key order once a kv head
    B, N, H, G = 2, 77, 6, 3
    tiles = (16, 32, 32, 16)
    a = _ids("qk" if mode == "qk" else "hash", B, N, H, device, 6)
    b = _ids("qk" if mode == "qk" else "hash", B, N, H // G, device, 7)
    if mode == "big":
        a, b = a * 700000001 % (2**31 - 1), b * 700000001 % (2**31 - 1)
    got = kernel_layout(a, b, tiles)
    ref = torch_layout("qk" if mode == "qk" else "hash", a, b.repeat_interleave(G, dim=2))
    lead = torch.arange(B * H, device=device) % H % G == 0  # the first query row of each kv head's group
    for name in ("q_perm", "q_group"):
        assert torch.equal(getattr(got, name), getattr(ref, name).to(torch.int32)), name
    for name in ("k_perm", "k_group"):
        assert torch.equal(getattr(got, name), getattr(ref, name)[lead].to(torch.int32)), name
    assert torch.equal(got.live.long(), torch.cat((ref.q_live[:, 0], ref.k_live[lead, 0])))
    assert torch.equal(got.q_ranges, layout.block_ranges_q(ref, tiles[0], tiles[1]))
    assert torch.equal(got.kv_ranges, layout.block_ranges_kv(ref, tiles[2], tiles[3]))


def test_gqa_opcheck(device):
    q, k, v = _inputs(1, 20, 4, 2, torch.float32, device, seed=8)
    a, b = _ids("qk", 1, 20, 4, device, 9), _ids("qk", 1, 20, 2, device, 10)
    cfg = api.sparse_config(64, q.device)
    args = (q, k, v, a, b, 0.125, [cfg.block_m, cfg.block_n, cfg.block_m_bwd, cfg.block_n_bwd, 1])
    torch.library.opcheck(torch.ops.leanattn.sparse_attn_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("change, exc, match", [
    (dict(k=(1, 8, 3, 64)), ValueError, r"k: expected shape \(1, 8, Hkv, 64\) with Hkv dividing q's 4 heads"),
    (dict(k=(1, 8, 2, 64), v=(1, 8, 4, 64)), ValueError, r"v: expected shape \(1, 8, 2, 64\) \(as k\)"),
    (dict(k=(1, 8, 2, 64), v=(1, 8, 2, 64), b=(1, 8, 4)), ValueError,
     r"k_keep: expected shape \(1, 8, 2\) \(\(B, N, H\) of k\)"),
    (dict(k=(1, 8, 2, 64), v=(1, 8, 2, 64), a=(1, 8, 2)), ValueError,
     r"q_keep: expected shape \(1, 8, 4\) \(\(B, N, H\) of q\)"),
])
def test_gqa_bad_inputs(device, change, exc, match):
    q = torch.randn(1, 8, 4, 64, device=device)
    k = torch.randn(change.get("k", (1, 8, 2, 64)), device=device)
    v = torch.randn(change.get("v", tuple(k.shape)), device=device)
    a = torch.ones(change.get("a", (1, 8, 4)), dtype=torch.bool, device=device)
    b = torch.ones(change.get("b", (1, 8, k.shape[2])), dtype=torch.bool, device=device)
    with pytest.raises(exc, match=match):
        leanattn.qk_sparse_attention(q, k, v, a, b)
    with pytest.raises(exc, match=match.replace("keep", "buckets")):
        leanattn.hash_sparse_attention(q, k, v, a.int(), b.int())


def test_gqa_empty_inputs(device):
    # no query head (H = 0 over Hkv = 2) or no token: zero gradients for the keys and values there are, and a layout
    # buffer fully written (zeros)
    for shape_q, shape_k in (((1, 8, 0, 64), (1, 8, 2, 64)), ((2, 0, 4, 64), (2, 0, 2, 64))):
        q = torch.randn(shape_q, device=device, requires_grad=True)
        k, v = (torch.full(shape_k, 3.0, device=device, requires_grad=True) for _ in range(2))
        a = torch.ones(shape_q[:3], dtype=torch.bool, device=device)
        b = torch.ones(shape_k[:3], dtype=torch.bool, device=device)
        out = leanattn.qk_sparse_attention(q, k, v, a, b)
        dk, dv = torch.autograd.grad(out, (k, v), torch.ones_like(out), allow_unused=True)
        assert torch.equal(dk, torch.zeros_like(k)) and torch.equal(dv, torch.zeros_like(v))
        cfg = api.sparse_config(64, q.device)
        meta = torch.ops.leanattn.sparse_attn_fwd(q, k, v, a, b, 0.125, [cfg.block_m, cfg.block_n, cfg.block_m_bwd,
                                                                        cfg.block_n_bwd, 1])[2]
        assert not meta.any()


@pytest.mark.parametrize("mode,split", [("qk", "2"), ("hash", "4")])
def test_gqa_group_split_over_programs(device, monkeypatch, mode, split):
    # the group's query heads cut into runs over programs of a key block (few kv heads: LEANATTN_SPARSE_DKDV_SPLIT,
    # which a GPU's plan chooses from its SM count), partial dK/dV summed in order by each key block's last run: the
    # reference's gradients, and the same bits on a second run, with either dQ mode
    monkeypatch.setenv("LEANATTN_SPARSE_DKDV_SPLIT", split)
    B, N, H, HK = 1, 50, 8, 2
    q, k, v = _inputs(B, N, H, HK, torch.float16, device, seed=11)
    a, b = _ids(mode, B, N, H, device, 12), _ids(mode, B, N, HK, device, 13)
    for deterministic in (True, False):
        torch.manual_seed(1)
        grads = _check(mode, q, k, v, a, b, deterministic=deterministic)
        torch.manual_seed(1)
        assert torch.equal(_check(mode, q, k, v, a, b, deterministic=deterministic)[1], grads[1])
    from leanattn.sparse import plan
    # (the plans made under this override: a GPU's own choice for other tests' shapes may differ)
    made = [p for key, p in plan._PLANS.items() if key[-1] == split]
    assert made and all(p.split == int(split) and p.dkdv_grid[0] == p.n_kv * p.split for p in made)
    monkeypatch.setenv("LEANATTN_SPARSE_DKDV_SPLIT", "8")
    with pytest.raises(ValueError, match="LEANATTN_SPARSE_DKDV_SPLIT: expected a divisor of the 4 query heads"):
        leanattn.qk_sparse_attention(q, k, v, a.bool() if mode == "qk" else a > 0, b.bool() if mode == "qk" else b > 0)


def test_dkdv_split_choice(monkeypatch):
    # the GPU's choice: the largest power of two dividing the group that keeps four programs an SM (_DKDV_WAVES),
    # at least 2 for an even group below eight programs an SM, 1 for MHA
    from leanattn import runtime
    from leanattn.sparse.plan import dkdv_split
    monkeypatch.delenv("LEANATTN_SPARSE_DKDV_SPLIT", raising=False)
    monkeypatch.setattr(runtime, "gpu_target", lambda device: True)
    monkeypatch.setattr(runtime, "num_sms", lambda device: 132)
    cpu = torch.device("cpu")
    assert dkdv_split(64, 32, cpu) == 8     # MQA 32/1, B=1, 8k tokens: 64 key blocks
    assert dkdv_split(128, 32, cpu) == 4    # MQA at 16k
    assert dkdv_split(128, 8, cpu) == 4     # GQA 32/4 at 4k
    assert dkdv_split(512, 4, cpu) == 2     # Llama-3-8B's 32/8 at B=1, 8k
    assert dkdv_split(1024, 4, cpu) == 2    # the same at B=2: cut in two though 1024 programs fill the GPU
    assert dkdv_split(4096, 4, cpu) == 1    # at B=8: no gain measured, 1 GB of float32 partials saved
    assert dkdv_split(100, 3, cpu) == 1     # no power of two divides the group
    assert dkdv_split(16, 1, cpu) == 1
    for raw in ("3", "0", "two"):  # the override: a power of two (its divisibility: test_gqa_group_split_over_programs)
        monkeypatch.setenv("LEANATTN_SPARSE_DKDV_SPLIT", raw)
        with pytest.raises(ValueError, match=f"LEANATTN_SPARSE_DKDV_SPLIT: expected a power of two >= 1, got '{raw}'"):
            dkdv_split(64, 4, cpu)


def test_lsh_buckets_of_a_group(device):
    # the queries of a GQA model hashed with group = H // Hkv take their kv head's rotation: from one generator state,
    # a query equal to its kv head's key lands in the key's bucket
    k = torch.randn(2, 30, 2, 64, device=device)
    q = k.repeat_interleave(3, dim=2)
    kb = lsh.lsh_buckets(k, 8, torch.Generator(device=device).manual_seed(4))
    qb = lsh.lsh_buckets(q, 8, torch.Generator(device=device).manual_seed(4), group=3)
    assert torch.equal(qb, kb.repeat_interleave(3, dim=2))
    assert not torch.equal(lsh.lsh_buckets(q, 8, torch.Generator(device=device).manual_seed(4)), qb)
    with pytest.raises(ValueError, match="group: expected a positive int dividing x's 6 heads, got 4"):
        lsh.lsh_buckets(q, 8, group=4)
    from leanattn.sparse.plan import dkdv_split
    assert dkdv_split(0, 0, torch.device(device)) == 1  # (no head, no program: no split)


def test_document_ids_as_buckets_are_varlen_causal_attention(device):
    # packed documents in one row: each token's document id as its bucket is causal attention within each document,
    # as flash-attn's varlen does; here against SDPA's causal attention over each document apart (GQA 4/2)
    lens = [13, 30, 2, 19]
    N, H, HK = sum(lens), 4, 2
    q, k, v = _inputs(1, N, H, HK, torch.float32, device, seed=14)
    doc = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))
    out = leanattn.hash_sparse_attention(q, k, v, doc.view(1, N, 1).expand(1, N, H), doc.view(1, N, 1).expand(1, N, HK))
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        qs, ks, vs = (x[0, sl].transpose(0, 1) for x in (q, k, v))  # (heads, n, D)
        want = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        assert_rel_close(f"document of {n}", out[0, sl], want.transpose(0, 1).double(), TOLERANCE[torch.float32])
        start += n
