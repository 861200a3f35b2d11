"""The two sides of ``specsampler generate``: ``specsampler.generate`` over the prompts, ``--batch-size`` at a time,
and plain ``target.generate`` on the same prompts and options (``--compare``)."""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from .. import GenerationStats, generate
from .display import Interrupted, Progress, Streamer, Tracker, note
from .prompts import batches, left_pad, new_tokens


@dataclasses.dataclass(frozen=True)
class Job:
    """What every run of a ``specsampler generate`` call shares.

    Attributes
    ----------
    target : transformers.PreTrainedModel
    drafter : transformers.PreTrainedModel or PromptLookupDrafter
    rows : list of list of int
        The prompts' tokens.
    device : torch.device
    max_new_tokens, batch_size : int
    seed : int or None
        Batch b (its first prompt at index lo) is seeded with ``seed + lo``.
    eos : list of int
        The EOS ids: a row's new tokens end at the first.
    pad_id : int
        Left-pads the prompts.
    speculative : dict
        Keywords of ``specsampler.generate`` (besides the prompts, max_new_tokens, seed and callback).
    plain : dict
        Keywords of ``target.generate`` (besides the prompts and max_new_tokens).
    """

    target: object
    drafter: object
    rows: list[list[int]]
    device: torch.device
    max_new_tokens: int
    batch_size: int
    seed: int | None
    eos: list[int]
    pad_id: int
    speculative: dict
    plain: dict

    def warm_up(self) -> Job:
        """A run of one prompt and two new tokens, so that neither side pays first-call costs in the timing."""
        return dataclasses.replace(self, rows=self.rows[:1], max_new_tokens=2, batch_size=1)


def _sum_stats(all_stats: list[GenerationStats]) -> GenerationStats:
    total = GenerationStats()
    for s in all_stats:
        for f in dataclasses.fields(GenerationStats):
            setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
    return total


def run_speculative(job: Job, tokenizer=None, *, stream: bool = False, progress: bool = False, notes: bool = False,
                    track: bool = True) -> tuple[list[list[int]], GenerationStats, float]:
    """``specsampler.generate`` over the prompts, ``--batch-size`` at a time.

    Parameters
    ----------
    job : Job
    tokenizer : transformers tokenizer, optional
        Decodes the streamed text (needed with `stream`).
    stream : bool
        Print the new text on stdout as it comes (one prompt).
    progress : bool
        A progress bar on stderr (:class:`Progress`).
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
    Interrupted
        Ctrl-C, with each prompt's tokens so far.
    """
    streamer = Streamer(tokenizer, sys.stdout) if stream else None
    bar = Progress(len(job.rows) * job.max_new_tokens, sys.stderr) if progress else None
    tracker = Tracker(len(job.rows), job.max_new_tokens, job.eos, streamer, bar)
    callback = tracker if track or stream or progress else None
    outs, stats, seconds = [], [], 0.0
    n_batches = -(-len(job.rows) // job.batch_size)
    try:
        for i, (lo, batch) in enumerate(batches(job.rows, job.batch_size)):
            tracker.start_batch(lo, len(batch))
            if bar is not None:
                bar.describe(f"batch {i + 1}/{n_batches}")
            got, batch_stats, sec = _speculative_batch(job, lo, batch, callback)
            tracker.end_batch(lo, got)
            outs += got
            stats.append(batch_stats)
            seconds += sec
            if streamer is not None:
                streamer.finish(tokenizer.decode(got[0], skip_special_tokens=True))
            if notes and len(job.rows) > 1:
                line = (f"batch {i + 1}/{n_batches} done: {lo + len(batch)}/{len(job.rows)} prompts, "
                        f"{sum(len(g) for g in got)} new tokens, {seconds:.1f} s so far")
                bar.write(line) if bar is not None else note(line)
    except KeyboardInterrupt:
        raise Interrupted(tracker.tokens, tracker.done) from None
    finally:
        if bar is not None:
            bar.close()
    return outs, _sum_stats(stats), seconds


def _speculative_batch(job: Job, lo: int, batch: list[list[int]], callback):
    """One ``specsampler.generate`` call: new tokens per row, its stats and seconds."""
    ids, mask = left_pad(batch, job.pad_id)
    start = time.perf_counter()
    out = generate(job.target, job.drafter, ids.to(job.device), mask.to(job.device),
                   max_new_tokens=job.max_new_tokens, seed=None if job.seed is None else job.seed + lo,
                   callback=callback, **job.speculative)
    seconds = time.perf_counter() - start
    return new_tokens(out.sequences.cpu(), ids.shape[1], job.eos), out.stats, seconds


def run_plain(job: Job) -> tuple[list[list[int]], float]:
    """Plain ``target.generate`` on the same prompts, options and logits processors, ``--batch-size`` at a time.

    Returns
    -------
    (list of list of int, float)
        New tokens per prompt, seconds.
    """
    outs, seconds = [], 0.0
    for lo, batch in batches(job.rows, job.batch_size):
        ids, mask = left_pad(batch, job.pad_id)
        if job.seed is not None:
            torch.manual_seed(job.seed + lo)
        start = time.perf_counter()
        with torch.no_grad():
            seqs = job.target.generate(ids.to(job.device), attention_mask=mask.to(job.device),
                                       max_new_tokens=job.max_new_tokens, **job.plain)
        seconds += time.perf_counter() - start
        outs += new_tokens(seqs.cpu(), ids.shape[1], job.eos)
    return outs, seconds


def run_speculative_timed(job: Job) -> tuple[list[list[int]], float]:
    """A timed run of ``--compare``: no streaming, no progress bar, no callback; new tokens per prompt, seconds."""
    outs, _, seconds = run_speculative(job, track=False)
    return outs, seconds
