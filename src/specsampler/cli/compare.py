"""``specsampler generate --compare``: timed runs of specsampler and of plain ``target.generate``, interleaved, and
the statistics reported on them (medians with their spread, per-pair speedups)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

DEFAULT_REPEATS = 5  # timed runs of each side

Run = tuple[list[list[int]], float]  # one timed run: new tokens per prompt, seconds


def time_interleaved(sides: dict[str, Callable[[], Run]], repeats: int, note) -> dict[str, list[Run]]:
    """Time each side `repeats` times, interleaved (A B, B A, A B, ...), so that a drift in the machine's load
    reaches both sides alike.

    Parameters
    ----------
    sides : dict of str to callable
        Two sides, by the name the progress notes give them (``"specsampler"``, ``"plain target.generate"``); each
        call runs the side once and returns its new tokens per prompt and the seconds it took.
    repeats : int
    note : callable
        Takes a line to show after each pair of runs.

    Returns
    -------
    dict of str to list of (list of list of int, float)
        Per side, its runs in order.
    """
    names = list(sides)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            runs[name].append(sides[name]())
        rates = ", ".join(f"{name} {rate(*counted(runs[name][-1])):.1f} tokens/s" for name in names)
        note(f"timed run {i + 1}/{repeats}: {rates}")
    return runs


def counted(run: Run) -> tuple[int, float]:
    """A run's new tokens, all prompts together, and its seconds."""
    outs, seconds = run
    return sum(len(o) for o in outs), seconds


def rate(tokens: int, seconds: float) -> float:
    """Tokens per second (0 for no time at all)."""
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

    Returns
    -------
    str
    """
    s = spread(values)
    if s["n"] == 1:
        return f"{fmt.format(s['median'])}{unit} (1 run)"
    return (f"{fmt.format(s['median'])}{unit} (median of {s['n']} {runs}, min-max {fmt.format(s['min'])}-"
            f"{fmt.format(s['max'])})")


def timing(runs: list[Run], new: int) -> dict:
    """The JSON timings of a side's timed runs: medians, and the per-run rates with their min and max.

    Parameters
    ----------
    runs : list of (list of list of int, float)
        The side's timed runs.
    new : int
        The new tokens to report for the side.

    Returns
    -------
    dict
    """
    rates = [rate(*counted(r)) for r in runs]
    s = spread(rates)
    return {"generate_s": statistics.median(sec for _, sec in runs), "new_tokens": new, "tokens_per_s": s["median"],
            "runs": len(runs), "tokens_per_s_runs": rates, "tokens_per_s_min": s["min"], "tokens_per_s_max": s["max"]}


def comparison(spec: list[Run], plain: list[Run], shown: list[list[int]], sampled: bool) -> dict:
    """The JSON ``compare`` object: plain ``target.generate``'s timings and the speedup of each interleaved pair.

    Parameters
    ----------
    spec, plain : list of (list of list of int, float)
        The timed runs of each side, in order.
    shown : list of list of int
        The new tokens per prompt that were printed.
    sampled : bool
        Whether the runs sample (then their outputs differ by chance: ``identical`` is None).

    Returns
    -------
    dict
        :func:`timing` of the plain side (its new tokens those of its first run), with ``speedup`` (the median; None
        when no pair could be timed), ``speedup_runs``, ``speedup_min``, ``speedup_max`` and ``identical`` (greedy:
        whether every run of both sides gave `shown`).
    """
    speedups = [rate(*counted(a)) / rate(*counted(b)) if rate(*counted(b)) else 0.0
                for a, b in zip(spec, plain, strict=True)]
    s = spread(speedups)
    identical = None if sampled else all(outs == shown for outs, _ in spec + plain)
    return timing(plain, counted(plain[0])[0]) | {
        "speedup": s["median"] or None, "speedup_runs": speedups, "speedup_min": s["min"], "speedup_max": s["max"],
        "identical": identical}
