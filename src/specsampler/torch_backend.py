"""The torch backend of :func:`specsampler.verify`: runs on any device, and is the oracle for the Triton kernel.

Notation: p target, q draft; x_t the drafted token at position t; K_b the drafts row b really has.

1. For t = 0, 1, ...: p_t = softmax(target_logits[:, t] / T), q_t likewise; x_t is accepted iff
   u_t * q_t(x_t) < p_t(x_t) (greedy rows: iff x_t == argmax p_t). n = the first rejected position, K_b if none.
2. At n < K_b the correction is drawn from r = max(0, p_n - q_n) (from p_n when r has no mass, sum r <= EPS); at
   n = K_b the bonus token is drawn from p_{K_b}; greedy rows take argmax p_n.

Sampling uses one uniform per row and the inverse CDF (a cumulative sum and a binary search), because the CPU's `exp`
and `exponential_` are slow: the backend computes one fused softmax per row it needs and no per-vocabulary noise.
When the caller supplies exponential noise E (the test hook that makes the backend replay the kernel's random
numbers), it draws argmax r(x)/E_x instead: the exponential race the kernel uses.

On the CPU the loop over positions stops as soon as every row has rejected (the check is free there); on other
devices it runs all K positions, with no host synchronisation.
"""

from __future__ import annotations

import torch

# A residual with at most this much mass is rounding noise (p equals q); the next token is then drawn from p.
RESIDUAL_EPS = 1e-6

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


def counter_uniforms(seed: int | torch.Tensor, batch: int, count: int, device: torch.device) -> torch.Tensor:
    """Counter-based uniforms keyed by (seed, row, position).

    Parameters
    ----------
    seed : int or torch.Tensor
        One seed for the batch (then the row index is part of the key), or a [B] int64 tensor of per-row seeds (then
        a row's numbers do not depend on where it sits in the batch).
    batch, count : int
        B and the number of uniforms per row.
    device : torch.device

    Returns
    -------
    torch.Tensor
        [B, count] float32 in [0, 1), multiples of 2**-24.
    """
    pos = torch.arange(count, device=device, dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        key = _mix(seed.to(device=device, dtype=torch.int64))[:, None]
    else:
        key = _mix(torch.tensor(_signed64(seed), device=device, dtype=torch.int64) + torch.arange(batch, device=device))
        key = key[:, None]
    bits = _mix(key ^ pos[None, :])
    return _shr(bits, 40).to(torch.float32) * (2.0**-24)


def _softmax(rows: torch.Tensor, temperature: float | torch.Tensor, from_probs: bool) -> torch.Tensor:
    """[B, V] scores -> [B, V] float32 probabilities; NaN counts as -inf (as probability 0)."""
    rows = rows.float()
    if from_probs:
        return torch.nan_to_num(rows, nan=0.0).clamp_min_(0.0)
    rows = torch.nan_to_num(rows, nan=float("-inf"))
    if isinstance(temperature, torch.Tensor):
        rows = rows / temperature[:, None]
    elif temperature != 1.0:
        rows = rows / temperature
    return torch.softmax(rows, dim=-1)


def _pad_vocab(q: torch.Tensor, vocab: int) -> torch.Tensor:
    """A draft row over a smaller vocabulary gives probability 0 to the ids it lacks."""
    return q if q.shape[-1] == vocab else torch.nn.functional.pad(q, (0, vocab - q.shape[-1]))


def _argmax(rows: torch.Tensor) -> torch.Tensor:
    """Lowest index of the maximum, NaN treated as -inf."""
    return torch.nan_to_num(rows.float(), nan=float("-inf")).argmax(dim=-1)


def _draw(dist: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """One id per row from the unnormalised non-negative rows `dist` [B, V]."""
    if noise is not None:
        return (dist / noise).argmax(dim=-1)
    cdf = dist.cumsum(dim=-1)
    total = cdf[:, -1:]
    # u * total < total, so the id found has positive mass: cdf[id] > u * total >= cdf[id - 1].
    target = torch.minimum(uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=dist.shape[-1] - 1)


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
        [B] int64 in [0, K]; None means K for every row.
    temperature : float or torch.Tensor
        A float, or [B] float32; 0 marks a greedy row. Ignored when `from_probs`.
    seed : int or torch.Tensor
        Key of the counter-based uniforms (see :func:`counter_uniforms`).
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
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    on_cpu = device.type == "cpu"
    rows = torch.arange(batch, device=device)
    nd = torch.full((batch,), k, device=device) if num_draft_tokens is None else num_draft_tokens.to(torch.int64)

    if from_probs:
        greedy = torch.zeros(batch, dtype=torch.bool, device=device)
    elif isinstance(temperature, torch.Tensor):
        greedy = temperature == 0
        temperature = torch.where(greedy, 1.0, temperature.float())
    else:
        greedy = torch.full((batch,), temperature == 0, device=device)
        temperature = 1.0 if temperature == 0 else temperature
    any_greedy = bool(greedy.any()) if on_cpu else True
    any_sampled = not bool(greedy.all()) if on_cpu else True

    u = counter_uniforms(seed, batch, k + 1, device)
    if uniforms is not None:
        u = torch.cat([uniforms.float(), u[:, k:]], dim=1)

    n = nd.clone()
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    residual = torch.zeros(batch, vocab, device=device) if any_sampled else None
    for t in range(k):
        active = alive & (t < nd)
        if on_cpu and not bool(active.any()):
            break
        x = draft_tokens[:, t].to(torch.int64)
        valid = (x >= 0) & (x < vocab)
        xs = x.clamp(0, vocab - 1)
        accepted = torch.zeros(batch, dtype=torch.bool, device=device)
        if any_greedy:
            accepted = torch.where(greedy, xs == _argmax(target[:, t]), accepted)
        if any_sampled:
            p = _softmax(target[:, t], temperature, from_probs)
            if draft is None:
                q = torch.zeros_like(p).scatter_(1, xs[:, None], valid[:, None].float())
            else:
                q = _pad_vocab(_softmax(draft[:, t], temperature, from_probs), vocab)
            p_x, q_x = p.gather(1, xs[:, None])[:, 0], q.gather(1, xs[:, None])[:, 0]
            accepted = torch.where(greedy, accepted, u[:, t] * q_x < p_x)
        rejected = active & ~(accepted & valid)
        n = torch.where(rejected, t, n)
        alive = active & ~rejected
        if any_sampled and (not on_cpu or bool(rejected.any())):
            residual = torch.where(rejected[:, None], (p - q).clamp_min_(0.0), residual)

    # Rows that need p_n itself: the bonus (n == K_b) and corrections whose residual has no mass.
    last = target[rows, n]
    if any_sampled:
        use_p = (n == nd) | (residual.sum(dim=-1) <= RESIDUAL_EPS)
        if not on_cpu or bool(use_p.any()):
            residual = torch.where(use_p[:, None], _softmax(last, temperature, from_probs), residual)
        sampled = _draw(residual, u[:, k], None if noise is None else noise.float())
    else:
        sampled = n
    next_token = torch.where(greedy, _argmax(last), sampled) if any_greedy else sampled

    pos = torch.arange(k_plus_1, device=device)[None, :]
    drafts = torch.cat([draft_tokens.to(torch.int64), torch.zeros_like(n)[:, None]], dim=1)
    tokens = torch.where(pos < n[:, None], drafts, torch.where(pos == n[:, None], next_token[:, None], -1))
    return tokens, n
