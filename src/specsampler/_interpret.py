"""Triton's interpreter (``TRITON_INTERPRET=1``) without its redundant re-patching: for the test suite and dry runs.

Under the interpreter a launch patches ``triton.language`` once (``GridExecutor.__call__`` -> ``_patch_lang``: every
builtin of ``tl``, ``tl.tensor``, ``tl.math`` wrapped, by ``inspect.getmembers``) and restores it after the grid; but
every call of a ``@triton.jit`` helper *inside* the kernel patches the same modules again (``InterpretedFunction.
__call__`` -> ``_patch_lang``), finds them already wrapped and changes nothing, at the cost of an
``inspect.getmembers`` walk of each module: 40% of the interpreter's time on this project's kernels (cProfile of a
block-verification launch, Triton 3.9: 63,930 such walks for 20 rows, 15.5 s of 39 s), whose helpers are many and
small. :func:`skip_repatching` makes those nested calls skip the walk once the launch running has patched the
modules they see (``tl``, and ``tl.core`` for ``tl.sum`` and the other helpers of ``triton.language.standard``,
patched by their first nested call: the interpreter never restores a nested call's patch); a helper called outside
a launch is patched as before. Nothing else changes: the same functions run on the same values (tests/test_interpret.py
compares launches with and without it bit for bit; ``SPECSAMPLER_INTERPRETER_REPATCH=1`` turns it off).

Library code never calls this; ``tests/conftest.py`` does when the interpreter is on. Triton versions whose
interpreter lacks the names used here are left alone.
"""

from __future__ import annotations

import inspect
import os

__all__ = ["skip_repatching"]


class _Unchanged:
    """The patch scope of a nested call that patched nothing: nothing to restore."""

    def restore(self) -> None:
        pass


_LANGUAGES: dict[int, frozenset[int]] = {}  # id of a module's globals -> _languages (module globals live on)


def _languages(fn, tl) -> frozenset[int]:
    """The ids of the language modules `fn`'s globals see (what ``_patch_lang`` would patch for it)."""
    key = id(fn.__globals__)
    if key not in _LANGUAGES:
        _LANGUAGES[key] = frozenset(id(v) for v in fn.__globals__.values()
                                    if inspect.ismodule(v) and v in (tl, tl.core))
    return _LANGUAGES[key]


def skip_repatching() -> bool:
    """Install the shortcut into Triton's interpreter (idempotent).

    Returns
    -------
    bool
        True if installed (now or before), False if this Triton's interpreter does not have the expected shape or
        ``SPECSAMPLER_INTERPRETER_REPATCH=1`` asks for the original behaviour.
    """
    if os.environ.get("SPECSAMPLER_INTERPRETER_REPATCH") == "1":
        return False
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    if getattr(interpreter, "_specsampler_skip_repatching", False):
        return True
    executor = getattr(interpreter, "GridExecutor", None)
    original_patch = getattr(interpreter, "_patch_lang", None)
    if executor is None or original_patch is None or not hasattr(interpreter, "InterpretedFunction"):
        return False
    original_call = executor.__call__
    patched = []  # the language modules patched by the launch running now (innermost last)
    entering = []  # a launch about to patch: the next _patch_lang call is its own

    def patch_lang(fn):
        if entering:
            entering.pop()
            scope = original_patch(fn)
            patched.append(_languages(fn, tl))
            return scope
        languages = _languages(fn, tl)
        if patched and languages <= patched[-1]:
            return _Unchanged()
        scope = original_patch(fn)  # (a nested call's patch is never restored, by the interpreter either)
        if patched:
            patched[-1] = patched[-1] | languages
        return scope

    def launch(self, *args, **kwargs):
        depth = len(patched)
        entering.append(True)
        try:
            return original_call(self, *args, **kwargs)
        finally:
            entering.clear()
            del patched[depth:]

    interpreter._patch_lang = patch_lang
    executor.__call__ = launch
    interpreter._specsampler_skip_repatching = True
    return True
