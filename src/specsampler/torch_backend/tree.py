"""Token-tree verification in torch (the rule of :func:`specsampler.verify_tree`'s ``method="token"``): the kernel's
oracle, and what every tree rule shares (the prepared inputs, the depths, the greedy walk, the outputs).

A row's tree has N nodes in topological order: node i holds token x_i and parent a_i in [-1, i) (-1: a child of the
root, the last committed token); siblings are tried in node order. Target row 0 is p at the root, row i + 1 p after
node i's path; draft row 0 is the distribution the root's children were drawn from, row i + 1 node i's children's.

The rule (SpecInfer's multi-step speculative sampling; Miao et al. 2023, arXiv 2305.09781): at the current node c
with residual r (p at c to start with), each child x of c in turn is accepted with probability min(1, r(x) / q(x)),
q the parent's draft distribution (the point mass at x with one-hot candidates, and wherever the draft gives x no
probability); on a rejection r <- norm(max(r - q, 0)) (kept as it was when that has at most RESIDUAL_EPS of mass:
rounding). An accepted child becomes the current node with r = its p; when every child of the current node was
rejected (or it has none), the next token is drawn from r. Exact when a node's children are i.i.d. draws from q or
point masses (then it is drawing y ~ p and following the child equal to y). A chain (a_i = i - 1) is token
verification, on the same random numbers. Greedy rows follow the first child equal to argmax p, then emit the argmax
(a call whose rows are all greedy walks the argmax alone, without softmaxes). Children drawn without replacement
(:func:`walk_without_replacement`): q is the draft's row without the earlier siblings' tokens, renormalised (Jeon et
al., arXiv 2402.14160).

Randomness: node i's acceptance uniform is u[i] (a node is tried at most once), the next token is drawn with u[N]
by the inverse CDF, or by the race argmax r / E with the test hook's noise E [B, V]; the same [B, N + 1] uniforms as
``sample.draw_uniforms``, in verify_tree's own stream of the seed (``constants.STREAM_TREE``). A node at or
past its row's num_nodes, or whose parent lies outside [-1, i), is never reached; a token outside [0, V) ends its
row's nodes there, exactly as a num_nodes of its index would (it and every later node of the row are never reached:
:func:`nodes_in_range`).

One pass over the nodes in order with [B, V] tensors (a node's children come after it, so the pass reaches them after
it; no host synchronisation but the output width when `max_depth` is not given).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..triton_kernels.constants import STREAM_TREE
from .common import GREEDY_BELOW, RESIDUAL_EPS, argmax, drafts_in_range, softmax
from .sample import draw, draw_uniforms
from .warp import Warp, warp_scores


def nodes_in_range(tokens: torch.Tensor, vocab: int, num_nodes: torch.Tensor | None) -> torch.Tensor:
    """[B] int64: each row's nodes up to its first token outside [0, `vocab`), and at most `num_nodes` (None: N).
    The kernel applies the same rule as it walks; no host synchronisation."""
    return drafts_in_range(tokens, vocab, num_nodes)


class TreeInputs(NamedTuple):
    """What both torch tree rules walk (:func:`prepare_tree`); [B, N+1, V] scores, [B, N] nodes, [B] rows."""

    target: torch.Tensor  # [B, N+1, V], warped on sampled rows
    draft: torch.Tensor | None  # [B, N+1, Vd], warped likewise; None: point masses
    u: torch.Tensor  # [B, N+1] uniforms: node i's test, then the draw
    greedy: torch.Tensor  # [B] bool
    temperature: float | torch.Tensor  # 1.0 on greedy rows
    best: torch.Tensor  # [B, N+1] argmax of the target
    depth: torch.Tensor  # [B, N] node depths (0: not in the tree)
    reachable: torch.Tensor  # [B, N] bool
    x: torch.Tensor  # [B, N] int64 tokens
    a: torch.Tensor  # [B, N] int64 parents
    rows: torch.Tensor  # [B] arange
    all_greedy: bool  # every row greedy (a float temperature below GREEDY_BELOW)


def prepare_tree(target, tokens, parents, draft, num_nodes, temperature, seed, uniforms, warp: Warp | None,
                 max_depth: int | None) -> TreeInputs:
    """verify_tree's inputs as the torch rules walk them: detached and warped scores, the uniforms of the tree's stream
    (`uniforms` [B, N] replacing the nodes' part), greedy rows, and the nodes in the tree (a token outside [0, V)
    ends its row's nodes, :func:`nodes_in_range`; nodes deeper than `max_depth` are never reached)."""
    batch, n_plus_1, vocab = target.shape
    device = target.device
    target = target.detach()
    draft = None if draft is None else draft.detach()
    u = draw_uniforms(seed, batch, n_plus_1, device, STREAM_TREE)
    if uniforms is not None:
        u = torch.cat([uniforms.float(), u[:, n_plus_1 - 1:]], dim=1)
    num_nodes = nodes_in_range(tokens, vocab, num_nodes)
    if warp is not None:  # (greedy rows come back unwarped)
        target = warp_scores(target, temperature, warp, host=False)
        draft = None if draft is None else warp_scores(draft, temperature, warp, host=False)
    greedy = torch.zeros(batch, dtype=torch.bool, device=device)
    all_greedy = not isinstance(temperature, torch.Tensor) and temperature < GREEDY_BELOW
    if isinstance(temperature, torch.Tensor):
        greedy = temperature < GREEDY_BELOW
        temperature = torch.where(greedy, 1.0, temperature)
    elif all_greedy:
        greedy[:], temperature = True, 1.0
    depth = tree_depths(parents, num_nodes)
    if max_depth is not None:  # nodes deeper than the output can hold are never reached
        depth = tree_depths(torch.where(depth > max_depth, -2, parents.to(torch.int64)), num_nodes)
    return TreeInputs(target, draft, u, greedy, temperature, argmax(target), depth, depth > 0,
                      tokens.to(torch.int64), parents.to(torch.int64), torch.arange(batch, device=device), all_greedy)


def tree_depths(parents: torch.Tensor, num_nodes: torch.Tensor | None) -> torch.Tensor:
    """[B, N] int64: each node's depth (1 for the root's children), 0 for a node no path reaches (past num_nodes, or
    a parent outside [-1, i), or below such a node)."""
    batch, n = parents.shape
    depth = torch.zeros(batch, n, dtype=torch.int64, device=parents.device)
    a = parents.to(torch.int64)
    for i in range(n):
        parent = a[:, i]
        inner = (parent >= 0) & (parent < i)
        above = depth.gather(1, parent.clamp(0, max(i - 1, 0))[:, None])[:, 0]
        d = torch.where(parent == -1, 1, torch.where(inner & (above > 0), above + 1, 0))
        if num_nodes is not None:
            d = torch.where(i < num_nodes, d, 0)
        depth[:, i] = d
    return depth


def verify_tree_token(target, tokens, parents, draft, num_nodes, temperature, seed, uniforms=None, noise=None,
                      warp: Warp | None = None, max_depth: int | None = None, *, without_replacement: bool = False):
    """Verify B token trees by the token rule; arguments validated by :func:`specsampler.verify_tree`.

    Parameters
    ----------
    target : torch.Tensor
        [B, N+1, V] logits.
    tokens, parents : torch.Tensor
        [B, N] int: the nodes' tokens and parents.
    draft : torch.Tensor or None
        [B, N+1, Vd] logits (row i + 1: node i's children's distribution); None: point-mass candidates.
    num_nodes : torch.Tensor or None
        [B] int64 in [0, N]; a token outside [0, V) ends its row's nodes there (:func:`nodes_in_range`).
    temperature : float or torch.Tensor
        A float or [B] float32; below 2**-126 greedy.
    seed : int or torch.Tensor
        Key of the uniforms (:func:`~.sample.draw_uniforms`, stream ``STREAM_TREE``).
    uniforms, noise : torch.Tensor or None
        Test hooks: [B, N] acceptance uniforms and [B, V] exponential noise.
    warp : Warp or None
        top-k / top-p / min-p for p and q alike.
    max_depth : int or None
        The output width D (nodes deeper than D are never reached); None: the deepest path of the trees (one host
        synchronisation on CUDA).
    without_replacement : bool
        Each node's children were drawn from its draft row one after another without the earlier siblings' tokens
        (:func:`walk_without_replacement`); nothing changes for point-mass candidates (`draft` None).

    Returns
    -------
    tokens : torch.Tensor
        [B, D+1] int64: the accepted path's tokens, the next token, then -1.
    num_accepted : torch.Tensor
        [B] int64: the accepted path's length.
    path : torch.Tensor
        [B, D] int64: the accepted nodes, -1 padded.
    """
    if without_replacement and draft is not None:
        return walk_tree(_token_without_replacement, target, tokens, parents, draft, num_nodes, temperature, seed,
                         uniforms, noise, warp, max_depth)
    batch, n_plus_1, vocab = target.shape
    n = n_plus_1 - 1
    target, draft, u, greedy, temperature, best, depth, reachable, x, a, rows, all_greedy = prepare_tree(
        target, tokens, parents, draft, num_nodes, temperature, seed, uniforms, warp, max_depth)
    if all_greedy:  # every row greedy: the argmax path, no probabilities
        current = walk_greedy(best, x, a, reachable)
        next_token = best[rows, current + 1]
    else:
        p = softmax(target, temperature, False, vocab, scrub=True)  # [B, N+1, V]
        q = None if draft is None else softmax(draft, temperature, False, vocab, scrub=True)
        current, residual, accepted = walk_iid(p, q, best, x, a, reachable, greedy, u[:, :n])
        mass = residual.sum(dim=1, keepdim=True)
        next_token = draw(torch.where(mass > 0, residual, 1.0), u[:, n], None if noise is None else noise.float())
        next_token = torch.where(greedy, best[rows, current + 1], next_token)
    if max_depth is None:
        max_depth = int(depth.max()) if depth.numel() else 0
    return outputs(tokens.to(torch.int64), parents.to(torch.int64), current, depth, next_token, max_depth)


def walk_iid(p, q, best, x, a, reachable, greedy, u):
    """One pass over the nodes: the current node [B] (-1: the root), the residual [B, V] to draw from, and the
    accepted flags [B, N]."""
    batch, n_plus_1, vocab = p.shape
    rows = torch.arange(batch, device=p.device)
    current = torch.full((batch,), -1, dtype=torch.int64, device=p.device)
    residual = p[:, 0].clone()
    accepted = torch.zeros(batch, n_plus_1 - 1, dtype=torch.bool, device=p.device)
    for i in range(n_plus_1 - 1):
        xs = x[:, i].clamp(0, vocab - 1)
        tried = reachable[:, i] & (a[:, i] == current) & (xs == x[:, i])
        parent_row = a[:, i].clamp(min=-1) + 1
        if q is None:
            q_row = torch.nn.functional.one_hot(xs, vocab).float()
        else:
            q_row = q[rows, parent_row.clamp(max=n_plus_1 - 1)]
            point = ~(q_row.gather(1, xs[:, None])[:, 0] > 0)  # the draft gives x nothing: the point mass at x
            q_row = torch.where(point[:, None], torch.nn.functional.one_hot(xs, vocab).float(), q_row)
        r_x = residual.gather(1, xs[:, None])[:, 0]
        q_x = q_row.gather(1, xs[:, None])[:, 0]
        take = torch.where(greedy, xs == best[rows, current + 1], u[:, i] * q_x < r_x) & tried
        rest = (residual - q_row).clamp_min_(0.0)
        total = rest.sum(dim=1, keepdim=True)
        rest = rest / torch.where(total > 0, total, 1.0)
        reject = tried & ~take & ~greedy & (total[:, 0] > RESIDUAL_EPS)
        residual = torch.where(reject[:, None], rest, residual)
        residual = torch.where(take[:, None], p[:, i + 1], residual)
        current = torch.where(take, i, current)
        accepted[:, i] = take
    return current, residual, accepted


def walk_greedy(best, x, a, reachable):
    """:func:`walk_iid` for greedy rows only: the current node [B] after following, from the root, the first child
    equal to the argmax at each node."""
    rows = torch.arange(x.shape[0], device=x.device)
    current = torch.full_like(rows, -1)
    for i in range(x.shape[1]):
        take = reachable[:, i] & (a[:, i] == current) & (x[:, i] == best[rows, current + 1])  # (best is in [0, V))
        current = torch.where(take, i, current)
    return current


def outputs(x, a, current, depth, next_token, max_depth):
    """tokens [B, D+1], num_accepted [B] and path [B, D] from the last accepted node of each row."""
    batch = x.shape[0]
    device = x.device
    rows = torch.arange(batch, device=device)
    node_depth = torch.zeros_like(current)
    if depth.shape[1]:  # (N = 0: no node, the root's token only)
        node_depth = torch.where(current >= 0, depth[rows, current.clamp(min=0)], 0)
    path = torch.full((batch, max_depth), -1, dtype=torch.int64, device=device)
    node = current
    for level in range(max_depth, 0, -1):  # from the last accepted node up through its ancestors
        here = (node_depth >= level) & (node >= 0)
        if max_depth:
            path[:, level - 1] = torch.where(here, node, path[:, level - 1])
        node = torch.where(here, a[rows, node.clamp(min=0)], node)
    tokens = torch.full((batch, max_depth + 1), -1, dtype=torch.int64, device=device)
    if max_depth:
        tokens[:, :max_depth] = torch.where(path >= 0, x.gather(1, path.clamp(min=0)), -1)
    tokens.scatter_(1, node_depth[:, None], next_token[:, None])
    return tokens, node_depth, path



def walk_tree(walk: Callable, target, tokens, parents, draft, num_nodes, temperature, seed, uniforms=None, noise=None,
              warp: Warp | None = None, max_depth: int | None = None):
    """A tree rule given by its walk over the sampled rows, the rest shared: the prepared inputs, greedy rows'
    argmax walk, the draw of the next token, the outputs. Arguments and results as :func:`verify_tree_token`'s.

    `walk(p, q, x, a, reachable, u, max_depth)` -> (the accepted node [B], -1 the root; the unnormalised
    distribution [B, V] to draw the next token from), from p [B, N+1, V], q [B, N+1, V] or None, the nodes' tokens,
    parents and reachability [B, N], the uniforms [B, N+1] and the output width."""
    batch, n_plus_1, vocab = target.shape
    n = n_plus_1 - 1
    target, draft, u, greedy, temperature, best, depth, reachable, x, a, rows, all_greedy = prepare_tree(
        target, tokens, parents, draft, num_nodes, temperature, seed, uniforms, warp, max_depth)
    if max_depth is None:
        max_depth = int(depth.max()) if depth.numel() else 0
    current = walk_greedy(best, x, a, reachable)
    if all_greedy:
        next_token = best[rows, current + 1]
    else:
        p = softmax(target, temperature, False, vocab, scrub=True)
        q = None if draft is None else softmax(draft, temperature, False, vocab, scrub=True)
        found, dist = walk(p, q, x, a, reachable, u, max_depth)
        total = dist.sum(dim=1, keepdim=True)
        next_token = draw(torch.where(total > 0, dist, 1.0), u[:, n], None if noise is None else noise.float())
        current = torch.where(greedy, current, found)
        next_token = torch.where(greedy, best[rows, current + 1], next_token)
    return outputs(x, a, current, depth, next_token, max_depth)


def walk_without_replacement(p, q, x, a, reachable, u):
    """The token rule (:func:`walk_iid`) for children drawn without replacement: child c of the current node is
    accepted with probability min(1, r(x_c) / Q_c(x_c)), Q_c the draft's row without the earlier siblings' tokens,
    renormalised; a rejection sets r <- norm(max(r - Q_c, 0)). Returns the accepted node [B] and the residual [B, V]."""
    batch, n_plus_1, vocab = p.shape
    rows = torch.arange(batch, device=p.device)
    current = torch.full((batch,), -1, dtype=torch.int64, device=p.device)
    residual = p[:, 0].clone()
    removed = torch.zeros(batch, vocab, dtype=torch.bool, device=p.device)
    for i in range(n_plus_1 - 1):
        xs = x[:, i].clamp(0, vocab - 1)
        tried = reachable[:, i] & (a[:, i] == current) & (xs == x[:, i])
        point = torch.nn.functional.one_hot(xs, vocab).float()
        if q is None:
            q_row = point
        else:
            q_row = torch.where(removed, 0.0, q[rows, (a[:, i] + 1).clamp(0, n_plus_1 - 1)])
            kept = q_row.sum(dim=1, keepdim=True)
            q_row = q_row / torch.where(kept > 0, kept, 1.0)
            q_row = torch.where(~(q_row.gather(1, xs[:, None]) > 0), point, q_row)
        r_x = residual.gather(1, xs[:, None])[:, 0]
        q_x = q_row.gather(1, xs[:, None])[:, 0]
        take = tried & (u[:, i] * q_x < r_x)
        rest = (residual - q_row).clamp_min_(0.0)
        total = rest.sum(dim=1, keepdim=True)
        rest = rest / torch.where(total > 0, total, 1.0)
        reject = tried & ~take
        residual = torch.where((reject & (total[:, 0] > RESIDUAL_EPS))[:, None], rest, residual)
        residual = torch.where(take[:, None], p[:, i + 1], residual)
        removed = (removed | (point.bool() & reject[:, None])) & ~take[:, None]
        current = torch.where(take, i, current)
    return current, residual


def _token_without_replacement(p, q, x, a, reachable, u, max_depth):
    """:func:`walk_without_replacement` as :func:`walk_tree` calls a walk (it needs no output width)."""
    return walk_without_replacement(p, q, x, a, reachable, u)
