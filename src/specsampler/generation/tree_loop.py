"""A speculative step over a token tree: ``draft_tree=(3, 2, 1, 1)`` and ``prompt_lookup_num_candidates=m``.

:class:`TreeStep` is :class:`.loop.ChainStep` with a tree of candidates in place of a chain of drafts, and the same
:class:`~.protocol.Step` out, so :func:`.loop.run` commits rows (EOS, stopping criteria, budgets), streams and evicts
exactly as for chains:

1. the tree drafter (:class:`~.protocol.TreeDrafter`, :mod:`.tree_drafters`) proposes a tree per row, at most
   `limits[b]` levels deep for row b (its nodes of those levels);
2. the target scores [last, node_0..node_{N-1}] in one forward (:meth:`.kv_cache.CachedModel.forward_tree`), rows
   with fewer nodes feeding the rest as holes; logits processors run at every node with its own path
   (:meth:`.processors.PrefixProcessors.nodes`);
3. :func:`specsampler.verify_tree` accepts a path and draws one more token (point-mass candidates for top tokens and
   lookup tries, the draft's scores for i.i.d. candidates);
4. the target's cache keeps the accepted path (:func:`.trees.path_keep`); the drafter is handed the target's step
   (:class:`~.protocol.TargetStep` with the path) and keeps it in its own (:func:`.trees.accept_tree`).

A step where every row's point-mass tree is a chain (a trie of one continuation, a tree pruned to its top-1 chain)
runs the chain step's verification instead (:func:`.loop.verify_chain`: its forward and rule, the same for a chain).

Counts: a row's ``counts`` entry is its nodes verified (``GenerationStats.drafted``), its accepted depth is
``len(accepted) - 1`` (``GenerationStats.accepted``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .._tree import verify_tree
from .kv_cache import CachedModel, tree_ancestors
from .protocol import Proposal, Step, TargetStep, TreeDrafter, TreeProposal
from .trees import path_keep, tree_inputs

__all__ = ["TreeStep", "node_paths", "verify_nodes"]


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


@dataclass
class TreeStep:
    """The tree step of a call, built once from the settings (:func:`.loop.make_step`): propose a tree per row, score
    it with the target in one forward, verify it, keep the accepted path.

    Attributes
    ----------
    chain : ChainStep
        The call's chain step (:class:`.loop.ChainStep`, the same settings): it verifies the steps whose point-mass
        trees are all chains (its forward and rule, the same for a chain), and its options are this step's: the
        random stream, sampling, processors, marks, recorder, hidden states, and ``method`` ("traversal": Traversal
        Verification, a chain then by block verification, the same rule; else the token rule).
    """

    chain: object

    def __call__(self, lm: CachedModel, drafter: TreeDrafter, last: torch.Tensor, limits: list[int]) -> Step:
        """One step for the running rows: `last` [B'] int64 their last tokens, `limits[b]` the deepest path row b
        may accept (a draft-length schedule's K_b for a lookup trie). `watch` marks the same four points as a
        chain's.

        Returns
        -------
        Step
            ``counts``: nodes verified per row; ``accepted``: the accepted path's tokens, then the drawn token;
            ``raw`` / ``processed`` (for a recorder) gathered along the path, as a chain step's positions.
        """
        watch = self.chain.watch
        if watch is not None:
            watch.mark()
        prop = drafter.propose(last, limits)
        if watch is not None:
            watch.mark()
        if prop.scores is None and prop.depths == prop.counts:  # every row's nodes a chain: the chain's rule
            step, target = self.chain.verify(lm, Proposal(prop.tokens, None, prop.counts), last)
            nodes = torch.arange(prop.tokens.shape[1], device=step.n.device)
            drafter.accept(target._replace(path=torch.where(nodes < step.n[:, None], nodes, -1)))
            return dataclasses.replace(step, depths=prop.depths)
        step, target = verify_nodes(lm, prop, last, limits, self)
        drafter.accept(target)
        return step


def verify_nodes(lm: CachedModel, prop: TreeProposal, last: torch.Tensor, limits: list[int],
                 tree: TreeStep) -> tuple[Step, TargetStep]:
    """The rest of a :class:`TreeStep` once the trees are proposed: score [last, node_0..node_{N-1}] with the target,
    verify, keep in the target's cache the accepted path (the drafter's cache is the caller's: ``drafter.accept``).

    Returns
    -------
    Step
    TargetStep
        For the drafter: the path, the scores at the fed slots (and the hidden states if ``chain.hidden``).
    """
    chain = tree.chain
    recorder, processors, watch = chain.recorder, chain.processors, chain.watch
    n = prop.tokens.shape[1]
    counts = torch.tensor(prop.counts, device=lm.device)
    tokens, parents, valid = tree_inputs(last.to(lm.device), prop.tokens.to(lm.device), prop.parents.to(lm.device),
                                         None if min(prop.counts) == n else counts)
    logits = lm.forward_tree(tokens, parents, valid, hidden=chain.hidden).float()
    if watch is not None:
        watch.mark()
    raw = None if recorder is None else recorder.raw(logits, processed_in_place=processors is not None)
    if processors is not None:
        paths, depths = node_paths(tokens, parents, max(max(limits), 0))
        logits = processors.nodes(logits, paths, depths.tolist(), prop.counts)
    dscores = None if prop.scores is None else prop.scores.to(logits.device)
    res = verify_tree(logits, prop.tokens.to(logits.device), prop.parents.to(logits.device), dscores,
                      num_nodes=counts.to(logits.device), seed=chain.rng.getrandbits(62),
                      method="traversal" if chain.method == "traversal" else "token",
                      draft_sampling=prop.draft_sampling,
                      **(chain.sampling if chain.sampling is not None else {"temperature": 0.0}))
    n_host, tok_host = res.num_accepted.tolist(), res.tokens.tolist()  # the step's one synchronisation
    if watch is not None:
        watch.mark()
    accepted = [t[:k + 1] for t, k in zip(tok_host, n_host, strict=True)]
    drawn = res.tokens.gather(1, res.num_accepted[:, None].to(res.tokens.device))[:, 0]
    lm.keep_path(path_keep(res.path.to(lm.device), n + 1))
    target = TargetStep(res.num_accepted.to(lm.device), accepted, logits, lm.hidden, res.path)
    kept = None if recorder is None else target.slots().to(logits.device)
    step = Step(prop.counts, n + 1, target.n, accepted, drawn.to(lm.device),
                None if raw is None else _gather(raw, kept),
                _gather(logits, kept) if recorder is not None and recorder.scores else None, prop.depths)
    return step, target


def _gather(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, S, V] scores at [B, D + 1] slots -> [B, D + 1, V]."""
    return scores.gather(1, rows[:, :, None].expand(-1, -1, scores.shape[2]))
