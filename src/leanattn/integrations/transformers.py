"""transformers plug-in: ``attn_implementation="leanattn"`` for Llama-, Mistral-, Qwen2-, Gemma-family models.

>>> import leanattn.integrations.transformers as lt
>>> lt.register()
>>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="leanattn")

Decode steps (one query token per row) run :func:`leanattn.decode` directly on the model's own
cache: transformers keeps keys as ``(B, Hkv, N, D)``; ``.transpose(1, 2)`` is the NHD view the
kernel takes, so nothing is copied. Lengths come from the mask transformers builds:

- no mask (a dynamic cache without padding): every cached key is valid, so the lengths are the
  cache's size;
- a boolean mask that is one run of keys per row (a static cache, keys written left to right; a left-padded batch,
  its padding before the run), or, in a layer with a sliding window, the window's part of that run: the lengths
  are the end of each row's run of True and the padding its start (``cache_leftpad``), found once per forward (one
  host sync, shared by all layers that get the mask).

A layer's ``sliding_window`` (transformers: the query sees itself and the ``sliding_window - 1`` keys before it)
becomes ``window_left = sliding_window - 1``. Everything else (prefill, other masks, dropout, steps
autograd records (the kernels have no backward), head dims or devices the kernels do not take) goes to
transformers' own SDPA function with the mask from
transformers' SDPA mask builder, which aligns the causal mask bottom-right when queries and keys
differ in length. Logit soft-capping (Gemma-2's ``attn_logit_softcapping``, passed as ``softcap``) and attention
sinks (gpt-oss's ``sinks``, passed as ``s_aux``) run on the kernels in decode steps; the other calls take a PyTorch
attention that caps the scores and adds the sinks as transformers' eager Gemma-2 and gpt-oss attention do (its SDPA
function has neither).
"""
from __future__ import annotations

import functools
import inspect
import numbers
import weakref

import torch

from .. import checks, runtime
from ..merges.sinks import check_sinks
from ..ops.decode import decode

__all__ = ["register", "leanattn_attention_forward", "MIN_TRANSFORMERS"]

MIN_TRANSFORMERS = "4.53"  # AttentionMaskInterface (masks built per attention implementation) appeared here

# (weak reference to a mask, the window and batch it was read with, its lengths or None) for the last few masks seen:
# layers of one forward share a mask per kind (full and sliding layers, interleaved in Gemma-2/3)
_MASKS: list = []
_MASKS_KEPT = 4


def _require():
    """transformers' attention and mask interfaces, or ImportError saying what to install."""
    hint = f"pip install 'transformers>={MIN_TRANSFORMERS}' (or leanattn[transformers])"
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"leanattn.integrations.transformers needs transformers: {hint}") from e
    from packaging.version import Version
    if Version(transformers.__version__).release < Version(MIN_TRANSFORMERS).release:
        raise ImportError(f"leanattn.integrations.transformers needs transformers >= {MIN_TRANSFORMERS}, "
                          f"found {transformers.__version__}: {hint}")
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    return AttentionInterface, AttentionMaskInterface, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"], sdpa_attention_forward


def cache_keyword(model) -> str:
    """The keyword ``model``'s ``forward`` takes its KV cache under: ``"cache"`` (transformers 5.x, where
    ``past_key_values`` is deprecated and goes in 5.40) or ``"past_key_values"`` (before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# eager even inside a compiled model: traced, its memoised tensors were made inside the CUDA-graph pool of transformers'
# compiled static-cache generate, which refuses live tensors no graph output owns (H100, 2026-12-07: 3 tests failed
# once the padding was kept too; the warm-up sends every allocation of the thread to the pool, side streams too)
@torch.compiler.disable
def _prefix_lengths(mask: torch.Tensor, batch: int, window=None, layer=None):
    """``(lens, pads)``, ``(batch,)`` int32 (``pads`` None where no row is padded), when a ``(B|1, 1, Lq, N)`` bool
    mask is the bottom-right causal mask of ``Lq`` query tokens that end a run of each row's keys: query ``s`` True
    on the keys ``[pad, len - Lq + s]`` and False elsewhere or, with a sliding ``window`` (transformers'
    ``sliding_window``), True on the last ``window`` of those only; else None. A row's length is the end of its last
    query's run of True, its padding the start of its first query's (0 where that is the window's start: padding
    before a window is the window's to drop, and a call without padding takes the faster path). Memoised per mask
    tensor and its version (a mask edited in place is read again), window and batch: the model passes the same mask
    to every layer of a kind, so the check (host syncs) runs once per forward and kind of layer. An inference tensor
    has no version counter: its memo serves only the later layers of one forward (``layer``, the calling module's
    ``layer_idx``, above the last that used it; transformers builds each forward's mask anew), and without a
    ``layer`` the check runs at every call."""
    try:
        version = mask._version
    except RuntimeError:  # an inference tensor: an edit in place cannot be seen
        version = None
    layer = layer if isinstance(layer, int) and not isinstance(layer, bool) else None
    for i, (ref, w, b, v, lens) in enumerate(_MASKS):
        if ref() is not mask or (w, b) != (window, batch):
            continue
        if version is not None and v == version:
            return lens
        if version is None and layer is not None and isinstance(v, tuple) and v[0] < layer:
            _MASKS[i] = (ref, w, b, (layer,), lens)
            return lens
    result = None
    if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1:
        m = mask[:, 0]
        lq = m.shape[1]
        keys = torch.arange(m.shape[-1], device=m.device)
        lens = (torch.where(m[:, -1], keys, -1).amax(-1) + 1).to(torch.int32)
        pads = torch.minimum(torch.where(m[:, 0], keys, m.shape[-1]).amin(-1), lens).to(torch.int32)
        # the end of each query's keys: lens for the last, one fewer for each query before it
        ends = lens[:, None] - (lq - 1) + torch.arange(lq, device=m.device)[None, :]
        if window is not None:
            pads = torch.where(pads <= ends[:, 0] - window, 0, pads).to(torch.int32)
        expected = (keys[None, None, :] < ends[:, :, None]) & (keys[None, None, :] >= pads[:, None, None])
        if window is not None:
            expected &= keys[None, None, :] >= (ends - window)[:, :, None]
        if bool((m == expected).all()):
            def keep(x):  # kept for the next layers: made outside the CUDA-graph pools of a compiled generate
                return runtime.kept(x.device, lambda: x.expand(batch).clone(memory_format=torch.contiguous_format))
            result = (keep(lens), keep(pads) if bool(pads.any()) else None)
    # an inference tensor's entry holds the last layer it served (none: never reused)
    seen = version if version is not None else (layer if layer is not None else float("inf"),)
    live = [e for e in _MASKS if e[0]() is not None and (e[0]() is not mask or e[1:3] != (window, batch))]
    _MASKS[:] = live[-(_MASKS_KEPT - 1):] + [
        (weakref.ref(mask), window, batch, seen, result)]
    return result


# the most query rows (tokens x heads a kv head) a call of several query tokens takes to the kernels: one row block,
# so K and V are read once (kernels/query_rows.py); longer ones (prefills) are SDPA's
MAX_TOKEN_ROWS = 64


def _decode_lengths(module, query, key, value, attention_mask, dropout, kwargs):
    """``(True, lengths or None, padding or None)`` when this call is a decode step the kernels cover (one query
    token, or a few ending a masked run of keys: the verification step of assisted generation), else ``(False, None,
    None)``."""
    B, Hq, Lq, D = query.shape
    if Lq != 1 and (attention_mask is None or Lq * (Hq // key.shape[1]) > MAX_TOKEN_ROWS):
        return False, None, None
    if dropout or kwargs.get("cache") is not None or kwargs.get("position_bias") is not None:
        return False, None, None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (query, key, value, kwargs.get("s_aux"))):
        return False, None, None  # the kernels have no backward: a step that autograd records is SDPA's
    if D not in checks.SUPPORTED_HEAD_DIMS or query.dtype not in checks.SUPPORTED_DTYPES:
        return False, None, None
    if key.dtype != query.dtype or key.stride(-1) != 1 or query.device.type not in ("cuda", "cpu"):
        return False, None, None
    if query.device.type == "cpu" and not runtime.interpreting():
        return False, None, None  # Triton kernels run on the CPU only under TRITON_INTERPRET=1
    window = kwargs.get("sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1):
        return False, None, None  # not a window transformers builds: its SDPA function decides
    if attention_mask is None:
        # a sliding layer without a mask (transformers builds one once its cache holds the window) still attends
        # only its window: decode takes it as window_left
        return True, None, None
    if not isinstance(attention_mask, torch.Tensor):
        return False, None, None  # flex BlockMask and the like
    if attention_mask.dim() != 4 or attention_mask.shape[0] not in (1, B) or attention_mask.shape[2] != Lq \
            or attention_mask.shape[-1] != key.shape[2]:
        # a user's mask that broadcasts over the queries or keys (one row for every query: no causal pattern) is SDPA's
        return False, None, None
    run = _prefix_lengths(attention_mask, B, window, getattr(module, "layer_idx", None))
    return (True, *run) if run is not None else (False, None, None)


def leanattn_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function (the ``AttentionInterface`` signature).

    Parameters
    ----------
    module : torch.nn.Module
        The attention module (transformers passes itself).
    query : torch.Tensor
        ``(B, Hq, Lq, D)``.
    key, value : torch.Tensor
        ``(B, Hkv, N, D)``: the whole cache of this layer after the new tokens were appended.
    attention_mask : torch.Tensor or None
        From the mask function registered with :func:`register` (transformers' SDPA mask): None, or a
        ``(B, 1, Lq, N)`` bool mask, True = attend.
    dropout, scaling, is_causal, **kwargs
        As transformers passes them; ``softcap`` caps the scores (Gemma-2); ``s_aux`` ``(Hq,)`` are attention sinks
        (gpt-oss: a logit per head that joins the softmax as a key of value zero).

    Returns
    -------
    out : torch.Tensor
        ``(B, Lq, Hq, D)`` in ``query.dtype``.
    weights : None
    """
    softcap = checks.softcap(kwargs.get("softcap") or 0.0)
    schedule = kwargs.pop("leanattn_schedule", "lean")  # (register(schedule=) binds it)
    sinks = kwargs.get("s_aux")
    ok, lens, pads = _decode_lengths(module, query, key, value, attention_mask, dropout, kwargs)
    if ok:
        # (B, Hkv, N, D) -> (B, N, Hkv, D): a view, unit stride on D as the kernel needs
        window = kwargs.get("sliding_window")
        out = decode(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), cache_seqlens=lens,
                     softmax_scale=None if scaling is None else float(scaling), softcap=softcap,
                     window_left=-1 if window is None else int(window) - 1, causal=True, sinks=sinks,
                     cache_leftpad=pads, schedule=schedule)
        return out, None
    if softcap or sinks is not None:
        if dropout:
            raise ValueError(f"dropout: expected 0 with softcap or s_aux (leanattn's fallback for them has no "
                             f"dropout), got {dropout}")
        check_sinks(sinks, query.shape[1], query.device)  # as decode checks them, on every device
        # causal without a mask as transformers' SDPA function decides it (T5Gemma's encoder and cross-attention
        # pass is_causal=False)
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        return _explicit_attention(query, key, value, attention_mask, scaling, softcap,
                                   query.shape[2] > 1 and attention_mask is None and bool(causal), sinks), None
    _, _, _, sdpa_forward = _require()
    return sdpa_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                        is_causal=is_causal, **kwargs)


def _explicit_attention(query, key, value, attention_mask, scaling, softcap: float, causal: bool, sinks=None):
    """``(B, Lq, Hq, D)`` attention of the calls the kernels do not take, in float32: with ``softcap`` the scores
    ``s`` soft-capped to ``softcap * tanh(s / softcap)``, as transformers' eager Gemma-2 attention computes them; with
    ``sinks (Hq,)`` each head's sink logit in the softmax as a key of value zero, as its eager gpt-oss attention. The
    mask
    is the SDPA mask builder's (bool, True = attend; or additive); without one, ``causal`` masks as SDPA's
    ``is_causal`` does (aligned top-left: transformers skips the mask only where that is right, e.g. the prefill
    of an empty static cache, whose trailing keys are empty slots). It holds ``B x Hq x Lq x N`` float32 scores,
    as eager attention holds them in the model's dtype: a long prompt's prefill needs that much memory."""
    B, Hq, Lq, D = query.shape
    group = Hq // key.shape[1]
    k = key.repeat_interleave(group, dim=1).float()
    v = value.repeat_interleave(group, dim=1)
    s = (query.float() @ k.transpose(-1, -2)) * (D ** -0.5 if scaling is None else float(scaling))
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    N = k.shape[2]
    if causal:
        keep = torch.arange(N, device=s.device)[None, :] <= torch.arange(Lq, device=s.device)[:, None]
        s = s.masked_fill(~keep, float("-inf"))
    elif attention_mask is not None:
        s = s.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool else s + attention_mask
    if sinks is not None:
        s = torch.cat([s, sinks.float().view(1, Hq, 1, 1).expand(B, Hq, Lq, 1)], -1)
    # a query that sees no key (a left-padding position) gets zeros, not NaN, which the next layer's keys and values
    # at that position would carry into every row (0 * NaN)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)[..., :N].to(v.dtype)
    return (p @ v).transpose(1, 2).contiguous()


def register(name: str = "leanattn", schedule: str = "lean") -> str:
    """Register ``attn_implementation=name`` with transformers' attention and mask interfaces.

    Idempotent. Afterwards ``from_pretrained(..., attn_implementation=name)`` or
    ``model.set_attn_implementation(name)`` selects leanattn for every Llama/Mistral/Qwen2/Gemma layer.
    ``schedule``: the decode steps' :func:`leanattn.decode` schedule; ``register("leanattn-invariant",
    schedule="batch_invariant")`` gives each row's decode attention bitwise the same whatever the batch (the
    prefills and other calls are transformers' SDPA function's, whose bits the batch may change).

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    ImportError
        transformers is missing or older than :data:`MIN_TRANSFORMERS`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")
    schedule = checks.schedule(schedule)
    attention_interface, mask_interface, sdpa_mask, _ = _require()
    attention_interface.register(name, leanattn_attention_forward if schedule == "lean" else
                                 functools.partial(leanattn_attention_forward, leanattn_schedule=schedule))
    mask_interface.register(name, sdpa_mask)
    return name
