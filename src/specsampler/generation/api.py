"""The public entry point :func:`specsampler.generate`: its options resolved once (:mod:`.settings`), transformers'
processors and stopping criteria built as ``model.generate`` builds them, then the loop (:mod:`.loop`)."""

from __future__ import annotations

import torch

from .loop import GenerateOutput, run
from .options import GENERATION_CONFIG_OPTIONS
from .processors import build_processors
from .settings import Settings, check_inputs, resolve_settings
from .stopping import StopRows
from .stopping import stopping_criteria as stopping_criteria_of

__all__ = ["StreamRows", "generate", "run_streamed"]

_UNSET = object()  # "not passed": the generation configs decide (None passed means what it means to transformers)
_NONE_MEANS_OFF = ("temperature", "top_k", "top_p", "min_p", "stop_strings")


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
             max_new_tokens: int | None = None, num_draft_tokens: int | None = None, do_sample: bool | None = None,
             temperature=_UNSET, top_k=_UNSET, top_p=_UNSET, min_p=_UNSET, seed: int | None = None,
             eos_token_id=None, pad_token_id: int | None = None, callback=None,
             num_assistant_tokens_schedule: str | None = None, assistant_model=None,
             prompt_lookup_num_tokens: int | None = None, num_assistant_tokens: int | None = None,
             generation_config=None, streamer=None, stopping_criteria=None, stop_strings=_UNSET, tokenizer=None,
             num_return_sequences: int | None = None, logits_processor=None, prefix_allowed_tokens_fn=None,
             verify_method: str | None = None, draft_tree=None, draft_tree_sampling: str | None = None,
             draft_tree_min_prob: float | None = None, draft_tree_budget: int | None = None,
             prompt_lookup_num_candidates: int | None = None,
             **generation_kwargs) -> GenerateOutput:
    """Speculative decoding for a batch of (left-padded, ragged) prompts; every row advances at its own pace.

    Takes transformers' names too: ``generate(target, input_ids=ids, attention_mask=mask, assistant_model=draft,
    generation_config=cfg, streamer=streamer, ...)``. Every option left unset comes, as in ``target.generate``, from
    `generation_config`, else ``target.generation_config``, else transformers' defaults (do_sample False, top_k 50,
    max_length 20, ...), resolved once by :func:`~specsampler.generation.settings.resolve_settings`; see
    :data:`~specsampler.generation.options.GENERATION_CONFIG_OPTIONS` for what each ``GenerationConfig`` option does
    here; one that would change the output and is not applied raises a ValueError naming it. Encoder-decoder models
    are refused by name.

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
    max_new_tokens : int, optional
        The most new tokens per row. None: the configs' max_new_tokens, else their max_length minus P.
    num_draft_tokens : int, optional
        K, drafts per step (the prompt-lookup drafter may propose fewer for a row); with the "heuristic" schedule,
        each row's starting draft length. None: `num_assistant_tokens`, else `prompt_lookup_num_tokens`, else a
        ``num_assistant_tokens`` a config sets, else 4 (transformers' global default 20 is meant for its
        confidence-threshold stop, which specsampler does not have).
    do_sample : bool, optional
        False: greedy (each row equals ``target.generate(row, do_sample=False)``). True: sample from the target's
        distribution warped by temperature, top_k, top_p and min_p (applied to target and draft alike). None: the
        configs' (transformers' default False).
    temperature, top_k, top_p, min_p
        As transformers' warpers, in their order (temperature, top-k, top-p, min-p); used when do_sample
        (temperature 0 means greedy; None passed, top_k 0, top_p 1 and min_p 0 are off). Unset: the configs', with
        transformers' defaults (temperature 1, top_k 50, top_p 1, min_p off) as ``target.generate`` applies them.
        Drafts are drawn with :func:`specsampler.sample` and verified with :func:`specsampler.verify`, both given
        these options.
    seed : int, optional
        Seeds the draft sampling and the verification; None draws from torch's default generator.
    eos_token_id : int or list of int, optional
        Stop a row at any of these ([]: never). None: the configs' (as transformers does).
    pad_token_id : int, optional
        Fills rows that finished early. None: the configs', else the first EOS id, else 0.
    callback : callable, optional
        ``callback(row, tokens)`` after every step, for each row that gained tokens: the row's index in the output
        and its new tokens (a list of ints), e.g. to stream the text of a batch.
    num_assistant_tokens_schedule : {"constant", "heuristic", "heuristic_transient", "cost"}, optional
        As transformers' option of that name: "constant" drafts K every step; "heuristic" (or "heuristic_transient":
        every call starts from K) adapts each row's draft
        length, + 2 (up to 2K) after a step that accepted all its drafts, - 1 (down to 1) after one that rejected;
        the draft model then runs as many forwards as the longest row needs. specsampler's "cost" drafts, each step,
        the K' in [0, 2K] with the most expected tokens per second, from the acceptance and the forwards' times
        measured so far with these two models (kept for their next calls): fewer drafts where a forward's cost grows
        with its token rows (a CPU, a large batch), K' = 0 being a step of plain decoding; sampled tokens then depend
        on those times, so the same seed can give other tokens (from the same distribution). Exactness does not
        depend on the schedule. None: the configs' ("constant").
    assistant_model : transformers.PreTrainedModel or PromptLookupDrafter, optional
        transformers' name for `draft`.
    prompt_lookup_num_tokens : int, optional
        Draft by prompt lookup (a :class:`PromptLookupDrafter`, its longest n-gram the configs'
        ``max_matching_ngram_size`` or 3) with K = this.
    num_assistant_tokens : int, optional
        transformers' name for `num_draft_tokens`.
    generation_config : transformers.GenerationConfig, optional
        Options where no keyword sets them, before ``target.generation_config`` (transformers' order).
    streamer : transformers.generation.BaseStreamer, optional
        transformers' protocol: ``put`` the prompt ([1, P]), then each step's new tokens ([1, n]), ``end()`` at the
        end. One row only (as transformers' streamers); use `callback` for batches.
    stopping_criteria : transformers.StoppingCriteriaList, optional
        A row stops after the first token where a criterion fires, checked token by token (each criterion is called
        with the row's [1, L] sequence and ``scores=None``).
    stop_strings : str or list of str, optional
        transformers' StopStringCriteria (needs `tokenizer`). Unset: the configs'.
    tokenizer : transformers tokenizer, optional
        For `stop_strings`.
    num_return_sequences : int, optional
        n: each prompt gives n rows (consecutive, as transformers orders them); n > 1 needs sampling. None: the
        configs' (1).
    logits_processor : list of transformers.LogitsProcessor, optional
        Processors of the caller's, applied after those the options build, as ``model.generate`` merges them (at
        every position of target and draft, with its prefix; each must treat rows independently: it is called on the
        rows whose prefixes have the same length). Warpers are refused: pass temperature, top_k, top_p, min_p.
    prefix_allowed_tokens_fn : callable, optional
        ``fn(batch_id, input_ids) -> list of allowed ids``, as in ``model.generate`` (batch_id: the prompt's index).
    verify_method : {"token", "block", "traversal"}, optional
        specsampler's own option (transformers has none): how each step's drafts are verified, the ``method`` of
        :func:`specsampler.verify`. "token" (None, the default): each draft on its own. "block": block verification
        (Sun et al., ICLR 2025), which decides a row's drafts together: as exact, and in expectation at least as many
        tokens per target forward. Greedy rows are the same either way; prompt lookup's one-hot drafts work with both.
        "traversal": token trees by Traversal Verification (:func:`specsampler.verify_tree`'s ``method``; Weng et
        al., NeurIPS 2025), chains by block verification (the same rule on a chain). "block" is refused with a tree.
    draft_tree : tuple or list of int, optional
        specsampler's own: verify a token tree per step instead of a chain. ``(3, 2, 1, 1)``: the draft's 3
        candidates for the next token, 2 under each, then 1 and 1 (21 nodes, depth 4). The draft model grows it with
        one forward per depth, the target scores it in one forward (a 4D attention mask: eager or sdpa attention;
        other models are refused by name) and :func:`specsampler.verify_tree` accepts the deepest path it can, exact
        as a chain. It replaces `num_draft_tokens` (giving both is refused); `verify_method="block"` and schedules
        other than "constant" are refused with it. Needs a draft model.
    draft_tree_sampling : {"top", "iid", "without_replacement"}, optional
        The tree's candidates when sampling: "top" the draft's top tokens at each node (point masses), "iid"
        i.i.d. draws from the draft's warped distribution (verified against it), "without_replacement" draws without
        replacement from it in draw order (Gumbel-top-k; verified with each child's q the draft's without its earlier
        siblings). None: "without_replacement" when sampling (they accept the most), "top" with draft_tree_min_prob
        or draft_tree_budget (they prune top candidates). Greedy runs take the top tokens. Needs `draft_tree`.
    draft_tree_min_prob : float, optional
        specsampler's own: confidence pruning (EAGLE-2's idea, kept exact), a number in [0, 1]; `draft_tree` is then
        the largest tree. A node's path probability is the product along its path of the draft's probability of each
        token (softmax at the sampling temperature, 1 when greedy, before top-k / top-p / min-p); a node below it is
        not expanded, and with "top" candidates not scored either. The draft's first-child chain (its top-1 chain
        with "top") is always kept, so a pruned tree holds the chain of its depth; with "iid" an expanded node keeps
        all its draws (their number is fixed before they are drawn: still i.i.d., still exact). Rows then verify
        trees of their own sizes, and the target scores fewer tokens. None or 0: the full tree. Needs `draft_tree`.
    draft_tree_budget : int, optional
        specsampler's own: at most this many nodes per row (>= the tree's depth), with top candidates (a
        deterministic choice: exact; refused with "iid"). Level by level the draft's top-1 chain's node comes first,
        then the other candidates by path probability while they fit, room being left for the chain's deeper nodes
        (after `draft_tree_min_prob`'s cut when both are given). A target forward then scores at most budget + 1
        tokens per row, a cost that does not change from step to step. Needs `draft_tree`.
    prompt_lookup_num_candidates : int, optional
        specsampler's own, with prompt lookup: the continuations of up to m distinct n-gram matches per row, merged
        into a trie and verified as a token tree (point-mass candidates). None or 1: one continuation, a chain.
        m > 1 refuses `verify_method="block"`; a schedule sets each row's trie depth (K_b) as it sets a chain's length.
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
    unknown = sorted(k for k in generation_kwargs if k not in GENERATION_CONFIG_OPTIONS)
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown} (neither specsampler's nor "
                        f"GenerationConfig options)")
    attention_mask = check_inputs(input_ids, attention_mask)
    explicit = _explicit_options(generation_kwargs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                 num_assistant_tokens_schedule=num_assistant_tokens_schedule,
                                 num_return_sequences=num_return_sequences,
                                 prompt_lookup_num_tokens=prompt_lookup_num_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, min_p=min_p, stop_strings=stop_strings)
    settings = resolve_settings(target, generation_config, prompt_width=input_ids.shape[1], draft=draft,
                                assistant_model=assistant_model, num_draft_tokens=num_draft_tokens,
                                num_assistant_tokens=num_assistant_tokens, seed=seed, verify_method=verify_method,
                                draft_tree=draft_tree, draft_tree_sampling=draft_tree_sampling,
                                draft_tree_min_prob=draft_tree_min_prob, draft_tree_budget=draft_tree_budget,
                                prompt_lookup_num_candidates=prompt_lookup_num_candidates, **explicit)
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


def _explicit_options(generation_kwargs: dict, **named) -> dict:
    """The options a call sets: every ``**generation_kwargs`` entry, the named ones that are not None, and those
    with an off meaning for None (temperature, top_k, top_p, min_p, stop_strings) unless left _UNSET."""
    explicit = dict(generation_kwargs)
    for name, value in named.items():
        if value is _UNSET or (value is None and name not in _NONE_MEANS_OFF):
            continue
        explicit[name] = value
    return explicit
