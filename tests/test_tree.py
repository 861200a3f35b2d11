"""Token-tree verification (``specsampler.verify_tree``), torch backend.

Exactness: prefix-dependent toy models (a table indexed by the whole prefix), generation by repeated verify_tree calls
over trees drafted level by level (i.i.d. samples or the draft's top tokens), and the joint of the first 3 emitted
tokens against the enumerated target joint (chi-square at ALPHA, fixed seeds). Depth: the mean accepted depth of one
call against the rule's exact expectation (every tree of candidates enumerated, float64). Structure: a chain is token
verification on the same random numbers; paths, padding, ragged trees, bad input.
"""

import itertools
import math

import pytest
import torch
import tree_toys as toys
from util import chi2_pvalue

import specsampler
from specsampler import _testing

ALPHA = 1e-4


def _warped(logits, top_k):
    if top_k is None:
        return logits
    return logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[..., -1:], float("-inf"))


def _draft_trees(tables, codes, length, branching, g, iid, top_k):
    """Tokens [R, N] and the prefix codes [R, N+1] (root first) of one tree per row."""
    draft_t = tables[1]
    parents = toys.shape(branching)
    rows = codes.shape[0]
    node_codes = [codes]
    node_depth = []
    tokens = torch.empty(rows, len(parents), dtype=torch.int64)
    for i, parent in enumerate(parents):
        depth = 1 if parent < 0 else node_depth[parent] + 1
        node_depth.append(depth)
        q = _warped(draft_t[node_codes[parent + 1]], top_k)
        siblings = [j for j in range(i) if parents[j] == parent]
        if iid:
            x = torch.multinomial(q.softmax(-1), 1, generator=g)[:, 0]
        else:  # the draft's top tokens, a distinct one per sibling
            x = q.argsort(dim=-1, descending=True, stable=True)[:, len(siblings)]
        tokens[:, i] = x
        node_codes.append(node_codes[parent + 1] + (x + 1) * toys.DIGITS ** (length + depth - 1))
    return tokens, torch.stack(node_codes, dim=1), torch.tensor(parents)


def _emit_three(tables, rows, seed, branching, *, iid=True, top_k=None):
    """Verify trees until every row has 3 tokens: [rows, 3] tokens and the first call's accepted depths."""
    g = torch.Generator().manual_seed(seed)
    out = torch.full((rows, 8), -1, dtype=torch.int64)
    length = torch.zeros(rows, dtype=torch.int64)
    first = None
    for call in range(4):
        active = torch.nonzero(length < 3)[:, 0]
        if active.numel() == 0:
            break
        tokens, codes, parents = _draft_trees(tables, toys.codes(out[active], length[active]), length[active],
                                              branching, g, iid, top_k)
        target = tables[0][codes]
        draft = tables[1][codes] if iid else None
        res = specsampler.verify_tree(target, tokens, parents.expand(active.numel(), -1).contiguous(), draft,
                                      top_k=top_k, seed=seed * 100 + call)
        if first is None:
            first = res.num_accepted
        for j in range(res.tokens.shape[1]):
            emit = res.num_accepted >= j
            out[active[emit], length[active[emit]] + j] = res.tokens[emit, j]
        length[active] += res.num_accepted + 1
    return out[:, :3], first


def _target_joint(tables, top_k=None):
    p = _warped(tables[0], top_k).double().softmax(-1)
    return torch.tensor([p[toys.code(())][a] * p[toys.code((a,))][b] * p[toys.code((a, b))][c]
                         for a, b, c in itertools.product(range(toys.V), repeat=3)], dtype=torch.float64)


@pytest.mark.parametrize("case", ["iid", "point-mass", "iid-top-k", "point-mass-wide"])
def test_tree_joint_of_three_tokens_is_the_targets(case):
    tables = toys.tables(seed=1)
    top_k = 3 if case == "iid-top-k" else None
    branching = (3, 2) if case == "point-mass-wide" else (2, 2)
    tokens, _ = _emit_three(tables, 20000, seed=2, branching=branching, iid=case.startswith("iid"), top_k=top_k)
    assert bool(((tokens >= 0) & (tokens < toys.V)).all())
    cells = tokens[:, 0] * toys.V * toys.V + tokens[:, 1] * toys.V + tokens[:, 2]
    p_value = chi2_pvalue(torch.bincount(cells, minlength=toys.V**3), _target_joint(tables, top_k).float())
    assert p_value > ALPHA, p_value


def _exact_depth(tables, branching, iid):
    """E[accepted depth] of one call at the root, straight from the rule in float64, every candidate tree
    enumerated (i.i.d.: weighted by its probability; point mass: the one tree of top tokens)."""
    p_t = tables[0].double().softmax(-1)
    q_t = tables[1].double().softmax(-1)
    parents = toys.shape(branching)
    n = len(parents)

    def children(node):
        return [i for i in range(n) if parents[i] == node]

    def expected(node, prefix, tokens):
        r = p_t[toys.code(prefix)].clone()
        q = q_t[toys.code(prefix)]
        stay, total = 1.0, 0.0
        for c in children(node):
            x = tokens[c]
            q_c = q if iid else torch.nn.functional.one_hot(torch.tensor(x), toys.V).double()
            a = min(1.0, float(r[x]) / float(q_c[x]))
            total += stay * a * (1.0 + expected(c, prefix + (x,), tokens))
            stay *= 1.0 - a
            rest = (r - q_c).clamp_min(0)
            if float(rest.sum()) > 0:
                r = rest / rest.sum()
        return total

    if not iid:
        tokens = {}
        for i, parent in enumerate(parents):
            prefix = _path(parent, parents, tokens)
            rank = len([j for j in range(i) if parents[j] == parent])
            tokens[i] = int(q_t[toys.code(prefix)].argsort(descending=True, stable=True)[rank])
        return expected(-1, (), tokens)
    e = 0.0
    for combo in itertools.product(range(toys.V), repeat=n):
        tokens = dict(enumerate(combo))
        prob = math.prod(float(q_t[toys.code(_path(parents[i], parents, tokens))][combo[i]]) for i in range(n))
        e += prob * expected(-1, (), tokens)
    return e


def _path(node, parents, tokens):
    """The tokens from the root down to `node` (inclusive; () for the root)."""
    out = []
    while node >= 0:
        out.append(tokens[node])
        node = parents[node]
    return tuple(reversed(out))


@pytest.mark.parametrize("iid", [True, False], ids=["iid", "point-mass"])
def test_mean_depth_is_the_rules_and_beats_the_chain(iid):
    tables = toys.tables(seed=3)
    tree, chain = (2, 2), (1, 1)
    e_tree, e_chain = _exact_depth(tables, tree, iid), _exact_depth(tables, chain, iid)
    assert e_tree > e_chain + 0.1, (e_tree, e_chain)
    for branching, expected in ((tree, e_tree), (chain, e_chain)):
        _, depth = _emit_three(tables, 20000, seed=4, branching=branching, iid=iid)
        mean, se = depth.double().mean(), depth.double().std() / math.sqrt(depth.numel())
        assert abs(float(mean) - expected) < 5 * float(se), (branching, float(mean), expected)


@pytest.mark.parametrize("case", ["sampled", "one-hot", "ragged", "mixed-temperature", "warped"])
def test_a_chain_is_token_verification(case):
    batch, k, vocab = 9, 4, 97
    target, drafts, draft, u, noise = toys.chain_case(batch, k, vocab, seed=5, one_hot=case == "one-hot")
    options = {}
    if case == "ragged":
        options["num_draft_tokens"] = torch.tensor([0, 1, 2, 3, 4, 4, 2, 1, 0])
    if case == "mixed-temperature":
        options["temperature"] = torch.tensor([0.0, 0.5, 1.0] * 3)
    if case == "warped":
        options.update(temperature=0.8, top_k=10, top_p=0.9)
    want = _testing.verify_with_hooks(target, drafts, draft, _uniforms=u, _noise=noise, backend="torch", **options)
    parents = torch.arange(-1, k - 1).expand(batch, k).contiguous()
    tree_draft = None if draft is None else torch.cat([draft, torch.zeros(batch, 1, vocab)], dim=1)
    if "num_draft_tokens" in options:
        options["num_nodes"] = options.pop("num_draft_tokens")
    got = _testing.verify_tree_with_hooks(target, drafts, parents, tree_draft, _uniforms=u, _noise=noise,
                                          max_depth=k, **options)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
    assert len(set(want.num_accepted.tolist())) >= 2


def test_structure_paths_and_padding():
    batch, vocab = 6, 50
    parents = torch.tensor([-1, -1, 0, 0, 1, 2, 5])  # depth 4 via 0 -> 2 -> 5 -> 6
    n = parents.numel()
    g = torch.Generator().manual_seed(6)
    target = torch.randn(batch, n + 1, vocab, generator=g) * 3
    tokens = target[:, [0, 0, 1, 1, 2, 3, 6]].argmax(-1)  # the argmax of each node's parent's row, mostly accepted
    tokens[:, 1] = (tokens[:, 0] + 1) % vocab
    tokens[:, 3] = (tokens[:, 2] + 1) % vocab
    num_nodes = torch.tensor([7, 7, 3, 0, 6, 7])
    res = specsampler.verify_tree(target, tokens, parents.expand(batch, -1).contiguous(), num_nodes=num_nodes,
                                  temperature=torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 2.0]), seed=7)
    assert tuple(res.tokens.shape) == (batch, 5) and tuple(res.path.shape) == (batch, 4)
    for b in range(batch):
        d = int(res.num_accepted[b])
        path = res.path[b, :d].tolist()
        assert res.path[b, d:].tolist() == [-1] * (4 - d)
        assert all(node < int(num_nodes[b]) for node in path)
        assert [int(parents[node]) for node in path] == ([-1] + path[:-1])[:d]
        assert res.tokens[b, :d].tolist() == [int(tokens[b, node]) for node in path]
        assert 0 <= int(res.tokens[b, d]) < vocab and res.tokens[b, d + 1:].tolist() == [-1] * (4 - d)
    assert res.num_accepted[3] == 0  # no nodes
    # The greedy row follows the argmax child all the way: 0 -> 2 -> 5 -> 6 (node 1 and 3 are not the argmax).
    assert res.path[1].tolist() == [0, 2, 5, 6]
    assert res.tokens[1, 4] == target[1, 7].argmax()


def test_max_depth_cuts_the_tree():
    parents = torch.tensor([[-1, 0, 1, 2]])
    target = torch.zeros(1, 5, 8)
    target[0, :, 3] = 20.0  # p is (nearly) a point mass at 3 everywhere
    tokens = torch.full((1, 4), 3)
    full = specsampler.verify_tree(target, tokens, parents, seed=0)
    cut = specsampler.verify_tree(target, tokens, parents, seed=0, max_depth=2)
    assert full.num_accepted.tolist() == [4] and full.path.tolist() == [[0, 1, 2, 3]]
    assert cut.num_accepted.tolist() == [2] and cut.path.tolist() == [[0, 1]] and tuple(cut.tokens.shape) == (1, 3)


def test_bad_trees_are_refused_by_name():
    target = torch.randn(2, 4, 10)
    tokens = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="tree_parents"):
        specsampler.verify_tree(target, tokens, torch.tensor([[-1, 0, 2], [-1, 0, 1]]))
    with pytest.raises(ValueError, match="tree_parents"):
        specsampler.verify_tree(target, tokens, torch.tensor([[-1, -2, 0], [-1, 0, 1]]))
    with pytest.raises(ValueError, match="tree_tokens"):
        specsampler.verify_tree(target, tokens[:, :2], torch.tensor([[-1, 0], [-1, 0]]))
    with pytest.raises(TypeError, match="tree_parents"):
        specsampler.verify_tree(target, tokens, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_nodes"):
        specsampler.verify_tree(target, tokens, torch.tensor([[-1, 0, 1]] * 2), num_nodes=[1, 4])
    with pytest.raises(ValueError, match="draft_logits"):
        specsampler.verify_tree(target, tokens, torch.tensor([[-1, 0, 1]] * 2), torch.randn(2, 3, 10))
    with pytest.raises(ValueError, match="max_depth"):
        specsampler.verify_tree(target, tokens, torch.tensor([[-1, 0, 1]] * 2), max_depth=-1)
    with pytest.raises(ValueError, match="backend"):
        specsampler.verify_tree(target, tokens, torch.tensor([[-1, 0, 1]] * 2), backend="gpu")


def test_a_tree_of_no_nodes_draws_from_the_root():
    """N = 0: the next token from p at the root, with draft scores or without, warped or not."""
    none = torch.empty(3, 0, dtype=torch.int64)
    target = torch.full((3, 1, 6), float("-inf"))
    target[:, 0, 4] = 0.0  # p is the point mass at 4
    for draft, options in ((None, {}), (torch.randn(3, 1, 6), dict(top_k=2))):
        res = specsampler.verify_tree(target, none, none, draft, seed=0, **options)
        assert res.tokens.tolist() == [[4]] * 3 and res.num_accepted.tolist() == [0] * 3
        assert tuple(res.path.shape) == (3, 0)


def test_out_of_range_tokens_are_never_accepted_and_empty_batches():
    target = torch.zeros(1, 3, 6)
    res = specsampler.verify_tree(target, torch.tensor([[-1, 9]]), torch.tensor([[-1, -1]]), seed=0)
    assert res.num_accepted.tolist() == [0] and 0 <= int(res.tokens[0, 0]) < 6
    empty = specsampler.verify_tree(torch.randn(0, 3, 6), torch.empty(0, 2, dtype=torch.int64),
                                    torch.empty(0, 2, dtype=torch.int64), max_depth=2)
    assert [tuple(t.shape) for t in empty] == [(0, 3), (0,), (0, 2)]


@pytest.mark.parametrize("max_depth", [None, 2])
def test_all_greedy_rows_take_the_argmax_walk_of_mixed_batches(max_depth):
    """A float temperature of 0 (every row greedy: the oracle's argmax walk, no probabilities) gives what the same
    rows give as greedy rows of a [B] temperature (the general walk), on random trees with ragged rows, out-of-range
    tokens and parents outside [-1, i); and it follows argmax children."""
    g = torch.Generator().manual_seed(11)
    batch, n, vocab = 64, 9, 5
    target = torch.randn(batch, n + 1, vocab, generator=g) * 3
    tokens = torch.randint(-1, vocab + 1, (batch, n), generator=g)
    parents = torch.stack([torch.randint(-1, max(i, 1), (batch,), generator=g) if i else torch.full((batch,), -1)
                           for i in range(n)], dim=1)
    num_nodes = torch.randint(0, n + 1, (batch,), generator=g)
    greedy = specsampler.verify_tree(target, tokens, parents, num_nodes=num_nodes, temperature=0.0, seed=3,
                                     max_depth=max_depth, backend="torch")
    mixed = specsampler.verify_tree(target, tokens, parents, num_nodes=num_nodes, max_depth=max_depth, seed=3,
                                    temperature=torch.zeros(batch), backend="torch")
    for a, b in zip(greedy, mixed, strict=True):
        assert torch.equal(a, b)
    assert int(greedy.num_accepted.max()) >= 2  # (the trees do accept paths)
    for b in range(batch):
        node, d = -1, int(greedy.num_accepted[b])
        for step in range(d):
            child = int(greedy.path[b, step])
            assert int(parents[b, child]) == node and int(tokens[b, child]) == int(target[b, node + 1].argmax())
            node = child
        assert int(greedy.tokens[b, d]) == int(target[b, node + 1].argmax())
