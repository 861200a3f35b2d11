"""The one testing entry: what the tests and benchmarks may set that the public API never does.

- :func:`verify_with_hooks`, :func:`verify_probs_with_hooks`, :func:`sample_with_hooks`: the public functions with the
  hooks ``_uniforms`` [B, K] and ``_noise`` [B, V] (replacing both backends' random numbers, so that they can be
  compared token for token) and the kernel's tile width ``_block_v`` and vocabulary splits ``_num_splits``.
- :func:`kernel_settings`: the kernels' switches (the compiled-launcher shortcut, programmatic dependent launch) for
  the duration of a ``with`` block; :func:`reset_kernel_state`: empties the kernels' process-wide caches.

The public ``specsampler.verify`` / ``verify_probs`` / ``sample`` call the same internal implementations with no hooks.
"""

from __future__ import annotations

import contextlib

from ._api import VerifyResult, _sample, _verify, _verify_probs
from ._tree import TreeResult, _verify_tree
from ._validation import Hooks


def _hooks(uniforms, noise, block_v, num_splits) -> Hooks:
    return Hooks(uniforms=uniforms, noise=noise, block_v=block_v, num_splits=num_splits)


def verify_with_hooks(target_logits, draft_tokens, draft_logits=None, *, _uniforms=None, _noise=None, _block_v=None,
                      _num_splits=None, **options) -> VerifyResult:
    """:func:`specsampler.verify` (same `options`) with the test hooks (see the module docstring)."""
    return _verify(target_logits, draft_tokens, draft_logits, hooks=_hooks(_uniforms, _noise, _block_v, _num_splits),
                   **options)


def verify_probs_with_hooks(target_probs, draft_tokens, draft_probs=None, *, _uniforms=None, _noise=None,
                            _block_v=None, _num_splits=None, **options) -> VerifyResult:
    """:func:`specsampler.verify_probs` (same `options`) with the test hooks."""
    return _verify_probs(target_probs, draft_tokens, draft_probs,
                         hooks=_hooks(_uniforms, _noise, _block_v, _num_splits), **options)


def verify_tree_with_hooks(target_logits, tree_tokens, tree_parents, draft_logits=None, *, _uniforms=None,
                           _noise=None, **options) -> TreeResult:
    """:func:`specsampler.verify_tree` (same `options`) with the hooks ``_uniforms`` [B, N] and ``_noise`` [B, V]."""
    return _verify_tree(target_logits, tree_tokens, tree_parents, draft_logits,
                        hooks=_hooks(_uniforms, _noise, None, None), **options)


def sample_with_hooks(logits, *, _noise=None, _block_v=None, _num_splits=None, **options):
    """:func:`specsampler.sample` (same `options`) with the noise hook [B, V] and the kernel's tiles and splits."""
    return _sample(logits, hooks=_hooks(None, _noise, _block_v, _num_splits), **options)


def _launching():
    from .triton_kernels import launching

    return launching


@contextlib.contextmanager
def kernel_settings(*, fast_launch: bool | None = None, pdl: bool | None = None):
    """Within the block, the kernels' launches go through the compiled-launcher shortcut only if `fast_launch`, and
    use programmatic dependent launch where the device has it if `pdl` (None: unchanged); restored on exit."""
    launching = _launching()
    saved = launching.FAST_LAUNCH, launching.PDL
    try:
        if fast_launch is not None:
            launching.FAST_LAUNCH = fast_launch
        if pdl is not None:
            launching.PDL = pdl
        yield launching
    finally:
        launching.FAST_LAUNCH, launching.PDL = saved


def reset_kernel_state() -> None:
    """Empty the kernels' process-wide caches (compiled launchers, workspaces, launch configurations: see
    ``specsampler.triton_kernels.launching``), and ask again whether triton imports."""
    from . import _validation

    _validation.triton_available.cache_clear()
    _validation.kernels.cache_clear()
    _launching().reset()


@contextlib.contextmanager
def recorded_launches(run: bool = True):
    """Within the block, every kernel launch is recorded (a dict: kernel, grid, args, constexprs, num_warps, device,
    launch_pdl, and its compiled-launcher key), in order, in the list yielded; and made too unless `run` is False."""
    launching = _launching()
    original = launching.launch
    records = []

    def recorded(kernel, grid, args, constexprs, num_warps, device, launch_pdl=False):
        options = dict(num_warps=num_warps, launch_pdl=True) if launch_pdl else dict(num_warps=num_warps)
        records.append(dict(kernel=kernel, grid=grid, args=args, constexprs=constexprs, num_warps=num_warps,
                            device=device, launch_pdl=launch_pdl,
                            key=launching.launch_key(kernel, device, args, constexprs, options)))
        if run:
            original(kernel, grid, args, constexprs, num_warps, device, launch_pdl)

    launching.launch = recorded
    try:
        yield records
    finally:
        launching.launch = original
