"""Test set-up: without CUDA, kernels run on CPU tensors under the Triton interpreter.

TRITON_INTERPRET must be set before any kernel module is imported, hence here.
"""
import atexit
import os
import shutil
import tempfile

# torch.compile's on-disk caches outlive a run and do not key on a custom op's schema: a graph compiled against an
# older signature of leanattn::bifurcated_decode was replayed in CI and called it with one argument too many. Each
# test session compiles into its own directory (xdist workers share it; the variable is inherited).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="leanattn-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import interpreter_patch_once  # noqa: E402

interpreter_patch_once.install()

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def decode_load(monkeypatch):
    """``decode_load(load)``: decode plans made from then on take the K/V load path ``load`` (``"0"`` tensors of
    pointers, ``"1"`` block pointers, ``"2"`` TMA; ``LEANATTN_DECODE_LOAD``, read when a plan is made). The plan
    cache is emptied then and after the test, so no plan of the test's path outlives it."""
    from leanattn.ops import decode as dec

    def use(load: str):
        monkeypatch.setenv("LEANATTN_DECODE_LOAD", load)
        dec._PLANS.clear()
    yield use
    dec._PLANS.clear()


def _test_seed():
    """``LEANATTN_TEST_SEED`` as an int (``LEANATTN_TEST_SEED=seed pytest FILE::TEST`` runs a test again on a seed
    its report recorded), or None where unset."""
    raw = os.environ.get("LEANATTN_TEST_SEED")
    if not raw:
        return None
    if not raw.isdigit():
        raise pytest.UsageError(f"LEANATTN_TEST_SEED: expected a non-negative integer, got {raw!r}")
    return int(raw)


def pytest_configure(config):
    _test_seed()  # a bad value stops the run before any test, naming the variable


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # fresh random inputs each run, but reproducible from the recorded seed on failure (``_test_seed``)
    seed = _test_seed()
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


def pytest_collection_modifyitems(config, items):
    # LEANATTN_TEST_SHARD=i/n keeps the i-th of n interleaved slices of the collected tests (0-based), so that one GPU
    # file longer than a device call's limit runs over several calls (benchmarks/gpu_check.sh tests-bif-0/1)
    raw = os.environ.get("LEANATTN_TEST_SHARD")
    if not raw:
        return
    try:
        index, count = (int(x) for x in raw.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise pytest.UsageError(f"LEANATTN_TEST_SHARD: expected 'i/n' with 0 <= i < n, got {raw!r}")
    config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i % count != index])
    items[:] = items[index::count]
