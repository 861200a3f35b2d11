"""Draft-length schedules: how many drafts each row gets at the next step.

One small interface, :class:`Schedule`, and one class per strategy (transformers' ``num_assistant_tokens_schedule``):

- :class:`ConstantSchedule` ("constant"): K every step.
- :class:`HeuristicSchedule` ("heuristic"; "heuristic_transient" alike, since every call starts from K): per row,
  K_b + 2 (at most 2K) after a step that accepted all its drafts, K_b - 1 (at least 1) after one that rejected.
- :class:`CostSchedule` ("cost", specsampler's): each step drafts the K' in [0, 2K] with the most expected tokens per
  second, from each row's acceptance and the measured forward times (:class:`Costs`).

The "cost" schedule's measurements are process-wide state with one owner, :data:`COSTS` (a :class:`CostRegistry`):
they belong to a (target, drafter) pair, are kept while both models live (weak references) and carry over to the
pair's next calls; ``COSTS.reset()`` forgets them, and ``COSTS.configured(tuning=..., clock=...)`` runs a block with
other tuning constants (:class:`CostTuning`) or another clock (:class:`Stopwatch` by default).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import weakref
from dataclasses import dataclass
from typing import Protocol

import torch

from .._distributed import rank0_choice

__all__ = ["COSTS", "SCHEDULES", "ConstantSchedule", "CostRegistry", "CostSchedule", "CostTuning", "Costs",
           "HeuristicSchedule", "Schedule", "Stopwatch", "make_schedule"]

#: The draft-length schedules :func:`specsampler.generate` takes (``num_assistant_tokens_schedule``); transformers'
#: "heuristic_transient" (its "heuristic" without carrying K over to the next call) is "heuristic" here, where every
#: call starts from K.
SCHEDULES = ("constant", "heuristic", "heuristic_transient", "cost")


class Schedule(Protocol):
    """What the loop asks of a draft-length schedule during one call.

    Attributes
    ----------
    max_k : int
        The most drafts a row can get at a step (the draft model's cache is sized by it).
    watch : Stopwatch or None
        Marks a step's phases when the schedule measures them (the loop calls ``mark`` and ``spans``).
    """

    max_k: int
    watch: Stopwatch | None

    def lengths(self, limits: list[int]) -> list[int]:
        """K_b for each running row at the next step, given the most drafts each can use (`limits`)."""

    def observe(self, step, prefill_rows: int) -> None:
        """Take a verified step (a ``loop.Step``); `prefill_rows`: the prompt's token rows its forward also fed."""

    def select(self, keep: list[int]) -> None:
        """Keep the state of the running rows `keep` (indices into them) only."""

    def attach(self, drafter) -> None:
        """The call's drafter, once started (a schedule that sets a lookup trie's width keeps it)."""


class ConstantSchedule:
    """K drafts for every row at every step."""

    watch = None

    def __init__(self, k: int):
        self.k = self.max_k = k

    def lengths(self, limits: list[int]) -> list[int]:
        return [self.k] * len(limits)

    def observe(self, step, prefill_rows: int) -> None:
        pass

    def select(self, keep: list[int]) -> None:
        pass

    def attach(self, drafter) -> None:
        pass


class HeuristicSchedule:
    """transformers' "heuristic", per row: K_b + 2 (at most 2K) after a step that accepted all K_b drafts, K_b - 1
    (at least 1) after one that rejected a draft; every row starts at K."""

    watch = None

    def __init__(self, k: int, batch: int):
        self.max_k = 2 * k
        self.k = [k] * batch

    def lengths(self, limits: list[int]) -> list[int]:
        return list(self.k)

    def observe(self, step, prefill_rows: int) -> None:
        for i, (count, tokens) in enumerate(zip(step.levels, step.accepted, strict=True)):
            if len(tokens) - 1 < count:
                self.k[i] = max(1, self.k[i] - 1)
            elif count == self.k[i]:
                self.k[i] = min(self.k[i] + 2, self.max_k)

    def select(self, keep: list[int]) -> None:
        self.k = [self.k[i] for i in keep]

    def attach(self, drafter) -> None:
        pass


@dataclass(frozen=True)
class CostTuning:
    """The "cost" schedule's constants.

    Attributes
    ----------
    probe_every : int
        After this many steps without drafts a probe drafts one token per row (acceptance can change); the wait
        doubles after each probe that changes nothing.
    smoothing : float
        Weight of a new measurement in the running means of times.
    acceptance_memory : float
        Per step that drafted, the acceptance counts are multiplied by this (older steps count less).
    draft_time_reach : float
        A draft time measured in an earlier call is used only within this factor of the batch size (a draft
        forward's time depends on B).
    """

    probe_every: int = 8
    smoothing: float = 0.5
    acceptance_memory: float = 0.8
    draft_time_reach: float = 2.0


class Stopwatch:
    """Marks within a step, on the target's device: ``time.perf_counter`` on the CPU, CUDA events on a GPU (read after
    the step's one synchronisation: timing adds none). Other devices are timed on the host."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def spans(self) -> list[float]:
        """The seconds between consecutive marks since the last call."""
        marks, self.marks = self.marks, []
        if self.cuda:
            marks[-1].synchronize()  # (reached already: the step synchronised before its last mark)
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:], strict=False)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class Costs:
    """Measured times and acceptance of one (target, drafter) pair on this machine, kept across :func:`generate` calls
    (the "cost" schedule's model of a step; see :class:`CostSchedule`).

    Attributes
    ----------
    target : dict of int to float
        Token rows a target forward fed (B' x (K' + 1)) -> its smoothed seconds.
    prefill : tuple of (int, float) or None
        The last first forward of a call (it also fed the prompts): (token rows, seconds).
    draft, rest : dict of int to float
        Running rows B' -> smoothed seconds per draft forward, and of the rest of a step (verify, processors, host).
    verified, rejected : list of float
        Per draft position i (index i, 1 up): drafts verified there (the ones before it accepted) and rejected there,
        summed over rows; older steps count less (``CostTuning.acceptance_memory`` per step that drafted). With a
        lookup trie whose width the schedule sets, its first continuation's (the chain's) acceptance.
    gain : list of float
        Steps that verified a lookup trie's other candidates: [tokens accepted beyond what its first continuation
        alone would have had, levels of depth proposed], summed over rows, decayed as the acceptance counts.
    extra : dict of int to float
        Running rows B' -> seconds per level of depth such a step took beyond a chain step of its depth (smoothed).
    narrow, wide_every : int
        Steps drafting a chain since the last wide one, and how many before a wide probe (doubling while it loses).
    """

    def __init__(self, tuning: CostTuning | None = None):
        self.tuning = tuning or CostTuning()
        self.target: dict[int, float] = {}
        self.prefill: tuple[int, float] | None = None
        self.draft: dict[int, float] = {}
        self.rest: dict[int, float] = {}
        self.verified: list[float] = [0.0]
        self.rejected: list[float] = [0.0]
        self.gain: list[float] = [0.0, 0.0]
        self.extra: dict[int, float] = {}
        self.narrow, self.wide_every = 0, self.tuning.probe_every  # chain steps since a wide one; before a probe

    def count_acceptance(self, counts: list[int], accepted: list[list[int]]) -> None:
        """Add a step's drafts (`counts`: K_b per row; `accepted`: each row's accepted drafts and drawn token)."""
        width = max(counts) + 1
        if len(self.verified) < width:
            self.verified += [0.0] * (width - len(self.verified))
            self.rejected += [0.0] * (width - len(self.rejected))
        memory = self.tuning.acceptance_memory
        self.verified = [memory * v for v in self.verified]
        self.rejected = [memory * r for r in self.rejected]
        for count, tokens in zip(counts, accepted, strict=True):
            n = len(tokens) - 1  # accepted: positions 1..n, then position n + 1 rejected if it was verified
            for i in range(1, min(n + 1, count) + 1):
                self.verified[i] += 1.0
            if n < count:
                self.rejected[n + 1] += 1.0

    def count_gain(self, tokens: int, levels: int) -> None:
        """Add a wide step's `tokens` accepted beyond the first continuations' and its `levels` of depth."""
        memory = self.tuning.acceptance_memory
        self.gain = [memory * self.gain[0] + tokens, memory * self.gain[1] + levels]

    def gain_per_level(self) -> float | None:
        """Tokens the other candidates add per level of depth (None before a wide step proposed any)."""
        return self.gain[0] / self.gain[1] if self.gain[1] > 0 else None

    def survival(self, max_k: int) -> list[float]:
        """S(0..max_k): the chance that a row's drafts 1..i are all accepted (Kaplan-Meier over the positions, each
        position's rejection rate shrunk towards the rate over all positions, which starts at 1/2)."""
        pooled = (sum(self.rejected) + 0.5) / (sum(self.verified) + 1.0)
        out = [1.0]
        for i in range(1, max_k + 1):
            verified, rejected = (self.verified[i], self.rejected[i]) if i < len(self.verified) else (0.0, 0.0)
            out.append(out[-1] * (1.0 - (rejected + pooled) / (verified + 1.0)))
        return out

    def target_line(self) -> tuple[float, float] | None:
        """(seconds, seconds per token row) of a target forward: least squares through the measured sizes (with the
        first forward while fewer than two are known); None before two sizes."""
        points = list(self.target.items())
        if len(points) < 2 and self.prefill is not None:
            points.append(self.prefill)
        if len({x for x, _ in points}) < 2:
            return None
        n = len(points)
        mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
        slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
        slope = max(slope, 0.0)
        return max(my - slope * mx, 0.0), slope


def _nearest(times: dict[int, float], rows: int, factor: float = math.inf) -> float | None:
    """The time measured at the number of rows closest to `rows` (the larger on a tie); None when none lies within
    `factor` of it."""
    near = min(times, key=lambda r: (abs(r - rows), -r), default=None)
    return None if near is None or not rows / factor <= near <= rows * factor else times[near]


def _smooth(times: dict[int, float], key: int, seconds: float, w: float) -> None:
    times[key] = seconds if key not in times else (1 - w) * times[key] + w * seconds


class CostSchedule:
    """The "cost" schedule: each step drafts the K' in [0, max_k] that maximises the expected tokens per second,

        sum_b E(min(K', limit_b)) / (T_target(B' (K' + 1)) + K' T_draft(B') + T_rest(B')),
        E(k) = S(0) + S(1) + ... + S(k),

    with S(i) the chance that a row's first i drafts are all accepted, estimated over all rows and recent steps
    position by position (Kaplan-Meier: acceptance comes in runs, so a draft after accepted ones is accepted more
    often than the first; positions not yet drafted take the rate over all positions); T_target the measured time of
    a target forward that fed B' (K' + 1) token rows where that size was measured, else a line through the measured
    sizes (the first forward, which also fed the prompt, is used until two other sizes are known); T_draft the
    measured time per draft forward and T_rest the rest of a step (verify, processors, the host), both at the nearest
    batch size measured. The times and the acceptance counts belong to the (target, drafter) pair and carry over to
    its next calls (:class:`Costs`); until they suffice (a target line; a draft time measured in this call, or in an
    earlier one within a factor 2 of B': a draft forward's time depends on B) a step drafts K.

    With prompt-lookup tries (``prompt_lookup_num_candidates`` = m) it also chooses the width: each step verifies
    either the first continuation only (a chain) or all m, whichever has the most expected tokens per second. The
    chain is priced as above, with the first continuations' acceptance (on a wide step: their common prefix with the
    accepted path); the wide step adds g tokens and e seconds per level of depth, g the tokens the other candidates
    added per level proposed and e the time a wide step took beyond a chain step of its depth, both measured on wide
    steps. Before g is known a step goes wide; so does one after ``wide_every`` chain steps (the wait doubling while
    chains win). Only which drafts are proposed changes, not verification (exact).
    Other trees (``draft_tree``) are priced at B' (1 + b K') token rows, b their nodes per level (smoothed).

    Where a forward's cost grows with its rows (a CPU, a large batch) the schedule drafts less, down to K' = 0 (a
    step of plain decoding: the target's next token; the draft model is fed what it skipped in its next forward).
    Acceptance can change, so after ``CostTuning.probe_every`` such steps a probe drafts one token per row; each probe
    after which the schedule drafts nothing again doubles the wait for the next. Where the cost stays flat (a GPU at
    small B) it drafts up to max_k. The choice depends on past steps only, so the output distribution is exact
    whatever it is; as it depends on measured times, sampled tokens can differ between runs with the same seed.

    Parameters
    ----------
    costs : Costs
        The pair's measured times (updated by :meth:`observe`).
    k0 : int
        K' until the measurements suffice.
    watch : Stopwatch
        Marks the phases of each step (the loop calls it).
    target : transformers.PreTrainedModel
        Under tensor parallelism every rank takes rank 0's K' (ranks time themselves differently).
    max_k : int, optional
        The largest K' (default 2 `k0`).
    """

    def __init__(self, costs: Costs, k0: int, watch: Stopwatch | None, target=None, max_k: int | None = None):
        self.costs, self.k0, self.watch, self.target = costs, k0, watch, target
        self.max_k = 2 * k0 if max_k is None else max_k
        self.tuning = costs.tuning
        self.plain = 0  # steps since the last one that drafted
        self.probe_every = self.tuning.probe_every  # steps without drafts before a probe (doubles while it finds none)
        self.timed_draft = False  # whether this call measured a draft forward
        self.probed = False
        self.breadth = 1.0  # token rows a row feeds per level of depth (a lookup trie's nodes / its depth), smoothed
        self.lookup = None  # a lookup trie drafter whose width this schedule sets (see attach)
        self.wide = False  # whether the next step verifies the trie's other candidates

    def attach(self, drafter) -> None:
        """Set the width of a lookup trie drafter (``prompt_lookup_num_candidates`` > 1) step by step."""
        if getattr(drafter, "m", 1) > 1 and hasattr(drafter, "firsts"):
            self.lookup = drafter

    def lengths(self, limits: list[int]) -> list[int]:
        """K' for every running row (one value: the step's forwards are shared), the same on every rank; a lookup
        trie's width (all its candidates, or its first only) likewise."""
        code = rank0_choice(2 * self.choose(limits) + self.wide, self.target)
        k, self.wide = code // 2, bool(code % 2)
        if self.lookup is not None:
            self.lookup.width = self.lookup.m if self.wide else 1
        return [k] * len(limits)

    def select(self, keep: list[int]) -> None:
        pass

    def observe(self, step, prefill_rows: int = 0, spans: list[float] | None = None) -> None:
        """Take a step's acceptance and its phases' times `spans` (propose, target forward, rest; None: from the
        stopwatch); `prefill_rows`: the prompt's token rows the target's forward also fed (the first step: a draft
        forward then fed the prompt too)."""
        spans = self.watch.spans() if spans is None else spans
        wide = self.lookup is not None and self.wide and step.width > 1
        if wide:
            self._count_wide(step)
        elif step.width > 1:  # (a step without drafts says nothing about acceptance)
            self.costs.count_acceptance(step.levels, step.accepted)
            if sum(step.levels):  # a tree's nodes per level of depth (1 for chains)
                w = self.tuning.smoothing
                self.breadth = (1 - w) * self.breadth + w * sum(step.counts) / sum(step.levels)
        self.plain = self.plain + 1 if step.width == 1 else 0
        propose, forward, rest = spans
        rows = len(step.counts)
        fed = rows * step.width
        if prefill_rows:
            self.costs.prefill = (prefill_rows + fed, forward)
            return
        if wide:  # a wide step's time beyond a chain step of its depth (none where every row's trie was a chain)
            expected = 0.0 if step.counts == step.levels else self._chain_seconds(rows, max(step.levels))
            if expected is not None:
                seconds = (sum(spans) - expected) / max(step.levels) if expected else 0.0
                _smooth(self.costs.extra, rows, seconds, self.tuning.smoothing)
            if step.counts != step.levels:
                return
        w = self.tuning.smoothing
        _smooth(self.costs.target, fed, forward, w)
        if step.width > 1:  # (K' = 0 ran no draft forward)
            _smooth(self.costs.draft, rows, propose / (step.width - 1), w)
            self.timed_draft = True
        _smooth(self.costs.rest, rows, rest, w)

    def _count_wide(self, step) -> None:
        """A step that verified a trie's other candidates: its first continuations' acceptance (what the chain
        would have accepted: their common prefix with the accepted path; exact for greedy rows, the schedule's
        estimate for sampled ones) and the tokens the other candidates added."""
        firsts = self.lookup.firsts
        chain = [next((i for i, (x, y) in enumerate(zip(f, a, strict=False)) if x != y), min(len(f), len(a) - 1))
                 for f, a in zip(firsts, step.accepted, strict=True)]
        self.costs.count_acceptance([len(f) for f in firsts], [a[:n + 1] for n, a in zip(chain, step.accepted,
                                                                                        strict=True)])
        self.costs.count_gain(sum(len(a) - 1 for a in step.accepted) - sum(chain), sum(step.levels))

    def _chain_seconds(self, rows: int, k: int, breadth: float = 1.0) -> float | None:
        """The modelled seconds of a step drafting K' = `k` for `rows` rows (None before the measurements suffice)."""
        line = self.costs.target_line()
        draft = _nearest(self.costs.draft, rows, math.inf if self.timed_draft else self.tuning.draft_time_reach)
        if line is None or draft is None:
            return None
        fed = round(rows * (1 + breadth * k))  # (B' (K' + 1) for chains)
        rest = _nearest(self.costs.rest, rows) or 0.0
        return self.costs.target.get(fed, line[0] + line[1] * fed) + k * draft + rest

    def choose(self, limits: list[int]) -> int:
        """K' for the next step, given each running row's most drafts `limits` (and :attr:`wide`)."""
        rows = len(limits)
        if self._chain_seconds(rows, 0) is None:  # (wide until a wide step was measured)
            self.wide = self.lookup is not None and self.costs.gain[1] == 0
            return self.k0
        self.wide = False
        if self.plain >= self.probe_every:  # a probe: one draft per row measures acceptance again
            self.probed = True
            return 1
        expected = list(itertools.accumulate(self.costs.survival(self.max_k)))  # E(k) = S(0) + ... + S(k)
        gain, extra = self.costs.gain_per_level(), max(_nearest(self.costs.extra, rows) or 0.0, 0.0)
        breadth = 1.0 if self.lookup is not None else self.breadth
        best, best_rate = (0, False), -1.0
        for k, wide in itertools.product(range(self.max_k + 1), (False, True)):
            if wide and (self.lookup is None or gain is None or k == 0):
                continue
            tokens = sum(expected[min(k, lim)] + (gain * min(k, lim) if wide else 0.0) for lim in limits)
            seconds = self._chain_seconds(rows, k, breadth) + (k * extra if wide else 0.0)
            rate = tokens / max(seconds, 1e-12)
            if rate > best_rate:
                best, best_rate = (k, wide), rate
        if self.probed:  # the step after a probe: back to no drafts doubles the wait for the next one
            self.probe_every = 2 * self.probe_every if best[0] == 0 else self.tuning.probe_every
            self.probed = False
        self.wide = self._wide_probe(best, gain)
        return best[0]

    def _wide_probe(self, best: tuple[int, bool], gain: float | None) -> bool:
        """Whether the step is wide: where it pays, before a wide step was measured, after `wide_every` chain steps."""
        if self.lookup is None or best[0] == 0:
            return False
        c = self.costs  # (the wait carries over to the pair's next calls)
        c.narrow = 0 if best[1] else c.narrow + 1
        if best[1] or gain is None or c.narrow >= c.wide_every:
            c.wide_every = self.tuning.probe_every if best[1] or gain is None else 2 * c.wide_every
            c.narrow = 0
            return True
        return False


class CostRegistry:
    """The owner of the "cost" schedule's measurements: one :class:`Costs` per (target, drafter) pair, kept while both
    models live (weak references: the registry holds no model), so that a pair's next calls choose from their first
    step. Drafters with the same ``cost_key`` (a :class:`~.drafters.PromptLookupDrafter`'s setting:
    ``prompt_lookup_num_tokens=`` makes a new one per call) count as one: the registry holds one stand-in per key.
    Bound: one entry per live pair and per lookup setting (per :meth:`scoped` key).

    Parameters
    ----------
    tuning : CostTuning
    clock : callable
        ``clock(device)`` -> a :class:`Stopwatch`-like object (``mark``, ``spans``).
    """

    def __init__(self, tuning: CostTuning | None = None, clock=Stopwatch):
        self.tuning, self.clock = tuning or CostTuning(), clock
        self.reset()

    def reset(self) -> None:
        """Forget every measurement."""
        self._pairs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lookups: dict[tuple, object] = {}  # cost_key -> the drafter standing for it
        self._scopes: dict = {}  # key -> (pairs, lookups) of :meth:`scoped` blocks

    def costs_of(self, target, drafter) -> Costs:
        """The measured times of this (target, drafter) pair: new ones for a pair not seen since the last reset."""
        key = getattr(drafter, "cost_key", None)  # a drafter's setting (PromptLookupDrafter's): one per setting
        if key is not None:
            drafter = self._lookups.setdefault(key, drafter)
        return self._pairs.setdefault(target, weakref.WeakKeyDictionary()).setdefault(drafter, Costs(self.tuning))

    @contextlib.contextmanager
    def scoped(self, key):
        """A block that keeps its measurements apart, under `key`: the ones a block with the same key left (none the
        first time), restored after it (a benchmark timing several workloads in one process keeps each one's)."""
        saved = (self._pairs, self._lookups)
        self._pairs, self._lookups = self._scopes.setdefault(key, (weakref.WeakKeyDictionary(), {}))
        try:
            yield self
        finally:
            self._pairs, self._lookups = saved

    @contextlib.contextmanager
    def configured(self, tuning: CostTuning | None = None, clock=None):
        """A block with other tuning constants or another clock, starting from no measurements; the registry's
        state is restored after it."""
        saved = (self.tuning, self.clock, self._pairs, self._lookups, self._scopes)
        self.tuning, self.clock = tuning or self.tuning, clock or self.clock
        self.reset()
        try:
            yield self
        finally:
            self.tuning, self.clock, self._pairs, self._lookups, self._scopes = saved


#: The process's "cost" measurements (see :class:`CostRegistry`).
COSTS = CostRegistry()


def make_schedule(name: str, k: int, batch: int, target, drafter, device: torch.device) -> Schedule:
    """The schedule object for a resolved ``num_assistant_tokens_schedule`` `name` ("constant", "heuristic" or
    "cost"), K = `k`, `batch` rows, with these models (the "cost" measurements are theirs) on `device`."""
    if name == "heuristic":
        return HeuristicSchedule(k, batch)
    if name == "cost":
        return CostSchedule(COSTS.costs_of(target, drafter), k, COSTS.clock(device), target)
    return ConstantSchedule(k)
