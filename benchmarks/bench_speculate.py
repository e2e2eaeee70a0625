"""Speculative decoding benchmark: ``leanattn.generate(speculate=K)`` against one-token steps and transformers.

``generate(speculate=K)`` looks up ``K`` drafts a row in the row's own text (prompt lookup) and verifies them in one
forward of ``K + 1`` tokens, whose attention is one ``leanattn.decode`` call with ``K + 1`` causal query tokens. How
many drafts a step keeps depends on the text and the model; with random weights it says nothing about real text. So
each case runs three kinds of drafts on the same prompt:
  - ``lookup``: the real prompt-lookup drafts (what this random model happens to accept; a step where no row finds
    any runs one token a row);
  - ``oracle``: the one-token run's greedy continuation (every draft kept while the tokens agree): the best case;
  - ``wrong``: drafts that never match (one token a step): the whole cost of a ``K + 1``-token step.
Reported per run: the step's median time (wall, its draft lookup, host sync and bookkeeping included), tokens a
step, milliseconds per token over the run (every step's time over the tokens after the first) and its speedup over
the one-token run of the same prompt (``generate`` without ``speculate``, its steps in a CUDA graph, CUDA-event
times), and for how many tokens they equal that run's: bf16 near-ties of this random model part them (after
which oracle drafts are wrong), so the steps before that are reported on their own.

Peer: transformers ``generate(prompt_lookup_num_tokens=K)`` (its prompt-lookup decoding, greedy) with SDPA and with
the leanattn plug-in, and its ``generate`` without drafts, on the same weights (views of ours); ms per token =
``(t(generate T) - t(generate 1)) / (T - 1)``, so its prefill cancels out.

    python benchmarks/bench_speculate.py [--out DIR]     # the GPU run (~3 min on an H200)
    python benchmarks/bench_speculate.py --smoke         # CPU interpreter, tiny model, < 1 min
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any leanattn kernel is imported

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e  # noqa: E402
import common  # noqa: E402

import leanattn  # noqa: E402

K = 1024
GEN = sys.modules["leanattn.generate"]  # the module (leanattn.generate is the function)
# (batch, context, drafts a step, drafts a step of the transformers peer): the long case runs one K (its prefill costs
# ~10 s a run); transformers' steps cost ~70 ms (its host-bound loop), so it runs one K
FULL = dict(shape="llama-3-8b", dtype=torch.bfloat16, new_tokens=128, prefill_chunk=8 * K, page_size=256,
            cases=[(1, 4 * K, (2, 4, 8), (4,)), (1, 32 * K, (2, 4, 8), (4,)), (1, 128 * K, (4,), ()),
                   (16, 4 * K, (2, 4), ())])
SMOKE = dict(shape="tiny", dtype=torch.float32, new_tokens=9, prefill_chunk=32, page_size=16,
             cases=[(1, 40, (2,), (2,)), (2, 24, (3,), ())])


@contextlib.contextmanager
def drafts(kind: str, prompts: torch.Tensor, greedy: torch.Tensor, vocab: int):
    """Replace prompt lookup with ``oracle`` or ``wrong`` drafts (``lookup``: unchanged) for one generate call."""
    if kind == "lookup":
        yield
        return
    P = prompts.shape[1]
    rows = {tuple(p[:64].tolist()): b for b, p in enumerate(prompts.cpu())}
    ref = greedy.cpu().numpy()

    def fake(seq, k):
        cont = ref[rows[tuple(seq[:min(64, P)].tolist())], len(seq) - P:][:k]
        cont = np.concatenate([cont, np.full(k - len(cont), cont[-1] if len(cont) else 0, dtype=ref.dtype)])
        return cont if kind == "oracle" else (cont + 1) % vocab
    saved = GEN.PromptLookup.drafts
    GEN.PromptLookup.drafts = lambda self, b, k: fake(self.row(b), k)
    try:
        yield
    finally:
        GEN.PromptLookup.drafts = saved


def agree_upto(a: torch.Tensor, b: torch.Tensor) -> int:
    """Tokens equal from the start, the least over rows."""
    same = (a == b).all(0) if a.dim() == 2 else a == b
    bad = (~same).nonzero()
    return int(bad[0]) if len(bad) else same.numel()


def ours(model, cfg, B, ctx, ks):
    rows = []
    T = cfg["new_tokens"]
    V = model.config.vocab_size
    prompts = torch.randint(1, V, (B, ctx), device=model.device)
    kw = dict(prefill_chunk=cfg["prefill_chunk"], page_size=cfg["page_size"])
    base = leanattn.generate(model, prompts, T, **kw)
    base_ms = statistics.median(base.step_ms)
    case = dict(batch=B, context=ctx, new_tokens=T)
    rows.append(dict(case, method="leanattn one token a step", K=0, step_ms=base_ms, tokens_per_step=1.0,
                     ms_per_token=base_ms, speedup=1.0, cuda_graph=base.cuda_graph, tokens_equal=T))
    bench_e2e.log(f"  B={B} ctx={ctx}: one token a step {base_ms:.3f} ms")
    for k in ks:
        for kind in ("wrong", "oracle", "lookup"):
            with drafts(kind, prompts, base.tokens, V):
                gen = leanattn.generate(model, prompts, T, speculate=k, **kw)
            per_token = sum(gen.step_ms) / (T - 1)  # step_tokens are averaged over rows: T - 1 tokens a row
            row = dict(case, method=f"leanattn speculate, {kind} drafts", K=k, step_ms=statistics.median(gen.step_ms),
                       tokens_per_step=statistics.fmean(gen.step_tokens), steps=len(gen.step_ms),
                       ms_per_token=per_token, speedup=base_ms / per_token, cuda_graph=gen.cuda_graph,
                       tokens_equal=agree_upto(gen.tokens, base.tokens))
            row["step_vs_one_token"] = row["step_ms"] / base_ms
            # bf16 near-ties part the runs' tokens (and oracle drafts go wrong after): the steps before that. Only for
            # oracle drafts, which keep the rows in step (step_tokens is a mean over rows: with other drafts rows
            # advance apart, and the mean would pass a row's parting point late)
            done, steps = 0.0, 0
            for t in gen.step_tokens if kind == "oracle" else ():
                if done + t > row["tokens_equal"] - 1:
                    break
                done, steps = done + t, steps + 1
            if steps:
                row.update(agree_steps=steps, agree_tokens_per_step=done / steps,
                           agree_ms_per_token=sum(gen.step_ms[:steps]) / done)
            rows.append(row)
            bench_e2e.log(f"  B={B} ctx={ctx} K={k} {kind:6s}: step {row['step_ms']:.3f} ms "
                          f"({row['step_vs_one_token']:.3f}x), {row['tokens_per_step']:.2f} tokens/step, "
                          f"{per_token:.3f} ms/token ({row['speedup']:.2f}x), equal for {row['tokens_equal']}/{T}")
            gen = None
            bench_e2e.free()
    return rows, prompts, base.tokens


def hf_rows(hf, prompts, greedy, cfg, ks, B, ctx):
    """transformers greedy generate, without drafts and with prompt lookup, SDPA and the leanattn plug-in."""
    rows = []
    T = cfg["new_tokens"]
    case = dict(batch=B, context=ctx, new_tokens=T)
    runs = [("sdpa", 0)] + [(impl, k) for k in ks for impl in ("sdpa", "leanattn")]
    for impl, k in runs:
        name = f"transformers {impl}" + (", prompt lookup" if k else ", one token a step")
        try:
            hf.set_attn_implementation(impl)
            extra = dict(prompt_lookup_num_tokens=k) if k else {}

            def timed(new):
                bench_e2e.sync()
                t = time.perf_counter()
                with torch.no_grad():
                    out = hf.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False, **extra)
                bench_e2e.sync()
                return time.perf_counter() - t, out[:, prompts.shape[1]:]
            t1, _ = timed(1)
            tT, toks = timed(T)
            ms = (tT - t1) / (T - 1) * 1e3
            rows.append(dict(case, method=name, K=k, ms_per_token=ms, t_generate_1_s=t1, t_generate_T_s=tT,
                             tokens_equal=agree_upto(toks.cpu(), greedy)))
            bench_e2e.log(f"  B={B} ctx={ctx} K={k} {name}: {ms:.3f} ms/token, equal for {rows[-1]['tokens_equal']}")
        except Exception as e:  # noqa: BLE001 - record and go on
            rows.append(dict(case, method=name, K=k, error=f"{type(e).__name__}: {e}"[:300]))
            bench_e2e.log(f"  {name}: error {e}")
        bench_e2e.free()
    return rows


def table(rows) -> str:
    def kk(x):
        return f"{x // K}k" if x >= K else str(x)
    ref = {(r["batch"], r["context"]): r["ms_per_token"] for r in rows if r["method"] == "leanattn one token a step"}
    h = ["B", "context", "method", "K", "step ms", "step / one-token step", "tokens/step", "ms/token",
         "speedup vs leanattn one token", "tokens equal", "while equal: steps, tokens/step, ms/token", "note"]
    t = []
    for r in rows:
        sp = r.get("speedup")
        if sp is None and r.get("ms_per_token") and ref.get((r["batch"], r["context"])):
            sp = ref[(r["batch"], r["context"])] / r["ms_per_token"]
        t.append([r["batch"], kk(r["context"]), r["method"], r["K"], r.get("step_ms", "-"),
                  r.get("step_vs_one_token", "-"), r.get("tokens_per_step", "-"), r.get("ms_per_token", "-"),
                  sp if sp is not None else "-", f"{r['tokens_equal']}/{r['new_tokens']}" if "tokens_equal" in r
                  else "-", f"{r['agree_steps']}, {r['agree_tokens_per_step']:.2f}, {r['agree_ms_per_token']:.3g}"
                  if "agree_steps" in r else "-", r.get("error", "")])
    return common.markdown_table(h, t)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = list(dict.fromkeys((r["batch"], r["context"]) for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4), squeeze=False)
    for ax, (B, ctx) in zip(axes[0], cases):
        one = next(r["ms_per_token"] for r in rows if (r["batch"], r["context"]) == (B, ctx) and r["K"] == 0
                   and r["method"].startswith("leanattn"))
        for kind, style in (("wrong", "v--"), ("oracle", "^-"), ("lookup", "o-")):
            pts = [(r["K"], r["ms_per_token"]) for r in rows if (r["batch"], r["context"]) == (B, ctx)
                   and r["method"].endswith(f"{kind} drafts")]
            if pts:
                ax.plot(*zip(*pts), style, label=f"speculate, {kind} drafts")
        best = [(r["K"], r["agree_ms_per_token"]) for r in rows if (r["batch"], r["context"]) == (B, ctx)
                and r["method"].endswith("oracle drafts") and "agree_ms_per_token" in r]
        if best:
            ax.plot(*zip(*best), "^:", color="tab:orange", mfc="none", label="oracle drafts, while the tokens agree")
        hf = [(r["K"], r["ms_per_token"]) for r in rows if (r["batch"], r["context"]) == (B, ctx)
              and r["method"] == "transformers sdpa, prompt lookup" and "ms_per_token" in r]
        if hf:
            ax.plot(*zip(*hf), "s:", label="transformers sdpa, prompt lookup")
        ax.axhline(one, color="k", lw=0.8, label="one token a step")
        ax.set_yscale("log")
        ax.set(xlabel="drafts a step (K)", ylabel="ms per token", title=f"B={B}, context {ctx // K}k"
               if ctx >= K else f"B={B}, context {ctx}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU/interpreter run with a tiny fp32 model (code paths only)")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results"))
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("bench_speculate: needs a CUDA GPU (use --smoke for a CPU run of the code paths)")
        return 0
    cfg = dict(SMOKE if args.smoke else FULL)
    start = time.time()
    info = dict(common.env_info(), **bench_e2e.hf_versions())
    bench_e2e.log(f"{info}")
    torch.manual_seed(0)
    model = bench_e2e.random_model(cfg, "cuda" if cuda else "cpu", args.smoke)
    hf = None
    if not args.no_hf and not info["transformers"].startswith("not installed"):
        import leanattn.integrations.transformers as lt
        lt.register()
        hf = bench_e2e.hf_model_sharing(model, max(c[1] for c in cfg["cases"]) + cfg["new_tokens"] + 64)
    rows = []
    for B, ctx, ks, hf_ks in cfg["cases"]:
        got, prompts, greedy = ours(model, cfg, B, ctx, ks)
        rows += got
        if hf_ks and hf is not None:
            rows += hf_rows(hf, prompts, greedy, cfg, hf_ks, B, ctx)
        prompts = greedy = None
        bench_e2e.free()
    wall = time.time() - start
    shape = f"{cfg['shape']} ({str(cfg['dtype']).replace('torch.', '')}, random weights)"
    md = (f"# speculative decoding benchmark\n\n{info['device']}, torch {info['torch']}, triton {info['triton']}, "
          f"transformers {info['transformers']}, {info['date']}. Model {shape}, {model.weight_bytes() / 1e9:.1f} GB "
          f"weights; {cfg['new_tokens']} new tokens a row, greedy; random prompts. ms/token: every step's time over "
          f"the tokens after the first (speculative steps: wall, host work included; one-token steps: CUDA events "
          f"of graph replays; transformers: (generate(T) - generate(1)) / (T - 1)). Drafts: lookup = prompt lookup, "
          f"oracle = the one-token run's tokens, wrong = never kept.\n\n" + table(rows) + f"\nwall {wall:.0f} s\n")
    stem = "speculate_" + info["device"].replace(" ", "_") + ("_smoke" if args.smoke else "")
    payload = dict(env=info, config={k: (str(v) if k == "dtype" else v) for k, v in cfg.items()}, rows=rows,
                   wall_s=round(wall, 1))
    paths = common.write_results(args.out, stem, payload, md, plot=lambda png: plot(rows, png))
    print(md)
    bench_e2e.log(f"wrote {paths} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
