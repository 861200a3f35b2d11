"""``specsampler generate``: load the models, run ``specsampler.generate`` over the prompts (streamed, or with a
progress bar), optionally time it against plain ``target.generate`` (``--compare``), and print the result."""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from .. import PromptLookupDrafter
from ..generation.settings import Settings
from .compare import DEFAULT_REPEATS, comparison, rate, time_interleaved, timing
from .display import Interrupted, emit, is_terminal, note, print_interrupted, warn
from .errors import EXIT_INTERRUPTED, CLIError
from .info import backend_choice
from .models import check_vocab, load_model, require_transformers, resolve_model
from .options import (
    check_context,
    check_options,
    given_options,
    option_flags,
    processor_options,
    resolve_flags,
    speculative_options,
)
from .prompts import encode_prompts, read_prompts
from .runs import Job, run_plain, run_speculative, run_speculative_timed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROMPT_LOOKUP = "prompt lookup (n-grams of 3..1 tokens)"


@dataclasses.dataclass
class Loaded:
    """The models of a call and the prompts' tokens."""

    target: object
    tokenizer: object
    target_label: str
    drafter: object
    drafter_label: str
    rows: list[list[int]]


def cmd_generate(args) -> int:
    """``specsampler generate``: see :mod:`specsampler.cli` and ``specsampler generate --help``.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        The exit status: 0, or 130 after Ctrl-C.
    """
    hf_logging = require_transformers("generate").utils.logging  # (the options' resolver needs it too)
    device = check_options(args)
    prompts = read_prompts(args.prompt, args.prompts_file)
    resolve_model(args.target, "--target")  # fail on a missing path before spending time on the other model
    if args.draft:
        resolve_model(args.draft, "--draft")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:  # transformers' own bars too (loading weights, converting a GGUF file)
        hf_logging.disable_progress_bar()
    try:
        return _generate(args, device, prompts)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def load_timed(spec: str, option: str, device: torch.device, args):
    """:func:`~specsampler.cli.models.load_model`, with a line on stderr saying how long it took and how (the GGUF
    cache): a warning when a conversion could not be cached, else a note unless ``--quiet``."""
    start = time.perf_counter()
    model, tokenizer, label, how = load_model(spec, option, device, DTYPES[args.dtype], cache=not args.no_cache)
    line = f"loaded {option[2:]} {label} in {time.perf_counter() - start:.1f} s" + (f" ({how})" if how else "")
    if "not cached (" in how:
        warn(line)
    elif not args.quiet:
        note(line)
    return model, tokenizer, label


def load_models(args, device: torch.device, prompts: list[str], say) -> Loaded:
    """Load the target, encode the prompts, check them against its context, then load and check the draft."""
    target, tokenizer, target_label = load_timed(args.target, "--target", device, args)
    if tokenizer is None:
        raise CLIError("--target", f"no tokenizer found with {args.target}")
    rows = encode_prompts(tokenizer, prompts, args.raw)
    check_context(rows, args.max_new_tokens, args.context_overflow, target, "the target")
    if args.prompt_lookup:
        return Loaded(target, tokenizer, target_label, PromptLookupDrafter(), PROMPT_LOOKUP, rows)
    draft, draft_tokenizer, draft_label = load_timed(args.draft, "--draft", device, args)
    vocab_note = check_vocab(target, tokenizer, draft, draft_tokenizer)
    if vocab_note:
        say(vocab_note)
    check_context(rows, args.max_new_tokens, args.context_overflow, draft, "the draft")
    return Loaded(target, tokenizer, target_label, draft, draft_label, rows)


def resolve(args, loaded: Loaded) -> Settings:
    """The call's settings, resolved by the library from the options given (:func:`given_options`), the target's
    generation config and transformers' defaults, as ``target.generate`` resolves them (the flags alone were
    resolved before the load: :func:`~specsampler.cli.options.resolve_flags`).

    Raises
    ------
    CLIError
        Naming ``--target``: an option its generation config sets that specsampler refuses, or a model it cannot run.
    """
    return resolve_flags(args, loaded.target, loaded.drafter, max(map(len, loaded.rows)))


def make_job(args, loaded: Loaded, device: torch.device, settings: Settings) -> Job:
    """What every run shares: the options given (the rest both sides resolve alike), the resolved EOS and pad ids."""
    ids = dict(eos_token_id=settings.eos_token_ids or None, pad_token_id=settings.pad_token_id)
    speculative = given_options(args) | ids | speculative_options(args) | dict(
        num_draft_tokens=args.num_draft_tokens, num_assistant_tokens_schedule=args.num_assistant_tokens_schedule)
    return Job(loaded.target, loaded.drafter, loaded.rows, device, args.max_new_tokens, args.batch_size, args.seed,
               settings.eos_token_ids, settings.pad_token_id, speculative, given_options(args) | ids)


def tree_label(settings: Settings) -> str:
    """"K = 4", "tree (3, 2, 1, 1), top candidates" or "K = 10, 3 candidates" for the run's description."""
    if settings.draft_tree is not None:
        pruned = "" if settings.draft_tree_min_prob is None else \
            f", pruned below path probability {settings.draft_tree_min_prob:g}"
        pruned += "" if settings.draft_tree_budget is None else f", at most {settings.draft_tree_budget} nodes"
        return f"tree {settings.draft_tree}, {settings.draft_tree_sampling} candidates{pruned}"
    more = f", {settings.lookup_candidates} candidates" if settings.lookup_candidates > 1 else ""
    return f"K = {settings.num_draft_tokens}{more}"


def describe_settings(settings: Settings, flags: dict[str, str]) -> str:
    """The decoding mode in words, each value with the flag that set it or where it came from.

    Parameters
    ----------
    settings : Settings
    flags : dict of str to str
        Option name -> the flag that set it (:func:`~specsampler.cli.options.option_flags`).

    Returns
    -------
    str
        e.g. ``"sampling (temperature 0.7 [--temperature], top-k 50 [default], top-p off, min-p off)"``.
    """
    where = lambda name: flags.get(name) or settings.sources[name]
    if settings.sampling is None:
        return f"greedy [{where('do_sample')}]"
    values = [("temperature", f"{settings.temperature:g}")] + [
        (name, settings.sampling[name]) for name in ("top_k", "top_p", "min_p")]
    return "sampling (" + ", ".join(f"{name.replace('_', '-')} {value} [{where(name)}]" if value is not None
                                    else f"{name.replace('_', '-')} off" for name, value in values) + ")"


def sampling_json(settings: Settings) -> dict:
    """The result's ``sampling``: the warpers' values (None when greedy or off), the seed, and where each came from."""
    names = ("temperature", "top_k", "top_p", "min_p")
    values = settings.sampling or dict.fromkeys(names)
    return {"do_sample": settings.sampling is not None, **values, "seed": settings.seed,
            "sources": {name: settings.sources[name] for name in ("do_sample", *names)}}


def _generate(args, device: torch.device, prompts: list[str]) -> int:
    say = (lambda *parts: None) if args.quiet else note
    loaded = load_models(args, device, prompts, say)
    settings = resolve(args, loaded)
    job = make_job(args, loaded, device, settings)
    if not args.json:
        say(f"drafter: {loaded.drafter_label}, {tree_label(settings)}; "
            f"{describe_settings(settings, option_flags(args))}; verify method: {settings.verify_method}; "
            f"verify backend: {backend_choice(device)[1]}")
    if args.compare:
        run_speculative(job.warm_up(), track=False)
        run_plain(job.warm_up())
    streamed = not args.json and len(prompts) == 1
    try:
        outs, stats, seconds = run_speculative(job, loaded.tokenizer, stream=streamed, notes=not args.quiet,
                                               progress=not streamed and not args.quiet and is_terminal(sys.stderr))
    except Interrupted as exc:
        return print_interrupted(exc.tokens, exc.done, prompts, loaded.tokenizer, args.json, streamed)
    texts = [loaded.tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    result = make_result(args, loaded, prompts, texts, outs, stats, seconds, settings, device)
    if args.compare:
        try:
            result |= compare_runs(job, outs, settings.sampling is not None, args.repeats or DEFAULT_REPEATS, say)
        except KeyboardInterrupt:  # Interrupted included
            emit(result, prompts, texts, args.json, streamed)
            sys.stdout.flush()
            note("interrupted (Ctrl-C) during the --compare timed runs: the text above is complete, no timing")
            return EXIT_INTERRUPTED
    emit(result, prompts, texts, args.json, streamed)
    return 0


def make_result(args, loaded: Loaded, prompts, texts, outs, stats, seconds: float, settings: Settings,
                device: torch.device) -> dict:
    """The JSON result of the shown run (``--compare`` replaces its timings and adds ``compare``)."""
    n_new = sum(len(o) for o in outs)
    backend, why = backend_choice(device)
    return {
        "target": loaded.target_label, "drafter": loaded.drafter_label,
        "num_draft_tokens": None if settings.draft_tree is not None else settings.num_draft_tokens,  # (its depth)
        "draft_tree": settings.draft_tree, "draft_tree_min_prob": settings.draft_tree_min_prob,
        "draft_tree_budget": settings.draft_tree_budget,
        "prompt_lookup_candidates": settings.lookup_candidates,
        "schedule": args.num_assistant_tokens_schedule, "verify_method": settings.verify_method, "device": str(device),
        "dtype": args.dtype, "backend": backend,
        "backend_reason": why,
        "sampling": sampling_json(settings), "eos_token_ids": settings.eos_token_ids,
        "pad_token_id": settings.pad_token_id, "processors": processor_options(args),
        "texts": texts,
        "outputs": [{"prompt": p, "text": t, "prompt_tokens": len(r), "new_tokens": len(o), "token_ids": o}
                    for p, t, r, o in zip(prompts, texts, loaded.rows, outs, strict=True)],
        "stats": dataclasses.asdict(stats) | {"acceptance_rate": stats.acceptance_rate,
                                              "tokens_per_forward": stats.tokens_per_forward},
        "timings": {"generate_s": seconds, "new_tokens": n_new, "tokens_per_s": rate(n_new, seconds),
                    "threads": torch.get_num_threads()},
    }


def compare_runs(job: Job, outs: list[list[int]], sampled: bool, repeats: int, say) -> dict:
    """``--compare``: the timed, interleaved runs of both sides; the result's ``timings`` and ``compare``."""
    runs = time_interleaved({"specsampler": lambda: run_speculative_timed(job),
                             "plain target.generate": lambda: run_plain(job)}, repeats, say)
    spec, plain = runs["specsampler"], runs["plain target.generate"]
    return {"timings": timing(spec, sum(len(o) for o in outs)) | {"threads": torch.get_num_threads()},
            "compare": comparison(spec, plain, outs, sampled)}
