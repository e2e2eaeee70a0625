"""``attn_implementation="leanattn"`` in transformers models: greedy tokens equal to the SDPA models',
decode steps really on leanattn.decode (counted), fallbacks where the kernels do not apply."""
from __future__ import annotations

import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
import leanattn.integrations.transformers as lt  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, head_dim=64,
             initializer_range=0.1, max_position_embeddings=256)
NEW = 5


class Calls(list):
    """The lengths of each call (a list of them), in ``pads`` the padding of each (None where none was passed) and in
    ``schedules`` the schedule."""
    pads: list
    schedules: list


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts the calls the plug-in makes to leanattn.decode."""
    calls = Calls()
    calls.pads = []
    calls.schedules = []
    real = lt.decode

    def counting(*args, **kw):
        # the values, not the tensors: a tensor kept alive from inside a compiled generate's CUDA-graph warm-up
        # would be one its pool refuses
        lens, pads = kw.get("cache_seqlens"), kw.get("cache_leftpad")
        calls.schedules.append(kw.get("schedule"))
        calls.append(None if lens is None else lens.tolist())
        calls.pads.append(None if pads is None else pads.tolist())
        return real(*args, **kw)
    monkeypatch.setattr(lt, "decode", counting)
    return calls


def make(family, heads, kv_heads):
    lt.register()
    cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                          "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[family]
    cfg = cfg_cls(**SMALL, num_attention_heads=heads, num_key_value_heads=kv_heads)
    return model_cls(cfg).to(DEV).eval()


def greedy(model, impl, ids, **kw):
    model.set_attn_implementation(impl)
    out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1)


def assert_same(got, ref, ref_logits):
    """Equal greedy tokens; a flip is tolerated only at a float32 near-tie of the reference."""
    for b in range(ref.shape[0]):
        for t in range(ref.shape[1]):
            if got[b, t] != ref[b, t]:
                top2 = ref_logits[b, t].topk(2).values
                assert float(top2[0] - top2[1]) < 1e-4, f"row {b} token {t}: {got[b, t]} != {ref[b, t]}"
                break


@pytest.mark.parametrize("family,heads,kv_heads", [("llama", 4, 2), ("qwen2", 2, 2), ("mistral", 4, 1)])
def test_greedy_matches_sdpa(family, heads, kv_heads, decode_calls):
    model = make(family, heads, kv_heads)
    ids = torch.randint(1, 128, (2, 11), device=DEV)
    ref, ref_logits = greedy(model, "sdpa", ids)
    got, logits = greedy(model, "leanattn", ids)
    assert_same(got, ref, ref_logits)
    torch.testing.assert_close(logits[:, 0], ref_logits[:, 0], rtol=1e-4, atol=1e-4)
    # every decode step of every layer went to the kernel, with no mask (dynamic cache)
    assert len(decode_calls) == (NEW - 1) * 2 and all(c is None for c in decode_calls)


@pytest.mark.parametrize("inference", [False, True], ids=["no_grad", "inference_mode"])
def test_static_cache_lengths_from_mask(decode_calls, inference):
    # under inference_mode the masks are inference tensors, memoised by layer order
    model = make("llama", 4, 2)
    ids = torch.randint(1, 128, (1, 9), device=DEV)
    ref, ref_logits = greedy(model, "sdpa", ids, cache_implementation="static")
    with torch.inference_mode(inference):
        got, _ = greedy(model, "leanattn", ids, cache_implementation="static")
    assert_same(got, ref, ref_logits)
    assert len(decode_calls) == (NEW - 1) * 2
    assert [int(c[0]) for c in decode_calls[::2]] == list(range(10, 10 + NEW - 1))


@pytest.mark.parametrize("cache,prompt", [(None, 8), ("static", 8), (None, 90)],
                         ids=["dynamic", "static", "dynamic-long"])
def test_left_padded_batch_on_the_kernel(cache, prompt, decode_calls):
    # a batch left-padded by transformers' tokenizer: each row's keys a run after its padding, decoded with
    # cache_leftpad (flash-attn's), greedy tokens as SDPA's; 8- and 90-token prompts (caches of a few tiles and of many,
    # each row's base moved to its first real token by the kernels)
    model = make("llama", 4, 2)
    ids = torch.randint(1, 128, (3, prompt), device=DEV)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :prompt - 1] = 0
    kw = dict(attention_mask=mask, **({"cache_implementation": cache} if cache else {}))
    ref, ref_logits = greedy(model, "sdpa", ids, **kw)
    got, logits = greedy(model, "leanattn", ids, **kw)
    assert_same(got, ref, ref_logits)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert len(decode_calls) == (NEW - 1) * 2  # every decode step of both layers
    assert decode_calls.pads[0] == [0, 3, prompt - 1] and decode_calls[0] == [prompt + 1] * 3


def test_batch_invariant_registration(decode_calls):
    # register(schedule=) binds decode's schedule: the decode steps take it, greedy tokens as SDPA's
    model = make("llama", 4, 2)
    assert lt.register("leanattn-invariant", schedule="batch_invariant") == "leanattn-invariant"
    ids = torch.randint(1, 128, (2, 8), device=DEV)
    ref, ref_logits = greedy(model, "sdpa", ids)
    got, _ = greedy(model, "leanattn-invariant", ids)
    assert_same(got, ref, ref_logits)
    assert decode_calls and set(decode_calls.schedules) == {"batch_invariant"}
    with pytest.raises(ValueError, match="schedule: expected 'lean', 'split' or 'batch_invariant'"):
        lt.register("x", schedule="fixed")


def test_window_start_is_not_padding():
    # a sliding layer's mask of 12 keys, window 8: row 0's run starts where its window does (no padding: None, the
    # direct path), row 1's after 6 keys of padding inside the window (cache_leftpad)
    mask = torch.zeros(2, 1, 1, 12, dtype=torch.bool, device=DEV)
    mask[0, ..., 4:] = True
    assert lt._prefix_lengths(mask, 2, window=8)[1] is None
    mask[1, ..., 6:] = True
    lens, pads = lt._prefix_lengths(mask, 2, window=8)
    assert lens.tolist() == [12, 12] and pads.tolist() == [0, 6]


def test_mask_edited_in_place_is_read_again():
    # a caller's preallocated (B, 1, 1, N) mask, opened one key further at each step, is the same tensor every time
    mask = torch.zeros(2, 1, 1, 12, dtype=torch.bool, device=DEV)
    for n in (7, 8, 9):
        mask[..., :n] = True
        assert lt._prefix_lengths(mask, 2)[0].tolist() == [n, n]
    with torch.inference_mode():
        frozen = torch.zeros(1, 1, 1, 12, dtype=torch.bool, device=DEV)
        for n in (3, 4):  # no version counter: never memoised
            frozen[..., :n] = True
            assert lt._prefix_lengths(frozen, 1)[0].tolist() == [n]


def test_inference_mask_memo_serves_later_layers_of_one_forward(monkeypatch):
    # an inference tensor has no version counter: its lengths serve the layers after the one that read them, and a
    # layer at or before it (the next forward, the mask maybe edited in place) reads the mask again
    reads = []
    real_all = torch.Tensor.all
    monkeypatch.setattr(torch.Tensor, "all", lambda self, *a, **k: reads.append(1) or real_all(self, *a, **k))
    with torch.inference_mode():
        mask = torch.zeros(2, 1, 1, 12, dtype=torch.bool, device=DEV)
        mask[..., :5] = True
        for layer in range(4):
            assert lt._prefix_lengths(mask, 2, layer=layer)[0].tolist() == [5, 5]
        assert len(reads) == 1
        mask[..., :7] = True  # the next forward's mask, edited in place
        for layer in range(4):
            assert lt._prefix_lengths(mask, 2, layer=layer)[0].tolist() == [7, 7]
        assert len(reads) == 2
        for _ in range(2):  # no layer index: read at every call
            assert lt._prefix_lengths(mask, 2)[0].tolist() == [7, 7]
        assert len(reads) == 4


def test_steps_autograd_records_are_sdpa(decode_calls):
    # the kernels have no backward: with grad enabled and trainable projections a decode step is SDPA's, and the
    # gradient reaches the attention projections as under SDPA
    model = make("llama", 4, 2)
    ids = torch.randint(1, 128, (2, 9), device=DEV)
    grads = {}
    for impl in ("sdpa", "leanattn"):
        model.set_attn_implementation(impl)
        model.zero_grad()
        kw = {lt.cache_keyword(model): transformers.DynamicCache(config=model.config)}
        model(ids[:, :8], **kw)
        model(ids[:, 8:], **kw).logits.square().sum().backward()
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    torch.testing.assert_close(grads["leanattn"], grads["sdpa"], rtol=1e-4, atol=1e-5)
    assert decode_calls == []
    with torch.no_grad():
        kw = {k: transformers.DynamicCache(config=model.config) for k in kw}
        model(ids[:, :8], **kw)
        model(ids[:, 8:], **kw)
    assert len(decode_calls) == 2  # both layers' step, without autograd


def matches_eager(model, padded: bool, cache=None):
    """Greedy tokens and every step's logits of two 9-token prompts (the second left-padded by 3 with ``padded``; a
    static cache with ``cache="static"``) under leanattn as under transformers' eager attention."""
    ids = torch.randint(1, 128, (2, 9), device=DEV)
    kw = {} if cache is None else dict(cache_implementation=cache)  # static: a prefill with no mask (top-left)
    if padded:
        kw["attention_mask"] = torch.ones_like(ids)
        kw["attention_mask"][1, :3] = 0
    ref, ref_logits = greedy(model, "eager", ids, **kw)
    got, logits = greedy(model, "leanattn", ids, **kw)
    assert_same(got, ref, ref_logits)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padded,cache", [(False, None), (True, None), (False, "static")],
                         ids=["dynamic", "left-padded", "static"])
def test_gemma2_softcap_matches_eager(padded, cache, decode_calls):
    # Gemma-2 caps its attention logits (attn_logit_softcapping; a cap of 0.1 here, so that the cap decides the
    # scores): decode steps on the kernels with softcap (left-padded ones too), the full layer's prefill (no mask) and
    # padded prefills on the capped PyTorch path, greedy tokens as transformers' eager attention, which is what
    # Gemma-2 asks for
    lt.register()
    cfg = transformers.Gemma2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, query_pre_attn_scalar=64,
                                    attn_logit_softcapping=0.1, sliding_window=6)
    model = transformers.Gemma2ForCausalLM(cfg).to(DEV).eval()
    # every step's logits, decode steps included (with the cap dropped from the decode call, 79% of them differ)
    matches_eager(model, padded, cache)
    if not padded and cache is None:
        # every decode step of both layers on the kernel (the sliding layer's cache keeps its last 6 keys, a prefix
        # of the mask, read with cache_seqlens), and the sliding layer's prefill: 9 tokens whose windowed causal mask
        # ends each row's keys (18 query rows a kv head, one row block of the kernel)
        assert len(decode_calls) == (NEW - 1) * 2 + 1 and decode_calls[0] == [9, 9]
    if padded:
        # every decode step of both layers on the kernel: the full layer's with the second row's padding
        # (cache_leftpad), the sliding layer's window already past it
        assert len(decode_calls) == (NEW - 1) * 2 and decode_calls.pads[1::2] == [[0, 3]] * (NEW - 1)


@pytest.mark.parametrize("family,window", [("llama", None), ("mistral", 6)])
def test_several_tokens_over_a_cache_on_the_kernel(family, window, monkeypatch):
    # assisted generation's verification step: a few new tokens over the cache, under a causal mask that ends each
    # row's keys, run on the kernel as one call of Lq query tokens (decode's q (B, Lq, Hq, D), causal)
    lt.register()
    cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[family]
    extra = {} if window is None else dict(sliding_window=window)
    model = model_cls(cfg_cls(**SMALL, num_attention_heads=4, num_key_value_heads=1, **extra)).to(DEV).eval()
    ids = torch.randint(1, 128, (2, 14), device=DEV)
    shapes = []
    real = lt.decode
    monkeypatch.setattr(lt, "decode", lambda q, *a, **kw: shapes.append(tuple(q.shape)) or real(q, *a, **kw))

    def logits(impl):
        model.set_attn_implementation(impl)
        kw = {lt.cache_keyword(model): transformers.DynamicCache(config=model.config), "use_cache": True}
        with torch.no_grad():
            model(ids[:, :10], **kw)
            return model(ids[:, 10:], **kw).logits
    ref = logits("sdpa")
    got = logits("leanattn")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert shapes.count((2, 4, 4, 64)) == 2  # both layers' 4 new tokens


def test_broadcast_mask_over_several_tokens_is_sdpa():
    # a user's (B, 1, 1, N) prefix mask broadcasts over 4 query tokens: every token sees every key of its prefix, which
    # is not the causal call the kernels make, so SDPA takes it (found in review: it was run causal)
    lt.register()
    from types import SimpleNamespace
    module = SimpleNamespace(is_causal=True, num_key_value_groups=2, training=False)
    q = torch.randn(2, 4, 4, 64, device=DEV)
    k, v = torch.randn(2, 2, 20, 64, device=DEV), torch.randn(2, 2, 20, 64, device=DEV)
    mask = (torch.arange(20, device=DEV)[None] < torch.tensor([15, 20], device=DEV)[:, None])[:, None, None]
    got = lt.leanattn_attention_forward(module, q, k, v, mask)[0]
    ref = lt._require()[3](module, q, k, v, mask)[0]
    torch.testing.assert_close(got, ref)


def test_softcapped_fallback_not_causal():
    # without a mask, a call that is not causal (T5Gemma's encoder, cross-attention) sees every key
    q, k, v = torch.randn(1, 4, 3, 64), torch.randn(1, 2, 7, 64), torch.randn(1, 2, 7, 64)
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = lt.leanattn_attention_forward(module, q, k, v, None, scaling=0.125, softcap=2.0)
    s = 2.0 * torch.tanh(q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2) * 0.125 / 2.0)
    ref = (s.softmax(-1) @ v.double().repeat_interleave(2, 1)).transpose(1, 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # and a causal one without a mask is aligned top-left, as SDPA's is_causal
    out, _ = lt.leanattn_attention_forward(None, q, k, v, None, scaling=0.125, softcap=2.0, is_causal=True)
    s = s.masked_fill(torch.ones(3, 7, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(out.double(), (s.softmax(-1) @ v.double().repeat_interleave(2, 1)).transpose(1, 2),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "windowed mask"])
def test_sliding_window_decode_on_the_kernel(masked, decode_calls):
    # a layer with sliding_window=5 over 11 cached keys: the query (the last key's position) sees keys 6..10, as
    # transformers' sliding_window_overlay says (kv_idx > q_idx - sliding_window); on the kernel with
    # window_left=4, with or without the SDPA builder's windowed mask (row 1 shorter: keys 2..6 of 7)
    if DEV == "cpu" and not lt.runtime.interpreting():
        pytest.skip("the kernels run on the CPU only under TRITON_INTERPRET=1")
    q = torch.randn(2, 4, 1, 64, device=DEV)
    k, v = torch.randn(2, 2, 11, 64, device=DEV), torch.randn(2, 2, 11, 64, device=DEV)
    lens = [11, 7] if masked else [11, 11]
    keys = torch.arange(11, device=DEV)
    keep = torch.stack([(keys < n) & (keys >= n - 5) for n in lens])[:, None, None, :]
    out, _ = lt.leanattn_attention_forward(None, q, k, v, keep if masked else None, scaling=0.125, sliding_window=5)
    s = (q.double() @ k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.125
    ref = (s.masked_fill(~keep, float("-inf")).softmax(-1) @ v.double().repeat_interleave(2, 1)).transpose(1, 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert len(decode_calls) == 1
    # a mask that is not a window of a prefix (a hole) goes to SDPA
    keep[0, 0, 0, 8] = False
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    out, _ = lt.leanattn_attention_forward(module, q, k, v, keep.clone(), scaling=0.125, sliding_window=5)
    ref = (s.masked_fill(~keep, float("-inf")).softmax(-1) @ v.double().repeat_interleave(2, 1)).transpose(1, 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert len(decode_calls) == 1
    # one mask row broadcast to a batch of two, then the same mask at a batch of one: a memo of its own, not the
    # lengths of two rows
    row = keep[1:].clone()
    lt.leanattn_attention_forward(module, q, k, v, row, scaling=0.125, sliding_window=5)
    out, _ = lt.leanattn_attention_forward(module, q[:1], k[:1], v[:1], row, scaling=0.125, sliding_window=5)
    one = (s[:1].masked_fill(~row, float("-inf")).softmax(-1) @ v[:1].double().repeat_interleave(2, 1))
    torch.testing.assert_close(out.double(), one.transpose(1, 2), rtol=1e-5, atol=1e-5)
    # a window transformers does not build goes to its SDPA function, as other calls the kernels do not take
    calls = len(decode_calls)
    lt.leanattn_attention_forward(module, q, k, v, None, sliding_window=0)
    assert len(decode_calls) == calls


def test_bad_sinks_and_softcap_rejected():
    args = (None, torch.zeros(1, 2, 1, 64), torch.zeros(1, 2, 3, 64), torch.zeros(1, 2, 3, 64), None)
    with pytest.raises(ValueError, match=r"sinks: expected shape \(2,\) \(one logit per query head\), got \(3,\)"):
        lt.leanattn_attention_forward(*args, s_aux=torch.zeros(3))
    with pytest.raises(ValueError, match="dropout: expected 0 with softcap or s_aux"):
        lt.leanattn_attention_forward(None, torch.zeros(1, 2, 4, 64), torch.zeros(1, 2, 4, 64),
                                      torch.zeros(1, 2, 4, 64), None, dropout=0.1, s_aux=torch.zeros(2))
    with pytest.raises(ValueError, match="softcap"):
        lt.leanattn_attention_forward(*args, softcap=-1.0)


@pytest.mark.parametrize("padded", [False, True], ids=["dynamic", "left-padded"])
def test_gpt_oss_sinks_match_eager(padded, decode_calls):
    # gpt-oss: a learnable sink logit per head in every softmax, sliding (window 4) and full layers alternating:
    # decode steps on the kernels with sinks= (left-padded ones too), the prefills on the PyTorch path with the sinks,
    # greedy tokens and logits as transformers' eager attention (what gpt-oss asks for)
    lt.register()
    cfg = transformers.GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=4,
                                    num_local_experts=2, num_experts_per_tok=1, initializer_range=0.1,
                                    max_position_embeddings=256, layer_types=["sliding_attention",
                                                                              "full_attention"])
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(cfg).to(DEV).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 2.0)  # sinks that matter
    matches_eager(model, padded)
    if padded:  # as Gemma-2's: the full layer's steps with the padding, the sliding layer's past it
        assert len(decode_calls) == (NEW - 1) * 2 and decode_calls.pads[1::2] == [[0, 3]] * (NEW - 1)
    if not padded:
        assert len(decode_calls) >= (NEW - 1) * 2  # every decode step of both layers on the kernel


def test_register_idempotent_and_missing_transformers(monkeypatch):
    assert lt.register() == lt.register() == "leanattn"
    assert "leanattn" in transformers.AttentionInterface._global_mapping
    for bad in ("", None, 5):
        with pytest.raises(TypeError, match=f"^name: expected a non-empty str, got {bad!r}$"):
            lt.register(bad)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="needs transformers"):
        lt.register()


def test_too_old_transformers(monkeypatch):
    # the module registered now: an earlier save_pretrained can leave a new module object in sys.modules
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.40.0")
    with pytest.raises(ImportError, match=r"needs transformers >= 4\.53, found 4\.40\.0"):
        lt.register()
