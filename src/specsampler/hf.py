"""specsampler inside transformers' own ``generate``.

- :func:`patch_transformers` makes ``model.generate(inputs, assistant_model=draft, ...)`` and
  ``model.generate(inputs, prompt_lookup_num_tokens=n, ...)`` run specsampler's batched speculative decoding, at any
  batch size (transformers' own assisted generation takes one row), with the logits processors, stopping criteria and
  streamer transformers prepared: ``GenerationMixin.generate`` is wrapped so that such a call goes through
  ``custom_generate=speculative_generate`` (the draft as ``draft_model``, the streamer alongside). It also replaces
  ``transformers.generation.utils._speculative_sampling`` (the verify step of transformers' own assisted generation
  with ``do_sample=True``, which still runs where the wrapper steps aside: a different assistant tokenizer) by a
  wrapper with the installed version's signature that verifies with :func:`specsampler.verify`.
  :func:`unpatch_transformers` restores both; :func:`patched_transformers` is the context manager.
- :func:`speculative_generate` is a callable for ``model.generate(..., custom_generate=speculative_generate,
  draft_model=draft)``: batched speculative decoding (:func:`specsampler.generate`) behind transformers' ``generate``.
  transformers (4.57 to 5.25) drops ``tokenizer=`` on the way to a ``custom_generate`` callable and then refuses
  ``stop_strings=`` for want of one; so reaching ``speculative_generate`` (``specsampler.speculative_generate``, or
  importing it from here) first wraps ``GenerationMixin._extract_generation_mode_kwargs`` to keep the tokenizer the
  caller passed, for this callable only (:func:`keep_tokenizer_for_speculative_generate`; every other call is left
  as it is). That is the moment transformers is imported for it: ``import specsampler`` alone imports nothing.

transformers is imported lazily: ``import specsampler`` does not need it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

from ._api import verify
from .generation.declared import OWN, check_given, signature_of

__all__ = ["keep_tokenizer_for_speculative_generate", "patch_transformers", "patched_transformers",  # noqa: F822
           "speculative_generate", "unpatch_transformers"]  # (speculative_generate: reached through __getattr__)


def _utils():
    import transformers.generation.utils as utils

    return utils


def _make_wrapper(original):
    """A drop-in for `original` (the installed ``_speculative_sampling``) that verifies with specsampler.

    Signatures handled: 4.57 to 5.12 ``(candidate_input_ids, candidate_logits, candidate_length, new_logits,
    is_done_candidate)``, 5.16 with ``assistant_ensemble_weight`` (not None: delegated to `original`), and later
    ones without ``is_done_candidate``. Returns ``(valid_tokens [1, n+1], n_matches)`` like the original; both logit
    tensors arrive already warped, so verification runs at temperature 1.
    """
    sig = inspect.signature(original)

    @functools.wraps(original)
    def _speculative_sampling(*args, **kwargs):
        a = sig.bind(*args, **kwargs)
        a.apply_defaults()
        a = a.arguments
        cand_ids, cand_logits = a["candidate_input_ids"], a["candidate_logits"]
        length, new_logits = int(a["candidate_length"]), a["new_logits"]
        if (a.get("assistant_ensemble_weight") is not None or cand_logits is None or length < 1
                or cand_ids.shape[0] != 1 or cand_logits.shape[-1] > new_logits.shape[-1]):
            return original(*args, **kwargs)
        drafts = cand_ids[:, -length:]
        res = verify(new_logits[:, : length + 1], drafts.to(new_logits.device),
                     cand_logits[:, :length].to(new_logits.device))
        n_matches = res.num_accepted[0]
        n = int(n_matches)  # the host needs it anyway: the caller slices with it
        if a.get("is_done_candidate") and n == length:
            # the last candidate ends the sequence (EOS or max length): no bonus token
            return drafts[:, :length], n_matches - 1
        return res.tokens[:, : n + 1].to(cand_ids.device), n_matches

    _speculative_sampling._specsampler_original = original
    return _speculative_sampling


def _make_generate(original):
    """A drop-in for ``GenerationMixin.generate`` that sends assisted and prompt-lookup calls to
    :func:`speculative_generate` (through transformers' own ``custom_generate``, so that it prepares the generation
    config, the processors and the stopping criteria as for any call); every other call goes to `original` as is."""
    sig = inspect.signature(original)

    @functools.wraps(original)
    def generate(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        a = bound.arguments
        if "kwargs" not in sig.parameters:
            return original(*args, **kwargs)
        extra = a.setdefault("kwargs", {})
        if not _is_speculative(a, extra):
            return original(*args, **kwargs)
        extra["draft_model"], a["assistant_model"] = a.get("assistant_model"), None
        a["custom_generate"] = _speculative_generate
        if a.get("streamer") is not None:
            extra["token_streamer"], a["streamer"] = a["streamer"], None
        return original(*bound.args, **bound.kwargs)

    generate._specsampler_original = original
    return generate


def _is_speculative(a: dict, extra: dict) -> bool:
    """Whether a ``generate`` call (its bound arguments `a`, `extra` its **kwargs) is one specsampler runs: a draft
    model or prompt lookup, a decoder-only target, no custom_generate and no assistant tokenizer of its own."""
    model, cfg = a["self"], a.get("generation_config")
    lookup = extra.get("prompt_lookup_num_tokens")
    if lookup is None:
        lookup = getattr(cfg if cfg is not None else model.generation_config, "prompt_lookup_num_tokens", None)
    return (a.get("assistant_model") is not None or bool(lookup)) and a.get("custom_generate") is None and \
        extra.get("assistant_tokenizer") is None and not getattr(model.config, "is_encoder_decoder", False)


def _mixin():
    from transformers.generation.utils import GenerationMixin

    return GenerationMixin


def is_patched() -> bool:
    """Whether transformers' ``generate`` and ``_speculative_sampling`` are specsampler's."""
    return hasattr(_utils()._speculative_sampling, "_specsampler_original")


def patch_transformers() -> None:
    """Make ``model.generate(assistant_model=...)`` / ``(prompt_lookup_num_tokens=...)`` run specsampler's batched
    speculative decoding, and transformers' own assisted generation verify with :func:`specsampler.verify`.

    Idempotent: patching twice keeps one wrapper around each original. Options specsampler does not support
    (``assistant_ensemble_weight``, an ``assistant_tokenizer``) go to the originals. ``stop_strings=`` with
    ``tokenizer=`` work through :func:`keep_tokenizer_for_speculative_generate` (which :func:`unpatch_transformers`
    leaves in place: it changes no other call).
    """
    utils = _utils()
    keep_tokenizer_for_speculative_generate()  # (stop_strings= with tokenizer=; left in place by unpatch)
    if not is_patched():
        mixin = _mixin()
        mixin.generate = _make_generate(mixin.generate)
        utils._speculative_sampling = _make_wrapper(utils._speculative_sampling)


def unpatch_transformers() -> None:
    """Undo :func:`patch_transformers` (a no-op when not patched)."""
    utils = _utils()
    if is_patched():
        mixin = _mixin()
        if hasattr(mixin.generate, "_specsampler_original"):
            mixin.generate = mixin.generate._specsampler_original
        utils._speculative_sampling = utils._speculative_sampling._specsampler_original


@contextlib.contextmanager
def patched_transformers():
    """Context manager: transformers verifies with specsampler inside the block (restored after, unless it was
    already patched before the block)."""
    was = is_patched()
    patch_transformers()
    try:
        yield
    finally:
        if not was:
            unpatch_transformers()


NO_DRAFTER = ("speculative_generate needs a drafter: pass draft_model=<the draft model> (transformers' generate keeps "
              "assistant_model= for itself and never hands it to a custom_generate callable, so it cannot reach "
              "specsampler), or prompt_lookup_num_tokens=N for prompt lookup; specsampler.patch_transformers() makes "
              "generate(assistant_model=...) itself verify with specsampler")


def _speculative_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                         draft_model=None, token_streamer=None, tokenizer=None, **model_kwargs):
    """Batched speculative decoding as a ``custom_generate`` callable.

    Use: ``model.generate(input_ids, attention_mask=mask, custom_generate=speculative_generate, draft_model=draft,
    max_new_tokens=32, do_sample=True, top_k=20)``. transformers prepares the inputs, the generation config and the
    warpers, then calls this function, which runs specsampler's batched speculative decoding (the draft travels as
    ``draft_model`` because ``generate`` consumes ``assistant_model`` itself). The options are resolved by the same
    resolver as :func:`specsampler.generate` (:func:`specsampler.generation.settings.resolve_settings`) from the
    generation config transformers prepared; the warpers' values are read from the prepared list and applied by
    specsampler itself (:func:`specsampler.sample` for the drafts, :func:`specsampler.verify`).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The target (``self`` of ``generate``), decoder-only (an encoder-decoder model raises a ValueError).
    input_ids : torch.Tensor
        [B, P] left-padded prompts.
    logits_processor : LogitsProcessorList
        Prepared by ``generate``: its processors (repetition penalty, min_new_tokens, the caller's own, ...) are
        applied to target and draft scores at every position with that position's prefix, and its temperature, top-k,
        top-p and min-p warpers inside :func:`specsampler.sample` and :func:`specsampler.verify`; one that cannot be
        applied exactly (typical_p, epsilon/eta cutoffs, guidance, watermarking) raises a ValueError naming it.
    stopping_criteria : StoppingCriteriaList
        Prepared by ``generate`` (max length, EOS, stop strings, the caller's own): a row stops at the first token
        where one fires.
    generation_config : GenerationConfig
        As transformers prepared it: ``do_sample``, ``max_length``, EOS and pad ids, the draft length options.
    draft_model : PreTrainedModel or PromptLookupDrafter, optional
        The drafter. Without it ``prompt_lookup_num_tokens=N`` (a generation option: it arrives in
        `generation_config`, with ``max_matching_ngram_size``) drafts by prompt lookup; without either a ValueError
        says why ``assistant_model=`` cannot reach this function (nothing falls back silently).
    token_streamer : BaseStreamer, optional
        A transformers streamer for a single row (``generate`` keeps its own ``streamer=`` from a ``custom_generate``
        callable, so it travels under this name; the patched ``generate`` passes it so): the prompt, then each
        step's tokens, then ``end()``.
    tokenizer : optional
        Accepted for transformers' stop strings (the stopping criteria arrive prepared, a StopStringCriteria among
        them: transformers gets the tokenizer through :func:`keep_tokenizer_for_speculative_generate`).
    {own} : optional
        specsampler's own options (:data:`specsampler.generation.declared.OWN`), as in :func:`specsampler.generate`
        (``model.generate(..., draft_tree=(3, 2, 1, 1))`` hands them here, under the patch too: transformers reads
        them from this function's signature). ``num_draft_tokens`` None: the generation config's
        ``prompt_lookup_num_tokens`` with prompt lookup, else its ``num_assistant_tokens``, else 4; the draft length
        follows its ``num_assistant_tokens_schedule``.
    **model_kwargs
        ``attention_mask`` is used; the rest (the cache ``generate`` prepared, position ids) is ignored.

    Returns
    -------
    torch.Tensor or GenerateDecoderOnlyOutput
        [B, P + N] sequences; with ``return_dict_in_generate``, transformers' ``GenerateDecoderOnlyOutput`` with
        ``sequences`` and, when ``output_scores`` / ``output_logits`` ask for them, ``scores`` / ``logits`` (one [B, V]
        float32 tensor per new token, as :attr:`specsampler.GenerateOutput.scores` describes; without
        ``return_dict_in_generate`` they are not computed, as in transformers). Attentions and hidden states are
        refused by name.
    """
    from .generation.api import run_streamed
    from .generation.processors import split_processors
    from .generation.settings import (
        WARPER_OPTIONS,
        check_inputs,
        check_models,
        refuse_unsupported,
        resolve_generation_options,
        resolve_settings,
    )

    own = {name: model_kwargs.pop(name) for name in OWN if name in model_kwargs}
    check_models(model, draft_model, who="speculative_generate")
    cfg = generation_config if generation_config is not None else model.generation_config
    if draft_model is None and not getattr(cfg, "prompt_lookup_num_tokens", None):
        raise ValueError(NO_DRAFTER)
    if token_streamer is not None and input_ids.shape[0] != 1:
        raise ValueError(f"streamer= takes one row, as transformers' streamers do (here {input_ids.shape[0]})")
    attention_mask = check_inputs(input_ids, model_kwargs.get("attention_mask"))
    max_new = int(cfg.max_length) - input_ids.shape[1]
    if max_new < 1:
        return input_ids
    # transformers merged the call's options with the model's config into `cfg` and built its processors from them:
    # an option specsampler cannot apply is named first (before the processor it built), then the warpers' values go
    # to sample / verify and the other processors are applied position by position
    refuse_unsupported(resolve_generation_options(model, cfg), "speculative_generate")
    # the warpers' values as the config holds them, by their declared checks (transformers builds no warper for
    # top_p >= 1: 1.5 would pass unchecked); those read back from the warpers get the same checks in the resolver
    check_given({name: getattr(cfg, name, None) for name in WARPER_OPTIONS})
    processors, warpers = split_processors(logits_processor)
    settings = resolve_settings(model, cfg, prompt_width=input_ids.shape[1], draft=draft_model, returns_dict=False,
                                who="speculative_generate", max_new_tokens=max_new, eos_token_id=_prepared_eos(cfg),
                                pad_token_id=_prepared_pad(cfg), **own,
                                **(dict(temperature=1.0, top_k=None, top_p=None, min_p=None) | warpers))
    # (transformers has repeated the prompts for num_return_sequences already, and prepared the stopping criteria)
    out = run_streamed(model, settings.drafter, input_ids, attention_mask, settings, processors=processors,
                       criteria=list(stopping_criteria or []), streamer=token_streamer)
    if getattr(cfg, "return_dict_in_generate", False):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=out.sequences, scores=out.scores, logits=out.logits)
    return out.sequences


_speculative_generate.__name__ = _speculative_generate.__qualname__ = "speculative_generate"
# specsampler's own options in its signature (transformers hands a custom_generate callable the keywords its
# signature names) and docstring, from the declaration
_speculative_generate.__signature__ = signature_of(_speculative_generate, OWN)
if _speculative_generate.__doc__:
    _speculative_generate.__doc__ = _speculative_generate.__doc__.replace("{own}", ", ".join(OWN))


def keep_tokenizer_for_speculative_generate() -> bool:
    """Make transformers' ``generate`` hand ``tokenizer=`` to :func:`speculative_generate` (idempotent).

    transformers (4.57 to 5.25) pops ``tokenizer`` from ``generate``'s keywords and, for a ``custom_generate``
    callable, replaces what it popped by the callable's own keywords, so the tokenizer reaches neither the callable
    nor transformers' own stopping criteria, which then refuse ``stop_strings``. The wrapper around
    ``GenerationMixin._extract_generation_mode_kwargs`` puts the caller's tokenizer back when the callable is
    :func:`speculative_generate` (any other call is left as transformers makes it): its StopStringCriteria is then
    built as for ``target.generate(..., stop_strings=..., tokenizer=...)``.

    Returns
    -------
    bool
        Whether the wrapper is in place (False: transformers is not installed, or has no such method).
    """
    try:
        from transformers.generation.utils import GenerationMixin
    except ImportError:
        return False
    original = getattr(GenerationMixin, "_extract_generation_mode_kwargs", None)
    if original is None:
        return False
    if getattr(original, "_specsampler_keeps_tokenizer", False):
        return True

    @functools.wraps(original)
    def _extract_generation_mode_kwargs(self, custom_generate, kwargs, *args, **more):
        if custom_generate is _speculative_generate:  # (before transformers builds its config and warpers from them)
            check_given({name: value for name, value in kwargs.items() if name not in OWN})
        tokenizer = kwargs.get("tokenizer") if custom_generate is _speculative_generate else None
        out = original(self, custom_generate, kwargs, *args, **more)
        if tokenizer is not None:
            out.setdefault("tokenizer", tokenizer)
        return out

    _extract_generation_mode_kwargs._specsampler_keeps_tokenizer = True
    GenerationMixin._extract_generation_mode_kwargs = _extract_generation_mode_kwargs
    return True


def __getattr__(name: str):
    """``speculative_generate``, with transformers made to hand it ``tokenizer=`` first (PEP 562: this runs when the
    name is reached, so ``import specsampler`` does not import transformers)."""
    if name == "speculative_generate":
        keep_tokenizer_for_speculative_generate()
        return _speculative_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _prepared_eos(cfg) -> list[int]:
    """The EOS ids transformers prepared (its special-token tensor, else the config's)."""
    eos = getattr(cfg, "_eos_token_tensor", None)
    eos = eos if eos is not None else cfg.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos.flatten().tolist() if hasattr(eos, "flatten") else
                             ([eos] if isinstance(eos, int) else eos))]


def _prepared_pad(cfg) -> int | None:
    """The pad id transformers prepared (its special-token tensor, else the config's)."""
    pad = getattr(cfg, "_pad_token_tensor", None)
    return int(pad) if pad is not None else cfg.pad_token_id
