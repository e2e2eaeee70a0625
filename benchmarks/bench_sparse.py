"""Sparse flash attention benchmark: QK-sparse and hash-sparse SCFA against dense causal attention.

Suite (bf16, D=64, causal, from issue 3): (B, H) in {(4, 48), (8, 12)}; N in {4k, 8k, 16k, 32k};
drop rates {0.2, 0.5, 0.8} (queries and keys dropped independently, Bernoulli); buckets
{2, 8, 16, 64} (query and key ids drawn independently and uniformly, as in the paper's runtime
notebook); plus the dense limits (keep all, one bucket) for the 1.25x bar.

Timed, each with ``triton.testing.do_bench`` (median, L2 flushed):

* ``leanattn``: the public function, so compaction/sorting and block ranges are included;
  forward (grad mode on), backward alone, forward + backward; ``leanattn_atomic``: the same
  with ``deterministic=False`` (dQ by float32 atomics), forward + backward.
* ``sdpa_flash`` / ``sdpa_cudnn``: dense causal ``scaled_dot_product_attention`` pinned with
  ``sdpa_kernel`` (inputs are (B, N, H, D) tensors seen as (B, H, N, D), as a model would pass).
* ``flex``: ``flex_attention`` (compiled once with ``dynamic=True``) on the same sorted
  tensors with a ``BlockMask`` built by ``BlockMask.from_kv_blocks`` from our block ranges
  (partial and full blocks, 128 x 128) and ``mask_mod = same group & q_pos >= k_pos``.
  ``flex`` times the kernel alone on pre-sorted inputs with a prebuilt mask; ``flex_e2e``
  (forward + backward only) adds the sort, the ranges, building the BlockMask, the gathers
  into sorted order and the scatter back.

Before timing, every case is checked: leanattn against the float64 reference on a slice
(first batch, two heads, first 1024 tokens: causal outputs there depend only on those tokens)
for the output and the three gradients, and against flex on the full output; FLASH against
cuDNN. Inputs are standard normal and outputs are checked non-zero. TFLOP/s count useful work
only: ``4 * D`` flops per visible (query, key) pair forward, 2.5x that backward.

    PYTHONPATH=src python3 benchmarks/bench_sparse.py [--quick] [--no-flex] [--out DIR]
    PYTHONPATH=src python3 benchmarks/bench_sparse.py --smoke   # CPU plumbing check, tiny shapes
    LEANATTN_SPARSE_TILES=128,64,64,128 PYTHONPATH=src python3 benchmarks/bench_sparse.py --quick  # other tiles

Writes ``sparse_<date>.json``, ``.md`` and ``.png`` under ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import time
import traceback

import torch
import torch._functorch.config

# the backward is timed alone with retain_graph=True; compiled flex refuses that with donated buffers
torch._functorch.config.donated_buffer = False
import torch.nn.functional as F

if not torch.cuda.is_available():  # --smoke on a CPU: kernels run under the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import triton  # noqa: E402

import leanattn  # noqa: E402
from leanattn import reference  # noqa: E402
from leanattn.sparse import layout as L  # noqa: E402
from leanattn.testing import rel_err  # noqa: E402

K = 1024
D = 64
DTYPE = torch.bfloat16
FLEX_BLOCK = 128


# ----------------------------------------------------------------------------------------------
# timing


def timer(device):
    if device == "cuda":
        def t(fn, grad_to_none=None):
            return triton.testing.do_bench(fn, warmup=10, rep=40, grad_to_none=grad_to_none, return_mode="median")
    else:
        def t(fn, grad_to_none=None):
            xs = []
            for _ in range(2):
                for g in grad_to_none or ():
                    g.grad = None
                t0 = time.perf_counter()
                fn()
                xs.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(xs)
    return t


def time_fwd_bwd(T, f, leaves):
    """``f()`` returns the output; ``leaves`` get their grads reset. Returns ms for fwd, bwd, both."""
    out = f()
    dout = torch.randn_like(out)
    fwd = T(f)
    bwd = T(lambda: out.backward(dout, retain_graph=True), grad_to_none=leaves)
    both = T(lambda: f().backward(dout), grad_to_none=leaves)
    return dict(fwd_ms=fwd, bwd_ms=bwd, both_ms=both)


# ----------------------------------------------------------------------------------------------
# cases


def make_pattern(mode, param, B, N, H, device, HK=None):
    """Query and key masks (``mode`` "qk", ``param`` the drop rate) or bucket ids ("hash", ``param`` buckets):
    ``(B, N, H)`` and ``(B, N, HK)`` (``HK`` default ``H``)."""
    HK = H if HK is None else HK
    if mode == "qk":
        a = torch.rand(B, N, H, device=device) >= param
        b = torch.rand(B, N, HK, device=device) >= param
    else:
        a = torch.randint(0, param, (B, N, H), device=device, dtype=torch.int32)
        b = torch.randint(0, param, (B, N, HK), device=device, dtype=torch.int32)
    return a, b


def gqa_case(B, N, H, HK, D, mode, param, dtype, device):
    """``(q, k, v, a, b)`` of one case with ``HK`` kv heads: ``q (B, N, H, D)`` and ``k, v (B, N, HK, D)`` leaves
    that take gradients, and ``make_pattern``'s masks or bucket ids per query head and per kv head."""
    q = torch.randn(B, N, H, D, dtype=dtype, device=device, requires_grad=True)
    k, v = (torch.randn(B, N, HK, D, dtype=dtype, device=device, requires_grad=True) for _ in range(2))
    return (q, k, v, *make_pattern(mode, param, B, N, H, device, HK))


def gqa_cases(cases, want, D, dtype, device):
    """Each of ``cases`` (``(name, B, H, Hkv, N, mode, parameter)``) that ``want`` names (all where it is empty),
    with its tensors: ``(case, (q, k, v, a, b, dout))``, ``gqa_case``'s and an output gradient of ``q``'s shape."""
    for case in cases:
        name, B, H, HK, N, mode, param = case
        if want and name not in want:
            continue
        tensors = gqa_case(B, N, H, HK, D, mode, param, dtype, device)
        yield case, (*tensors, torch.randn(B, N, H, D, dtype=dtype, device=device))


def max_rel_err(xs, refs) -> float:
    """The largest ``max |x - ref| / max |ref|`` over paired tensors (a probe's check of a variant's results
    against its first variant's)."""
    return max(float((x - r).abs().max() / r.abs().max().clamp_min(1e-6)) for x, r in zip(xs, refs))


def backward_rounds(T, outs, dout, leaves, setup, rounds=3):
    """Each output's backward (``outs``: label -> output) timed by ``T`` in ``rounds`` interleaved rounds, us;
    ``setup(label)`` runs before each timing (the variable or config its variant needs). Returns ``(us, median)``:
    label -> the rounds' times, and their median."""
    us = {label: [] for label in outs}
    for _ in range(rounds):
        for label, out in outs.items():
            setup(label)
            us[label].append(1e3 * T(lambda out=out: out.backward(dout, retain_graph=True), grad_to_none=leaves))
    return us, {label: sorted(t)[len(t) // 2] for label, t in us.items()}


def run_ours(mode, q, k, v, a, b, deterministic=True):
    if mode == "qk":
        return leanattn.qk_sparse_attention(q, k, v, a, b, deterministic=deterministic)
    return leanattn.hash_sparse_attention(q, k, v, a, b, deterministic=deterministic)


def sparse_layout(mode, a, b):
    if mode == "qk":
        return L.build_layout(*L.qk_groups(a, b), *L.QK_DEAD)
    return L.build_layout(a, b)


def visible_pairs(lay) -> int:
    """Number of (query, key) pairs that attend, from the sorted composite keys."""
    N = lay.q_key.shape[-1]
    start = torch.searchsorted(lay.k_key, lay.q_key // N * N)
    end = torch.searchsorted(lay.k_key, lay.q_key, right=True)
    return int((end - start).sum())


def check_ours(mode, q, k, v, a, b, tol=1e-2, deterministic=True, heads=2, kv_heads=None):
    """Output and grads on a (1 batch, ``heads`` query heads over ``kv_heads`` kv heads (default as many), 1024
    tokens) slice vs the float64 reference."""
    n0 = min(q.shape[1], 1024)
    sl = (slice(0, 1), slice(0, n0), slice(0, heads))
    kv_sl = sl[:2] + (slice(0, kv_heads or heads),)
    qs = q.detach()[sl].contiguous().requires_grad_()
    ks, vs = (x.detach()[kv_sl].contiguous().requires_grad_() for x in (k, v))
    out = run_ours(mode, qs, ks, vs, a[sl].contiguous(), b[kv_sl].contiguous(), deterministic)
    ref_fn = reference.qk_sparse_attention if mode == "qk" else reference.hash_sparse_attention
    ref = ref_fn(qs, ks, vs, a[sl], b[kv_sl])
    dout = torch.randn_like(out)
    g = torch.autograd.grad(out, (qs, ks, vs), dout)
    gr = torch.autograd.grad(ref, (qs, ks, vs), dout.double())
    errs = dict(out=rel_err(out, ref), **{f"d{n}": rel_err(x, y) for n, x, y in zip("qkv", g, gr)})
    bad = {n: e for n, e in errs.items() if not e <= tol}
    if bad:
        raise AssertionError(f"leanattn {mode} (deterministic={deterministic}): relative error above {tol}: {bad}")
    return errs


# ----------------------------------------------------------------------------------------------
# peers


def dense_sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def f(q, k, v):
        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return o.transpose(1, 2)
    return f


class Flex:
    """flex_attention on the sorted tensors, BlockMask from our block ranges."""

    def __init__(self):
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
        self.BlockMask = BlockMask
        self.flex = torch.compile(flex_attention, dynamic=True)

    def block_mask(self, lay, B, H, N):
        r = L.block_ranges_q(lay, FLEX_BLOCK, FLEX_BLOCK).view(B, H, -1, 4).long()
        lo, flo, fhi, hi = (x[..., None] for x in r.unbind(-1))
        nkb = triton.cdiv(N, FLEX_BLOCK)
        j = torch.arange(nkb, device=r.device)
        n1 = flo - lo
        partial = torch.where(j < n1, lo + j, fhi + j - n1).clamp(0, nkb - 1)
        full = (flo + j).clamp(max=nkb - 1)
        qg, kg = (x.view(B, H, N) for x in (lay.q_group, lay.k_group))
        qp, kp = (x.view(B, H, N) for x in (lay.q_perm, lay.k_perm))

        def mask_mod(b, h, qi, ki):
            return (qg[b, h, qi] == kg[b, h, ki]) & (qp[b, h, qi] >= kp[b, h, ki])
        return self.BlockMask.from_kv_blocks(
            (n1 + hi - fhi)[..., 0].int(), partial.int(), (fhi - flo)[..., 0].int(), full.int(),
            BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(N, N))

    @staticmethod
    def gather(x, perm):
        # (B, N, H, D) -> (B, H, N, D) in sorted order
        B, N, H, Dh = x.shape
        idx = perm.view(B, H, N, 1).long().expand(B, H, N, Dh)
        return x.transpose(1, 2).gather(2, idx)

    @staticmethod
    def scatter(o, perm):
        B, H, N, Dh = o.shape
        idx = perm.view(B, H, N, 1).long().expand(B, H, N, Dh)
        return torch.zeros_like(o).scatter(2, idx, o).transpose(1, 2)

    def e2e(self, mode, q, k, v, a, b):
        B, N, H, _ = q.shape
        lay = sparse_layout(mode, a, b)
        bm = self.block_mask(lay, B, H, N)
        o = self.flex(self.gather(q, lay.q_perm), self.gather(k, lay.k_perm), self.gather(v, lay.k_perm),
                      block_mask=bm)
        return self.scatter(o, lay.q_perm)


# ----------------------------------------------------------------------------------------------


def suite(quick: bool, smoke: bool, only_shapes: str = "", only_ns: str = ""):
    """(shapes, ns, configs); ``only_shapes`` ("8x12,4x48") and ``only_ns`` ("4k,16k") keep a part of
    the full suite, so it can be run in pieces that each fit a device call."""
    if smoke:
        return [(1, 2)], [256], [("qk", 0.0), ("qk", 0.5), ("hash", 1), ("hash", 4)]
    shapes = [(4, 48)] if quick else [(4, 48), (8, 12)]
    ns = [8 * K, 32 * K] if quick else [4 * K, 8 * K, 16 * K, 32 * K]
    drops = [0.5] if quick else [0.2, 0.5, 0.8]
    buckets = [16, 64] if quick else [2, 8, 16, 64]
    configs = [("qk", 0.0)] + [("qk", p) for p in drops] + [("hash", 1)] + [("hash", nb) for nb in buckets]
    if only_shapes:
        keep = {tuple(int(x) for x in s.split("x")) for s in only_shapes.split(",")}
        shapes = [s for s in shapes if s in keep]
    if only_ns:
        keep = {int(x.lower().rstrip("k")) * K for x in only_ns.split(",")}
        ns = [n for n in ns if n in keep]
    return shapes, ns, configs


def dense_limit(mode, param):
    return (mode == "qk" and param == 0.0) or (mode == "hash" and param == 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="B=4,H=48; N 8k, 32k; drop 0.5; buckets 16, 64")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes; runs on a CPU (interpreter) to test the script")
    ap.add_argument("--no-flex", action="store_true", help="skip the flex_attention peer")
    ap.add_argument("--shapes", default="", help="keep these (B, H) of the suite, e.g. 8x12")
    ap.add_argument("--ns", default="", help="keep these sequence lengths of the suite, e.g. 4k,16k")
    ap.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results"))
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="start no new (B, H, N) case after this many seconds (default 330)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("needs CUDA (or --smoke for a CPU plumbing check)")
    T = timer(device)
    torch.manual_seed(0)
    shapes, ns, configs = suite(args.quick, args.smoke, args.shapes, args.ns)
    from torch.nn.attention import SDPBackend
    dense_backends = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}
    if device == "cpu":
        dense_backends = {"sdpa_flash": SDPBackend.FLASH_ATTENTION}
    flex = None
    if not args.no_flex:
        try:
            from torch import _dynamo
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            flex = Flex()
        except Exception as e:  # pragma: no cover - older torch
            print("flex_attention unavailable:", e)
    rows, errors = [], []
    t_start = time.time()
    skipped = []
    for B, H in shapes:
        for N in ns:
            if time.time() - t_start > args.budget_s:
                skipped.append(dict(B=B, H=H, N=N))
                print(f"B={B} H={H} N={N}: skipped, past --budget-s {args.budget_s:.0f}")
                continue
            q, k, v = (torch.randn(B, N, H, D, dtype=DTYPE, device=device).requires_grad_() for _ in range(3))
            dense_pairs = B * H * N * (N + 1) // 2
            base = dict(B=B, H=H, N=N, D=D, dtype=str(DTYPE).replace("torch.", ""))
            flash_both = None
            outs = {}
            for name, backend in dense_backends.items():
                try:
                    f = dense_sdpa(backend)
                    outs[name] = f(q, k, v).detach()
                    assert outs[name].float().norm() > 0
                    t = time_fwd_bwd(T, lambda: f(q, k, v), [q, k, v])
                    rows.append(dict(base, impl=name, mode="dense", param=None, pairs=dense_pairs, **t))
                    if name == "sdpa_flash":
                        flash_both = t["both_ms"]
                except Exception as e:
                    errors.append(dict(base, impl=name, error=repr(e)))
                    print(f"  {name} B={B} H={H} N={N}: {e!r}")
            if len(outs) == 2:
                err = rel_err(outs["sdpa_cudnn"], outs["sdpa_flash"])
                assert err < 2e-2, f"cuDNN vs FLASH relative difference {err:.2e}"
            for mode, param in configs:
                a, b = make_pattern(mode, param, B, N, H, device)
                pairs = visible_pairs(sparse_layout(mode, a, b))
                case = dict(base, mode=mode, param=param, pairs=pairs, density=pairs / dense_pairs)
                try:
                    errs = check_ours(mode, q, k, v, a, b)
                    out = run_ours(mode, q, k, v, a, b).detach()
                    assert out.float().norm() > 0, "output is all zeros"
                    t = time_fwd_bwd(T, lambda: run_ours(mode, q, k, v, a, b), [q, k, v])
                    rows.append(dict(case, impl="leanattn", ref_errors=errs, **t,
                                     speedup_vs_flash=(flash_both / t["both_ms"]) if flash_both else None))
                    # deterministic=False: dQ by float32 atomics (FlashAttention-2's scheme)
                    check_ours(mode, q, k, v, a, b, deterministic=False)
                    dout = torch.randn_like(q)
                    both = T(lambda: run_ours(mode, q, k, v, a, b, False).backward(dout), grad_to_none=[q, k, v])
                    rows.append(dict(case, impl="leanattn_atomic", both_ms=both,
                                     speedup_vs_flash=(flash_both / both) if flash_both else None))
                except Exception as e:
                    traceback.print_exc()
                    errors.append(dict(case, impl="leanattn", error=repr(e)))
                    continue
                if flex is None or dense_limit(mode, param):
                    continue
                try:
                    with torch.no_grad():
                        out_flex = flex.e2e(mode, q.detach(), k.detach(), v.detach(), a, b)
                    err = rel_err(out_flex, out)
                    print(f"  flex vs leanattn {mode} {param}: relative difference {err:.1e}")
                    assert err < 2e-2, f"flex vs leanattn relative difference {err:.2e}"
                    if device != "cuda":  # flex has no CPU backward; the check above is what --smoke tests
                        continue
                    lay = sparse_layout(mode, a, b)
                    bm = flex.block_mask(lay, B, H, N)
                    qs, ks, vs = (flex.gather(x.detach(), p).requires_grad_()
                                  for x, p in ((q, lay.q_perm), (k, lay.k_perm), (v, lay.k_perm)))
                    t = time_fwd_bwd(T, lambda: flex.flex(qs, ks, vs, block_mask=bm), [qs, ks, vs])
                    rows.append(dict(case, impl="flex", flex_vs_leanattn=err, **t,
                                     speedup_vs_flash=(flash_both / t["both_ms"]) if flash_both else None))
                    dout = torch.randn_like(q)
                    both = T(lambda: flex.e2e(mode, q, k, v, a, b).backward(dout), grad_to_none=[q, k, v])
                    rows.append(dict(case, impl="flex_e2e", both_ms=both,
                                     speedup_vs_flash=(flash_both / both) if flash_both else None))
                except Exception as e:
                    traceback.print_exc()
                    errors.append(dict(case, impl="flex", error=repr(e)))
            print(f"B={B} H={H} N={N} done at {time.time() - t_start:.0f} s", flush=True)
            q = k = v = outs = None  # free before the next, larger case
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    for r in rows:
        flop_fwd = 4 * D * r["pairs"]
        for key, mult in (("fwd", 1.0), ("bwd", 2.5), ("both", 3.5)):
            if r.get(f"{key}_ms"):
                r[f"{key}_tflops"] = flop_fwd * mult / (r[f"{key}_ms"] * 1e-3) / 1e12
    from leanattn.sparse.api import sparse_config
    tiles = {mode: sparse_config(D, torch.device(device), hashed=mode == "hash").__dict__ for mode in ("qk", "hash")}
    ceilings = (dict(bandwidth=common.read_bandwidth_gbs(), matmul_tflops=common.matmul_tflops())
                if device == "cuda" else {})
    payload = dict(env=common.env_info(), suite="sparse", args=vars(args), tiles=tiles, ceilings=ceilings,
                   wall_s=time.time() - t_start,
                   rows=rows, errors=errors, skipped=skipped, bars=bars(rows))
    stem = "sparse_" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S") + (
        "_smoke" if args.smoke else "_quick" if args.quick else "") + (
        "_" + args.shapes.replace(",", "_") if args.shapes else "") + ("_" + args.ns.replace(",", "_") if args.ns else "")
    md = table(rows, payload)
    paths = common.write_results(args.out, stem, payload, md)
    png = os.path.join(args.out, stem + ".png")
    try:
        plot(rows, png)
        paths.append(png)
    except Exception as e:  # matplotlib missing
        print("no plot:", e)
    print(md)
    print("wrote", *paths)


def _find(rows, impl, B, H, N, mode, param):
    for r in rows:
        if (r["impl"], r["B"], r["H"], r["N"], r["mode"], r["param"]) == (impl, B, H, N, mode, param):
            return r
    return None


def bars(rows):
    """The issue's GPU bars, where this run measured them."""
    out = []
    for r in rows:
        if r["impl"] not in ("leanattn", "leanattn_atomic") or not r.get("speedup_vs_flash"):
            continue
        if dense_limit(r["mode"], r["param"]):
            ratio = 1 / r["speedup_vs_flash"]
            out.append(dict(bar="dense limit within 1.25x of FLASH (fwd+bwd)", impl=r["impl"], B=r["B"], H=r["H"],
                            N=r["N"], mode=r["mode"], value=ratio, ok=ratio <= 1.25))
        if (r["B"], r["H"], r["N"]) == (4, 48, 32 * K):
            need = {("qk", 0.5): 2.5, ("hash", 16): 2.7, ("hash", 64): 6.0}.get((r["mode"], r["param"]))
            if need:
                out.append(dict(bar=f"speed-up >= {need}x over FLASH at 32k, B=4, H=48", impl=r["impl"], mode=r["mode"],
                                param=r["param"], value=r["speedup_vs_flash"], ok=r["speedup_vs_flash"] >= need))
    return out


def table(rows, payload) -> str:
    env = payload["env"]
    lines = [f"# Sparse flash attention, {env.get('device')} (torch {env['torch']}, triton {env['triton']}, "
             f"{env['date']})\n",
             "bf16, D=64, causal. Times in ms (median of do_bench); fwd+bwd includes compaction/sorting and "
             "block ranges for leanattn, and for flex_e2e also building the BlockMask and gathers. Speed-up is "
             "sdpa_flash fwd+bwd / method fwd+bwd." + (
                 f" Measured ceilings: bf16 matmul {payload['ceilings']['matmul_tflops']:.0f} TFLOP/s, "
                 f"HBM read {payload['ceilings']['bandwidth']['read_ceiling']:.0f} GB/s."
                 if payload.get("ceilings") else "") + "\n"]
    header = ["B", "H", "N", "pattern", "density", "ours fwd", "ours bwd", "ours fwd+bwd", "ours TFLOP/s",
              "ours atomic-dQ fwd+bwd", "FLASH fwd+bwd", "cuDNN fwd+bwd", "flex fwd+bwd", "flex e2e fwd+bwd",
              "speed-up ours", "speed-up ours atomic", "speed-up flex e2e"]
    body = []
    for r in rows:
        if r["impl"] != "leanattn":
            continue
        key = (r["B"], r["H"], r["N"])
        fl = _find(rows, "sdpa_flash", *key, "dense", None)
        cu = _find(rows, "sdpa_cudnn", *key, "dense", None)
        fx = _find(rows, "flex", *key, r["mode"], r["param"])
        fe = _find(rows, "flex_e2e", *key, r["mode"], r["param"])
        at = _find(rows, "leanattn_atomic", *key, r["mode"], r["param"])
        pat = f"drop {r['param']}" if r["mode"] == "qk" else f"{r['param']} buckets"
        body.append([r["B"], r["H"], f"{r['N'] // K}k" if r["N"] >= K else r["N"], pat, r["density"],
                     r["fwd_ms"], r["bwd_ms"], r["both_ms"], r.get("both_tflops", float("nan")),
                     at["both_ms"] if at else "-", fl["both_ms"] if fl else "-", cu["both_ms"] if cu else "-",
                     fx["both_ms"] if fx else "-",
                     fe["both_ms"] if fe else "-", r["speedup_vs_flash"] or "-",
                     (at["speedup_vs_flash"] or "-") if at else "-",
                     (fl["both_ms"] / fe["both_ms"]) if (fl and fe) else "-"])
    md = "\n".join(lines) + "\n" + common.markdown_table(header, body)
    if payload["bars"]:
        md += "\n## Bars\n\n" + common.markdown_table(
            ["bar", "impl", "case", "value", "ok"],
            [[b["bar"], b["impl"], f"{b['mode']} {b.get('param', '')} N={b.get('N', 32 * K)}", b["value"], b["ok"]]
             for b in payload["bars"]])
    if payload["skipped"]:
        md += "\n## Skipped (time budget)\n\n" + "\n".join(f"- {x}" for x in payload["skipped"]) + "\n"
    if payload["errors"]:
        md += "\n## Errors\n\n" + "\n".join(f"- {e}" for e in payload["errors"]) + "\n"
    return md


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = sorted({(r["B"], r["H"]) for r in rows if r["impl"] == "leanattn"})
    fig, axes = plt.subplots(len(shapes), 2, figsize=(11, 4 * len(shapes)), squeeze=False)
    for i, (B, H) in enumerate(shapes):
        for j, mode in enumerate(("qk", "hash")):
            ax = axes[i][j]
            params = sorted({r["param"] for r in rows if r["impl"] == "leanattn" and r["mode"] == mode})
            for c, p in enumerate(params):
                color = f"C{c}"
                for impl, style in (("leanattn", "-o"), ("flex_e2e", "--x")):
                    pts = sorted((r["N"], r["speedup_vs_flash"]) for r in rows
                                 if r["impl"] == impl and (r["B"], r["H"], r["mode"], r["param"]) == (B, H, mode, p)
                                 and r.get("speedup_vs_flash"))
                    if pts:
                        label = f"drop {p}" if mode == "qk" else f"{p} buckets"
                        label += "" if impl == "leanattn" else " flex"
                        ax.plot([x for x, _ in pts], [y for _, y in pts], style, color=color, label=label)
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xlabel("N (tokens)")
            ax.set_ylabel("speed-up over SDPA FLASH, fwd+bwd")
            ax.set_title(f"{'QK-sparse' if mode == 'qk' else 'hash-sparse'}, B={B}, H={H}, D=64, bf16")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
