"""Drafters for :func:`specsampler.generate`: the protocol a drafter implements during one call, and prompt lookup.

During one :func:`specsampler.generate` call the drafter is an object with the :class:`Drafter` protocol: each step it
``propose``-s up to K tokens per running row, is told which of them were ``accept``-ed (with the token drawn after
them), and drops finished rows on ``select_rows``. Two implement it: the draft model (``_DraftModel`` in
``specsampler._generate``: a KV cache with holes, raw draft scores when sampling) and :class:`PromptLookupRun`, the
per-call state of a :class:`PromptLookupDrafter` (n-gram matches in the rows' token lists, one-hot drafts).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

__all__ = ["PromptLookupDrafter"]


class Proposal(NamedTuple):
    """One step's drafts for the running rows.

    Attributes
    ----------
    drafts : torch.Tensor
        [B, K'] int64 draft tokens (K' <= K; a row's drafts past its count are filler).
    scores : torch.Tensor or None
        [B, K', V'] float32 raw draft scores the drafts were drawn from with :func:`specsampler.sample` (sampling with
        a draft model; verify applies the same temperature and warpers to them, giving q), else None (greedy, or
        one-hot drafts).
    counts : list of int
        B numbers of drafts to verify per row, each <= K' and <= the row's limit.
    """

    drafts: torch.Tensor
    scores: torch.Tensor | None
    counts: list[int]


class Drafter(Protocol):
    """What :func:`specsampler.generate` asks of a drafter during one call (state for the rows still running).

    Attributes
    ----------
    forwards : int
        Draft-model forwards so far (0 without a draft model).
    """

    forwards: int

    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        """Drafts for every running row.

        Parameters
        ----------
        last : torch.Tensor
            [B] int64 each row's last token (not yet in any cache).
        limits : list of int
            B: the most drafts each row can use (its remaining budget minus the token verify draws).

        Returns
        -------
        Proposal
        """

    def accept(self, n: torch.Tensor, accepted: list[list[int]]) -> None:
        """Row b kept the first n_b of its proposed drafts, then the token verify drew.

        Parameters
        ----------
        n : torch.Tensor
            [B] int64 accepted drafts per row (on the target's device).
        accepted : list of list of int
            B lists of n_b + 1 tokens: the accepted drafts and the drawn token.
        """

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the running rows `rows` ([B'] int64 indices into the current B rows)."""


class PromptLookupDrafter:
    """Prompt lookup (n-gram) drafting: propose what followed the sequence's tail where it last occurred.

    For n from `max_ngram` down to `min_ngram`, the last n tokens of a row are searched for earlier in the row (the
    prompt and what was generated so far), the latest occurrence first; the tokens that followed it are the drafts.
    No match: no drafts for that row. The drafts are one-hot (q = 1 on the proposed token), so verification accepts
    each with probability p(x) (greedy: iff it is the target's argmax), and the output stays exact.

    Parameters
    ----------
    max_ngram, min_ngram : int
        The n-gram sizes tried, longest first.
    max_lookback : int, optional
        Search only the last `max_lookback` tokens of a row (None: the whole row).
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_lookback: int | None = None):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram, self.max_lookback = max_ngram, min_ngram, max_lookback

    def propose_row(self, seq: list[int], k: int) -> list[int]:
        """Up to `k` draft tokens for the token list `seq` ([] when the tail occurs nowhere earlier)."""
        start = 0 if self.max_lookback is None else max(0, len(seq) - self.max_lookback)
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail = seq[-n:]
            # latest occurrence that ends before the tail itself, and has at least one token after it
            for i in range(len(seq) - n - 1, start - 1, -1):
                if seq[i:i + n] == tail:
                    return seq[i + n:i + n + k]
        return []

    def propose(self, seqs: list[list[int]], k: int) -> tuple[list[list[int]], list[int]]:
        """Drafts for a batch of rows.

        Parameters
        ----------
        seqs : list of list of int
            B token lists (no padding).
        k : int
            The most drafts per row.

        Returns
        -------
        drafts : list of list of int
            B lists of up to k tokens.
        counts : list of int
            Their lengths.
        """
        drafts = [self.propose_row(s, k) for s in seqs]
        return drafts, [len(d) for d in drafts]


class PromptLookupRun:
    """A :class:`PromptLookupDrafter` during one :func:`specsampler.generate` call: the :class:`Drafter` protocol
    over the running rows' token lists.

    Parameters
    ----------
    lookup : PromptLookupDrafter
    seqs : list of list of int
        B token lists: the prompts without their padding.
    k : int
        The most drafts per row (K).
    fill : int
        The token that pads a row's drafts past its count (never verified).
    """

    def __init__(self, lookup: PromptLookupDrafter, seqs: list[list[int]], k: int, fill: int):
        self.lookup, self.seqs, self.k, self.fill = lookup, seqs, k, fill
        self.forwards = 0

    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        """[B] `last` (unused: it ends each token list already) and B `limits` -> [B, max count] one-hot drafts."""
        drafts, counts = self.lookup.propose(self.seqs, self.k)
        counts = [min(c, limit) for c, limit in zip(counts, limits, strict=True)]
        k = max(counts)
        drafts = torch.tensor([d[:k] + [self.fill] * (k - len(d[:k])) for d in drafts], dtype=torch.long)
        return Proposal(drafts.view(len(self.seqs), k), None, counts)

    def accept(self, n: torch.Tensor, accepted: list[list[int]]) -> None:
        """Append each row's n_b + 1 new tokens to its token list."""
        for seq, tokens in zip(self.seqs, accepted, strict=True):
            seq += tokens

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the token lists of the rows `rows` [B'] only."""
        self.seqs = [self.seqs[i] for i in rows.tolist()]
