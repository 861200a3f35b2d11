"""Exact expected accepted depth of one tree verification, per rule: the float64 reference of the tests and bench/.

Given one row's tree (its candidates already drawn) and the distributions at every node, the expected number of
accepted nodes over the verification's own randomness, for the token rule (SpecInfer's, top-down: a child accepted
with min(1, r(x) / q_c(x)) against the residual r left by its rejected elder siblings) and for Traversal Verification
(Weng et al. 2025, arXiv 2505.12398: the nodes tested leaf to root in post-order, each with its sequence-level
weight; the first test passed accepts the path to that node). With ``without_replacement`` each child's q_c is the
draft's distribution with its elder siblings' tokens removed and renormalised. A candidate the draft gives no mass
is a point mass (q_c = that token alone), as the verification treats it.

tests/test_traversal.py weighs these over every possible tree (the rules' exact expectation, against the mean of
many verifications); bench/bench_traversal_exact.py evaluates them on the trees generation drafts (a paired, noise-free
comparison of the rules).
"""

from __future__ import annotations

import torch

__all__ = ["expected_depth", "token_expected_depth", "traversal_expected_depth"]


def _q_child(q: torch.Tensor, tokens: list[int], parents: list[int], c: int, wor: bool) -> torch.Tensor:
    """q_c: the draft's row at c's parent, without the elder siblings' tokens when drawn without replacement."""
    q_c = q.clone()
    if wor:
        for j in range(c):
            if parents[j] == parents[c]:
                q_c[tokens[j]] = 0.0
        q_c = q_c / q_c.sum() if q_c.sum() > 0 else q_c
    if not q_c[tokens[c]] > 0:
        q_c = torch.zeros_like(q_c)
        q_c[tokens[c]] = 1.0
    return q_c


def _depth(parents: list[int], node: int) -> int:
    depth = 0
    while node >= 0:
        depth, node = depth + 1, parents[node]
    return depth


def traversal_expected_depth(p: torch.Tensor, q: torch.Tensor, tokens: list[int], parents: list[int],
                             wor: bool = False) -> float:
    """E[accepted depth] under Traversal Verification.

    Parameters
    ----------
    p, q : torch.Tensor
        [N + 1, V] float64 target and draft distributions: row 0 at the root, row v + 1 after node v's path.
    tokens, parents : list of int
        N node tokens and parents in [-1, v) (-1: a child of the root).
    wor : bool
        Children drawn without replacement.
    """
    n = len(parents)
    kids = {v: [i for i in range(n) if parents[i] == v] for v in range(-1, n)}
    alpha, dist, tests = {-1: 1.0}, {-1: p[0]}, []

    def walk(v):
        for c in kids[v]:
            q_c = _q_child(q[v + 1], tokens, parents, c, wor)
            alpha[c] = min(1.0, alpha[v] * float(dist[v][tokens[c]]) / float(q_c[tokens[c]]))
            dist[c] = p[c + 1]
            walk(c)
            tests.append((c, alpha[c]))
            res = (alpha[v] * dist[v] - q_c).clamp_min(0.0)
            r = float(res.sum())
            alpha[v] = r / (r + 1.0 - alpha[v]) if r + 1.0 - alpha[v] > 0 else 1.0
            if r > 0:
                dist[v] = res / r

    walk(-1)
    stay, total = 1.0, 0.0
    for node, a in tests:  # every earlier test rejected: the order and the weights are then fixed
        total += stay * a * _depth(parents, node)
        stay *= 1.0 - a
    return total


def token_expected_depth(p: torch.Tensor, q: torch.Tensor, tokens: list[int], parents: list[int], wor: bool = False,
                         node: int = -1) -> float:
    """E[accepted depth] under the token rule from `node` (-1: the root); arguments as
    :func:`traversal_expected_depth`."""
    r, stay, total = p[node + 1].clone(), 1.0, 0.0
    for c in (i for i in range(len(parents)) if parents[i] == node):
        q_c = _q_child(q[node + 1], tokens, parents, c, wor)
        x = tokens[c]
        a = min(1.0, float(r[x]) / float(q_c[x]))
        total += stay * a * (1.0 + token_expected_depth(p, q, tokens, parents, wor, c))
        stay *= 1.0 - a
        rest = (r - q_c).clamp_min(0.0)
        if float(rest.sum()) > 0:
            r = rest / rest.sum()
    return total


def expected_depth(method: str, p: torch.Tensor, q: torch.Tensor, tokens: list[int], parents: list[int],
                   wor: bool = False) -> float:
    """:func:`token_expected_depth` or :func:`traversal_expected_depth` by `method` ("token" or "traversal")."""
    rule = {"token": token_expected_depth, "traversal": traversal_expected_depth}[method]
    return rule(p, q, tokens, parents, wor)
