"""Growing a draft model's token tree: :func:`expand_tree`, one draft forward per depth over the whole frontier.

The draft model grows its tree level by level: ONE forward per depth over the whole frontier, each frontier node
seeing its own ancestors only (the levels before stay open in its cache, :mod:`.kv_cache`). Its open slots are
[last, then the nodes it fed]: without pruning node_0..node_{F-1} (F: the nodes above the deepest level), with it
the expanded nodes only; :attr:`DraftTree.slots` maps each node to its slot for :func:`.trees.accept_tree`. Pruning
(``min_prob``, ``budget``: :func:`expand_tree`) keeps verification exact: with point-mass candidates any
deterministic choice of nodes is exact; with i.i.d. candidates a node's number of children is fixed by its own path
probability before they are drawn, and all of them are kept. Rows then have their own node counts (breadth-first, so
a row's first nodes are its shallowest: ``verify_tree``'s ``num_nodes``).

Sampling follows the chain drafter (:class:`.drafters.DraftModel`): ids the draft cannot embed are fed as its last
id, its scores are cut to the target's V (a smaller draft vocabulary gives the rest q = 0), draws come from
:func:`specsampler.sample` with a seed from the caller's ``random.Random``, and the raw (processed, unwarped) scores
are returned for verification to warp again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .._api import sample
from .._validation import warp_options as _warp
from ..torch_backend import GREEDY_BELOW, warp_scores
from .kv_cache import CachedModel

__all__ = ["DraftTree", "expand_tree"]


class DraftTree(NamedTuple):
    """A drafted token tree per row (:func:`expand_tree`).

    Attributes
    ----------
    tokens : torch.Tensor
        [B, N] int64 node tokens, breadth-first (0 past a row's nodes).
    parents : torch.Tensor
        [B, N] int64 node parents in [-1, i) (-1: a child of the root, the last committed token; -1 past a row's
        nodes).
    scores : torch.Tensor or None
        [B, N + 1, V'] float32 (V' = min(Vd, V), or V with processors): row 0 the scores the root's children were
        drawn from, row i + 1 node i's children's (zeros for a node the draft never fed, which has none); None for
        point-mass (top-token) candidates. ``verify_tree``'s ``draft_logits``.
    slots : torch.Tensor
        [B, N] int64: the draft's open slot of each node (slot 0: the last committed token), -1 for a node it never
        fed (the deepest level; with pruning, every node not expanded). :func:`accept_tree` keeps the accepted ones.
    widths : torch.Tensor
        [B, D] int64: each row's nodes at each depth (the nodes of the first d levels are a row's first
        ``widths[b, :d].sum()``: ``verify_tree``'s ``num_nodes`` for a row limited to d levels).
    forwards : int
        The draft forwards it took (one per depth, fewer when pruning left nothing to expand).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    scores: torch.Tensor | None
    slots: torch.Tensor | None = None
    widths: torch.Tensor | None = None
    forwards: int = 0

    @property
    def num_nodes(self) -> torch.Tensor:
        """[B] int64 each row's nodes (N where the tree is not pruned)."""
        return self.widths.sum(dim=1)


def _check_branching(branching) -> tuple[int, ...]:
    branching = tuple(branching)
    if not branching or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in branching):
        raise ValueError(f"branching must be a non-empty sequence of integers >= 1, got {branching!r}")
    return branching


def _node_scores(logits: torch.Tensor, paths: torch.Tensor, vocab: int, processors) -> torch.Tensor:
    """A draft forward's [B, M, Vd] logits -> float32 scores to draw children from: ids past the target's V dropped;
    with `processors` (a :class:`.processors.PrefixProcessors`, or any callable of its signature), each frontier node
    processed with its own path ([B, M, d] `paths`) over the target's V ids, ids past Vd at -inf."""
    scores = logits[..., :vocab].float()
    if processors is None:
        return scores
    if scores.shape[-1] < vocab:
        scores = torch.nn.functional.pad(scores, (0, vocab - scores.shape[-1]), value=-math.inf)
    depth = paths.shape[2]
    for m in range(scores.shape[1]):
        before = paths[:, m] if depth else None
        scores[:, m] = processors(scores[:, m][:, None], before, depth)[:, 0]
    return scores


def _per_draw(sampling: dict, batch: int, reps: int) -> dict:
    """The sampling options for [B * reps] flattened draws (per-row [B] tensors repeated)."""
    return {k: v.repeat_interleave(reps) if isinstance(v, torch.Tensor) and v.dim() == 1 and v.shape[0] == batch
            else v for k, v in sampling.items()}


def _children(scores: torch.Tensor, c: int, candidates: str, sampling: dict | None,
              rng: random.Random | None) -> torch.Tensor:
    """[B, M, V'] scores -> [B, M, c] children per frontier node: the top c tokens (the argmax, lowest id on ties,
    for c = 1), c i.i.d. draws of :func:`specsampler.sample` (one call, one seed from `rng`), or c draws without
    replacement (:func:`_without_replacement`)."""
    batch, m, vocab = scores.shape
    if candidates == "top":
        return scores.argmax(dim=-1, keepdim=True) if c == 1 else scores.topk(c, dim=-1).indices
    if candidates == "without_replacement":
        return _without_replacement(scores, c, sampling, rng)
    flat = scores.repeat_interleave(c, dim=1).reshape(batch * m * c, vocab)
    draws = sample(flat, seed=rng.getrandbits(62), **_per_draw(sampling, batch, m * c))
    return draws.view(batch, m, c)


def _without_replacement(scores: torch.Tensor, c: int, sampling: dict, rng: random.Random) -> torch.Tensor:
    """[B, M, V'] scores -> [B, M, c] draws without replacement from the warped draft distribution, in the order of
    sequential draws (Gumbel-top-k: the c largest warped scores / T + Gumbel noise, one seed from `rng`). Ids the
    warpers remove come after the others, lowest id first (a choice fixed by the warped distribution alone, which
    ``verify_tree`` treats as a point mass); greedy rows (T below 2**-126) take the top c tokens."""
    batch, m, vocab = scores.shape
    options = _per_draw(sampling, batch, m)
    temperature = options.get("temperature", 1.0)
    flat = scores.float().reshape(batch * m, 1, vocab)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(scores.device, torch.float32)
        greedy = temperature < GREEDY_BELOW
        scale = torch.where(greedy, 1.0, temperature)[:, None]
    else:
        greedy = torch.full((batch * m,), temperature < GREEDY_BELOW, device=scores.device)
        scale = 1.0 if temperature < GREEDY_BELOW else float(temperature)
    warp = _warp(options.get("top_k"), options.get("top_p"), options.get("min_p"), temperature, batch * m,
                 scores.device)
    if warp is not None:
        flat = warp_scores(flat, temperature, warp, host=False)
    flat = flat[:, 0]
    generator = torch.Generator(device=scores.device)
    generator.manual_seed(rng.getrandbits(62))
    gumbel = -torch.empty_like(flat).exponential_(generator=generator).log()
    keys = torch.where(greedy[:, None], flat, flat / scale + gumbel)
    rank = torch.arange(vocab, device=scores.device, dtype=torch.float32) / vocab
    keys = torch.where(keys > float("-inf"), keys, -1e30 * (1.0 + rank))  # removed ids: lowest first
    return keys.topk(c, dim=-1).indices.view(batch, m, c)


def _compact(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] bool -> (index [B, W], valid [B, W]): each row's flagged columns in order, then padding (column 0); W
    the most any row flags (one host synchronisation)."""
    count = flags.sum(dim=1)
    width = int(count.max()) if flags.numel() else 0
    order = torch.sort((~flags).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=flags.device)[None, :] < count[:, None]
    return torch.where(valid, order, 0), valid


def _candidate_probs(scores: torch.Tensor, kids: torch.Tensor, temperature) -> torch.Tensor:
    """[B, M, V'] scores, [B, M, c] children -> [B, M, c] each child's probability under softmax(scores / T) (T a
    number or [B]; 0 reads as 1: greedy rows), 0 where undefined (a row of -inf)."""
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(scores.device, torch.float32)
        t = torch.where(t > 0, t, 1.0)[:, None, None]
    else:
        t = float(temperature) if temperature else 1.0
    probs = torch.softmax(scores / t, dim=-1).gather(2, kids)
    return torch.nan_to_num(probs, nan=0.0)


def expand_tree(draft: CachedModel, last: torch.Tensor, branching: Sequence[int], *, vocab: int | None = None,
                sampling: dict | None = None, candidates: str = "top", rng: random.Random | None = None,
                processors=None, min_prob: float | None = None, budget: int | None = None) -> DraftTree:
    """Draft a token tree per row with a draft model: one forward per depth over the whole frontier.

    Parameters
    ----------
    draft : CachedModel
        The draft and its cache (no tree open); a deferred prefill or leaf (:func:`accept_tree`) goes in front of
        its first forward. The tree's open slots [last, then the fed nodes] stay open: close them with
        :func:`accept_tree` after verification.
    last : torch.Tensor
        [B] int64 each row's last committed token.
    branching : sequence of int
        Children per node at each depth, root first: ``(3, 2, 1, 1)``.
    vocab : int, optional
        The target's vocabulary size V (draft scores past it dropped). None: the draft's.
    sampling : dict, optional
        :func:`specsampler.sample`'s options (temperature, top_k, top_p, min_p; numbers or [B] tensors) for
        ``candidates="iid"``.
    candidates : {"top", "iid", "without_replacement"}
        "top": each node's children are the draft's top tokens there (distinct; point masses for verification);
        "iid": i.i.d. draws from the draft's warped distribution there (needs `sampling` and `rng`);
        "without_replacement": draws without replacement from it, in draw order (Gumbel-top-k; verified with
        ``draft_sampling="without_replacement"``). An expanded node keeps all its draws, as with "iid".
    rng : random.Random, optional
        Draws one seed per depth ("iid").
    processors : PrefixProcessors, optional
        Applied to each frontier node's scores with its path as the drafts before it (as the chain drafter applies
        them), before children are chosen; the processed scores are what verify sees.
    min_prob : float, optional
        Confidence pruning (EAGLE-2's idea, kept exact): `branching` is then the largest tree. A node's path
        probability is the product, along its path, of the draft's probability of each token (softmax of its scores
        at the sampling temperature, 1 when greedy; before top-k / top-p / min-p). A node below `min_prob` is not
        expanded (not fed, no children); with "top" candidates it is not kept either (dropping a deterministic
        candidate keeps verification exact). With "iid" an expanded node keeps all its draws (their number is
        fixed before they are drawn, so they stay i.i.d.). The first-child chain from the root (the draft's top-1
        chain with "top") is always kept and expanded: the tree holds the chain of its depth. None: no pruning.
    budget : int, optional
        With "top" candidates: at most `budget` nodes per row (at least the depth). Level by level, the top-1 chain's
        node and then the other candidates by path probability (highest first) are kept while they fit, room being
        left for the chain's deeper nodes; with `min_prob` too, only candidates at or above it. A deterministic
        choice of point-mass candidates: exact. None: no cap.

    Returns
    -------
    DraftTree
        Without pruning N = sum over depths of the product of `branching` so far; with it, rows have their own node
        counts (``widths``; N the most). ``scores`` only for "iid".
    """
    branching = _check_expand(branching, candidates, sampling, rng, min_prob, budget)
    prune = min_prob is not None or budget is not None
    max_id = draft.model.get_input_embeddings().weight.shape[0] - 1
    vocab = max_id + 1 if vocab is None else vocab
    temperature = 1.0 if sampling is None else sampling.get("temperature", 1.0)
    front = _root_frontier(last.to(draft.device))
    count = torch.zeros(last.shape[0], dtype=torch.long, device=draft.device)  # each row's nodes so far
    rows, blocks, widths = [], [], []
    for depth, c in enumerate(branching):
        logits = draft.forward_tree(front.tokens.clamp(max=max_id), front.parents, front.real)
        scores = _node_scores(logits, front.paths, vocab, processors)
        rows.append(scores)
        kids = _children(scores, c, candidates, sampling, rng)  # [B, M, c]
        if not prune:  # every child kept and (above the deepest level) fed
            level = _full_level(front, kids, count)
        else:
            room = None if budget is None else budget - count - (len(branching) - depth - 1)
            probs = _candidate_probs(scores, kids, temperature)
            level = _pruned_level(front, kids, probs, count, candidates, min_prob, room)
        last_level = depth == len(branching) - 1
        if last_level:  # the leaves: never fed
            slots = torch.full_like(level.tokens, -1)
        else:
            front, slots = _next_frontier(front, level, c, count)
        blocks.append((level.tokens, level.parents, slots, level.valid))
        widths.append(level.width)
        count = count + level.width
        if last_level or front.tokens.shape[1] == 0:  # (pruning left nothing to expand)
            break
    return _assemble(blocks, rows, widths, len(branching), prune, candidates != "top")


def _check_expand(branching, candidates: str, sampling, rng, min_prob, budget) -> tuple[int, ...]:
    """:func:`expand_tree`'s argument checks; returns `branching` as a tuple."""
    branching = _check_branching(branching)
    if candidates not in ("top", "iid", "without_replacement"):
        raise ValueError(f"candidates must be 'top', 'iid' or 'without_replacement', got {candidates!r}")
    if candidates != "top" and (sampling is None or rng is None):
        raise ValueError(f"candidates={candidates!r} draws samples: pass sampling= (sample's options) and rng=")
    if min_prob is not None and not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob must be None or a number in [0, 1], got {min_prob!r}")
    if budget is not None and (candidates != "top" or budget < len(branching)):
        raise ValueError(f"budget caps a tree of top candidates at a number of nodes >= its depth "
                         f"({len(branching)}), got budget={budget!r} with candidates={candidates!r}")
    return branching


class _Frontier(NamedTuple):
    """The nodes one depth's draft forward feeds (:func:`expand_tree`); M the frontier's width.

    Attributes
    ----------
    tokens : torch.Tensor
        [B, M] int64 the fed tokens (the root: each row's last token).
    parents : torch.Tensor
        [B, M] int64 each one's parent's open slot (-1: none, for the root and padding).
    real : torch.Tensor or None
        [B, M] bool which are real nodes, not padding (None: all are).
    node : torch.Tensor
        [B, M] int64 each one's node index (-1: the root, or padding).
    slot : torch.Tensor
        [B, M] int64 the open slot each one is fed into.
    prob : torch.Tensor
        [B, M] float32 path probabilities (kept up to date when pruning only).
    chain : torch.Tensor
        [B, M] bool on the first-child chain from the root (kept up to date when pruning only).
    paths : torch.Tensor
        [B, M, d] int64 each one's path tokens below the root (d its depth).
    opened : int
        The draft's open slots once this frontier is fed: the next frontier's first slot.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    real: torch.Tensor | None
    node: torch.Tensor
    slot: torch.Tensor
    prob: torch.Tensor
    chain: torch.Tensor
    paths: torch.Tensor
    opened: int


def _root_frontier(last: torch.Tensor) -> _Frontier:
    """[B] int64 each row's last committed token -> the first forward's frontier: the root alone, at slot 0."""
    batch, dev = last.shape[0], last.device
    root = torch.full((batch, 1), -1, dtype=torch.long, device=dev)
    return _Frontier(last[:, None], root, None, root, torch.zeros(batch, 1, dtype=torch.long, device=dev),
                     torch.ones(batch, 1, device=dev), torch.ones(batch, 1, dtype=torch.bool, device=dev),
                     torch.empty(batch, 1, 0, dtype=torch.long, device=dev), 1)


class _Level(NamedTuple):
    """One depth's children and the block of nodes they add (:func:`_full_level`, :func:`_pruned_level`); K = M * c
    the children (c per frontier node, in frontier order), W the block's width.

    Attributes
    ----------
    kids : torch.Tensor
        [B, K] int64 the children's tokens.
    node : torch.Tensor
        [B, K] int64 each child's node index (meaningful for kept children only).
    grow : torch.Tensor or None
        [B, K] bool the children also expanded (None: all of them, no pruning).
    prob, chain : torch.Tensor or None
        [B, K] float32 path probabilities, [B, K] bool on the first-child chain (None: no pruning).
    tokens, parents : torch.Tensor
        [B, W] int64 the block's nodes: tokens and parent node indices (0 and -1 past a row's nodes).
    valid : torch.Tensor or None
        [B, W] bool which block columns are a row's nodes (None: all, no pruning).
    width : torch.Tensor
        [B] int64 each row's nodes in the block.
    """

    kids: torch.Tensor
    node: torch.Tensor
    grow: torch.Tensor | None
    prob: torch.Tensor | None
    chain: torch.Tensor | None
    tokens: torch.Tensor
    parents: torch.Tensor
    valid: torch.Tensor | None
    width: torch.Tensor


def _full_level(front: _Frontier, kids: torch.Tensor, count: torch.Tensor) -> _Level:
    """Without pruning: the [B, M, c] children of the frontier are all nodes, numbered on from each row's `count`
    [B] nodes so far."""
    batch, m, c = kids.shape
    flat = kids.reshape(batch, m * c)
    node = count[:, None] + torch.arange(m * c, device=count.device)
    width = torch.full((batch,), m * c, dtype=torch.long, device=count.device)
    return _Level(flat, node, None, None, None, flat, front.node.repeat_interleave(c, dim=1), None, width)


def _pruned_level(front: _Frontier, kids: torch.Tensor, probs: torch.Tensor, count: torch.Tensor, candidates: str,
                  min_prob, room) -> _Level:
    """With pruning: the [B, M, c] children of the frontier, [B, M, c] their probabilities given their parents
    (:func:`_candidate_probs`) -> the kept ones as a compacted block (:func:`_prune`'s rule; `room` [B] or None)."""
    batch, m, c = kids.shape
    flat = kids.reshape(batch, m * c)
    prob = (front.prob[:, :, None] * probs).reshape(batch, m * c)
    chain = (front.chain[:, :, None] & (torch.arange(c, device=count.device) == 0)).reshape(batch, m * c)
    real = None if front.real is None else front.real.repeat_interleave(c, dim=1)
    keep, grow = _prune(prob, chain, real, candidates, min_prob, room)
    node = count[:, None] + keep.long().cumsum(dim=1) - 1
    idx, valid = _compact(keep)
    tokens = torch.where(valid, flat.gather(1, idx), 0)
    parents = torch.where(valid, front.node.repeat_interleave(c, dim=1).gather(1, idx), -1)
    return _Level(flat, node, grow, prob, chain, tokens, parents, valid, valid.sum(dim=1))


def _prune(kid_prob, kid_chain, kid_real, candidates: str, min_prob, room) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruning rule of one level (see :func:`expand_tree`): (keep, grow) [B, M] bool, the children kept as nodes
    and those also expanded, from their path probabilities `kid_prob` [B, M], whether each is on the first-child chain
    `kid_chain` [B, M], whether its parent is a real node `kid_real` [B, M] (None: all are) and, with a budget, the
    nodes each row may still add at this level `room` [B] (None: no cap).

    A child on the chain or at `min_prob` and above is grown; with "top" candidates the others are dropped (a
    deterministic choice of point masses), with "iid" they stay as leaves (the draws of a node are all kept). The
    budget keeps the chain's node first, then the others by path probability."""
    sure = kid_chain | (kid_prob >= (min_prob or 0.0))
    keep = torch.ones_like(sure) if kid_real is None else kid_real
    keep = keep & sure if candidates == "top" else keep
    if room is not None:
        key = torch.where(kid_chain, 2.0, torch.where(keep, kid_prob, -1.0))
        order = key.argsort(dim=1, descending=True, stable=True)
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, positions)
        keep = keep & (rank < room[:, None])
    return keep, keep & sure


def _next_frontier(front: _Frontier, level: _Level, c: int, count: torch.Tensor) -> tuple[_Frontier, torch.Tensor]:
    """The next forward's frontier: the level's grown children (all, without pruning), fed into the slots after
    `front`'s; and the block's [B, W] int64 slots (-1 for a node not fed). `count` [B]: the nodes before the block."""
    batch, dev = count.shape[0], count.device
    parent_slots = front.slot.repeat_interleave(c, dim=1)
    paths = torch.cat([front.paths.repeat_interleave(c, dim=1), level.kids[..., None]], dim=2)
    if level.grow is None:  # every child fed, in order
        tokens, parents, real, node, prob, chain = level.kids, parent_slots, None, level.node, front.prob, front.chain
        slots = front.opened + torch.arange(tokens.shape[1], device=dev).expand(batch, -1)
    else:
        idx, real = _compact(level.grow)
        tokens = level.kids.gather(1, idx)
        parents = torch.where(real, parent_slots.gather(1, idx), -1)
        node = torch.where(real, level.node.gather(1, idx), -1)
        prob, chain = level.prob.gather(1, idx), level.chain.gather(1, idx) & real
        paths = paths.gather(1, idx[..., None].expand(-1, -1, paths.shape[2]))
        slots = torch.full_like(level.tokens, -1)
        spare = slots.shape[1]  # a column past the block for the padding, dropped
        at = torch.where(real, node - count[:, None], spare)
        slots = torch.cat([slots, slots[:, :1]], dim=1).scatter_(
            1, at, front.opened + torch.arange(idx.shape[1], device=dev).expand(batch, -1))[:, :spare]
    slot = front.opened + torch.arange(tokens.shape[1], device=dev).expand(batch, -1)
    return _Frontier(tokens, parents, real, node, slot, prob, chain, paths, front.opened + tokens.shape[1]), slots


def _assemble(blocks: list, rows: list, widths: list, depth: int, prune: bool, iid: bool) -> DraftTree:
    """The levels' blocks (tokens, parents, slots, valid: [B, W_d] each), the forwards' [B, M_d, V'] scores and the
    [B] widths -> the DraftTree of `depth` levels (levels never reached: width 0); with pruning, each row's nodes
    compacted to its first columns."""
    widths = widths + [torch.zeros_like(widths[0])] * (depth - len(widths))
    tokens, parents, slots = (torch.cat([b[k] for b in blocks], dim=1) for k in range(3))
    if prune:  # each row's nodes in breadth-first order, first; -1 (0 for tokens) past them
        idx, valid = _compact(torch.cat([b[3] for b in blocks], dim=1))
        tokens = torch.where(valid, tokens.gather(1, idx), 0)
        parents, slots = (torch.where(valid, x.gather(1, idx), -1) for x in (parents, slots))
    scores = _node_rows(torch.cat(rows, dim=1), slots) if iid else None
    return DraftTree(tokens, parents, scores, slots, torch.stack(widths, dim=1), len(rows))


def _node_rows(fed: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """[B, S, V'] the fed slots' scores [last, fed nodes..], [B, N] each node's slot (-1: never fed) -> the
    [B, N + 1, V'] draft rows: the root's, then each node's (zeros where it was never fed)."""
    table = torch.cat([fed, fed.new_zeros(fed.shape[0], 1, fed.shape[2])], dim=1)
    at = torch.cat([torch.zeros_like(slots[:, :1]), torch.where(slots >= 0, slots, fed.shape[1])], dim=1)
    return table.gather(1, at[:, :, None].expand(-1, -1, fed.shape[2]))
