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

transformers is imported lazily: ``import specsampler`` does not need it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

from ._api import verify

__all__ = ["patch_transformers", "patched_transformers", "speculative_generate", "unpatch_transformers"]


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
        extra = a.setdefault("kwargs", {}) if "kwargs" in sig.parameters else {}
        model, cfg = a["self"], a.get("generation_config")
        lookup = extra.get("prompt_lookup_num_tokens")
        if lookup is None:
            lookup = getattr(cfg if cfg is not None else model.generation_config, "prompt_lookup_num_tokens", None)
        assistant = a.get("assistant_model")
        if (assistant is None and not lookup) or a.get("custom_generate") is not None or \
                extra.get("assistant_tokenizer") is not None or "kwargs" not in sig.parameters or \
                getattr(model.config, "is_encoder_decoder", False):  # (decoder-only models only)
            return original(*args, **kwargs)
        a["assistant_model"] = None
        a["custom_generate"] = speculative_generate
        extra["draft_model"] = assistant
        if a.get("streamer") is not None:
            extra["token_streamer"] = a["streamer"]
            a["streamer"] = None
        return original(*bound.args, **bound.kwargs)

    generate._specsampler_original = original
    return generate


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
    (``assistant_ensemble_weight``, an ``assistant_tokenizer``) go to the originals.
    """
    utils = _utils()
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


def speculative_generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                         draft_model=None, num_draft_tokens: int | None = None, seed: int | None = None,
                         token_streamer=None, **model_kwargs):
    """Batched speculative decoding as a ``custom_generate`` callable.

    Use: ``model.generate(input_ids, attention_mask=mask, custom_generate=speculative_generate, draft_model=draft,
    max_new_tokens=32, do_sample=True, top_k=20)``. transformers prepares the inputs, the generation config and the
    warpers, then calls this function, which runs :func:`specsampler.generate` (the draft travels as ``draft_model``
    because ``generate`` consumes ``assistant_model`` itself). The warpers' values are read from the prepared list and
    applied by specsampler itself (:func:`specsampler.sample` for the drafts, :func:`specsampler.verify`).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The target (``self`` of ``generate``).
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
        ``do_sample``, ``max_length``, EOS and pad ids.
    draft_model : PreTrainedModel or PromptLookupDrafter, optional
        The drafter. Without it ``prompt_lookup_num_tokens=N`` (a generation option: it arrives in
        `generation_config`) drafts by prompt lookup; without either a ValueError says why ``assistant_model=`` cannot
        reach this function (nothing falls back silently).
    num_draft_tokens : int, optional
        K; default the generation config's ``prompt_lookup_num_tokens`` with prompt lookup, else its
        ``num_assistant_tokens``, else 4. The draft length follows the generation config's
        ``num_assistant_tokens_schedule`` (the call's or the target's; default "constant"), as in
        :func:`specsampler.generate`.
    seed : int, optional
        Seeds the sampling.
    token_streamer : BaseStreamer, optional
        A transformers streamer for a single row (``generate`` keeps its own ``streamer=`` from a ``custom_generate``
        callable, so it travels under this name; the patched ``generate`` passes it so): the prompt, then each
        step's tokens, then ``end()``.
    **model_kwargs
        ``attention_mask`` is used; the rest (the cache ``generate`` prepared, position ids) is ignored.

    Returns
    -------
    torch.Tensor or GenerateDecoderOnlyOutput
        [B, P + N] sequences (an output object with only ``sequences`` when ``return_dict_in_generate``).
    """
    from transformers import GenerationConfig

    from ._generate import _refuse_unsupported, _run, _sampling, _schedule, _stop_rows, _StreamRows, check_options
    from ._processors import split_processors
    from .drafters import PromptLookupDrafter

    cfg = generation_config if generation_config is not None else model.generation_config
    # the options transformers merged (the call's and the model's): a refused one set (num_beams > 1, output_scores,
    # dola_layers, ...) raises by name, as in specsampler.generate (attributes GenerationConfig does not define, such as
    # a model's own extra fields, decide nothing in generate and are left alone)
    known = vars(GenerationConfig())
    _refuse_unsupported({name: (value, "the generation config") for name, value in vars(cfg).items()
                         if name in known and not name.startswith("_")}, who="speculative_generate")
    lookup = getattr(cfg, "prompt_lookup_num_tokens", None)
    if draft_model is None and not lookup:
        raise ValueError(NO_DRAFTER)
    if num_draft_tokens is None:  # K: prompt lookup's N, else a num_assistant_tokens somebody set, else 4
        set_k = getattr(cfg, "num_assistant_tokens", None)
        set_k = None if set_k == getattr(GenerationConfig(), "num_assistant_tokens", None) else set_k
        num_draft_tokens = int(lookup) if draft_model is None else int(set_k or 4)
    streamer = token_streamer
    if streamer is not None and input_ids.shape[0] != 1:
        raise ValueError(f"streamer= takes one row, as transformers' streamers do (here {input_ids.shape[0]})")
    do_sample = bool(cfg.do_sample)
    # transformers merged the call's options with the model's config into `cfg` and built its processors from them:
    # the warpers' values go to sample / verify, the other processors are applied position by position
    processors, warpers = split_processors(logits_processor)
    warp = dict(temperature=1.0, top_k=None, top_p=None, min_p=None) | warpers
    eos = getattr(cfg, "_eos_token_tensor", None)
    eos = eos if eos is not None else cfg.eos_token_id
    eos = [] if eos is None else eos
    pad = getattr(cfg, "_pad_token_tensor", None)
    pad = int(pad) if pad is not None else cfg.pad_token_id
    max_new = int(cfg.max_length) - input_ids.shape[1]
    if max_new < 1:
        return input_ids
    check_options(max_new_tokens=max_new, num_draft_tokens=num_draft_tokens, do_sample=do_sample, seed=seed, **warp)
    schedule = _schedule(getattr(cfg, "num_assistant_tokens_schedule", None))
    # (transformers has repeated the prompts for num_return_sequences already, and prepared the stopping criteria:
    # max length, EOS, stop strings and the caller's own, checked token by token within each step)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    out = _run(model, draft_model if draft_model is not None else PromptLookupDrafter(), input_ids,
               model_kwargs.get("attention_mask"), max_new_tokens=max_new, num_draft_tokens=num_draft_tokens,
               sampling=_sampling(do_sample, **warp), seed=seed, eos_token_id=eos, pad_token_id=pad,
               callback=None if streamer is None else _StreamRows(streamer, None),
               stop=_stop_rows(input_ids, list(stopping_criteria or [])), schedule=schedule, processors=processors)
    if streamer is not None:
        streamer.end()
    if getattr(cfg, "return_dict_in_generate", False):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=out.sequences)
    return out.sequences

