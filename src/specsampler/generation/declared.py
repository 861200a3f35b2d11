"""specsampler's generation options, declared once: :data:`OPTIONS`.

Each :class:`Option` carries the option's keyword (as :func:`specsampler.generate`, ``speculative_generate`` and the
patched ``model.generate`` take it), its one check (which names the option as the caller wrote it: one message
wherever the value comes from), its default, its command-line flag and help, and its name in transformers'
``GenerationConfig`` where it has one. What derives from the table:

- :func:`~.settings.check_option` and so :func:`~.settings.resolve_settings`: each value checked by its entry;
- ``generate``'s signature and the options part of its docstring (:func:`signature_of`, :func:`parameters_doc`);
- ``speculative_generate``'s signature: specsampler's own options (:data:`OWN`), which transformers hands to a
  ``custom_generate`` callable by reading that signature;
- the patch and the ``custom_generate`` path: the declared values a call passes are checked (:func:`check_given`)
  before transformers builds its warpers from them (so that ``top_p=-0.1`` gets this message, not transformers');
- the command line's flags (:func:`specsampler.cli.parser.build_parser`) and its checks before a model is loaded.

Adding an option is one entry here plus its use (a :class:`~.settings.Settings` field read where it acts).
:data:`VLLM_ENV` declares the vLLM integration's environment variables the same way.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import _checks, methods
from .options import PROCESSOR_OPTIONS, WARPERS
from .schedules import SCHEDULES

__all__ = ["CHAIN_METHODS", "OPTIONS", "OWN", "TREE_SAMPLINGS", "VERIFY_METHODS", "VLLM_ENV", "EnvOption", "Option",
           "check", "check_given", "env_value", "flagged", "parameters_doc", "signature_of"]

#: The verification rules of chains (:func:`specsampler.verify`'s ``method``; vLLM's choices), from the registry.
CHAIN_METHODS: tuple[str, ...] = methods.names(methods.CHAIN)
#: ``verify_method``'s choices: every method of the registry (:data:`specsampler.methods.NAMES`): the chain rules,
#: and "traversal" (token trees by Traversal Verification; a chain by block verification, the same rule there).
VERIFY_METHODS: tuple[str, ...] = methods.NAMES
#: ``draft_tree_sampling``'s choices.
TREE_SAMPLINGS = ("top", "iid", "without_replacement")


def _as_given(name: str, value):
    """No check of specsampler's own: the value goes to transformers as given (token ids, stop strings)."""
    return value


def _positive_int(name: str, value) -> int:
    return _checks.integer(name, value, 1)


def _count(name: str, value) -> int:
    return _checks.integer(name, value, 0)


def _positive_real(name: str, value) -> float:
    return _checks.real(name, value, 0.0, math.inf, low_open=True)


def _draft_tree(name: str, value) -> tuple[int, ...]:
    """`value` (a tuple or list of ints >= 1, at least one) as a tuple, else an error naming `name`."""
    if not isinstance(value, (tuple, list)):
        raise _checks.OptionTypeError(f"{name} must be a tuple or list of integers >= 1 (children per node at each "
                                      f"depth, e.g. (3, 2, 1, 1)), got {value!r} ({type(value).__name__})")
    if not value:
        raise ValueError(f"{name} must hold at least one depth (children per node at each depth), got {value!r}")
    return tuple(_checks.integer(f"{name}[{d}]", c, 1) for d, c in enumerate(value))


def _branching(text: str) -> tuple[int, ...]:
    """``--draft-tree 3,2,1,1`` -> (3, 2, 1, 1) (the values are checked by the option's check)."""
    import argparse

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, e.g. 3,2,1,1; got {text!r}") from None


def _tree_min_prob(name: str, value) -> float | None:
    """`value` as a float in [0, 1] (0: no pruning, returned as None), else an error naming `name`."""
    value = _checks.real(name, value, 0.0, 1.0, what="(a path probability under the draft)")
    return value or None


@dataclass(frozen=True)
class Option:
    """One generation option.

    Attributes
    ----------
    name : str
        The keyword of ``generate`` / ``speculative_generate`` / the patched ``model.generate``.
    help : str
        One line: the flag's help and the short description.
    check : callable, optional
        ``check(name, value) -> value`` normalised (top_k 0, top_p 1, min_p 0 and draft_tree_min_prob 0 become None,
        "off"), or a TypeError / ValueError naming `name`; None is never checked (it means unset or off). Default:
        one of `choices`.
    choices : tuple of str, optional
        The values allowed (the check and the flag's choices).
    default : object
        What applies when the option is set nowhere (None: transformers' default, or off).
    flag : str or None
        The command-line flag; "" derives it from the name (``--top-k`` for top_k), None: no flag.
    cli : dict
        argparse's extras for the flag (type, metavar, default).
    cli_check : callable, optional
        The command line's stricter rule for the flag's value, after `check` (same form).
    transformers : str or None
        Its ``GenerationConfig`` name: the same name for transformers' options (resolved from the configs, as
        ``model.generate`` does), another where specsampler's own name has a transformers twin (num_draft_tokens:
        num_assistant_tokens), None for specsampler's own.
    none_unsets : bool
        ``None`` passed to ``generate`` means "not passed" (the configs decide); False: None is passed on (top_p=None
        is off, as in transformers).
    kind : str
        Its type in the docstring ("" : read from `choices`, the flag's type or the check).
    doc : str
        Its entry in ``generate``'s docstring (numpy style, after the name line), where ``generate`` names the option
        in its signature; "": not named there (a ``GenerationConfig`` option passed through its ``**kwargs``).
    """

    name: str
    help: str
    check: Callable | None = None
    choices: tuple | None = None
    default: object = None
    flag: str | None = ""
    cli: dict = field(default_factory=dict)
    cli_check: Callable | None = None
    transformers: str | None = None
    none_unsets: bool = True
    kind: str = ""
    doc: str = ""

    @property
    def own(self) -> bool:
        """specsampler's own option (not a ``GenerationConfig`` attribute under this name)."""
        return self.transformers != self.name

    @property
    def cli_flag(self) -> str | None:
        """The flag (``--top-k``), or None."""
        return None if self.flag is None else self.flag or "--" + self.name.replace("_", "-")

    @property
    def doc_type(self) -> str:
        """Its type as ``generate``'s docstring names it (``int``, ``{"token", "block", "traversal"}``, ...)."""
        if self.kind or self.choices:
            return self.kind or "{" + ", ".join(f'"{c}"' for c in self.choices) + "}"
        kind = self.cli.get("type")
        return kind.__name__ if kind in (int, float) else _KINDS.get(self.check, "object")

    def validate(self, value, name: str | None = None):
        """The checked value (None: None), errors naming `name` (default: the option's name)."""
        if value is None:
            return None
        name = name or self.name
        if self.check is not None:
            return self.check(name, value)
        return _checks.choice(name, value, self.choices) if self.choices else value


#: The docstring type of the shared checks.
_KINDS = {_count: "int", _positive_int: "int", _positive_real: "float", _checks.boolean: "bool",
          _draft_tree: "tuple or list of int"}


def _config(name: str, help: str, check=None, **kw) -> Option:
    """A ``GenerationConfig`` option, under transformers' name."""
    return Option(name, help, check, transformers=name, **kw)


_WARPER_DOC = ("As transformers' warpers, in their order (temperature, top-k, top-p, min-p); used when do_sample "
               "(temperature 0 means greedy; None passed, top_k 0, top_p 1 and min_p 0 are off). Unset: the configs', "
               "with transformers' defaults (temperature 1, top_k 50, top_p 1, min_p off) as ``target.generate`` "
               "applies them. Drafts are drawn with :func:`specsampler.sample` and verified with "
               ":func:`specsampler.verify`, both given these options.")

_OPTIONS = [
    _config("max_new_tokens", "per prompt (default 128)", _count, cli=dict(type=int, default=128),
            cli_check=lambda n, v: _checks.integer(n, v, 1, what="(target.generate refuses 0)"),
            doc="The most new tokens per row. None: the configs' max_new_tokens, else their max_length minus P."),
    Option("num_draft_tokens", "K, drafts per step (default 4)", _positive_int, default=4, cli=dict(type=int),
           transformers="num_assistant_tokens",
           doc="K, drafts per step (the prompt-lookup drafter may propose fewer for a row); with the \"heuristic\" "
               "schedule, each row's starting draft length. None: `num_assistant_tokens`, else "
               "`prompt_lookup_num_tokens`, else a ``num_assistant_tokens`` a config sets, else 4 (transformers' "
               "global default 20 is meant for its confidence-threshold stop, which specsampler does not have)."),
    Option("draft_tree", "verify a token tree per step instead of a chain: the draft's candidates per node at each "
           "depth (the depth replaces --num-draft-tokens); needs --draft", _draft_tree,
           cli=dict(type=_branching, metavar="3,2,1,1"),
           doc="specsampler's own: verify a token tree per step instead of a chain. ``(3, 2, 1, 1)``: the draft's 3 "
               "candidates for the next token, 2 under each, then 1 and 1 (21 nodes, depth 4). The draft model grows "
               "it with one forward per depth, the target scores it in one forward (a 4D attention mask: eager or "
               "sdpa attention; other models are refused by name) and :func:`specsampler.verify_tree` accepts the "
               "deepest path it can, exact as a chain. It replaces `num_draft_tokens` (giving both is refused); "
               "`verify_method=\"block\"` and schedules other than \"constant\" are refused with it. Needs a draft "
               "model."),
    Option("draft_tree_sampling", "the tree's candidates when sampling: the draft's top tokens, i.i.d. draws, or "
           "draws without replacement (Gumbel-top-k; the default when sampling, unless the tree is pruned or capped)",
           choices=TREE_SAMPLINGS,
           doc="The tree's candidates when sampling: \"top\" the draft's top tokens at each node (point masses), "
               "\"iid\" i.i.d. draws from the draft's warped distribution (verified against it), "
               "\"without_replacement\" draws without replacement from it in draw order (Gumbel-top-k; verified with "
               "each child's q the draft's without its earlier siblings). None: \"without_replacement\" when "
               "sampling (they accept the most), \"top\" with draft_tree_min_prob or draft_tree_budget (they prune "
               "top candidates). Greedy runs take the top tokens. Needs `draft_tree`."),
    Option("draft_tree_min_prob", "prune the tree (exactly): a node whose path probability under the draft is below "
           "P is not expanded (with top candidates, not scored); the draft's top-1 chain is always kept (default: "
           "the full tree)", _tree_min_prob, cli=dict(type=float, metavar="P"),
           doc="specsampler's own: confidence pruning (EAGLE-2's idea, kept exact), a number in [0, 1]; `draft_tree` "
               "is then the largest tree. A node's path probability is the product along its path of the draft's "
               "probability of each token (softmax at the sampling temperature, 1 when greedy, before top-k / top-p "
               "/ min-p); a node below it is not expanded, and with \"top\" candidates not scored either. The "
               "draft's first-child chain (its top-1 chain with \"top\") is always kept, so a pruned tree holds the "
               "chain of its depth; with \"iid\" an expanded node keeps all its draws (their number is fixed before "
               "they are drawn: still i.i.d., still exact). Rows then verify trees of their own sizes, and the target "
               "scores fewer tokens. None or 0: the full tree. Needs `draft_tree`."),
    Option("draft_tree_budget", "at most N nodes per row of the tree (top candidates; >= its depth): the top-1 chain "
           "first, then the likeliest candidates under the draft (default: no cap)", _positive_int,
           cli=dict(type=int, metavar="N"),
           doc="specsampler's own: at most this many nodes per row (>= the tree's depth), with top candidates (a "
               "deterministic choice: exact; refused with \"iid\"). Level by level the draft's top-1 chain's node "
               "comes first, then the other candidates by path probability while they fit, room being left for the "
               "chain's deeper nodes (after `draft_tree_min_prob`'s cut when both are given). A target forward then "
               "scores at most budget + 1 tokens per row, a cost that does not change from step to step. Needs "
               "`draft_tree`."),
    Option("prompt_lookup_num_candidates", "with --prompt-lookup: the continuations of up to M n-gram matches, "
           "merged as a tree (default 1: one continuation, a chain)", _positive_int, default=1,
           flag="--prompt-lookup-candidates", cli=dict(type=int, metavar="M"),
           doc="specsampler's own, with prompt lookup: the continuations of up to m distinct n-gram matches per row, "
               "merged into a trie and verified as a token tree (point-mass candidates). None or 1: one "
               "continuation, a chain. m > 1 refuses `verify_method=\"block\"`; a schedule sets each row's trie depth "
               "(K_b) as it sets a chain's length."),
    _config("num_assistant_tokens_schedule", "draft length: K every step (default), adapted per row (transformers' "
            "heuristic, up to 2K), or per step from measured forward times and acceptance (0 to 2K; sampled tokens "
            "then vary between runs with one seed)", choices=SCHEDULES, default="constant",
            flag="--schedule", cli=dict(default="constant"),
            doc="As transformers' option of that name: \"constant\" drafts K every step; \"heuristic\" (or "
                "\"heuristic_transient\": every call starts from K) adapts each row's draft length, + 2 (up to 2K) "
                "after a step that accepted all its drafts, - 1 (down to 1) after one that rejected; the draft model "
                "then runs as many forwards as the longest row needs. specsampler's \"cost\" drafts, each step, the "
                "K' in [0, 2K] with the most expected tokens per second, from the acceptance and the forwards' times "
                "measured so far with these two models (kept for their next calls): fewer drafts where a forward's "
                "cost grows with its token rows (a CPU, a large batch), K' = 0 being a step of plain decoding; "
                "sampled tokens then depend on those times, so the same seed can give other tokens (from the same "
                "distribution). Exactness does not depend on the schedule. None: the configs' (\"constant\")."),
    Option("verify_method", "how each step's drafts are verified: token by token (the default), or block "
           "verification (Sun et al. 2025: as exact, in expectation at least as many tokens per target forward; "
           "greedy output is the same either way), or traversal verification (trees: Weng et al. 2025, leaf to root; "
           "a chain: block)", choices=VERIFY_METHODS, default="token",
           doc="specsampler's own option (transformers has none): how each step's drafts are verified, the "
               "``method`` of :func:`specsampler.verify`. \"token\" (None, the default): each draft on its own. "
               "\"block\": block verification (Sun et al., ICLR 2025), which decides a row's drafts together: as "
               "exact, and in expectation at least as many tokens per target forward. Greedy rows are the same either "
               "way; prompt lookup's one-hot drafts work with both. \"traversal\": token trees by Traversal "
               "Verification (:func:`specsampler.verify_tree`'s ``method``; Weng et al., NeurIPS 2025), chains by "
               "block verification (the same rule on a chain). \"block\" is refused with a tree."),
    _config("do_sample", "sample (True) or greedy (False)", _checks.boolean, flag=None,
            doc="False: greedy (each row equals ``target.generate(row, do_sample=False)``). True: sample from the "
                "target's distribution warped by temperature, top_k, top_p and min_p (applied to target and draft "
                "alike). None: the configs' (transformers' default False)."),
    _config("temperature", "sample at this temperature (0: greedy)", lambda n, v: _checks.temperature(v, n),
            cli=dict(type=float), none_unsets=False, doc=_WARPER_DOC),
    _config("top_k", "sample from the k most likely tokens (0: off)", lambda n, v: _checks.top_k(v, n),
            cli=dict(type=int), none_unsets=False, doc="See `temperature`."),
    _config("top_p", "nucleus sampling, in [0, 1] (0 keeps the most likely token)", lambda n, v: _checks.top_p(v, n),
            cli=dict(type=float), none_unsets=False, doc="See `temperature`."),
    _config("min_p", "keep tokens at least this times as likely as the top one, in [0, 1] (0: off)",
            lambda n, v: _checks.min_p(v, n), cli=dict(type=float), none_unsets=False, doc="See `temperature`."),
    _config("repetition_penalty", "transformers' repetition penalty, > 0 (1: off; default: the target's generation "
            "config)", _positive_real, cli=dict(type=float), none_unsets=False),
    _config("no_repeat_ngram_size", "never repeat an n-gram of this size, >= 0 (0: off; default: the target's "
            "generation config)", _count, cli=dict(type=int), none_unsets=False),
    Option("seed", "seeds drafting, verification and the --compare baseline", lambda n, v: _checks.seed(v, n),
           cli=dict(type=int), cli_check=lambda n, v: _checks.integer(
               n, v, 0, 2**63 - 1, what="(a 64-bit generator's seed; batches add their first prompt's index)"),
           doc="Seeds the draft sampling and the verification; None draws from torch's default generator."),
    _config("eos_token_id", "stop a row at any of these", _as_given, flag=None, kind="int or list of int",
            doc="Stop a row at any of these ([]: never). None: the configs' (as transformers "
                "does)."),
    _config("pad_token_id", "fills rows that finished early", _as_given, flag=None, kind="int",
            doc="Fills rows that finished early. None: the configs', else the first EOS id, else 0."),
    _config("num_return_sequences", "rows per prompt", _positive_int, flag=None,
            doc="n: each prompt gives n rows (consecutive, as transformers orders them); n > 1 needs sampling. None: "
                "the configs' (1)."),
    _config("num_assistant_tokens", "transformers' name for num_draft_tokens", _positive_int, flag=None,
            doc="transformers' name for `num_draft_tokens`."),
    _config("prompt_lookup_num_tokens", "prompt lookup with K = this", _positive_int, flag=None,
            doc="Draft by prompt lookup (a :class:`PromptLookupDrafter`, its longest n-gram the configs' "
                "``max_matching_ngram_size`` or 3) with K = this."),
    _config("stop_strings", "transformers' StopStringCriteria (needs tokenizer)", _as_given, flag=None,
            kind="str or list of str",
            none_unsets=False, doc="transformers' StopStringCriteria (needs `tokenizer`). Unset: "
                                   "the configs'."),
    _config("max_matching_ngram_size", "the prompt-lookup drafter's longest n-gram", _positive_int, flag=None,
            none_unsets=False),
    _config("max_time", "transformers' MaxTimeCriteria", _positive_real, flag=None, none_unsets=False),
    _config("output_scores", "each new token's scores", _checks.boolean, flag=None, none_unsets=False),
    _config("output_logits", "each new token's raw logits", _checks.boolean, flag=None, none_unsets=False),
    _config("return_dict_in_generate", "transformers' output object", _checks.boolean, flag=None, none_unsets=False),
]

#: Every option specsampler checks, by name, in the command line's order.
OPTIONS: dict[str, Option] = {option.name: option for option in _OPTIONS}
#: specsampler's own options (no ``GenerationConfig`` attribute of that name): keywords of ``speculative_generate``.
OWN: tuple[str, ...] = tuple(name for name, option in OPTIONS.items() if option.own)
#: The declared ``GenerationConfig`` options checked wherever their values come from (an argument or a config), by
#: name: all but ``num_assistant_tokens``, checked where it is used (under its name or num_draft_tokens').
CONFIG_CHECKED: tuple[str, ...] = tuple(name for name, option in OPTIONS.items()
                                        if not option.own and name != "num_assistant_tokens")
#: The options ``generate`` names in its signature (the others of ``GenerationConfig`` go through ``**kwargs``).
NAMED: tuple[str, ...] = tuple(name for name, option in OPTIONS.items() if option.doc)


def check(name: str, value, as_name: str | None = None):
    """The declared check of option `name` (its value normalised; None stays None); options not declared are
    returned as given. `as_name`: the name in messages (default `name`)."""
    option = OPTIONS.get(name)
    return value if option is None else option.validate(value, as_name)


def check_given(given: dict, names=None) -> None:
    """Check the declared options among `given` (a call's keywords; only `names` when given), each by its entry."""
    for name, value in given.items():
        if name in OPTIONS and (names is None or name in names):
            check(name, value)


def passed(options: dict) -> dict:
    """The options a call sets: `options` without the declared ones given as None where None means "not passed"
    (:attr:`Option.none_unsets`; top_p=None stays: off, as in transformers)."""
    return {name: value for name, value in options.items()
            if value is not None or name not in OPTIONS or not OPTIONS[name].none_unsets}


def flagged() -> list[Option]:
    """The options with a command-line flag, in the declaration's order."""
    return [option for option in OPTIONS.values() if option.cli_flag is not None]


#: The options the command line hands to plain ``target.generate`` as well (``--compare``): the warpers' and the
#: logits processors'.
PLAIN_OPTIONS = tuple(WARPERS) + PROCESSOR_OPTIONS


class _Unset:
    """The default shown in a signature for an option whose None means "off" (left out: the configs decide)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()


def signature_of(function, names, default=None) -> inspect.Signature:
    """`function`'s signature with the options `names` inserted as keyword-only parameters (default `default`, or
    :data:`UNSET` where None would mean "off") before its ``**kwargs`` (for ``help()``, editors and transformers,
    which reads a ``custom_generate`` callable's signature to know which keywords it takes)."""
    sig = inspect.signature(function)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    tail = [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
    taken = {p.name for p in params}
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                 default=default if OPTIONS[name].none_unsets else UNSET)
               for name in names if name not in taken]
    return sig.replace(parameters=params + tail)


def parameters_doc(names, indent: str = "    ") -> str:
    """The numpy-style ``Parameters`` entries of the options `names` (their ``doc``, else ``help``)."""
    import textwrap

    lines = []
    for name in names:
        option = OPTIONS[name]
        lines.append(f"{indent}{name} : {option.doc_type}, optional")
        lines += textwrap.wrap(option.doc or option.help[0].upper() + option.help[1:] + ".", 116 - len(indent),
                               initial_indent=indent * 2, subsequent_indent=indent * 2, break_on_hyphens=False)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ vLLM's environment
@dataclass(frozen=True)
class EnvOption:
    """An environment variable of the vLLM integration: its name, default, allowed values (None: any) and help."""

    variable: str
    default: str
    choices: tuple[str, ...] | None
    help: str


#: The vLLM integration's settings (``specsampler.vllm``), by key.
VLLM_ENV: dict[str, EnvOption] = {
    "enable": EnvOption("SPECSAMPLER_VLLM", "1", None, "0 leaves vLLM untouched"),
    "method": EnvOption("SPECSAMPLER_VLLM_METHOD", "token", CHAIN_METHODS, "the verification rule"),
    "backend": EnvOption("SPECSAMPLER_VLLM_BACKEND", "auto", ("auto", "torch", "triton"),
                         "auto: the Triton kernel on CUDA, the torch backend elsewhere"),
}


def env_value(key: str, environ=None) -> str:
    """The value of :data:`VLLM_ENV`'s `key` in `environ` (default ``os.environ``), stripped (unset or empty: its
    default); a ValueError naming the variable for a value outside its choices."""
    option = VLLM_ENV[key]
    value = (os.environ if environ is None else environ).get(option.variable, option.default).strip()
    value = value or option.default
    return value if option.choices is None else _checks.choice(option.variable, value, option.choices)
