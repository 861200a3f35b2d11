"""The public entry point :func:`specsampler.generate`: its options resolved once (:mod:`.settings`), transformers'
processors and stopping criteria built as ``model.generate`` builds them, then the loop (:mod:`.loop`)."""

from __future__ import annotations

import torch

from .declared import NAMED, OPTIONS, parameters_doc, passed, signature_of
from .loop import GenerateOutput, run
from .options import GENERATION_CONFIG_OPTIONS
from .processors import build_processors
from .settings import Settings, check_inputs, resolve_settings
from .stopping import StopRows
from .stopping import stopping_criteria as stopping_criteria_of

__all__ = ["StreamRows", "generate", "run_streamed"]



class StreamRows:
    """The per-step callback that feeds transformers' streamer protocol (``put`` a [1, n] tensor of the row's new
    tokens) and calls the user's ``callback(row, tokens)``."""

    def __init__(self, streamer, callback):
        self.streamer, self.callback = streamer, callback

    def __call__(self, row: int, tokens: list[int]) -> None:
        if self.callback is not None:
            self.callback(row, tokens)
        if self.streamer is not None:
            self.streamer.put(torch.tensor([tokens], dtype=torch.long))


@torch.no_grad()
def generate(target, draft=None, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
             callback=None, assistant_model=None, generation_config=None, streamer=None, stopping_criteria=None,
             tokenizer=None, logits_processor=None, prefix_allowed_tokens_fn=None,
             **generation_kwargs) -> GenerateOutput:
    """Speculative decoding for a batch of (left-padded, ragged) prompts; every row advances at its own pace.

    Takes transformers' names too: ``generate(target, input_ids=ids, attention_mask=mask, assistant_model=draft,
    generation_config=cfg, streamer=streamer, ...)``. Every option left unset comes, as in ``target.generate``, from
    `generation_config`, else ``target.generation_config``, else transformers' defaults (do_sample False, top_k 50,
    max_length 20, ...), resolved once by :func:`~specsampler.generation.settings.resolve_settings`; see
    :data:`~specsampler.generation.options.GENERATION_CONFIG_OPTIONS` for what each ``GenerationConfig`` option does
    here; one that would change the output and is not applied raises a ValueError naming it. Encoder-decoder models
    are refused by name. The options (after `prefix_allowed_tokens_fn` below) are declared once, with their checks, in
    :data:`specsampler.generation.declared.OPTIONS`: the signature and their entries here come from it.

    Parameters
    ----------
    target : transformers.PreTrainedModel
        The causal LM whose distribution the output follows (full attention: Llama, Qwen2, GPT-2, ...).
    draft : transformers.PreTrainedModel or PromptLookupDrafter, optional
        A smaller causal LM with the same tokenizer (its vocabulary may differ by padding; scores for ids past the
        target's vocabulary are dropped and the draft distribution renormalised), or a
        :class:`specsampler.PromptLookupDrafter` (n-gram matches in the sequence, one-hot drafts). Exactly one of
        `draft`, `assistant_model` and `prompt_lookup_num_tokens` is given.
    input_ids : torch.Tensor
        [B, P] int prompts, left padded.
    attention_mask : torch.Tensor, optional
        [B, P] 1 for tokens, 0 for left padding; None: all ones.
    callback : callable, optional
        ``callback(row, tokens)`` after every step, for each row that gained tokens: the row's index in the output
        and its new tokens (a list of ints), e.g. to stream the text of a batch.
    assistant_model : transformers.PreTrainedModel or PromptLookupDrafter, optional
        transformers' name for `draft`.
    generation_config : transformers.GenerationConfig, optional
        Options where no keyword sets them, before ``target.generation_config`` (transformers' order).
    streamer : transformers.generation.BaseStreamer, optional
        transformers' protocol: ``put`` the prompt ([1, P]), then each step's new tokens ([1, n]), ``end()`` at the
        end. One row only (as transformers' streamers); use `callback` for batches.
    stopping_criteria : transformers.StoppingCriteriaList, optional
        A row stops after the first token where a criterion fires, checked token by token (each criterion is called
        with the row's [1, L] sequence and ``scores=None``).
    tokenizer : transformers tokenizer, optional
        For `stop_strings`.
    logits_processor : list of transformers.LogitsProcessor, optional
        Processors of the caller's, applied after those the options build, as ``model.generate`` merges them (at
        every position of target and draft, with its prefix; each must treat rows independently: it is called on the
        rows whose prefixes have the same length). Warpers are refused: pass temperature, top_k, top_p, min_p.
    prefix_allowed_tokens_fn : callable, optional
        ``fn(batch_id, input_ids) -> list of allowed ids``, as in ``model.generate`` (batch_id: the prompt's index).
{options}
    **generation_kwargs
        Any other ``GenerationConfig`` option (e.g. ``repetition_penalty=1.0`` to override a model's config, or
        ``max_length``, ``max_time``, ``max_matching_ngram_size``); refused ones raise a ValueError when set, other
        names a TypeError.

    Returns
    -------
    GenerateOutput
        ``sequences`` [B n, P + N] int64 on input_ids' device and ``stats``; with ``output_scores=True`` /
        ``output_logits=True`` (GenerationConfig options: through `**generation_kwargs` or a config) also ``scores`` /
        ``logits``, one [B n, V] float32 tensor per new token as transformers defines them (see
        :class:`GenerateOutput`). Always a GenerateOutput: ``return_dict_in_generate`` changes nothing here.

    Notes
    -----
    The logits processors the options ask for (repetition penalty, min_new_tokens, no_repeat_ngram_size, bad words,
    suppressed and forced tokens, ...) are transformers' own, built as ``model.generate`` builds them and applied to
    the target's and the draft's scores at every position with that position's prefix (the row's sequence and the
    drafts before it); temperature, top-k, top-p and min-p follow inside :func:`specsampler.sample` and
    :func:`specsampler.verify`. So greedy rows equal ``model.generate``'s and sampled rows follow its distribution.
    Warpers after min-p (typical_p, epsilon/eta cutoffs, top_h), classifier-free guidance and watermarking raise a
    ValueError naming their option. Sliding-window attention is not supported.
    """
    unknown = sorted(k for k in generation_kwargs if k not in OPTIONS and k not in GENERATION_CONFIG_OPTIONS)
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown} (neither specsampler's nor "
                        f"GenerationConfig options)")
    attention_mask = check_inputs(input_ids, attention_mask)
    settings = resolve_settings(target, generation_config, prompt_width=input_ids.shape[1], draft=draft,
                                assistant_model=assistant_model, **passed(generation_kwargs))
    n_seq = settings.num_return_sequences
    if streamer is not None and input_ids.shape[0] * n_seq != 1:
        raise ValueError(f"streamer= takes one row, as transformers' streamers do (here {input_ids.shape[0]} prompts "
                         f"x {n_seq} sequences); for batches pass callback=(row, tokens), called after every step "
                         f"with each row's new tokens")
    crits = stopping_criteria_of(stopping_criteria, settings.value("stop_strings"), settings.value("max_time"),
                                 tokenizer)
    if n_seq > 1:
        input_ids = input_ids.repeat_interleave(n_seq, dim=0)
        attention_mask = attention_mask.repeat_interleave(n_seq, dim=0)
    processors = build_processors(target, settings.options, input_ids, attention_mask, settings.max_new_tokens,
                                  settings.eos_token_ids, logits_processor, prefix_allowed_tokens_fn)
    return run_streamed(target, settings.drafter, input_ids, attention_mask, settings, processors=processors,
                        criteria=crits, callback=callback, streamer=streamer)


def run_streamed(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: Settings, *,
                 processors: list, criteria: list, callback=None, streamer=None) -> GenerateOutput:
    """:func:`~.loop.run` with transformers' streamer protocol around it (the prompt first, ``end()`` last) and the
    stopping `criteria` checked token by token."""
    if streamer is not None:
        streamer.put(input_ids.cpu())
    stop = StopRows(input_ids, criteria, settings.max_new_tokens) if criteria else None
    out = run(target, draft, input_ids, attention_mask, settings, processors=processors, stop=stop,
              callback=StreamRows(streamer, callback) if streamer is not None else callback)
    if streamer is not None:
        streamer.end()
    return out


generate.__signature__ = signature_of(generate, NAMED)
if generate.__doc__:  # (python -OO drops docstrings)
    generate.__doc__ = generate.__doc__.replace("{options}\n", parameters_doc(NAMED) + "\n")
