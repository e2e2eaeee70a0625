"""Helpers for tests and benchmarks: error metrics against float64 references, paged copies of caches, ALiBi
slopes."""
from __future__ import annotations

import math

import torch

__all__ = ["rel_err", "assert_rel_close", "assert_lse_close", "assert_graph_replays", "paged_kv", "TOLERANCE",
           "alibi_slopes"]

# relative-error bars: the library's promise per dtype
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 over finite entries; NaN anywhere in ``out`` gives inf."""
    out, ref = out.double(), ref.double().to(out.device)
    if torch.isnan(out).any():
        return float("inf")
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


def assert_rel_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float):
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def assert_lse_close(name: str, lse: torch.Tensor, ref: torch.Tensor, atol: float):
    """LSEs agree where finite and are -inf at the same places."""
    lse, ref = lse.double(), ref.double().to(lse.device)
    assert not torch.isnan(lse).any(), f"{name}: NaN in lse"
    inf_ref = torch.isinf(ref)
    assert torch.equal(torch.isinf(lse), inf_ref), f"{name}: -inf pattern differs"
    if (~inf_ref).any():
        err = (lse - ref)[~inf_ref].abs().max().item()
        assert err <= atol, f"{name}: lse max abs error {err:.3e} > {atol:.1e}"


def assert_states_match(name: str, q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor,
                        ref_lse: torch.Tensor):
    """An op's ``(out, lse)`` for the query ``q`` against its float64 reference: ``out`` of ``q``'s shape and dtype,
    ``lse`` float32 of ``q``'s shape without ``D``, both within ``TOLERANCE[q.dtype]``, and the rows that see no key
    exactly zero."""
    assert out.shape == q.shape and out.dtype == q.dtype, f"{name}: out {tuple(out.shape)} {out.dtype}"
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float32, f"{name}: lse {tuple(lse.shape)} {lse.dtype}"
    tol = TOLERANCE[q.dtype]
    assert_rel_close(name, out, ref_out, tol)
    assert_lse_close(name, lse, ref_lse, atol=tol)
    empty = torch.isinf(ref_lse)
    assert torch.equal(out[empty], torch.zeros_like(out[empty])), f"{name}: rows without keys are not zero"


def assert_graph_replays(call, seqlens: torch.Tensor, lengths, reference, tol: float, replays: int = 20):
    """``call()`` (a decode over the lengths ``seqlens``) captured in a CUDA graph after one eager call (which
    compiles and allocates outside the capture), then replayed with each of ``lengths`` copied into ``seqlens``: each
    output within ``tol`` of ``reference()`` (its float64 output then); then ``replays`` more replays bitwise equal.
    Returns the graph's output."""
    call()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = call()
    for lens in lengths:
        seqlens.copy_(torch.tensor(lens, dtype=torch.int32))
        g.replay()
        torch.cuda.synchronize()
        assert_rel_close(f"replay {lens}", out, reference(), tol)
    first = out.clone()
    for _ in range(replays):
        g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, first)
    return out


def paged_kv(k: torch.Tensor, v: torch.Tensor, lens=None, page_size: int = 16, spare_pages: int = 0,
             generator: torch.Generator | None = None):
    """A paged copy of contiguous caches, pages in random order.

    Parameters
    ----------
    k, v : ``(B, N, Hkv, D)`` tensors (any strides)
        Contiguous caches; sequence ``b`` holds its first ``lens[b]`` tokens.
    lens : sequence of int, optional
        Real length of each sequence, in tokens (default ``N`` each).
    page_size : int
        Tokens per page.
    spare_pages : int
        Pages in the pool that no sequence uses.
    generator : torch.Generator, optional
        Draws the page order (on the generator's device); the default generator of ``k``'s device
        otherwise.

    Returns
    -------
    k_pages, v_pages : ``(P, page_size, Hkv, D)``, ``P = sum(ceil(lens / page_size)) + spare_pages``
        (at least 1), in the dtype and on the device of ``k`` and ``v`` respectively. Slots past a
        sequence's length and spare pages hold random values, so a kernel that reads past a length
        is caught.
    block_table : ``(B, max(max_pages, 1))`` int32
        Sequence ``b``'s pages in order; entries past them are 0.
    """
    B, N, H, D = k.shape
    lens = [N] * B if lens is None else [int(n) for n in lens]
    if len(lens) != B or any(not 0 <= n <= N for n in lens):
        raise ValueError(f"lens: expected {B} lengths in [0, {N}], got {lens}")
    npages = [-(-n // page_size) for n in lens]
    P = max(sum(npages) + spare_pages, 1)
    dev = generator.device if generator is not None else k.device
    perm = torch.randperm(P, generator=generator, device=dev).to(device=k.device, dtype=torch.int32)
    block_table = torch.zeros(B, max(max(npages, default=0), 1), dtype=torch.int32, device=k.device)
    off = 0
    for b, m in enumerate(npages):
        block_table[b, :m] = perm[off:off + m]
        off += m
    pages = []
    for x in (k, v):
        xp = torch.randn(P, page_size, H, D, dtype=x.dtype, device=x.device)
        for b, n in enumerate(lens):
            ids = block_table[b].long()
            full = n // page_size
            xp[ids[:full]] = x[b, :full * page_size].reshape(full, page_size, H, D)
            if n > full * page_size:
                xp[ids[full], : n - full * page_size] = x[b, full * page_size:n]
        pages.append(xp)
    return pages[0], pages[1], block_table


def alibi_slopes(heads: int) -> torch.Tensor:
    """The ALiBi paper's (and BLOOM's) slopes for ``heads`` heads, ``(heads,)`` float32: ``2**(-8 i / n)`` for
    ``i = 1..n`` with ``n`` the largest power of two up to ``heads``, then the odd ones of ``2n``'s sequence."""
    n = 2 ** math.floor(math.log2(heads))
    base = [2 ** (-8 * (i + 1) / n) for i in range(n)]
    extra = [2 ** (-4 * (2 * i + 1) / n) for i in range(heads - n)]
    return torch.tensor(base + extra, dtype=torch.float32)
