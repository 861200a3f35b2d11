"""The torch backend of :func:`specsampler.verify`: runs on any device, and is the oracle for the Triton kernel.

Notation: p target, q draft; x_t the drafted token at position t; K_b the drafts row b really has.

1. For t = 0, 1, ...: p_t = softmax(target_logits[:, t] / T), q_t likewise; x_t is accepted iff
   u_t * q_t(x_t) < p_t(x_t) (greedy rows: iff x_t == argmax p_t). n = the first rejected position, K_b if none.
2. At n < K_b the correction is drawn from r = max(0, p_n - q_n) (from p_n when r has no mass, sum r <= EPS); at
   n = K_b the bonus token is drawn from p_{K_b}; greedy rows take argmax p_n.

The CPU's `exp` and `exponential_` are slow and every torch call costs microseconds there, so the backend is a short
fixed sequence of batched ops with no loop and no host synchronisation: one fused softmax over the target's K+1 rows
and one over the draft's K rows (the same 2K+1 rows of exponentials transformers computes), gathers, a cumulative
product for the first rejection, and the inverse CDF of the one row to sample (a cumulative sum and a binary search,
one uniform per row, no per-vocabulary noise). When the caller supplies exponential noise E (the test hook that
makes the backend replay the kernel's random numbers), it draws argmax r(x)/E_x instead: the kernel's exponential race.
"""

from __future__ import annotations

import torch

# A residual with at most this much mass is rounding noise (p equals q); the next token is then drawn from p.
RESIDUAL_EPS = 1e-6
_CPU_CHUNK_BYTES = 4 << 20

_MASK64 = (1 << 64) - 1


def _signed64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed64(0x9E3779B97F4A7C15)
_MIX1 = _signed64(0xBF58476D1CE4E5B9)
_MIX2 = _signed64(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of an int64 tensor."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def draw_uniforms(seed: int | torch.Tensor, batch: int, count: int, device: torch.device) -> torch.Tensor:
    """The backend's uniforms: from a generator seeded with an int seed, or counter-based from per-row seeds.

    Parameters
    ----------
    seed : int or torch.Tensor
        One seed for the batch (a torch.Generator on `device`), or a [B] int64 tensor of per-row seeds, hashed with
        the position (splitmix64) so that a row's numbers do not depend on where it sits in the batch.
    batch, count : int
        B and the number of uniforms per row.
    device : torch.device

    Returns
    -------
    torch.Tensor
        [B, count] float32 in [0, 1), multiples of 2**-24.
    """
    if not isinstance(seed, torch.Tensor):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return torch.rand(batch, count, generator=generator, device=device)
    pos = torch.arange(count, device=device, dtype=torch.int64)
    bits = _mix(_mix(seed.to(device=device, dtype=torch.int64))[:, None] ^ pos[None, :])
    return _shr(bits, 40).to(torch.float32) * (2.0**-24)


def _softmax(scores: torch.Tensor, temperature: float | torch.Tensor, from_probs: bool, vocab: int) -> torch.Tensor:
    """[B, R, V'] scores -> [B, R, vocab] float32 probabilities, ids >= V' at 0. NaN is not handled here."""
    scores = scores.float()
    if from_probs:
        probs = scores.clamp_min(0.0)
    elif isinstance(temperature, torch.Tensor):
        probs = torch.softmax(scores / temperature[:, None, None], dim=-1)
    else:
        probs = torch.softmax(scores if temperature == 1.0 else scores / temperature, dim=-1)
    return probs if probs.shape[-1] == vocab else torch.nn.functional.pad(probs, (0, vocab - probs.shape[-1]))


def _argmax(scores: torch.Tensor) -> torch.Tensor:
    """Lowest index of the maximum, NaN treated as -inf."""
    return torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(dim=-1)


def _draw(dist: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """One id per row from the unnormalised non-negative rows `dist` [B, V]."""
    if noise is not None:
        return (dist / noise).argmax(dim=-1)
    cdf = dist.cumsum(dim=-1)
    # u <= 1 - 2**-24 (24-bit uniforms), so u * total rounds below total and the id found has positive mass:
    # cdf[id] > u * total >= cdf[id - 1]. The clamp only matters for a row with no mass at all.
    found = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)
    return found[:, 0].clamp_(max=dist.shape[-1] - 1)


def verify_torch(
    target: torch.Tensor,
    draft_tokens: torch.Tensor,
    draft: torch.Tensor | None,
    num_draft_tokens: torch.Tensor | None,
    temperature: float | torch.Tensor,
    seed: int | torch.Tensor,
    from_probs: bool = False,
    uniforms: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify B rows of K drafts each; arguments already validated by :func:`specsampler.verify`.

    Parameters
    ----------
    target : torch.Tensor
        [B, K+1, V] float32/bfloat16/float16 logits (probabilities when `from_probs`).
    draft_tokens : torch.Tensor
        [B, K] int32/int64.
    draft : torch.Tensor or None
        [B, K, Vd] (Vd <= V) scores the drafts were sampled from; None for one-hot drafts.
    num_draft_tokens : torch.Tensor or None
        [B] int in [0, K]; None means K for every row.
    temperature : float or torch.Tensor
        A float, or [B] float32; 0 marks a greedy row. Ignored when `from_probs`.
    seed : int or torch.Tensor
        Key of the backend's uniforms (see :func:`draw_uniforms`).
    uniforms, noise : torch.Tensor or None
        Test hook: [B, K] acceptance uniforms in [0, 1) and [B, V] positive exponential noise, replacing the
        backend's own random numbers (the kernel accepts the same two tensors).

    Returns
    -------
    tokens : torch.Tensor
        [B, K+1] int64: accepted drafts, one more token, then -1.
    num_accepted : torch.Tensor
        [B] int64.
    """
    batch, k_plus_1, _ = target.shape
    k = k_plus_1 - 1
    device = target.device
    nd = None if num_draft_tokens is None else num_draft_tokens.to(torch.int64)
    greedy = None
    if isinstance(temperature, torch.Tensor):
        greedy = temperature == 0
        temperature = torch.where(greedy, 1.0, temperature)
    elif temperature == 0 and not from_probs:
        greedy, temperature = torch.ones(batch, dtype=torch.bool, device=device), 1.0
    u = draw_uniforms(seed, batch, k_plus_1, device)
    if uniforms is not None:
        u = torch.cat([uniforms.float(), u[:, k:]], dim=1)

    # On the CPU, rows go through in chunks whose scores fit in the cache: one pass over 40 MB is several times
    # slower per byte than over 4 MB there. Elsewhere the whole batch is one chunk.
    row_bytes = 4 * (2 * k + 1) * target.shape[2]
    step = max(1, _CPU_CHUNK_BYTES // row_bytes) if device.type == "cpu" else batch
    out = []
    for lo in range(0, batch, step):
        c = slice(lo, lo + step)
        args = (target[c], draft_tokens[c], None if draft is None else draft[c], None if nd is None else nd[c],
                temperature[c] if isinstance(temperature, torch.Tensor) else temperature,
                None if greedy is None else greedy[c], u[c], None if noise is None else noise[c], from_probs)
        tokens, n, finite = _verify_chunk(*args, sanitize=device.type != "cpu" or from_probs)
        # NaN scores: the fast path leaves NaN in the probabilities it read (the check is free on the CPU), so run
        # the chunk again with NaN read as -inf logits, or as probability 0.
        out.append((tokens, n) if bool(finite) else _verify_chunk(*args, sanitize=True)[:2])
    if len(out) == 1:
        return out[0]
    return torch.cat([t for t, _ in out]), torch.cat([n for _, n in out])


def _rows_at(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """x[arange(B), n] for x [B, R, V]: [B, V]. On the CPU by views (its advanced-indexing kernel is slow there)."""
    if x.device.type != "cpu":
        return x[torch.arange(x.shape[0], device=x.device), n]
    picked = [x[b, i] for b, i in enumerate(n.tolist())]
    return picked[0][None] if len(picked) == 1 else torch.stack(picked)


def _verify_chunk(target, draft_tokens, draft, nd, temperature, greedy, u, noise, from_probs, sanitize):
    """:func:`verify_torch` on a chunk of rows: shapes as there, `nd` [B] int64 or None (K for all), `greedy` [B] bool
    or None, `u` [B, K+1] float32 (the acceptance uniforms, then the sampling uniform). Also returns whether the row
    it drew from was free of NaN; with `sanitize`, NaN scores are read as -inf logits (probability 0) first."""
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    pos = torch.arange(k_plus_1, device=target.device)
    if sanitize:
        nan = 0.0 if from_probs else float("-inf")
        target = torch.nan_to_num(target, nan=nan)
        draft = None if draft is None else torch.nan_to_num(draft, nan=nan)

    # 1. Acceptance of every position at once; n = the number of leading accepted drafts.
    x = draft_tokens.to(torch.int64)
    xs = x.clamp(0, vocab - 1)
    valid = xs == x
    p = _softmax(target[:, :k], temperature, from_probs, vocab)
    p_x = p.gather(2, xs[:, :, None])[:, :, 0]
    if draft is None:
        q, q_x = None, valid.float()
    else:
        q = _softmax(draft, temperature, from_probs, vocab)
        q_x = q.gather(2, xs[:, :, None])[:, :, 0]
    accepted = (u[:, :k] * q_x < p_x) & valid
    if greedy is not None:
        argmax = _argmax(target)
        accepted = torch.where(greedy[:, None], (xs == argmax[:, :k]) & valid, accepted)
    if nd is not None:
        accepted &= pos[None, :k] < nd[:, None]
    n = accepted.cumprod(dim=1).sum(dim=1)

    # 2. Row n: the correction from r = max(0, p_n - q_n), or p_n itself (the bonus; a residual with no mass).
    # Rows n < K already have p_n in p; only a bonus at n = K needs the target's last row.
    cpu = target.device.type == "cpu"
    bonus_at_k = n == k
    at = n.clamp(max=k - 1)
    if k == 0 or (cpu and bool(bonus_at_k.all())):
        p_n = _softmax(target[:, k:], temperature, from_probs, vocab)[:, 0]
    elif cpu and not bool(bonus_at_k.any()):
        p_n = _rows_at(p, at)
    else:
        p_last = _softmax(target[:, k:], temperature, from_probs, vocab)[:, 0]
        p_n = torch.where(bonus_at_k[:, None], p_last, _rows_at(p, at))
    dist = p_n
    if k > 0:
        if q is None:
            q_n = torch.zeros_like(p_n).scatter_(1, xs.gather(1, at[:, None]), valid.gather(1, at[:, None]).float())
        else:
            q_n = _rows_at(q, at)
        r = (p_n - q_n).clamp_min_(0.0)
        use_p = (r.sum(dim=1) <= RESIDUAL_EPS) | (n == (k if nd is None else nd))  # no mass, or the bonus
        dist = r if cpu and not bool(use_p.any()) else torch.where(use_p[:, None], p_n, r)
    next_token = _draw(dist, u[:, k], None if noise is None else noise.float())
    if greedy is not None:
        next_token = torch.where(greedy, argmax.gather(1, n[:, None])[:, 0], next_token)

    tokens = torch.where(pos < n[:, None], torch.nn.functional.pad(x, (0, 1)), -1)
    tokens.scatter_(1, n[:, None], next_token[:, None])
    # A NaN score makes its whole softmax row NaN; a NaN row before n would have been rejected, so only row n (p_n,
    # and q_n through r) can carry one into what was drawn: `dist` shows it.
    return tokens, n, ~dist[:, :1].isnan().any()
