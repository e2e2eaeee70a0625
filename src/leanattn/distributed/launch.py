"""Run a function on ``world_size`` local processes with a process group: for tests and the demo.

``spawn(fn, world_size, args)`` starts ``world_size`` fresh interpreters (``spawn`` start method,
so no forked threads), joins them into a process group through a ``file://`` rendezvous in a
temporary folder, calls ``fn(rank, world_size, *args)`` on each, and returns what every rank
returned (or raises with the rank's traceback). A deadline bounds the whole run: ranks still
alive when it passes are killed and ``TimeoutError`` is raised, so a broken collective fails a
test instead of hanging it.
"""
from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["spawn", "RankError"]


class RankError(RuntimeError):
    """A rank raised; ``errors`` maps rank to its formatted traceback."""

    def __init__(self, errors: dict[int, str]):
        self.errors = errors
        body = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
        super().__init__(f"{len(errors)} rank(s) raised:\n{body}")


def _child(rank, world_size, fn, args, init_file, backend, group_timeout_s, result_dir, threads):
    torch.set_num_threads(threads)
    status, payload = "ok", None
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=group_timeout_s))
        # a rank that raised at once and left would close its sockets while a peer still builds its
        # connections, and the peer's init would fail too: no rank runs fn before every rank is joined
        dist.barrier(device_ids=[torch.cuda.current_device()] if backend == "nccl" else None)
        payload = fn(rank, world_size, *args)
    except BaseException:  # noqa: BLE001 - reported to the parent
        status, payload = "error", traceback.format_exc()
    path = os.path.join(result_dir, f"rank{rank}.pt")
    try:
        torch.save((status, payload), path + ".tmp", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an unpicklable result is reported as an error
        torch.save(("error", traceback.format_exc()), path + ".tmp")
    os.replace(path + ".tmp", path)
    # leave at once: tearing a process group down can wait on a peer that is gone (timeout tests)
    os._exit(0)


def spawn(fn, world_size: int, args: tuple = (), *, backend: str = "gloo", deadline: float = 120.0,
          group_timeout: float = 30.0, threads: int = 1) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new processes joined in a process group.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by name into the children).
    world_size : int
        Processes to start.
    args : tuple
        Extra arguments (picklable).
    backend : str
        ``"gloo"`` (CPU) or ``"nccl"`` (rank ``r`` on GPU ``r % device_count``).
    deadline : float
        Seconds the whole run may take; ranks alive after that are killed and ``TimeoutError``
        is raised.
    group_timeout : float
        Seconds, the process group's own collective timeout.
    threads : int
        ``torch.set_num_threads`` in each child (ranks share the machine's cores).

    Returns
    -------
    list
        ``fn``'s return value of every rank, in rank order.

    Raises
    ------
    RankError
        One or more ranks raised (their tracebacks are in the message).
    TimeoutError
        The deadline passed.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="leanattn_spawn_") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_child, args=(r, world_size, fn, args, init_file, backend, group_timeout, tmp,
                                                  threads), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        end = time.monotonic() + deadline
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        alive = [r for r, p in enumerate(procs) if p.is_alive()]
        for r in alive:
            procs[r].kill()
            procs[r].join(5)
        if alive:
            raise TimeoutError(f"spawn: rank(s) {alive} of {world_size} still running after {deadline:g} s (killed)")
        results, errors = [], {}
        for r in range(world_size):
            path = os.path.join(tmp, f"rank{r}.pt")
            if not os.path.exists(path):
                errors[r] = f"exited with code {procs[r].exitcode} without a result"
                results.append(None)
                continue
            status, payload = torch.load(path, weights_only=False)
            if status == "error":
                errors[r] = payload
            results.append(payload)
        if errors:
            raise RankError(errors)
        return results
