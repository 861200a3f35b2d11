"""The command line's parser and its entry point: ``main`` parses, dispatches to a subcommand, and turns a bad option
or Ctrl-C into an exit status and one line on stderr."""

from __future__ import annotations

import argparse
import sys

import torch

from .. import __version__
from ..generation.declared import flagged
from .bench import cmd_bench
from .compare import DEFAULT_REPEATS
from .errors import EXIT_BAD_OPTION, EXIT_INTERRUPTED, CLIError
from .generate import DTYPES, cmd_generate
from .info import cmd_info


class _Parser(argparse.ArgumentParser):
    """argparse, but errors raise :class:`CLIError` (one line, exit status 2) instead of printing the usage."""

    def error(self, message):
        raise CLIError("", message)


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
    _add_models_and_prompts(g)
    _add_decoding(g)
    _add_run(g)
    g.set_defaults(func=cmd_generate)
    _add_bench(sub)
    i = sub.add_parser("info", help="versions, devices, and which verify backend runs")
    i.set_defaults(func=cmd_info)
    return parser


def _add_models_and_prompts(g: argparse.ArgumentParser) -> None:
    g.add_argument("--target", required=True, help="folder, .gguf file, 'smollm2' or hub id")
    drafter = g.add_mutually_exclusive_group()
    drafter.add_argument("--draft", help="draft model (same tokenizer as the target): folder, .gguf, 'smollm2', id")
    drafter.add_argument("--prompt-lookup", action="store_true", help="n-gram drafts from the prompt, no draft model")
    prompts = g.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    prompts.add_argument("--prompts-file", help="a text file, one prompt per line (blank lines skipped)")
    g.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")


def _add_decoding(g: argparse.ArgumentParser) -> None:
    """A flag for each declared option that has one (:func:`specsampler.generation.declared.flagged`: its help,
    type and default from there), and ``--greedy``. Choices are shown, not enforced by argparse: a bad value gets
    the option's declared check and message, as through ``specsampler.generate``."""
    for option in flagged():
        extra = dict(option.cli) | ({"metavar": "{" + ",".join(option.choices) + "}"} if option.choices else {})
        g.add_argument(option.cli_flag, dest=option.name, help=option.help, **extra)
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless the target's "
                   "generation config samples or a sampling option is given)")


def _add_run(g: argparse.ArgumentParser) -> None:
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


def _add_bench(sub) -> None:
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
    except CLIError as exc:  # a bad option, or a model of --target or --draft (ModelError)
        print(f"specsampler: error: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTION
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:  # while loading (generation itself prints what it has: cmd_generate)
        sys.stdout.flush()
        print("\nspecsampler: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
