"""What the plugin replaces in vLLM, all or nothing.

Three attributes of vLLM are replaced, after every one of them (and what the replacement calls) was found:

- ``RejectionSampler.forward`` (``vllm.v1.sample.rejection_sampler``): :func:`specsampler.vllm.sampler.forward`.
- ``SamplingParams._validate_spec_decode``: vLLM refuses ``min_p`` and ``logit_bias`` there when a speculative config
  is set; the plugin applies both, so the check is lifted (it checks nothing else in the supported versions).
- ``build_logitsprocs`` (``vllm.v1.sample.logits_processor``, and its binding in ``vllm.v1.worker.gpu_model_runner``
  where that module is already imported): under speculation vLLM builds only the min-tokens processor; the plugin
  builds the built-in ones (min-tokens, logit bias, min-p) as without speculation. Custom logits processors are still
  refused under speculation, by vLLM.

:func:`uninstall` puts the originals back (the tests use it).
"""

from __future__ import annotations

import importlib
import sys

from .state import STATE, log

_ORIGINALS: dict[tuple[object, str], object] = {}

_REQUIRED = {
    "vllm.v1.sample.rejection_sampler": ("RejectionSampler", "PLACEHOLDER_TOKEN_ID"),
    "vllm.v1.sample.logits_processor": ("build_logitsprocs", "BUILTIN_LOGITS_PROCESSORS", "LogitsProcessors"),
    "vllm.v1.sample.logits_processor.builtin": ("MinPLogitsProcessor", "LogitBiasLogitsProcessor",
                                                "MinTokensLogitsProcessor"),
    "vllm.v1.sample.ops.bad_words": ("apply_bad_words_with_drafts",),
    "vllm.v1.sample.ops.topk_topp_sampler": ("apply_top_k_top_p",),
    "vllm.sampling_params": ("SamplingParams",),
}
_METHODS = {
    ("vllm.v1.sample.rejection_sampler", "RejectionSampler"): ("forward", "_get_logprobs_tensors", "apply_penalties",
                                                                "_combine_outputs_with_spec_tokens"),
    ("vllm.sampling_params", "SamplingParams"): ("_validate_spec_decode",),
    ("vllm.v1.sample.logits_processor.builtin", "MinTokensLogitsProcessor"): ("apply_with_spec_decode",),
}


def _missing() -> list[str]:
    """What the patch needs and this vLLM lacks (empty: everything is there)."""
    missing = []
    for name, attrs in _REQUIRED.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            missing.append(name)
            continue
        missing += [f"{name}.{a}" for a in attrs if not hasattr(module, a)]
    for (name, cls), attrs in _METHODS.items():
        owner = getattr(sys.modules.get(name), cls, None)
        missing += [f"{name}.{cls}.{a}" for a in attrs if owner is not None and not hasattr(owner, a)]
    return missing


def _replace(owner, attr: str, value) -> None:
    _ORIGINALS.setdefault((owner, attr), owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr))
    setattr(owner, attr, value)


def installed() -> bool:
    """Whether the patch is in place in this process."""
    return bool(_ORIGINALS)


def install(method: str = "token", backend: str = "auto") -> bool:
    """Replace vLLM's rejection sampling (see the module docstring); False, with a warning, when something is missing.

    Parameters
    ----------
    method : {"token", "block"}
    backend : {"auto", "torch", "triton"}

    Returns
    -------
    bool
        True when the patch is (now) in place; calling again only updates `method` and `backend`.
    """
    STATE.update(method=method, backend=backend)
    if installed():
        return True
    missing = _missing()
    if missing:
        log.warning("specsampler.vllm: this vLLM lacks %s: its own rejection sampler is left in place",
                     ", ".join(missing))
        return False
    from vllm.sampling_params import SamplingParams
    from vllm.v1.sample import logits_processor
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    from . import sampler

    original_build = logits_processor.build_logitsprocs
    _replace(RejectionSampler, "forward", sampler.forward)
    _replace(SamplingParams, "_validate_spec_decode", _validate_spec_decode)
    patched_build = _build_logitsprocs(original_build)
    _replace(logits_processor, "build_logitsprocs", patched_build)
    runner = sys.modules.get("vllm.v1.worker.gpu_model_runner")
    if runner is not None and getattr(runner, "build_logitsprocs", None) is original_build:
        _replace(runner, "build_logitsprocs", patched_build)
    return True


def uninstall() -> None:
    """Put vLLM's originals back."""
    for (owner, attr), value in _ORIGINALS.items():
        setattr(owner, attr, value)
    _ORIGINALS.clear()


def _validate_spec_decode(self, speculative_config) -> None:
    """vLLM's check refuses min_p and logit_bias with speculation; the plugin applies both, so nothing is refused."""
    return None


def _build_logitsprocs(original):
    """``build_logitsprocs`` that builds the built-in processors under speculation too (custom ones: vLLM's refusal)."""

    def build_logitsprocs(vllm_config, device, is_pin_memory, is_pooling_model, custom_logitsprocs=()):
        if vllm_config.speculative_config is None or is_pooling_model or custom_logitsprocs:
            return original(vllm_config, device, is_pin_memory, is_pooling_model, custom_logitsprocs)
        from vllm.v1.sample.logits_processor import BUILTIN_LOGITS_PROCESSORS, LogitsProcessors

        return LogitsProcessors(ctor(vllm_config, device, is_pin_memory) for ctor in BUILTIN_LOGITS_PROCESSORS)

    build_logitsprocs.__wrapped__ = original
    return build_logitsprocs
