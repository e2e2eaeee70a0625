"""``leanattn.generate``: a lean generation loop for Llama-family models on leanattn's decode kernels.

Prefill runs through SDPA in chunks straight into a paged KV cache; every decode step then runs
``leanattn.decode`` over the paged cache, or, with ``samples > 1``, ``leanattn.bifurcated_decode``
over each prompt's KV (stored once) plus each sample's own pages. The decode step keeps lengths and
positions in device tensors and never syncs with the host, so on a GPU it is captured once in a
CUDA graph and replayed: one launch per token instead of a few hundred.

With ``speculate=K`` (greedy only) each step instead verifies ``K`` draft tokens looked up in the row's own text
(prompt lookup: the tokens that followed the latest earlier occurrence of its last n-gram) in one forward of
``K + 1`` tokens, whose attention is one ``leanattn.decode`` call with ``q (rows, K + 1, Hq, D)``, ``causal=True``:
the drafts the model agrees with, and its own next token, are all kept, so a step emits 1 to ``K + 1`` tokens and the
output is the greedy output.
"""
from __future__ import annotations

import math
import numbers
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import checks
from .models.kv_cache import PagedKVCache
from .models.llama import LlamaModel, sdpa_causal
from .models.loader import get_model
from .ops.bifurcated import bifurcated_decode
from .ops.decode import decode

__all__ = ["generate", "Generation"]


@dataclass
class Generation:
    """Result of :func:`generate`.

    Attributes
    ----------
    tokens : torch.Tensor
        ``(B * samples, max_new_tokens)`` int64 on the CPU; rows are prompt-major (all samples of
        prompt 0, then prompt 1, ...). After ``eos_token_id`` a row repeats it.
    prompt_lens : list of int
    prefill_s : float
        Wall seconds of the prefill (through the first token's logits).
    step_ms : list of float
        Milliseconds of each decode step (model forward over one token per row, plus sampling); CUDA
        event times on a GPU, wall times on the CPU. With ``speculate``: wall times of each speculative step,
        its draft lookup, host sync and bookkeeping included.
    kv_bytes : int
        Bytes of KV cache allocated (prompt caches once, plus the samples' own pages).
    weight_bytes : int
    logits : torch.Tensor or None
        ``(B * samples, max_new_tokens, vocab)`` float32 logits each token was drawn from, when asked.
    cache : PagedKVCache or None
        With ``return_cache=True``: the cache holding the prompts (their KV at positions
        ``[0, prompt_len)``), e.g. to hand the prefilled KV to another implementation.
    step_tokens : list of float
        With ``speculate``: the tokens each step emitted, averaged over all rows (a generating row emits 1 to
        ``speculate + 1``, a stopped one 0); empty otherwise (one a step).
    """

    tokens: torch.Tensor
    prompt_lens: list
    prefill_s: float
    step_ms: list
    kv_bytes: int
    weight_bytes: int
    cuda_graph: bool = False
    logits: Optional[torch.Tensor] = field(default=None, repr=False)
    cache: Optional[PagedKVCache] = field(default=None, repr=False)
    step_tokens: list = field(default_factory=list)

    def summary(self) -> dict:
        """Per-step timing summary: median / mean / p10 / p90 ms, tokens per second, bytes."""
        s = sorted(self.step_ms)
        rows = self.tokens.shape[0]
        out = dict(rows=rows, new_tokens=self.tokens.shape[1], prefill_s=round(self.prefill_s, 4),
                   kv_bytes=self.kv_bytes, weight_bytes=self.weight_bytes, cuda_graph=self.cuda_graph)
        if s:
            med = statistics.median(s)
            out.update(step_ms_median=med, step_ms_mean=statistics.fmean(s), step_ms_p10=s[len(s) // 10],
                       step_ms_p90=s[min(len(s) - 1, (9 * len(s)) // 10)], tokens_per_s=rows * 1e3 / med)
            if self.step_tokens:
                # speculative steps emit several tokens a row: the rate is every row's tokens over the steps' time
                per_step = statistics.fmean(self.step_tokens)
                out.update(tokens_per_step=per_step,
                           tokens_per_s=rows * per_step * 1e3 / statistics.fmean(s))
        return out

    def __str__(self) -> str:
        m = self.summary()
        line = (f"{m['rows']} rows x {m['new_tokens']} tokens: prefill {m['prefill_s'] * 1e3:.1f} ms, "
                f"KV {m['kv_bytes'] / 2**20:.1f} MiB")
        if "step_ms_median" in m:
            line += (f", decode step median {m['step_ms_median']:.3f} ms (p10 {m['step_ms_p10']:.3f}, "
                     f"p90 {m['step_ms_p90']:.3f}), {m['tokens_per_s']:.1f} tokens/s"
                     + (" [CUDA graph]" if self.cuda_graph else ""))
        return line


class _Progress:
    """tqdm when installed, else a line every tenth of the way (no-op when disabled)."""

    def __init__(self, total: int, enabled: bool, desc: str = "decode"):
        self.bar, self.total, self.n, self.enabled = None, total, 0, enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr)
            except ImportError:
                self.every = max(1, total // 10)

    def update(self):
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (self.n % self.every == 0 or self.n == self.total):
            print(f"decode {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _pad_prompts(prompts, device) -> tuple[torch.Tensor, list]:
    """``(B, Lmax)`` int64 right-padded with 0, and the lengths."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2 or prompts.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"prompts: expected a (B, L) integer tensor, got shape {tuple(prompts.shape)} "
                             f"dtype {prompts.dtype}")
        seqs = [row for row in prompts.long()]
    else:
        seqs = [torch.as_tensor(list(p), dtype=torch.long) for p in prompts]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("prompts: expected at least one prompt, each with at least one token")
    lens = [len(s) for s in seqs]
    out = torch.zeros(len(seqs), max(lens), dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s.cpu()
    return out.to(device), lens


@torch.no_grad()
def _prefill(model: LlamaModel, cache: PagedKVCache, tokens: torch.Tensor, lens: list, chunk: int) -> torch.Tensor:
    """Fill ``cache`` with the prompts' KV, chunk by chunk; logits ``(B, vocab)`` at each last token.

    Prompts are right-padded: pad tokens sit after every real token of their row, so causal
    attention keeps them out of the real tokens; their cache slots are overwritten by decode.
    """
    B, L = tokens.shape
    last = torch.empty(B, model.config.hidden_size, dtype=model.dtype, device=tokens.device)
    for o in range(0, L, chunk):
        c = min(chunk, L - o)
        pos = torch.arange(o, o + c, device=tokens.device).expand(B, c)

        def attend(i, q, k, v):
            kc, vc = cache.seq_view(i)
            kc[:, o:o + c] = k
            vc[:, o:o + c] = v
            return sdpa_causal(q, kc[:, :o + c], vc[:, :o + c], model.scale, model.config.sliding_window)
        h = model.hidden(tokens[:, o:o + c], pos, attend)
        for b, n in enumerate(lens):
            if o <= n - 1 < o + c:
                last[b] = h[b, n - 1 - o]
    cache.seqlens.copy_(torch.tensor(lens, dtype=torch.int32))
    return model.logits(last)


class _Stepper:
    """One decode step over static buffers: ``tokens (R,)`` in, ``logits (R, vocab)`` out.

    ``prefix`` set: bifurcated attention over ``prefix`` (prompt caches, read once per prompt) and
    ``cache`` (each sample's own tokens); else plain paged decode over ``cache``.
    """

    def __init__(self, model: LlamaModel, cache: PagedKVCache, prefix: Optional[PagedKVCache] = None,
                 samples: int = 1, schedule: str = "lean"):
        self.model, self.cache, self.prefix, self.schedule = model, cache, prefix, schedule
        R = cache.batch
        dev = model.device
        self.tokens = torch.zeros(R, dtype=torch.long, device=dev)
        self.logits = torch.empty(R, model.config.vocab_size, dtype=torch.float32, device=dev)
        if prefix is not None:
            self.samples = samples
            self.prefix_ids = torch.arange(prefix.batch, dtype=torch.int32, device=dev).repeat_interleave(samples)
            self.prefix_lens = prefix.seqlens  # fixed after prefill
            self.prefix_pos = self.prefix_lens.long().repeat_interleave(samples)
        window = model.config.sliding_window
        self.window_left = -1 if window is None else window - 1
        self.graph = None

    def _attend(self, i, q, k, v):
        c = self.cache
        c.write(i, k[:, 0], v[:, 0], self._where)
        if self.prefix is None:
            out = decode(q[:, 0], c.k[i], c.v[i], self._lens_after, c.block_table, schedule=self.schedule,
                         window_left=self.window_left)
        else:
            pk, pv = self.prefix.seq_view(i)
            out = bifurcated_decode(q[:, 0], pk, pv, c.k[i], c.v[i], self._lens_after, c.block_table,
                                    prefix_lens=self.prefix_lens, prefix_ids=self.prefix_ids,
                                    max_group_size=self.samples, window_left=self.window_left)
        return out[:, None]

    def step(self):
        """Eager step: attend, write the new keys/values, advance the lengths (all on the device)."""
        own = self.cache.seqlens
        self._where = self.cache.locate(own)
        self._lens_after = own + 1
        pos = own.long() if self.prefix is None else self.prefix_pos + own.long()
        h = self.model.hidden(self.tokens[:, None], pos[:, None], self._attend)
        self.logits.copy_(self.model.logits(h[:, 0]))
        own.copy_(self._lens_after)

    def capture(self):
        """Capture :meth:`step` in a CUDA graph. Warm-up steps run on a side stream (compiling the
        kernels, sizing workspaces); they write the slot the next real step overwrites, and the
        lengths are restored after each."""
        saved = self.cache.seqlens.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.step()
                self.cache.seqlens.copy_(saved)
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()
        torch.cuda.synchronize()

    def run(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()


class _Verifier(_Stepper):
    """One speculative step over static buffers: ``tokens (R, K + 1)`` (each row's last token, then ``K`` drafts) in,
    ``logits (R, K + 1, vocab)`` out. The ``K + 1`` new keys and values are written at the rows' next positions and
    attended in one :func:`leanattn.decode` call with ``K + 1`` causal query tokens; the lengths are left for the
    caller to advance by what it accepts (keys past that are overwritten by the next step)."""

    def __init__(self, model: LlamaModel, cache: PagedKVCache, drafts: int, schedule: str = "lean"):
        super().__init__(model, cache, schedule=schedule)
        R = cache.batch
        self.tokens = torch.zeros(R, drafts + 1, dtype=torch.long, device=model.device)
        self.logits = torch.empty(R, drafts + 1, model.config.vocab_size, dtype=torch.float32, device=model.device)
        self.offsets = torch.arange(drafts + 1, device=model.device)

    def _attend(self, i, q, k, v):
        c = self.cache
        c.write(i, k, v, self._where)  # all K + 1 tokens in one indexed store
        return decode(q, c.k[i], c.v[i], self._lens_after, c.block_table, schedule=self.schedule,
                      window_left=self.window_left, causal=True)

    def step(self):
        own = self.cache.seqlens
        pos = own.long()[:, None] + self.offsets
        self._where = self.cache.locate(pos)
        self._lens_after = own + self.tokens.shape[1]
        h = self.model.hidden(self.tokens, pos, self._attend)
        self.logits.copy_(self.model.logits(h))


# the longest n-gram a speculative step looks up in its row's text
LOOKUP_NGRAM = 3


def lookup_drafts(seq: np.ndarray, k: int, ngram: int = LOOKUP_NGRAM) -> np.ndarray:
    """``k`` draft tokens for the int64 token sequence ``seq`` (prompt lookup decoding): the tokens that followed the
    latest earlier occurrence of its last ``ngram`` tokens (else of fewer, down to one), padded with the last of
    them; the last token repeated where none occurs."""
    n = len(seq)
    for g in range(min(ngram, n - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(seq[:n - 1], g)
        hits = np.flatnonzero((windows == seq[n - g:]).all(1))
        if hits.size:
            follow = seq[hits[-1] + g:hits[-1] + g + k]
            return np.concatenate([follow, np.full(k - len(follow), follow[-1], dtype=seq.dtype)])
    return np.full(k, seq[-1], dtype=seq.dtype)


class PromptLookup:
    """:func:`lookup_drafts` for rows of tokens that grow, in time independent of their length: each row keeps an index
    of its n-grams (1 to ``ngram`` tokens), each mapped to its latest start that has a token after it, and extends it
    as tokens are appended (a rescan of a 128k-token row costs milliseconds a step).

    Parameters
    ----------
    rows : sequence of np.ndarray
        Each row's int64 tokens so far (prompt and first token).
    capacity : int
        The most tokens a row will hold.
    ngram : int
        The longest n-gram looked up.
    """

    def __init__(self, rows, capacity: int, ngram: int = LOOKUP_NGRAM):
        self.ngram = ngram
        self.buf, self.size, self.index = [], [], []
        for r in rows:
            self.buf.append(np.empty(max(capacity, len(r)), dtype=np.int64))
            self.size.append(0)
            self.index.append([{} for _ in range(ngram)])
            self.extend(len(self.buf) - 1, r)

    def row(self, b: int) -> np.ndarray:
        """Row ``b``'s tokens so far (a view)."""
        return self.buf[b][:self.size[b]]

    def extend(self, b: int, new: np.ndarray) -> None:
        """Append ``new`` tokens to row ``b`` and index the n-grams they give a next token to."""
        n0, buf = self.size[b], self.buf[b]
        n1 = n0 + len(new)
        buf[n0:n1] = new
        self.size[b] = n1
        for g in range(1, self.ngram + 1):
            lo, hi = max(0, n0 - g), n1 - g  # starts i with i + g <= n - 1 now, not before
            if hi <= lo:
                continue
            win = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(buf[lo:hi + g - 1], g))
            keys = win.view(np.dtype((np.void, 8 * g))).ravel().tolist()
            self.index[b][g - 1].update(zip(keys, range(lo, hi)))  # later starts overwrite: the latest is kept

    def drafts(self, b: int, k: int) -> Optional[np.ndarray]:
        """``lookup_drafts(self.row(b), k, ngram)``, or None where it would fall back to repeating the last token
        (no earlier occurrence of even that one)."""
        n, buf = self.size[b], self.buf[b]
        for g in range(min(self.ngram, n - 1), 0, -1):
            i = self.index[b][g - 1].get(buf[n - g:n].tobytes())
            if i is not None:
                follow = buf[i + g:min(i + g + k, n)]
                return np.concatenate([follow, np.full(k - len(follow), follow[-1], dtype=np.int64)])
        return None


def _sample(logits: torch.Tensor, temperature: float, top_k: int, generator) -> torch.Tensor:
    """``(R,)`` int64 token ids from ``(R, vocab)`` float32 logits (greedy when temperature <= 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits / temperature
    if top_k > 0:
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.multinomial(scaled.softmax(-1), 1, generator=generator)[:, 0]


def generate(
    model: Union[LlamaModel, str],
    prompts: Union[torch.Tensor, Sequence[Sequence[int]]],
    max_new_tokens: int = 32,
    *,
    samples: int = 1,
    temperature: float = 0.0,
    top_k: int = 0,
    eos_token_id: Optional[int] = None,
    page_size: int = 64,
    prefill_chunk: int = 4096,
    use_cuda_graph: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    output_logits: bool = False,
    return_cache: bool = False,
    schedule: str = "lean",
    speculate: int = 0,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
) -> Generation:
    """Generate continuations of token-id prompts with a Llama-family model on leanattn's kernels.

    Parameters
    ----------
    model : LlamaModel or str
        A model, a checkpoint directory (``config.json`` + safetensors) or a shape name
        (``"llama-3-8b"``, ``"llama-3.2-1b"``, ``"phi-3-medium"``, ``"tiny"``, ...; random weights).
    prompts : torch.Tensor or sequence of sequences of int
        ``(B, L)`` token ids, or ``B`` lists of ids of any lengths (no padding needed).
    max_new_tokens : int
        Tokens generated per row (the first from the prefill, the rest from decode steps).
    samples : int, keyword-only
        Continuations per prompt. With ``samples > 1`` each prompt's KV is stored once and decode
        attends through :func:`leanattn.bifurcated_decode`.
    temperature : float
        0 (default): greedy. Otherwise softmax sampling at this temperature, ``top_k`` > 0 keeps the
        ``top_k`` largest logits.
    eos_token_id : int, optional
        A row that emits it repeats it; decoding stops early when every row has (checked every 32
        steps, one host sync each). Default: exactly ``max_new_tokens``.
    page_size : int
        Tokens per KV page.
    prefill_chunk : int
        Prompt tokens per prefill forward (bounds prefill memory at long contexts).
    use_cuda_graph : bool, optional
        Capture the decode step in a CUDA graph. Default: on for CUDA models, off on the CPU.
    generator : torch.Generator, optional
        For sampling (on the model's device).
    progress : bool
        Show a progress bar (tqdm when installed).
    output_logits : bool
        Also return the logits each token was drawn from (memory: rows x tokens x vocab floats).
    return_cache : bool
        Keep the prompts' KV cache in the result (``Generation.cache``) instead of freeing it.
    schedule : {"lean", "split", "batch_invariant"}
        Decode schedule of :func:`leanattn.decode` (single-sample path; ``"batch_invariant"``: each row's attention
        bitwise the same whatever the batch).
    speculate : int
        Greedy speculative decoding with ``speculate`` draft tokens a step, looked up in each row's own text (prompt
        lookup: what followed the latest earlier occurrence of its last 3, 2 or 1 tokens) and verified in one forward
        of ``speculate + 1`` tokens a row, whose attention reads each row's cache once (``leanattn.decode`` with
        several causal query tokens). The tokens are the greedy ones; a step emits 1 to ``speculate + 1`` of them
        (``Generation.step_tokens``), and costs one host sync. A step where no row finds a draft runs one token a
        row. 0 (default): one token a step. Needs
        ``temperature=0`` and ``samples=1``.
    device, dtype : optional
        Where to put a model given by name or path (default: CUDA when available; bfloat16 for shapes).

    Returns
    -------
    Generation
        Tokens ``(B * samples, max_new_tokens)``, timings (:meth:`Generation.summary`) and KV bytes.

    Examples
    --------
    >>> out = leanattn.generate("llama-3.2-1b", torch.randint(0, 128256, (1, 8192)), 64, samples=16,
    ...                         temperature=0.8, device="cuda")
    >>> print(out)  # per-step timing summary
    """
    if isinstance(model, str):
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = get_model(model, dev, dtype)
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a leanattn LlamaModel, a checkpoint path or a shape name, "
                        f"got {type(model).__name__}")
    # (TypeError for another type, numpy integers taken; a bool was taken as a count, an unchecked flag by its truth)
    max_new_tokens = checks.int_at_least("max_new_tokens", max_new_tokens, 1)
    samples = checks.int_at_least("samples", samples, 1)
    prefill_chunk = checks.int_at_least("prefill_chunk", prefill_chunk, 1)
    speculate = checks.int_at_least("speculate", speculate, 0)
    top_k = checks.int_at_least("top_k", top_k, 0)
    page_size = checks.int_at_least("page_size", page_size, 1)
    if eos_token_id is not None:
        eos_token_id = checks.int_at_least("eos_token_id", eos_token_id, 0)
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, bool):
        raise TypeError(f"temperature: expected a float >= 0, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature: expected a finite float >= 0 (0: greedy), got {temperature}")
    progress, output_logits = checks.flag("progress", progress), checks.flag("output_logits", output_logits)
    return_cache = checks.flag("return_cache", return_cache)
    use_cuda_graph = checks.optional_flag("use_cuda_graph", use_cuda_graph)
    schedule = checks.schedule(schedule)  # (decode checks it too, but only after the prefill)
    if speculate and (samples != 1 or temperature > 0):
        raise ValueError(f"speculate: expected 0 with samples > 1 or temperature > 0 (speculative steps are greedy "
                         f"and single-sample), got {speculate} with samples={samples}, temperature={temperature}")
    dev = model.device
    cuda = dev.type == "cuda"
    if use_cuda_graph is None:
        use_cuda_graph = cuda
    if use_cuda_graph and not cuda:
        raise ValueError(f"use_cuda_graph: expected False for a model on {dev} (graphs need CUDA), got True")
    tokens, lens = _pad_prompts(prompts, dev)
    if int(tokens.max()) >= model.config.vocab_size or int(tokens.min()) < 0:
        raise ValueError(f"prompts: expected token ids in [0, {model.config.vocab_size}), got ids in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    c = model.config
    B, L = tokens.shape
    rows = B * samples
    kv = dict(num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
              page_size=page_size, dtype=model.dtype, device=dev)

    def now():
        if cuda:
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    t0 = now()
    if samples == 1:
        # a speculative step writes its drafts' keys past the last token kept
        cache = PagedKVCache(batch=B, capacity=L + max_new_tokens + speculate, **kv)
        logits = _prefill(model, cache, tokens, lens, prefill_chunk)
        stepper = (_Verifier(model, cache, speculate, schedule) if speculate
                   else _Stepper(model, cache, schedule=schedule))
        caches = [cache]
    else:
        prefix = PagedKVCache(batch=B, capacity=L, **kv)
        logits = _prefill(model, prefix, tokens, lens, prefill_chunk).repeat_interleave(samples, dim=0)
        own = PagedKVCache(batch=rows, capacity=max_new_tokens, **kv)
        stepper = _Stepper(model, own, prefix=prefix, samples=samples)
        caches = [prefix, own]
    out = torch.empty(rows, max_new_tokens, dtype=torch.long, device=dev)
    all_logits = torch.empty(rows, max_new_tokens, c.vocab_size, device=dev) if output_logits else None
    done = torch.zeros(rows, dtype=torch.bool, device=dev)

    def emit(t, lg):
        tok = _sample(lg, temperature, top_k, generator)
        if eos_token_id is not None:
            tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
            done.logical_or_(tok == eos_token_id)
        out[:, t] = tok
        if all_logits is not None:
            all_logits[:, t] = lg
        stepper.tokens.copy_(tok)

    if speculate:
        # (emit's stepper.tokens.copy_ is the one-token loop's; the speculative loop feeds its verifier itself)
        out[:, 0] = _sample(logits, temperature, top_k, generator)
        if all_logits is not None:
            all_logits[:, 0] = logits
        prefill_s = now() - t0
        step_ms, step_tokens = _speculative_loop(stepper, tokens, lens, out, all_logits, eos_token_id,
                                                 use_cuda_graph and max_new_tokens > 1, progress)
        return Generation(tokens=out.cpu(), prompt_lens=lens, prefill_s=prefill_s, step_ms=step_ms,
                          kv_bytes=sum(x.nbytes for x in caches), weight_bytes=model.weight_bytes(),
                          cuda_graph=stepper.graph is not None,
                          logits=None if all_logits is None else all_logits.cpu(),
                          cache=caches[0] if return_cache else None, step_tokens=step_tokens)
    emit(0, logits)
    prefill_s = now() - t0
    if use_cuda_graph and max_new_tokens > 1:
        stepper.capture()
    bar = _Progress(max_new_tokens - 1, progress)
    events, step_ms = [], []
    for t in range(1, max_new_tokens):
        if cuda:
            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            ev[0].record()
        else:
            w0 = time.perf_counter()
        stepper.run()
        emit(t, stepper.logits)
        if cuda:
            ev[1].record()
            events.append(ev)
        else:
            step_ms.append((time.perf_counter() - w0) * 1e3)
        bar.update()
        if eos_token_id is not None and t % 32 == 0 and bool(done.all()):
            out[:, t + 1:] = eos_token_id
            break
    bar.close()
    if cuda:
        torch.cuda.synchronize(dev)
        step_ms = [a.elapsed_time(b) for a, b in events]
    return Generation(tokens=out.cpu(), prompt_lens=lens, prefill_s=prefill_s, step_ms=step_ms,
                      kv_bytes=sum(x.nbytes for x in caches), weight_bytes=model.weight_bytes(),
                      cuda_graph=stepper.graph is not None,
                      logits=None if all_logits is None else all_logits.cpu(),
                      cache=caches[0] if return_cache else None)


def _speculative_loop(verifier: _Verifier, tokens: torch.Tensor, lens: list, out: torch.Tensor,
                      all_logits: Optional[torch.Tensor], eos_token_id: Optional[int], graph: bool,
                      progress: bool) -> tuple[list, list]:
    """Fill ``out (R, n)`` from column 1 on (column 0 holds the prefill's token) by greedy speculative steps of
    ``verifier``; returns each step's milliseconds and the tokens it emitted per generating row. Each step: drafts
    looked up on the host, one forward of every row's last token and drafts, then each row keeps its drafts up to the
    first the model disagrees with, plus the model's own token there, and its length advances by as many."""
    R, n = out.shape
    k = verifier.tokens.shape[1] - 1
    dev = out.device
    # the tokens are chosen on the host: kept there, and copied to the device once at the end
    host = out.cpu()
    text = PromptLookup([np.concatenate([tokens[b, :lens[b]].cpu().numpy(), host[b, :1].numpy()]) for b in range(R)],
                        max(lens) + n)
    made = [1] * R
    if eos_token_id is not None:
        for b in range(R):
            if int(text.row(b)[-1]) == eos_token_id:  # the prefill's token ends the row
                host[b, 1:] = eos_token_id
                if all_logits is not None:
                    all_logits[b, 1:] = all_logits[b, 0]
                made[b] = n
    # where no generating row finds a draft, a step of one token a row costs what a plain decode step does (vLLM's
    # n-gram proposer does the same); a verify step of drafts nobody found would cost 10-23% more (BENCHMARKS)
    single = _Verifier(verifier.model, verifier.cache, 0, verifier.schedule)
    if graph:
        verifier.capture()
        single.capture()
    bar = _Progress(n - 1, progress)
    step_ms, step_tokens = [], []
    while min(made) < n:
        w0 = time.perf_counter()  # a step's time is all of it: the host's lookup and bookkeeping too
        found = [text.drafts(b, k) if made[b] < n else None for b in range(R)]
        if any(d is not None for d in found):
            step, kk = verifier, k
            drafts = np.stack([np.full(k, text.row(b)[-1]) if d is None else d for b, d in enumerate(found)])
        else:
            step, kk = single, 0
            drafts = np.zeros((R, 0), dtype=np.int64)
        fed = np.concatenate([np.stack([text.row(b)[-1:] for b in range(R)]), drafts], 1)
        step.tokens.copy_(torch.from_numpy(fed).to(dev))
        step.run()
        pred = step.logits.argmax(-1).cpu().numpy()  # the host sync of the step
        agree = np.cumprod(pred[:, :kk] == drafts, axis=1).sum(1)
        advance = torch.zeros(R, dtype=torch.int32)
        emitted = [0] * R
        for b in range(R):
            if made[b] >= n:
                continue
            new = np.concatenate([drafts[b, :agree[b]], pred[b, agree[b]:agree[b] + 1]])[:n - made[b]]
            stop = eos_token_id is not None and eos_token_id in new
            if stop:
                new = new[:int(np.flatnonzero(new == eos_token_id)[0]) + 1]
                host[b, made[b] + len(new):] = eos_token_id
            host[b, made[b]:made[b] + len(new)] = torch.from_numpy(new)
            if all_logits is not None:
                all_logits[b, made[b]:made[b] + len(new)] = step.logits[b, :len(new)]
                if stop:  # the repeated eos tokens after it: the logits eos was drawn from (none are computed)
                    all_logits[b, made[b] + len(new):] = step.logits[b, len(new) - 1]
            text.extend(b, new)
            made[b] = n if eos_token_id is not None and new[-1] == eos_token_id else made[b] + len(new)
            advance[b] = emitted[b] = len(new)
        verifier.cache.seqlens += advance.to(dev)
        step_ms.append((time.perf_counter() - w0) * 1e3)
        step_tokens.append(statistics.fmean(emitted))
        for _ in range(max(emitted)):
            bar.update()
    bar.close()
    out.copy_(host)
    return step_ms, step_tokens
