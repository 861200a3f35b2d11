"""Drafters without a draft model, for :func:`specsampler.generate`."""

from __future__ import annotations

__all__ = ["PromptLookupDrafter"]


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
