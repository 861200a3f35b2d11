"""Toy models of token trees shared by the tree tests (``test_tree.py``, ``test_traversal.py``): tables of target and
draft logits indexed by the whole prefix (a prefix is coded in base DIGITS), the breadth-first shape of a tree, and a
chain case for comparing a tree rule with its chain rule on the same random numbers."""

import torch

V = 4
DIGITS = V + 1
TABLE_ROWS = DIGITS**6  # prefixes of up to 5 tokens: 2 committed, a tree of depth 3


def tables(seed: int, spread: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(TABLE_ROWS, V, generator=g) * spread
    draft = target + torch.randn(TABLE_ROWS, V, generator=g) * spread
    return target, draft


def shape(branching):
    """Parents [N] of the tree with `branching` children per node at each depth, in breadth-first order."""
    parents, frontier = [], [-1]
    for width in branching:
        nxt = []
        for node in frontier:
            for _ in range(width):
                parents.append(node)
                nxt.append(len(parents) - 1)
        frontier = nxt
    return parents


def codes(tokens, length):
    code = torch.zeros(tokens.shape[0], dtype=torch.int64)
    for i in range(tokens.shape[1]):
        code += torch.where(i < length, (tokens[:, i] + 1) * DIGITS**i, 0)
    return code


def code(prefix):
    return sum((t + 1) * DIGITS**i for i, t in enumerate(prefix))


def chain_case(batch, k, vocab, seed, one_hot=False):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, k + 1, vocab, generator=g) * 2
    draft = target[:, :k] + torch.randn(batch, k, vocab, generator=g)
    drafts = torch.multinomial(draft.reshape(-1, vocab).softmax(-1), 1, generator=g).reshape(batch, k)
    if one_hot:
        drafts = target[:, :k].argmax(-1)
    return target, drafts, None if one_hot else draft, torch.rand(batch, k, generator=g), \
        torch.empty(batch, vocab).exponential_(generator=g)
