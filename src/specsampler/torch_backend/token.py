"""Token verification in torch (the rule of :func:`specsampler.verify`'s ``method="token"``): the kernel's oracle.

1. p_t = softmax(target_logits[b, t] / T_b), q_t likewise; x_t is accepted iff u_t * q_t(x_t) < p_t(x_t) (greedy rows:
   iff x_t == argmax p_t). n = the first rejected position, K_b if none.
2. At n < K_b the correction is drawn from r = max(0, p_n - q_n) (from p_n when r has no mass, sum r <= EPS); at
   n = K_b the bonus token is drawn from p_{K_b}; greedy rows take argmax p_n.
K_b is num_draft_tokens[b] (K without it), and at most the position of the row's first draft id outside [0, V)
(vLLM's -1 placeholder): such an id ends the row's drafts exactly as num_draft_tokens would
(:func:`~.common.drafts_in_range`).

The rule comes as its two paths (``chain`` runs them): :func:`token_row`, one CPU row with the decisions in Python
(the softmax of position t computed only if x_0..x_{t-1} were accepted, the bonus row's only if every draft was; the
correction drawn by the inverse CDF with one uniform: transformers' `_speculative_sampling` computes all 2K+1 softmax
rows and an `exponential_` over the vocabulary for its `multinomial`), and :func:`token_batch`, the whole batch in one
fixed sequence of batched ops.
"""

from __future__ import annotations

import torch

from .chain import ChainRule, verify_chain
from .common import GREEDY_BELOW, RESIDUAL_EPS, argmax, softmax
from .sample import draw, draw_row
from .warp import row_scores


def verify_token(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Token verification of B rows of K drafts: :func:`~.chain.verify_chain`'s arguments, this rule."""
    return verify_chain(RULE, *args, **kwargs)


def token_row(target, x, draft, k_b, temperature, u, noise, from_probs, warp, first, scrub):
    """One row on the CPU: target [K+1, V], x K ints, draft [K, Vd] or None, k_b int, temperature float (0: greedy),
    u K+1 floats, noise [V] or None. Returns (n, next token, whether the row drawn from was free of NaN)."""
    vocab = target.shape[-1]
    if temperature < GREEDY_BELOW and not from_probs:
        best = argmax(target[: k_b + 1]).tolist()
        n = next((t for t in range(k_b) if x[t] != best[t]), k_b)
        return n, best[n], True

    # 1. Decisions, one position at a time: a row's later softmax rows are computed only if its drafts get there.
    # (A decision needs only the row's logsumexp, but the fused softmax is faster than logsumexp on CPUs, and the
    # rejected position needs p and q in full anyway.)
    for t in range(k_b):
        p_t = softmax(row_scores(target, t, temperature, warp, first and first[0]), temperature, from_probs, vocab,
                       scrub)
        q_t = None if draft is None else softmax(row_scores(draft, t, temperature, warp, first and first[1]),
                                                  temperature, from_probs, vocab, scrub)
        valid = 0 <= x[t] < vocab
        one_hot = q_t is None
        if valid and not one_hot:
            q_x = q_t[x[t]].item()
            if q_x != q_x:  # NaN from an unscrubbed row: redo the row from scrubbed scores
                return t, 0, False
            one_hot = not q_x > 0.0  # q gives its own token nothing: one-hot at x_t (see token_batch)
        if valid and u[t] * (1.0 if one_hot else q_x) < p_t[x[t]].item():
            continue
        # 2. Rejected: the correction from r = max(0, p_t - q_t); from p_t itself when r has no mass.
        if one_hot:  # one-hot at x_t: r is p_t without x_t (nothing removed for an id outside the vocabulary)
            r = p_t.clone()
            if valid:
                r[x[t]] = 0.0
        else:
            r = (p_t - q_t).clamp_min_(0.0)
        token, total = draw_row(r, u[-1], noise)
        if total <= RESIDUAL_EPS:
            token, total = draw_row(p_t, u[-1], noise)
        return t, token, total == total

    # 2. Every draft accepted: the bonus token from p_{K_b}.
    token, total = draw_row(softmax(row_scores(target, k_b, temperature, warp, first and first[0]), temperature,
                                      from_probs, vocab, scrub), u[-1], noise)
    return k_b, token, total == total



def token_batch(target, draft_tokens, draft, nd, temperature, u, noise, from_probs, scrub):
    """The batched path: shapes as in :func:`~.chain.verify_chain`, `nd` [B] or None, `u` [B, K+1] float32 (acceptance
    uniforms, then the sampling uniform). Also returns whether the rows drawn from were free of NaN."""
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    rows = torch.arange(batch, device=device)
    pos = torch.arange(k_plus_1, device=device)
    greedy = None
    if isinstance(temperature, torch.Tensor):
        greedy = temperature < GREEDY_BELOW
        temperature = torch.where(greedy, 1.0, temperature)
    elif temperature < GREEDY_BELOW and not from_probs:
        greedy, temperature = torch.ones(batch, dtype=torch.bool, device=device), 1.0

    # 1. Acceptance of every position at once; n = the number of leading accepted drafts.
    x = draft_tokens.to(torch.int64)
    xs = x.clamp(0, vocab - 1)
    valid = xs == x
    p = softmax(target, temperature, from_probs, vocab, scrub)
    p_x = p[:, :k].gather(2, xs[:, :, None])[:, :, 0]
    if draft is None:
        q, q_x, one_hot = None, valid.float(), valid
    else:
        q = softmax(draft, temperature, from_probs, vocab, scrub)
        q_x = q.gather(2, xs[:, :, None])[:, :, 0]
        nan_q = q_x.isnan().any()
        # A draft that gives its own token no probability (-inf or NaN logits there, an id past its vocabulary) is
        # one-hot at x: accepted with probability p(x), the correction from p without x (exact whatever made x).
        one_hot = valid & ~(q_x > 0)
        q_x = torch.where(one_hot, 1.0, q_x)
    accepted = (u[:, :k] * q_x < p_x) & valid
    if greedy is not None:
        best = argmax(target)
        accepted = torch.where(greedy[:, None], (xs == best[:, :k]) & valid, accepted)
    if nd is not None:
        accepted &= pos[None, :k] < nd[:, None]
    n = accepted.cumprod(dim=1).sum(dim=1)

    # 2. Row n: the correction from r = max(0, p_n - q_n), or p_n itself (the bonus; a residual with no mass).
    p_n = p[rows, n]
    dist = p_n
    if k > 0:
        at = n.clamp(max=k - 1)
        q_n = torch.zeros_like(p_n).scatter_(1, xs[rows, at][:, None], valid[rows, at][:, None].float())
        if q is not None:
            q_n = torch.where(one_hot[rows, at][:, None], q_n, q[rows, at])
        r = (p_n - q_n).clamp_min_(0.0)
        no_mass = r.sum(dim=1) <= RESIDUAL_EPS
        dist = torch.where((no_mass | (n == (k if nd is None else nd)))[:, None], p_n, r)
    total = dist.sum(dim=1, keepdim=True)
    clean = ~total.isnan().any()
    if draft is not None:
        clean &= ~nan_q
    dist = torch.where(total > 0, dist, 1.0)  # p has no mass either: uniform
    next_token = draw(dist, u[:, k], None if noise is None else noise.float())
    if greedy is not None:
        next_token = torch.where(greedy, best[rows, n], next_token)

    tokens = torch.where(pos < n[:, None], torch.nn.functional.pad(x, (0, 1)), -1)
    tokens.scatter_(1, n[:, None], next_token[:, None])
    return tokens, n, clean


RULE = ChainRule(batch=token_batch, row=token_row)
