"""The options of ``specsampler generate``: their range checks (all before a model is loaded), the device, the
generation options the flags set (only those given: the rest is resolved as ``target.generate`` resolves it), and the
check of a prompt against a model's context."""

from __future__ import annotations

import torch

from ..generation.declared import OPTIONS, PLAIN_OPTIONS, flagged
from ..generation.drafters import PromptLookupDrafter
from ..generation.options import PROCESSOR_OPTIONS, WARPERS
from ..generation.settings import Settings, resolve_settings
from .display import warn
from .errors import CLIError, first_line

SAMPLING_FLAGS = tuple(WARPERS)  # any of them means sampling (temperature 0: greedy)
#: The declared options whose flags the command line passes itself, with its defaults (``--max-new-tokens 128``,
#: ``--schedule constant``), rather than only when given; ``--seed`` is seed + the batch's first prompt.
RUN_OPTIONS = ("max_new_tokens", "seed", "num_draft_tokens", "num_assistant_tokens_schedule")


def _flag(name: str) -> str:
    """The flag of a declared option (:data:`specsampler.generation.declared.OPTIONS`)."""
    return OPTIONS[name].cli_flag


def check_options(args) -> torch.device:
    """Reject bad option values, all before any model is loaded: each flag of a declared option by its declared check
    (:data:`specsampler.generation.declared.OPTIONS`), the command line's own with its, then every combination by the
    library's resolver.

    Parameters
    ----------
    args : argparse.Namespace
        ``specsampler generate``'s options.

    Returns
    -------
    torch.device
        The device to run on.

    Raises
    ------
    CLIError
        Naming the option at fault.
    """
    given = [name for name in SAMPLING_FLAGS if getattr(args, name) is not None]
    if args.greedy and given:
        raise CLIError("--greedy", f"not allowed with {_flag(given[0])}")
    for option in flagged():
        if getattr(args, option.name) is not None:
            _check(option.name, getattr(args, option.name))
    _check_run_options(args)
    resolve_flags(args)  # every combination, by the library's resolver, before a model is loaded
    return resolve_device(args.device)


def _check(name: str, value) -> None:
    """The option's declared check (and the command line's stricter rule where it declares one), its error turned
    into a CLIError naming the flag."""
    option = OPTIONS[name]
    try:
        value = option.validate(value)
        if option.cli_check is not None:
            option.cli_check(name, value)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if message.startswith(f"{name} "):  # "top_p must be ...": the flag is named in front instead
            message = message[len(name) + 1:]
        raise CLIError(_flag(name), message) from None


def _check_run_options(args) -> None:
    """The options of the command line itself: batches, timed runs, threads, the drafter."""
    if args.batch_size < 1:
        raise CLIError("--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.repeats is not None and not args.compare:
        raise CLIError("--repeats", "only with --compare (it sets how many timed runs of each side)")
    if args.repeats is not None and args.repeats < 1:
        raise CLIError("--repeats", f"must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise CLIError("--threads", f"must be >= 1, got {args.threads}")
    if not args.draft and not args.prompt_lookup:
        raise CLIError("--draft", "give a draft model (--draft PATH) or --prompt-lookup")


def resolve_device(name: str | None) -> torch.device:
    """The device of ``--device``, checked usable here (default: cuda when torch sees a GPU, else cpu).

    Raises
    ------
    CLIError
        Naming ``--device``: not a device, or one this machine does not have.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError("--device", f"not a device: {name}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device", "CUDA is not available here (torch sees no GPU)")
    try:  # cuda:7 on a one-GPU machine, mps where there is none: found now rather than after the load
        torch.empty(0, device=device)
    except Exception as exc:  # RuntimeError, AssertionError (not compiled with it), ModuleNotFoundError (hpu)
        raise CLIError("--device", f"{name} cannot be used here: {first_line(exc)}") from None
    return device


def given_options(args) -> dict:
    """The generation options the flags set, by their ``GenerationConfig`` names; those not given are left out, so
    that the target's generation config and transformers' defaults apply as in ``target.generate``.

    ``--greedy`` and ``--temperature 0`` mean ``do_sample=False`` (transformers refuses temperature 0 when sampling);
    any other of ``--temperature``, ``--top-k``, ``--top-p``, ``--min-p`` means ``do_sample=True`` and passes the
    values given.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    dict
    """
    sampling = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None}
    if args.greedy or args.temperature == 0:
        options = {"do_sample": False}
    else:
        options = {"do_sample": True, **sampling} if sampling else {}
    return options | processor_options(args)


def option_flags(args) -> dict[str, str]:
    """The flag that set each generation option (``do_sample``: ``--greedy``, ``--temperature 0`` or the first
    sampling flag given), for messages."""
    sampling = [name for name in SAMPLING_FLAGS if getattr(args, name) is not None]
    flags = {name: _flag(name) for name in given_options(args) if name != "do_sample"}
    if args.greedy:
        flags["do_sample"] = "--greedy"
    elif args.temperature == 0:
        flags["do_sample"] = "--temperature 0"
    elif sampling:
        flags["do_sample"] = _flag(sampling[0])
    return flags


def speculative_options(args) -> dict:
    """The options given on the command line that only ``specsampler.generate`` takes (plain ``target.generate`` of
    ``--compare`` does not get them): the declared options with a flag, other than the warpers' and processors'
    (:data:`~specsampler.generation.declared.PLAIN_OPTIONS`) and those the command line passes itself
    (:data:`RUN_OPTIONS`), each only when its flag is given (``verify_method``, ``draft_tree``, ...)."""
    names = [o.name for o in flagged() if o.name not in PLAIN_OPTIONS and o.name not in RUN_OPTIONS]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_options(args) -> dict:
    """The options of :data:`RUN_OPTIONS` as the flags (or their defaults) set them."""
    return {name: getattr(args, name) for name in RUN_OPTIONS}


class UnloadedDraft:
    """Stands for ``--draft``'s model in :func:`resolve_flags` before it is loaded (a draft model, not prompt
    lookup: all the resolver asks of it)."""

    config = None


def resolve_flags(args, target=None, drafter=None, prompt_width: int | None = None) -> Settings:
    """The call's settings from the flags, by the library's resolver
    (:func:`specsampler.generation.settings.resolve_settings`, which ``specsampler.generate`` runs): with no models
    yet (`target` None: the flags alone, ``--draft`` stood for by :class:`UnloadedDraft`), so that every value and
    combination is checked before a model is loaded; then again with the loaded target and drafter, whose
    generation config fills in the options the flags leave unset.

    Raises
    ------
    CLIError
        Naming the flag of the option at fault (``--draft-tree-sampling`` without ``--draft-tree``, ...); naming
        ``--target`` for what its generation config sets and specsampler refuses, or a model it cannot run.
    """
    if drafter is None:
        drafter = PromptLookupDrafter() if args.prompt_lookup else UnloadedDraft()
    try:
        return resolve_settings(target, prompt_width=prompt_width, draft=drafter, who="specsampler generate",
                                **run_options(args), **speculative_options(args), **given_options(args))
    except (TypeError, ValueError) as exc:
        raise CLIError(_flag_of(str(exc), "--target" if target is not None else "generate"), str(exc)) from None


def _flag_of(message: str, fallback: str) -> str:
    """The flag of the option a resolver message starts with (the longest name: draft_tree_sampling, not
    draft_tree), else `fallback`."""
    flags = {option.name: option.cli_flag for option in flagged()}
    named = max((n for n in flags if message.startswith(n)), key=len, default=None)
    return flags.get(named, fallback)


def processor_options(args) -> dict:
    """The logits-processor options given on the command line (the others come from the target's generation config,
    on both sides of --compare)."""
    names = [o.name for o in flagged() if o.name in PROCESSOR_OPTIONS]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def check_context(rows: list[list[int]], max_new_tokens: int, overflow: str, model, whose: str) -> None:
    """Warn (or refuse) when a prompt + ``--max-new-tokens`` exceeds the model's context, its config's
    ``max_position_embeddings``.

    Parameters
    ----------
    rows : list of list of int
        The prompts' tokens.
    max_new_tokens : int
    overflow : {"warn", "error", "allow"}
        ``--context-overflow``: a warning, an error, or silence.
    model : transformers.PreTrainedModel
        Silent when its config has no ``max_position_embeddings``.
    whose : str
        The model in the message ("the target", "the draft").

    Raises
    ------
    CLIError
        Naming ``--max-new-tokens``, with ``--context-overflow error``.
    """
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if overflow == "allow" or not isinstance(ctx, int) or ctx <= 0:
        return
    over = [i for i, r in enumerate(rows) if len(r) + max_new_tokens > ctx]
    if not over:
        return
    i = max(over, key=lambda j: len(rows[j]))
    which = f"prompt {i + 1}" if len(rows) > 1 else "the prompt"
    msg = (f"{which} ({len(rows[i])} tokens) + {max_new_tokens} new tokens = {len(rows[i]) + max_new_tokens} "
           f"> {whose}'s context ({ctx} positions, max_position_embeddings)"
           + (f"; {len(over)} of {len(rows)} prompts exceed it" if len(rows) > 1 else ""))
    if overflow == "error":
        raise CLIError("--max-new-tokens", f"{msg} (--context-overflow allow runs it anyway)")
    warn(f"--max-new-tokens: {msg}; the model was not trained past it, so what it writes there is unreliable "
         "(--context-overflow error refuses such a run, allow silences this)")
