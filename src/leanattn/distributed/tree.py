"""Decode of sequences whose KV cache is sharded across ranks: tree attention and the ring baseline.

Every rank holds the same query and its own part of every sequence's keys and values. Attention
over the union of the parts is exact from the parts' partial states ``(out_r, lse_r)``::

    lse = log(sum_r exp(lse_r))          out = sum_r exp(lse_r - lse) * out_r

``tree_decode`` computes its part with :func:`leanattn.decode` and combines the states with one
collective (``variant="allgather"``: all-gather of the packed ``(out, lse)``, then a local
:func:`leanattn.merge_states`) or with the three all-reduces of the Tree Attention paper
(``variant="allreduce3"``: max of lse, sum of numerators, sum of denominators). What travels is
``B * Hq * (D + 2)`` 16-bit values per rank (``out`` and a float32 ``lse``), whatever the context length.

``ring_decode`` is the Ring Attention baseline: the KV shards travel around the ring of ranks with
point-to-point sends, each rank computing on the shard it holds while the next one arrives. What
travels is the whole cache, ``(world - 1) / world`` of it through every rank.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional

import torch
import torch.distributed as dist

from .. import checks, runtime
from ..merges import merge_states
from ..merges.states import merge_state_list
from ..merges.sinks import check_sinks, with_sinks
from . import _comm
from ._comm import Timeout
from .shard_states import shard_states, validate_shard

__all__ = ["tree_decode", "ring_decode", "VARIANTS", "comm_bytes"]

VARIANTS = ("allgather", "allreduce3")


def _scale(q: torch.Tensor, softmax_scale) -> float:
    if softmax_scale is None and isinstance(q, torch.Tensor) and q.dim() in (3, 4):
        return 1.0 / math.sqrt(q.shape[-1])
    return softmax_scale


def _check_local(q, k_shard, v_shard, shard_seqlens, block_table, softmax_scale, schedule, k_scale=1.0, v_scale=1.0,
                 fp8=False, shard_starts=None, window_left=-1):
    """This rank's validation (``leanattn.decode``'s; ``fp8``: float8 shards with their scales accepted), returned
    rather than raised (it is raised after the shape exchange)."""
    try:
        validate_shard(q, k_shard, v_shard, shard_seqlens, block_table, softmax_scale, schedule, k_scale, v_scale,
                       fp8=fp8, shard_starts=shard_starts, window_left=window_left)
    except (ValueError, TypeError) as e:
        return e
    return None


def _q_fields(q, k_shard, scale, variant_code, softcap=0.0) -> list:
    # what must be equal on every rank for the collectives to match and the merge to be exact
    B, Hq, D = q.shape[0], q.shape[-2], q.shape[-1]
    Lq = q.shape[1] if q.dim() == 4 else -1
    return [("q shape (B, Lq or -1, Hq, D)", (B, Lq, Hq, D)), ("kv heads", (k_shard.shape[2],)),
            ("dtype", (_comm.dtype_code(q.dtype),)), ("softmax_scale", (_comm.float_bits(scale),)),
            ("variant", (variant_code,)), ("softcap", (_comm.float_bits(softcap),))]


def _on_q_device(fn):
    """``fn`` run with ``q``'s CUDA device current (``runtime.device_guard``): Triton launches on the current device,
    so a rank whose tensors are on ``cuda:r`` but which never called ``torch.cuda.set_device(r)`` would launch its
    kernels on device 0 over device ``r``'s memory."""
    @functools.wraps(fn)
    def on_device(q, *args, **kwargs):
        guard = runtime.device_guard(q.device) if isinstance(q, torch.Tensor) else contextlib.nullcontext()
        with guard:
            return fn(q, *args, **kwargs)
    return on_device


def _basic_types(q, k_shard, v_shard):
    # errors that stop us from even describing the inputs are raised at once, before any exchange: the same caller's
    # code on every rank passes tensors of the same kinds and ranks, so each rank raises them alike
    checks.check_tensor("q", q)
    if q.dim() not in (3, 4):
        raise ValueError(f"q: expected a 3-D (B, Hq, D) or 4-D (B, Lq, Hq, D) tensor, got shape {tuple(q.shape)}")
    checks.check_tensor("k_shard", k_shard, 4)
    checks.check_tensor("v_shard", v_shard, 4)


@_on_q_device
def tree_decode(
    q: torch.Tensor,
    k_shard: torch.Tensor,
    v_shard: torch.Tensor,
    shard_seqlens: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    group: Optional["dist.ProcessGroup"] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    *,
    variant: str = "allgather",
    timeout: Timeout = None,
    check_shapes: Optional[bool] = None,
    schedule: str = "lean",
    num_programs: int = 0,
    num_splits: int = 0,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    softcap: float = 0.0,
    sinks: Optional[torch.Tensor] = None,
    shard_starts: Optional[torch.Tensor] = None,
    window_left: int = -1,
):
    """Exact decode attention over a KV cache sharded across the ranks of ``group`` (Tree Attention).

    Each rank attends its query to its own shard with :func:`leanattn.decode` and the partial
    states are merged across ranks; every rank returns the attention over the whole context.
    Which token sits on which rank does not matter (attention is a sum over keys), shards may
    have any lengths, and empty shards contribute nothing.

    Parameters
    ----------
    q : torch.Tensor
        ``(B, Hq, D)``, float16, bfloat16 or float32, identical on every rank; or ``(B, Lq, Hq, D)``: ``Lq``
        query tokens a sequence (speculative decoding's draft tokens, multi-token prediction), every rank's shard
        read once for all of them. Without per-token ``shard_seqlens`` each token attends every key.
    k_shard, v_shard : torch.Tensor
        This rank's part of the cache in a :func:`leanattn.decode` layout: contiguous
        ``(B, N_r, Hkv, D)`` or, with ``block_table``, paged ``(num_pages_r, page_size, Hkv, D)``.
        ``N_r``, page counts and page sizes may differ between ranks; ``Hkv`` and ``D`` may not.
    shard_seqlens : torch.Tensor, optional
        ``(B,)`` int32, tokens of each sequence held on this rank (0 allowed). Default: the shard's
        full capacity. With a 4-D ``q``, also ``(B, Lq)`` int32: query token ``t`` of sequence ``b`` attends the
        first ``shard_seqlens[b, t]`` tokens of this rank's part of it, the causal mask of a sharded cache (a
        rank's slots hold positions in increasing order, so a token attends a prefix of every shard).
        :meth:`Placement.token_seqlens` gives them for query tokens at the end of the sequences, and
        :meth:`ShardedKVCache.decode` with ``causal=True`` passes them. A token attends at most ``Lq - 1``
        tokens more than the sequence's first: ``shard_seqlens[b, 0] <= shard_seqlens[b, t] <=
        shard_seqlens[b, 0] + Lq - 1`` (checked on CPU tensors). The shard is read once for the tokens all of them
        attend; the rest (the draft tokens' own keys on this rank) is gathered and attended per token.
    block_table : torch.Tensor, optional
        ``(B, max_pages_r)`` int32 into this rank's page pool.
    group : torch.distributed.ProcessGroup, optional
        Default: the world group. Without an initialised process group the call is a plain
        single-process decode.
    softmax_scale : float, optional
        Default ``1 / sqrt(D)``; must be the same on every rank.
    return_lse : bool
        Also return the natural-log LSE over the whole context.
    variant : {"allgather", "allreduce3"}, keyword-only
        ``"allgather"``: one all-gather of ``(out, lse)`` packed in one buffer per rank (``out``
        in ``q.dtype``, the float32 ``lse`` bit-cast into two 16-bit slots; float32 for float32
        ``q``), then a local merge. ``"allreduce3"``: the paper's three
        all-reduces (max of lse; sum of ``exp(lse - max) * out``; sum of ``exp(lse - max)``).
    timeout : float or datetime.timedelta, optional, keyword-only
        Seconds each collective may take before a ``TimeoutError`` is raised on this rank (gloo).
        On NCCL a per-call timeout makes the host wait for the collective; give NCCL groups their
        timeout at creation (``init_process_group(timeout=...)``) instead. Default: the group's.
    check_shapes : bool, optional, keyword-only
        All-gather a small descriptor (shapes, dtype, scale, variant) and raise the same
        ``ValueError`` on every rank when they disagree. ``None`` (default): on the first call of
        each signature in this process; ``True``: every call; ``False``: never. Under ``None`` each rank decides
        from its own signature, so a rank whose shapes change while its peers call with signatures already checked
        is not caught: the collectives then differ (gloo aborts, NCCL waits out its timeout). Pass ``True`` where
        ranks may disagree after a first call. An error in this rank's values
        found where the signature's check was not repeated (lengths past the shard: values are checked where that
        needs no device sync, on CPU tensors) is raised on this rank only; its peers still complete the call, with
        NaN results, rather than wait out ``timeout``.
    schedule, num_programs, num_splits
        Passed to :func:`leanattn.decode` for the local shard.
    k_scale, v_scale : float, keyword-only
        Dequantisation scales of this rank's shard when it is stored as float8 (:func:`leanattn.decode`); ranks
        may hold shards of different scales, each merged exactly. 1.0 for shards in ``q``'s dtype.
    softcap : float, keyword-only
        Logit soft-capping, as :func:`leanattn.decode`'s (the capped scores' states merge exactly); the same on
        every rank.
    sinks : torch.Tensor, optional, keyword-only
        ``(Hq,)`` attention sinks (gpt-oss), as :func:`leanattn.decode`'s, the same on every rank: merged once, into
        the state merged across ranks (not into each rank's).
    shard_starts, window_left : keyword-only
        A sliding window (Mistral, Gemma-2/3 and gpt-oss local layers) over the sharded cache: ``shard_starts``
        ``(B,)`` int32 (or ``(B, Lq)``, per query token) is the first of this rank's tokens the window holds, each
        query attending ``[shard_starts, shard_seqlens)`` of this rank's part, at most ``window_left + 1`` tokens (the
        window's keys: they bound what is read, ``window_left`` as :func:`leanattn.decode`'s). Only those tokens are
        read, through one-token pages laid over the shard (``distributed/shard_window.py``).
        :meth:`Placement.window_starts` gives the starts for query tokens at the end of the sequences, and
        :meth:`ShardedKVCache.decode` with ``window_left`` passes them. Default: no window.

    Returns
    -------
    out : torch.Tensor
        ``q``'s shape, ``(B, Hq, D)`` or ``(B, Lq, Hq, D)``, in ``q.dtype``, the same on every rank.
    lse : torch.Tensor
        ``q.shape[:-1]`` float32, natural log; only with ``return_lse=True``. A query token that attends no
        token on any rank gives zeros and ``-inf``.

    Raises
    ------
    ValueError
        Ranks disagree on ``q``'s shape, kv heads, dtype, scale, ``variant`` or ``softcap`` (raised on every
        rank), or a local input is invalid.
    TimeoutError
        A collective did not complete within ``timeout`` (a peer is missing or stuck).

    Notes
    -----
    Communication per step and rank: ``"allgather"`` contributes ``B * Hq * (D * itemsize + 4)``
    bytes (times ``Lq`` for several query tokens) and receives ``world - 1`` times that; ``"allreduce3"``
    reduces ``4 * B * Hq * (D + 2)`` bytes (times ``Lq``) in three collectives, two of them back to back. Neither
    depends on the context length. Packing ``out`` in ``q.dtype`` loses nothing: :func:`leanattn.decode` has
    already rounded it, and the merge accumulates in float32 and rounds once.

    Examples
    --------
    >>> # torchrun --nproc-per-node 2 ...; each rank holds half of every sequence
    >>> out = leanattn.distributed.tree_decode(q, k_half, v_half, half_lens)

    Four draft tokens a sequence, appended to a :class:`ShardedKVCache` and verified causally:

    >>> cache.append(k_draft, v_draft)                     # (B, 4, Hkv, D) each, on every rank
    >>> out = cache.decode(q_draft, causal=True)           # q_draft (B, 4, Hq, D) -> (B, 4, Hq, D)
    """
    if not isinstance(variant, str):
        raise TypeError(f"variant: expected one of {VARIANTS}, got {type(variant).__name__} {variant!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    check_shapes = checks.optional_flag("check_shapes", check_shapes)
    timeout = _comm.as_timedelta("timeout", timeout)
    _basic_types(q, k_shard, v_shard)
    rank, size = _comm.world(group)
    scale = _scale(q, softmax_scale)
    try:
        softcap, arg_err = checks.softcap(softcap), None
        return_lse = checks.flag("return_lse", return_lse)
    except (ValueError, TypeError) as e:  # raised after the exchange, so that no rank waits on this one
        softcap, arg_err = 0.0, e
    if size > 1 and check_shapes is not False:
        fields = _q_fields(q, k_shard, scale, VARIANTS.index(variant), softcap)
        key = None if check_shapes else ("tree", tuple(v for _, vals in fields for v in vals))
        if key is None or not _comm.checked(group, key):
            err = arg_err or _check_local(q, k_shard, v_shard, shard_seqlens, block_table, softmax_scale, schedule,
                                          k_scale, v_scale, fp8=True, shard_starts=shard_starts,
                                          window_left=window_left)
            _comm.agree(fields, err, group, q.device, "tree_decode", timeout, cache_key=key)
    local_err = None
    try:
        if arg_err is not None:
            # (the exchange above raised it on every rank where it ran; where it did not, a group's cached check or
            # check_shapes=False, this rank joins the combine with a NaN state below, so that no peer waits on it)
            raise arg_err
        check_sinks(sinks, q.shape[-2], q.device)
        out, lse = shard_states(q, k_shard, v_shard, shard_seqlens, block_table, scale, shard_starts, window_left,
                                schedule=schedule, num_programs=num_programs, num_splits=num_splits,
                                k_scale=k_scale, v_scale=v_scale, softcap=softcap)
    except Exception as e:
        if size == 1:
            raise
        # an error only this rank sees (values past a group's cached check; out of memory or of a kernel's resources,
        # as ranks plan for shards of their own lengths): it still takes part in the combine, with a NaN state that
        # makes every peer's result NaN, so that no peer waits out its timeout; then raises
        local_err = e
        out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
        lse = torch.full(q.shape[:-1], float("nan"), dtype=torch.float32, device=q.device)
    if size > 1:
        combine = _combine_allgather if variant == "allgather" else _combine_allreduce3
        # the query tokens of a sequence are rows of their own to the merge
        try:
            o, ls = combine(out.reshape(-1, *out.shape[-2:]), lse.reshape(-1, lse.shape[-1]), group, size, timeout)
        except Exception as e:
            if local_err is not None:
                raise local_err from e
            raise
        out, lse = o.view(out.shape), ls.view(lse.shape)
    if local_err is not None:
        raise local_err
    if sinks is not None:
        out, lse = with_sinks(out, lse, sinks)
    return (out, lse) if return_lse else out


def _pack_dtype(dtype: torch.dtype) -> tuple[torch.dtype, int]:
    """Element type of the all-gather buffer and the slots one float32 lse takes in it."""
    # decode's out is already rounded to q.dtype, so a wider buffer would carry no extra bits
    return (dtype, 2) if dtype in (torch.float16, torch.bfloat16) else (torch.float32, 1)


def _combine_allgather(out, lse, group, size, timeout):
    B, H, D = out.shape
    dev = _comm.comm_device(group, out.device)
    dt, slots = _pack_dtype(out.dtype)
    # -- pack: out (B, H, D) and the float32 lse (B, H), its bits in the last `slots` columns
    send = torch.empty(B, H, D + slots, dtype=dt, device=dev)                           # (B, H, D + slots)
    send[..., :D].copy_(out)
    send[..., D:].view(torch.float32)[..., 0].copy_(lse)
    recv = torch.empty(size * send.numel(), dtype=dt, device=dev)                       # (world * B * H * (D + slots),)
    _comm.all_gather_flat(recv, send.view(-1), group, "tree_decode: all_gather of (out, lse)", timeout)
    states = recv.view(size, B, H, D + slots)
    # -- merge locally, in rank order (the same on every rank, so every rank gets the same bits)
    o, lse = merge_states(states[..., :D], states[..., D:].view(torch.float32)[..., 0])
    return o.to(out.device, out.dtype), lse.to(out.device)


def _combine_allreduce3(out, lse, group, size, timeout):
    dev = _comm.comm_device(group, out.device)
    lse = lse.to(dev)
    # -- 1: global max of the lse (the paper's pmax); -inf where no rank holds a token
    m = lse.clone()                                                                      # (B, H)
    _comm.all_reduce(m, dist.ReduceOp.MAX, group, "tree_decode: all_reduce(max) of lse", timeout)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse - m_safe)                                                          # (B, H), 0 for empty shards
    # -- 2, 3: numerator and denominator sums, issued back to back
    num = out.to(dev, torch.float32) * w[..., None]                                      # (B, H, D)
    den = w.clone()
    w_num = _comm.all_reduce(num, dist.ReduceOp.SUM, group, "", timeout, wait_now=False)
    w_den = _comm.all_reduce(den, dist.ReduceOp.SUM, group, "", timeout, wait_now=False)
    _comm.wait(w_num, "tree_decode: all_reduce(sum) of numerators", group, timeout)
    _comm.wait(w_den, "tree_decode: all_reduce(sum) of denominators", group, timeout)
    # (a NaN sum, from a rank that contributed a NaN state, stays NaN)
    empty = den == 0
    # a rank's lse of +inf made its weight inf (num inf or NaN): such a row is (0, +inf), as merge_states gives it,
    # unless a rank's state is NaN (then NaN, as the reference's lse; merge_states gives (0, +inf) there)
    infinite = (m == float("inf")) & ~den.isnan()
    o = torch.where(empty[..., None] | infinite[..., None], 0.0, num / torch.where(empty, 1.0, den)[..., None])
    lse = torch.where(empty, float("-inf"), m_safe + torch.log(torch.where(empty, 1.0, den)))
    lse = torch.where(infinite, float("inf"), lse)
    return o.to(out.device, out.dtype), lse.to(out.device)


# ------------------------------------------------------------------------------------------------
# ring attention baseline


def _shard_fields(k_shard, shard_seqlens, block_table) -> tuple[int, ...]:
    bt = (-1, -1) if block_table is None else tuple(block_table.shape)
    return tuple(k_shard.shape) + (0 if shard_seqlens is None else shard_seqlens.dim(),) + bt


@_on_q_device
def ring_decode(
    q: torch.Tensor,
    k_shard: torch.Tensor,
    v_shard: torch.Tensor,
    shard_seqlens: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    group: Optional["dist.ProcessGroup"] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    *,
    timeout: Timeout = None,
    check_shapes: Optional[bool] = None,
    schedule: str = "lean",
    num_programs: int = 0,
    num_splits: int = 0,
    sinks: Optional[torch.Tensor] = None,
):
    """Exact decode over a sharded KV cache by Ring Attention: shards travel, states stay.

    The baseline that :func:`tree_decode` is measured against. In ``world - 1`` steps every rank
    sends the shard it holds to rank ``rank + 1`` and receives the next one from ``rank - 1``
    (``dist.batch_isend_irecv``), computing the partial state of the shard it holds while the next
    one is in flight (double buffering). The ``world`` partial states are merged with
    :func:`leanattn.merge_states`.

    Parameters are those of :func:`tree_decode` (without ``variant``, float8 shards and ``softcap``). Shards may
    differ in length, layout (contiguous or paged) and page count between ranks: every call first all-gathers each
    rank's shard shapes (a few integers), which also checks that the ranks agree on ``q``; ``check_shapes=False``
    skips only the agreement test, not the exchange.

    Returns
    -------
    out : torch.Tensor
        ``q``'s shape and dtype; ``lse`` ``q.shape[:-1]`` float32 with ``return_lse=True``.

    Notes
    -----
    Each rank sends ``(world - 1)`` shards per step (the whole cache but its own share, through
    every link of the ring): ``2 * sum_{r' != r} N_r' * Hkv * D * itemsize`` bytes for contiguous
    shards, plus lengths and block tables. Peak memory is the own shard plus two in flight.
    """
    timeout = _comm.as_timedelta("timeout", timeout)
    check_shapes = checks.optional_flag("check_shapes", check_shapes)
    _basic_types(q, k_shard, v_shard)
    rank, size = _comm.world(group)
    scale = _scale(q, softmax_scale)
    kw = dict(schedule=schedule, num_programs=num_programs, num_splits=num_splits)
    try:  # raised after the exchange of shapes (every call has one), so that no rank waits on this one
        check_sinks(sinks, q.shape[-2], q.device)
        return_lse = checks.flag("return_lse", return_lse)
        checks.launch_counts(num_programs, num_splits)
        arg_err = None
    except (ValueError, TypeError) as e:
        arg_err = e
    if size == 1:
        err = arg_err or _check_local(q, k_shard, v_shard, shard_seqlens, block_table, softmax_scale, schedule)
        if err is not None:  # (as the ranks of a group raise it: float8 shards included)
            raise err
        out, lse = shard_states(q, k_shard, v_shard, shard_seqlens, block_table, scale, **kw)
        if sinks is not None:
            out, lse = with_sinks(out, lse, sinks)
        return (out, lse) if return_lse else out
    # -- every rank's shard shapes (needed to receive them) and the agreement on q
    err = arg_err or _check_local(q, k_shard, v_shard, shard_seqlens, block_table, softmax_scale, schedule)
    fields = _q_fields(q, k_shard, scale, 0) if check_shapes is not False else []
    mine = _shard_fields(k_shard, shard_seqlens, block_table)
    rows = _comm.gather_descriptors([int(err is not None)] + [v for _, vals in fields for v in vals] + list(mine),
                                    group, q.device, "ring_decode (shard shapes)", timeout)
    if err is not None:
        raise err
    _comm.check_rows(rows, fields, "ring_decode")
    shapes = [tuple(row[-len(mine):]) for row in rows]
    dev = _comm.comm_device(group, q.device)
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    cur = [k_shard, v_shard, shard_seqlens, block_table]
    outs, lses = [], []
    for step in range(size):
        works = []
        if step < size - 1:
            # -- post: send what we hold to rank + 1, receive the next shard from rank - 1
            src = (rank - step - 1) % size
            incoming = _empty_shard(shapes[src], q.shape[0], q.shape[1] if q.dim() == 4 else 1, k_shard, dev)
            ops = []
            for tag, (x, y) in enumerate(zip(cur, incoming)):
                if x is not None and x.numel():
                    ops.append(dist.P2POp(dist.isend, x.contiguous().to(dev), nxt, group, tag))
                if y is not None and y.numel():
                    ops.append(dist.P2POp(dist.irecv, y, prv, group, tag))
            works = dist.batch_isend_irecv(ops) if ops else []
        # -- compute on the shard we hold while the next one arrives
        o, ls = shard_states(q, *[None if x is None else x.to(q.device) for x in cur], scale, **kw)
        outs.append(o)
        lses.append(ls)
        for w in works:
            _comm.wait(w, f"ring_decode: step {step} send/recv of KV shards", group, timeout)
        if step < size - 1:
            cur = incoming
    # the query tokens of a sequence are rows of their own to the merge
    out, lse = merge_state_list(outs, lses)
    if sinks is not None:
        out, lse = with_sinks(out, lse, sinks)
    return (out, lse) if return_lse else out


def _empty_shard(shape, B: int, Lq: int, like: torch.Tensor, device):
    """Receive buffers ``[k, v, seqlens or None, block_table or None]`` for a shard described by ``shape``."""
    kshape, sl_dims, bt = tuple(shape[:4]), shape[4], tuple(shape[5:7])
    k = torch.empty(kshape, dtype=like.dtype, device=device)
    v = torch.empty(kshape, dtype=like.dtype, device=device)
    sl = torch.empty((B, Lq)[:sl_dims], dtype=torch.int32, device=device) if sl_dims else None
    table = None if bt[0] < 0 else torch.empty(bt, dtype=torch.int32, device=device)
    return [k, v, sl, table]


def comm_bytes(method: str, B: int, Hq: int, D: int, world: int, shard_bytes: Optional[list[int]] = None,
               rank: int = 0, itemsize: int = 2) -> dict:
    """Bytes a rank moves per decode step, by method (payload, not counting protocol overhead).

    Parameters
    ----------
    method : {"allgather", "allreduce3", "ring"}
    B, Hq, D : int
        Batch, query heads, head dim.
    world : int
        Ranks.
    shard_bytes : list of int, optional
        For ``"ring"``: bytes of each rank's shard (K and V together, with lengths and tables).
    rank : int
        For ``"ring"``: the rank whose traffic is counted.
    itemsize : int
        Bytes per element of ``q`` (2 for float16/bfloat16, 4 for float32).

    Returns
    -------
    dict
        ``sent``, ``received`` (bytes per rank, ring algorithm for the all-reduces) and
        ``collectives`` (count of collective or point-to-point rounds).
    """
    p = world
    if method == "allgather":
        m = B * Hq * (D * itemsize + 4)
        return dict(sent=(p - 1) * m, received=(p - 1) * m, collectives=1, message=m)
    if method == "allreduce3":
        sizes = [4 * B * Hq, 4 * B * Hq * D, 4 * B * Hq]
        moved = sum(2 * (p - 1) * s // p for s in sizes)
        return dict(sent=moved, received=moved, collectives=3, message=sum(sizes))
    if method == "ring":
        sb = shard_bytes or []
        total = sum(sb)
        # rank r forwards every shard but the one of rank r + 1 (which would complete the circle)
        sent = total - sb[(rank + 1) % p] if p > 1 else 0
        received = total - sb[rank] if p > 1 else 0
        return dict(sent=sent, received=received, collectives=p - 1, message=max(sb) if sb else 0)
    raise ValueError(f"method: expected 'allgather', 'allreduce3' or 'ring', got {method!r}")
