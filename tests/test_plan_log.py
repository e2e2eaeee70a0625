"""The ``leanattn`` logger: each new launch plan of a public op logged once at DEBUG with the path, grid and tiles it
chose (vLLM's users asked which cascade path a call took), nothing above it.

Under the Triton interpreter on the CPU, or on a GPU when there is one.
"""
from __future__ import annotations

import logging

import torch

import leanattn
from leanattn.ops import bifurcated, decode
from leanattn.sparse import plan as sparse_plan

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _plans(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "leanattn"]


def _forget_plans():
    """Every cached plan dropped, so that the calls below make theirs whatever ran before in this process."""
    for cache in (decode._PLANS, bifurcated._PLANS, sparse_plan._PLANS):
        cache.clear()


def test_each_new_plan_logged_once(caplog):
    _forget_plans()
    q = torch.randn(3, 4, 64, dtype=torch.float16, device=DEV)
    k = torch.randn(3, 37, 2, 64, dtype=torch.float16, device=DEV)
    lens = torch.tensor([5, 37, 0], dtype=torch.int32, device=DEV)
    pk = torch.randn(23, 2, 64, dtype=torch.float16, device=DEV)
    with caplog.at_level(logging.DEBUG, logger="leanattn"):
        for _ in range(2):
            leanattn.decode(q, k, k, lens)
            leanattn.decode(q, k, k, lens, schedule="split", num_splits=2)
            leanattn.bifurcated_decode(q, pk, pk, k, k, lens)
    logged = _plans(caplog)
    assert len(logged) == 3, logged
    assert logged[0].startswith("decode: new plan: {'schedule': 'lean'") and "'merge': " in logged[0]
    assert logged[1].startswith("decode: new plan: {'schedule': 'split'") and "'splits': " in logged[1]
    assert logged[2].startswith("bifurcated_decode: new plan: {") and "'path': " in logged[2]


def test_sparse_plan_logged(caplog):
    q, k, v = (torch.randn(1, 41, 2, 64, dtype=torch.float16, device=DEV) for _ in range(3))
    keep = torch.rand(1, 41, 2, device=DEV) > 0.3
    _forget_plans()
    with caplog.at_level(logging.DEBUG, logger="leanattn"):
        leanattn.qk_sparse_attention(q, k, v, keep, keep)
    logged = _plans(caplog)
    assert len(logged) == 1 and logged[0].startswith("sparse attention: new plan: {'block_m': "), logged


def test_silent_by_default(caplog):
    q = torch.randn(2, 4, 64, dtype=torch.float16, device=DEV)
    k = torch.randn(2, 43, 2, 64, dtype=torch.float16, device=DEV)
    _forget_plans()
    with caplog.at_level(logging.INFO, logger="leanattn"):
        leanattn.decode(q, k, k)
    assert not _plans(caplog)
