"""Command line: ``leanattn demo``, ``leanattn generate MODEL`` and ``leanattn bench NAME [ARGS...]``
(also ``python -m leanattn``).

Triton decides at decoration time whether a kernel is compiled or interpreted, and importing the
``leanattn`` package (which happens before this module runs) already decorates the kernels. So
on a machine without CUDA, ``main`` sets ``TRITON_INTERPRET=1`` and restarts the process once.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import torch

__all__ = ["main", "find_benchmark"]


def _ensure_interpreter(argv: list[str]) -> None:
    """Without CUDA, re-run this command with ``TRITON_INTERPRET=1`` set from the start."""
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "leanattn", *argv])


def find_benchmark(name: str) -> Path | None:
    """``benchmarks/bench_NAME.py`` of the source checkout (or of the working directory), if any."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "benchmarks" / f"bench_{name}.py"
        if path.is_file():
            return path
    return None


def _load_benchmark(name: str):
    """The ``main(argv)`` of ``benchmarks/bench_NAME.py``, or None when the file is not there."""
    path = find_benchmark(name)
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="leanattn", description="leanattn: exact attention kernels in Triton.")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="check the decode kernels and picture the stream-K vs split schedules")
    demo.add_argument("--out", default="demo_out", help="folder for schedule.png (default: demo_out)")
    demo.add_argument("--sms", type=int, default=132, help="SMs of the modelled GPU (default: 132, H100/H200)")
    gen = sub.add_parser("generate", help="generate from a checkpoint directory or a named shape (random weights) "
                                          "with leanattn decode; prints tokens and a per-step timing summary")
    gen.add_argument("model", help="checkpoint directory (config.json + safetensors) or shape name, e.g. llama-3-8b")
    gen.add_argument("--prompt", default="", help="comma-separated prompt token ids (default: a random prompt)")
    gen.add_argument("--prompt-len", type=int, default=128, help="tokens of the random prompt (default: 128)")
    gen.add_argument("--batch", type=int, default=1, help="random prompts in the batch (default: 1)")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--samples", type=int, default=1, help="continuations per prompt, prompt KV shared (default: 1)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                     help="weights and cache dtype for shapes (default: bfloat16; checkpoints keep theirs unless given)")
    gen.add_argument("--page-size", type=int, default=64)
    gen.add_argument("--speculate", type=int, default=0,
                     help="greedy prompt-lookup speculative decoding with this many drafts a step (default: 0)")
    gen.add_argument("--no-cuda-graph", action="store_true", help="run decode steps eagerly on a GPU")
    gen.add_argument("--fused-ops", action="store_true",
                     help="the model's norms, rotary embedding and SwiGLU as one Triton kernel each")
    gen.add_argument("--no-progress", action="store_true")
    bench = sub.add_parser("bench", help="run benchmarks/bench_NAME.py (e.g. `leanattn bench decode --quick`)")
    bench.add_argument("name", help="benchmark name: decode runs benchmarks/bench_decode.py")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return ap


def _generate(args) -> int:
    from .generate import generate
    from .models import get_model
    from .models.loader import SHAPES
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if (args.model in SHAPES or args.dtype != "bfloat16") else None
    model = get_model(args.model, device, dtype, seed=args.seed)
    model.fused_ops = args.fused_ops
    gen = torch.Generator(device=device).manual_seed(args.seed)
    if args.prompt:
        prompts = [[int(t) for t in args.prompt.split(",")]] * args.batch
    else:
        prompts = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_len), generator=gen,
                                device=device)
    out = generate(model, prompts, args.max_new_tokens, samples=args.samples, temperature=args.temperature,
                   speculate=args.speculate,
                   top_k=args.top_k, page_size=args.page_size, use_cuda_graph=False if args.no_cuda_graph else None,
                   generator=gen, progress=not args.no_progress)
    for row in out.tokens[:8].tolist():
        print(",".join(map(str, row)))
    if out.tokens.shape[0] > 8:
        print(f"... {out.tokens.shape[0] - 8} more rows")
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _ensure_interpreter(argv)
    if args.command == "demo":
        from . import demo
        return demo.run(out_dir=args.out, num_sms=args.sms, bench=_load_benchmark("decode"))
    if args.command == "generate":
        return _generate(args)
    bench_main = _load_benchmark(args.name)
    if bench_main is None:
        print(f"leanattn bench: no benchmarks/bench_{args.name}.py here (it ships with the source checkout, "
              f"not the wheel); run from the repository root", file=sys.stderr)
        return 2
    return bench_main(args.args) or 0


if __name__ == "__main__":
    sys.exit(main())
