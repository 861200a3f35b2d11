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
