"""Test-only speed-up of Triton 3.8's interpreter: patch ``triton.language`` once a launch, not once a call.

The interpreter swaps ``triton.language``'s builtins for interpreted ones when a kernel launches
(``GridExecutor.__call__`` calls ``_patch_lang`` and restores after), and again on every call of a
``@triton.jit`` helper from inside the kernel (``InterpretedFunction.__call__``). The second is redundant
while a launch's patches are in place: the builtins found then are already the interpreted ones, and
``inspect.getmembers`` over the language modules on each helper call is costly: with this patch the whole
CPU suite took 787 s instead of 994 (2 workers, 2026-12-07). Here a helper call inside a launch reuses the
launch's patches when its function sees no language module the launch did not patch. Nothing changes outside the interpreter, and nothing on another
Triton release: the pin is checked, so a new release runs unpatched until this is checked against it.
"""
from __future__ import annotations

import inspect
import os

import triton

_PINNED = "3.8.0"


def install() -> bool:
    """Wraps ``triton.runtime.interpreter._patch_lang`` where kernels are interpreted (``TRITON_INTERPRET=1``) on
    Triton ``_PINNED``, unless ``LEANATTN_TEST_PATCH_ONCE=0``; returns whether it did. Called by ``conftest.py``, and
    at import by the test modules whose functions run in spawned ranks (which do not load ``conftest.py``)."""
    if (triton.__version__ != _PINNED or os.environ.get("TRITON_INTERPRET") != "1"
            or os.environ.get("LEANATTN_TEST_PATCH_ONCE", "1") != "1"):
        return False
    from triton.runtime import interpreter as interp
    if getattr(interp._patch_lang, "_once", False):
        return True
    real, launch = interp._patch_lang, interp.GridExecutor.__call__
    tl = interp.tl
    launches: list[dict] = []  # the launch in progress: the language modules it patches, and whether it has

    def langs(fn) -> set:
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    class _Nothing:
        def restore(self):
            pass

    def patch_lang(fn):
        now = launches[-1] if launches else None
        if now is not None and now["patched"] and langs(fn) <= now["langs"]:
            return _Nothing()  # a helper's call inside a launch whose patches are in place
        scope = real(fn)
        if now is not None:
            now["patched"] = True  # the launch's own call (its caller restores it when the launch ends)
        return scope

    def launch_once(self, *args, **kwargs):
        launches.append({"langs": langs(self.fn), "patched": False})
        try:
            return launch(self, *args, **kwargs)
        finally:
            launches.pop()

    patch_lang._once = True
    interp._patch_lang = patch_lang
    interp.GridExecutor.__call__ = launch_once
    return True
