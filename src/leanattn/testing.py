"""Helpers for tests and benchmarks: error metrics against float64 references."""
from __future__ import annotations

import torch

__all__ = ["rel_err", "assert_rel_close", "TOLERANCE"]

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
