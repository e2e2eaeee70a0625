"""Grid dependency control for programmatic dependent launches (sm_90 and later), where this Triton has it.

A launch made with ``launch_pdl=True`` may start while the launch before it on the stream still runs; it
waits with ``gdc_wait`` before it touches what that launch writes, and the launch before it lets it start
early with ``gdc_launch_dependents`` (``runtime.dependent_launch`` decides). Triton has both since 3.4;
with an older one ``AVAILABLE`` is False, no launch asks for them, and the stand-ins below are never
compiled (they sit under a constexpr ``PDL`` that is then always False).
"""
from __future__ import annotations

import triton

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    AVAILABLE = True
except ImportError:  # pragma: no cover - Triton < 3.4
    AVAILABLE = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass



def launch_meta(pdl: bool) -> dict:
    """The launch constants of a kernel with a constexpr ``PDL`` that waits with ``gdc_wait``: ``PDL`` and, only
    where it is True, ``launch_pdl`` (backends without the option, the interpreter among them, refuse it)."""
    return dict(PDL=pdl, launch_pdl=True) if pdl else dict(PDL=False)


__all__ = ["AVAILABLE", "gdc_launch_dependents", "gdc_wait", "launch_meta"]
