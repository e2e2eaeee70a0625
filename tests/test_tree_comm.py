"""Where a process group's collectives take their tensors (``distributed._comm.comm_device``), from its backend
configuration: groups made without a backend (``"cpu:gloo,cuda:nccl"``, whose ``get_backend`` is ``"undefined"``)
keep CUDA states on the GPU."""
from __future__ import annotations

import torch
import torch.distributed as dist

from leanattn.distributed import _comm


def test_comm_device_from_backend_config(monkeypatch):
    cuda, cpu = torch.device("cuda", 1), torch.device("cpu")
    for config, backend, expect in (("cpu:gloo,cuda:nccl", "undefined", cuda), ("cuda:nccl", "nccl", cuda),
                                    ("cpu:gloo,cuda:gloo", "gloo", cpu), ("cpu:gloo", "undefined", cpu)):
        monkeypatch.setattr(dist, "get_backend_config", lambda group=None, c=config: c)
        monkeypatch.setattr(dist, "get_backend", lambda group=None, b=backend: b)
        assert _comm.comm_device(None, cuda) == expect, config
        assert _comm.comm_device(None, cpu) == cpu
    # no configuration to read (an older torch): the backend's name decides

    def no_config(group=None):
        raise AttributeError("get_backend_config")
    monkeypatch.setattr(dist, "get_backend_config", no_config)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert _comm.comm_device(None, cuda) == cuda


def test_tree_ops_pin_the_query_device():
    from leanattn.distributed import ring_decode, tree_decode
    # launches follow q's device whatever device is current (runtime.device_guard); the signatures stay the ops'
    import inspect
    for fn in (tree_decode, ring_decode):
        assert fn.__wrapped__ is not None and "k_shard" in inspect.signature(fn).parameters
