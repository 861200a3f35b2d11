"""Sampling warpers (top_k, top_p, min_p) of `verify` and `sample`, on the torch backend.

- The kept sets equal transformers' TemperatureLogitsWarper + TopK/TopP/MinPLogitsWarper on rows without ties at a
  cut (rows are redrawn until every cut is clear of the nearest logit by a stated margin, in float64).
- The tie rule on hand-built rows: every logit equal to the top-k or top-p boundary is kept.
- Exactness in distribution: the token at every output position follows the warped target (a float64 reference of
  the rule below, not the backend's own mask), chi-square at significance ALPHA with fixed seeds, whether the drafts
  come from the warped draft, the unwarped draft (the one-hot rule for q(x) = 0) or a one-hot drafter.
- A property suite: no emitted or accepted token ever lies outside its row's warped support.
- `sample`, and the validation of the three options through `verify` and `sample`.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import check_structure, chi2_pvalue, make_case

import specsampler
from specsampler import torch_backend
from specsampler._testing import sample_with_hooks, verify_with_hooks
from specsampler._validation import warp_options as _warp
from specsampler.torch_backend import warp_scores

ALPHA = 1e-4  # as tests/test_distribution.py
# Rows compared with transformers keep every cumulative mass fraction this far from top_p (float32 sums of up to 8193
# terms are off by ~1e-6), and every scaled logit (l - max) / T this far from ln(min_p).
P_MARGIN, M_MARGIN = 2e-5, 1e-4
INF = float("inf")


# ---------------------------------------------------------------------------------------------------------------------
# A float64 reference of the rule (torch_backend's docstring) and helpers


def _reference_keep(row: torch.Tensor, temperature: float, top_k=None, top_p=None, min_p=None):
    """The kept set of one row [V] by the documented rule, in float64, and whether its cuts are clear: the smallest
    distance between a cumulative mass fraction and top_p is above P_MARGIN, and between a scaled logit (l - max) / T
    and ln(min_p) above M_MARGIN (always clear where an option is off). Top-k needs no margin: its comparison is
    exact."""
    logits = row.double().cpu()
    vocab = logits.shape[0]
    keep = logits > -INF
    top = logits.max()
    clear = True
    if top_k and top_k < vocab:
        keep &= logits >= logits.sort(descending=True).values[top_k - 1]
    if top_p is not None and top_p < 1.0:
        w = torch.where(keep, torch.exp((logits - top) / temperature), 0.0)
        order = torch.argsort(logits, descending=True, stable=True)
        frac = w[order].cumsum(0) / w.sum()
        first = int(torch.nonzero(frac >= top_p)[0]) if bool((frac >= top_p).any()) else vocab - 1
        keep &= logits >= logits[order[first]]
        live = w[order] > 0
        clear &= float((frac[live] - top_p).abs().min()) > P_MARGIN
    if min_p is not None and min_p > 0.0:
        cut = math.log(min_p)
        scaled = (logits - top) / temperature
        keep &= scaled >= cut
        finite = logits > -INF
        if min_p < 1.0:
            clear &= float((scaled[finite] - cut).abs().min()) > M_MARGIN
    return keep, clear


def _reference_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """[R, V] logits -> [R, V] float64 warped probabilities (softmax of the kept logits / T)."""
    out = []
    for row in logits:
        keep, _ = _reference_keep(row, temperature, top_k, top_p, min_p)
        scaled = torch.where(keep, row.double().cpu() / temperature, -INF)
        out.append(torch.softmax(scaled, dim=0))
    return torch.stack(out)


def _mask(logits: torch.Tensor, temperature, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """The backend's kept set of [B, V] logits: warp_scores(...) > -inf, options validated as verify() does."""
    batch = logits.shape[0]
    temperature = temperature.float() if isinstance(temperature, torch.Tensor) else float(temperature)
    warp = _warp(top_k, top_p, min_p, temperature, batch, logits.device)
    if warp is None:
        return logits > -INF
    return warp_scores(logits[:, None, :], temperature, warp)[:, 0] > -INF


def _hf_mask(scores: torch.Tensor, temperature: float, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """transformers' warpers in `generate`'s order: temperature, top-k, top-p, min-p."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p:
        warpers.append(MinPLogitsWarper(min_p))
    for warper in warpers:
        scores = warper(None, scores)
    return scores > -INF


# ---------------------------------------------------------------------------------------------------------------------
# 1. Kept sets equal transformers'


def _clear_rows(batch, vocab, temperatures, option, seed, scale=5.0):
    """[B, V] random float32 rows whose cuts under `option` are clear (see _reference_keep; rows redrawn)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        for _ in range(200):
            row = torch.randn(vocab, generator=g) * scale
            if _reference_keep(row, temperatures[b], **option)[1]:
                rows.append(row)
                break
        else:
            raise AssertionError(f"no row clear of the cuts for {option} at T = {temperatures[b]}")
    return torch.stack(rows)


HF_OPTIONS = [
    dict(top_k=1), dict(top_k=40), dict(top_k=1000),
    dict(top_p=0.3), dict(top_p=0.9), dict(top_p=0.95),
    dict(min_p=0.05), dict(min_p=0.4),
    dict(top_k=100, top_p=0.8), dict(top_k=100, min_p=0.1), dict(top_p=0.9, min_p=0.05),
    dict(top_k=200, top_p=0.95, min_p=0.02), dict(top_k=5, top_p=0.5, min_p=0.3),
]


@pytest.mark.parametrize("option", HF_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("shape", [(7, 8193), (3, 50)], ids=["B7-V8193", "B3-V50"])
def test_kept_sets_equal_transformers(device, option, shape):
    batch, vocab = shape
    for temperature in (0.4, 1.0, 1.5):
        temps = [temperature] * batch
        logits = _clear_rows(batch, vocab, temps, option, seed=int(temperature * 10) + vocab).to(device)
        ours = _mask(logits, temperature, **option)
        theirs = _hf_mask(logits, temperature, **option)
        assert torch.equal(ours, theirs), (temperature, ours.sum(1).tolist(), theirs.sum(1).tolist())
        # the float64 reference agrees too (it is the oracle of the distribution tests below)
        ref = torch.stack([_reference_keep(row, temperature, **option)[0] for row in logits.cpu()])
        assert torch.equal(ours.cpu(), ref)


@pytest.mark.parametrize("option", [dict(top_k=40, top_p=0.9, min_p=0.05), dict(top_p=0.7), dict(min_p=0.2)],
                         ids=["all", "top_p", "min_p"])
def test_kept_sets_equal_transformers_with_per_row_temperature_and_options(device, option):
    """Per-row temperatures and per-row option tensors (same value everywhere): each row equals transformers with its
    own temperature, and the tensors give the same sets as the scalars."""
    batch, vocab = 7, 8193
    temps = [0.3, 0.6, 0.9, 1.0, 1.2, 1.4, 1.6]
    logits = _clear_rows(batch, vocab, temps, option, seed=17).to(device)
    t = torch.tensor(temps, device=device)
    per_row = {}
    for name, value in option.items():
        per_row[name] = torch.full((batch,), value, device=device,
                                   dtype=torch.int64 if name == "top_k" else torch.float32)
    ours = _mask(logits, t, **option)
    ours_rows = _mask(logits, t, **per_row)
    assert torch.equal(ours, ours_rows)
    for b in range(batch):
        theirs = _hf_mask(logits[b : b + 1], temps[b], **option)[0]
        assert torch.equal(ours[b], theirs), (b, int(ours[b].sum()), int(theirs.sum()))


def test_kept_sets_equal_transformers_half_precision(device):
    """bfloat16 / float16 logits: the same sets as transformers on the float32 upcast."""
    option = dict(top_k=300, top_p=0.9, min_p=0.01)
    for dtype in (torch.bfloat16, torch.float16):
        for seed in range(40):  # a row set whose cuts are clear after the rounding to dtype
            logits = _clear_rows(5, 8193, [0.8] * 5, option, seed=seed).to(dtype)
            if all(_reference_keep(row, 0.8, **option)[1] for row in logits.float()):
                break
        else:
            raise AssertionError(f"no {dtype} rows clear of the cuts")
        logits = logits.to(device)
        assert torch.equal(_mask(logits, 0.8, **option), _hf_mask(logits.float(), 0.8, **option))


def test_off_values_keep_everything(device):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 300, generator=g) * 3).to(device)
    logits[1, :100] = -INF
    everything = logits > -INF
    for option in (dict(top_k=0), dict(top_k=300), dict(top_k=301), dict(top_k=10**6), dict(top_p=1.0),
                   dict(min_p=0.0), dict(top_k=0, top_p=1.0, min_p=0.0),
                   dict(top_k=torch.tensor([0, 300, 5000, 0], device=device),
                        top_p=torch.ones(4, device=device), min_p=torch.zeros(4, device=device))):
        assert torch.equal(_mask(logits, 0.9, **option), everything), option


def test_huge_top_k_is_off_or_rejected_by_name(device):
    """top_k >= V is documented as off: a Python int past int64 must be off too (or a ValueError naming top_k), not
    an overflow from deep inside the backend."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 50, generator=g).to(device)
    expected = specsampler.sample(logits, seed=5, backend="torch")
    for top_k in (2**63 - 1, 2**63, 2**70):
        try:
            got = specsampler.sample(logits, top_k=top_k, seed=5, backend="torch")
        except ValueError as err:
            assert "top_k" in str(err)
        else:
            assert torch.equal(got, expected), top_k


# ---------------------------------------------------------------------------------------------------------------------
# 2. The tie rule on hand-built rows

LN_HALF = float(torch.tensor(math.log(0.5), dtype=torch.float32))
BELOW_LN_HALF = float(torch.nextafter(torch.tensor(LN_HALF), torch.tensor(-10.0)))
LN_HALF_T2 = float(torch.tensor(2.0 * math.log(0.5), dtype=torch.float32))
BELOW_LN_HALF_T2 = float(torch.nextafter(torch.tensor(LN_HALF_T2), torch.tensor(-10.0)))

# (logits, temperature, options, the kept ids)
TIES = [
    ([5, 4, 3, 3, 3, 1, 0], 1.0, dict(top_k=3), [0, 1, 2, 3, 4]),  # ties at the k-th largest: all kept
    ([5, 4, 3, 3, 3, 1, 0], 1.0, dict(top_k=2), [0, 1]),
    ([5, 4, 3, 3, 3, 1, 0], 1.0, dict(top_k=5), [0, 1, 2, 3, 4]),
    ([5, 4, 3, 3, 3, 1, 0], 1.0, dict(top_k=6), [0, 1, 2, 3, 4, 5]),
    ([2, 2, 2, 0], 1.0, dict(top_k=1), [0, 1, 2]),  # ties at the maximum
    # p = [.437, .161, .161, .161, .059, .022]: the mass reaches top_p inside the tie: all three kept
    ([2, 1, 1, 1, 0, -1], 1.0, dict(top_p=0.5), [0, 1, 2, 3]),
    ([2, 1, 1, 1, 0, -1], 1.0, dict(top_p=0.9), [0, 1, 2, 3]),
    ([2, 1, 1, 1, 0, -1], 1.0, dict(top_p=0.95), [0, 1, 2, 3, 4]),
    ([2, 1, 1, 1, 0, -1], 1.0, dict(top_p=0.43), [0]),
    ([1, 1, 0, 1, -2], 1.0, dict(top_p=0.1), [0, 1, 3]),  # the cut at the maximum, which is tied
    ([1, 3, 3, 2], 1.0, dict(top_p=0.0), [1, 2]),  # top_p = 0: the maximum and its ties
    ([0, 0, 0], 1.0, dict(top_p=0.0), [0, 1, 2]),
    ([1, 3, 3, 2], 0.7, dict(min_p=1.0), [1, 2]),  # min_p = 1: the maximum's ties only
    ([4, -1, 4, 3.999], 5.0, dict(min_p=1.0), [0, 2]),
    # top-p's mass is over the top-k set: p0 = .731 there (.605 over all)
    ([3, 2, 1, 0, 0, 0], 1.0, dict(top_k=2, top_p=0.7), [0]),
    ([3, 2, 1, 0, 0, 0], 1.0, dict(top_p=0.7), [0, 1]),
    ([2, 2, 2, 0], 1.0, dict(top_k=1, top_p=0.5), [0, 1, 2]),
    # tied top-k boundary, then top-p inside those ties
    ([3, 1, 1, 1, 1, -3], 1.0, dict(top_k=2, top_p=0.85), [0, 1, 2, 3, 4]),
    ([-INF, 1, 0, -INF], 1.0, dict(top_k=3), [1, 2]),  # fewer finite logits than k
    ([-INF, 1, 0, -INF], 1.0, dict(top_p=0.0, min_p=0.9), [1]),
]


@pytest.mark.parametrize("case", TIES, ids=[f"{i}-{'-'.join(c[2])}" for i, c in enumerate(TIES)])
def test_tie_rule(device, case):
    logits, temperature, option, kept = case
    row = torch.tensor([logits], dtype=torch.float32, device=device)
    expected = torch.zeros(len(logits), dtype=torch.bool)
    expected[kept] = True
    assert _mask(row, temperature, **option)[0].cpu().tolist() == expected.tolist()
    assert _reference_keep(row[0], temperature, **option)[0].tolist() == expected.tolist()
    # the same row 1 of a batch with per-row tensors, the other rows off (0 / 1.0 / 0)
    batch = torch.cat([torch.zeros_like(row), row, row])
    tensors = dict(top_k=torch.tensor([0, option.get("top_k", 0), 0], device=device),
                   top_p=torch.tensor([1.0, option.get("top_p", 1.0), 1.0], device=device),
                   min_p=torch.tensor([0.0, option.get("min_p", 0.0), 0.0], device=device))
    got = _mask(batch, temperature, **tensors).cpu()
    assert got[1].tolist() == expected.tolist()
    assert bool(got[0].all()) and got[2].tolist() == (row[0] > -INF).cpu().tolist()


@pytest.mark.parametrize("temperature,at,below", [(1.0, LN_HALF, BELOW_LN_HALF), (2.0, LN_HALF_T2, BELOW_LN_HALF_T2)])
def test_min_p_cut_is_inclusive_in_float32(device, temperature, at, below):
    """A logit exactly at the float32 cut max + float32(T ln min_p) is kept, the next float32 below it is not (the
    float64 reference would drop both: ln(0.5) rounds down in float32), with scalar or per-row options."""
    row = torch.tensor([[0.0, at, below, -5.0]], device=device)
    assert _mask(row, temperature, min_p=0.5)[0].tolist() == [True, True, False, False]
    per_row = torch.full((1,), 0.5, device=device)
    assert _mask(row, torch.full((1,), temperature, device=device), min_p=per_row)[0].tolist() == \
        [True, True, False, False]
    shifted = row + 3.0  # max 3: the cut is 3 + offset in float32
    cut = float(torch.tensor(3.0) + torch.tensor(at))
    shifted[0, 1], shifted[0, 2] = cut, float(torch.nextafter(torch.tensor(cut), torch.tensor(-10.0)))
    assert _mask(shifted, temperature, min_p=0.5)[0].tolist() == [True, True, False, False]


def test_tie_rule_in_samples(device):
    """Drawn tokens: every tie at a cut is drawn (all kept), nothing outside the kept set is."""
    n = 4000
    cases = [([2, 1, 1, 1, 0, -1], dict(top_p=0.5), [0, 1, 2, 3]),
             ([5, 4, 3, 3, 3, 1, 0], dict(top_k=3), [0, 1, 2, 3, 4]),
             ([1, 3, 3, 2], dict(top_p=0.0), [1, 2]),
             ([1, 3, 3, 2], dict(min_p=1.0), [1, 2])]
    for i, (logits, option, kept) in enumerate(cases):
        rows = torch.tensor([logits], dtype=torch.float32).expand(n, -1).contiguous().to(device)
        tokens = specsampler.sample(rows, temperature=1.0, **option, seed=100 + i, backend="torch").cpu()
        assert sorted(set(tokens.tolist())) == kept, (logits, option)


def test_per_row_tensors_with_off_rows(device):
    g = torch.Generator().manual_seed(9)
    base = (torch.randn(300, generator=g) * 2).to(device)
    logits = base.expand(6, -1).contiguous()
    top_k = torch.tensor([0, 7, 0, 0, 7, 0], device=device)
    top_p = torch.tensor([1.0, 1.0, 0.6, 1.0, 0.6, 0.0], device=device)
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.3, 0.3, 0.0], device=device)
    temps = torch.tensor([1.0, 0.8, 1.2, 0.9, 1.1, 0.7], device=device)
    got = _mask(logits, temps, top_k=top_k, top_p=top_p, min_p=min_p)
    singles = [dict(), dict(top_k=7), dict(top_p=0.6), dict(min_p=0.3), dict(top_k=7, top_p=0.6, min_p=0.3),
               dict(top_p=0.0)]
    for b, option in enumerate(singles):
        alone = _mask(logits[b : b + 1], float(temps[b]), **option)[0]
        assert torch.equal(got[b], alone), (b, option)
        assert torch.equal(got[b].cpu(), _reference_keep(base, float(temps[b]), **option)[0]), (b, option)
    assert bool(got[0].all())
    assert int(got[5].sum()) == 1 and int(got[5].float().argmax()) == int(base.argmax())


def test_greedy_rows_are_not_warped(device):
    g = torch.Generator().manual_seed(10)
    logits = (torch.randn(3, 1, 200, generator=g) * 2).to(device)
    temps = torch.tensor([0.0, 1.0, 0.0], device=device)
    warp = _warp(2, 0.1, 0.9, temps, 3, logits.device)
    out = warp_scores(logits, temps, warp)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert int((out[1] > -INF).sum()) < 200
    warp = _warp(2, 0.1, 0.9, 0.0, 3, logits.device)
    assert torch.equal(warp_scores(logits, 0.0, warp), logits)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Exactness in distribution through verify

V, K = 12, 2


def _base_logits():
    """Fixed target [K+1, V] and draft [K, V] logits (no ties)."""
    g = torch.Generator().manual_seed(20)
    target = torch.randn(K + 1, V, generator=g) * 1.6
    draft = target[:K] + 0.9 * torch.randn(K, V, generator=g)
    return target, draft


GROUPS = {  # name: (temperature, options)
    "off": (1.0, dict()),
    "top_k": (0.8, dict(top_k=4)),
    "top_p": (1.3, dict(top_p=0.7)),
    "both": (1.0, dict(top_k=6, top_p=0.8)),
    "min_p": (0.7, dict(min_p=0.15)),
    "all": (1.0, dict(top_k=5, top_p=0.85, min_p=0.1)),
    "greedy": (0.0, dict(top_k=2, top_p=0.5, min_p=0.5)),
}


def _draft_dists(draft, temperature, option, mode):
    """The distribution the drafts are drawn from, [K, V] float64, and q as verify warps it (None: one-hot)."""
    warped_q = _reference_probs(draft, temperature, **option)
    if mode == "warped":
        return warped_q, warped_q
    if mode == "unwarped":
        return torch.softmax(draft.double() / temperature, dim=-1), warped_q
    return torch.full((K, V), 1.0 / V, dtype=torch.float64), None  # one-hot: uniform ids, most outside the support


def _expected_n(p, d, q):
    """E[n] = sum_i prod_{j<i} beta_j, beta_t = sum_x d_t(x) a_t(x), a = min(1, p / q), p where q(x) = 0."""
    a = torch.where(q > 0, torch.minimum(torch.ones_like(p[:K]), p[:K] / q.clamp_min(1e-300)), p[:K]) \
        if q is not None else p[:K]
    beta = (d * a).sum(-1).tolist()
    return sum(math.prod(beta[:i]) for i in range(1, K + 1))


def _run(device, names, mode, n_per_group, seed):
    """verify() on len(names) interleaved groups of identical rows (scalar options for one group, per-row tensors
    and per-row seeds for several); chi-square per group and output position, E[n] per group, greedy rows exact."""
    target, draft = _base_logits()
    groups = [GROUPS[name] for name in names]
    n_rows = n_per_group * len(groups)
    group = torch.arange(n_rows) % len(groups)
    g = torch.Generator().manual_seed(seed)
    drafts = torch.empty(n_rows, K, dtype=torch.int64)
    best = target.argmax(-1)
    for i, (temperature, option) in enumerate(groups):
        rows = group == i
        if temperature == 0.0:  # greedy rows: mostly the argmax, so that some are accepted
            guess = torch.where(torch.rand(n_per_group, K, generator=g) < 0.7, best[:K],
                                torch.randint(0, V, (n_per_group, K), generator=g))
        else:
            d, _ = _draft_dists(draft, temperature, option, mode)
            guess = torch.multinomial(d, n_per_group, replacement=True, generator=g).T
        drafts[rows] = guess
    kwargs = {}
    if len(groups) == 1:
        kwargs["temperature"] = groups[0][0]
        kwargs.update(groups[0][1])
        kwargs["seed"] = seed
    else:
        temps = torch.tensor([t for t, _ in groups])[group]
        kwargs["temperature"] = temps.to(device)
        kwargs["top_k"] = torch.tensor([o.get("top_k", 0) for _, o in groups])[group].to(device)
        kwargs["top_p"] = torch.tensor([o.get("top_p", 1.0) for _, o in groups])[group].to(device)
        kwargs["min_p"] = torch.tensor([o.get("min_p", 0.0) for _, o in groups])[group].to(device)
        kwargs["seed"] = (torch.arange(n_rows) * 7919 + seed).to(device)
    res = specsampler.verify(
        target.expand(n_rows, -1, -1).contiguous().to(device), drafts.to(device),
        None if mode == "one-hot" else draft.expand(n_rows, -1, -1).contiguous().to(device),
        backend="torch", **kwargs)
    check_structure(res, drafts, None, V)
    tokens, n = res.tokens.cpu(), res.num_accepted.cpu()
    for i, (temperature, option) in enumerate(groups):
        rows = group == i
        if temperature == 0.0:
            match = (drafts[rows] == best[:K]).long().cumprod(1).sum(1)
            assert torch.equal(n[rows], match)
            want = torch.where(torch.arange(K + 1) < match[:, None], torch.nn.functional.pad(drafts[rows], (0, 1)), -1)
            want[torch.arange(n_per_group), match] = best[match]
            assert torch.equal(tokens[rows], want)
            continue
        p = _reference_probs(target, temperature, **option)
        assert torch.equal(_mask(target, temperature, **option), p > 0)  # reference and backend masks agree here
        for pos in range(K + 1):
            emitted = rows & (n >= pos)
            counts = torch.bincount(tokens[emitted, pos], minlength=V)
            p_value = chi2_pvalue(counts, p[pos])
            assert p_value > ALPHA, (names[i], mode, pos, counts.tolist(), p[pos].tolist(), p_value)
        d, q = _draft_dists(draft, temperature, option, mode)
        mean, se = n[rows].double().mean(), n[rows].double().std() / math.sqrt(n_per_group)
        assert abs(float(mean) - _expected_n(p, d, q)) < 5 * float(se) + 1e-9, (names[i], mode)


MODES = ["warped", "unwarped", "one-hot"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["top_k", "top_p", "both", "min_p", "all"])
def test_verify_follows_the_warped_target(device, name, mode):
    _run(device, [name], mode, 20000, seed=10 * list(GROUPS).index(name) + MODES.index(mode))


@pytest.mark.parametrize("mode", MODES)
def test_verify_follows_the_warped_target_per_row_mix(device, mode):
    """Per-row temperatures, options and seeds: off rows, every option, and greedy rows that must be exact."""
    _run(device, ["off", "top_k", "top_p", "min_p", "all", "greedy"], mode, 6000, seed=1 + MODES.index(mode))


def test_batched_path_follows_the_warped_target(device):
    """The batched path (the one CUDA runs) with warpers, also on the CPU."""
    target, draft = _base_logits()
    temperature, option = GROUPS["all"]
    n_rows = 20000
    g = torch.Generator().manual_seed(31)
    d, _ = _draft_dists(draft, temperature, option, "unwarped")
    drafts = torch.multinomial(d, n_rows, replacement=True, generator=g).T.contiguous()
    warp = _warp(option["top_k"], option["top_p"], option["min_p"], temperature, n_rows, torch.device(device))
    tokens, n = torch_backend.verify_token(
        target.expand(n_rows, -1, -1).contiguous().to(device), drafts.to(device),
        draft.expand(n_rows, -1, -1).contiguous().to(device), None, temperature, 77, vectorized=True, warp=warp)
    tokens, n = tokens.cpu(), n.cpu()
    p = _reference_probs(target, temperature, **option)
    for pos in range(K + 1):
        counts = torch.bincount(tokens[n >= pos, pos], minlength=V)
        p_value = chi2_pvalue(counts, p[pos])
        assert p_value > ALPHA, (pos, counts.tolist(), p[pos].tolist(), p_value)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Property: nothing outside the warped support


def _option(draw, name, batch, g):
    kind = draw(st.sampled_from(["none", "number", "tensor"]))
    if kind == "none":
        return None
    if name == "top_k":
        values = [0, 1, 2, 3, 5, 50, 10**4]
        if kind == "number":
            return draw(st.sampled_from(values))
        return torch.tensor(values)[torch.randint(0, len(values), (batch,), generator=g)]
    values = [0.0, 0.3, 0.9, 1.0] if name == "top_p" else [0.0, 0.05, 0.5, 1.0]
    if kind == "number":
        return draw(st.sampled_from(values))
    return torch.tensor(values)[torch.randint(0, len(values), (batch,), generator=g)]


@st.composite
def warped_cases(draw):
    batch, k, vocab = draw(st.integers(1, 5)), draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 7, 37, 300]))
    temperature = draw(st.sampled_from([1.0, 0.0, 0.3, 2.0, "row", "mixed"]))
    draft_vocab = draw(st.sampled_from([None, max(1, vocab // 2)]))
    args = make_case(batch, k, vocab, draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
                     seed=draw(st.integers(0, 10**6)), temperature=temperature, draft=draw(st.booleans()),
                     draft_vocab=draft_vocab, ragged=draw(st.booleans()))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10**6)))
    t = args["target_logits"]
    if draw(st.booleans()):  # ties everywhere
        args["target_logits"] = t = (t.float() * 2).round().div(2).to(t.dtype)
    if draw(st.booleans()):  # -inf entries, never a whole row
        hole = torch.rand(t.shape, generator=g) < 0.3
        hole[..., 0] = False
        t[hole] = -INF
    if k and draw(st.booleans()):  # ids the (warped) draft gives nothing: past Vd, or anywhere
        x = args["draft_tokens"]
        swap = torch.rand(x.shape, generator=g) < 0.4
        x[swap] = torch.randint(0, vocab, x.shape, generator=g)[swap]
    for name in ("top_k", "top_p", "min_p"):
        args[name] = _option(draw, name, batch, g)
    args["seed"] = draw(st.sampled_from([0, 1, "rows"]))
    if args["seed"] == "rows":
        args["seed"] = torch.randint(0, 2**62, (batch,), generator=g)
    return args


def _check_support(args, tokens, n, device):
    target = args["target_logits"]
    batch, k_plus_1, vocab = target.shape
    temperature = args["temperature"]
    temperature = temperature.float() if isinstance(temperature, torch.Tensor) else float(temperature)
    warp = _warp(args["top_k"], args["top_p"], args["min_p"], temperature, batch, device)
    support = (target > -INF) if warp is None else warp_scores(target, temperature, warp) > -INF
    support = support.cpu()
    greedy = (torch.as_tensor(temperature).expand(batch) == 0).cpu()
    best = torch.nan_to_num(target.float(), nan=-INF).argmax(-1).cpu()
    tokens, n = tokens.cpu(), n.cpu()
    for b in range(batch):
        m = int(n[b])
        row = tokens[b, : m + 1]
        assert bool(((row >= 0) & (row < vocab)).all()), (b, row)
        assert bool((tokens[b, m + 1 :] == -1).all())
        if greedy[b]:
            assert row.tolist() == best[b, : m + 1].tolist(), (b, row, best[b])
            continue
        inside = support[b, torch.arange(m + 1), row]
        assert bool(inside.all()), f"row {b}: tokens {row.tolist()} outside the warped support at {inside.tolist()}"
        # the max is always kept
        assert bool(support[b, torch.arange(k_plus_1), best[b]].all())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(warped_cases())
def test_property_tokens_lie_in_the_warped_support(device, args):
    args = {name: (v.to(device) if isinstance(v, torch.Tensor) else v) for name, v in args.items()}
    hooks = dict(_uniforms=args.pop("_uniforms"), _noise=args.pop("_noise"))
    res = specsampler.verify(**args, backend="torch")
    check_structure(res, args["draft_tokens"], args.get("num_draft_tokens"), args["target_logits"].shape[-1])
    _check_support(args, res.tokens, res.num_accepted, device)
    # the test hooks' exponential race draws from the same sets
    hooked = verify_with_hooks(**args, backend="torch", **hooks)
    _check_support(args, hooked.tokens, hooked.num_accepted, device)
    # the batched path (CUDA's) on the same case
    temperature = args["temperature"]
    temperature = temperature.float() if isinstance(temperature, torch.Tensor) else float(temperature)
    batch = args["target_logits"].shape[0]
    warp = _warp(args["top_k"], args["top_p"], args["min_p"], temperature, batch, device)
    seed = args["seed"] if isinstance(args["seed"], torch.Tensor) else torch_backend.hash_seed(args["seed"])
    tokens, n = torch_backend.verify_token(args["target_logits"], args["draft_tokens"], args["draft_logits"],
                                           args.get("num_draft_tokens"), temperature, seed, vectorized=True, warp=warp)
    _check_support(args, tokens, n, device)
    # sample(): the bonus row alone
    one = specsampler.sample(args["target_logits"][:, 0], temperature=args["temperature"], top_k=args["top_k"],
                             top_p=args["top_p"], min_p=args["min_p"], seed=args["seed"], backend="torch")
    _check_support({**args, "target_logits": args["target_logits"][:, :1]}, one[:, None],
                   torch.zeros_like(one), device)


# ---------------------------------------------------------------------------------------------------------------------
# 5. sample()


def test_sample_shape_and_dtype(device):
    g = torch.Generator().manual_seed(40)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = (torch.randn(7, 8193, generator=g) * 2).to(dtype).to(device)
        for option in (dict(), dict(top_k=50, top_p=0.9, min_p=0.05)):
            out = specsampler.sample(logits, temperature=0.8, seed=1, backend="torch", **option)
            assert out.shape == (7,) and out.dtype == torch.int64 and out.device == logits.device
            assert bool(((out >= 0) & (out < 8193)).all())
            assert bool(_mask(logits.float(), 0.8, **option)[torch.arange(7, device=device), out].all())


def test_sample_temperature_zero_is_argmax(device):
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -INF, -0.5, -0.5],
                           [5.0, 1.0, 5.0, 7.0]], device=device)
    expected = [1, 0, 2, 3]
    for option in (dict(), dict(top_k=1), dict(top_p=0.0, min_p=1.0), dict(top_k=3, top_p=0.5, min_p=0.2)):
        assert specsampler.sample(logits, temperature=0.0, backend="torch", **option).tolist() == expected
    temps = torch.tensor([0.0, 1.0, 0.0, 1.0], device=device)
    out = specsampler.sample(logits, temperature=temps, top_k=2, top_p=0.9, seed=3, backend="torch").tolist()
    assert out[0] == 1 and out[2] == 2


@pytest.mark.parametrize("name", ["off", "top_k", "top_p", "both", "min_p", "all"])
def test_sample_follows_the_warped_distribution(device, name):
    temperature, option = GROUPS[name]
    target, _ = _base_logits()
    n = 20000
    tokens = specsampler.sample(target[:1].expand(n, -1).contiguous().to(device), temperature=temperature,
                                seed=200 + list(GROUPS).index(name), backend="torch", **option).cpu()
    p = _reference_probs(target[:1], temperature, **option)[0]
    counts = torch.bincount(tokens, minlength=V)
    p_value = chi2_pvalue(counts, p)
    assert p_value > ALPHA, (name, counts.tolist(), p.tolist(), p_value)


def test_sample_seeds(device):
    g = torch.Generator().manual_seed(41)
    logits = (torch.randn(64, 500, generator=g) * 2).to(device)
    option = dict(temperature=0.9, top_k=100, top_p=0.95, min_p=0.01, backend="torch")
    a = specsampler.sample(logits, seed=123, **option)
    assert torch.equal(a, specsampler.sample(logits, seed=123, **option))
    assert not torch.equal(a, specsampler.sample(logits, seed=124, **option))
    gen = [torch.Generator(device=device).manual_seed(5) for _ in range(2)]
    assert torch.equal(specsampler.sample(logits, generator=gen[0], **option),
                       specsampler.sample(logits, generator=gen[1], **option))


def test_sample_row_seed_independent_of_position(device):
    g = torch.Generator().manual_seed(42)
    batch = 9
    logits = (torch.randn(batch, 400, generator=g) * 2).to(device)
    seeds = torch.randint(0, 2**62, (batch,), generator=g).to(device)
    per_row = dict(temperature=torch.linspace(0.5, 1.5, batch).to(device),
                   top_k=torch.tensor([0, 5, 50, 0, 3, 400, 1, 0, 20]).to(device),
                   top_p=torch.tensor([1.0, 0.9, 0.5, 0.8, 1.0, 0.0, 1.0, 0.95, 0.7]).to(device),
                   min_p=torch.tensor([0.0, 0.0, 0.1, 0.05, 0.0, 0.0, 0.0, 0.3, 0.02]).to(device))
    out = specsampler.sample(logits, seed=seeds, backend="torch", **per_row)
    perm = torch.randperm(batch, generator=g).to(device)
    shuffled = specsampler.sample(logits[perm], seed=seeds[perm], backend="torch",
                                  **{k: v[perm] for k, v in per_row.items()})
    assert torch.equal(shuffled, out[perm])
    for b in (0, 4, 8):
        alone = specsampler.sample(logits[b : b + 1], seed=seeds[b : b + 1], backend="torch",
                                   **{k: v[b : b + 1] for k, v in per_row.items()})
        assert int(alone) == int(out[b])
    # a row's token over many seeds follows its own warped distribution whatever its neighbours
    many = 3000
    row = logits[2:3].expand(many, -1).contiguous()
    tokens = specsampler.sample(row, seed=torch.arange(many, device=device) * 31 + 7, temperature=1.0,
                                top_k=50, top_p=0.5, min_p=0.1, backend="torch").cpu()
    kept = _reference_keep(logits[2], 1.0, top_k=50, top_p=0.5, min_p=0.1)[0]
    assert bool(kept[tokens].all())


def _sample_logits(device):
    return torch.randn(3, 20, generator=torch.Generator().manual_seed(44)).to(device)


SAMPLE_ERRORS = [
    (dict(logits=lambda d: torch.randn(20, device=d)), ValueError, "logits must be a \\[B, V\\] tensor"),
    (dict(logits=lambda d: torch.randn(2, 1, 20, device=d)), ValueError, "logits must be a \\[B, V\\] tensor"),
    (dict(logits=lambda d: [[1.0, 2.0]]), ValueError, "logits"),
    (dict(logits=lambda d: torch.zeros(3, 20, dtype=torch.int64, device=d)), TypeError, "^logits must be float32"),
    (dict(logits=lambda d: torch.zeros(3, 0, device=d)), ValueError,
     r"^logits must be a \[B, V\] tensor with V >= 1, got \(3, 0\)"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=1.5), ValueError, "top_k"),
    (dict(top_k=float("nan")), ValueError, "top_k"),
    (dict(top_k=True), ValueError, "top_k"),
    (dict(top_k="5"), ValueError, "top_k"),
    (dict(top_p=-1), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(top_p=True), ValueError, "top_p"),
    (dict(min_p=-1), ValueError, "min_p"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(min_p=float("nan")), ValueError, "min_p"),
    (dict(min_p=False), ValueError, "min_p"),
    (dict(top_k=lambda d: torch.tensor([1, 2], device=d)), ValueError, "top_k must have shape \\[B\\] = \\[3\\]"),
    (dict(top_p=lambda d: torch.full((3, 1), 0.5, device=d)), ValueError, "top_p must have shape"),
    (dict(min_p=lambda d: torch.tensor(0.5, device=d)), ValueError, "min_p must have shape"),
    (dict(top_k=lambda d: torch.tensor([1.0, 2.0, 3.0], device=d)), TypeError, "top_k must have dtype"),
    (dict(top_k=lambda d: torch.tensor([True, False, True], device=d)), TypeError, "top_k must have dtype"),
    (dict(top_p=lambda d: torch.tensor([1, 1, 1], device=d)), TypeError, "top_p must have dtype"),
    (dict(min_p=lambda d: torch.zeros(3, dtype=torch.float64, device=d)), TypeError, "min_p must have dtype"),
    (dict(top_k=lambda d: torch.tensor([1, 2, 3], device="meta")), ValueError, "top_k is on meta"),
    (dict(top_p=lambda d: torch.ones(3, device="meta")), ValueError, "top_p is on meta"),
    (dict(min_p=lambda d: torch.zeros(3, device="meta")), ValueError, "min_p is on meta"),
]


def _materialise(change, device):
    return {k: (v(device) if callable(v) else v) for k, v in change.items()}


@pytest.mark.parametrize("change,error,words", SAMPLE_ERRORS, ids=[f"{i}" for i in range(len(SAMPLE_ERRORS))])
def test_sample_errors_name_the_argument(device, change, error, words):
    kwargs = dict(logits=_sample_logits(device), seed=0, backend="torch")
    kwargs.update(_materialise(change, device))
    logits = kwargs.pop("logits")
    with pytest.raises(error, match=words) as info:
        specsampler.sample(logits, **kwargs)
    assert "target_logits" not in str(info.value)


def test_sample_tensor_values_are_checked_on_the_cpu(device):
    """Out-of-range option tensors: checked where that needs no host synchronisation (CPU tensors)."""
    logits = _sample_logits(device)
    for name, value in (("top_k", torch.tensor([1, -1, 2])), ("top_p", torch.tensor([0.5, 1.5, 0.5])),
                        ("top_p", torch.tensor([0.5, float("nan"), 0.5])), ("min_p", torch.tensor([-0.1, 0.0, 0.0]))):
        if device.type != "cpu":
            continue  # not checked on CUDA (that would synchronise)
        with pytest.raises(ValueError, match=name):
            specsampler.sample(logits, **{name: value.to(device)}, seed=0, backend="torch")


# ---------------------------------------------------------------------------------------------------------------------
# 6. Validation through verify

VERIFY_ERRORS = [e for e in SAMPLE_ERRORS if "logits" not in e[0]] + [
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(top_p=2), ValueError, "top_p"),
]


@pytest.mark.parametrize("change,error,words", VERIFY_ERRORS, ids=[f"{i}" for i in range(len(VERIFY_ERRORS))])
def test_verify_validates_the_warpers(device, change, error, words):
    args = make_case(3, 2, 20, device=device)
    del args["_uniforms"], args["_noise"]
    with pytest.raises(error, match=words):
        specsampler.verify(**args, **_materialise(change, device), seed=0, backend="torch")


def test_verify_tensor_values_are_checked_on_the_cpu(device):
    args = make_case(3, 2, 20, device=device)
    del args["_uniforms"], args["_noise"]
    if device.type != "cpu":
        return  # not checked on CUDA (that would synchronise)
    for name, value in (("top_k", torch.tensor([1, -1, 2])), ("top_p", torch.tensor([0.5, 1.5, 0.5])),
                        ("min_p", torch.tensor([0.0, 0.0, -0.1])), ("min_p", torch.tensor([0.0, 1.01, 0.0]))):
        with pytest.raises(ValueError, match=f"{name} must be"):
            specsampler.verify(**args, **{name: value.to(device)}, seed=0, backend="torch")


def test_sample_with_hooks_draws_from_the_warped_set(device):
    """The race (noise hook) draws from the same warped set as the inverse CDF."""
    g = torch.Generator().manual_seed(43)
    logits = (torch.randn(50, 300, generator=g) * 2).to(device)
    noise = torch.empty(50, 300).exponential_(generator=g).to(device)
    option = dict(top_k=30, top_p=0.8, min_p=0.05)
    out = sample_with_hooks(logits, temperature=0.9, seed=0, backend="torch", _noise=noise, **option)
    kept = _mask(logits, 0.9, **option)
    assert bool(kept[torch.arange(50, device=device), out].all())
    # the race's winner is the argmax over the kept set of p / E (up to the rounding of p)
    ratio = torch.softmax(torch.where(kept, logits / 0.9, -INF), dim=-1) / noise
    assert bool((ratio[torch.arange(50, device=device), out] >= ratio.amax(-1) * (1 - 1e-5)).all())
