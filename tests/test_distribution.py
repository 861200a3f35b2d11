"""Exactness in distribution: the emitted tokens follow p at every output position, for every sampling path.

Fixed p_t, q_t over a small vocabulary, many identical rows, drafts drawn from q_t. The token at output position i
(among rows that emit one there) must follow p_i: a chi-square test at significance ALPHA, fixed seeds (so each test
is deterministic). The mean number accepted must equal sum_i prod_{j<i} beta_j within 5 standard errors.
"""

import math

import pytest
import torch
from util import chi2_pvalue, expected_accepted

import specsampler
from specsampler import torch_backend
from specsampler.torch_backend.sample import draw_row

ALPHA = 1e-4
# p_t [K+1, V] and q_t [K, V]: a token the target gives 0 that the draft likes (x=4 at t=0), tokens the draft gives 0
# that the target likes (x=0 at t=2), and p_3 = q_... nowhere equal, so every branch runs.
P = torch.tensor([
    [0.40, 0.30, 0.20, 0.10, 0.00],
    [0.10, 0.20, 0.30, 0.20, 0.20],
    [0.30, 0.05, 0.40, 0.20, 0.05],
    [0.25, 0.25, 0.25, 0.15, 0.10],
])
Q = torch.tensor([
    [0.10, 0.10, 0.30, 0.20, 0.30],
    [0.30, 0.30, 0.20, 0.10, 0.10],
    [0.00, 0.05, 0.60, 0.15, 0.20],
])


def _rows(n_rows, temperature, seed, one_hot=False, ragged=False):
    g = torch.Generator().manual_seed(seed)
    k = Q.shape[0]
    logits = torch.log(P) * temperature  # softmax(logits / T) = P
    draft = torch.log(Q) * temperature
    if one_hot:  # a deterministic drafter: always proposes token 2
        drafts = torch.full((n_rows, k), 2)
    else:
        drafts = torch.multinomial(Q, n_rows, replacement=True, generator=g).T.contiguous()
    nd = torch.randint(0, k + 1, (n_rows,), generator=g) if ragged else None
    return (logits.expand(n_rows, -1, -1).contiguous(), drafts,
            None if one_hot else draft.expand(n_rows, -1, -1).contiguous(), nd)


def _one_hot_q():
    """q of a drafter that always proposes token 2."""
    q = torch.zeros_like(Q)
    q[:, 2] = 1.0
    return q


def _check(tokens, n, nd, q):
    """Chi-square at every output position; mean accepted against the formula."""
    k = Q.shape[0]
    for i in range(k + 1):
        emitted = n >= i
        if nd is not None:
            emitted &= nd >= i
        counts = torch.bincount(tokens[emitted, i], minlength=P.shape[1])
        assert int(emitted.sum()) > 0
        p_value = chi2_pvalue(counts, P[i])
        assert p_value > ALPHA, f"position {i}: counts {counts.tolist()} vs p {P[i].tolist()}, p-value {p_value}"
    if nd is None:
        mean, se = n.double().mean(), n.double().std() / math.sqrt(n.numel())
        assert abs(float(mean) - expected_accepted(P, q)) < 5 * float(se) + 1e-9


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("vectorized", [False, True], ids=["per-row", "batched"])
def test_torch_backend_follows_p(temperature, vectorized):
    target, drafts, draft, _ = _rows(20000, temperature, seed=1)
    tokens, n = torch_backend.verify_token(target, drafts, draft, None, temperature, 7, vectorized=vectorized)
    _check(tokens, n, None, Q)


@pytest.mark.parametrize("vectorized", [False, True], ids=["per-row", "batched"])
def test_torch_backend_one_hot_and_ragged(vectorized):
    target, drafts, _, nd = _rows(20000, 1.0, seed=2, one_hot=True, ragged=True)
    tokens, n = torch_backend.verify_token(target, drafts, None, nd, 1.0, 11, vectorized=vectorized)
    _check(tokens, n, nd, None)
    # One-hot q: x_t is accepted with probability p_t(x_t), so E[n] = sum_i prod_{j<i} p_j(2) over full rows.
    full = nd == Q.shape[0]
    mean, se = n[full].double().mean(), n[full].double().std() / math.sqrt(int(full.sum()))
    assert abs(float(mean) - expected_accepted(P, _one_hot_q())) < 5 * float(se)


def test_torch_backend_from_probs():
    target, drafts, draft, _ = _rows(20000, 1.0, seed=3)
    res = specsampler.verify_probs(target.softmax(-1), drafts, draft.softmax(-1), seed=5, backend="torch")
    _check(res.tokens, res.num_accepted, None, Q)


def test_kernel_follows_p(device):
    """The kernel with its own Philox numbers (the interpreter is slow: fewer rows on the CPU)."""
    n_rows = 100000 if device.type == "cuda" else 240
    target, drafts, draft, _ = _rows(n_rows, 1.0, seed=4)
    res = specsampler.verify(target.to(device), drafts.to(device), draft.to(device), seed=99, backend="triton")
    _check(res.tokens.cpu(), res.num_accepted.cpu(), None, Q)


def test_kernel_from_probs_one_hot_follows_p(device):
    n_rows = 100000 if device.type == "cuda" else 240
    target, drafts, _, _ = _rows(n_rows, 1.0, seed=6, one_hot=True)
    res = specsampler.verify_probs(target.softmax(-1).to(device), drafts.to(device), seed=3, backend="triton")
    _check(res.tokens.cpu(), res.num_accepted.cpu(), None, _one_hot_q())


def _broken_draft_rows(n_rows, seed):
    """Drafts from Q, but on every other row the draft logit of the drafted token at t = 1 is -inf or NaN (q = 0
    there): such a position is one-hot at its token, and the output must still follow p."""
    target, drafts, draft, _ = _rows(n_rows, 1.0, seed=seed)
    broken = torch.arange(n_rows) % 2 == 0
    rows = torch.arange(n_rows)[broken]
    values = torch.where(rows % 4 == 0, float("-inf"), float("nan"))
    draft[rows, 1, drafts[rows, 1]] = values
    return target, drafts, draft


@pytest.mark.parametrize("vectorized", [False, True], ids=["per-row", "batched"])
def test_torch_backend_follows_p_with_a_broken_draft(vectorized):
    target, drafts, draft = _broken_draft_rows(20000, seed=12)
    tokens, n = torch_backend.verify_token(target, drafts, draft, None, 1.0, 13, vectorized=vectorized)
    _check_positions(tokens, n)


def test_kernel_follows_p_with_a_broken_draft(device):
    n_rows = 100000 if device.type == "cuda" else 240
    target, drafts, draft = _broken_draft_rows(n_rows, seed=14)
    res = specsampler.verify(target.to(device), drafts.to(device), draft.to(device), seed=15, backend="triton")
    _check_positions(res.tokens.cpu(), res.num_accepted.cpu())


def _check_positions(tokens, n):
    """Chi-square of the token at every output position against p (no formula for E[n] with mixed q)."""
    for i in range(Q.shape[0] + 1):
        counts = torch.bincount(tokens[n >= i, i], minlength=P.shape[1])
        p_value = chi2_pvalue(counts, P[i])
        assert p_value > ALPHA, f"position {i}: counts {counts.tolist()} vs p {P[i].tolist()}, p-value {p_value}"


# The CPU's inverse CDF walks the vocabulary in chunks (torch_backend.sample._CHUNK): mass on both sides of every chunk
# boundary, in the tail past the last full chunk, and whole chunks without mass.
_V_CHUNKED = 1100
_HEAVY = [0, 255, 256, 511, 1023, 1024, 1099]


def _chunked_dist():
    dist = torch.zeros(_V_CHUNKED)
    dist[_HEAVY] = torch.tensor([3.0, 1.0, 2.0, 1.5, 0.5, 2.5, 1.0])
    dist[300:400] = 0.01  # a light band; ids 512..1022 (two chunks) have no mass
    return dist


def test_cpu_inverse_cdf_follows_dist():
    dist = _chunked_dist()
    g = torch.Generator().manual_seed(8)
    uniforms = torch.rand(20000, generator=g).tolist()
    ids = torch.tensor([draw_row(dist, u, None)[0] for u in uniforms])
    assert bool((dist[ids] > 0).all()), "an id without mass was drawn"
    band = torch.zeros(_V_CHUNKED, dtype=torch.bool)
    band[300:400] = True
    cells = torch.cat([dist[_HEAVY], dist[band].sum()[None]])
    counts = torch.cat([torch.bincount(ids, minlength=_V_CHUNKED)[_HEAVY], band[ids].sum()[None]])
    assert int(counts.sum()) == ids.numel()
    p_value = chi2_pvalue(counts, cells / cells.sum())
    assert p_value > ALPHA, f"counts {counts.tolist()} vs {(cells / cells.sum()).tolist()}, p-value {p_value}"


def test_cpu_inverse_cdf_edges():
    dist = _chunked_dist()
    last_u = 1.0 - 2.0**-24  # the largest float32 uniform
    assert draw_row(dist, 0.0, None)[0] == 0
    assert draw_row(dist, last_u, None)[0] == 1099
    dist[1099] = 0.0  # the last id with mass is then 1024, the tail's first
    assert draw_row(dist, last_u, None)[0] == 1024
    dist[1024] = 0.0  # a tail without mass: the last id of chunk 3
    assert draw_row(dist, last_u, None)[0] == 1023
    token, total = draw_row(torch.zeros(_V_CHUNKED), 0.5, None)  # no mass: uniform
    assert (token, total) == (550, 0.0)
    dist[7] = float("nan")
    assert math.isnan(draw_row(dist, 0.5, None)[1])
    for vocab in (1, 7, 256, 512):  # no tail, or nothing but the tail
        assert draw_row(torch.ones(vocab), last_u, None)[0] == vocab - 1
