"""Where kernels run: interpreter detection, device properties, persistent workspaces.

Nothing here launches a kernel. The workspace cache exists so that the stream-K decode can be
launched without allocating (or zeroing) memory on every call: its semaphores are reset by the
kernel itself, so a buffer allocated once stays valid across launches and CUDA-graph replays.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os

import torch

try:  # launch hooks (Launcher); Triton releases with knobs
    from triton import knobs as _triton_knobs
except ImportError:  # pragma: no cover
    _triton_knobs = None

__all__ = ["EnvReader", "env_flag", "interpreting", "gpu_target", "num_sms", "dependent_launch", "occupancy",
           "kernel_occupancy", "register_cap", "workspace", "device_guard", "Launcher"]


class EnvReader:
    """The environment variables ``names``, read on every call (plan keys): ``EnvReader(*names)()`` is the tuple of
    their values, ``None`` where unset, in the form ``os.environ`` stores them (bytes on POSIX), to be compared
    only, with ``EnvReader.value(text)`` for instance.

    ``os.environ.get`` encodes the name on every read: 2 us a name on the CI machine, 8 us for the four names
    an eager decode call reads, a fifth of its host time or more (decode probe 18). Reading the mapping
    ``os.environ`` keeps, with the names encoded once, takes 0.7 us for the four. Every write through
    ``os.environ`` (``pytest``'s ``monkeypatch.setenv`` included) updates that mapping, so a change is seen at
    the next call. Where ``os.environ`` has no such mapping (not CPython), ``os.environ.get``.
    """

    # CPython's os.environ: a dict of encoded names and values behind the mapping
    _MAPPED = isinstance(getattr(os.environ, "_data", None), dict) and hasattr(os.environ, "encodekey") \
        and hasattr(os.environ, "encodevalue")

    def __init__(self, *names: str):
        self.names = names
        self.fast = self._MAPPED
        self.keys = tuple(os.environ.encodekey(n) for n in names) if self.fast else names

    def __call__(self) -> tuple:
        if self.fast:
            get = os.environ._data.get
            return tuple([get(k) for k in self.keys])
        return tuple([os.environ.get(n) for n in self.names])

    @classmethod
    def value(cls, text: str):
        """``text`` in the form ``os.environ`` stores values (what ``EnvReader`` returns)."""
        return os.environ.encodevalue(text) if cls._MAPPED else text


def env_flag(name: str):
    """A ``0``/``1`` environment knob: ``None`` where unset, else ``False`` or ``True``; any other value is a
    ``ValueError`` naming it."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    if raw not in ("0", "1"):
        raise ValueError(f"{name}: expected 0 or 1, got {raw!r}")
    return raw == "1"


_INTERPRET = EnvReader("TRITON_INTERPRET")
_ONE = EnvReader.value("1")


def interpreting() -> bool:
    """True when Triton kernels run under ``TRITON_INTERPRET=1`` (CPU tensors, no GPU)."""
    return _INTERPRET()[0] == _ONE


def gpu_target(device: torch.device) -> bool:
    """True when kernels for tensors on ``device`` compile for a GPU (launch configs, persistent
    grids); ``benchmarks/offline_resources.py`` answers True for CPU tensors to compile offline."""
    return device.type == "cuda"


@functools.lru_cache(maxsize=None)
def _cuda_props(index: int):
    return torch.cuda.get_device_properties(index)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a small stand-in count on the CPU interpreter."""
    if device.type == "cuda":
        return _cuda_props(device.index if device.index is not None else torch.cuda.current_device()).multi_processor_count
    return 4


def capability(device: torch.device) -> tuple[int, int] | None:
    """``(major, minor)`` compute capability of a CUDA ``device``; None for other devices or where none can be
    asked (offline compiles)."""
    if device.type != "cuda":
        return None
    try:
        p = _cuda_props(device.index if device.index is not None else torch.cuda.current_device())
    except Exception:
        return None
    return p.major, p.minor


def dependent_launch(device: torch.device) -> bool:
    """Whether a launch that depends on the one before it on ``device`` may be a programmatic dependent launch
    (PDL, sm_90 and later): launched with ``launch_pdl=True``, its programs start while the launch before it
    still runs, wait at ``gdc_wait`` until that launch's writes are visible, and so skip the gap between two
    launches. The launch before it lets them start early with ``gdc_launch_dependents``. Never under the
    interpreter (no inline assembly there) nor with a Triton before 3.4 (``kernels/grid_dependency.py``);
    ``LEANATTN_PDL=0`` turns it off (read when a plan is made; ``1``, the default, leaves it on)."""
    from .kernels.grid_dependency import AVAILABLE
    if env_flag("LEANATTN_PDL") is False or not AVAILABLE or not gpu_target(device) or interpreting():
        return False
    cc = capability(device)
    return cc is not None and cc[0] >= 9


def occupancy(compiled, device: torch.device, limit: int = 32) -> int:
    """Programs of ``compiled`` (a Triton CompiledKernel) that fit on one SM at once.

    Takes the minimum over the register file, shared memory and the thread limit, the same three
    resources the CUDA occupancy calculator uses. Falls back to 2 when the metadata is unavailable.
    """
    if device.type != "cuda":
        return 1
    try:
        # ``JITFunction.warmup`` returns a kernel whose binary is loaded lazily, and the register
        # count is only known once it is: without this, n_regs is missing and we fell back to 2
        init = getattr(compiled, "_init_handles", None)
        if init is not None:
            init()
        props = _cuda_props(device.index if device.index is not None else torch.cuda.current_device())
        num_warps = compiled.metadata.num_warps
        threads = 32 * num_warps
        regs = max(int(compiled.n_regs), 1)
        # registers are allocated per warp in units of 256
        regs_per_warp = -(-regs * 32 // 256) * 256
        by_regs = props.regs_per_multiprocessor // (regs_per_warp * num_warps)
        smem = int(compiled.metadata.shared)
        smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
        by_smem = smem_per_sm // max(smem + 1024, 1)  # 1 KiB reserved per block on sm80+
        by_threads = props.max_threads_per_multi_processor // threads
        return max(1, min(by_regs, by_smem, by_threads, limit))
    except Exception:  # pragma: no cover - metadata layout differs across Triton versions
        return 2


def register_cap(device: torch.device, programs_per_sm: int, num_warps: int) -> int | None:
    """``maxnreg`` for a kernel of ``num_warps`` warps of which ``programs_per_sm`` must fit on one SM of
    ``device`` together: the largest multiple of 8 registers per thread that the register file holds that many
    times (registers are allocated per warp in units of 256). ``None`` where no cap is needed (255 or more)
    and off the GPU."""
    if not gpu_target(device) or interpreting() or programs_per_sm < 1:
        return None
    try:
        regs = _cuda_props(device.index if device.index is not None else torch.cuda.current_device()).regs_per_multiprocessor
    except Exception:  # no device to ask (offline compiles): every sm_80/sm_90 SM holds 64K
        regs = 65536
    cap = regs // (programs_per_sm * num_warps * 32) // 8 * 8
    return cap if cap < 255 else None


def kernel_occupancy(kernel, args: tuple, meta: dict, device: torch.device, info: dict | None = None,
                     prefix: str = "") -> int:
    """Programs of the Triton ``kernel`` that fit on one SM when launched with ``args`` and ``meta``
    (1 off the GPU), for sizing a persistent grid.

    Compiles (``warmup``) without launching. Registers, spills, shared memory and the occupancy of
    the compiled kernel go into ``info`` when given (keys prefixed with ``prefix``).
    """
    if not gpu_target(device):
        return 1
    compiled = kernel.warmup(*args, grid=(1,), **meta)
    occ = occupancy(compiled, device)
    if info is not None:
        info.update({prefix + "n_regs": getattr(compiled, "n_regs", None),
                     prefix + "n_spills": getattr(compiled, "n_spills", None),
                     prefix + "shared": compiled.metadata.shared, prefix + "occupancy": occ})
    return occ


# "leanattn": each new launch plan of a public op, logged at DEBUG (the path, grid and tiles it chose)
LOG = logging.getLogger("leanattn")


class PlanCache(dict):
    """Launch plans by signature, at most ``limit`` of them, the least recently used dropped first.

    A cache that grows by one token per step (transformers' dynamic cache) or a server whose batch
    size changes every step makes a new signature each step; dicts keep insertion order and a hit is
    moved to the end, so the first key is the least recently used. With a ``name``, each plan made is logged
    to the ``leanattn`` logger at DEBUG with its ``describe()`` (once a signature: no cost to the calls after).
    """

    def __init__(self, limit: int = 256, name: str = ""):
        super().__init__()
        self.limit, self.name = limit, name

    def get_or_make(self, key, make):
        """The plan cached under ``key``, made by ``make()`` (and cached) when there is none; either
        way it becomes the newest, so the plans in use are the last to go."""
        plan = self.pop(key, None)
        if plan is None:
            plan = make()
            if self.name and LOG.isEnabledFor(logging.DEBUG):
                LOG.debug("%s: new plan: %s", self.name, plan.describe())
            while self and len(self) >= self.limit:
                del self[next(iter(self))]
        self[key] = plan
        return plan


_WORKSPACES: dict = {}
# buffers a larger request replaced, and those made during capture: a CUDA graph captured over one
# still reads it, so it stays allocated
_RETIRED: list = []


def workspace(name: str, device: torch.device, shape: tuple, dtype: torch.dtype, zero: bool = False) -> torch.Tensor:
    """A ``shape`` view of a buffer cached per (name, device, dtype).

    Every shape asked for under one name shares one flat buffer, which grows (at least doubling) when
    a request does not fit, so a server whose batch size changes every step holds at most about four
    times the largest request per name (the buffer and those it replaced), not one buffer per size. A
    replaced buffer stays allocated, because a CUDA graph captured over it still reads it.

    ``zero`` buffers are zeroed once when created; kernels that use them must leave them zeroed.
    Shared by every launch on the device, like FlashInfer's workspace: launches that use one must
    not run concurrently on two streams, whatever their shapes. Allocate (make a first call) before
    CUDA-graph capture: a request that does not fit during capture gets a buffer of its own, whose
    zeros exist only once the graph replays, so it never becomes the shared one.
    """
    key = (name, str(device), dtype, zero)
    numel = math.prod(shape)
    buf = _WORKSPACES.get(key)
    if buf is None or buf.numel() < numel:
        make = (torch.zeros if zero else torch.empty)
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            own = make((numel,), dtype=dtype, device=device)
            _RETIRED.append(own)
            return own.view(shape)
        size = numel if buf is None else max(numel, 2 * buf.numel())
        if buf is not None:
            _RETIRED.append(buf)
        buf = kept(device, lambda: make((size,), dtype=dtype, device=device))
        _WORKSPACES[key] = buf
    return buf[:numel].view(shape)


def kept(device: torch.device, make):
    """``make()``, a tensor that outlives the call, made outside torch.compile's CUDA-graph pools.

    torch.compile's CUDA-graph trees send every allocation of the calling thread to their private pool during
    warm-up (``_cuda_beginAllocateCurrentThreadToPool``, side streams included), and refuse a live tensor there that
    no graph output owns. So on CUDA ``make`` runs on a thread of its own, on a side stream ordered after the current
    stream's work before it (what ``make`` reads is ready) and before that stream's work after it; the tensor is
    recorded on the current stream, so its memory is not reused before the work that reads it there is done. Not
    for use during a CUDA-graph capture (``workspace`` allocates apart then)."""
    device = torch.device(device)
    if device.type != "cuda":
        return make()
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)

    def on_side():
        with torch.cuda.device(device), torch.cuda.stream(side):
            return make()

    out = _keeper().submit(on_side).result()
    current.wait_stream(side)
    out.record_stream(current)
    return out


@functools.lru_cache(maxsize=None)
def _keeper():
    """The one thread ``kept`` allocates on."""
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="leanattn-kept")


def tma_allocator() -> None:
    """Give Triton the global scratch that kernels building TMA descriptors on the device need.

    The scratch comes from the workspace cache, so a launch allocates nothing (CUDA-graph capture and
    torch.compile's graph pools never see a new tensor once a size has been seen outside capture).
    """
    import triton

    def alloc(size: int, alignment: int, stream):
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return workspace("tma_scratch", device, (max(size, alignment),), torch.int8)

    triton.set_allocator(alloc)


def device_guard(device: torch.device):
    """Make ``device`` the current CUDA device inside the ``with`` block, as flash-attn's device guard
    does: Triton launches on the current device and stream, not on the tensors' device. A no-op (no
    context switch) when it already is, and off CUDA."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _aligned(arg) -> bool:
    """What Triton specialises a launch argument on besides its type: a tensor's 16-byte alignment. A
    TMA descriptor (``kernels/bifurcated_prefix_gluon.py``) is specialised on its block shape and
    layout, which a launcher's caller keeps fixed; its base must be 16-byte aligned in any case."""
    return arg.data_ptr() % 16 == 0 if isinstance(arg, torch.Tensor) else True


def _launch_hooked() -> bool:
    """Whether a Triton launch hook is registered (a profiler's, such as proton's): Triton's own runner calls
    them, ``_raw_launch`` does not."""
    rt = _triton_knobs.runtime
    enter, exit_ = rt.launch_enter_hook, rt.launch_exit_hook
    # Triton >= 3.5 keeps hooks in a HookChain (never None); earlier ones hold a callable or None
    return bool(getattr(enter, "calls", enter)) or bool(getattr(exit_, "calls", exit_))


def _raw_launch(compiled, grid: tuple, tail: tuple):
    """A launch of ``compiled`` over ``grid`` with ``tail`` appended to the arguments, through the driver's
    launcher without Triton's per-call runner, which builds launch metadata for hooks and looks the driver
    up again on every call (3.5 us of an eager decode call's host time on an H200 machine, 11.2 against 7.7 us
    per launch; decode probe 18). ``None`` where ``compiled`` lacks the handles this needs."""
    run = getattr(compiled, "run", None)
    function = getattr(compiled, "function", None)
    packed = getattr(compiled, "packed_metadata", None)
    current_stream = _stream_getter()
    if run is None or function is None or packed is None or _triton_knobs is None or current_stream is None:
        return None
    g0, g1, g2 = grid

    def launch(*tensors):
        run(g0, g1, g2, current_stream(), function, packed, None, None, None, *tensors, *tail)
    return launch


def _stream_getter():
    """The current stream of the current device as Triton's runner looks it up (a raw handle), or ``None``
    without a GPU driver."""
    try:
        from triton.runtime import driver
        active = driver.active
        stream, device = active.get_current_stream, active.get_current_device
    except Exception:  # no active driver (CPU-only machines)
        return None
    return lambda: stream(device())


class Launcher:
    """One Triton kernel launched many times with the same grid, launch constants and scalar arguments.

    ``Launcher(kernel, grid, meta, scalars)(*tensors)`` launches ``kernel[grid](*tensors, *scalars,
    **meta)``: the tensors (or TMA descriptors) change from call to call, the scalars (strides, sizes, scales, and
    tensors a plan owns, such as workspaces, whose alignment is then not checked again) are fixed with the
    launcher. The first launch goes through the JIT, which compiles. Later launches call the compiled
    kernel directly, skipping the JIT's per-call specialisation of every argument and its cache lookup:
    30-40 us of host time per launch on an H200 machine (an eager decode call 80-92 -> 50-58 us;
    ``benchmarks/results/decode_probes_H200_2026-12-01.md``, probe 11). Triton specialises a tensor
    argument on its dtype and on whether its address is a multiple of 16 bytes, and a scalar on its
    value (equal to 1, a multiple of 16, 32 or 64 bits), which the launcher fixes. Callers keep dtypes
    fixed (they key launchers on them); a launch whose tensors are aligned differently from the first
    one's goes through the JIT again. The direct path skips what the JIT does per call besides
    specialising (pre-run hooks, the check that globals a kernel reads are unchanged, changes to
    Triton's debug settings): leanattn's kernels use none of these. While no launch hook is registered it also
    skips Triton's runner (``_raw_launch``). Under the interpreter, and for
    kernels without a plain parameter list (autotuned, heuristics), every launch goes through the JIT.
    """

    def __init__(self, kernel, grid: tuple, meta: dict, scalars: tuple = ()):
        self.kernel, self.grid, self.meta, self.scalars = kernel, tuple(grid), meta, tuple(scalars)
        self.runner = self.raw = None

    def __call__(self, *tensors) -> None:
        runner = self.runner
        if runner is not None:
            if self.all_aligned:
                # (an OR of the addresses: a third of the host time of comparing alignments one by one)
                bits = 0
                try:
                    for t in tensors:
                        bits |= t.data_ptr()
                except AttributeError:  # not a tensor where the first launch had one: through the JIT
                    bits = 1
                same = not bits & 15
            else:
                same = tuple(_aligned(t) for t in tensors) == self.align
            if same:
                if self.raw is not None and not _launch_hooked():
                    self.raw(*tensors)
                else:
                    runner(*tensors, *self.tail)
                return
        compiled = self.kernel[self.grid](*tensors, *self.scalars, **self.meta)
        params = getattr(self.kernel, "params", None)
        # only a kernel that can be launched directly (benchmarks/offline_resources.py returns stubs)
        if runner is None and params is not None and not interpreting() and hasattr(type(compiled), "__getitem__"):
            rest = [p.name for p in params][len(tensors) + len(self.scalars):]
            if all(n in self.meta for n in rest):  # otherwise a default fills a parameter: keep the JIT
                self.tail = self.scalars + tuple(self.meta[n] for n in rest)
                self.align = tuple(_aligned(t) for t in tensors)
                self.all_aligned = all(isinstance(t, torch.Tensor) for t in tensors) and all(self.align)
                grid = self.grid + (1,) * (3 - len(self.grid))
                self.runner = compiled[grid]
                self.raw = _raw_launch(compiled, grid, self.tail)
