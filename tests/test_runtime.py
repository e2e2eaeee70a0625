"""The launch-plan cache and the workspace cache that every op shares (leanattn.runtime)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import leanattn
from leanattn import reference, runtime
from leanattn.ops import bifurcated as bif
from leanattn.ops import decode as dec
from leanattn.testing import TOLERANCE, assert_rel_close


def test_plan_cache_keeps_the_plans_in_use():
    cache = runtime.PlanCache(limit=3)
    made = []
    for key in range(5):
        cache.get_or_make(key, lambda key=key: made.append(key) or f"plan {key}")
    assert list(cache) == [2, 3, 4]
    assert cache.get_or_make(2, lambda: "new") == "plan 2"  # a hit makes nothing, and is the newest now
    cache.get_or_make(5, lambda: "plan 5")
    assert list(cache) == [4, 2, 5]
    assert made == [0, 1, 2, 3, 4]


@pytest.fixture
def fresh_workspaces(monkeypatch):
    monkeypatch.setattr(runtime, "_WORKSPACES", {})
    monkeypatch.setattr(runtime, "_RETIRED", [])


def test_workspace_shapes_share_one_buffer(fresh_workspaces):
    dev = torch.device("cpu")
    big = runtime.workspace("t", dev, (4, 8), torch.float32)
    small = runtime.workspace("t", dev, (3, 5), torch.float32)
    assert small.shape == (3, 5) and small.is_contiguous()
    assert small.data_ptr() == big.data_ptr()
    other = runtime.workspace("t", dev, (3, 5), torch.int32)  # another dtype: another buffer
    assert other.data_ptr() != big.data_ptr()


def test_workspace_grows_geometrically_and_keeps_what_it_replaced(fresh_workspaces):
    dev = torch.device("cpu")
    first = runtime.workspace("z", dev, (10,), torch.int32, zero=True)
    first[:] = 0  # kernels leave zero buffers zeroed
    grown = runtime.workspace("z", dev, (11,), torch.int32, zero=True)
    assert grown.data_ptr() != first.data_ptr()
    assert torch.count_nonzero(grown) == 0
    assert runtime._WORKSPACES[("z", "cpu", torch.int32, True)].numel() == 20  # doubled, not 11
    assert runtime._RETIRED[0].data_ptr() == first.data_ptr()  # a captured graph may still read it
    for n in range(12, 21):  # sizes up to the doubled capacity take no new buffer
        assert runtime.workspace("z", dev, (n,), torch.int32, zero=True).data_ptr() == grown.data_ptr()


def test_bifurcated_memory_is_bounded_over_batch_sizes(fresh_workspaces, monkeypatch):
    """A server whose batch size changes every step: plans stay within the cache's limit and the
    states buffer within twice the largest request."""
    monkeypatch.setattr(bif, "_PLANS", runtime.PlanCache(limit=4))
    torch.manual_seed(0)
    hq, hkv, d, p, n = 4, 2, 64, 32, 16
    pk, pv = (torch.randn(p, hkv, d, dtype=torch.float16) for _ in range(2))
    for b in (2, 3, 4, 5, 6, 7):
        q = torch.randn(b, hq, d, dtype=torch.float16)
        k, v = (torch.randn(b, n, hkv, d, dtype=torch.float16) for _ in range(2))
        lens = torch.randint(0, n + 1, (b,), dtype=torch.int32)
        out = leanattn.bifurcated_decode(q, pk, pv, k, v, lens)
        ref, _ = reference.bifurcated_decode(q, pk, pv, k, v, lens)
        assert_rel_close(f"B={b}", out, ref, TOLERANCE[torch.float16])
    assert len(bif._PLANS) == 4
    states = [buf for (name, *_), buf in runtime._WORKSPACES.items() if name == "bif_states_o"]
    assert len(states) == 1
    largest = max(p.states[0].numel() for p in bif._PLANS.values())
    assert states[0].numel() <= 2 * largest


def test_decode_plans_bounded(monkeypatch):
    monkeypatch.setattr(dec, "_PLANS", runtime.PlanCache(limit=2))
    for n in (8, 9, 10):  # a cache growing by one token a step
        q = torch.randn(1, 2, 64, dtype=torch.float16)
        k = torch.randn(1, n, 2, 64, dtype=torch.float16)
        leanattn.decode(q, k, k)
    assert len(dec._PLANS) == 2


@pytest.mark.parametrize("scale", [np.float32(0.2), np.float64(0.2), 1])
def test_softmax_scale_real_scalars(scale):
    q = torch.randn(2, 2, 64, dtype=torch.float16)
    k, v = (torch.randn(2, 16, 2, 64, dtype=torch.float16) for _ in range(2))
    out = leanattn.decode(q, k, v, softmax_scale=scale)
    ref, _ = reference.decode(q, k, v, softmax_scale=float(scale))
    assert_rel_close(f"scale {scale!r}", out, ref, TOLERANCE[torch.float16])


def _too_long():
    q = torch.randn(2, 2, 64, dtype=torch.float16)
    k = torch.randn(2, 16, 2, 64, dtype=torch.float16)
    return q, k, torch.tensor([40, 5], dtype=torch.int32)


def test_validate_true_and_false_on_cpu():
    """CPU inputs are checked by default and with ``validate=True``; ``validate=False`` skips the value
    checks, as on CUDA by default (no device sync), and the kernels then read at most the capacity."""
    q, k, lens = _too_long()
    for validate in (None, True):
        with pytest.raises(ValueError, match="cache_seqlens: expected lengths <= 16"):
            leanattn.decode(q, k, k, lens, validate=validate)
    out = leanattn.decode(q, k, k, lens, validate=False)
    ref, _ = reference.decode(q, k, k, lens.clamp(max=16))
    assert_rel_close("validate=False", out, ref, TOLERANCE[torch.float16])
    pk = torch.randn(8, 2, 64, dtype=torch.float16)
    ids = torch.tensor([0, 3], dtype=torch.int32)
    plens = torch.tensor([8], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"prefix_ids: expected prefix indices in \[0, 1\)"):
        leanattn.bifurcated_decode(q, pk[None], pk[None], k, k, lens.clamp(max=16), prefix_lens=plens,
                                   prefix_ids=ids, validate=True)


@pytest.mark.parametrize("fast", [True, False], ids=["environ-mapping", "os.environ.get"])
def test_env_reader_sees_every_change(monkeypatch, fast):
    # plan keys read environment variables on every call: a change made through os.environ (monkeypatch
    # included) is seen at the next read, set, changed or removed, by both read paths
    from leanattn.runtime import EnvReader
    monkeypatch.delenv("LEANATTN_TEST_A", raising=False)
    monkeypatch.delenv("LEANATTN_TEST_B", raising=False)
    read = EnvReader("LEANATTN_TEST_A", "LEANATTN_TEST_B")
    if not fast:
        read.fast, read.keys = False, read.names
    assert read() == (None, None)
    monkeypatch.setenv("LEANATTN_TEST_B", "1")
    assert read() == (None, EnvReader.value("1") if fast else "1")
    monkeypatch.setenv("LEANATTN_TEST_B", "2")
    assert read()[1] == (EnvReader.value("2") if fast else "2") and read()[1] != EnvReader.value("1")
    monkeypatch.delenv("LEANATTN_TEST_B")
    assert read() == (None, None)


def test_interpreting_follows_the_environment(monkeypatch):
    from leanattn import runtime
    for raw, expected in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("TRITON_INTERPRET", raw)
        assert runtime.interpreting() is expected
    monkeypatch.delenv("TRITON_INTERPRET")
    assert runtime.interpreting() is False
