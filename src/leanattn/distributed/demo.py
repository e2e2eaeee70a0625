"""Decode steps of long sequences whose KV cache is spread over ranks, with tree attention.

Launch one process per GPU with torchrun (NCCL), or on a CPU let the demo start its own gloo
ranks (tiny sizes; kernels run under the Triton interpreter)::

    torchrun --nproc-per-node 2 -m leanattn.distributed.demo --prompt 65536 --steps 16
    python -m leanattn.distributed.demo --nproc 2 --check          # CPU, gloo

Every rank draws the same random prompt and new tokens (one seed), keeps its own share in a
:class:`ShardedKVCache` (round-robin pages by default: every rank appends its share of new
tokens) and calls :func:`tree_decode` each step. ``--check`` also keeps the whole cache on every
rank and compares each step with a one-process decode of it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _ensure_interpreter() -> None:
    # Triton decides compiled vs interpreted when the kernels are decorated (at package import,
    # already done by `python -m leanattn.distributed.demo`): re-run once with the variable set
    import torch
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "leanattn.distributed.demo", *sys.argv[1:]])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m leanattn.distributed.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2, help="ranks to start when not under torchrun (gloo, CPU)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--q-heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=100, help="prompt tokens of the longest sequence")
    ap.add_argument("--steps", type=int, default=4, help="decode steps")
    ap.add_argument("--placement", choices=["round_robin", "contiguous"], default="round_robin")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--paged", action="store_true", help="store shards as page pools with block tables")
    ap.add_argument("--method", choices=["allgather", "allreduce3", "ring"], default="allgather")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    ap.add_argument("--check", action="store_true", help="compare every step with a one-process decode")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def run(rank: int, world_size: int, args) -> list[dict]:
    """The decode loop on one rank; returns one record per step (rank 0 prints them)."""
    import torch
    import torch.distributed as dist

    import leanattn
    from leanattn.distributed import ShardedKVCache

    dtype = getattr(torch, args.dtype)
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    B, Hq, Hkv, D = args.batch, args.q_heads, args.kv_heads, args.head_dim
    g = torch.Generator().manual_seed(args.seed)          # same stream on every rank

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dev, dtype)

    # ragged prompts: the longest has --prompt tokens, the others fewer
    prompt = torch.tensor([max(1, args.prompt - 37 * b) for b in range(B)])
    cache = ShardedKVCache(B, Hkv, D, args.prompt + args.steps, placement=args.placement, page_size=args.page_size,
                           paged=args.paged, dtype=dtype, device=dev)
    k0, v0 = rand(B, args.prompt, Hkv, D), rand(B, args.prompt, Hkv, D)
    cache.append(k0, v0, counts=prompt)
    if args.check:
        full_k = torch.zeros(B, args.prompt + args.steps, Hkv, D, dtype=dtype, device=dev)
        full_v = torch.zeros_like(full_k)
        full_k[:, :args.prompt], full_v[:, :args.prompt] = k0, v0
    records = []
    for step in range(args.steps):
        q, k1, v1 = rand(B, Hq, D), rand(B, 1, Hkv, D), rand(B, 1, Hkv, D)
        if args.check:
            idx = cache.lengths.to(dev)
            full_k[torch.arange(B, device=dev), idx] = k1[:, 0]
            full_v[torch.arange(B, device=dev), idx] = v1[:, 0]
        cache.append(k1, v1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        out = cache.decode(q, method=args.method)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        local = torch.tensor([int(cache.shard_seqlens.sum())], device=dev if dist.get_backend() == "nccl" else "cpu")
        per_rank = [torch.zeros_like(local) for _ in range(world_size)]
        dist.all_gather(per_rank, local)
        rec = dict(step=step, tokens=cache.lengths.tolist(), per_rank=[int(x) for x in per_rank], ms=ms)
        if args.check:
            ref = leanattn.decode(q, full_k, full_v, cache.lengths.to(torch.int32).to(dev))
            rec["max_abs_err"] = float((out.float() - ref.float()).abs().max())
        records.append(rec)
    return records


def _print(records, args, world_size):
    print(f"tree decode demo: {world_size} ranks, B={args.batch}, heads {args.q_heads}/{args.kv_heads}, "
          f"D={args.head_dim}, {args.dtype}, placement={args.placement}{' paged' if args.paged else ''}, "
          f"method={args.method}")
    for r in records:
        err = f"  max|out - one-process decode| = {r['max_abs_err']:.2e}" if "max_abs_err" in r else ""
        print(f"step {r['step']}: tokens per sequence {r['tokens']}, tokens per rank {r['per_rank']}, "
              f"{r['ms']:.2f} ms{err}")


def _torchrun_main(args) -> int:
    import datetime

    import torch
    import torch.distributed as dist
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    try:
        records = run(dist.get_rank(), dist.get_world_size(), args)
        if dist.get_rank() == 0:
            _print(records, args, dist.get_world_size())
    finally:
        dist.destroy_process_group()
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _torchrun_main(args)
    from leanattn.distributed import spawn
    from leanattn.distributed.demo import run as run_by_name  # picklable by module name, even from __main__
    records = spawn(run_by_name, args.nproc, (args,), deadline=600.0, group_timeout=120.0)
    _print(records[0], args, args.nproc)
    return 0


if __name__ == "__main__":
    _ensure_interpreter()
    sys.exit(main())
