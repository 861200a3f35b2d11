"""Token trees for speculative generation: drafting them, feeding them, keeping the verified path.

A step with a tree instead of a chain of drafts (``draft_tree=(3, 2, 1, 1)``: 3 children at the root, 2 under each
of those, then 1 and 1: 3 + 6 + 6 + 6 = 21 nodes, depth 4), for B rows at once:

1. the drafter proposes a tree per row: ``tree_tokens`` [B, N] and ``tree_parents`` [B, N] (parent in [-1, i): the
   nodes in breadth-first, hence topological, order), with the draft scores the children were drawn from when they
   are i.i.d. samples (:func:`expand_tree`, a draft model), or point masses (the draft's top tokens; n-gram matches
   merged into a trie, :func:`lookup_candidates`);
2. the target scores [last, node_0..node_{N-1}] in ONE forward (:meth:`.kv_cache.CachedModel.forward_tree` with
   :func:`tree_inputs`): row 0 is the root's scores, row i + 1 the scores after node i's path, as
   :func:`specsampler.verify_tree` takes them;
3. :func:`specsampler.verify_tree` returns the accepted path (node indices) and one more token;
4. both caches keep the accepted path's slots only (:func:`path_keep` -> :meth:`.kv_cache.CachedModel.keep_path`);
   the draft, which never fed the deepest level (as the chain drafter never feeds its last draft), is handed the
   accepted leaf to feed in front of its next forward (:func:`accept_tree`).

The draft model grows its tree level by level, one forward per depth (:func:`.tree_expand.expand_tree`, with its
pruning; re-exported here with :class:`.tree_expand.DraftTree`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .kv_cache import CachedModel
from .tree_expand import DraftTree, expand_tree

__all__ = ["DraftTree", "LookupTree", "accept_tree", "expand_tree", "lookup_candidates", "path_keep",
           "tree_inputs", "tree_size"]


class LookupTree(NamedTuple):
    """Prompt-lookup candidates merged into a trie per row (:func:`lookup_candidates`).

    Attributes
    ----------
    tokens : torch.Tensor
        [B, N] int64 node tokens (N the largest trie; `fill` past a row's nodes).
    parents : torch.Tensor
        [B, N] int64 node parents in [-1, i) (-1 past a row's nodes).
    num_nodes : torch.Tensor
        [B] int64 each row's nodes: ``verify_tree``'s ``num_nodes``; the target feeds the rest as holes.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    num_nodes: torch.Tensor


def tree_size(branching: Sequence[int]) -> tuple[int, int]:
    """(N, F): the nodes of a tree with `branching` children per node at each depth, and those above its deepest
    level (the draft feeds them; F = N - the leaves)."""
    widths = [math.prod(branching[:d + 1]) for d in range(len(branching))]
    return sum(widths), sum(widths[:-1])


def tree_inputs(last: torch.Tensor, tree_tokens: torch.Tensor, tree_parents: torch.Tensor,
                num_nodes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What the target feeds to score a tree in one forward: [last, node_0..node_{N-1}].

    Parameters
    ----------
    last : torch.Tensor
        [B] int64 each row's last committed token (in no cache yet).
    tree_tokens, tree_parents : torch.Tensor
        [B, N] int64, parents in [-1, i).
    num_nodes : torch.Tensor, optional
        [B] the nodes each row really has; the rest are fed as holes. None: all N.

    Returns
    -------
    tokens, parents : torch.Tensor
        [B, N + 1] int64 for :meth:`.kv_cache.CachedModel.forward_tree`: parents -1 for last, a_i + 1 for node i.
    valid : torch.Tensor or None
        [B, N + 1] bool (None without `num_nodes`).
    """
    tokens = torch.cat([last[:, None].to(tree_tokens.device), tree_tokens.long()], dim=1)
    root = torch.full((tree_parents.shape[0], 1), -1, dtype=torch.long, device=tree_parents.device)  # (N may be 0)
    parents = torch.cat([root, tree_parents.long() + 1], dim=1)
    if num_nodes is None:
        return tokens, parents, None
    n = tree_tokens.shape[1]
    valid = torch.arange(n + 1, device=tokens.device)[None, :] <= num_nodes.to(tokens.device)[:, None]
    return tokens, parents, valid


def path_keep(path: torch.Tensor, width: int) -> torch.Tensor:
    """The fed slots [last, node_0..] to keep after verification: last and the accepted path's nodes.

    Parameters
    ----------
    path : torch.Tensor
        [B, D] int64 accepted node indices, -1 padded (``verify_tree(...).path``).
    width : int
        The open slots: N + 1 for the target; F + 1 for the draft (:func:`tree_size`), whose deepest level was never
        fed (nodes past it are left out).

    Returns
    -------
    torch.Tensor
        [B, width] bool for :meth:`.kv_cache.CachedModel.keep_path`.
    """
    keep = torch.zeros(path.shape[0], width + 1, dtype=torch.bool, device=path.device)
    slot = torch.where((path >= 0) & (path + 1 < width), path + 1, width)  # width: a spare column, dropped
    keep.scatter_(1, slot, True)
    keep[:, 0] = True
    return keep[:, :width]


def accept_tree(draft: CachedModel, path: torch.Tensor, tree_tokens: torch.Tensor, slots) -> torch.Tensor:
    """After verification, trim the draft's cache to the accepted path, and defer the accepted leaf it never fed.

    Parameters
    ----------
    draft : CachedModel
        The draft, with the tree of :func:`expand_tree` open ([last, then the nodes it fed]).
    path : torch.Tensor
        [B, D] int64 accepted node indices, -1 padded.
    tree_tokens : torch.Tensor
        [B, N] int64.
    slots : torch.Tensor or int
        [B, N] the draft's open slot of each node, -1 where never fed (:attr:`DraftTree.slots`); or F, the nodes it
        fed, for an unpruned tree (node i at slot i + 1 when i < F, :func:`tree_size`).

    Returns
    -------
    torch.Tensor
        [B] int64: the accepted path's last node where the draft never fed it, else -1. It is deferred (a hole for
        the other rows) and fed in front of the draft's next forward, as the chain drafter feeds d_K.
    """
    width = draft.open[0].shape[1] if draft.open is not None else 1
    path = path.to(tree_tokens.device)
    if path.shape[1] == 0:  # (no row can accept a node: D = 0)
        path = path.new_full((path.shape[0], 1), -1)
    if isinstance(slots, int):
        on = torch.where((path >= 0) & (path < slots), path + 1, -1)
    else:
        on = torch.where(path >= 0, slots.to(path.device).gather(1, path.clamp_min(0)), -1)
    keep = torch.zeros(path.shape[0], width + 1, dtype=torch.bool, device=path.device)
    keep.scatter_(1, torch.where(on >= 0, on, width), True)  # width: a spare column, dropped
    keep[:, 0] = True
    draft.keep_path(keep[:, :width].to(draft.device))
    n = (path >= 0).sum(dim=1)
    last = (n - 1).clamp_min(0)[:, None]
    end = path.gather(1, last)[:, 0]
    leaf = (n > 0) & (on.gather(1, last)[:, 0] < 0)
    behind = torch.where(leaf, tree_tokens.gather(1, end.clamp_min(0)[:, None])[:, 0], -1)
    if bool(leaf.any()):
        max_id = draft.model.get_input_embeddings().weight.shape[0] - 1
        draft.defer(behind.clamp(0, max_id)[:, None].to(draft.device), leaf[:, None].to(draft.device))
    return behind


def _continuations(seq: list[int], m: int, max_ngram: int, min_ngram: int, k: int, start: int) -> list[list[int]]:
    """Up to `m` distinct continuations (each not a prefix of one found before) of the row's tail n-gram, longest
    n first and latest occurrence first (:class:`.drafters.PromptLookupDrafter`'s order), each up to `k` tokens."""
    found: list[list[int]] = []
    for n in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
        tail = seq[-n:]
        for i in range(len(seq) - n - 1, start - 1, -1):
            if seq[i:i + n] != tail:
                continue
            cont = seq[i + n:i + n + k]
            if not any(f[:len(cont)] == cont for f in found):
                found.append(cont)
                if len(found) == m:
                    return found
    return found


def _trie(conts: list[list[int]]) -> tuple[list[int], list[int]]:
    """Merge token lists into a trie: (tokens, parents), nodes in insertion order (topological), shared prefixes
    one node; siblings in the order their lists came."""
    index: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    for cont in conts:
        parent = -1
        for tok in cont:
            if (parent, tok) not in index:
                index[parent, tok] = len(tokens)
                tokens.append(tok)
                parents.append(parent)
            parent = index[parent, tok]
    return tokens, parents


def lookup_candidates(seqs: Sequence[Sequence[int]], num_candidates: int, max_ngram: int = 3, num_tokens: int = 4,
                      min_ngram: int = 1, max_lookback: int | None = None, fill: int = 0,
                      device: torch.device | str | None = None) -> LookupTree:
    """Prompt-lookup candidates as a tree: the continuations of up to `num_candidates` n-gram matches per row,
    merged into a trie (one-hot candidates: verification accepts a node with probability p(x), exact as ever).

    Parameters
    ----------
    seqs : sequence of sequence of int
        B rows of committed tokens, no padding, each ending with its last token.
    num_candidates : int
        m, the most distinct continuations per row.
    max_ngram, min_ngram : int
        The tail n-gram sizes tried, longest first (within one size, the latest occurrence first).
    num_tokens : int
        The most tokens per continuation (the trie's depth).
    max_lookback : int, optional
        Search only the last `max_lookback` tokens of a row.
    fill : int
        The token past a row's nodes.
    device : optional
        Where the tensors go (default: the CPU).

    Returns
    -------
    LookupTree
    """
    if num_candidates < 1 or num_tokens < 1 or not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"need num_candidates >= 1, num_tokens >= 1 and 1 <= min_ngram <= max_ngram, got "
                         f"{num_candidates}, {num_tokens}, {min_ngram}, {max_ngram}")
    tries = []
    for seq in seqs:
        seq = list(seq)
        start = 0 if max_lookback is None else max(0, len(seq) - max_lookback)
        tries.append(_trie(_continuations(seq, num_candidates, max_ngram, min_ngram, num_tokens, start)))
    n = max((len(t) for t, _ in tries), default=0)
    tokens = torch.tensor([t + [fill] * (n - len(t)) for t, _ in tries], dtype=torch.long).view(len(tries), n)
    parents = torch.tensor([p + [-1] * (n - len(p)) for _, p in tries], dtype=torch.long).view(len(tries), n)
    num = torch.tensor([len(t) for t, _ in tries], dtype=torch.long)
    return LookupTree(tokens.to(device), parents.to(device), num.to(device))
