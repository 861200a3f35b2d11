"""Drafters for :func:`specsampler.generate`: the one factory, the draft model and prompt lookup.

During one :func:`specsampler.generate` call the drafter is an object with the :class:`~.protocol.Drafter` protocol
(:class:`~.protocol.TreeDrafter` for token trees): each step it ``propose``-s up to K tokens per running row, is
handed the target's step (``accept``: which drafts were accepted, the token drawn after them, the target's scores and,
when it asks, hidden states), and drops finished rows on ``select_rows``. :func:`start_drafter` starts the one a call
needs from what was passed as ``draft=``: a model gives a :class:`DraftModel` (a KV cache with holes, raw draft
scores when sampling; :class:`.tree_drafters.TreeDraftModel` for ``draft_tree``), a :class:`PromptLookupDrafter`
its :class:`PromptLookupRun` (n-gram matches in the rows' token lists, one-hot drafts; a trie of them,
:class:`.tree_drafters.TreeLookupRun`), and any other :class:`~.protocol.DrafterSource` its own drafter.

Writing a drafter: a class with ``start_drafter(call)`` (:class:`~.protocol.DraftCall` in, a drafter out) is a
``draft=`` for :func:`specsampler.generate`; tests/test_hidden_drafter.py trains a small MLP head on the target's last
hidden states (EAGLE's idea) and drafts from them without any change to the loop. The output stays exact whatever a
drafter proposes: only its drafts (and, if it samples them, the scores they were drawn from) reach verification.

The draft model's cache works as the target's (:mod:`.kv_cache`); its forward over [last, d_1..d_{K-1}] does not
contain d_K, so a row that accepted all K drafts feeds [d_K, last] at the next step (a hole in place of d_K for the
other rows).
"""

from __future__ import annotations

import math
import random

import torch

from .._api import sample
from .kv_cache import CachedModel
from .processors import PrefixProcessors
from .protocol import DraftCall, Drafter, DrafterSource, Proposal, TargetStep, TreeDrafter
from .tree_drafters import TreeLookupRun, start_tree_draft_model

__all__ = ["DraftModel", "Drafter", "PromptLookupDrafter", "PromptLookupRun", "Proposal", "start_drafter"]


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

    @property
    def cost_key(self) -> tuple:
        """Its setting: the "cost" schedule measures drafters with the same key together (:mod:`.schedules`)."""
        return type(self), self.max_ngram, self.min_ngram, self.max_lookback

    def start_drafter(self, call: DraftCall) -> PromptLookupRun | TreeLookupRun:
        """The call's drafter over the prompts' tokens: a :class:`PromptLookupRun` of up to ``call.max_k`` drafts, or
        with ``prompt_lookup_num_candidates`` > 1 a :class:`.tree_drafters.TreeLookupRun` (a trie of continuations)."""
        seqs = [[t for t, m in zip(r, mk, strict=True) if m]
                for r, mk in zip(call.input_ids.tolist(), call.attention_mask.tolist(), strict=True)]
        settings = call.settings
        if settings.tree:
            return TreeLookupRun(self, seqs, call.max_k, settings.lookup_candidates, settings.pad_token_id)
        return PromptLookupRun(self, seqs, call.max_k, settings.pad_token_id)

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

    wants_hidden = False

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

    def accept(self, target: TargetStep) -> None:
        """Append each row's n_b + 1 new tokens to its token list."""
        for seq, tokens in zip(self.seqs, target.accepted, strict=True):
            seq += tokens

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the token lists of the rows `rows` [B'] only."""
        self.seqs = [self.seqs[i] for i in rows.tolist()]


class DraftModel:
    """A draft model behind the :class:`Drafter` protocol: ``propose`` K tokens (with their raw
    scores when sampling), ``accept`` n_b of them (holes in its cache), ``select_rows``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The draft LM.
    batch : int
        B, rows at the start.
    k : int
        K, drafts per step.
    vocab : int
        The target's vocabulary size V: draft scores past it are dropped (a draft with fewer ids, Vd < V, gives
        them q = 0).
    sampling : dict or None
        The options of :func:`specsampler.sample` (temperature, top_k, top_p, min_p); None: greedy drafts.
    rng : random.Random or None
        Draws the seed of each :func:`specsampler.sample` call (sampling).
    processors : PrefixProcessors, optional
        Applied to each draft forward's scores (with the row's sequence and the drafts before it) before a draft is
        chosen from them; the processed scores are the q that verify sees.
    """

    wants_hidden = False

    def __init__(self, model, batch: int, k: int, vocab: int, sampling: dict | None, rng: random.Random | None,
                 processors: PrefixProcessors | None = None):
        self.lm = CachedModel(model, batch)
        self.k, self.vocab, self.sampling, self.rng = k, vocab, sampling, rng
        self.processors = processors
        # ids the draft cannot embed (a target vocabulary padded further) are fed as its last id: q stays what it
        # reports, so verification stays exact
        self.max_id = model.get_input_embeddings().weight.shape[0] - 1
        self.forwards = 0
        self.drafts = None  # [B, K'] the last proposal
        self.k_step = k  # K' of the last proposal
        self.behind = None  # [B] d_K of rows that accepted all K drafts (not in the draft cache), else -1
        self.any_behind = False
        self.all_behind = False

    def prefill(self, prompt: torch.Tensor, mask: torch.Tensor) -> None:
        """Feed [B, P - 1] `prompt` (`mask` [B, P - 1], 0 for padding) to the draft cache (with the first draft)."""
        self.lm.defer(prompt.to(self.lm.device).clamp(max=self.max_id), mask)

    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        """`last` [B] -> drafts [B, K'] and the raw scores they were sampled from, [B, K', V'] (None when greedy or
        K' = 0), with K' = min(K, max limit) draft forwards and K_b = min(K', limit_b). K' = 0 runs no forward: what
        this step would have fed waits for the next forward (the draft catches up then)."""
        self.k_step = k = min(self.k, max(limits))
        tokens, valid = self._first_tokens(last.to(self.lm.device).clamp(max=self.max_id))
        holes = valid is not None  # some row is not behind: its first slot is a hole
        if k == 0:
            self.lm.defer(tokens, torch.ones_like(tokens) if valid is None else valid, holes)
            self.drafts = tokens.new_zeros(tokens.shape[0], 0)
            self.behind, self.any_behind, self.all_behind = None, False, False
            return Proposal(self.drafts, None, [0] * len(limits))
        drafts, scores = [], []
        for _ in range(k):
            logits = self._scores(self.lm.forward(tokens, valid, last_only=True, holes=holes)[:, -1], drafts)
            self.forwards += 1
            if self.sampling is None:
                token = logits.argmax(dim=-1)
            else:  # the warpers run inside sample (no sort of the vocabulary on CUDA); verify applies them again
                scores.append(logits)
                token = sample(logits, seed=self.rng.getrandbits(62), **self.sampling)
            drafts.append(token)
            tokens, valid, holes = token[:, None].clamp(max=self.max_id), None, False
        self.drafts = torch.stack(drafts, dim=1)
        return Proposal(self.drafts, torch.stack(scores, dim=1) if scores else None, [min(k, m) for m in limits])

    def _first_tokens(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the step's first draft forward feeds: [last] per row, or [d_K, last] where a row accepted all K
        drafts of the step before (a hole in place of d_K for the others; `valid` None when no slot is a hole)."""
        if not self.any_behind:
            return last[:, None], None
        tokens = torch.stack([self.behind.clamp_min(0), last], dim=1)
        if self.all_behind:
            return tokens, None
        return tokens, torch.stack([self.behind >= 0, torch.ones_like(last, dtype=torch.bool)], dim=1)

    def _scores(self, logits: torch.Tensor, drafts: list[torch.Tensor]) -> torch.Tensor:
        """A draft forward's [B, Vd] logits -> the float32 scores a draft is chosen from: ids past the target's V
        dropped; processed (with each row's sequence and `drafts`, the drafts before) over the target's V ids, the
        ids past Vd at -inf (q = 0 there), since the processors were built for the target's vocabulary."""
        logits = logits[:, :self.vocab].float()
        if self.processors is None:
            return logits
        if logits.shape[1] < self.vocab:
            logits = torch.nn.functional.pad(logits, (0, self.vocab - logits.shape[1]), value=-math.inf)
        before = torch.stack(drafts, dim=1) if drafts else None
        return self.processors(logits[:, None], before, len(drafts))[:, 0]

    def accept(self, target: TargetStep) -> None:
        """Row b accepted n_b of its drafts: holes over the rest of this step's slots, which hold
        [last, d_1..d_{K'-1}]; d_K' is fed at the next step where all K' were accepted."""
        k = self.k_step
        if k == 0:  # no forward ran: nothing to trim
            return
        n_max = max(len(tokens) for tokens in target.accepted) - 1
        n_min = min(len(tokens) for tokens in target.accepted) - 1
        n = target.n.to(self.lm.device)
        self.lm.keep(n, k, n_max, n_min)
        self.behind = torch.where(n == k, self.drafts[:, -1].to(n.device).clamp(max=self.max_id), -1)
        self.any_behind = n_max == k
        self.all_behind = n_min == k

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the rows `rows` [B'] only (cache, mask, pending d_K)."""
        self.lm.select(rows)
        if self.behind is not None:
            self.behind = self.behind[rows.to(self.behind.device)]


def start_drafter(draft, call: DraftCall) -> Drafter | TreeDrafter:
    """The one drafter factory: the drafter of this call, prefilled with ``call.input_ids``.

    Parameters
    ----------
    draft : transformers.PreTrainedModel or DrafterSource
        A draft model: a :class:`DraftModel` (its own random.Random seeded from ``call.rng`` when sampling, its
        scores processed by ``call.processors``), or with ``draft_tree`` a :class:`.tree_drafters.TreeDraftModel`.
        Anything with ``start_drafter(call)`` (a :class:`PromptLookupDrafter`, a drafter of one's own): what that
        returns.
    call : DraftCall

    Returns
    -------
    Drafter or TreeDrafter
        A :class:`~.protocol.TreeDrafter` when ``call.settings.tree``.
    """
    if isinstance(draft, DrafterSource):
        return draft.start_drafter(call)
    if call.settings.tree:
        return start_tree_draft_model(draft, call)
    sampling = call.settings.sampling
    draft_rng = None if sampling is None else random.Random(call.rng.getrandbits(62))
    drafter = DraftModel(draft, call.input_ids.shape[0], call.max_k, call.vocab, sampling, draft_rng,
                         call.processors)
    drafter.prefill(call.input_ids[:, :-1], call.attention_mask[:, :-1])
    return drafter
