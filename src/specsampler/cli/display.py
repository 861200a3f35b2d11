"""What ``specsampler generate`` shows while it runs and after: notes on stderr, a single prompt's text as it streams,
the progress bar of a batch, what each prompt got when Ctrl-C stops it, and the summary lines."""

from __future__ import annotations

import json
import os
import sys

from .compare import format_spread
from .errors import EXIT_INTERRUPTED

UNSTEADY = 1.25  # --compare: the widest speedup over the narrowest, past which the summary warns


def note(*parts) -> None:
    """A line on stderr: ``specsampler: <parts>``."""
    print("specsampler:", *parts, file=sys.stderr, flush=True)


def warn(*parts) -> None:
    """A line on stderr: ``specsampler: warning: <parts>`` (printed with ``--quiet`` too)."""
    print("specsampler: warning:", *parts, file=sys.stderr, flush=True)


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (False for one without ``isatty``, or closed)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Streamer:
    """Prints a single prompt's new text as generation goes: the per-step ``callback`` of ``specsampler.generate``.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    stream : text stream
        Where the text goes (stdout).
    """

    def __init__(self, tokenizer, stream):
        self.tok, self.stream = tokenizer, stream
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, row: int, tokens: list[int]) -> None:
        self.tokens += tokens
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        # a text ending in U+FFFD is a multi-byte character cut in half: wait for its other bytes
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


class Progress:
    """A progress bar on stderr (tqdm): new tokens so far / the most the run can still make, and tokens/s.

    The total starts at prompts x ``--max-new-tokens`` and shrinks as rows stop early at an EOS id.

    Parameters
    ----------
    total : int
        The most new tokens the run can make.
    stream : text stream
        Where the bar goes (stderr).
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
        """A note above the bar."""
        self.bar.write(f"specsampler: {line}", file=self.stream)

    def close(self) -> None:
        self.bar.close()


class Tracker:
    """Each prompt's new tokens as ``specsampler.generate`` reports them (its per-step ``callback``): what a single
    prompt streams, what the progress bar counts, and what Ctrl-C prints.

    Parameters
    ----------
    n_rows : int
        Prompts.
    max_new : int
        ``--max-new-tokens``.
    eos : list of int
        The EOS ids: a row that makes one is done.
    streamer : Streamer, optional
    progress : Progress, optional

    Attributes
    ----------
    tokens : list of (list of int or None)
        Per prompt, its new tokens so far (None: its batch has not started).
    done : list of bool
        Per prompt, whether it is finished (an EOS id, ``--max-new-tokens``, or its batch returned).
    """

    def __init__(self, n_rows: int, max_new: int, eos: list[int], streamer: Streamer | None = None,
                 progress: Progress | None = None):
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during generation, with each prompt's new tokens so far (:class:`Tracker`'s tokens and done); a
    KeyboardInterrupt still, so that wherever it is not caught ``main`` ends as for any Ctrl-C."""

    def __init__(self, tokens: list[list[int] | None], done: list[bool]):
        super().__init__("interrupted")
        self.tokens, self.done = tokens, done


def print_interrupted(tokens: list[list[int] | None], done: list[bool], prompts: list[str], tokenizer, as_json: bool,
                      streamed: bool) -> int:
    """After Ctrl-C in generation: what each prompt got so far, then one line on stderr.

    Text: a block per prompt, marked done, interrupted (with its tokens so far) or not started (a single streamed
    prompt is already on the screen: only its line is ended). `as_json`: one object with ``"interrupted": true``.

    Returns
    -------
    int
        130, the exit status.
    """
    text = lambda t: tokenizer.decode(t, skip_special_tokens=True) if t else ""
    state = lambda t, d: "not started" if t is None else ("done" if d else f"interrupted after {len(t)} new tokens")
    if as_json:
        print(json.dumps({"interrupted": True, "texts": [text(t) for t in tokens], "outputs": [
            {"prompt": p, "text": text(t), "new_tokens": len(t or []), "token_ids": t or [], "state": state(t, d)}
            for p, t, d in zip(prompts, tokens, done, strict=True)]}))
    elif streamed:
        print()
    else:
        for i, (p, t, d) in enumerate(zip(prompts, tokens, done, strict=True)):
            print(f"=== [{i + 1}/{len(prompts)}] {p[:70]!r} ({state(t, d)})\n{text(t)}")
    sys.stdout.flush()
    got = [t for t in tokens if t is not None]
    note(f"interrupted (Ctrl-C): {sum(len(t) for t in got)} new tokens so far, {sum(done)} of {len(prompts)} "
         "prompt(s) done")
    return EXIT_INTERRUPTED


def emit(result: dict, prompts: list[str], texts: list[str], as_json: bool, streamed: bool) -> None:
    """Print the result: one JSON object, or the texts (unless streamed) and the summary."""
    if as_json:
        print(json.dumps(result))
        return
    if len(prompts) > 1:
        for i, (p, t) in enumerate(zip(prompts, texts, strict=True)):
            print(f"=== [{i + 1}/{len(prompts)}] {p[:70]!r}\n{t}")
    elif not streamed:
        print(texts[0])
    print("\n".join(summary_lines(result)))


def summary_lines(result: dict) -> list[str]:
    """The stats summary printed after the text.

    Parameters
    ----------
    result : dict
        The JSON result of ``specsampler generate``.

    Returns
    -------
    list of str
    """
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
    if result.get("compare"):
        lines += compare_lines(result["compare"], t["threads"])
    return lines


def compare_lines(c: dict, threads: int) -> list[str]:
    """The summary's lines on plain ``target.generate`` (``--compare``): its speed, the speedup, and a note when the
    timed runs disagree (advising ``--threads 1`` to a run on more than one of torch's `threads`)."""
    same = {True: "identical output", False: "OUTPUT DIFFERS", None: "sampled: outputs differ by chance"}
    speedup = format_spread(c["speedup_runs"], "{:.2f}", "x", "interleaved pairs") if c["speedup"] else "n/a"
    lines = [f"    plain target.generate: {c['new_tokens']} new tokens, "
             f"{format_spread(c['tokens_per_s_runs'], unit=' tokens/s', runs='timed runs')}",
             f"    -> speedup {speedup} ({same[c['identical']]})"]
    if c["speedup"] and c["speedup_min"] > 0 and c["speedup_max"] / c["speedup_min"] > UNSTEADY:
        lines.append(f"    note: the timed runs disagree (speedups {c['speedup_min']:.2f}x to "
                     f"{c['speedup_max']:.2f}x): something else is using the CPU"
                     + ("; on a busy machine torch's threads wait on each other, and --threads 1 gives steadier "
                        "figures" if threads > 1 else ""))
    return lines
