"""The options of ``specsampler generate``: their range checks (all before a model is loaded), the device, the
sampling settings and logits processors they ask for, and the check of a prompt against a model's context."""

from __future__ import annotations

import torch

from .display import warn
from .errors import CLIError, first_line

SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p")  # any of them means sampling (temperature 0: greedy)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(args) -> torch.device:
    """Reject bad option values, all before any model is loaded.

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
    _check_generation_options(args)
    _check_run_options(args)
    return resolve_device(args.device)


def _check_generation_options(args) -> None:
    """The options that ``specsampler.generate`` takes."""
    if args.temperature is not None and not 0 <= args.temperature < float("inf"):
        raise CLIError("--temperature", f"must be finite and >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise CLIError("--top-p", f"must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise CLIError("--top-k", f"must be >= 0, got {args.top_k}")
    if args.min_p is not None and not 0 <= args.min_p <= 1:
        raise CLIError("--min-p", f"must be in [0, 1], got {args.min_p}")
    if args.repetition_penalty is not None and not 0 < args.repetition_penalty < float("inf"):
        raise CLIError("--repetition-penalty", f"must be finite and > 0, got {args.repetition_penalty}")
    if args.no_repeat_ngram_size is not None and args.no_repeat_ngram_size < 0:
        raise CLIError("--no-repeat-ngram-size", f"must be >= 0, got {args.no_repeat_ngram_size}")
    if args.max_new_tokens < 1:
        raise CLIError("--max-new-tokens", f"must be >= 1, got {args.max_new_tokens}")
    if args.num_draft_tokens < 1:
        raise CLIError("--num-draft-tokens", f"must be >= 1, got {args.num_draft_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise CLIError("--seed", f"must be in [0, 2**63), got {args.seed}")


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


def sampling_settings(args, target) -> dict:
    """do_sample, temperature, top_k, top_p, min_p, and where they came from.

    ``--greedy`` wins; any of ``--temperature``, ``--top-k``, ``--top-p``, ``--min-p`` means sampling (temperature 0:
    greedy); with none of them, the target's generation config decides (as ``target.generate`` would).
    """
    given = [name for name in SAMPLING_FLAGS if getattr(args, name) is not None]
    off = dict(temperature=1.0, top_k=None, top_p=None, min_p=None)
    if args.greedy:
        if given:
            raise CLIError("--greedy", f"not allowed with {_flag(given[0])}")
        return dict(do_sample=False, **off, source="--greedy")
    if given:
        t = 1.0 if args.temperature is None else args.temperature
        return dict(do_sample=t > 0, temperature=t if t > 0 else 1.0, top_k=args.top_k or None, top_p=args.top_p,
                    min_p=args.min_p or None, source="options")
    gc = getattr(target, "generation_config", None)
    if gc is not None and getattr(gc, "do_sample", False):
        t = gc.temperature if gc.temperature is not None else 1.0
        min_p = getattr(gc, "min_p", None)
        return dict(do_sample=t > 0, temperature=t if t > 0 else 1.0, top_k=gc.top_k or None,
                    top_p=gc.top_p if gc.top_p is not None and gc.top_p < 1.0 else None,
                    min_p=min_p if min_p else None, source="the target's generation config")
    return dict(do_sample=False, **off, source="default (greedy)")


def processor_options(args) -> dict:
    """The logits-processor options given on the command line (the others come from the target's generation config,
    on both sides of --compare)."""
    given = dict(repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    return {name: value for name, value in given.items() if value is not None}


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
