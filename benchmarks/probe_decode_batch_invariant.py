"""What ``schedule="batch_invariant"`` costs decode: its fixed 2048-key splits, batch-blind launch configuration and
one-state-a-step merge against the stream-K schedule (``"lean"``) and the split schedule's heuristic, same process;
also the invariant schedule at other split sizes (``SPLIT_TOKENS``), to choose the library's.

On contiguous suite cases (``bench_decode.suite``, bf16), each call is checked against the float64 reference, then
CUDA-graph replays are timed in interleaved rounds (do_bench, L2 flushed). Each case also checks the property: the
first sequence's output and LSE alone (a batch of one, its own length as the capacity) bitwise equal to its rows in
the case's batch.

    PYTHONPATH=src python benchmarks/probe_decode_batch_invariant.py [--out DIR] [--cases A,B]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode as bd  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.ops import decode as dec_ops  # noqa: E402

# (gqa B=1 32k and ragged-uniform since 2026-12-07 21:1x, when 4096-key splits won the other five on an H100: one
# sequence of 8 kv heads makes 64 programs of 4096 keys for 132 SMs, 128 of 2048)
CASES = ("mha B=1 64k", "gqa B=1 32k", "gqa B=4 32k", "gqa B=64 4k", "ragged-tail B=16", "ragged-uniform B=32",
         "d64 mha B=1 64k")
# keys a split besides the library's (ops/decode.INVARIANT_SPLIT_TOKENS), timed beside it: on an H100 (2026-12-07
# 02:1x) the 2048-key splits cost 1.17x lean's time on the ragged tail, whose 84 splits x 8 kv heads fill 2.5 waves
# of programs; finer splits fill the last wave better and make more states to merge
SPLIT_TOKENS = (1024, 4096)


def invariant_alone(q, k, v, sl) -> bool:
    """Sequence 0's rows of the batch call equal, bit for bit, to its call alone in a cache of its own length."""
    n = int(sl[0]) if sl is not None else k.shape[1]
    out, lse = leanattn.decode(q, k, v, sl, return_lse=True, schedule="batch_invariant")
    one = (torch.tensor([n], dtype=torch.int32, device=q.device),) if sl is not None else (None,)
    out1, lse1 = leanattn.decode(q[:1], k[:1, :n].contiguous(), v[:1, :n].contiguous(), *one, return_lse=True,
                                 schedule="batch_invariant")
    return bool(torch.equal(out[:1], out1) and torch.equal(lse[:1], lse1))


def measure(case, inp, ref) -> dict:
    q, k, v, sl = inp["q"], inp["k"], inp["v"], inp["seqlens"]
    fns = {name: bd.with_plans(lambda s=name: leanattn.decode(q, k, v, sl, schedule=s))
           for name in ("lean", "split", "batch_invariant")}
    for tokens in SPLIT_TOKENS:
        fns[f"batch_invariant {tokens}"] = bd.with_plans(
            lambda: leanattn.decode(q, k, v, sl, schedule="batch_invariant"),
            patches=((dec_ops, "INVARIANT_SPLIT_TOKENS", tokens),))
    us, med = bd.interleaved_graph_times(case["name"], fns, ref, rounds=3)
    same = invariant_alone(q, k, v, sl)
    print(f"{case['name']:22s} " + "  ".join(f"{n} {t:.1f}" for n, t in med.items())
          + f" | invariant / lean {med['batch_invariant'] / med['lean']:.3f} | alone == in batch: {same}",
          flush=True)
    return dict(case=case["name"], us=us, median=med, ratio=med["batch_invariant"] / med["lean"],
                bitwise_alone=same, split_tokens={"batch_invariant": dec_ops.INVARIANT_SPLIT_TOKENS})


def main(argv=None):
    args, want = common.probe_args(__doc__, argv)
    torch.manual_seed(0)
    out = [measure(case, inp, ref) for case, inp, ref, _ in bd.probe_cases(CASES, want)]
    common.write_probe(args.out, "decode_probe_batch_invariant.json", cases=out, timing=bd.GRAPH_TIMING,
                       probe="decode with schedule='batch_invariant' against 'lean' and 'split'")


if __name__ == "__main__":
    main()
