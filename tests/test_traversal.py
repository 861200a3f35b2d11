"""Traversal Verification (``verify_tree(method="traversal")``) and trees drawn without replacement
(``draft_sampling="without_replacement"``), torch backend.

Exactness: prefix-dependent toy models (tables of target and draft logits indexed by the whole prefix), trees drafted
node by node (i.i.d. children, children without replacement, or the draft's top tokens), generation by repeated
verify_tree calls, and the joint of the first 3 emitted tokens against the enumerated target joint (chi-square,
p > ALPHA, fixed seeds). Depth: the mean accepted depth of one call against the rule's exact expectation (a float64
reference of each rule, every tree of candidates enumerated), traversal >= token. A chain: traversal equals block
verification token for token on the same uniforms. Structure, log-probabilities, refusals. The kernel
(``triton_kernels/tree_traversal.py``) against this oracle: tests/test_kernel_tree.py.
"""

import itertools
import math

import pytest
import torch
import tree_toys as toys
from specsampler.triton_kernels.constants import STREAM_TREE
from util import chi2_pvalue

import specsampler
from specsampler import _api, _testing
from specsampler._tree_reference import expected_depth
from specsampler.torch_backend import emitted_logprobs

ALPHA = 1e-3


def _warped(logits, top_k=None, top_p=None):
    """The warpers as specsampler applies them: top-k, then the highest probabilities up to a mass of top_p."""
    if top_k is not None:
        logits = logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
    if top_p is not None:
        probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _draw_children(q, taken, g, sampling):
    """One child per row from the warped draft logits `q` [R, V]: i.i.d., without the ids in `taken` [R, V] bool
    (a deterministic unused id where nothing is left), or the top token not yet taken."""
    if sampling == "iid":
        return torch.multinomial(q.softmax(-1), 1, generator=g)[:, 0]
    left = q.masked_fill(taken, float("-inf"))
    if sampling == "top":
        return left.argmax(-1)
    probs = left.softmax(-1).nan_to_num(0.0)
    none = probs.sum(-1) == 0
    drawn = torch.multinomial(torch.where(none[:, None], 1.0, probs), 1, generator=g)[:, 0]
    return torch.where(none, (~taken).to(torch.int64).argmax(-1), drawn)


def _draft_trees(tables, codes, length, branching, g, sampling, warp):
    draft_t = tables[1]
    parents = toys.shape(branching)
    rows = codes.shape[0]
    node_codes, node_depth = [codes], []
    tokens = torch.empty(rows, len(parents), dtype=torch.int64)
    for i, parent in enumerate(parents):
        depth = 1 if parent < 0 else node_depth[parent] + 1
        node_depth.append(depth)
        q = _warped(draft_t[node_codes[parent + 1]], **warp)
        taken = torch.zeros(rows, toys.V, dtype=torch.bool)
        for j in range(i):
            if parents[j] == parent and sampling != "iid":
                taken[torch.arange(rows), tokens[:, j]] = True
        tokens[:, i] = _draw_children(q, taken, g, sampling)
        node_codes.append(node_codes[parent + 1] + (tokens[:, i] + 1) * toys.DIGITS ** (length + depth - 1))
    return tokens, torch.stack(node_codes, dim=1), torch.tensor(parents)


def _emit_three(tables, rows, seed, branching, *, sampling="iid", method="traversal", warp=None, device="cpu",
                ragged=False):
    """Verify trees until every row has 3 tokens: [rows, 3] tokens and the first call's accepted depths. `ragged`:
    each row keeps a random number of its nodes (breadth-first, so a tree), drawn before the tokens."""
    warp = warp or {}
    g = torch.Generator().manual_seed(seed)
    out = torch.full((rows, 8), -1, dtype=torch.int64)
    length = torch.zeros(rows, dtype=torch.int64)
    first = None
    for call in range(4):
        active = torch.nonzero(length < 3)[:, 0]
        if active.numel() == 0:
            break
        tokens, codes, parents = _draft_trees(tables, toys.codes(out[active], length[active]), length[active],
                                              branching, g, sampling, warp)
        target = tables[0][codes].to(device)
        nodes = torch.randint(0, tokens.shape[1] + 1, (active.numel(),), generator=g).to(device) if ragged else None
        draft = None if sampling == "top" else tables[1][codes].to(device)
        res = specsampler.verify_tree(target, tokens.to(device), parents.expand(active.numel(), -1).contiguous()
                                      .to(device), draft, num_nodes=nodes, seed=seed * 100 + call, method=method,
                                      backend="torch",
                                      draft_sampling="without_replacement" if sampling == "wor" else "iid", **warp)
        res = type(res)(*(t.cpu() for t in res))
        if first is None:
            first = res.num_accepted
        for j in range(res.tokens.shape[1]):
            emit = res.num_accepted >= j
            out[active[emit], length[active[emit]] + j] = res.tokens[emit, j]
        length[active] += res.num_accepted + 1
    return out[:, :3], first


def _target_joint(tables, warp):
    p = _warped(tables[0].double(), **warp).softmax(-1)
    return torch.tensor([p[toys.code(())][a] * p[toys.code((a,))][b] * p[toys.code((a, b))][c]
                         for a, b, c in itertools.product(range(toys.V), repeat=3)], dtype=torch.float64)


JOINT_CASES = [("traversal", s, w) for s in ("iid", "wor") for w in ("plain", "top-k", "top-p")]
JOINT_CASES += [("traversal", "top", "plain"), ("token", "wor", "plain"), ("token", "wor", "top-p"),
                ("traversal", "iid", "ragged"), ("traversal", "wor", "ragged")]
WARPS = {"plain": {}, "top-k": dict(top_k=3), "top-p": dict(top_p=0.8), "ragged": {}}


@pytest.mark.parametrize("method,sampling,warp", JOINT_CASES, ids=["-".join(c) for c in JOINT_CASES])
def test_joint_of_three_tokens_is_the_targets(method, sampling, warp, device):
    tables = toys.tables(seed=1)
    tokens, _ = _emit_three(tables, 20000, seed=2, branching=(2, 2), sampling=sampling, method=method,
                            warp=WARPS[warp], device=device, ragged=warp == "ragged")
    assert bool(((tokens >= 0) & (tokens < toys.V)).all())
    cells = tokens[:, 0] * toys.V * toys.V + tokens[:, 1] * toys.V + tokens[:, 2]
    p_value = chi2_pvalue(torch.bincount(cells, minlength=toys.V**3), _target_joint(tables, WARPS[warp]).float())
    assert p_value > ALPHA, p_value


def test_joint_check_catches_a_wrong_rule():
    """The same check fails both rules told "iid" for children drawn without replacement."""
    tables = toys.tables(seed=1)
    g = torch.Generator().manual_seed(9)
    rows = 20000
    root = torch.zeros(rows, dtype=torch.int64)
    tokens, codes, parents = _draft_trees(tables, root, root, (3,), g, "wor", {})
    p = tables[0][0].double().softmax(-1)
    for method in ("token", "traversal"):
        res = specsampler.verify_tree(tables[0][codes], tokens, parents.expand(rows, -1).contiguous(),
                                      tables[1][codes], seed=3, method=method, draft_sampling="iid")
        assert chi2_pvalue(torch.bincount(res.tokens[:, 0], minlength=toys.V), p.float()) < 1e-6


# ------------------------------------------------------------------ exact expectations (float64 references)

def _rows(table, parents, tokens):
    """[N + 1, V] float64: the table's distribution at the root, then after each node's path."""
    prefixes = [()]
    for i, parent in enumerate(parents):
        prefixes.append(prefixes[parent + 1] + (tokens[i],))
    return table[[toys.code(prefix) for prefix in prefixes]]


def _exact_depth(tables, branching, method, wor):
    """E[accepted depth] of one call at the root: every tree of candidates, weighted by its probability, each tree's
    expectation from :mod:`specsampler._tree_reference` (the reference bench/bench_traversal_exact.py uses too)."""
    p_t = tables[0].double().softmax(-1)
    q_t = tables[1].double().softmax(-1)
    parents = toys.shape(branching)
    e = 0.0
    for combo in itertools.product(range(toys.V), repeat=len(parents)):
        prob = 1.0
        for i, x in enumerate(combo):
            prefix = tuple(combo[j] for j in _ancestors(parents, i))
            q = q_t[toys.code(prefix)].clone()
            if wor:
                earlier = [combo[j] for j in range(i) if parents[j] == parents[i]]
                if x in earlier:
                    prob = 0.0
                    break
                q = q / (1.0 - sum(float(q[e_]) for e_ in earlier))
            prob *= float(q[x])
        if prob > 0:
            tokens = list(combo)
            e += prob * expected_depth(method, _rows(p_t, parents, tokens), _rows(q_t, parents, tokens), tokens,
                                       parents, wor)
    return e


def _ancestors(parents, i):
    out, v = [], parents[i]
    while v >= 0:
        out.append(v)
        v = parents[v]
    return list(reversed(out))


@pytest.mark.parametrize("sampling", ["iid", "wor"])
def test_mean_depth_is_the_rules_and_traversal_beats_token(sampling, device):
    tables = toys.tables(seed=3)
    wor = sampling == "wor"
    e_trav = _exact_depth(tables, (2, 2), "traversal", wor)
    e_token = _exact_depth(tables, (2, 2), "token", wor)
    assert e_trav > e_token + 0.005, (e_trav, e_token)
    for method, expected in (("traversal", e_trav), ("token", e_token)):
        _, depth = _emit_three(tables, 20000, seed=4, branching=(2, 2), sampling=sampling, method=method,
                               device=device)
        mean, se = depth.double().mean(), depth.double().std() / math.sqrt(depth.numel())
        assert abs(float(mean) - expected) < 5 * float(se), (method, float(mean), expected)


def test_without_replacement_accepts_more_than_iid_here():
    tables = toys.tables(seed=3)
    for method in ("traversal", "token"):
        iid, wor = (_exact_depth(tables, (2, 2), method, w) for w in (False, True))
        assert wor > iid, (method, iid, wor)


def test_the_papers_example_sequence_level_acceptance(device):
    """A chain of two drafts: the first's ratio p/q is 0.5, the second's 4/3. Token by token both are accepted with
    probability 0.5, by traversal (block) with min(1, 0.5 * 4/3) = 2/3."""
    rows = 40000
    p0, q0 = torch.tensor([0.4, 0.6]), torch.tensor([0.8, 0.2])  # token 0: ratio 0.5
    p1, q1 = torch.tensor([0.8, 0.2]), torch.tensor([0.6, 0.4])  # token 0: ratio 4/3
    target = torch.stack([p0, p1, p1]).log().expand(rows, 3, 2).contiguous().to(device)
    draft = torch.stack([q0, q1, q1]).log().expand(rows, 3, 2).contiguous().to(device)
    tokens = torch.zeros(rows, 2, dtype=torch.int64, device=device)
    parents = torch.tensor([[-1, 0]], device=device).expand(rows, 2).contiguous()
    for method, want in (("token", 0.5), ("traversal", 2 / 3)):
        res = specsampler.verify_tree(target, tokens, parents, draft, seed=5, method=method, backend="torch")
        both = (res.num_accepted == 2).double().mean()
        assert abs(float(both) - want) < 5 * math.sqrt(want * (1 - want) / rows), (method, float(both))


# ------------------------------------------------------------------ chains, structure

@pytest.mark.parametrize("case", ["sampled", "one-hot", "ragged", "mixed-temperature", "warped", "cdf",
                                  "without-replacement", "out-of-range"])
def test_a_chain_is_block_verification(case, device):
    batch, k, vocab = 48, 4, 37
    target, drafts, draft, u, noise = toys.chain_case(batch, k, vocab, seed=5, one_hot=case == "one-hot")
    options = {}
    if case == "ragged":
        options["num_draft_tokens"] = torch.randint(0, k + 1, (batch,), generator=torch.Generator().manual_seed(1))
    if case == "mixed-temperature":
        options["temperature"] = torch.tensor([0.0, 0.5, 1.0] * (batch // 3))
    if case == "warped":
        options.update(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05)
    if case == "cdf":
        noise = None
    if case == "out-of-range":
        drafts[::5, 1] = vocab + 2
    on = {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in options.items()}
    target, drafts, u = target.to(device), drafts.to(device), u.to(device)
    draft = None if draft is None else draft.to(device)
    noise = None if noise is None else noise.to(device)
    hooks = dict(seed=7) if noise is None else dict(_uniforms=u, _noise=noise)
    if noise is None:  # cdf: the same seeded uniforms, verify_tree's stream of the seed
        want = _api._verify(target, drafts, draft, backend="torch", method="block", seed=7, stream=STREAM_TREE, **on)
    else:
        want = _testing.verify_with_hooks(target, drafts, draft, backend="torch", method="block", **hooks, **on)
    parents = torch.arange(-1, k - 1, device=device).expand(batch, k).contiguous()
    tree_draft = None if draft is None else torch.cat([draft, torch.zeros(batch, 1, vocab, device=device)], dim=1)
    if "num_draft_tokens" in on:
        on["num_nodes"] = on.pop("num_draft_tokens")
    sampling = "without_replacement" if case == "without-replacement" else "iid"
    got = _testing.verify_tree_with_hooks(target, drafts, parents, tree_draft, max_depth=k, method="traversal",
                                          draft_sampling=sampling, **hooks, **on)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
    assert len(set(want.num_accepted.tolist())) >= 3


def _random_trees(batch, n, vocab, seed, device):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, n + 1, vocab, generator=g) * 2
    draft = target + torch.randn(batch, n + 1, vocab, generator=g)
    tokens = torch.randint(0, vocab, (batch, n), generator=g)
    parents = torch.stack([torch.randint(-1, max(i, 1), (batch,), generator=g) if i else torch.full((batch,), -1)
                           for i in range(n)], dim=1)
    num_nodes = torch.randint(0, n + 1, (batch,), generator=g)
    return [t.to(device) for t in (target, draft, tokens, parents, num_nodes)]


@pytest.mark.parametrize("sampling", ["iid", "without_replacement"])
def test_structure_paths_padding_and_greedy_rows(sampling, device):
    batch, n, vocab = 60, 9, 6
    target, draft, tokens, parents, num_nodes = _random_trees(batch, n, vocab, seed=11, device=device)
    temperature = torch.tensor([0.0, 1.0, 0.7] * (batch // 3), device=device)
    options = dict(num_nodes=num_nodes, temperature=temperature, seed=3, draft_sampling=sampling)
    res = specsampler.verify_tree(target, tokens, parents, draft, method="traversal", **options)
    token = specsampler.verify_tree(target, tokens, parents, draft, method="token", backend="torch", **options)
    d_max = res.path.shape[1]
    assert res.tokens.shape == (batch, d_max + 1) and res.num_accepted.dtype == torch.int64
    assert int(res.num_accepted.max()) >= 2
    for b in range(batch):
        d = int(res.num_accepted[b])
        path = res.path[b, :d].tolist()
        assert res.path[b, d:].tolist() == [-1] * (d_max - d)
        assert all(node < int(num_nodes[b]) for node in path)
        assert [int(parents[b, node]) for node in path] == ([-1] + path[:-1])[:d]
        assert res.tokens[b, :d].tolist() == [int(tokens[b, node]) for node in path]
        assert 0 <= int(res.tokens[b, d]) < vocab and res.tokens[b, d + 1:].tolist() == [-1] * (d_max - d)
    greedy = temperature == 0
    for a, b in zip(res, token, strict=True):  # greedy rows: the token rule's argmax walk
        assert torch.equal(a[greedy], b[greedy])


def test_point_mass_rows_without_mass_and_out_of_range_tokens(device):
    target, _, tokens, parents, num_nodes = _random_trees(30, 7, 5, seed=12, device=device)
    tokens[::4, 0] = 9
    tokens[1::4, 2] = -1
    target[::3] = float("-inf")  # rows without mass: the next token is uniform
    res = specsampler.verify_tree(target, tokens, parents, num_nodes=num_nodes, seed=1, method="traversal")
    accepted = res.path.clamp(min=0).gather(1, torch.zeros_like(res.path[:, :1]))
    assert not bool(((res.num_accepted > 0) & (tokens.gather(1, accepted)[:, 0] == 9)).any())
    emitted = res.tokens[res.tokens >= 0]
    assert bool((emitted < 5).all()) and not bool((res.tokens < -1).any())


def test_logprobs_are_the_targets_along_the_path(device):
    target, draft, tokens, parents, num_nodes = _random_trees(24, 8, 7, seed=13, device=device)
    temperature = torch.tensor([0.0, 0.8, 1.0] * 8, device=device)
    for method in ("token", "traversal"):
        res = specsampler.verify_tree(target, tokens, parents, draft, num_nodes=num_nodes, temperature=temperature,
                                      top_k=5, seed=2, method=method, backend="torch", return_logprobs=True)
        rows = torch.cat([torch.zeros_like(res.path[:, :1]), res.path.clamp(min=-1) + 1], dim=1)
        scores = torch.stack([target[b, rows[b]] for b in range(24)])
        want = emitted_logprobs(scores, res.tokens, res.num_accepted, temperature,
                                specsampler.torch_backend.Warp(5, 1.0, float("-inf")), False)
        assert torch.allclose(res.logprobs, want) and bool((res.logprobs <= 0).all())
        past = torch.arange(res.tokens.shape[1], device=device)[None, :] > res.num_accepted[:, None]
        assert bool((res.logprobs[past] == 0).all()) and bool((res.logprobs[~past] < 0).any())


def test_bad_rules_are_refused_by_name():
    target = torch.randn(2, 3, 10)
    tokens = torch.zeros(2, 2, dtype=torch.int64)
    parents = torch.tensor([[-1, 0]] * 2)
    with pytest.raises(ValueError, match="method"):
        specsampler.verify_tree(target, tokens, parents, method="block")
    with pytest.raises(ValueError, match="draft_sampling"):
        specsampler.verify_tree(target, tokens, parents, draft_sampling="top")
    with pytest.raises(TypeError, match="return_logprobs"):
        specsampler.verify_tree(target, tokens, parents, return_logprobs=1)


def test_no_nodes_and_empty_batches(device):
    """N = 0: the next token from p at the root; B = 0: empty outputs (logprobs too)."""
    none = torch.empty(3, 0, dtype=torch.int64, device=device)
    target = torch.full((3, 1, 6), float("-inf"), device=device)
    target[:, 0, 4] = 0.0  # p is the point mass at 4
    for draft in (None, torch.randn(3, 1, 6, device=device)):
        for sampling in ("iid", "without_replacement"):
            res = specsampler.verify_tree(target, none, none, draft, seed=0, method="traversal",
                                          draft_sampling=sampling, return_logprobs=True)
            assert res.tokens.tolist() == [[4]] * 3 and res.num_accepted.tolist() == [0] * 3
            assert tuple(res.path.shape) == (3, 0) and res.logprobs.tolist() == [[0.0]] * 3
    empty = specsampler.verify_tree(torch.randn(0, 3, 6, device=device), none[:0, :2].new_empty(0, 2),
                                    none.new_empty(0, 2), max_depth=2, method="traversal", return_logprobs=True)
    assert [tuple(t.shape) for t in empty] == [(0, 3), (0,), (0, 2), (0, 3)]
