"""A speculative step over a token tree: ``draft_tree=(3, 2, 1, 1)`` and ``prompt_lookup_num_candidates=m``.

:func:`tree_step` is :func:`.loop.step` with a tree of candidates in place of a chain of drafts, and the same
:class:`.loop.Step` out, so :func:`.loop.run` commits rows (EOS, stopping criteria, budgets), streams and evicts
exactly as for chains:

1. the tree drafter proposes a tree per row (:class:`TreeDraftModel`: the draft model grows it level by level with
   :func:`.trees.expand_tree`, pruned by ``draft_tree_min_prob`` / ``draft_tree_budget`` into rows of their own
   sizes; :class:`TreeLookupRun`: the continuations of up to m n-gram matches merged into a
   trie, :func:`.trees.lookup_candidates`), at most `limits[b]` levels deep for row b (its nodes of those levels);
2. the target scores [last, node_0..node_{N-1}] in one forward (:meth:`.kv_cache.CachedModel.forward_tree`), rows
   with fewer nodes feeding the rest as holes; logits processors run at every node with its own path
   (:meth:`.processors.PrefixProcessors.nodes`);
3. :func:`specsampler.verify_tree` accepts a path and draws one more token (point-mass candidates for top tokens and
   lookup tries, the draft's scores for i.i.d. candidates);
4. both caches keep the accepted path (:func:`.trees.path_keep`, :func:`.trees.accept_tree`).

A step where every row's point-mass tree is a chain (a trie of one continuation, a tree pruned to its top-1 chain)
runs the chain's step instead (:func:`.loop.verify_chain`: its forward and token verification, the same rule).

Counts: a row's ``counts`` entry is its nodes verified (``GenerationStats.drafted``), its accepted depth is
``len(accepted) - 1`` (``GenerationStats.accepted``).
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple

import torch

from .._tree import verify_tree
from .drafters import PromptLookupDrafter, Proposal
from .kv_cache import CachedModel, check_tree_attention, tree_ancestors
from .loop import Step, verify_chain
from .outputs import ScoreRecorder
from .processors import PrefixProcessors
from .trees import accept_tree, expand_tree, lookup_candidates, path_keep, tree_inputs

__all__ = ["TreeDraftModel", "TreeLookupRun", "TreeProposal", "start_tree_drafter", "tree_step"]


class TreeProposal(NamedTuple):
    """One step's candidate trees for the running rows.

    Attributes
    ----------
    tokens, parents : torch.Tensor
        [B, N] int64 node tokens and parents in [-1, i) (breadth-first for a draft model, trie order for lookup).
    scores : torch.Tensor or None
        [B, N + 1, V'] the draft scores the children were drawn from (i.i.d. candidates), else None (point masses).
    counts : list of int
        B: the nodes each row verifies (the rest are fed as holes).
    depths : list of int
        B: the deepest path among each row's verified nodes (what a draft-length schedule's K_b bounds).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    scores: torch.Tensor | None
    counts: list[int]
    depths: list[int]


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
                            [sum(1 for x in w if x) for w in widths])

    def accept(self, path: torch.Tensor, accepted: list[list[int]]) -> None:
        """Keep the accepted path in the draft's cache (its unfed leaf deferred to the next forward)."""
        accept_tree(self.lm, path, self.tree.tokens.to(path.device), self.tree.slots.to(path.device))

    def select_rows(self, rows: torch.Tensor) -> None:
        self.lm.select(rows)


class TreeLookupRun:
    """Prompt lookup with up to `m` candidates per row, merged into a trie (:func:`.trees.lookup_candidates`).

    Parameters
    ----------
    lookup : PromptLookupDrafter
        Its n-gram sizes and look-back.
    seqs : list of list of int
        B token lists: the prompts without their padding.
    k : int
        The most tokens per continuation (the trie's depth; a row's schedule can ask for less).
    m : int
        The most distinct continuations per row.
    fill : int
        The token of a row's padding nodes (never verified).
    """

    def __init__(self, lookup: PromptLookupDrafter, seqs: list[list[int]], k: int, m: int, fill: int):
        self.lookup, self.seqs, self.k, self.m, self.fill = lookup, seqs, k, m, fill
        self.forwards = 0

    def propose(self, last: torch.Tensor, limits: list[int]) -> TreeProposal:
        """Each row's trie of continuations, at most min(K, limits[b]) tokens deep."""
        rows = [self._trie(seq, min(self.k, limit)) for seq, limit in zip(self.seqs, limits, strict=True)]
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
        tree = lookup_candidates([seq], self.m, lk.max_ngram, depth, lk.min_ngram, lk.max_lookback, self.fill)
        n = int(tree.num_nodes[0])
        parents = tree.parents[0, :n].tolist()
        levels: list[int] = []
        for parent in parents:  # topological: a parent's level is known before its children's
            levels.append(1 + (levels[parent] if parent >= 0 else 0))
        return tree.tokens[0, :n].tolist(), parents, max(levels, default=0)

    def accept(self, path: torch.Tensor, accepted: list[list[int]]) -> None:
        """Append each row's new tokens to its token list."""
        for seq, tokens in zip(self.seqs, accepted, strict=True):
            seq += tokens

    def select_rows(self, rows: torch.Tensor) -> None:
        self.seqs = [self.seqs[i] for i in rows.tolist()]


def start_tree_drafter(draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings, vocab: int,
                       rng: random.Random, processors: PrefixProcessors | None = None, max_k: int | None = None):
    """The tree drafter of a call, prefilled with the [B, P] prompts: a :class:`TreeLookupRun` for a
    :class:`PromptLookupDrafter` (``settings.lookup_candidates`` continuations of up to `max_k` tokens, the schedule's
    most; default ``settings.num_draft_tokens``), else a :class:`TreeDraftModel` over ``settings.draft_tree`` (its
    4D-mask support checked first, by name)."""
    if isinstance(draft, PromptLookupDrafter):
        seqs = [[t for t, m in zip(r, mk, strict=True) if m]
                for r, mk in zip(input_ids.tolist(), attention_mask.tolist(), strict=True)]
        return TreeLookupRun(draft, seqs, max_k or settings.num_draft_tokens, settings.lookup_candidates,
                             settings.pad_token_id)
    check_tree_attention(draft)
    sampling = settings.sampling
    if sampling is None or settings.draft_tree_sampling == "top":
        _check_top_candidates(settings.draft_tree, vocab if processors is not None else min(vocab, _rows(draft)))
    draft_rng = None if sampling is None else random.Random(rng.getrandbits(62))
    drafter = TreeDraftModel(draft, input_ids.shape[0], settings.draft_tree, vocab, sampling,
                             settings.draft_tree_sampling, draft_rng, processors, settings.draft_tree_min_prob,
                             settings.draft_tree_budget)
    drafter.prefill(input_ids[:, :-1], attention_mask[:, :-1])
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


def node_paths(tokens: torch.Tensor, parents: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each fed slot's path below the root, for the logits processors.

    Parameters
    ----------
    tokens, parents : torch.Tensor
        [B, S] the fed slots [last, node_0..] and their parents (:func:`.trees.tree_inputs`).
    depth : int
        The deepest path's length (at least every slot's).

    Returns
    -------
    paths : torch.Tensor
        [B, S, depth] int64: slot j's path tokens from the root's first child down to j (0 past its depth).
    depths : torch.Tensor
        [B, S] int64: each slot's path length (0 for the root).
    """
    s = tokens.shape[1]
    anc = tree_ancestors(parents)[:, :, 1:]  # [B, S, S - 1] over the nodes: slot 0 is every slot's ancestor
    depths = anc.sum(dim=2)
    order = torch.where(anc, torch.arange(s - 1, device=anc.device), s - 1).sort(dim=2).values[..., :depth]
    nodes = torch.cat([tokens[:, 1:], tokens.new_zeros(tokens.shape[0], 1)], dim=1)  # index s - 1: a zero
    paths = nodes[:, None, :].expand(-1, s, -1).gather(2, order)
    if paths.shape[2] < depth:
        paths = torch.nn.functional.pad(paths, (0, depth - paths.shape[2]))
    return paths, depths


def tree_step(lm: CachedModel, drafter, last: torch.Tensor, limits: list[int], sampling: dict | None,
              rng: random.Random, processors: PrefixProcessors | None = None, watch=None, method: str = "token",
              recorder: ScoreRecorder | None = None) -> Step:
    """Propose a tree per row, score it with the target in one forward, verify it, keep the accepted path.

    The signature is :func:`.loop.step`'s (`method`: "traversal" verifies by Traversal Verification, a chain of
    point masses then by block verification, the same rule; anything else by the token rule; `watch` marks the same
    four points). `limits[b]` is the deepest path row b may accept (a draft-length schedule's K_b for a lookup trie).

    Returns
    -------
    Step
        ``counts``: nodes verified per row; ``accepted``: the accepted path's tokens, then the drawn token;
        ``raw`` / ``processed`` (for a recorder) gathered along the path, as a chain step's positions.
    """
    if watch is not None:
        watch.mark()
    prop = drafter.propose(last, limits)
    if watch is not None:
        watch.mark()
    if prop.scores is None and prop.depths == prop.counts:  # every row's nodes a chain: token verification
        return _chain_step(lm, drafter, prop, last, sampling, rng, processors, watch, recorder,
                           "block" if method == "traversal" else "token")
    n = prop.tokens.shape[1]
    counts = torch.tensor(prop.counts, device=lm.device)
    tokens, parents, valid = tree_inputs(last.to(lm.device), prop.tokens.to(lm.device), prop.parents.to(lm.device),
                                         None if min(prop.counts) == n else counts)
    logits = lm.forward_tree(tokens, parents, valid).float()
    if watch is not None:
        watch.mark()
    raw = None if recorder is None else recorder.raw(logits, processed_in_place=processors is not None)
    if processors is not None:
        paths, depths = node_paths(tokens, parents, max(max(limits), 0))
        logits = processors.nodes(logits, paths, depths.tolist(), prop.counts)
    dscores = None if prop.scores is None else prop.scores.to(logits.device)
    without = getattr(drafter, "candidates", "top") == "without_replacement"
    res = verify_tree(logits, prop.tokens.to(logits.device), prop.parents.to(logits.device), dscores,
                      num_nodes=counts.to(logits.device), seed=rng.getrandbits(62),
                      method="traversal" if method == "traversal" else "token",
                      draft_sampling="without_replacement" if without else "iid",
                      **(sampling if sampling is not None else {"temperature": 0.0}))
    n_host, tok_host = res.num_accepted.tolist(), res.tokens.tolist()  # the step's one synchronisation
    if watch is not None:
        watch.mark()
    accepted = [t[:k + 1] for t, k in zip(tok_host, n_host, strict=True)]
    drawn = res.tokens.gather(1, res.num_accepted[:, None].to(res.tokens.device))[:, 0]
    lm.keep_path(path_keep(res.path.to(lm.device), n + 1))
    drafter.accept(res.path, accepted)
    kept = None if recorder is None else _path_rows(res.path.to(logits.device))
    return Step(prop.counts, n + 1, res.num_accepted.to(lm.device), accepted, drawn.to(lm.device),
                None if raw is None else _gather(raw, kept),
                _gather(logits, kept) if recorder is not None and recorder.scores else None, prop.depths)


def _chain_step(lm: CachedModel, drafter, prop: TreeProposal, last: torch.Tensor, sampling: dict | None,
                rng: random.Random, processors: PrefixProcessors | None, watch, recorder: ScoreRecorder | None,
                method: str = "token") -> Step:
    """A step whose point-mass trees are all chains (row b's nodes 0..counts[b]-1, each the child of the one before:
    a lookup trie of one continuation, a draft tree pruned to its top-1 chain): the chain step's forward and token
    verification (:func:`.loop.verify_chain`, the same rule for a chain, without the tree's mask and walk); the
    drafter keeps the accepted nodes as the path they are."""
    step = verify_chain(lm, Proposal(prop.tokens, None, prop.counts), last, sampling, rng, processors, watch,
                        method, recorder)
    nodes = torch.arange(prop.tokens.shape[1], device=step.n.device)
    drafter.accept(torch.where(nodes < step.n[:, None], nodes, -1), step.accepted)
    return dataclasses.replace(step, depths=prop.depths)


def _path_rows(path: torch.Tensor) -> torch.Tensor:
    """[B, D] accepted node indices (-1 padded) -> [B, D + 1] the fed slots of the root and the path (0 past it)."""
    slots = torch.where(path >= 0, path + 1, 0)
    return torch.cat([torch.zeros_like(slots[:, :1]), slots], dim=1)


def _gather(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, S, V] scores at [B, D + 1] slots -> [B, D + 1, V]."""
    return scores.gather(1, rows[:, :, None].expand(-1, -1, scores.shape[2]))
