"""Traversal Verification of token trees, and trees drawn without replacement, in torch.

Conventions as in ``tree``: node i holds token x_i and parent a_i in [-1, i); p_v is the target's warped
distribution after node v's path (v = -1 the root), q_v the draft's that v's children were drawn from.

Traversal Verification (Weng, Hu, Chen, Liu, Mei, Qiu, Tian, Shi, "Traversal Verification for Speculative Tree
Decoding", NeurIPS 2025, arXiv 2505.12398) decides from the leaves up, on sequence-level weights. Every node v keeps a
weight alpha_v and a next-token distribution P_v (alpha = 1 and P = p_v to start with; the root's weight is 1). The
nodes are tested in post-order, children in node order: a node is tested once all its children have been rejected.

- Entering child c of v (when the walk first reaches c's subtree): alpha_c = min(1, alpha_v P_v(x_c) / Q_c(x_c)),
  with v's current alpha_v and P_v, Q_c the distribution c was drawn from (below).
- Testing node c (a leaf of what is left): with uniform u[c], accept c if u[c] < alpha_c: the path root..c is
  accepted and the next token is drawn from P_c. Otherwise c is deleted and its parent v updated:
  r = sum max(alpha_v P_v - Q_c, 0), alpha_v <- r / (r + 1 - alpha_v) (1 where that is 0 / 0),
  P_v <- norm(max(alpha_v P_v - Q_c, 0)) (kept as it was when r <= RESIDUAL_EPS: rounding). Then the walk enters c's
  next sibling (and its first children down to a leaf) or, without one, tests v next.
- The root is never rejected (its weight stays 1): when its last child is deleted the next token comes from P_root.

Exactness (our proof; the paper's is by the same induction). Claim: for a node v with weight alpha and distribution
P whose children are drawn independently of everything the walk decides about earlier siblings given their tokens,
the walk over v's subtree ends with v or a node below it accepted and emits y_1 y_2 ... after v with probability
alpha P(y_1) p(y_2 ... | v y_1). By induction on the subtree's size. A leaf: accepted with probability alpha, then
y_1 ~ P. Otherwise let c be v's first child, x_c ~ Q. By induction (c's subtree is smaller), c's subtree emits
(x_c = y_1, then the rest) with probability Q(y_1) min(1, alpha P(y_1) / Q(y_1)) p(... | v y_1) = min(alpha P,
Q)(y_1) p(... | v y_1); c is deleted with probability 1 - sum min(alpha P, Q) = r + 1 - alpha, and whatever its token
was, the rest of v's subtree (the later siblings, then v) is the same problem with weight alpha' = r / (r + 1 - alpha)
and P' = max(alpha P - Q, 0) / r, so by induction emits y with probability alpha' P'(y_1) p(...). The sum:
min(alpha P, Q)(y_1) + max(alpha P - Q, 0)(y_1) = alpha P(y_1). At the root alpha = 1 and P = p: the emitted tokens
follow the target exactly. The later siblings may depend on the earlier siblings' tokens (not on the walk's
decisions) as long as Q_c is c's distribution given them; c's subtree's shape may depend on its path (not on the
draws below it).

- Chains: the post-order tests the deepest node first, and node i's weight when tested is Sun et al.'s h_{i+1} (block
  verification, ``block``; w_{i+1} for the last node): traversal is block verification, computed with the same
  float32 operations on the same uniforms (node i's u[i] is block's eta_{i+1}, u[N] draws the next token), so the
  tokens are equal.
- Point-mass candidates (``draft_logits=None``, such as the draft's top tokens): each node's Q_c is the point mass at
  x_c, where x_c is a function of its path and its rank (not of any random draw), so c is a draw from Q_c that does
  not depend on the walk; the claim holds as is, and traversal runs on them too (no fallback to the token rule is
  needed). A node whose draft row gives x_c no probability is treated the same way (the convention of the token
  rule and of block verification); with candidates drawn without replacement this covers the ids that fill a node's
  slots once the warped draft has no mass left (chosen from the draft row alone, lowest id first).
- Without replacement: the children of v are drawn one after another from q_v with the earlier siblings' tokens
  removed (Gumbel-top-k gives this order); Q_c is then q_v without the earlier siblings' tokens, renormalised, which
  depends on the earlier siblings' tokens only: the claim covers it (Jeon et al., arXiv 2402.14160, for the token
  rule; the token rule with it is ``tree.walk_without_replacement``).
- Ragged rows, `max_depth`, bad parents: a node that cannot be reached (``tree.tree_depths`` = 0) is not in the
  tree; the tree that remains is a tree of the same kind, its shape fixed before the draws. An id outside [0, V) ends
  its row's nodes there, as a num_nodes of its index would (``tree.nodes_in_range``, the token rule's convention
  too).
- Warpers: p and q are both warped (the target to be followed is the warped p; the candidates were drawn from the warped
  q). A row without mass draws the next token uniformly, as the other rules. Greedy rows follow the token rule's argmax
  walk (traversal's limit at T -> 0 is the same path: the first child on the argmax path, as deep as it goes).

Randomness: node i is tested with u[i] (at most once), the next token drawn with u[N] by the inverse CDF of the
unnormalised P (the race with the test hook's noise), as ``tree``. One loop of N steps over [B, V] rows, each
step testing one node per row and entering the next leaf (a loop over the depth with [B] gathers); no host
synchronisation beyond the output width when `max_depth` is not given.
"""

from __future__ import annotations

import functools

import torch

from .common import RESIDUAL_EPS
from .tree import walk_tree
from .warp import Warp


def verify_traversal(target, tokens, parents, draft, num_nodes, temperature, seed, uniforms=None, noise=None,
                     warp: Warp | None = None, max_depth: int | None = None, *, without_replacement: bool = False):
    """Verify B token trees by Traversal Verification; arguments and results as ``tree.verify_tree_token``'s
    (`without_replacement`: each node's Q_c is its parent's draft row without the earlier siblings' tokens)."""
    return walk_tree(functools.partial(_traverse, without_replacement), target, tokens, parents, draft, num_nodes,
                     temperature, seed, uniforms, noise, warp, max_depth)


def _traverse(without_replacement, p, q, x, a, reachable, u, max_depth):
    """The walk of :func:`~.tree.walk_tree`: the accepted node [B] and the distribution [B, V] to draw from."""
    return _Traversal(p, q, x, a, reachable, without_replacement).run(u, max_depth)


def _links(a: torch.Tensor, reachable: torch.Tensor):
    """first_child [B, N+1] (column v + 1 for node v, 0 for the root) and next_sibling [B, N]: node indices among the
    reachable nodes, -1 where there is none."""
    batch, n = a.shape
    idx = torch.arange(n, device=a.device)
    owners = torch.arange(-1, n, device=a.device)
    big = torch.full((), n, dtype=torch.int64, device=a.device)
    child = (a[:, None, :] == owners[None, :, None]) & reachable[:, None, :]  # [B, N+1, N]
    first = torch.where(child, idx, big).amin(dim=2) if n else torch.full((batch, 1), n, device=a.device)
    later = (a[:, None, :] == a[:, :, None]) & reachable[:, None, :] & (idx[None, None, :] > idx[None, :, None])
    nxt = torch.where(later, idx, big).amin(dim=2) if n else torch.empty(batch, 0, dtype=torch.int64,
                                                                           device=a.device)
    return torch.where(first < n, first, -1), torch.where(nxt < n, nxt, -1)


class _Traversal:
    """The walk's state for B rows: weights alpha [B, N+1], unnormalised distributions R [B, N+1, V] with their masses
    m [B, N+1] (P_v = R_v / m_v; a fresh node has R = p and m = 1, so that a chain computes what block verification
    does), and, without replacement, each node's removed ids [B, N+1, V] and the draft mass left [B, N+1]."""

    def __init__(self, p, q, x, a, reachable, without_replacement):
        batch, n_plus_1, vocab = p.shape
        self.p, self.q, self.a = p, q, a
        self.rows = torch.arange(batch, device=p.device)
        self.xs = x.clamp(0, vocab - 1)
        self.valid = (self.xs == x) & reachable
        self.first_child, self.next_sibling = _links(a, reachable)
        self.alpha = torch.ones(batch, n_plus_1, device=p.device)
        self.mass = torch.ones(batch, n_plus_1, device=p.device)
        self.dist = p.clone()
        self.removed = None
        if without_replacement and q is not None:
            self.removed = torch.zeros(batch, n_plus_1, vocab, dtype=torch.bool, device=p.device)
            self.kept = torch.ones(batch, n_plus_1, device=p.device)
        self.q_at = None  # q_v(x_c) [B, N]: each node's token under its parent's draft row
        if q is not None:
            flat = (a.clamp(min=-1) + 1).clamp(max=n_plus_1 - 1) * vocab + self.xs
            self.q_at = q.reshape(batch, -1).gather(1, flat)

    def _q_x(self, c, v):
        """Q_c(x_c) [B] for nodes c [B] (clamped) of parents v [B]: 1 for a point mass."""
        if self.q is None:
            return torch.ones_like(self.alpha[:, 0])
        q_x = self.q_at[self.rows, c]
        if self.removed is not None:
            gone = self.removed[self.rows, v + 1, self.xs[self.rows, c]]
            kept = self.kept[self.rows, v + 1]
            q_x = torch.where(gone, 0.0, q_x / torch.where(kept > 0, kept, 1.0))
        return torch.where(q_x > 0, q_x, 1.0)

    def enter(self, c, on):
        """Set alpha_c = min(1, alpha_v P_v(x_c) / Q_c(x_c)) for the nodes c [B] where `on`."""
        c = c.clamp(min=0)
        v = self.a[self.rows, c].clamp(min=-1)
        x_c = self.xs[self.rows, c]
        p_x = self.dist[self.rows, v + 1, x_c] / self.mass[self.rows, v + 1]
        ratio = torch.where(self.valid[self.rows, c], p_x / self._q_x(c, v), 0.0)
        weight = torch.clamp(self.alpha[self.rows, v + 1] * ratio, max=1.0)
        self.alpha[self.rows, c + 1] = torch.where(on, weight, self.alpha[self.rows, c + 1])

    def chains(self, levels):
        """Each node's first-child chain below it [B, N+1, levels] (column v + 1 for node v; -1 past its leaf), and
        each node's weight ratio p_v(x_c) / Q_c(x_c) as a first child c, whose parent v is fresh then [B, N]."""
        batch, n_plus_1 = self.alpha.shape
        links = [self.first_child]
        for _ in range(1, levels):
            below = self.first_child.gather(1, (links[-1] + 1).clamp(min=0))
            links.append(torch.where(links[-1] >= 0, below, -1))
        self.chain = torch.stack(links, dim=2) if levels else self.first_child.new_zeros(batch, n_plus_1, 0)
        parents = self.a.clamp(min=-1, max=n_plus_1 - 2)
        p_x = self.p.reshape(batch, -1).gather(1, (parents + 1) * self.p.shape[2] + self.xs)
        q_x = torch.ones_like(p_x) if self.q_at is None else torch.where(self.q_at > 0, self.q_at, 1.0)
        self.fresh_ratio = torch.where(self.valid, p_x / q_x, 0.0)

    def descend(self, start, on):
        """From the nodes `start` [B] (-1: the root), entered, down their first children (each the first child of a
        fresh node: alpha_c = min(1, alpha_v p_v(x_c) / Q_c(x_c))): the leaves reached."""
        chain = self.chain[self.rows, start + 1]  # [B, levels]
        if chain.shape[1] == 0:
            return start
        ratio = self.fresh_ratio.gather(1, chain.clamp(min=0))
        weight, weights = self.alpha[self.rows, start + 1], []
        for k in range(chain.shape[1]):
            weight = torch.clamp(weight * ratio[:, k], max=1.0)
            weights.append(weight)
        there = on[:, None] & (chain >= 0)
        columns = torch.where(there, chain + 1, 0)  # (column 0, the root's, is written back unchanged)
        old = self.alpha.gather(1, columns)
        self.alpha.scatter_(1, columns, torch.where(there, torch.stack(weights, dim=1), old))
        depth = there.sum(dim=1)
        leaf = chain.gather(1, (depth - 1).clamp(min=0)[:, None])[:, 0]
        return torch.where(depth > 0, leaf, start)

    def reject(self, c, on):
        """Delete the nodes c [B] where `on`: their parents' alpha, P and removed ids updated."""
        vocab = self.p.shape[2]
        v = self.a[self.rows, c].clamp(min=-1)
        x_c, valid = self.xs[self.rows, c], self.valid[self.rows, c]
        q_row = self._q_row(c, v, x_c, valid)
        alpha, mass, dist = self.alpha[self.rows, v + 1], self.mass[self.rows, v + 1], self.dist[self.rows, v + 1]
        res = ((alpha / mass)[:, None] * dist - q_row).clamp_min_(0.0)
        r = res.sum(dim=1, dtype=torch.float64).float()
        denom = r + 1.0 - alpha
        new_alpha = torch.where(denom > 0, r / torch.where(denom > 0, denom, 1.0), 1.0)
        keep = on & (r > RESIDUAL_EPS)
        self.dist[self.rows, v + 1] = torch.where(keep[:, None], res, dist)
        self.mass[self.rows, v + 1] = torch.where(keep, r, mass)
        self.alpha[self.rows, v + 1] = torch.where(on, new_alpha, alpha)
        if self.removed is not None:
            gone = self.removed[self.rows, v + 1] | (torch.nn.functional.one_hot(x_c, vocab).bool()
                                                     & (on & valid)[:, None])
            self.removed[self.rows, v + 1] = gone
            left = torch.where(gone, 0.0, self.q[self.rows, v + 1]).sum(dim=1)
            self.kept[self.rows, v + 1] = torch.where(on, left, self.kept[self.rows, v + 1])

    def _q_row(self, c, v, x_c, valid):
        """Q_c [B, V]: the draft's row (without the removed ids, renormalised), or the point mass at x_c where that
        gives x_c nothing (empty for an id outside the vocabulary without draft scores)."""
        vocab = self.p.shape[2]
        point = torch.nn.functional.one_hot(x_c, vocab).float() * valid[:, None]
        if self.q is None:
            return point
        q_row = self.q[self.rows, v + 1]
        if self.removed is not None:
            kept = self.kept[self.rows, v + 1]
            q_row = torch.where(self.removed[self.rows, v + 1], 0.0, q_row) / torch.where(kept > 0, kept, 1.0)[:, None]
        q_x = q_row.gather(1, x_c[:, None])[:, 0]
        return torch.where((valid & ~(q_x > 0))[:, None], point, q_row)

    def run(self, u, levels):
        """The accepted node [B] (-1: the root) and the distribution [B, V] (unnormalised) to draw the next from."""
        batch, n = self.a.shape
        everyone = torch.ones(batch, dtype=torch.bool, device=self.a.device)
        self.chains(levels)
        node = self.descend(torch.full_like(self.rows, -1), everyone)
        done = node < 0
        found = torch.full_like(self.rows, -1)
        for _ in range(n):
            c = node.clamp(min=0)
            active = ~done
            take = active & (u[self.rows, c] < self.alpha[self.rows, c + 1])
            found = torch.where(take, node, found)
            done = done | take
            drop = active & ~take
            self.reject(c, drop)
            sibling = self.next_sibling[self.rows, c]
            across = drop & (sibling >= 0)
            self.enter(sibling, across)
            leaf = self.descend(torch.where(across, sibling, -1), across)
            up = drop & (sibling < 0)
            parent = self.a[self.rows, c]
            node = torch.where(across, leaf, torch.where(up, parent, node))
            done = done | (up & (parent < 0))
        return found, self.dist[self.rows, found + 1]

