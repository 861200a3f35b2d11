"""One resolver for every option of a speculative generation call: :func:`resolve_settings`.

:func:`specsampler.generate`, transformers' patched ``generate`` / ``speculative_generate`` and the CLI all build a
:class:`Settings` here first, so that an option means the same everywhere. The order is transformers': an argument,
then ``generation_config=``, then ``target.generation_config``, then transformers' defaults (do_sample False, top_k
50, max_length 20, ...). Each option is range-checked once (:func:`check_option`, naming the option as the caller
wrote it), the options specsampler cannot apply exactly are refused by name
(:data:`~.options.GENERATION_CONFIG_OPTIONS`), and so are models it cannot run (encoder-decoder models).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field, fields

import torch

from .declared import CONFIG_CHECKED, OPTIONS, OWN, check
from .drafters import PromptLookupDrafter
from .inputs import check_inputs, check_models
from .options import GENERATION_CONFIG_OPTIONS, HONOURED, IRRELEVANT, WARPERS, global_defaults, is_off, same
from .trees import tree_size

__all__ = ["Settings", "check_inputs", "check_option", "resolve_generation_options", "resolve_settings"]

#: The most nodes a row's draft tree may verify per step (``draft_tree``'s node count, or ``draft_tree_budget`` where
#: it caps the tree): a step gains at most depth + 1 tokens, while the target's forward scores every node (its cost
#: grows about linearly with the nodes past a few hundred per row on a GPU, a few tens on a CPU) and the tree's
#: attention mask grows with their square. Published draft trees stay well below it (EAGLE-2 60 nodes, Medusa 64,
#: Sequoia's largest 768, built for a 70B model offloaded to the CPU); draft_tree=(6, 6, 6, 6) (1,554 nodes) took
#: 7.5 s for 4 tokens of a tiny model on the CPU, (10, 10, 10, 10) (11,110) over 5 minutes.
MAX_TREE_NODES = 1024

#: The sampling warpers' options, in transformers' order (:data:`~.options.WARPERS`).
WARPER_OPTIONS = tuple(WARPERS)


def check_option(name: str, value):
    """The check `name` gets everywhere (:data:`~.declared.OPTIONS`' entry): the value normalised (top_k 0, top_p 1
    and min_p 0 become None, "off"), or a TypeError / ValueError naming `name`. Options not declared are returned as
    given."""
    return check(name, value)


@dataclass(frozen=True)
class Settings:
    """The resolved options of one speculative generation call.

    Attributes
    ----------
    max_new_tokens : int
        The most new tokens per row.
    num_draft_tokens : int
        K, drafts per step (the starting draft length of the "heuristic" schedule, the first of "cost").
    schedule : str
        "constant", "heuristic" or "cost".
    do_sample : bool
    temperature : float
    top_k, top_p, min_p : int, float, float or None
        None: off.
    eos_token_ids : list of int
    pad_token_id : int
    num_return_sequences : int
    seed : int or None
    drafter : object
        The draft model or PromptLookupDrafter of the call (None where the caller brings its own).
    verify_method : str
        "token", "block" or "traversal": the rule at every step (greedy rows are the same either way; "traversal"
        verifies trees by Traversal Verification, chains by block verification).
    output_scores, output_logits : bool
        Whether the call keeps each new token's scores, raw logits (:class:`~.outputs.ScoreRecorder`).
    draft_tree : tuple of int or None
        Children per node at each depth of the draft model's token tree (:mod:`.tree_loop`); None: chains.
        ``num_draft_tokens`` is its depth then.
    draft_tree_sampling : str
        "top" (the draft's top tokens), "iid" (i.i.d. draws) or "without_replacement" (draws without replacement;
        greedy runs take the top tokens).
    draft_tree_min_prob : float or None
        Confidence pruning of the draft tree (:func:`.trees.expand_tree`'s ``min_prob``): nodes whose path
        probability under the draft is below it are not expanded (with "top" candidates, not kept); None: the full
        tree.
    draft_tree_budget : int or None
        The most nodes per row of a tree of top candidates (:func:`.trees.expand_tree`'s ``budget``); None: no cap.
    lookup_candidates : int
        Prompt lookup's continuations per row, merged into a trie when > 1 (``prompt_lookup_num_candidates``).
    options : dict
        Every ``GenerationConfig`` option: name -> (value, source), source "argument", "generation_config",
        "target.generation_config" or "default".
    """

    max_new_tokens: int
    num_draft_tokens: int
    schedule: str
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    min_p: float | None
    eos_token_ids: list[int]
    pad_token_id: int
    num_return_sequences: int
    seed: int | None
    drafter: object = None
    verify_method: str = "token"
    output_scores: bool = False
    output_logits: bool = False
    draft_tree: tuple | None = None
    draft_tree_sampling: str = "top"
    draft_tree_min_prob: float | None = None
    draft_tree_budget: int | None = None
    lookup_candidates: int = 1
    options: dict = field(default_factory=dict, repr=False)

    @property
    def tree(self) -> bool:
        """Whether each step verifies a token tree (:mod:`.tree_loop`) rather than a chain."""
        return self.draft_tree is not None or self.lookup_candidates > 1

    @property
    def sampling(self) -> dict | None:
        """The keyword arguments :func:`specsampler.sample` and :func:`specsampler.verify` take (the same for both,
        so that the draft's q in verify is the distribution its tokens were drawn from); None when greedy."""
        if not self.do_sample or self.temperature == 0:
            return None
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p)

    @property
    def sources(self) -> dict[str, str]:
        """Option name -> where its value came from."""
        return {name: source for name, (_, source) in self.options.items()}

    def value(self, name: str):
        """The resolved value of any ``GenerationConfig`` option."""
        return self.options[name][0]


def resolve_generation_options(target, generation_config=None, **explicit) -> dict[str, tuple[object, str]]:
    """Every ``GenerationConfig`` option as ``model.generate`` resolves it: name -> (value, source).

    The order is transformers': an explicit keyword (source "argument"), then `generation_config` where it sets the
    option, then ``target.generation_config`` where it sets it, then transformers' global default ("default"). An
    option counts as set in a config when it differs from a fresh ``GenerationConfig()`` (5.x: not None; 4.x: not
    the built-in default), as transformers decides in ``_prepare_generation_config``; a 4.x model's config that
    unsets an option (``top_k=None``) thus unsets it here too.
    """
    from transformers import GenerationConfig

    fresh = GenerationConfig()
    defaults = global_defaults()
    model_cfg = getattr(target, "generation_config", None)
    names = [k for k in vars(fresh) if not k.startswith("_")]
    names += [k for k in explicit if k not in names]
    out = {}
    for name in names:
        if name in explicit:
            out[name] = (explicit[name], "argument")
            continue
        unset = getattr(fresh, name, None)
        for source, cfg in (("generation_config", generation_config), ("target.generation_config", model_cfg)):
            if cfg is not None and hasattr(cfg, name) and not same(getattr(cfg, name), unset):
                out[name] = (getattr(cfg, name), source)
                break
        else:
            out[name] = (defaults.get(name, unset), "default")
    return out


def refuse_unsupported(options: dict[str, tuple[object, str]], who: str = "specsampler.generate") -> None:
    """A ValueError naming the first refused (or unknown) option set to a value that would change the output."""
    from transformers import GenerationConfig

    fresh, defaults = GenerationConfig(), global_defaults()
    for name, (value, source) in options.items():
        kind, why = GENERATION_CONFIG_OPTIONS.get(name, (None, "specsampler does not know this option"))
        if kind in (HONOURED, IRRELEVANT) or is_off(name, value, defaults, fresh):
            continue
        where = "passed" if source == "argument" else f"set in {source}"
        hint = "" if source == "argument" else f" (pass {name}=<its off value> to generate to override it)"
        raise ValueError(f"{who} does not support {name}={value!r} ({where}): {why}{hint}")


def _drafter_of(draft, assistant_model, prompt_lookup_num_tokens, options) -> tuple[object, int | None]:
    """The one drafter of the call and, for prompt_lookup_num_tokens=N, K = N (else None); a ValueError unless
    exactly one of draft, assistant_model, prompt_lookup_num_tokens is given (without any, a
    prompt_lookup_num_tokens set in a generation config is used, as transformers does)."""
    given = [name for name, value in (("draft", draft), ("assistant_model", assistant_model),
                                      ("prompt_lookup_num_tokens", prompt_lookup_num_tokens)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give exactly one drafter: draft, assistant_model or prompt_lookup_num_tokens (got "
                         f"{' and '.join(given)})")
    if not given:
        lookup, source = options.get("prompt_lookup_num_tokens", (None, "default"))
        if lookup is None:
            raise ValueError("specsampler.generate needs a drafter: draft= (or transformers' name, assistant_model=) "
                             "a smaller model or a PromptLookupDrafter, or prompt_lookup_num_tokens=N for prompt "
                             "lookup")
        prompt_lookup_num_tokens = lookup
    if prompt_lookup_num_tokens is not None:
        n = check_option("prompt_lookup_num_tokens", prompt_lookup_num_tokens)
        ngram = options.get("max_matching_ngram_size", (None, "default"))[0]
        ngram = None if ngram is None else check_option("max_matching_ngram_size", ngram)
        return (PromptLookupDrafter(max_ngram=ngram) if ngram else PromptLookupDrafter()), n
    return (draft if draft is not None else assistant_model), None


def _draft_length(num_draft_tokens, num_assistant_tokens, lookup_k, options) -> int:
    """K: num_draft_tokens or its transformers name num_assistant_tokens (the same value if both), prompt lookup's
    N, a num_assistant_tokens a generation config sets, else 4; range-checked under the name it was given by."""
    if num_draft_tokens is not None and num_assistant_tokens is not None and num_draft_tokens != num_assistant_tokens:
        raise ValueError(f"num_draft_tokens={num_draft_tokens!r} and num_assistant_tokens={num_assistant_tokens!r} "
                         f"are the same option: give one")
    k = num_draft_tokens if num_draft_tokens is not None else num_assistant_tokens
    if lookup_k is not None:
        if k is not None and k != lookup_k:
            raise ValueError(f"prompt_lookup_num_tokens={lookup_k} is the draft length of prompt lookup: "
                             f"num_draft_tokens / num_assistant_tokens={k!r} contradicts it")
        return lookup_k
    if k is not None:
        return check_option("num_draft_tokens" if num_draft_tokens is not None else "num_assistant_tokens", k)
    value, source = options.get("num_assistant_tokens", (None, "default"))
    if source == "default" or value is None:
        return 4
    return check_option("num_assistant_tokens", value)


def _max_new_tokens(options, prompt_width: int) -> int:
    """max_new_tokens if set anywhere, else max_length minus the prompt width (transformers' rule and errors)."""
    value, _ = options["max_new_tokens"]
    if value is not None:
        return check_option("max_new_tokens", value)
    max_length, source = options["max_length"]
    if source == "default":
        warnings.warn(f"Using the model-agnostic default `max_length` (={max_length}) to control the generation "
                      f"length, as transformers does. We recommend setting `max_new_tokens`.", UserWarning,
                      stacklevel=3)
    if prompt_width is None:
        raise ValueError("max_new_tokens is needed (no max_length applies without a prompt width)")
    if not isinstance(max_length, numbers.Integral) or prompt_width >= max_length:
        raise ValueError(f"Input length of input_ids is {prompt_width}, but `max_length` is set to {max_length!r}: "
                         f"set max_new_tokens (or a larger max_length)")
    return int(max_length) - prompt_width


def _as_list(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.flatten().tolist()]
    if isinstance(x, numbers.Integral):
        return [int(x)]
    return [int(v) for v in x]


def _schedule(value) -> str:
    """The schedule for a ``num_assistant_tokens_schedule`` value (None: "constant"), checked by its entry."""
    value = check_option("num_assistant_tokens_schedule", value) or OPTIONS["num_assistant_tokens_schedule"].default
    return "heuristic" if value == "heuristic_transient" else value


def _check_tree_options(own: dict, drafter, num_assistant_tokens, schedule: str) -> None:
    """The combinations of the tree options in `own` (specsampler's own options, checked), each refused by name: the
    pruning and sampling options need a tree, a budget caps a tree of top candidates at no fewer nodes than its
    depth, a tree replaces num_draft_tokens, needs a draft model (prompt lookup takes prompt_lookup_num_candidates)
    and has its own verification rule (verify_method "block" is refused with any tree) and a constant shape
    (schedules other than "constant" are refused with it; a lookup trie's depth follows the schedule)."""
    tree, sampling, budget = own["draft_tree"], own["draft_tree_sampling"], own["draft_tree_budget"]
    m, lookup = own["prompt_lookup_num_candidates"], isinstance(drafter, PromptLookupDrafter)
    for name, why in _NEEDS_TREE.items():
        if tree is None and own.given[name] is not None:
            raise ValueError(f"{name}={own.given[name]!r} {why}")
    if budget is not None and (budget < len(tree) or sampling in ("iid", "without_replacement")):
        why = (f"caps a tree of top candidates: not with draft_tree_sampling={sampling!r} (a cap would drop draws)"
               if sampling in ("iid", "without_replacement") else
               f"is below the tree's depth {len(tree)} (the draft's top-1 chain alone)")
        raise ValueError(f"draft_tree_budget={budget} {why}")
    if tree is not None:
        _check_tree_nodes(tree, budget)
        for name, value in (("num_draft_tokens", own["num_draft_tokens"]),
                            ("num_assistant_tokens", num_assistant_tokens)):
            if value is not None:
                raise ValueError(f"draft_tree={tree} replaces {name} (the tree's depth is its length): give one")
        if lookup:
            raise ValueError("draft_tree is grown by a draft model; prompt lookup proposes a tree with "
                             "prompt_lookup_num_candidates=m (its n-gram matches merged as a trie)")
    if m is not None and drafter is not None and not lookup:
        raise ValueError(f"prompt_lookup_num_candidates={m} needs prompt lookup (prompt_lookup_num_tokens=N or a "
                         f"PromptLookupDrafter); a draft model takes draft_tree=")
    name = "draft_tree" if tree is not None else f"prompt_lookup_num_candidates={m}"
    if tree is not None or (m or 1) > 1:
        if own["verify_method"] == "block":
            raise ValueError(f"verify_method='block' does not apply with {name}: a token tree is verified by "
                             f"specsampler.verify_tree ('token' or 'traversal')")
        if schedule != "constant" and tree is not None:  # (a lookup trie's depth is K, which a schedule can vary)
            raise ValueError(f"num_assistant_tokens_schedule={schedule!r} does not apply with {name}: a draft tree "
                             f"has a fixed shape (only 'constant')")


#: The options of a tree's candidates, each with why it needs ``draft_tree``; pruning ones ask for top candidates.
_NEEDS_TREE = {"draft_tree_sampling": "needs draft_tree= (the branching per depth)",
               "draft_tree_min_prob": "prunes a draft_tree: it needs draft_tree= (the branching per depth)",
               "draft_tree_budget": "caps a draft_tree: it needs draft_tree="}
_PRUNING = tuple(_NEEDS_TREE)[1:]


class _Own(dict):
    """specsampler's own options of a call, checked (name -> value, None where not given); ``given``: as passed."""

    def __init__(self, given: dict):
        super().__init__({name: check_option(name, given.get(name)) for name in OWN})
        self.given = {name: given.get(name) for name in OWN}

    def value(self, name: str):
        """The checked value, else the option's declared default."""
        return OPTIONS[name].default if self[name] is None else self[name]


def _default_tree_sampling(own: dict, do_sample: bool) -> str:
    """The candidates of a tree whose draft_tree_sampling was not given: draws without replacement when sampling (they
    accept the most: top tokens treated as point masses waste the draft's probabilities), the draft's top tokens
    when greedy or when the tree is pruned or capped (which apply to top candidates)."""
    pruned = any(own[name] is not None for name in _PRUNING)
    return "without_replacement" if own["draft_tree"] is not None and do_sample and not pruned else "top"


def _check_tree_nodes(tree: tuple[int, ...], budget: int | None) -> None:
    """A ValueError naming draft_tree, its node count and :data:`MAX_TREE_NODES` when a row could verify more nodes
    per step than that (a budget below the limit lets any tree of top candidates run)."""
    nodes = tree_size(tree)[0]
    if min(nodes, budget or nodes) > MAX_TREE_NODES:
        raise ValueError(f"draft_tree={tree} has {nodes} nodes per row, more than the {MAX_TREE_NODES} a step can "
                         f"usefully verify (it gains at most {len(tree) + 1} tokens, the target scores every node): "
                         f"use a smaller tree, or draft_tree_budget=N (<= {MAX_TREE_NODES}) to keep a row's N "
                         f"likeliest candidates")


def _eos_and_pad(options) -> tuple[list[int], int]:
    """The EOS ids and the pad id (set, else the first EOS id, else 0)."""
    eos = _as_list(options["eos_token_id"][0])
    pad = options["pad_token_id"][0]
    pad = pad if pad is not None else (eos[0] if eos else 0)
    return eos, int(pad)


def resolve_settings(target, generation_config=None, *, prompt_width: int | None = None, draft=None,
                     assistant_model=None, returns_dict: bool = True, who: str = "specsampler.generate",
                     **options) -> Settings:
    """Resolve and check every option of a call, as ``target.generate`` would resolve them.

    Parameters
    ----------
    target : transformers.PreTrainedModel or None
        None: the options alone, without a model's generation config (the CLI checks its flags so before it loads
        the models).
    generation_config : transformers.GenerationConfig, optional
        Options where no argument sets them, before ``target.generation_config``.
    prompt_width : int, optional
        P, for max_length (needed when max_new_tokens is set nowhere).
    draft, assistant_model : optional
        The drafter (a model or a PromptLookupDrafter; at most one); neither: ``prompt_lookup_num_tokens`` decides.
        Pass ``draft=False`` where the caller brings its drafter itself (no drafter is chosen then).
    returns_dict : bool
        Whether the entry point always returns an output object (:func:`specsampler.generate`'s GenerateOutput):
        then ``output_scores`` / ``output_logits`` alone ask for scores / logits; False (``speculative_generate``):
        only together with ``return_dict_in_generate``, as in transformers.
    who : str
        The entry point, in messages.
    **options
        The options the caller set: specsampler's own (:data:`~.declared.OWN`: ``num_draft_tokens``, ``seed``,
        ``verify_method``, the tree options; None: not given), ``num_assistant_tokens``, and ``GenerationConfig``
        options passed as arguments. Each is checked by its entry in :data:`~.declared.OPTIONS`.

    Returns
    -------
    Settings

    Raises
    ------
    TypeError, ValueError
        Naming the option (or model) at fault.
    """
    given_own = {name: options.pop(name) for name in OWN if name in options}
    num_assistant_tokens = options.pop("num_assistant_tokens", None)
    check_models(target, draft, assistant_model, who=who)
    explicit = options
    options = resolve_generation_options(target, generation_config, **explicit)
    refuse_unsupported(options, who)
    drafter, lookup_k = (None, None) if draft is False else _drafter_of(
        draft, assistant_model, explicit.get("prompt_lookup_num_tokens"), options)

    def opt(name):
        return check_option(name, options[name][0])

    do_sample = bool(opt("do_sample"))
    n_seq = opt("num_return_sequences") or 1
    if n_seq > 1 and not do_sample:
        raise ValueError(f"Greedy methods (do_sample != True) without beam search do not support "
                         f"`num_return_sequences` different than 1 (got {n_seq}).")
    for name in CONFIG_CHECKED:  # (the declared GenerationConfig options, wherever their values come from)
        opt(name)
    temperature = opt("temperature")
    eos, pad = _eos_and_pad(options)
    outputs = bool(opt("return_dict_in_generate")) or returns_dict
    schedule = _schedule(options["num_assistant_tokens_schedule"][0])
    own = _Own(given_own)
    _check_tree_options(own, drafter, num_assistant_tokens, schedule)
    own["draft_tree_sampling"] = own["draft_tree_sampling"] or _default_tree_sampling(own, do_sample)
    depth = None if own["draft_tree"] is None else len(own["draft_tree"])
    return Settings(
        max_new_tokens=_max_new_tokens(options, prompt_width),
        num_draft_tokens=depth or _draft_length(own["num_draft_tokens"], num_assistant_tokens, lookup_k, options),
        schedule=schedule, do_sample=do_sample,
        temperature=1.0 if temperature is None else temperature, top_k=opt("top_k"), top_p=opt("top_p"),
        min_p=opt("min_p"), eos_token_ids=eos, pad_token_id=pad, num_return_sequences=n_seq, drafter=drafter,
        verify_method=own.value("verify_method"), lookup_candidates=own.value("prompt_lookup_num_candidates"),
        output_scores=outputs and bool(opt("output_scores")), output_logits=outputs and bool(opt("output_logits")),
        options=options, **{name: own[name] for name in _SETTINGS_AS_DECLARED})


#: specsampler's own options a :class:`Settings` field of the same name holds as checked (seed and the tree's).
_SETTINGS_AS_DECLARED = tuple(f.name for f in fields(Settings) if f.name in OWN and f.name not in (
    "num_draft_tokens", "verify_method"))
