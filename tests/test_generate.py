"""``leanattn.generate`` against the cache-free SDPA forward (tiny random models, fp32, interpreter).

Greedy tokens must equal those of re-running the whole sequence through SDPA; a flip is allowed
only where the reference's top two logits are within float32 noise (then later tokens differ
legitimately and are not compared).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import leanattn
from leanattn.cli import main as cli_main
from leanattn.models import build_model

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NEAR_TIE = 1e-4


def tiny(shape="tiny", seed=None):
    seed = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
    # std 0.1 (not 0.02) so that logits are spread and greedy ties are rare
    return build_model(shape, DEV, torch.float32, seed=seed).init_random(
        std=0.1, generator=torch.Generator(DEV).manual_seed(seed))


def sdpa_greedy(model, prompt, n):
    """Tokens and per-step logits of greedy decoding by re-running the full sequence."""
    seq = torch.tensor([prompt], device=DEV)
    toks, logits = [], []
    for _ in range(n):
        lg = model(seq)[0, -1]
        nxt = int(lg.argmax())
        toks.append(nxt)
        logits.append(lg)
        seq = torch.cat([seq, torch.tensor([[nxt]], device=DEV)], 1)
    return toks, torch.stack(logits)


def assert_same_greedy(name, got, ref, ref_logits):
    for t, (a, b) in enumerate(zip(got, ref)):
        if a != b:
            top2 = ref_logits[t].topk(2).values
            margin = float(top2[0] - top2[1])
            assert margin < NEAR_TIE, f"{name}: token {t}: {a} != {b} (reference margin {margin:.2e})"
            return


@pytest.mark.parametrize("shape,fused_ops", [("tiny", False), ("tiny-mha", False), ("tiny", True)])
def test_greedy_matches_sdpa_unequal_prompts(shape, fused_ops):
    # fused_ops: the norms, rotary embedding and SwiGLU as Triton kernels (the reference keeps the PyTorch ops)
    model = tiny(shape)
    V = model.config.vocab_size
    prompts = [torch.randint(0, V, (n,)).tolist() for n in (21, 3, 9)]
    n = 5
    model.fused_ops = fused_ops
    out = leanattn.generate(model, prompts, n, page_size=16, output_logits=True)
    model.fused_ops = False
    assert out.tokens.shape == (3, n)
    for b, p in enumerate(prompts):
        ref, ref_logits = sdpa_greedy(model, p, n)
        assert_same_greedy(f"{shape} prompt {b}", out.tokens[b].tolist(), ref, ref_logits)
        # the first token's logits come from the prefill, the rest from decode steps
        torch.testing.assert_close(out.logits[b, 0], ref_logits[0].cpu(), rtol=1e-4, atol=1e-4)
    assert len(out.step_ms) == n - 1 and out.kv_bytes > 0
    assert "decode step median" in str(out)


@pytest.mark.parametrize("schedule", ["lean", "split", "batch_invariant"])
def test_sliding_window_matches_sdpa(schedule):
    # a window of 8 keys (Mistral v0.1's kind): chunked prefill under SDPA's windowed mask, decode steps on the
    # kernels with window_left=7, against re-running the windowed SDPA forward; the window changes the result
    model = tiny()
    model.config.sliding_window = 8
    V, n = model.config.vocab_size, 6
    prompts = [torch.randint(0, V, (k,)).tolist() for k in (21, 3, 9)]
    out = leanattn.generate(model, prompts, n, page_size=4, prefill_chunk=5, output_logits=True, schedule=schedule)
    for b, p in enumerate(prompts):
        ref, ref_logits = sdpa_greedy(model, p, n)
        assert_same_greedy(f"window, prompt {b}", out.tokens[b].tolist(), ref, ref_logits)
        torch.testing.assert_close(out.logits[b, 0], ref_logits[0].cpu(), rtol=1e-4, atol=1e-4)
        # decode steps: the logits of the reference's tokens, where the greedy tokens agree
        agree = next((t for t, (a, r) in enumerate(zip(out.tokens[b].tolist(), ref)) if a != r), n)
        torch.testing.assert_close(out.logits[b, :agree], ref_logits[:agree].cpu(), rtol=1e-4, atol=1e-4)
    model.config.sliding_window = None
    full = leanattn.generate(model, prompts, n, page_size=4, output_logits=True)
    assert not torch.allclose(full.logits[0], out.logits[0], rtol=1e-3, atol=1e-3)


def test_sliding_window_sdpa_causal():
    # the windowed mask against its definition: query i (position Lk - Lq + i) sees keys in (pos - window, pos]
    from leanattn.models.llama import sdpa_causal
    q, k, v = torch.randn(2, 5, 4, 64), torch.randn(2, 12, 2, 64), torch.randn(2, 12, 2, 64)
    out = sdpa_causal(q, k, v, 0.125, window=3)
    kk, vv = k.double().repeat_interleave(2, 2), v.double().repeat_interleave(2, 2)
    for i in range(5):
        pos = 12 - 5 + i
        s = torch.einsum("bhd,bkhd->bhk", q[:, i].double(), kk[:, pos - 2:pos + 1]) * 0.125
        ref = torch.einsum("bhk,bkhd->bhd", s.softmax(-1), vv[:, pos - 2:pos + 1])
        torch.testing.assert_close(out[:, i].double(), ref, rtol=1e-5, atol=1e-5)
    # a window holding every key is plain causal attention
    torch.testing.assert_close(sdpa_causal(q, k, v, 0.125, window=12), sdpa_causal(q, k, v, 0.125))


def test_chunked_prefill_matches_whole():
    """Chunks shorter than the prompt take SDPA's lower-right causal path over the cache."""
    model = tiny()
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (13, 6)]
    a = leanattn.generate(model, prompts, 2, prefill_chunk=5, page_size=4, output_logits=True)
    b = leanattn.generate(model, prompts, 2, prefill_chunk=64, output_logits=True)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [None, 6])
def test_samples_match_separate_rows(window):
    """``samples=N``: the prompt's KV held once, attention through bifurcated_decode; the same
    draws as decoding N copies of the prompt separately (with a sliding window of 6 keys too, which the first
    prompt is longer than and the second grows past)."""
    model = tiny()
    model.config.sliding_window = window
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (19, 4)]
    n, s = 4, 3
    g = lambda: torch.Generator(DEV).manual_seed(7)  # noqa: E731
    shared = leanattn.generate(model, prompts, n, samples=s, temperature=1.0, generator=g(), page_size=8,
                               output_logits=True)
    copies = [p for p in prompts for _ in range(s)]
    separate = leanattn.generate(model, copies, n, temperature=1.0, generator=g(), page_size=8, output_logits=True)
    torch.testing.assert_close(shared.logits, separate.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(shared.tokens, separate.tokens)
    assert len(set(map(tuple, shared.tokens[:s].tolist()))) > 1  # the samples do differ
    # the prompt is stored once: less KV than the copies
    assert shared.kv_bytes < separate.kv_bytes
    model.config.sliding_window = None


def test_greedy_samples_equal_single():
    model = tiny()
    prompt = torch.randint(0, 256, (11,)).tolist()
    one = leanattn.generate(model, [prompt], 4)
    many = leanattn.generate(model, [prompt], 4, samples=2)
    assert torch.equal(many.tokens, one.tokens.expand(2, -1))


def test_eos_repeats():
    model = tiny()
    prompt = torch.randint(0, 256, (5,)).tolist()
    free = leanattn.generate(model, [prompt], 4)
    eos = int(free.tokens[0, 1])
    stopped = leanattn.generate(model, [prompt], 4, eos_token_id=eos)
    first = free.tokens[0].tolist().index(eos)
    assert stopped.tokens[0, :first + 1].tolist() == free.tokens[0, :first + 1].tolist()
    assert (stopped.tokens[0, first:] == eos).all()


def test_errors():
    model = tiny()
    with pytest.raises(ValueError, match="max_new_tokens"):
        leanattn.generate(model, [[1, 2]], 0)
    with pytest.raises(ValueError, match="samples"):
        leanattn.generate(model, [[1, 2]], 2, samples=0)
    with pytest.raises(ValueError, match=r"prompts: expected token ids in \[0, 256\)"):
        leanattn.generate(model, [[1, 999]], 2)
    with pytest.raises(ValueError, match="prompts"):
        leanattn.generate(model, [[]], 2)
    for bad in (torch.tensor([[1.0, 2.0]]), torch.ones(1, 2, 2, dtype=torch.long)):
        with pytest.raises(ValueError, match=rf"^prompts: expected a \(B, L\) integer tensor, got shape "
                                             rf"\({', '.join(map(str, bad.shape))},?\) dtype {bad.dtype}$"):
            leanattn.generate(model, bad, 2)
    with pytest.raises(TypeError, match="model"):
        leanattn.generate(object(), [[1]], 2)
    with pytest.raises(ValueError, match="model: expected a checkpoint directory or a shape"):
        leanattn.generate("no-such-shape", [[1]], 2)
    if DEV == "cpu":
        with pytest.raises(ValueError, match="use_cuda_graph"):
            leanattn.generate(model, [[1, 2]], 2, use_cuda_graph=True)
    # types and values of the other arguments, before any work (a bool was a count, a string flag taken by its truth)
    for kw, err in ((dict(max_new_tokens=True), TypeError), (dict(max_new_tokens=2.0), TypeError),
                    (dict(samples=True), TypeError), (dict(prefill_chunk="8"), TypeError),
                    (dict(prefill_chunk=0), ValueError), (dict(top_k=-1), ValueError), (dict(page_size=0), ValueError),
                    (dict(eos_token_id=-2), ValueError), (dict(eos_token_id=1.0), TypeError),
                    (dict(temperature="0.5"), TypeError), (dict(temperature=-1.0), ValueError),
                    (dict(temperature=float("nan")), ValueError), (dict(progress="no"), TypeError),
                    (dict(output_logits=1), TypeError), (dict(return_cache=None), TypeError),
                    (dict(use_cuda_graph="yes"), TypeError), (dict(schedule="stream-k"), ValueError),
                    (dict(schedule=None), TypeError), (dict(speculate=True), TypeError)):
        name = next(iter(kw))
        with pytest.raises(err, match=f"^{name}: expected"):
            leanattn.generate(model, [[1, 2]], **{"max_new_tokens": 2, **kw})
    assert leanattn.generate(model, [[1, 2]], np.int64(2), samples=np.int64(1)).tokens.shape == (1, 2)


def test_model_errors():
    # the models' own checks: a shape name, a page size and capacity of the paged cache
    from leanattn.models import PagedKVCache
    with pytest.raises(ValueError, match=r"^shape: expected one of \[.*'tiny'.*\], got 'no-such-shape'$"):
        build_model("no-such-shape")
    good = dict(num_layers=1, batch=2, capacity=8, kv_heads=1, head_dim=64, page_size=4, dtype=torch.float32,
                device="cpu")
    for over, match in ((dict(page_size=0), "^page_size: expected >= 1, got 0$"),
                        (dict(capacity=0), "^capacity, batch: expected >= 1, got 0, 2$"),
                        (dict(batch=0), "^capacity, batch: expected >= 1, got 8, 0$")):
        with pytest.raises(ValueError, match=match):
            PagedKVCache(**{**good, **over})


def test_cli_generate(capsys):
    rc = cli_main(["generate", "tiny", "--prompt", "1,2,3", "--max-new-tokens", "3", "--dtype", "float32",
                   "--samples", "2", "--temperature", "0.5", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 rows x 3 tokens" in out and len(out.splitlines()[0].split(",")) == 3
    rc = cli_main(["generate", "tiny", "--prompt", "1,2,3,1,2", "--max-new-tokens", "4", "--dtype", "float32",
                   "--speculate", "2", "--fused-ops", "--no-progress"])
    assert rc == 0 and "1 rows x 4 tokens" in capsys.readouterr().out


@pytest.mark.parametrize("drafts,fused_ops", [("lookup", False), ("oracle", False), ("wrong", False),
                                              ("oracle", True), ("none", False), ("some", False)])
def test_speculative_is_greedy(drafts, fused_ops, monkeypatch):
    # speculative steps verify 3 drafts a row in one forward of 4 tokens (decode with 4 causal query tokens): the
    # tokens are the greedy ones whatever the drafts. "oracle" drafts are the greedy continuation itself (every draft
    # accepted: 4 tokens a step), "wrong" ones never match (1 token a step), "lookup" the prompt-lookup drafts;
    # "none": no row finds any (steps of one token a row), "some": only the first row finds them (oracle drafts)
    import sys
    gen = sys.modules["leanattn.generate"]  # (leanattn.generate is the function)
    model = tiny()
    V, n, k = model.config.vocab_size, 9, 3
    base = torch.randint(0, V, (4,)).tolist()
    prompts = [base * 5 + [1], base * 2, torch.randint(0, V, (7,)).tolist()]  # repeats for the lookup to find
    refs = [sdpa_greedy(model, p, n + k) for p in prompts]
    if drafts != "lookup":
        def fake(seq, kk):
            b = next(i for i, p in enumerate(prompts) if len(seq) >= len(p) and seq[:len(p)].tolist() == p
                     and (len(seq) - len(p)) <= n)
            cont = refs[b][0][len(seq) - len(prompts[b]):][:kk]
            if drafts == "none" or (drafts == "some" and b > 0):
                return None
            return np.array(cont if drafts in ("oracle", "some") else [(t + 1) % V for t in cont], dtype=np.int64)
        monkeypatch.setattr(gen.PromptLookup, "drafts", lambda self, b, kk: fake(self.row(b), kk))
    widths = []  # tokens a row of each step's forward
    run = gen._Verifier.run
    monkeypatch.setattr(gen._Verifier, "run", lambda self: widths.append(self.tokens.shape[1]) or run(self))
    model.fused_ops = fused_ops
    out = leanattn.generate(model, prompts, n, page_size=4, speculate=k, output_logits=True)
    model.fused_ops = False
    assert out.tokens.shape == (3, n)
    for b, p in enumerate(prompts):
        ref, ref_logits = refs[b]
        assert_same_greedy(f"{drafts} prompt {b}", out.tokens[b].tolist(), ref[:n], ref_logits)
        agree = next((t for t, (a, r) in enumerate(zip(out.tokens[b].tolist(), ref)) if a != r), n)
        torch.testing.assert_close(out.logits[b, :agree], ref_logits[:agree].cpu(), rtol=1e-4, atol=1e-4)
    assert all(0 < t <= k + 1 for t in out.step_tokens) and len(out.step_tokens) == len(out.step_ms)
    assert sum(out.step_tokens) == pytest.approx(n - 1)  # every row's tokens after the prefill's, averaged over rows
    if drafts == "oracle":
        assert out.step_tokens[0] == k + 1 and len(out.step_ms) <= 3  # 8 tokens after the first, 4 a step
    if drafts in ("wrong", "none"):
        assert out.step_tokens == [1.0] * (n - 1)
        assert set(widths) == {k + 1 if drafts == "wrong" else 1}
    if drafts == "some":
        # the first step verifies row 0's drafts, the other rows' last token repeated beside them (kept where the model
        # repeats it, as a random tiny model may); steps of one token a row come only once row 0 is done
        assert widths[0] == k + 1 and set(widths) <= {1, k + 1}
    assert "tokens/s" in str(out) and out.summary()["tokens_per_step"] >= 1


def test_speculative_window_and_eos():
    model = tiny()
    model.config.sliding_window = 8
    V, n = model.config.vocab_size, 7
    prompts = [torch.randint(0, V, (k,)).tolist() for k in (21, 3, 9)]
    out = leanattn.generate(model, prompts, n, page_size=4, speculate=2, output_logits=True)
    for b, p in enumerate(prompts):
        ref, ref_logits = sdpa_greedy(model, p, n)
        assert_same_greedy(f"window, prompt {b}", out.tokens[b].tolist(), ref, ref_logits)
    model.config.sliding_window = None
    free = leanattn.generate(model, [prompts[0]], 6)
    eos = int(free.tokens[0, 2])
    stopped = leanattn.generate(model, [prompts[0]], 6, eos_token_id=eos, speculate=3, output_logits=True)
    first = free.tokens[0].tolist().index(eos)
    assert stopped.tokens[0, :first + 1].tolist() == free.tokens[0, :first + 1].tolist()
    assert (stopped.tokens[0, first:] == eos).all()
    # after eos, the logits eos was drawn from (found in review: uninitialised memory before)
    assert torch.equal(stopped.logits[0, first:], stopped.logits[0, first].expand(6 - first, -1))


def test_lookup_drafts():
    from leanattn.generate import lookup_drafts
    seq = np.array([5, 6, 7, 8, 9, 5, 6, 7])
    assert lookup_drafts(seq, 3).tolist() == [8, 9, 5]  # after the earlier 5 6 7
    assert lookup_drafts(np.array([1, 2, 3, 2]), 3).tolist() == [3, 2, 2]  # after the earlier 2, padded
    assert lookup_drafts(np.array([1, 2, 3]), 2).tolist() == [3, 3]  # no earlier 3: the last token repeated
    assert lookup_drafts(np.array([4]), 2).tolist() == [4, 4]


@pytest.mark.parametrize("vocab", [2, 5, 50])
def test_prompt_lookup_index(vocab):
    # the incremental index gives lookup_drafts' drafts after every extension (None where they fall back), over rows
    # with many repeats (small vocabularies), extensions of 1 to 5 tokens and n-grams of 1 to 4
    from leanattn.generate import PromptLookup, lookup_drafts
    rng = np.random.default_rng(vocab)
    for ngram in (1, 2, 3, 4):
        rows = [rng.integers(0, vocab, size=int(n)) for n in (1, 2, 7, 40)]
        index = PromptLookup(rows, 80, ngram)
        for _ in range(12):
            for b, r in enumerate(rows):
                for k in (1, 3, 6):
                    got, want = index.drafts(b, k), lookup_drafts(r, k, ngram).tolist()
                    # None exactly where lookup_drafts falls back: the last token occurs nowhere before
                    assert (got is None) == (r[-1] not in r[:-1]), (b, r, k, ngram)
                    assert (got.tolist() if got is not None else [r[-1]] * k) == want, (b, r, k, ngram)
                new = rng.integers(0, vocab, size=int(rng.integers(1, 6)))
                rows[b] = np.concatenate([r, new])
                index.extend(b, new)
                assert index.row(b).tolist() == rows[b].tolist()


def test_speculate_errors():
    model = tiny()
    for kw, match in ((dict(speculate=-1), "speculate: expected an int >= 0"),
                      (dict(speculate=-2), "speculate: expected an int >= 0"),
                      (dict(speculate=2, samples=2), "speculate: expected 0 with samples > 1"),
                      (dict(speculate=2, temperature=0.7), "speculate: expected 0 with samples > 1")):
        with pytest.raises(ValueError, match=match):
            leanattn.generate(model, [[1, 2]], 3, **kw)
