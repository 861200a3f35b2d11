"""Tree drafters: what proposes a token tree per row each step (the :class:`~.protocol.TreeDrafter` protocol).

:class:`TreeDraftModel`: a draft model grows the tree level by level with :func:`.trees.expand_tree` (one forward per
depth; pruned by ``draft_tree_min_prob`` / ``draft_tree_budget`` into rows of their own sizes). :class:`TreeLookupRun`:
the continuations of up to m n-gram matches merged into a trie (:func:`.trees.lookup_candidates`). A row's tree is at
most ``limits[b]`` levels deep (its nodes of those levels). :func:`.drafters.start_drafter` starts them.
"""

from __future__ import annotations

import random

import torch

from .kv_cache import CachedModel, check_tree_attention
from .processors import PrefixProcessors
from .protocol import DraftCall, TargetStep, TreeProposal
from .trees import accept_tree, expand_tree, lookup_candidates

__all__ = ["TreeDraftModel", "TreeLookupRun", "start_tree_draft_model"]


class TreeDraftModel:
    """A draft model growing a token tree per row, one forward per depth (:func:`.trees.expand_tree`).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    batch : int
    branching : tuple of int
        Children per node at each depth.
    vocab : int
        The target's vocabulary size V.
    sampling : dict or None
        :func:`specsampler.sample`'s options; None: greedy (top tokens).
    candidates : {"top", "iid", "without_replacement"}
        Top tokens (point masses), i.i.d. draws or draws without replacement (both need `sampling`; greedy runs take
        the top tokens).
    rng : random.Random or None
    processors : PrefixProcessors, optional
    min_prob, budget : optional
        Pruning (:func:`.trees.expand_tree`): ``draft_tree_min_prob``, ``draft_tree_budget``.
    """

    wants_hidden = False

    def __init__(self, model, batch: int, branching: tuple[int, ...], vocab: int, sampling: dict | None,
                 candidates: str, rng: random.Random | None, processors: PrefixProcessors | None = None,
                 min_prob: float | None = None, budget: int | None = None):
        self.lm = CachedModel(model, batch)
        self.branching, self.vocab, self.sampling, self.rng = branching, vocab, sampling, rng
        self.candidates = candidates if sampling is not None else "top"
        self.processors, self.min_prob, self.budget = processors, min_prob, budget
        self.max_id = model.get_input_embeddings().weight.shape[0] - 1
        self.forwards = 0
        self.tree = None  # the last proposal (its tokens and draft slots, for accept)

    def prefill(self, prompt: torch.Tensor, mask: torch.Tensor) -> None:
        """Feed [B, P - 1] `prompt` (`mask` 0 for padding) in front of the first forward."""
        self.lm.defer(prompt.to(self.lm.device).clamp(max=self.max_id), mask)

    def propose(self, last: torch.Tensor, limits: list[int]) -> TreeProposal:
        """The tree for every row, no deeper than the deepest limit (at least 1: the draft feeds `last`); row b
        verifies the nodes of its first `limits[b]` levels."""
        branching = self.branching[:max(1, max(limits))]
        tree = expand_tree(self.lm, last, branching, vocab=self.vocab, sampling=self.sampling,
                           candidates=self.candidates, rng=self.rng, processors=self.processors,
                           min_prob=self.min_prob, budget=self.budget)
        self.forwards += tree.forwards
        self.tree = tree
        # breadth-first: a row's nodes of its first limits[b] levels are its first ones (verify_tree's num_nodes)
        widths = [w[:max(0, limit)] for w, limit in zip(tree.widths.tolist(), limits, strict=True)]
        return TreeProposal(tree.tokens, tree.parents, tree.scores, [sum(w) for w in widths],
                            [sum(1 for x in w if x) for w in widths],
                            "without_replacement" if self.candidates == "without_replacement" else "iid")

    def accept(self, target: TargetStep) -> None:
        """Keep the accepted path in the draft's cache (its unfed leaf deferred to the next forward)."""
        path = target.path
        accept_tree(self.lm, path, self.tree.tokens.to(path.device), self.tree.slots.to(path.device))

    def select_rows(self, rows: torch.Tensor) -> None:
        self.lm.select(rows)


class TreeLookupRun:
    """Prompt lookup with up to `m` candidates per row, merged into a trie (:func:`.trees.lookup_candidates`).

    Parameters
    ----------
    lookup : PromptLookupDrafter
        Its n-gram sizes and look-back (``max_ngram``, ``min_ngram``, ``max_lookback``).
    seqs : list of list of int
        B token lists: the prompts without their padding.
    k : int
        The most tokens per continuation (the trie's depth; a row's schedule can ask for less).
    m : int
        The most distinct continuations per row.
    fill : int
        The token of a row's padding nodes (never verified).

    Attributes
    ----------
    width : int
        The most continuations per row at the next proposal, at most `m` (a schedule may lower it: 1 proposes the
        first continuation only, a chain).
    firsts : list of list of int
        Each row's first continuation in the last proposal (the chain the trie contains; what the "cost" schedule
        weighs the other candidates against).
    """

    wants_hidden = False

    def __init__(self, lookup, seqs: list[list[int]], k: int, m: int, fill: int):
        self.lookup, self.seqs, self.k, self.m, self.fill = lookup, seqs, k, m, fill
        self.width = m
        self.firsts: list[list[int]] = [[] for _ in seqs]
        self.forwards = 0

    def propose(self, last: torch.Tensor, limits: list[int]) -> TreeProposal:
        """Each row's trie of continuations, at most min(K, limits[b]) tokens deep."""
        rows = [self._trie(seq, min(self.k, limit)) for seq, limit in zip(self.seqs, limits, strict=True)]
        self.firsts = [_first_chain(t, p) for t, p, _ in rows]
        n = max(len(t) for t, _, _ in rows)  # (0 where no row has any: verify_tree draws from the root's p)
        tokens = torch.tensor([t + [self.fill] * (n - len(t)) for t, _, _ in rows], dtype=torch.long)
        parents = torch.tensor([p + [-1] * (n - len(p)) for _, p, _ in rows], dtype=torch.long)
        return TreeProposal(tokens.view(len(rows), n), parents.view(len(rows), n), None,
                            [len(t) for t, _, _ in rows], [d for _, _, d in rows])

    def _trie(self, seq: list[int], depth: int) -> tuple[list[int], list[int], int]:
        """A row's trie (tokens, parents) and its depth."""
        if depth < 1:
            return [], [], 0
        lk = self.lookup
        m = min(self.width, self.m)
        tree = lookup_candidates([seq], m, lk.max_ngram, depth, lk.min_ngram, lk.max_lookback, self.fill)
        n = int(tree.num_nodes[0])
        parents = tree.parents[0, :n].tolist()
        levels: list[int] = []
        for parent in parents:  # topological: a parent's level is known before its children's
            levels.append(1 + (levels[parent] if parent >= 0 else 0))
        return tree.tokens[0, :n].tolist(), parents, max(levels, default=0)

    def accept(self, target: TargetStep) -> None:
        """Append each row's new tokens to its token list."""
        for seq, tokens in zip(self.seqs, target.accepted, strict=True):
            seq += tokens

    def select_rows(self, rows: torch.Tensor) -> None:
        self.seqs = [self.seqs[i] for i in rows.tolist()]
        self.firsts = [self.firsts[i] for i in rows.tolist()]


def _first_chain(tokens: list[int], parents: list[int]) -> list[int]:
    """A trie's first continuation (:func:`.trees.lookup_candidates` inserts it first: nodes 0, 1, .. each the
    child of the one before)."""
    n = 0
    while n < len(parents) and parents[n] == n - 1:
        n += 1
    return tokens[:n]


def start_tree_draft_model(model, call: DraftCall) -> TreeDraftModel:
    """A :class:`TreeDraftModel` over ``call.settings.draft_tree``, prefilled with the [B, P] prompts (its 4D-mask
    support checked first, by name; a "top" level wider than the vocabulary it chooses from refused, naming
    draft_tree)."""
    settings, processors = call.settings, call.processors
    check_tree_attention(model)
    sampling = settings.sampling
    if sampling is None or settings.draft_tree_sampling == "top":
        _check_top_candidates(settings.draft_tree,
                              call.vocab if processors is not None else min(call.vocab, _rows(model)))
    draft_rng = None if sampling is None else random.Random(call.rng.getrandbits(62))
    drafter = TreeDraftModel(model, call.input_ids.shape[0], settings.draft_tree, call.vocab, sampling,
                             settings.draft_tree_sampling, draft_rng, processors, settings.draft_tree_min_prob,
                             settings.draft_tree_budget)
    drafter.prefill(call.input_ids[:, :-1], call.attention_mask[:, :-1])
    return drafter


def _rows(model) -> int:
    """The rows of a model's output layer (its config's vocab_size without one)."""
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size


def _check_top_candidates(branching: tuple[int, ...], vocab: int) -> None:
    """A ValueError naming draft_tree when a level asks for more distinct top candidates per node than the `vocab`
    ids they are chosen from (V' = min(V, the draft's), or V with logits processors); i.i.d. draws may repeat."""
    for depth, c in enumerate(branching):
        if c > vocab:
            raise ValueError(f"draft_tree={branching} asks for {c} distinct top candidates per node at depth {depth}, "
                             f"but the draft chooses among {vocab} tokens: each level can be at most {vocab} wide")
