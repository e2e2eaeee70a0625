"""Input validation shared by the public ops. Every error names the argument, what was expected
and what was given."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# KV caches stored as float8 and read by leanattn.decode in the query's dtype
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# one byte an element with a dequantisation scale: float8, and int8 (leanattn.decode only)
QUANT_DTYPES = FP8_DTYPES + (torch.int8,)
SUPPORTED_HEAD_DIMS = (64, 128, 256)


def _fail(cls, name, expected, got):
    raise cls(f"{name}: expected {expected}, got {got}")


def check_tensor(name: str, x, ndim: int | None = None):
    if not isinstance(x, torch.Tensor):
        _fail(TypeError, name, "a torch.Tensor", type(x).__name__)
    if ndim is not None and x.dim() != ndim:
        _fail(ValueError, name, f"a {ndim}-D tensor", f"shape {tuple(x.shape)}")


def check_dtype(name: str, x: torch.Tensor, allowed=SUPPORTED_DTYPES):
    if x.dtype not in allowed:
        _fail(TypeError, name, "dtype in " + ", ".join(str(d).replace("torch.", "") for d in allowed), x.dtype)


def check_same(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if x.device != ref.device:
        _fail(ValueError, name, f"device {ref.device} (as {ref_name})", x.device)
    if x.dtype != ref.dtype:
        _fail(TypeError, name, f"dtype {ref.dtype} (as {ref_name})", x.dtype)


def check_index(name: str, x, ndim: int, device: torch.device):
    check_tensor(name, x, ndim)
    if x.dtype != torch.int32:
        _fail(TypeError, name, "dtype torch.int32", x.dtype)
    if x.device != device:
        _fail(ValueError, name, f"device {device}", x.device)


def check_head_dim(name: str, d: int, allowed=SUPPORTED_HEAD_DIMS):
    if d not in allowed:
        _fail(ValueError, name, f"head dim in {allowed}", d)


def check_unit_stride(name: str, x: torch.Tensor):
    if x.stride(-1) != 1:
        _fail(ValueError, name, "unit stride on the last (head) dimension", f"strides {tuple(x.stride())}")


def kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, q: torch.Tensor, k_scale=1.0, v_scale=1.0,
             fp8: bool = False, names=("k_cache", "v_cache"), int8: bool = False) -> tuple[float, float]:
    """Device and dtype of ``k_cache``/``v_cache`` (called ``names`` in errors) against ``q``: the query's dtype, or
    with ``fp8`` (ops that read float8 caches) one of ``FP8_DTYPES`` for both (with ``int8``, leanattn.decode's,
    ``torch.int8`` too), whose dequantisation scales ``k_scale``/``v_scale`` (the stored value times the scale is the
    value) are finite floats > 0, and 1.0 for caches in the query's dtype. Returns the scales as floats."""
    kn, vn = names
    if fp8 and (k_cache.dtype in FP8_DTYPES or (int8 and k_cache.dtype == torch.int8)):
        if k_cache.device != q.device:
            _fail(ValueError, kn, f"device {q.device} (as q)", k_cache.device)
        check_same(vn, v_cache, kn, k_cache)
    else:
        if k_cache.dtype == torch.int8:
            also = " or a float8 one" if fp8 else ""
            _fail(TypeError, kn, f"dtype {q.dtype}{also} (int8 caches are read by leanattn.decode)", k_cache.dtype)
        if k_cache.dtype in QUANT_DTYPES:
            _fail(TypeError, kn, f"dtype {q.dtype} (as q; float8 caches are read by leanattn.decode, "
                  "mla_decode, bifurcated_decode, cascade_decode and the tree and ring decodes)", k_cache.dtype)
        check_same(kn, k_cache, "q", q)
        check_same(vn, v_cache, "q", q)
    if type(k_scale) is float and type(v_scale) is float and k_scale == 1.0 and v_scale == 1.0:
        return 1.0, 1.0  # the common case: no scales (valid for every cache)
    scales = []
    for name, value in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            _fail(TypeError, name, "a float", type(value).__name__)
        value = float(value)
        # (comparisons only, which trace where a compiled function's float input is symbolic; math.isfinite did
        # not. fp32 in the kernels: 1e39 was inf, NaN out)
        if not (0 < value <= SOFTCAP_MAX):
            _fail(ValueError, name, f"a finite float in (0, {SOFTCAP_MAX:g}]", value)
        if k_cache.dtype not in QUANT_DTYPES and value != 1.0:
            _fail(ValueError, name, f"1.0 for a {k_cache.dtype} cache (scales dequantise float8 and int8 caches)",
                  value)
        scales.append(value)
    return scales[0], scales[1]


def page_table(name: str, block_table, pool_name: str, pool: torch.Tensor, device) -> None:
    """A page table ``block_table`` (called ``name``; 2-D int32 on ``device``, unit stride on its last dimension) over
    the page pool ``pool (num_pages, page_size, ...)`` (called ``pool_name``), whose page size must be >= 1."""
    check_index(name, block_table, 2, device)
    if block_table.stride(-1) != 1:
        _fail(ValueError, name, "unit stride on the last dimension", tuple(block_table.stride()))
    if pool.shape[1] < 1:
        _fail(ValueError, pool_name, "a page size >= 1", pool.shape[1])


def pages_in_use(name: str, block_table: torch.Tensor, first, used: torch.Tensor, num_pages: int) -> None:
    """Page ids ``block_table[i, first[i]:used[i]]`` (the pages row ``i`` reads; ``first`` a tensor or 0) in
    ``[0, num_pages)``; the table is called ``name`` in the error. A device sync: call it when values are checked."""
    cols = torch.arange(block_table.shape[1], device=block_table.device)[None, :]
    keep = cols < used[:, None]
    if isinstance(first, torch.Tensor):
        keep = keep & (cols >= first[:, None])
    ids = block_table.long()[keep]
    if ids.numel() == 0:  # no page in use (an empty pool may then have none)
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_pages:
        _fail(ValueError, name, f"page ids in [0, {num_pages}) for the pages in use", f"ids in [{lo}, {hi}]")


def values_checkable(*tensors) -> bool:
    """Whether value checks cost no device sync: CPU tensors, outside compile and graph capture."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or t.device.type == "cpu" for t in tensors)


def value_checks(validate, *tensors) -> bool:
    """Whether to check the values of ``tensors`` (lengths, ids, offsets): ``validate`` (a bool) if given, else
    :func:`values_checkable`. The checks read values on the host, which ``torch.compile`` cannot trace: with
    ``validate=True`` it breaks the graph there, and ``fullgraph=True`` fails with a message saying so."""
    validate = optional_flag("validate", validate)
    if validate is None:
        return values_checkable(*tensors)
    if validate and torch.compiler.is_compiling():
        # the checks run eagerly after a graph break; fullgraph=True stops here with this message
        torch._dynamo.graph_break("validate=True reads lengths and ids on the host: pass validate=None or False "
                                  "inside torch.compile(fullgraph=True)")
    return validate


def softmax_scale(value, head_dim: int) -> float:
    """The scale to use: ``1 / sqrt(head_dim)`` for None, else ``value`` as a float."""
    if value is None:
        return 1.0 / head_dim ** 0.5
    # any real scalar (numpy's included, as flash-attn takes them); a bool or a tensor is a mistake
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        _fail(TypeError, "softmax_scale", "a float or None", type(value).__name__)
    # nan or inf turns every output into NaN, and so does a scale whose product with log2(e), which the kernels hold
    # in fp32, overflows (above 2.3e38); the bound is softcap's. Scores past fp32's range give NaN too (data)
    if not (math.isfinite(value) and abs(value) <= SOFTCAP_MAX):
        _fail(ValueError, "softmax_scale", f"a finite float of magnitude at most {SOFTCAP_MAX:g}", value)
    return float(value)


SOFTCAP_MAX = 1e30


def softcap(value) -> float:
    """``softcap`` (logit soft-capping) as a float: 0 for none, else > 0 and at most ``SOFTCAP_MAX``. Why the bound:
    kernels hold the cap times log2(e) and the softmax scale over the cap in fp32, where a cap of 3e38 overflowed
    to inf (NaN outputs) and one of 1e37 took the scale below fp32's normal range (review, 2026-12-04)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        _fail(TypeError, "softcap", "a float", type(value).__name__)
    value = float(value)
    if not (math.isfinite(value) and 0 <= value <= SOFTCAP_MAX):
        _fail(ValueError, "softcap", f"a float in [0, {SOFTCAP_MAX:g}] (0: no capping)", value)
    return value


def alibi_slopes(value, batch: int, heads: int, device: torch.device, validate: bool):
    """``alibi_slopes`` (ALiBi, flash-attn's ``alibi_slopes``), None or a float32 ``(heads,)`` or ``(batch, heads)``
    tensor on ``device``, with unit stride on the heads. Values are checked finite where ``validate`` (a non-finite
    slope gives NaN outputs)."""
    if value is None:
        return None
    check_tensor("alibi_slopes", value)
    if value.dtype != torch.float32:
        _fail(TypeError, "alibi_slopes", "dtype torch.float32", value.dtype)
    if value.shape not in ((heads,), (batch, heads)):
        _fail(ValueError, "alibi_slopes", f"shape ({heads},) or ({batch}, {heads}) (query heads, or sequences and "
              "query heads)", tuple(value.shape))
    if value.device != device:
        _fail(ValueError, "alibi_slopes", f"device {device} (as q)", value.device)
    if validate and not bool(torch.isfinite(value).all()):
        _fail(ValueError, "alibi_slopes", "finite values", "inf or NaN")
    return value if value.stride(-1) == 1 else value.contiguous()


def window_left(value) -> int:
    """``window_left`` (a sliding window's keys before the query) as an int >= -1 (numpy integers included; -1 for
    no window)."""
    if type(value) is int and value >= -1:
        return value
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        _fail(TypeError, "window_left", "an int", type(value).__name__)
    if value < -1:
        _fail(ValueError, "window_left", "an int >= -1 (-1: no window)", value)
    return int(value)


def packed_query(q, cu_seqlens_q, max_seqlen_q, validate, name: str = "q") -> tuple[int | None, int]:
    """Checks of a packed query ``q (total_q, Hq, D)`` whose sequence ``b`` is rows ``[cu_seqlens_q[b],
    cu_seqlens_q[b + 1])`` (int32, ``(B + 1,)``, flash-attn's and FlashInfer's ``qo_indptr`` form); returns ``(B,
    max_seqlen_q)``. ``max_seqlen_q`` None: read from the offsets, a device sync, refused while compiling or capturing
    a CUDA graph. The offsets' values (from 0, non-decreasing, ending at ``total_q``, no step above ``max_seqlen_q``)
    are checked when ``validate`` is True, or when it is None and that needs no sync (``values_checkable``), or when
    the offsets are read anyway. Without offsets (``cu_seqlens_q`` None): ``(None, 0)``, and ``max_seqlen_q`` must be
    None. ``name``: the query's in errors."""
    if cu_seqlens_q is None:
        if max_seqlen_q is not None:
            _fail(ValueError, "max_seqlen_q", "None without cu_seqlens_q", repr(max_seqlen_q))
        return None, 0
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        _fail(ValueError, name, "a 3-D (total_q, Hq, D) tensor with cu_seqlens_q",
              f"shape {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__)
    check_index("cu_seqlens_q", cu_seqlens_q, 1, q.device)
    if cu_seqlens_q.shape[0] < 1:
        _fail(ValueError, "cu_seqlens_q", "at least one offset (B + 1 for B sequences)", "shape (0,)")
    if max_seqlen_q is None:
        if torch.compiler.is_compiling() or (cu_seqlens_q.is_cuda and torch.cuda.is_current_stream_capturing()):
            _fail(ValueError, "max_seqlen_q", "an int while compiling or capturing a CUDA graph (reading it from "
                  "cu_seqlens_q needs a device sync)", None)
        validate = True
    elif not isinstance(max_seqlen_q, numbers.Integral) or isinstance(max_seqlen_q, bool):
        _fail(TypeError, "max_seqlen_q", "an int", type(max_seqlen_q).__name__)
    elif max_seqlen_q < 0:
        _fail(ValueError, "max_seqlen_q", "an int >= 0", max_seqlen_q)
    validate = value_checks(validate, cu_seqlens_q)
    if validate:
        cu = cu_seqlens_q.tolist()
        steps = [b - a for a, b in zip(cu, cu[1:])]
        if cu[0] != 0:
            _fail(ValueError, "cu_seqlens_q", "offsets starting at 0", f"{cu[0]} first")
        if steps and min(steps) < 0:
            _fail(ValueError, "cu_seqlens_q", "non-decreasing offsets", f"a step of {min(steps)}")
        if cu[-1] != q.shape[0]:
            _fail(ValueError, "cu_seqlens_q", f"offsets ending at {name}'s {q.shape[0]} rows", f"{cu[-1]} last")
        longest = max(steps, default=0)
        if max_seqlen_q is None:
            max_seqlen_q = longest
        elif longest > max_seqlen_q:
            _fail(ValueError, "max_seqlen_q", f"at least the longest sequence's {longest} query tokens", max_seqlen_q)
    if max_seqlen_q == 0 and q.shape[0]:
        _fail(ValueError, "max_seqlen_q", f"an int >= 1 for a {name} of {q.shape[0]} rows", 0)
    return cu_seqlens_q.shape[0] - 1, int(max_seqlen_q)


def query_slots(q, cu_seqlens_q, max_seqlen_q, validate, name: str = "q") -> tuple[int | None, int]:
    """``(B, query token slots a sequence)`` of a decode query: :func:`packed_query`'s for a packed one, else
    ``(None, Lq)`` of ``(B, Lq, Hq, D)`` (1 for ``(B, Hq, D)``)."""
    batch, slots = packed_query(q, cu_seqlens_q, max_seqlen_q, validate, name)
    return batch, (token_slots(q) if batch is None else slots)


def token_slots(q) -> int:
    """Query token slots a sequence of a query that is not packed: ``Lq`` of ``(B, Lq, Hq, D)``, 1 of ``(B, Hq, D)``
    (and of anything else, which the query's checks refuse)."""
    return q.shape[1] if isinstance(q, torch.Tensor) and q.dim() == 4 else 1


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[first, last)`` of device memory a tensor's elements span (its strides are >= 0)."""
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def output_buffer(name: str, buf, shape, dtype: torch.dtype, device: torch.device, what: str, inputs=()):
    """A caller's buffer for an op's output (FlashInfer's ``out=`` and ``lse=``): None, or a contiguous tensor of
    ``shape`` (``what`` says whose, for the error), ``dtype`` and ``device`` that shares no byte with the
    ``inputs`` (named tensors, or None), which the kernels read while they write it. Eager calls compare addresses
    on the host, no sync: only views of one storage can share bytes (0.1 us an input), and their spans are compared
    then; tensors laid over one allocation by other means (``from_blob``, DLPack) are not seen."""
    if buf is None:
        return None
    check_tensor(name, buf)
    if buf.dtype != dtype:
        _fail(TypeError, name, f"dtype {dtype}", buf.dtype)
    if buf.device != device:
        _fail(ValueError, name, f"device {device}", buf.device)
    if tuple(buf.shape) != tuple(shape):
        _fail(ValueError, name, f"shape {tuple(shape)} ({what})", f"shape {tuple(buf.shape)}")
    if not buf.is_contiguous():
        _fail(ValueError, name, "a contiguous tensor (the kernels write it row-major)",
              f"strides {buf.stride()} for shape {tuple(buf.shape)}")
    # (addresses are not traced by torch.compile: the overlap is checked in eager calls)
    if buf.numel() and not torch.compiler.is_compiling():
        base = buf.untyped_storage().data_ptr()
        for other, t in inputs:
            if t is None or not t.numel() or t.untyped_storage().data_ptr() != base or t.device != device:
                continue
            lo, hi = _byte_range(buf)
            a, b = _byte_range(t)
            if a < hi and lo < b:
                _fail(ValueError, name, f"memory apart from {other} (read while {name} is written)",
                      f"a tensor that overlaps {other}")
    return buf


def flag(name: str, value) -> bool:
    """A boolean option ``name`` (numpy's bools included) as a bool."""
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        _fail(TypeError, name, "a bool", type(value).__name__)
    return bool(value)


def optional_flag(name: str, value) -> bool | None:
    """A boolean option ``name`` that may be None (the library's choice), as None or a bool: numpy's ``False`` is not
    ``False``, which callers may test with ``is``."""
    if value is None or value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        _fail(TypeError, name, "a bool or None", type(value).__name__)
    return None if value is None else bool(value)


def schedule(value) -> str:
    """Decode's ``schedule``, ``"lean"``, ``"split"`` or ``"batch_invariant"``."""
    if not isinstance(value, str):
        raise TypeError(f"schedule: expected 'lean', 'split' or 'batch_invariant', got {type(value).__name__} "
                        f"{value!r}")
    if value not in ("lean", "split", "batch_invariant"):
        raise ValueError(f"schedule: expected 'lean', 'split' or 'batch_invariant', got {value!r}")
    return value


def int_at_least(name: str, value, least: int, note: str = "") -> int:
    """``value`` as an int >= ``least`` (numpy integers included, bools refused; ``note``: added to the error)."""
    if type(value) is int and value >= least:  # the common case, before the checks of numpy's and bools
        return value
    what = f"an int >= {least}{note}"
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def count(name: str, value, zero: str) -> int:
    """``value`` as an int >= 0 (numpy integers included; ``zero``: what 0 means, for the error)."""
    return int_at_least(name, value, 0, f" (0 = {zero})")


def max_group_size(value) -> int:
    """``max_group_size`` as an int >= 0 (numpy integers included; 0 = count on the host)."""
    return count("max_group_size", value, "count on the host")


# The most programs or splits a decode launch takes: far past any GPU's resident programs (an H200 holds about a
# thousand), and a workspace of a few GB at most; 2**31 programs failed in the allocator with a RuntimeError
MAX_LAUNCH_COUNT = 1 << 16


def launch_counts(num_programs, num_splits=0) -> tuple[int, int]:
    """``num_programs`` and ``num_splits`` of the decode ops as ints in ``[0, MAX_LAUNCH_COUNT]`` (0: the library's
    choice): a negative count reached the schedule's search as a grid of no program."""
    counts = count("num_programs", num_programs, "fill the GPU"), count("num_splits", num_splits, "the heuristic")
    for name, n in zip(("num_programs", "num_splits"), counts):
        if n > MAX_LAUNCH_COUNT:
            _fail(ValueError, name, f"at most {MAX_LAUNCH_COUNT}", n)
    return counts


def query(q, scale, tokens: bool = False, name: str = "q", head_dims=SUPPORTED_HEAD_DIMS) -> float:
    """Checks of the query ``q (B, Hq, D)`` shared by every decode op (with ``tokens``, also ``(B, Lq, Hq, D)``:
    ``Lq`` query tokens a sequence; ``name`` in errors, ``D`` in ``head_dims``); returns the softmax scale to use
    for the given ``scale`` (``softmax_scale``)."""
    if tokens and isinstance(q, torch.Tensor) and q.dim() != 3:
        if q.dim() != 4:
            _fail(ValueError, name, "a 3-D (B, Hq, D) or 4-D (B, Lq, Hq, D) tensor", f"shape {tuple(q.shape)}")
    else:
        check_tensor(name, q, 3)
    check_dtype(name, q)
    check_head_dim(name, q.shape[-1], head_dims)
    return softmax_scale(scale, q.shape[-1])
