"""Block verification in torch (the rule of :func:`specsampler.verify`'s ``method="block"``): the oracle for the
Triton kernel's block mode.

Block verification (Sun, Mendlovic, Leviathan, Aharoni, Beirami, Ro, Suresh, "Block Verification Accelerates
Speculative Decoding", ICLR 2025, arXiv 2403.10444, Algorithm 2) decides a block of K_b drafts at once. Positions are
0-indexed here: draft x_t was drawn from q_t (draft row t), p_t is target row t; w_i is the weight after i accepted
drafts.

- w_0 = 1, w_{i+1} = min(1, w_i p_i(x_i) / q_i(x_i)) for i < K_b.
- r_i = sum_x max(w_i p_i(x) - q_i(x), 0); h_0 = 1, h_i = r_i / (r_i + 1 - w_i) for 0 < i < K_b (1 where the
  denominator is 0), h_{K_b} = w_{K_b}.
- With eta_i ~ U[0, 1) (the acceptance uniforms, eta_i = u[i - 1]): tau = max{i : i = 0 or eta_i < h_i} drafts are
  accepted. tau < K_b: the next token is drawn from norm(max(w_tau p_tau - q_tau, 0)) (from p_tau when that has at
  most RESIDUAL_EPS of mass); tau = K_b: from p_{K_b} (the bonus).
With K_b = 1 this is token verification (eta_1 < min(1, p/q)); in expectation it never accepts fewer drafts. Strict
comparisons, as token verification's u q < p: a weight of 0 never accepts.

The same conventions as token verification (``token``): a position whose draft gives its own token no probability
(and every position of one-hot drafts) has q_t the point mass at x_t; an id outside [0, V) has ratio 0; greedy rows
(T below 2**-126) accept the argmax prefix; the warpers apply to p and q alike; the random numbers are the same
[B, K+1] uniforms (the last one draws the next token by the inverse CDF) or, with the test hook, the exponential race
on the given noise [B, V]; the same two paths (``chain``). The batched path computes every row's softmax and residual
at once ([B, K+1, V] float32 temporaries, no host synchronisation).
"""

from __future__ import annotations

import torch

from .chain import ChainRule, verify_chain
from .common import GREEDY_BELOW, RESIDUAL_EPS, argmax, softmax
from .sample import draw, draw_row
from .warp import row_scores


def verify_block(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Block verification of B rows of K drafts: :func:`~.chain.verify_chain`'s arguments, this rule."""
    return verify_chain(RULE, *args, **kwargs)


def block_batch(target, draft_tokens, draft, nd, temperature, u, noise, from_probs, scrub):
    """The batched path (any device, no host synchronisation), as ``token.token_batch``: `target`
    [B, K+1, V] and `draft` [B, K, Vd] already warped, `nd` [B] or None, `u` [B, K+1] (the eta_i, then the sampling
    uniform). Returns (tokens [B, K+1], tau [B], whether the rows were free of NaN)."""
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    nd = torch.full((batch,), k, dtype=torch.int64, device=device) if nd is None else nd
    greedy = torch.zeros(batch, dtype=torch.bool, device=device)
    if isinstance(temperature, torch.Tensor):
        greedy = temperature < GREEDY_BELOW
        temperature = torch.where(greedy, 1.0, temperature)
    elif temperature < GREEDY_BELOW and not from_probs:
        greedy[:], temperature = True, 1.0

    x = draft_tokens.to(device=device, dtype=torch.int64)
    xs = x.clamp(0, vocab - 1)
    valid = xs == x
    p = softmax(target, temperature, from_probs, vocab, scrub)  # [B, K+1, V]
    q = _effective_draft(draft, xs, valid, temperature, from_probs, vocab, scrub)  # [B, K, V]
    p_x = p[:, :k].gather(2, xs[:, :, None])[:, :, 0]
    q_x = q.gather(2, xs[:, :, None])[:, :, 0]
    ratio = torch.where(valid & (q_x > 0), p_x / torch.where(q_x > 0, q_x, 1.0), 0.0)
    tau, residual = _block_decision(p, q, ratio, nd, u[:, :k])

    rows = torch.arange(batch, device=device)
    dist = p[rows, tau]
    if k > 0:
        res = residual[rows, tau.clamp(max=k - 1)]
        use_residual = (tau < nd) & (res.sum(dim=1) > RESIDUAL_EPS)
        dist = torch.where(use_residual[:, None], res, dist)
    total = dist.sum(dim=1, keepdim=True)
    clean = ~(total.isnan().any() | p_x.isnan().any() | q_x.isnan().any())
    dist = torch.where(total > 0, dist, 1.0)  # p has no mass either: uniform
    next_token = draw(dist, u[:, k], None if noise is None else noise.float())

    best = argmax(target)  # greedy rows: the argmax prefix, then the argmax
    pos = torch.arange(k_plus_1, device=device)
    hits = (xs == best[:, :k]) & valid & (pos[None, :k] < nd[:, None])
    n_greedy = hits.to(torch.int64).cumprod(dim=1).sum(dim=1)
    tau = torch.where(greedy, n_greedy, tau)
    next_token = torch.where(greedy, best[rows, tau], next_token)

    tokens = torch.where(pos < tau[:, None], torch.nn.functional.pad(x, (0, 1)), -1)
    tokens.scatter_(1, tau[:, None], next_token[:, None])
    return tokens, tau, clean


def _effective_draft(draft, xs, valid, temperature, from_probs, vocab, scrub) -> torch.Tensor:
    """q_t [B, K, V]: the draft's distribution, or the point mass at x_t where the draft gives x_t nothing (one-hot
    drafts: everywhere); zero where x_t is outside the vocabulary and there are no draft scores."""
    point = torch.zeros(*xs.shape, vocab, dtype=torch.float32, device=xs.device)
    point.scatter_(2, xs[:, :, None], valid[:, :, None].float())
    if draft is None:
        return point
    q = softmax(draft, temperature, from_probs, vocab, scrub)
    q_x = q.gather(2, xs[:, :, None])[:, :, 0]
    one_hot = valid & ~(q_x > 0)
    return torch.where(one_hot[:, :, None], point, q)


def _block_decision(p, q, ratio, nd, eta):
    """tau [B] and the residuals max(w_i p_i - q_i, 0) [B, K, V] from p [B, K+1, V], q [B, K, V], the ratios
    p_i(x_i) / q_i(x_i) [B, K], the drafts per row nd [B] and the uniforms eta [B, K]."""
    batch, k = ratio.shape
    weights = [torch.ones(batch, dtype=torch.float32, device=p.device)]
    for i in range(k):
        weights.append(torch.clamp(weights[-1] * ratio[:, i], max=1.0))
    w = torch.stack(weights, dim=1)  # [B, K+1]
    residual = (w[:, :k, None] * p[:, :k] - q).clamp_min_(0.0)
    r = residual.sum(dim=2, dtype=torch.float64).float()  # [B, K]
    denom = r + 1.0 - w[:, :k]
    h_mid = torch.where(denom > 0, r / torch.where(denom > 0, denom, 1.0), 1.0)
    pos = torch.arange(k + 1, device=p.device)
    h = torch.where(pos[None, :] == nd[:, None], w, torch.nn.functional.pad(h_mid, (0, 1)))
    h = torch.where(pos[None, :] <= nd[:, None], h, 0.0)
    passed = torch.cat([torch.ones_like(h[:, :1], dtype=torch.bool), eta < h[:, 1:]], dim=1)
    tau = (passed.to(torch.int64) * pos[None, :]).amax(dim=1)
    return tau, residual


def block_row(target, x, draft, k_b, temperature, u, noise, from_probs, warp, first, scrub):
    """One row on the CPU, as ``token.token_row``: target [K+1, V], x K ints, draft [K, Vd] or None, k_b,
    temperature (0: greedy), u K+1 floats, noise [V] or None. Returns (tau, next token, whether the row was free of
    NaN).

    The weights need every position's softmax (computed once, in one call unless each row is warped on its own); the
    residual masses are taken from the top down and only where they can decide: h_i <= w_i, so a position
    with eta_i >= w_i is passed over, and the first i with eta_i < h_i is tau."""
    vocab = target.shape[-1]
    if temperature < GREEDY_BELOW and not from_probs:
        best = argmax(target[: k_b + 1]).tolist()
        n = next((t for t in range(k_b) if x[t] != best[t]), k_b)
        return n, best[n], True
    p_all = _probs(target, k_b, temperature, warp, first and first[0], from_probs, vocab, scrub)
    q_all = None if draft is None else _probs(draft, k_b, temperature, warp, first and first[1], from_probs, vocab,
                                              scrub)
    p_rows, q_rows, w = [], [], [1.0]
    for t in range(k_b):
        p_t, q_t = p_all[t], None if q_all is None else q_all[t]
        valid = 0 <= x[t] < vocab
        q_x = 1.0 if q_t is None else (q_t[x[t]].item() if valid else 0.0)
        if q_x != q_x:
            return t, 0, False  # NaN from an unscrubbed row: redo the row from scrubbed scores
        if valid and not q_x > 0.0:  # q gives its own token nothing: the point mass at x_t
            q_t, q_x = None, 1.0
        p_x = p_t[x[t]].item() if valid else 0.0
        if p_x != p_x:
            return t, 0, False
        p_rows.append(p_t)
        q_rows.append(q_t)
        w.append(min(1.0, w[-1] * p_x / q_x) if valid else 0.0)
        if w[-1] == 0.0:
            break
    if len(w) == k_b + 1 and (k_b == 0 or u[k_b - 1] < w[k_b]):
        tau, dist = k_b, None
    else:
        tau, dist = _descend(p_rows, q_rows, x, w, u, vocab)
    if dist is None:
        dist = softmax(row_scores(target, tau, temperature, warp, first and first[0]), temperature, from_probs, vocab,
                        scrub)
    token, total = draw_row(dist, u[-1], noise)
    if tau < k_b and total <= RESIDUAL_EPS:  # a residual of (almost) no mass: from p_tau
        token, total = draw_row(p_rows[tau], u[-1], noise)
    return tau, token, total == total


def _probs(rows, n, temperature, warp, first, from_probs, vocab, scrub):
    """Softmax of the first n of `rows` [R, V']: in one call ([n, vocab]; block verification reads every position's),
    or a list of rows where each is warped on its own."""
    if warp is None or temperature < GREEDY_BELOW:
        return softmax(rows[:n], temperature, from_probs, vocab, scrub)
    return [softmax(row_scores(rows, t, temperature, warp, first), temperature, from_probs, vocab, scrub)
            for t in range(n)]


def _residual(p_t, q_t, x_t: int, w: float, vocab: int) -> torch.Tensor:
    """max(w p_t - q_t, 0), q_t None meaning the point mass at x_t (nothing for an id outside the vocabulary)."""
    res = p_t * w if w != 1.0 else p_t.clone()
    if q_t is not None:
        return res.sub_(q_t).clamp_min_(0.0)
    if 0 <= x_t < vocab:
        res[x_t] = max(res[x_t].item() - 1.0, 0.0)
    return res


def _descend(p_rows, q_rows, x, w, u, vocab):
    """tau < K_b and its residual: the largest i with eta_i < h_i, masses computed only where eta_i < w_i."""
    for i in range(len(w) - 1, 0, -1):
        if i >= len(p_rows) or not u[i - 1] < w[i]:  # (a weight of 0 ends the rows: h = 0 there)
            continue
        res = _residual(p_rows[i], q_rows[i], x[i], w[i], vocab)
        r = float(res.sum())  # (float32, pairwise: a quarter of a float64 sum's time)
        denom = r + 1.0 - w[i]
        if u[i - 1] < (r / denom if denom > 0 else 1.0):
            return i, res
    return 0, _residual(p_rows[0], q_rows[0], x[0], 1.0, vocab)


RULE = ChainRule(batch=block_batch, row=block_row)
