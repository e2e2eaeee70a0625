"""End-to-end decode benchmark: leanattn inside real model generation, one GPU, bf16, random weights.

Part A (LeanAttention's setting): the ``llama-3-8b`` shape at batch 1 with 16k, 64k and 128k-token
prompts; per-token decode latency of
  - ``leanattn.generate`` (paged cache, ``leanattn.decode``, decode step in a CUDA graph),
  - transformers with ``attn_implementation="leanattn"`` (the plug-in), ``"sdpa"`` and
    ``"flash_attention_2"`` (when flash-attn is importable, else recorded as not installed), each
    with transformers' default dynamic cache and, for sdpa and the plug-in, a static cache.
Part B (bifurcated attention's setting): one 8k prompt sampled 16 and 32 times; per-step latency and
KV memory of ``leanattn.generate(samples=N)`` (prompt KV once, ``bifurcated_decode``) against
transformers ``generate(num_return_sequences=N, do_sample=True)`` with sdpa.

Method. Both sides share one set of weights: the transformers model's parameters are views of
leanattn's fused ones (16 GB once). Prompts are random token ids. The prompt's KV comes from a real
prefill (leanattn's chunked SDPA prefill); for Part A the same KV is copied into transformers' cache
(dynamic: as its prefill would leave it; static: a copy of that), so one 128k prefill serves every
method. transformers' per-token latency in Part A is the median over a manual loop of ``forward``
calls on its cache (one token in, greedy next token out), timed with CUDA events per step like ours;
in Part B it is ``(t(generate T tokens) - t(generate 1 token)) / (T - 1)`` with
``min_new_tokens = max_new_tokens`` (EOS cannot stop it), and also the forward loop above on the
prompt's KV repeated N times (generate's own N-row prefill may not fit at N = 32). GB/s = (weight bytes + KV bytes of the
context) / step time, against the measured read ceiling. Cells that fail (OOM, ...) are recorded
with their error; transformers cells are skipped past ``--budget-s``.

    python benchmarks/bench_e2e.py [--out DIR] [--budget-s 420]      # the GPU run (~5-7 min on H100)
    python benchmarks/bench_e2e.py --smoke                           # CPU interpreter, tiny model, < 1 min
    python -m leanattn bench e2e --smoke
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any leanattn kernel is imported

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import leanattn  # noqa: E402
from leanattn.models import build_model  # noqa: E402

K = 1024
FULL = dict(shape="llama-3-8b", dtype=torch.bfloat16, contexts=(16 * K, 64 * K, 128 * K), new_tokens=32,
            sample_prompt=8 * K, samples=(16, 32), prefill_chunk=8 * K, page_size=256)
SMOKE = dict(shape="tiny", dtype=torch.float32, contexts=(40, 96), new_tokens=4, sample_prompt=24, samples=(2, 3),
             prefill_chunk=32, page_size=16)


def log(msg):
    print(msg, flush=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free():
    sync()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_model(cfg: dict, device: str, smoke: bool):
    """The benchmark's model: ``cfg``'s shape and dtype, random weights of seed 0 (std 0.1 for smoke runs, so the
    tiny model's logits are spread)."""
    model = build_model(cfg["shape"], device, cfg["dtype"], seed=0)
    return model.init_random(std=0.1) if smoke else model


def kv_bytes_per_token(model) -> int:
    c = model.config
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.embed.element_size()


# ---------------------------------------------------------------------------------------------- transformers
def hf_versions() -> dict:
    out = {}
    for mod in ("transformers", "flash_attn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
            out[mod] = f"not installed ({type(e).__name__})"
    return out


def hf_model_sharing(ours, max_pos: int):
    """A transformers LlamaForCausalLM whose parameters are views of ``ours`` (no second copy)."""
    import transformers
    from torch import nn
    c = ours.config
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling:
        rope = dict(c.rope_scaling, rope_theta=c.rope_theta)
    cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=max(max_pos, c.max_position_embeddings), rope_parameters=rope,
        tie_word_embeddings=c.tie_word_embeddings, attention_bias=c.attention_bias, pad_token_id=0)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(cfg)

    def put(module, tensor, name="weight"):
        setattr(module, name, nn.Parameter(tensor, requires_grad=False))
    put(hf.model.embed_tokens, ours.embed)
    put(hf.model.norm, ours.norm)
    put(hf.lm_head, ours.lm_head)
    for L, O in zip(hf.model.layers, ours.layers):
        q, k, v = O.wqkv.split(O.splits)
        put(L.self_attn.q_proj, q)
        put(L.self_attn.k_proj, k)
        put(L.self_attn.v_proj, v)
        put(L.self_attn.o_proj, O.wo)
        gate, up = O.w_gate_up.chunk(2)
        put(L.mlp.gate_proj, gate)
        put(L.mlp.up_proj, up)
        put(L.mlp.down_proj, O.w_down)
        put(L.input_layernorm, O.attn_norm)
        put(L.post_attention_layernorm, O.mlp_norm)
    with torch.device(ours.device):  # its inverse frequencies were made on meta
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg)
    meta = [n for n, t in list(hf.named_parameters()) + list(hf.named_buffers()) if t.is_meta]
    if meta:
        raise RuntimeError(f"transformers model still has meta tensors: {meta[:3]}")
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def hf_dynamic_from(cache, ctx: int):
    """transformers DynamicCache holding the first ``ctx`` tokens of a leanattn PagedKVCache (batch 1)."""
    from transformers import DynamicCache
    dyn = DynamicCache()
    for i in range(len(cache.k)):
        k, v = cache.seq_view(i)
        dyn.update(k[:, :ctx].transpose(1, 2), v[:, :ctx].transpose(1, 2), i)  # cat copies: (B, Hkv, N, D)
    return dyn


def hf_static_from(dyn, hf, ctx: int, capacity: int):
    from transformers import StaticCache
    st = StaticCache(config=hf.config, max_cache_len=capacity)
    for i, layer in enumerate(dyn.layers):
        st.update(layer.keys[:, :, :ctx], layer.values[:, :, :ctx], i)
    return st


def hf_truncate(cache, ctx: int):
    """Back to the prompt: dynamic layers drop later tokens; static layers rewind their length."""
    for layer in cache.layers:
        if hasattr(layer, "cumulative_length") and hasattr(layer, "max_cache_len"):
            layer.cumulative_length.fill_(ctx)
        else:
            layer.keys, layer.values = layer.keys[:, :, :ctx], layer.values[:, :, :ctx]


@torch.no_grad()
def hf_decode_ms(hf, impl: str, cache, first_tok: torch.Tensor, steps: int) -> list:
    """Per-step ms of ``steps`` greedy forward calls on ``cache`` (CUDA events, or wall on the CPU)."""
    hf.set_attn_implementation(impl)
    tok = first_tok.view(-1, 1)
    times = []
    cuda = torch.cuda.is_available()
    from leanattn.integrations.transformers import cache_keyword
    name = cache_keyword(hf)
    for _ in range(steps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
        else:
            w = time.perf_counter()
        out = hf(input_ids=tok, use_cache=True, logits_to_keep=1, **{name: cache})
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        if cuda:
            b.record()
            times.append((a, b))
        else:
            times.append((time.perf_counter() - w) * 1e3)
    sync()
    return [a.elapsed_time(b) for a, b in times] if cuda else times


# ---------------------------------------------------------------------------------------------- part A
def part_a(ours, cfg, ceiling, budget_left, flash_ok):
    rows = []
    T = cfg["new_tokens"]
    per_tok = kv_bytes_per_token(ours)
    wbytes = ours.weight_bytes()
    hf = None
    for ctx in cfg["contexts"]:
        base = dict(part="A", context=ctx, batch=1, kv_bytes=ctx * per_tok, weight_bytes=wbytes)

        def record(method, ms=None, error=None, **extra):
            row = dict(base, method=method, **extra)
            if ms:
                med = statistics.median(ms)
                row.update(step_ms=med, step_ms_p90=sorted(ms)[min(len(ms) - 1, int(0.9 * len(ms)))],
                           gbs=(wbytes + ctx * per_tok) / med / 1e6)
                row["pct_of_ceiling"] = 100 * row["gbs"] / ceiling if ceiling else None
            if error:
                row["error"] = error
            rows.append(row)
            log(f"  A ctx={ctx:>6} {method:34s} " + (f"{row['step_ms']:.3f} ms/token, {row['gbs']:.0f} GB/s"
                                                    if "step_ms" in row else f"error: {error}"))
        prompt = torch.randint(1, ours.config.vocab_size, (1, ctx), device=ours.device)
        gen = None
        try:
            gen = leanattn.generate(ours, prompt, T + 1, prefill_chunk=cfg["prefill_chunk"],
                                    page_size=cfg["page_size"], return_cache=True)
            record("leanattn.generate (CUDA graph)" if gen.cuda_graph else "leanattn.generate (eager)",
                   gen.step_ms, prefill_s=gen.prefill_s)
        except Exception as e:  # noqa: BLE001 - record and go on
            record("leanattn.generate", error=f"{type(e).__name__}: {e}"[:300])
        if cfg.get("fused_ops"):
            ours.fused_ops = True  # the norms, rotary embedding and SwiGLU as one Triton kernel each
            try:
                fused = leanattn.generate(ours, prompt, T + 1, prefill_chunk=cfg["prefill_chunk"],
                                          page_size=cfg["page_size"])
                record("leanattn.generate fused_ops", fused.step_ms, prefill_s=fused.prefill_s,
                       tokens_equal_unfused=int((fused.tokens == gen.tokens).all(0).long().cumprod(0).sum())
                       if gen is not None else None)
            except Exception as e:  # noqa: BLE001
                record("leanattn.generate fused_ops", error=f"{type(e).__name__}: {e}"[:300])
            ours.fused_ops = False
            fused = None
        if gen is None or gen.cache is None:
            continue
        first = gen.tokens[0, 0].to(ours.device)
        cells = [("dynamic", "sdpa"), ("dynamic", "leanattn"), ("dynamic", "flash_attention_2"),
                 ("static", "sdpa"), ("static", "leanattn")]
        try:
            if hf is None:
                import leanattn.integrations.transformers as lt
                lt.register()
                hf = hf_model_sharing(ours, max(cfg["contexts"]) + T + 8)
            dyn = hf_dynamic_from(gen.cache, ctx)
        except Exception as e:  # noqa: BLE001
            for kind, impl in cells:
                record(f"transformers {impl} ({kind} cache)", error=f"setup: {type(e).__name__}: {e}"[:300])
            gen = None
            free()
            continue
        gen = None  # our cache is no longer needed: transformers holds its own copy
        free()
        caches = {"dynamic": dyn}
        for kind, impl in cells:
            name = f"transformers {impl} ({kind} cache)"
            if impl == "flash_attention_2" and not flash_ok:
                record(name, error="not installed (flash_attn not importable)")
                continue
            if budget_left() <= 0:
                record(name, error="skipped: past the --budget-s time budget")
                continue
            try:
                if kind == "static" and "static" not in caches:
                    caches["static"] = hf_static_from(caches.pop("dynamic"), hf, ctx, ctx + T + 8)
                    free()
                cache = caches[kind]
                ms = hf_decode_ms(hf, impl, cache, first, T)
                hf_truncate(cache, ctx)
                record(name, ms[2:] if len(ms) > 4 else ms)  # the first steps include one-time set-up
            except Exception as e:  # noqa: BLE001
                record(name, error=f"{type(e).__name__}: {e}"[:300])
                caches.get(kind) is not None and hf_truncate(caches[kind], ctx)
            free()
        caches = dyn = None
        free()
    by = {(r["context"], r["method"]): r.get("step_ms") for r in rows}
    for r in rows:
        ref = by.get((r["context"], "transformers sdpa (dynamic cache)"))
        if r.get("step_ms") and ref:
            r["speedup_vs_hf_sdpa"] = ref / r["step_ms"]
    return rows, hf


# ---------------------------------------------------------------------------------------------- part B
def part_b(ours, hf, cfg, ceiling, budget_left):
    rows = []
    T, P = cfg["new_tokens"], cfg["sample_prompt"]
    per_tok = kv_bytes_per_token(ours)
    cuda = torch.cuda.is_available()
    prompt = torch.randint(1, ours.config.vocab_size, (1, P), device=ours.device)
    for n in cfg["samples"]:
        base = dict(part="B", context=P, samples=n, new_tokens=T)
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            gen = leanattn.generate(ours, prompt, T, samples=n, temperature=1.0, top_k=50,
                                    prefill_chunk=cfg["prefill_chunk"], page_size=cfg["page_size"],
                                    generator=torch.Generator(ours.device).manual_seed(n), return_cache=True)
            ms = statistics.median(gen.step_ms)
            rows.append(dict(base, method="leanattn.generate samples (bifurcated)", step_ms=ms, kv_bytes=gen.kv_bytes,
                             peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                             cuda_graph=gen.cuda_graph))
            log(f"  B x{n:<3} leanattn: {ms:.3f} ms/step, KV {gen.kv_bytes / 1e9:.2f} GB")
        except Exception as e:  # noqa: BLE001
            gen = None
            rows.append(dict(base, method="leanattn.generate samples (bifurcated)", error=f"{type(e).__name__}: {e}"[:300]))
            log(f"  B x{n:<3} leanattn: error {e}")
        # transformers' decode step at N rows on the prompt's KV repeated N times (what generate holds),
        # without generate's N-row prefill: a step time even where that prefill would not fit
        name = "transformers sdpa forward loop (KV repeated N times)"
        if hf is not None and gen is not None and budget_left() > 0:
            try:
                dyn = hf_dynamic_from(gen.cache, P)
                gen = None
                dyn.batch_repeat_interleave(n)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                first = torch.randint(1, ours.config.vocab_size, (n,), device=ours.device)
                ms = hf_decode_ms(hf, "sdpa", dyn, first, T)
                ms = ms[2:] if len(ms) > 4 else ms
                rows.append(dict(base, method=name, step_ms=statistics.median(ms), kv_bytes=n * (P + T) * per_tok,
                                 peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None))
                log(f"  B x{n:<3} {name}: {statistics.median(ms):.3f} ms/step")
            except Exception as e:  # noqa: BLE001
                rows.append(dict(base, method=name, error=f"{type(e).__name__}: {e}"[:300]))
            dyn = None
        gen = None
        free()
        name = "transformers generate sdpa"
        if hf is None or budget_left() <= 0:
            rows.append(dict(base, method=name, error="skipped: past the --budget-s time budget" if hf is not None
                             else "transformers not available"))
            continue
        try:
            hf.set_attn_implementation("sdpa")
            kw = dict(do_sample=True, num_return_sequences=n, top_k=50, temperature=1.0, pad_token_id=0)

            def timed(new):
                sync()
                t = time.perf_counter()
                with torch.no_grad():
                    hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kw)
                sync()
                return time.perf_counter() - t
            t1 = timed(1)  # kernels and the model were warmed up by Part A and the loop above
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            tT = timed(T)
            ms = (tT - t1) / (T - 1) * 1e3
            rows.append(dict(base, method=name, step_ms=ms, kv_bytes=n * (P + T) * per_tok,
                             peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                             t_generate_1_s=t1, t_generate_T_s=tT))
            log(f"  B x{n:<3} transformers sdpa: {ms:.3f} ms/step")
        except Exception as e:  # noqa: BLE001
            rows.append(dict(base, method=name, error=f"{type(e).__name__}: {e}"[:300]))
            log(f"  B x{n:<3} transformers sdpa: error {e}")
        free()
    for r in rows:
        ref = next((x.get("step_ms") for x in rows if x["samples"] == r["samples"] and x["method"] ==
                    "transformers generate sdpa"), None)
        if r.get("step_ms") and ref:
            r["speedup_vs_hf_generate"] = ref / r["step_ms"]
        loop = next((x.get("step_ms") for x in rows if x["samples"] == r["samples"] and x["method"].startswith(
            "transformers sdpa forward loop")), None)
        if r.get("step_ms") and loop:
            r["speedup_vs_hf_loop"] = loop / r["step_ms"]
    return rows


# ---------------------------------------------------------------------------------------------- output
def tables(rows_a, rows_b) -> str:
    def k(x):
        return f"{x // K}k" if x >= K else str(x)
    ha = ["context", "method", "ms/token", "p90", "x vs HF sdpa", "GB/s", "% ceiling", "KV GB", "note"]
    ta = [[k(r["context"]), r["method"], r.get("step_ms", "-"), r.get("step_ms_p90", "-"),
           r.get("speedup_vs_hf_sdpa", "-"), r.get("gbs", "-"), r.get("pct_of_ceiling", "-") or "-",
           r["kv_bytes"] / 1e9, r.get("error", "")] for r in rows_a]
    hb = ["prompt", "samples", "method", "ms/step", "x vs HF generate", "x vs HF loop", "KV held GB", "peak GB",
          "note"]
    tb = [[k(r["context"]), r["samples"], r["method"], r.get("step_ms", "-"), r.get("speedup_vs_hf_generate", "-"),
           r.get("speedup_vs_hf_loop", "-"),
           r["kv_bytes"] / 1e9 if "kv_bytes" in r else "-", r.get("peak_gb") or "-", r.get("error", "")]
          for r in rows_b]
    return ("## A. batch 1, long context: per-token decode latency\n\n" + common.markdown_table(ha, ta)
            + "\n## B. one prompt, N samples: per-step decode latency and KV memory\n\n"
            + common.markdown_table(hb, tb))


def plot(rows_a, rows_b, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows_a):
        pts = [(r["context"] / K, r["step_ms"]) for r in rows_a if r["method"] == m and "step_ms" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=m)
    ax.set(xlabel="context (k tokens)", ylabel="ms per token", title="A. batch 1 decode latency")
    ax.legend(fontsize=7)
    methods = list(dict.fromkeys(r["method"] for r in rows_b))
    ns = sorted({r["samples"] for r in rows_b})
    w = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        vals = [next((r.get("step_ms", 0) for r in rows_b if r["method"] == m and r["samples"] == n), 0) for n in ns]
        bx.bar([i + j * w for i in range(len(ns))], vals, w, label=m)
    bx.set_xticks([i + w * (len(methods) - 1) / 2 for i in range(len(ns))], [f"x{n}" for n in ns])
    bx.set(ylabel="ms per step", title="B. one prompt sampled N times")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU/interpreter run with a tiny fp32 model (code paths only)")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results"))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="after this many seconds transformers cells are skipped (ours still runs)")
    ap.add_argument("--contexts", default="", help="comma-separated contexts in tokens (default 16k,64k,128k)")
    ap.add_argument("--samples", default="", help="comma-separated sample counts (default 16,32)")
    ap.add_argument("--fused-ops", action="store_true",
                    help="Part A also runs leanattn.generate with the model's fused_ops (one more prefill a context)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("bench_e2e: needs a CUDA GPU (use --smoke for a CPU run of the code paths)")
        return 0
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.contexts:
        cfg["contexts"] = tuple(int(x.lower().replace("k", "")) * (K if "k" in x.lower() else 1)
                                for x in args.contexts.split(","))
    if args.samples:
        cfg["samples"] = tuple(int(x) for x in args.samples.split(","))
    cfg["fused_ops"] = args.fused_ops
    start = time.time()

    def budget_left():
        return args.budget_s - (time.time() - start)
    info = dict(common.env_info(), **hf_versions())
    log(f"{info}")
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    ceiling = common.read_bandwidth_gbs()["read_ceiling"] if cuda else None
    ours = random_model(cfg, device, args.smoke)
    log(f"model {cfg['shape']}: {ours.weight_bytes() / 1e9:.2f} GB weights, {kv_bytes_per_token(ours)} KV bytes/token; "
        f"read ceiling {ceiling} GB/s")
    flash_ok = cuda and not info["flash_attn"].startswith("not installed")
    hf_ok = not info["transformers"].startswith("not installed")
    rows_a, hf = [], None
    if hf_ok:
        rows_a, hf = part_a(ours, cfg, ceiling, budget_left, flash_ok)
    else:
        log("transformers is not installed: Part A runs leanattn.generate only")
        rows_a, _ = part_a_ours_only(ours, cfg, ceiling)
    rows_b = part_b(ours, hf, cfg, ceiling, budget_left)
    wall = time.time() - start
    a64 = {r["method"]: r.get("speedup_vs_hf_sdpa") for r in rows_a if r["context"] == 64 * K}
    b16 = {r["method"]: r.get("speedup_vs_hf_generate") for r in rows_b if r["samples"] == 16}
    b16_loop = {r["method"]: r.get("speedup_vs_hf_loop") for r in rows_b if r["samples"] == 16}
    summary = dict(speedup_vs_hf_sdpa_64k=a64, speedup_vs_hf_generate_x16=b16, speedup_vs_hf_loop_x16=b16_loop,
                   wall_s=round(wall, 1))
    shape = f"{cfg['shape']} ({str(cfg['dtype']).replace('torch.', '')}, random weights)"
    md = (f"# end-to-end decode benchmark\n\n{info['device']}, torch {info['torch']}, triton {info['triton']}, "
          f"transformers {info['transformers']}, flash_attn {info['flash_attn']}, {info['date']}. Model {shape}, "
          f"{ours.weight_bytes() / 1e9:.1f} GB weights, {kv_bytes_per_token(ours) // 1024} KiB KV per token; "
          f"{cfg['new_tokens']} new tokens per run. Read ceiling "
          f"{'%.0f GB/s' % ceiling if ceiling else 'n/a (CPU)'}. GB/s = (weights + context KV) / step time. "
          f"Per-token times: medians of CUDA-event-timed steps (transformers: manual forward loop on its cache, "
          f"first 2 steps dropped; B: generate(T) - generate(1) over T - 1).\n\n" + tables(rows_a, rows_b)
          + f"\nSummary: {summary}\n")
    stem = "e2e_" + info["device"].replace(" ", "_") + ("_smoke" if args.smoke else "")
    payload = dict(env=info, config={k: (str(v) if k == "dtype" else v) for k, v in cfg.items()}, ceiling_gbs=ceiling,
                   summary=summary, part_a=rows_a, part_b=rows_b)
    paths = common.write_results(args.out, stem, payload, md, plot=lambda png: plot(rows_a, rows_b, png))
    print(md)
    log(f"wrote {paths} in {wall:.0f} s")
    return 0


def part_a_ours_only(ours, cfg, ceiling):
    """Part A without transformers: leanattn.generate alone."""
    rows = []
    for ctx in cfg["contexts"]:
        prompt = torch.randint(1, ours.config.vocab_size, (1, ctx), device=ours.device)
        try:
            gen = leanattn.generate(ours, prompt, cfg["new_tokens"] + 1, prefill_chunk=cfg["prefill_chunk"],
                                    page_size=cfg["page_size"])
            med = statistics.median(gen.step_ms)
            gbs = (ours.weight_bytes() + ctx * kv_bytes_per_token(ours)) / med / 1e6
            rows.append(dict(part="A", context=ctx, batch=1, method="leanattn.generate", step_ms=med, gbs=gbs,
                             kv_bytes=ctx * kv_bytes_per_token(ours), pct_of_ceiling=100 * gbs / ceiling if ceiling
                             else None))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(part="A", context=ctx, batch=1, method="leanattn.generate",
                             kv_bytes=ctx * kv_bytes_per_token(ours), error=f"{type(e).__name__}: {e}"[:300]))
        free()
    return rows, None


if __name__ == "__main__":
    sys.exit(main())
