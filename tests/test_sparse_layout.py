"""The layout of sparse attention (token order, group ids, block ranges): the Triton kernels of
``kernels/sparse_ranges.py`` against the torch reference in ``sparse/layout.py``, and both against
brute force. Runs on the CPU under the Triton interpreter or on a GPU."""
import pytest
import torch

from leanattn.sparse import layout, plan

# (block_m, block_n, block_m_bwd, block_n_bwd)
TILES = [(16, 16, 16, 16), (32, 16, 16, 32), (16, 64, 64, 16)]


def kernel_layout(q_ids, k_ids, tiles):
    """The kernels' layout of ``(B, N, H)`` query and ``(B, N, Hkv)`` key keep masks (bool) or bucket ids, as
    ``(B*H, ...)`` views (``(B*Hkv, N)`` for the keys' order; ``live``: ``B*H`` query counts, then ``B*Hkv`` key
    counts)."""
    B, N, H = q_ids.shape
    HK = k_ids.shape[2]
    q = torch.empty(B, N, H, 64, device=q_ids.device)
    k = torch.empty(B, N, HK, 64, device=q_ids.device)
    p = plan.get_plan(q, k, k, tiles)
    meta = torch.full((p.meta_numel,), -7, dtype=torch.int32, device=q_ids.device)  # poison
    p.layout(q_ids, k_ids, plan.Meta(*meta.split(p.sizes)))
    assert not (meta == -7).any(), "an element of the layout buffer was not written"
    m = plan.Meta(*meta.split(p.sizes))
    BH, BHK = B * H, B * HK
    return m._replace(q_perm=m.q_perm.view(BH, N), k_perm=m.k_perm.view(BHK, N), q_group=m.q_group.view(BH, N),
                      k_group=m.k_group.view(BHK, N), q_ranges=m.q_ranges.view(BH, -1, 4),
                      kv_ranges=m.kv_ranges.view(BH, -1, 4))


def torch_layout(mode, q_ids, k_ids):
    if mode == "qk":
        return layout.build_layout(*layout.qk_groups(q_ids, k_ids), *layout.QK_DEAD)
    return layout.build_layout(q_ids, k_ids)


def _pattern(mode, B, N, H, device):
    if mode == "qk":
        a, b = torch.rand(B, N, H, device=device) > 0.5, torch.rand(B, N, H, device=device) > 0.4
        a[0, :, 0] = False  # a row with every query dropped
        b[-1, :, -1] = False  # a row with every key dropped
        a[-1, :, 0] = True  # a row with every query kept
        return a, b
    if mode == "big":  # ids need not be contiguous: any int32 >= 0
        ids = torch.tensor([0, 7, 2**31 - 1, 123456789], dtype=torch.int32, device=device)
        return tuple(ids[torch.randint(0, 4, (B, N, H), device=device)] for _ in range(2))
    nb = int(mode[4:])
    return (torch.randint(0, nb, (B, N, H), dtype=torch.int32, device=device),
            torch.randint(0, nb, (B, N, H), dtype=torch.int32, device=device))


# every mode at every length, the tile sets turning over them (every tile set on every pair cost CI 25 s more)
@pytest.mark.parametrize("mode,N,tiles", [(m, n, TILES[(i + j) % 3]) for i, m in enumerate(
    ["qk", "hash1", "hash3", "hash40", "big"]) for j, n in enumerate([1, 45, 300])], ids=str)
def test_kernels_equal_torch_layout(device, mode, N, tiles):
    B, H = 2, 3
    a, b = _pattern(mode, B, N, H, device)
    if N == 45:  # strided masks / ids, as slices of a larger tensor
        a = torch.stack((a, a), dim=-1)[..., 0]
        assert not a.is_contiguous()
    got = kernel_layout(a, b, tiles)
    ref = torch_layout("qk" if mode == "qk" else "hash", a, b)
    bm, bn, bm_bwd, bn_bwd = tiles
    for name in ("q_perm", "k_perm", "q_group", "k_group"):
        assert torch.equal(getattr(got, name), getattr(ref, name).to(torch.int32)), name
    assert torch.equal(got.live.long(), torch.cat((ref.q_live, ref.k_live))[..., 0])
    assert torch.equal(got.q_ranges, layout.block_ranges_q(ref, bm, bn))
    assert torch.equal(got.kv_ranges, layout.block_ranges_kv(ref, bm_bwd, bn_bwd))


def _brute_force_check(lay, q_ranges, kv_ranges, bm, bn, tight):
    """``q_ranges`` (query blocks of bm in key blocks of bn) and ``kv_ranges`` (key blocks of bn in
    query blocks of bm) hold every tile with a visible pair, and their full parts only full tiles."""
    BH, N = lay.q_perm.shape
    vis = (lay.q_group[:, :, None] == lay.k_group[:, None, :]) & (lay.q_perm[:, :, None] >= lay.k_perm[:, None, :])
    nq, nk = -(-N // bm), -(-N // bn)
    pad = torch.zeros(BH, nq * bm, nk * bn, dtype=torch.bool, device=vis.device)
    pad[:, :N, :N] = vis
    tiles = pad.view(BH, nq, bm, nk, bn)
    any_vis = tiles.any(4).any(2)  # (BH, nq, nk)
    valid = torch.zeros(nq * bm, nk * bn, dtype=torch.bool, device=vis.device)
    valid[:N, :N] = True
    valid = valid.view(nq, bm, nk, bn)
    all_vis = (tiles | ~valid).all(4).all(2) & valid.any(3).any(1)
    for ranges, needed, full in ((q_ranges, any_vis, all_vis),
                                 (kv_ranges, any_vis.transpose(1, 2), all_vis.transpose(1, 2))):
        lo, flo, fhi, hi = ranges.long().unbind(-1)
        assert (lo <= flo).all() and (flo <= fhi).all() and (fhi <= hi).all()
        idx = torch.arange(needed.shape[-1], device=vis.device)
        in_range = (idx >= lo[..., None]) & (idx < hi[..., None])
        in_full = (idx >= flo[..., None]) & (idx < fhi[..., None])
        assert not (needed & ~in_range).any(), "a tile with visible pairs is outside the range"
        # tiles marked full really are full: only real tokens, all visible
        assert not (in_full & ~full).any(), "an unmasked tile holds an invisible pair"
        if tight:  # groups in time order: ranges are tight, nothing to do = empty
            assert ((hi > lo) == needed.any(-1)).all()


@pytest.mark.parametrize("source", ["torch", "kernels"])
@pytest.mark.parametrize("mode", ["qk", "hash1", "hash4", "hash40"])
@pytest.mark.parametrize("blocks", [(16, 16), (32, 16), (16, 64)])
def test_block_ranges_cover_exactly(device, source, mode, blocks):
    B, N, H = 2, 150, 3
    a, b = _pattern(mode, B, N, H, device)
    lay = torch_layout("qk" if mode == "qk" else "hash", a, b)
    # positions are increasing inside each group (stable order)
    assert (torch.diff(lay.q_key, dim=-1) > 0).all() and (torch.diff(lay.k_key, dim=-1) > 0).all()
    bm, bn = blocks
    if source == "torch":
        q_ranges, kv_ranges = layout.block_ranges_q(lay, bm, bn), layout.block_ranges_kv(lay, bm, bn)
    else:
        got = kernel_layout(a, b, (bm, bn, bm, bn))
        q_ranges, kv_ranges = got.q_ranges, got.kv_ranges
    _brute_force_check(lay, q_ranges, kv_ranges, bm, bn, tight=mode in ("qk", "hash1"))
    if mode == "hash1":  # one bucket: the full tiles are the causal off-diagonal tiles
        lo, flo, fhi, hi = q_ranges.long().unbind(-1)
        assert (fhi - flo).sum() > 0
