"""Prefix states of one shared prompt on Hopper, written in Gluon: each program's softmax of tile j
runs while the tensor cores do tile j-1's P@V.

Triton 3.6 waits on every wgmma as soon as it is issued, so in ``kernels/bifurcated_prefix.py``
the QK^T product, the softmax and the P@V product of a tile run one after another and a program
needs a second program on its SM to keep the tensor cores busy
(``benchmarks/results/bifurcated_H200_notes.md`` sections 10 and 14). Here the wait on tile j's
scores lets tile j-1's P@V stay in flight (``warpgroup_mma_wait(1)``), so one program per SM
runs the prefix at close to two programs' rate and leaves the SM's other program slot to the own
tokens, which ``ops/bifurcated_launch.py`` launches on a second stream at the same time (section 15).

Float8 prefixes (``prefix_gluon_kernel`` only): the tiles arrive as float8 and every warp converts its share of
each into fp16 buffers that the products read (``_to_fp16``), once a program; bf16 query rows are scaled into fp16
as ``kernels/attend.fp8_query`` scales them, and the probabilities are shifted as ``kernels/attend.fp8_shift``
says why.

Gluon has no interpreter: this kernel runs only on sm_90 GPUs, and is tested there
(``tests/test_bifurcated_gpu.py``). ``AVAILABLE`` is False when this Triton has no Gluon.
"""
from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401 (the host side builds them)
    # a barrier of every thread of the program: thread_barrier in Triton 3.6, barrier from 3.7
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
    AVAILABLE = True
except ImportError:  # a Triton without Gluon: the op keeps the Triton states path
    AVAILABLE = False

from .attend import FP8_SHIFT, fp16_rows, tanh

BLOCK_M = 64  # stacked query rows of one warp group (its wgmma's M), the host's default; 128 over two warp groups
BLOCK_N = 64  # prefix tokens per tile

if AVAILABLE:
    @gluon.jit
    def _gather_q(Q, stride_qb, stride_qh, R, h, base, ROWS: gl.constexpr, WARPS: gl.constexpr, GROUP: gl.constexpr,
                  HEAD_DIM: gl.constexpr):
        """Stacked query rows ``base .. base + ROWS`` of kv head ``h`` (row ``r`` is ``q[r // GROUP, h * GROUP +
        r % GROUP]``), gathered with plain loads (any q strides; rows past ``R`` are zeros)."""
        q_load: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
        rq = base + gl.arange(0, ROWS, layout=gl.SliceLayout(1, q_load))
        dq = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, q_load))
        q_off = (rq // GROUP).to(gl.int64) * stride_qb + (h * GROUP + rq % GROUP) * stride_qh
        return gl.load(Q + gl.expand_dims(q_off, 1) + gl.expand_dims(dq, 0), mask=gl.expand_dims(rq < R, 1),
                       other=0.0)

    @gluon.jit
    def _attend_prefix(q_smem, k_smem, v_smem, kbar, vbar, free, k_desc, v_desc, qk_scale, P, t0, n_j, col,
                       ROWS: gl.constexpr, WARPS: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                       STAGES: gl.constexpr, MASK_TAIL: gl.constexpr, RELEASE: gl.constexpr, turn=None,
                       PINGPONG: gl.constexpr = False, HALF: gl.constexpr = 0, softcap=0.0,
                       SOFTCAP: gl.constexpr = False, k16=None, v16=None, FP8: gl.constexpr = False,
                       ROW_SCALE: gl.constexpr = False):
        """``(acc, m, l)``: the unnormalised state (base 2) of the rows in ``q_smem`` against the split's ``n_j``
        tiles from ``t0``, tile ``j`` in ring slot ``j % STAGES`` once ``kbar``/``vbar`` say it has landed. Each
        iteration issues tile j's QK^T, then tile j-1's P@V, waits for the scores only and runs tile j's softmax
        while the P@V runs. Tile j-1's slot is then refilled with tile j-1+STAGES by TMA, or, with ``RELEASE``,
        released through ``free`` to a producer partition that refills it. ``PINGPONG`` (two consumer partitions,
        this one ``HALF``): before issuing an iteration's two products a consumer waits for its turn on
        ``turn.index(HALF)`` and after issuing them hands the turn to the other (FlashAttention-3's ping-pong), so
        the tensor cores take one group's products while the other group's softmax runs. ``qk_scale``, ``softcap``
        and ``SOFTCAP`` as ``kernels/attend.softmax_step`` takes them; with ``ROW_SCALE`` ``qk_scale`` is one factor a
        row (``[ROWS]``, any layout). ``FP8``: the ring holds float8 tiles, which every warp converts into the fp16
        buffers ``k16``/``v16`` (two tiles each, tile j in buffer ``j % 2``) before the products read them; the
        float8 slot of tile j-1 is refilled as soon as every warp has passed the barrier after tile j's K
        conversion, so it has no ``RELEASE`` form. The returned ``m`` is then the max minus 15 (the probabilities'
        shift, ``kernels/attend.fp8_shift``)."""
        dtype: gl.constexpr = q_smem.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        if PINGPONG:
            # turns need a second consumer partition, which only the releasing (warp-specialized) form has
            gl.static_assert(RELEASE)
        if FP8:
            # a slot is refilled in the iteration after its tile's conversion, so two at least
            gl.static_assert(not RELEASE and STAGES >= 2)
        if ROW_SCALE:
            qk_scale = gl.expand_dims(gl.convert_layout(qk_scale, gl.SliceLayout(1, s_layout)), 1)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
        # tile 0 of the range: its scores only
        mbarrier.wait(kbar.index(0), 0)
        if FP8:
            _to_fp16(k_smem.index(0), k16.index(0), WARPS, BLOCK_N, HEAD_DIM)
            st = warpgroup_mma(q_smem, k16.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        else:
            st = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        sc = _scores(warpgroup_mma_wait(0, deps=(st,)), qk_scale, softcap, SOFTCAP)
        if MASK_TAIL:
            sc = gl.where(gl.expand_dims(t0 * BLOCK_N + offs_n < P, 0), sc, float("-inf"))
        m_i = gl.max(sc, axis=1)
        p = gl.exp2(sc - gl.expand_dims(_shifted(m_i, FP8), 1))
        l_i = gl.sum(p, axis=1)
        if FP8:
            mbarrier.wait(vbar.index(0), 0)
            _to_fp16(v_smem.index(0), v16.index(0), WARPS, BLOCK_N, HEAD_DIM, False)
        p_prev = gl.convert_layout(p.to(dtype), p_layout)
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)

        for j in range(1, n_j):
            slot = j % STAGES
            prev = (j - 1) % STAGES
            mbarrier.wait(kbar.index(slot), (j // STAGES) & 1)
            if PINGPONG:
                # turns alternate strictly: group 0's turn j is pre-armed at j = 1, then each is the other's hand-over
                mbarrier.wait(turn.index(HALF), (j - 1) & 1)
            if FP8:
                # the barrier in _to_fp16 also says every warp is done with tile j-1's float8 slot and with the
                # products of tile j-2 (whose fp16 buffers tile j takes). Converting tile j+1's K during tile j's
                # softmax instead, so that no conversion stands between the barrier and the products, measured
                # level or slower (bifurcated probe 54; notes section 29)
                _to_fp16(k_smem.index(slot), k16.index(j % 2), WARPS, BLOCK_N, HEAD_DIM)
                st = warpgroup_mma(q_smem, k16.index(j % 2).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                acc_t = warpgroup_mma(p_prev, v16.index((j - 1) % 2), acc, is_async=True)
                nxt = j - 1 + STAGES
                if nxt < n_j:
                    _load_tile(k_desc, v_desc, k_smem, v_smem, kbar, vbar, prev, (t0 + nxt) * BLOCK_N, col)
            else:
                st = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                mbarrier.wait(vbar.index(prev), ((j - 1) // STAGES) & 1)
                acc_t = warpgroup_mma(p_prev, v_smem.index(prev), acc, is_async=True)
            if PINGPONG:
                # both products are issued (the arrive waits for all of this group's warps)
                mbarrier.arrive(turn.index(1 - HALF), count=1)
            # tile j's scores are in; tile j-1's P@V is still running while the softmax runs
            sc = _scores(warpgroup_mma_wait(1, deps=(st,)), qk_scale, softcap, SOFTCAP)
            if MASK_TAIL:
                sc = gl.where(gl.expand_dims((t0 + j) * BLOCK_N + offs_n < P, 0), sc, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))
            alpha = gl.exp2(m_i - m_new)
            p = gl.exp2(sc - gl.expand_dims(_shifted(m_new, FP8), 1))
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            if FP8:
                # tile j's V while tile j-1's P@V runs
                mbarrier.wait(vbar.index(slot), (j // STAGES) & 1)
                _to_fp16(v_smem.index(slot), v16.index(j % 2), WARPS, BLOCK_N, HEAD_DIM, False)
            acc = warpgroup_mma_wait(0, deps=(acc_t,))
            if RELEASE:
                # this warp group is done with tile j-1's K and V (the arrive waits for all of its warps first)
                mbarrier.arrive(free.index(prev), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            p_prev = gl.convert_layout(p.to(dtype), p_layout)
            if not RELEASE and not FP8:
                # tile j-1's K and V are consumed: its slot takes tile j-1+STAGES. With two warp groups the other
                # may still read that slot; the block-wide barrier that the compiler's shared-memory analysis places
                # after the wait above and before the refill (in the PTX at 64 and 128 rows, Triton 3.6 and 3.8)
                # orders both
                nxt = j - 1 + STAGES
                if nxt < n_j:
                    _load_tile(k_desc, v_desc, k_smem, v_smem, kbar, vbar, prev, (t0 + nxt) * BLOCK_N, col)
        if FP8:
            fence_async_shared()
            _cta_barrier()
            acc_t = warpgroup_mma(p_prev, v16.index((n_j - 1) % 2), acc, is_async=True)
        else:
            last = (n_j - 1) % STAGES
            mbarrier.wait(vbar.index(last), ((n_j - 1) // STAGES) & 1)
            acc_t = warpgroup_mma(p_prev, v_smem.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc_t,))
        return acc, _shifted(m_i, FP8), l_i

    @gluon.jit
    def _shifted(m, FP8: gl.constexpr):
        """The max the probabilities are taken against: ``FP8_SHIFT`` (log2) below the true one over float8 tiles
        (``kernels/attend.fp8_shift``)."""
        if FP8:
            m = m - FP8_SHIFT
        return m

    @gluon.jit
    def _to_fp16(src, dst, WARPS: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                 SYNC: gl.constexpr = True):
        """The float8 tile ``src`` into the fp16 buffer ``dst`` (both ``[BLOCK_N, HEAD_DIM]`` in shared memory), 16
        contiguous elements a thread, by every warp of the program; with ``SYNC`` then made visible to the tensor
        cores and every warp's share awaited."""
        layout: gl.constexpr = gl.BlockedLayout([1, 16], [32 * 16 // HEAD_DIM, HEAD_DIM // 16], [WARPS, 1], [1, 0])
        dst.store(src.load(layout).to(gl.float16))
        if SYNC:
            fence_async_shared()
            _cta_barrier()

    @gluon.jit
    def _load_tile(k_desc, v_desc, k_smem, v_smem, kbar, vbar, slot, row, col):
        """TMA loads of the K and V tile at token ``row`` into ring slot ``slot``."""
        mbarrier.expect(kbar.index(slot), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [row, col], kbar.index(slot), k_smem.index(slot))
        mbarrier.expect(vbar.index(slot), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [row, col], vbar.index(slot), v_smem.index(slot))

    # each row's max over the unscaled products, with the scale in an FFMA of each exponent, took 7% fewer loop
    # instructions and timed level on five overlap-path cases (H100, 2026-12-08, BENCHMARK_RUNS.md)
    @gluon.jit
    def _scores(s, qk_scale, softcap, SOFTCAP: gl.constexpr):
        """Scores in log2 units from the products ``s``, capped with ``SOFTCAP`` (``kernels/attend.softmax_step``)."""
        if SOFTCAP:
            s = softcap * tanh(s * qk_scale)
        else:
            s = s * qk_scale
        return s

    @gluon.jit
    def _store_state(StO, StL, acc, m_i, l_i, B, R, s, h, base, ROWS: gl.constexpr, WARPS: gl.constexpr,
                     HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, v_scale=1.0,
                     FP8: gl.constexpr = False):
        """The normalised state of rows ``base .. base + ROWS`` (those below ``R``) in slot ``s`` of
        ``merge_states``' layout, its lse in natural log; over float8 values (``FP8``) times their scale
        ``v_scale``."""
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        out = acc / gl.expand_dims(l_o, 1)
        if FP8:
            out = out * v_scale
        ro = base + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_layout))
        do = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        # row (b, h * GROUP + g) of slot s in merge_states' layout
        row = (s * B + ro // GROUP).to(gl.int64) * HQ + h * GROUP + ro % GROUP
        gl.store(StO + gl.expand_dims(row * HEAD_DIM, 1) + gl.expand_dims(do, 0), out,
                 mask=gl.expand_dims(ro < R, 1))
        lse = (gl.convert_layout(m_i, gl.SliceLayout(1, o_layout)) + gl.log2(l_o)) * 0.6931471805599453
        gl.store(StL + row, lse, mask=ro < R)

    @gluon.jit
    def _program(n_hb, S, chunk, n_tiles):
        """``(hb, s, h, t0, n_j)`` of this program: head block, split and kv head (head blocks of a split adjacent,
        as they read the same tiles), the split's first tile and its tile count."""
        pid = gl.program_id(0)
        hb = pid % n_hb
        s = (pid // n_hb) % S
        h = pid // (n_hb * S)
        t0 = s * chunk
        return hb, s, h, t0, gl.minimum(chunk, n_tiles - t0)

    @gluon.jit
    def _trigger_dependents():
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def prefix_gluon_kernel(
        Q, k_desc, v_desc, StO, StL,  #
        stride_qb, stride_qh, qk_scale, softcap, v_scale, B, P, R, n_hb, S, chunk, n_tiles,  #
        HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        STAGES: gl.constexpr, MASK_TAIL: gl.constexpr, Q_SMEM: gl.constexpr, TRIGGER: gl.constexpr,
        SOFTCAP: gl.constexpr = False, KV16_SMEM: gl.constexpr = None,
    ):
        """Program ``(kv head h, split s, head block hb)``, head blocks of a split adjacent (they read
        the same tiles, so the later ones hit L2): query rows ``hb * BLOCK_M ..`` of kv head ``h``
        (row ``r`` is ``q[r // GROUP, h * GROUP + r % GROUP]``, ``R = B * GROUP`` rows) against
        prefix tiles ``[s * chunk, min((s + 1) * chunk, n_tiles))``; writes the normalised state to
        slot ``s`` of ``StO (n_states, B, HQ, D)`` fp32 and ``StL (n_states, B, HQ)`` (natural log).
        ``k_desc``/``v_desc``: TMA descriptors of the prefix seen as ``(P, Hkv * D)``, blocks
        ``(64, D)``. ``BLOCK_M``: 16 rows per warp (64 or 128: one or two warp groups, which share the
        K/V ring). ``qk_scale`` is the softmax scale times log2(e); with ``SOFTCAP`` (logit soft-capping) the
        scale over the cap, and ``softcap`` the cap times log2(e) (``kernels/attend.softmax_step``).
        ``TRIGGER``: a programmatic dependent launch after this one (the own tokens,
        ``ops/bifurcated_overlap.ORDERED``) may start once every program of this one has started. Float8
        descriptors: the tiles are converted into two fp16 buffers of K and two of V in layout ``KV16_SMEM``
        (``_attend_prefix``), ``Q_SMEM`` is an fp16 layout, and the outputs are multiplied by ``v_scale`` (K's scale
        is in ``qk_scale``)."""
        if TRIGGER:
            _trigger_dependents()
        hb, s, h, t0, n_j = _program(n_hb, S, chunk, n_tiles)
        dtype: gl.constexpr = k_desc.dtype
        FP8: gl.constexpr = dtype.is_fp8()
        WARPS: gl.constexpr = BLOCK_M // 16

        # the K/V ring first, so its loads are in flight while the query rows are gathered
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        kbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        vbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(kbar.index(i), count=1)
            mbarrier.init(vbar.index(i), count=1)
        col = h * HEAD_DIM
        for i in gl.static_range(STAGES):
            if i < n_j:
                _load_tile(k_desc, v_desc, k_smem, v_smem, kbar, vbar, i, (t0 + i) * BLOCK_N, col)

        qv = _gather_q(Q, stride_qb, stride_qh, R, h, hb * BLOCK_M, BLOCK_M, WARPS, GROUP, HEAD_DIM)
        ROW_SCALE: gl.constexpr = FP8 and qv.dtype == gl.bfloat16
        if FP8:
            k16 = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, HEAD_DIM], KV16_SMEM)
            v16 = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, HEAD_DIM], KV16_SMEM)
        else:
            k16 = None
            v16 = None
        if ROW_SCALE:
            # products in fp16, where float8 tiles convert in one instruction per two elements
            qv, inverse = fp16_rows(qv)
            qk_scale = inverse * qk_scale
        q_smem = gl.allocate_shared_memory(qv.dtype, [BLOCK_M, HEAD_DIM], Q_SMEM, qv)
        fence_async_shared()
        acc, m_i, l_i = _attend_prefix(q_smem, k_smem, v_smem, kbar, vbar, kbar, k_desc, v_desc, qk_scale, P, t0,
                                       n_j, col, BLOCK_M, WARPS, HEAD_DIM, BLOCK_N, STAGES, MASK_TAIL, False,
                                       softcap=softcap, SOFTCAP=SOFTCAP, k16=k16, v16=v16, FP8=FP8,
                                       ROW_SCALE=ROW_SCALE)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(kbar.index(i))
            mbarrier.invalidate(vbar.index(i))
        _store_state(StO, StL, acc, m_i, l_i, B, R, s, h, hb * BLOCK_M, BLOCK_M, WARPS, HQ, GROUP, HEAD_DIM, v_scale,
                     FP8)

    @gluon.jit
    def _ws_rows(Q, q_smem, k_smem, v_smem, kbar, vbar, free, turn, k_desc, v_desc, StO, StL, stride_qb, stride_qh,
                 qk_scale, softcap, B, P, R, hb, s, h, t0, n_j, HQ: gl.constexpr, GROUP: gl.constexpr,
                 HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, MASK_TAIL: gl.constexpr,
                 PINGPONG: gl.constexpr, HALF: gl.constexpr, SOFTCAP: gl.constexpr):
        """One consumer warp group of ``prefix_gluon_ws_kernel``: rows ``hb * 128 + HALF * 64 ..``."""
        base = hb * 128 + HALF * 64
        q_half = q_smem.index(HALF)
        q_half.store(_gather_q(Q, stride_qb, stride_qh, R, h, base, 64, 4, GROUP, HEAD_DIM))
        fence_async_shared()
        acc, m_i, l_i = _attend_prefix(q_half, k_smem, v_smem, kbar, vbar, free, k_desc, v_desc, qk_scale, P, t0, n_j,
                                       h * HEAD_DIM, 64, 4, HEAD_DIM, BLOCK_N, STAGES, MASK_TAIL, True, turn, PINGPONG,
                                       HALF, softcap, SOFTCAP)
        _store_state(StO, StL, acc, m_i, l_i, B, R, s, h, base, 64, 4, HQ, GROUP, HEAD_DIM)

    @gluon.jit
    def _ws_producer(k_desc, v_desc, k_smem, v_smem, kbar, vbar, free, t0, n_j, col, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr):
        """The loading warp of ``prefix_gluon_ws_kernel``: tile ``i`` into slot ``i % STAGES`` once both consumer
        warp groups have released the slot's previous tile, ``i - STAGES``."""
        for i in range(n_j):
            slot = i % STAGES
            if i >= STAGES:
                mbarrier.wait(free.index(slot), ((i // STAGES) - 1) & 1)
            _load_tile(k_desc, v_desc, k_smem, v_smem, kbar, vbar, slot, (t0 + i) * BLOCK_N, col)

    @gluon.jit
    def prefix_gluon_ws_kernel(
        Q, k_desc, v_desc, StO, StL,  #
        stride_qb, stride_qh, qk_scale, softcap, v_scale, B, P, R, n_hb, S, chunk, n_tiles,  #
        HQ: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
        MASK_TAIL: gl.constexpr, Q_SMEM: gl.constexpr, TRIGGER: gl.constexpr, CONSUMER_REGS: gl.constexpr,
        PINGPONG: gl.constexpr = False, SOFTCAP: gl.constexpr = False,
    ):
        """``prefix_gluon_kernel``'s program at 128 rows, warp-specialized as in FlashAttention-3: the default
        partition (4 warps) and a 4-warp worker each take 64 of the rows, and a 1-warp worker issues the TMA loads.
        A consumer releases a ring slot through an mbarrier that both must arrive at and never waits on the other
        consumer, so the two drift apart and one's softmax can run under the other's products (at 128 rows in
        ``prefix_gluon_kernel`` the two meet at a block-wide barrier before each refill). ``Q_SMEM``: the layout
        of a ``(64, D)`` block of query rows. ``CONSUMER_REGS``: the worker consumer's registers per thread (launch it
        with ``maxnreg``: ``ops/bifurcated_overlap.WS_MAXNREG``). ``PINGPONG``: the two consumers take turns issuing
        their products (``_attend_prefix``; ``ops/bifurcated_overlap.WS_PINGPONG``). 16-bit caches only (``v_scale``
        is not read: the launch arguments are ``prefix_gluon_kernel``'s)."""
        # one stage would wait on tile j with tile j-1, which frees the only slot, not yet released
        gl.static_assert(STAGES >= 2)
        if TRIGGER:
            _trigger_dependents()
        hb, s, h, t0, n_j = _program(n_hb, S, chunk, n_tiles)
        dtype: gl.constexpr = k_desc.dtype
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        q_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], Q_SMEM)
        kbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        vbar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(kbar.index(i), count=1)
            mbarrier.init(vbar.index(i), count=1)
            mbarrier.init(free.index(i), count=2)
        if PINGPONG:
            for i in gl.static_range(2):
                mbarrier.init(turn.index(i), count=1)
            # consumer 0 takes the first turn
            mbarrier.arrive(turn.index(0), count=1)
        # the argument tuples are written out in the call: a tuple held in a variable loses its constexprs (3.6)
        gl.warp_specialize([(_ws_rows, (Q, q_smem, k_smem, v_smem, kbar, vbar, free, turn, k_desc, v_desc, StO, StL,
                                        stride_qb, stride_qh, qk_scale, softcap, B, P, R, hb, s, h, t0, n_j, HQ,
                                        GROUP, HEAD_DIM, BLOCK_N, STAGES, MASK_TAIL, PINGPONG, 0, SOFTCAP)),
                            (_ws_rows, (Q, q_smem, k_smem, v_smem, kbar, vbar, free, turn, k_desc, v_desc, StO, StL,
                                        stride_qb, stride_qh, qk_scale, softcap, B, P, R, hb, s, h, t0, n_j, HQ,
                                        GROUP, HEAD_DIM, BLOCK_N, STAGES, MASK_TAIL, PINGPONG, 1, SOFTCAP)),
                            (_ws_producer, (k_desc, v_desc, k_smem, v_smem, kbar, vbar, free, t0, n_j, h * HEAD_DIM,
                                            BLOCK_N, STAGES))],
                           [4, 1], [CONSUMER_REGS, 24])
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(kbar.index(i))
            mbarrier.invalidate(vbar.index(i))
            mbarrier.invalidate(free.index(i))
        if PINGPONG:
            for i in gl.static_range(2):
                mbarrier.invalidate(turn.index(i))
