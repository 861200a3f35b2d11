"""The Triton path of ``specsampler.verify_tree`` (``triton_kernels/tree_kernel.py``) against the torch oracle
(``specsampler.torch_backend.tree``).

Token for token on identical hooks (uniforms [B, N], noise [B, V]): i.i.d., point-mass and mixed candidates, ragged
trees, greedy rows beside sampled ones, the warpers, Vd < V, out-of-range tokens, a chain, wide and deep trees, odd V,
max_depth, two tile widths, and a chain is token verification (``verify``'s kernel on the same hooks). With the
kernel's own Philox numbers: the same seed gives the same tokens, and the first emitted token follows p (chi-square at
ALPHA on fixed small trees: the interpreter allows few rows). CUDA graph capture runs on CUDA only.
"""

import pytest
import torch
import tree_toys as toys
from util import chi2_pvalue

import specsampler
from specsampler import _testing

ALPHA = 1e-4
WIDE_DEEP = [-1, -1, -1, 0, 0, 1, 3, 3, 4, 6, 9, 9]  # 3 root children, depth 5
pytestmark = pytest.mark.usefixtures("one_thread")


def _tree_case(batch, parents, vocab, *, seed, draft_vocab=None, spread=2.0, noise=0.7):
    """target [B, N+1, V], tokens [B, N] (each node drawn from its parent's draft row), parents [B, N], draft
    [B, N+1, Vd]: a draft close to the target, so that paths are accepted."""
    g = torch.Generator().manual_seed(seed)
    n = len(parents)
    vd = draft_vocab or vocab
    target = torch.randn(batch, n + 1, vocab, generator=g) * spread
    draft = target[..., :vd] + torch.randn(batch, n + 1, vd, generator=g) * noise
    par = torch.tensor(parents, dtype=torch.int64)
    q = torch.softmax(draft[:, par + 1], dim=-1) if n else torch.ones(batch, 0, vd)
    tokens = torch.multinomial(q.reshape(-1, vd), 1, generator=g).reshape(batch, n) if n else \
        torch.empty(batch, 0, dtype=torch.int64)
    return target, tokens, par.expand(batch, n).clone(), draft


def _hooks(batch, n, vocab, seed=123):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, generator=g), torch.empty(batch, vocab).exponential_(generator=g)


def _compare(device, target, tokens, parents, draft, **options):
    """The kernel and the oracle on the same hooks: tokens, num_accepted and path equal; returns the kernel's."""
    batch, n_plus_1, vocab = target.shape
    u, e = _hooks(batch, n_plus_1 - 1, vocab)
    moved = [None if x is None else x.to(device) for x in (target, tokens, parents, draft, u, e)]
    options = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    options.setdefault("seed", 0)
    results = [_testing.verify_tree_with_hooks(*moved[:4], _uniforms=moved[4], _noise=moved[5], backend=backend,
                                               **options) for backend in ("torch", "triton")]
    for want, got in zip(*results, strict=True):
        assert torch.equal(want.cpu(), got.cpu()), (results[0], results[1])
    return results[1]


def test_iid_wide_deep_odd_vocab(device):
    res = _compare(device, *_tree_case(7, WIDE_DEEP, 257, seed=1))
    assert int(res.num_accepted.sum()) > 0 and int(res.num_accepted.max()) >= 2


def test_point_mass_candidates(device):
    target, _, parents, _ = _tree_case(6, WIDE_DEEP, 50, seed=2)
    # The target's top tokens per parent, a distinct one per sibling (deterministic candidates), one duplicate.
    order = target.argsort(dim=-1, descending=True)
    tokens = torch.stack([order[:, a + 1, sum(1 for j in range(i) if WIDE_DEEP[j] == a)]
                          for i, a in enumerate(WIDE_DEEP)], dim=1)
    tokens[:, 2] = tokens[:, 1]  # a sibling repeating a token: rejected for sure once its twin was
    res = _compare(device, target, tokens, parents, None)
    assert int(res.num_accepted.sum()) > 0


def test_mixed_candidates_draft_gives_no_probability(device):
    target, tokens, parents, draft = _tree_case(6, WIDE_DEEP, 64, seed=3)
    for i in (1, 4, 7):  # the draft gives these children's tokens nothing: point masses among i.i.d. siblings
        a = WIDE_DEEP[i]
        draft[torch.arange(6), a + 1, tokens[:, i]] = float("-inf")
    draft[0, 0] = float("nan")  # a NaN row reads as -inf: every root child of row 0 a point mass
    _compare(device, target, tokens, parents, draft)


def test_ragged_num_nodes(device):
    target, tokens, parents, draft = _tree_case(5, WIDE_DEEP, 40, seed=4)
    _compare(device, target, tokens, parents, draft, num_nodes=torch.tensor([0, 12, 3, 7, 1]))
    _compare(device, target, tokens, parents, None, num_nodes=[12, 0, 5, 2, 9])


def test_greedy_rows_beside_sampled_ones(device):
    target, tokens, parents, draft = _tree_case(6, WIDE_DEEP, 40, seed=5)
    tokens[:, 1] = target[:, 0].argmax(dim=-1)  # greedy rows follow the root's second child
    tokens[:, 5] = target[:, 2].argmax(dim=-1)
    res = _compare(device, target, tokens, parents, draft, temperature=torch.tensor([0.0, 0.7, 0.0, 1.3, 0.0, 1.0]))
    assert res.num_accepted[[0, 2, 4]].min() >= 1
    _compare(device, target, tokens, parents, draft, temperature=0.0)


def test_bfloat16_scores_and_int32_trees(device):
    target, tokens, parents, draft = _tree_case(3, WIDE_DEEP[:8], 64, seed=16)
    _compare(device, target.bfloat16(), tokens.int(), parents.int(), draft.half())


@pytest.mark.parametrize("warpers", [dict(top_k=5), dict(top_p=0.8, temperature=0.8), dict(min_p=0.1),
                                     dict(top_k=torch.tensor([3, 0, 8]), top_p=0.9, min_p=0.02)])
def test_warpers(device, warpers):
    _compare(device, *_tree_case(3, WIDE_DEEP[:6], 48, seed=6, spread=1.5), **warpers)


def test_smaller_draft_vocabulary_and_out_of_range_tokens(device):
    target, tokens, parents, draft = _tree_case(5, WIDE_DEEP, 70, seed=7, draft_vocab=50)
    tokens[0, 0] = -1
    tokens[1, 3] = 70
    tokens[2, 1] = 10**6
    _compare(device, target, tokens, parents, draft)


def test_chain_and_max_depth(device):
    chain = list(range(-1, 6))
    _compare(device, *_tree_case(5, chain, 33, seed=8, noise=0.3))
    _compare(device, *_tree_case(5, chain, 33, seed=8, noise=0.3), max_depth=3)
    target, tokens, parents, draft = _tree_case(4, WIDE_DEEP, 33, seed=9, noise=0.3)
    _compare(device, target, tokens, parents, draft, max_depth=2, seed=torch.arange(4))


def test_no_nodes(device):
    """N = 0: the next token from p at the root."""
    res = _compare(device, *_tree_case(3, [], 20, seed=10))
    assert res.tokens.shape == (3, 1) and res.num_accepted.tolist() == [0, 0, 0] and res.path.shape == (3, 0)


@pytest.mark.parametrize("block_v", [16, 64])
def test_launch_configurations(device, block_v):
    """The launcher's tile width changes no token (the oracle on the same hooks)."""
    from specsampler.triton_kernels import verify_tree_rows

    target, tokens, parents, draft = _tree_case(3, WIDE_DEEP[:8], 100, seed=11)
    u, e = _hooks(3, 8, 100)
    want = _testing.verify_tree_with_hooks(target, tokens, parents, draft, _uniforms=u, _noise=e, backend="torch",
                                           seed=0)
    got = verify_tree_rows(*(x.to(device) for x in (target, tokens, parents, draft)), None, 1.0, 5, None,
                           want.path.shape[1], u.to(device), e.to(device), block_v=block_v)
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b.cpu())


def test_chain_is_token_verification_on_the_same_numbers(device):
    """On the same injected numbers a chain gives verify's kernel's tokens (K drafts, one more draft row for the
    tree); with the kernel's own Philox the same seed gives the same tokens twice (verify_tree draws from its own
    stream of a seed, so verify on that seed draws other numbers: tests/test_edges_exact.py)."""
    target, tokens, parents, draft = _tree_case(5, list(range(-1, 3)), 40, seed=12, noise=0.5)
    u, e = _hooks(5, 4, 40)
    target, tokens, parents, draft, u, e = (x.to(device) for x in (target, tokens, parents, draft, u, e))
    want = _testing.verify_with_hooks(target, tokens, draft[:, :4], _uniforms=u, _noise=e, seed=77, backend="triton")
    got = _testing.verify_tree_with_hooks(target, tokens, parents, draft, _uniforms=u, _noise=e, seed=77,
                                          backend="triton", max_depth=4)
    assert torch.equal(want.tokens, got.tokens) and torch.equal(want.num_accepted, got.num_accepted)
    first = specsampler.verify_tree(target, tokens, parents, draft, seed=77, backend="triton", max_depth=4)
    again = specsampler.verify_tree(target, tokens, parents, draft, seed=77, backend="triton", max_depth=4)
    assert torch.equal(first.tokens, again.tokens)


@pytest.mark.parametrize("iid", [True, False])
def test_first_token_follows_p(device, iid):
    """The first emitted token of each row against p at the root, over rows with fresh candidates each (i.i.d.
    draws from the draft, or the draft's top-2 tokens), one call with the kernel's own Philox numbers (96 rows on
    the CPU, 8192 on CUDA)."""
    rows, vocab = (96 if device.type == "cpu" else 8192), 5  # (the interpreter: ~0.1 s a row)
    g = torch.Generator().manual_seed(13)
    base = torch.tensor([1.0, 0.3, -0.2, 0.6, -1.0])
    target = base.expand(rows, 4, vocab).clone() + torch.randn(rows, 4, vocab, generator=g) * 0.3
    target[:, 0] = base  # the same root distribution for every row
    draft = target.clone()
    draft[:, 0] = torch.tensor([-0.5, 1.0, 0.4, -0.3, 0.2])
    parents = torch.tensor([[-1, -1, 0]]).expand(rows, 3).clone()
    if iid:
        tokens = torch.multinomial(torch.softmax(draft[:, parents[0] + 1], dim=-1).reshape(-1, vocab), 1,
                                   generator=g).reshape(rows, 3)
    else:
        tokens = torch.tensor([[1, 2, 0]]).expand(rows, 3).clone()
    res = specsampler.verify_tree(target.to(device), tokens.to(device), parents.to(device),
                                  draft.to(device) if iid else None, seed=2024, backend="triton", max_depth=2)
    counts = torch.bincount(res.tokens[:, 0].cpu(), minlength=vocab).double()
    assert chi2_pvalue(counts, torch.softmax(base.double(), dim=0)) > ALPHA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs CUDA")
def test_cuda_graph_capture_with_max_depth():
    device = torch.device("cuda")
    target, tokens, parents, draft = (x.to(device) for x in _tree_case(4, WIDE_DEEP, 1000, seed=14))
    seeds = torch.arange(4, device=device)
    eager = specsampler.verify_tree(target, tokens, parents, draft, seed=seeds, max_depth=5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = specsampler.verify_tree(target, tokens, parents, draft, seed=seeds, max_depth=5)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, captured, strict=True):
        assert torch.equal(a, b)


def test_a_residual_of_rounding_keeps_r(device):
    """A rejection whose residual holds at most RESIDUAL_EPS of the mass changes nothing (the oracle keeps r): an
    i.i.d. child with q a hair above p at its token (row 0; the kernel finds out in the race, and races again over
    p), a point mass on a token p gives 1 - 5e-7 (row 1)."""
    vocab = 20
    g = torch.Generator().manual_seed(15)
    target = torch.randn(2, 3, vocab, generator=g)
    target[1, 0] = torch.log(torch.tensor(5e-7 / (vocab - 1)))
    target[1, 0, 3] = 0.0
    e = torch.empty(2, vocab).exponential_(generator=g)
    winner = (torch.softmax(target[:, 0], dim=-1) / e).argmax(-1)
    draft = target.clone()
    tokens = torch.tensor([[int(winner[0]), 5], [3, 5]])  # (without r kept, neither row could emit p's winner)
    draft[0, 0, tokens[0, 0]] += 1e-6  # q(x) a hair above p(x): rejected with u close to 1, residual ~3e-7
    draft[1, 0] = float("-inf")  # row 1's root children are point masses
    parents = torch.tensor([[-1, 0], [-1, 0]])
    u = torch.full((2, 2), 1.0 - 2.0**-24)
    moved = [x.to(device) for x in (target, tokens, parents, draft, u, e)]
    results = [_testing.verify_tree_with_hooks(*moved[:4], _uniforms=moved[4], _noise=moved[5], backend=backend,
                                               seed=0) for backend in ("torch", "triton")]
    for want, got in zip(*results, strict=True):
        assert torch.equal(want.cpu(), got.cpu()), results
    assert results[1].num_accepted.tolist() == [0, 0]
    # r kept: the next token is p's race winner
    assert results[1].tokens[:, 0].cpu().tolist() == winner.tolist()


# ------------------------------------------------------------ Traversal Verification and candidates without replacement
# (``triton_kernels/tree_traversal.py`` against ``specsampler.torch_backend.traversal`` on the same hooks)

RULES = [("traversal", "iid"), ("traversal", "without_replacement"), ("token", "without_replacement")]
RULE_IDS = ["trav-iid", "trav-wor", "token-wor"]


def _wor_case(batch, parents, vocab, *, seed, spread=2.0, noise=0.7):
    """:func:`_tree_case` with each node's children drawn without replacement (Gumbel-top-k order of its parent's
    draft row), so that siblings hold distinct tokens."""
    target, _, par, draft = _tree_case(batch, parents, vocab, seed=seed, spread=spread, noise=noise)
    g = torch.Generator().manual_seed(seed + 1000)
    keys = draft + torch.empty(draft.shape).exponential_(generator=g).log().neg()  # [B, N+1, V] Gumbel keys
    order = keys.argsort(dim=-1, descending=True)
    rank = [sum(1 for j in range(i) if parents[j] == a) for i, a in enumerate(parents)]
    tokens = torch.stack([order[:, a + 1, r] for a, r in zip(parents, rank, strict=True)], dim=1) if parents else \
        torch.empty(batch, 0, dtype=torch.int64)
    return target, tokens, par, draft


@pytest.mark.parametrize("warpers", [{}, dict(top_k=4, temperature=0.9), dict(top_p=0.8)], ids=["plain", "top-k",
                                                                                                "top-p"])
@pytest.mark.parametrize("method,sampling", RULES, ids=RULE_IDS)
def test_rules_match_the_oracle(device, method, sampling, warpers):
    """Traversal and the token rule without replacement, token for token against the torch oracle: children drawn
    i.i.d. (duplicates among siblings: point masses once removed) or without replacement, plain and warped."""
    make = _wor_case if sampling == "without_replacement" else _tree_case
    res = _compare(device, *make(4, WIDE_DEEP[:9], 24, seed=20), method=method, draft_sampling=sampling, **warpers)
    assert int(res.num_accepted.max()) >= 1


@pytest.mark.parametrize("method,sampling", RULES, ids=RULE_IDS)
def test_rules_ragged_greedy_point_masses_and_bad_tokens(device, method, sampling):
    """Ragged rows, greedy rows beside sampled ones, a draft that gives some children nothing (point masses among
    draws), out-of-range tokens, point-mass trees (no draft logits), a row of no mass, max_depth."""
    target, tokens, parents, draft = _wor_case(6, WIDE_DEEP, 20, seed=21)
    draft[torch.arange(6), 1, tokens[:, 3]] = float("-inf")  # node 3's token: nothing under its parent's draft row
    tokens[4, 6] = 20  # row 4's nodes end at node 6
    target[5] = float("-inf")  # row 5 has no mass: its next token is uniform
    options = dict(method=method, draft_sampling=sampling, num_nodes=torch.tensor([12, 0, 5, 9, 12, 3]),
                   temperature=torch.tensor([1.0, 0.8, 0.0, 1.2, 0.0, 1.0]))
    res = _compare(device, target, tokens, parents, draft, **options)
    assert int(res.num_accepted.max()) >= 2
    _compare(device, target, tokens, parents, None, **options)
    _compare(device, target, tokens, parents, draft, max_depth=2, **options)


def test_traversal_log_probabilities(device):
    """return_logprobs on the kernel's traversal: the oracle's tokens and log-probabilities (computed from the same
    outputs), greedy and warped rows."""
    target, tokens, parents, draft = _wor_case(4, WIDE_DEEP[:8], 30, seed=22)
    u, e = _hooks(4, 8, 30)
    options = dict(method="traversal", draft_sampling="without_replacement", top_k=6, return_logprobs=True, seed=0,
                   temperature=torch.tensor([0.0, 0.7, 1.0, 1.3], device=device))
    moved = [x.to(device) for x in (target, tokens, parents, draft, u, e)]
    want, got = (_testing.verify_tree_with_hooks(*moved[:4], _uniforms=moved[4], _noise=moved[5], backend=backend,
                                                 **options) for backend in ("torch", "triton"))
    for a, b in zip(want[:3], got[:3], strict=True):
        assert torch.equal(a, b)
    assert torch.allclose(want.logprobs, got.logprobs) and bool((got.logprobs[:, 0] < 0).all())


@pytest.mark.parametrize("case", ["sampled", "ragged-warped", "one-hot"])
def test_kernel_traversal_of_a_chain_is_kernel_block_verification(device, case):
    """On the same injected numbers, a chain's traversal (without replacement too: one child per node) gives what
    verify(method="block") gives on the kernel, token for token."""
    batch, k, vocab = 12, 4, 29
    target, drafts, draft, u, e = toys.chain_case(batch, k, vocab, seed=23, one_hot=case == "one-hot")
    options = {}
    if case == "ragged-warped":
        options = dict(num_draft_tokens=torch.tensor([0, 1, 2, 3, 4, 4] * 2), temperature=0.8, top_k=8, top_p=0.9)
    on = {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in options.items()}
    target, drafts, u, e = (x.to(device) for x in (target, drafts, u, e))
    draft = None if draft is None else draft.to(device)
    want = _testing.verify_with_hooks(target, drafts, draft, _uniforms=u, _noise=e, backend="triton", method="block",
                                      **on)
    if "num_draft_tokens" in on:
        on["num_nodes"] = on.pop("num_draft_tokens")
    parents = torch.arange(-1, k - 1, device=device).expand(batch, k).contiguous()
    tree_draft = None if draft is None else torch.cat([draft, torch.zeros_like(draft[:, :1])], dim=1)
    for sampling in ("iid", "without_replacement"):
        got = _testing.verify_tree_with_hooks(target, drafts, parents, tree_draft, _uniforms=u, _noise=e, seed=0,
                                              max_depth=k, method="traversal", draft_sampling=sampling,
                                              backend="triton", **on)
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.num_accepted, want.num_accepted)
    assert len(set(want.num_accepted.tolist())) >= 2


def test_traversal_first_token_follows_p(device):
    """The first emitted token of each row against p at the root, traversal on children drawn without replacement
    (fresh draws per row), the kernel's own Philox numbers (96 rows on the CPU, 8192 on CUDA), chi-square at ALPHA."""
    rows, vocab = (96 if device.type == "cpu" else 8192), 5  # (the interpreter: ~0.1 s a row)
    g = torch.Generator().manual_seed(24)
    base = torch.tensor([1.0, 0.3, -0.2, 0.6, -1.0])
    target = base.expand(rows, 4, vocab).clone() + torch.randn(rows, 4, vocab, generator=g) * 0.3
    target[:, 0] = base  # the same root distribution for every row
    draft = target.clone()
    draft[:, 0] = torch.tensor([-0.5, 1.0, 0.4, -0.3, 0.2])
    parents = torch.tensor([[-1, -1, 0]]).expand(rows, 3).clone()
    keys = draft[:, parents[0] + 1] + torch.empty(rows, 3, vocab).exponential_(generator=g).log().neg()
    first_two = keys[:, 0].topk(2, dim=-1).indices  # the root's children: Gumbel-top-2 of its draft row
    tokens = torch.stack([first_two[:, 0], first_two[:, 1], keys[:, 2].argmax(-1)], dim=1)
    res = specsampler.verify_tree(target.to(device), tokens.to(device), parents.to(device), draft.to(device),
                                  seed=2025, backend="triton", max_depth=2, method="traversal",
                                  draft_sampling="without_replacement")
    counts = torch.bincount(res.tokens[:, 0].cpu(), minlength=vocab).double()
    assert chi2_pvalue(counts, torch.softmax(base.double(), dim=0)) > ALPHA


def test_auto_runs_traversal_on_the_kernel_on_cuda(device):
    """backend="auto" runs traversal and the without-replacement token rule on the kernel on CUDA, on torch
    elsewhere."""
    from specsampler.triton_kernels import tree_traversal

    target, tokens, parents, draft = (x.to(device) for x in _wor_case(2, WIDE_DEEP[:4], 16, seed=25))
    for method in ("traversal", "token"):
        with _testing.recorded_launches() as launches:
            specsampler.verify_tree(target, tokens, parents, draft, seed=0, method=method,
                                    draft_sampling="without_replacement", max_depth=3)
        ran = [r["kernel"] for r in launches]
        assert (tree_traversal._traversal_kernel in ran) == (device.type == "cuda"), ran
