"""transformers' ``GenerationConfig`` options, as :func:`specsampler.generate` treats each: the table, and what
counts as "off" for the refused ones. :mod:`.settings` resolves and checks them."""

from __future__ import annotations

HONOURED, REFUSED, IRRELEVANT = "honoured", "refused", "irrelevant"

#: Every attribute of transformers' ``GenerationConfig`` (4.57 to 5.25), as :func:`generate` treats it, with why.
#: ``honoured``: applied exactly as ``model.generate`` applies it. ``refused``: a value other than its default (or
#: "off" value) raises a ValueError naming the option and where it came from (an argument, ``generation_config=``,
#: ``target.generation_config``): it would change the output, and specsampler does not apply it. ``irrelevant``: it
#: cannot change the tokens generate returns here (output formatting, caching and compilation, other model kinds,
#: drafting heuristics that only change speed), so any value is accepted. A test walks the installed
#: ``GenerationConfig`` and fails on an attribute missing here; at run time an unknown attribute set to a non-default
#: value is refused too.
GENERATION_CONFIG_OPTIONS: dict[str, tuple[str, str]] = {
    # length and stopping
    "max_new_tokens": (HONOURED, "the most new tokens per row; wins over max_length"),
    "max_length": (HONOURED, "prompt width + new tokens, when max_new_tokens is unset (a prompt as long raises)"),
    "eos_token_id": (HONOURED, "a row stops after any of these"),
    "pad_token_id": (HONOURED, "fills rows that finished early (default: the first EOS id)"),
    "stop_strings": (HONOURED, "transformers' StopStringCriteria, checked token by token; needs tokenizer="),
    "max_time": (HONOURED, "transformers' MaxTimeCriteria, checked token by token"),
    "num_return_sequences": (HONOURED, "each prompt repeated, consecutive rows; greedy with n > 1 raises"),
    "min_length": (HONOURED, "MinLengthLogitsProcessor (EOS masked while the sequence is shorter)"),
    "min_new_tokens": (HONOURED, "MinNewTokensLengthLogitsProcessor (EOS masked before that many new tokens)"),
    # sampling
    "do_sample": (HONOURED, "False: greedy; True: sampling from the warped target distribution"),
    "temperature": (HONOURED, "as TemperatureLogitsWarper"),
    "top_k": (HONOURED, "as TopKLogitsWarper (transformers' default 50 applies when unset, as in model.generate)"),
    "top_p": (HONOURED, "as TopPLogitsWarper"),
    "min_p": (HONOURED, "as MinPLogitsWarper"),
    "typical_p": (REFUSED, "TypicalLogitsWarper is not applied"),
    "epsilon_cutoff": (REFUSED, "EpsilonLogitsWarper is not applied"),
    "eta_cutoff": (REFUSED, "EtaLogitsWarper is not applied"),
    "top_h": (REFUSED, "TopHLogitsWarper is not applied"),
    # logits processors: transformers' own, applied at every position of the target and the draft with its prefix
    "repetition_penalty": (HONOURED, "RepetitionPenaltyLogitsProcessor"),
    "encoder_repetition_penalty": (HONOURED, "EncoderRepetitionPenaltyLogitsProcessor (over the prompt)"),
    "no_repeat_ngram_size": (HONOURED, "NoRepeatNGramLogitsProcessor"),
    "encoder_no_repeat_ngram_size": (HONOURED, "EncoderNoRepeatNGramLogitsProcessor (n-grams of the prompt)"),
    "bad_words_ids": (HONOURED, "NoBadWordsLogitsProcessor"),
    "sequence_bias": (HONOURED, "SequenceBiasLogitsProcessor"),
    "suppress_tokens": (HONOURED, "SuppressTokensLogitsProcessor"),
    "begin_suppress_tokens": (HONOURED, "SuppressTokensAtBeginLogitsProcessor"),
    "forced_bos_token_id": (HONOURED, "ForcedBOSTokenLogitsProcessor"),
    "forced_eos_token_id": (HONOURED, "ForcedEOSTokenLogitsProcessor (EOS forced at max_length - 1)"),
    "exponential_decay_length_penalty": (HONOURED, "ExponentialDecayLengthPenalty"),
    "remove_invalid_values": (HONOURED, "InfNanRemoveLogitsProcessor"),
    "guidance_scale": (REFUSED, "classifier-free guidance is not supported"),
    "watermarking_config": (REFUSED, "watermarking is not applied"),
    "renormalize_logits": (IRRELEVANT, "a final log-softmax: softmax and argmax of the scores are unchanged"),
    # other decoding strategies
    "num_beams": (REFUSED, "beam search (num_beams > 1) is not supported"),
    "num_beam_groups": (REFUSED, "group beam search is not supported"),
    "diversity_penalty": (REFUSED, "group beam search is not supported"),
    "constraints": (REFUSED, "constrained beam search is not supported"),
    "force_words_ids": (REFUSED, "constrained beam search is not supported"),
    "penalty_alpha": (REFUSED, "contrastive search is not supported"),
    "dola_layers": (REFUSED, "DoLa decoding is not supported"),
    "token_healing": (REFUSED, "token healing (rewriting the prompt's tail) is not supported"),
    "length_penalty": (IRRELEVANT, "beam search only (num_beams > 1 is refused)"),
    "early_stopping": (IRRELEVANT, "beam search only (num_beams > 1 is refused)"),
    "low_memory": (IRRELEVANT, "beam and contrastive search only (both refused)"),
    # assisted generation
    "num_assistant_tokens": (HONOURED, "K, drafts per step (transformers' global default 20 is not adopted: "
                                       "specsampler's default 4 applies unless a config sets another value)"),
    "num_assistant_tokens_schedule": (HONOURED, "'constant', 'heuristic' ('heuristic_transient' alike) or "
                                                "specsampler's 'cost' ('dynamic' raises)"),
    "prompt_lookup_num_tokens": (HONOURED, "prompt-lookup drafting with K = this, when no drafter is passed"),
    "max_matching_ngram_size": (HONOURED, "the prompt-lookup drafter's longest n-gram (default 3)"),
    "assistant_confidence_threshold": (IRRELEVANT, "when a draft model stops drafting: speed only, not the output"),
    "assistant_lookbehind": (IRRELEVANT, "draft and target with different tokenizers only (not supported)"),
    "target_lookbehind": (IRRELEVANT, "draft and target with different tokenizers only (not supported)"),
    "is_assistant": (IRRELEVANT, "marks a draft's own config"),
    "assistant_early_exit": (REFUSED, "early-exit self-drafting: pass the drafter instead"),
    "assistant_ensemble_weight": (REFUSED, "lossy ensemble verification: specsampler verifies exactly"),
    "speculation_type": (REFUSED, "DFlash drafting is not supported"),
    "use_mtp": (REFUSED, "multi-token-prediction drafting is not supported"),
    # outputs: specsampler.generate returns a GenerateOutput whatever return_dict_in_generate says;
    # transformers' generate (patched, or custom_generate=speculative_generate) its GenerateDecoderOnlyOutput with it
    "return_dict_in_generate": (HONOURED, "specsampler.generate: always a GenerateOutput; transformers' generate: "
                                          "a GenerateDecoderOnlyOutput (sequences, scores, logits)"),
    "output_scores": (HONOURED, "each new token's processed and warped scores, [B, V] per token (finished rows: 0 "
                                "at the pad id, -inf elsewhere)"),
    "output_logits": (HONOURED, "each new token's raw target scores, [B, V] per token (finished rows filled alike)"),
    "output_attentions": (REFUSED, "attentions are not returned"),
    "output_hidden_states": (REFUSED, "hidden states are not returned"),
    "return_legacy_cache": (IRRELEVANT, "no cache is returned (transformers 4.x)"),
    # cache, compilation, batching, special tokens of other model kinds, metadata
    "use_cache": (IRRELEVANT, "specsampler always runs with its own DynamicCache: the same values"),
    "cache_implementation": (REFUSED, "refused when quantized (other values: specsampler's own DynamicCache computes "
                                      "the same values)"),
    "cache_config": (IRRELEVANT, "options of the cache_implementation (quantized ones are refused)"),
    "max_cache_len": (IRRELEVANT, "static caches only"),
    "prefill_chunk_size": (IRRELEVANT, "memory of the prefill only"),
    "compile_config": (IRRELEVANT, "compilation only"),
    "disable_compile": (IRRELEVANT, "compilation only"),
    "continuous_batching_config": (IRRELEVANT, "transformers' generate_batch only"),
    "bos_token_id": (IRRELEVANT, "used when no input_ids are given; generate needs them"),
    "decoder_start_token_id": (IRRELEVANT, "encoder-decoder models only"),
    "transformers_version": (IRRELEVANT, "metadata"),
}

# values that mean "off" besides None and transformers' default (5.x leaves most defaults None)
_OFF_VALUES = {
    "num_beams": (1,), "num_beam_groups": (1,), "diversity_penalty": (0.0,), "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,),
    "min_length": (0,), "min_new_tokens": (0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,), "eta_cutoff": (0.0,),
    "guidance_scale": (1.0,), "penalty_alpha": (0.0,), "remove_invalid_values": (False,), "token_healing": (False,),
    "output_scores": (False,), "output_logits": (False,), "output_attentions": (False,),
    "output_hidden_states": (False,), "use_mtp": (False,),
}
_NOT_QUANTIZED = {"cache_implementation": lambda v: "quantized" not in str(v)}

#: The sampling warpers, in ``model.generate``'s order: option -> (transformers' class in ``logits_process``, whose
#: attribute of the option's name holds the value; the value's type; whether a value makes ``model.generate`` build
#: the warper). :func:`warpers_of` builds them, :func:`warper_values` reads a built one back (both directions here).
WARPERS = {
    "temperature": ("TemperatureLogitsWarper", float, lambda v: v != 1.0),
    "top_k": ("TopKLogitsWarper", int, bool),
    "top_p": ("TopPLogitsWarper", float, lambda v: v is not None and v < 1.0),
    "min_p": ("MinPLogitsWarper", float, bool),
}

#: The options that make ``model.generate`` build a logits processor (applied by
#: :class:`~.processors.PrefixProcessors`).
PROCESSOR_OPTIONS = ("min_length", "min_new_tokens", "repetition_penalty", "encoder_repetition_penalty",
                     "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias",
                     "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                     "exponential_decay_length_penalty", "remove_invalid_values")


def warpers_of(sampling: dict | None) -> list:
    """transformers' warpers for :attr:`~.settings.Settings.sampling` (temperature, top_k, top_p, min_p), in
    ``model.generate``'s order and with its conditions (:data:`WARPERS`); [] when greedy."""
    if sampling is None:
        return []
    from transformers.generation import logits_process as lp

    # (each built with its option's value alone: top-k, top-p and min-p keep at least 1 token, as generate's do)
    return [getattr(lp, cls)(sampling[name]) for name, (cls, _, applies) in WARPERS.items() if applies(sampling[name])]


def warper_values(proc) -> dict | None:
    """The option a built warper holds ({"temperature": T}, ...; the inverse of :func:`warpers_of`), None for any
    other processor. The value is checked where it is used, by the option's declared check."""
    from transformers.generation import logits_process as lp

    for name, (cls, kind, _) in WARPERS.items():
        if isinstance(proc, getattr(lp, cls)):
            return {name: kind(getattr(proc, name))}
    return None


def same(a, b) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # tensors, odd objects
        return False


def global_defaults() -> dict:
    """transformers' defaults for options no config sets: 5.x's ``_get_default_generation_params()``; 4.x keeps them
    in every ``GenerationConfig`` (``{}`` here)."""
    from transformers import GenerationConfig

    get = getattr(GenerationConfig, "_get_default_generation_params", None)
    return dict(get()) if get is not None else {}


def is_off(name: str, value, defaults: dict, fresh) -> bool:
    """Whether a refused option's `value` leaves the output as it is (None, the default, an "off" value)."""
    if value is None or same(value, defaults.get(name, getattr(fresh, name, None))):
        return True
    if isinstance(value, (list, tuple, dict)) and not value:
        return True
    if name in _NOT_QUANTIZED:
        return _NOT_QUANTIZED[name](value)
    return any(same(value, off) for off in _OFF_VALUES.get(name, ()))
