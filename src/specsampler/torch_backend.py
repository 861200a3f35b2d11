"""The torch backend of :func:`specsampler.verify`: runs on any device, and is the oracle for the Triton kernel.

Notation: p target, q draft; x_t the drafted token at position t; K_b the drafts row b really has.

1. p_t = softmax(target_logits[b, t] / T_b), q_t likewise; x_t is accepted iff u_t * q_t(x_t) < p_t(x_t) (greedy rows:
   iff x_t == argmax p_t). n = the first rejected position, K_b if none.
2. At n < K_b the correction is drawn from r = max(0, p_n - q_n) (from p_n when r has no mass, sum r <= EPS); at
   n = K_b the bonus token is drawn from p_{K_b}; greedy rows take argmax p_n.
K_b is num_draft_tokens[b] (K without it), and at most the position of the row's first draft id outside [0, V)
(vLLM's -1 placeholder): such an id ends the row's drafts exactly as num_draft_tokens would (:func:`drafts_in_range`).
The uniforms come from the entry point's own stream of the seed (:func:`draw_uniforms`): a draw (`sample`) and a
verification on one seed use independent numbers.

Two paths compute exactly this:
- On the CPU, where `exp` is slow and every torch call costs microseconds, rows and positions go one at a time with
  the decisions in Python: the softmax of position t is computed only if x_0..x_{t-1} were accepted, the bonus row's
  only if every draft was; the correction is drawn by the inverse CDF with one uniform and no per-vocabulary noise
  (sums of 256-id chunks to find the chunk, then a cumulative sum within it: no sequential pass over V).
  transformers' `_speculative_sampling` computes all 2K+1 softmax rows and an `exponential_` over the vocabulary for
  its `multinomial`.
- Elsewhere the whole batch goes through one fixed sequence of batched ops: no loop, no host synchronisation
  (CUDA-graph and torch.compile friendly).
When the caller supplies exponential noise E (the test hook that makes the backend replay the kernel's random
numbers), both draw argmax r(x)/E_x instead: the kernel's exponential race.

Warpers (`top_k`, `top_p`, `min_p`, applied to p and q alike after the temperature, in transformers' order) keep the
logits at or above one cut per row, tau = max(tau_k, tau_p, tau_m), with w(l) = exp((l - max) / T):
- tau_k: the k-th largest logit (every logit equal to it kept, as transformers' `TopKLogitsWarper` does);
- tau_p: the largest logit v whose kept mass at or above it, sum of w(l) over kept l >= v, reaches top_p times the
  mass kept by top-k: the highest logits until their mass reaches top_p, and every logit equal to the last one
  (transformers keeps the ties in whatever order its sort gives; the set is the same when there is no tie at the cut);
  the maximum is always kept;
- tau_m: max + T * ln(min_p) (w(l) >= min_p: a probability at least min_p times the largest).
p is then w / sum of w over the kept logits. Greedy rows are unaffected (the argmax is always kept). The per-row CPU
path warps a row only when its softmax is needed, with topk (k values) for top-k and a look among the 1024 largest
logits before any sort for top-p alone; the batched path computes every cut at once with no host synchronisation.

Hostile values: NaN logits read as -inf, +inf as the largest float32; a row of -inf has probability 0 everywhere (no
draft is accepted there); probabilities are clamped to [0, 1], NaN to 0; a row drawn from that has no mass at all
gives a uniform draw. The CPU's fast path does not scrub the logits: any of those makes its softmax row NaN, a NaN row
is never accepted, so it can only reach the row drawn from, where it is seen and the row is redone from scrubbed
scores.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

# RESIDUAL_EPS: a residual with at most this much mass is rounding noise (p equals q), the next token is then drawn
# from p; GREEDY_BELOW: temperatures below the smallest normal float32 make a row greedy (1 / T would overflow). One
# definition for both backends, in a module that imports no triton.
from .triton_kernels.constants import GREEDY_BELOW, RESIDUAL_EPS, STREAM_KEYS, STREAM_VERIFY

_FMAX = torch.finfo(torch.float32).max
LOG2_E = 1.4426950408889634

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


def hash_seed(seed: int) -> int:
    """Any Python int -> [0, 2**62): splitmix64 over its 64-bit limbs, then its sign, so that distinct seeds (2**62
    apart, or beyond 64 bits) give independent streams."""
    h, n = 0, abs(seed)
    while True:
        h = _splitmix64(h ^ (n & _MASK64))
        n >>= 64
        if not n:
            break
    return _splitmix64(h ^ (seed < 0)) >> 2


def _splitmix64(z: int) -> int:
    """splitmix64's finaliser on one Python int (the constants of :func:`_mix`, unsigned)."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * (_MIX1 & _MASK64)) & _MASK64
    z = ((z ^ (z >> 27)) * (_MIX2 & _MASK64)) & _MASK64
    return z ^ (z >> 31)


def draw_uniforms(seed: int | torch.Tensor, batch: int, count: int, device: torch.device,
                  stream: int = STREAM_VERIFY) -> torch.Tensor:
    """The backend's uniforms: from a generator seeded with an int seed, or counter-based from per-row seeds.

    Parameters
    ----------
    seed : int or torch.Tensor
        One seed for the batch (a torch.Generator on `device`), or a [B] int64 tensor of per-row seeds, hashed with
        the position (splitmix64) so that a row's numbers do not depend on where it sits in the batch.
    batch, count : int
        B and the number of uniforms per row.
    device : torch.device
    stream : int
        The entry point's stream (``constants.STREAM_*``): an int seed's generator is seeded with seed XOR
        ``STREAM_KEYS[stream]``, per-row seeds count positions from ``stream * 2**32``; the same seed gives
        independent numbers in each stream (stream 0, verify's: the seed as it is).

    Returns
    -------
    torch.Tensor
        [B, count] float32 in [0, 1), multiples of 2**-24.
    """
    if not isinstance(seed, torch.Tensor):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed ^ STREAM_KEYS[stream])
        return torch.rand(batch, count, generator=generator, device=device)
    pos = torch.arange(stream << 32, (stream << 32) + count, device=device, dtype=torch.int64)
    bits = _mix(_mix(seed.to(device=device, dtype=torch.int64))[:, None] ^ pos[None, :])
    return _shr(bits, 40).to(torch.float32) * (2.0**-24)


def _softmax(scores: torch.Tensor, temperature, from_probs: bool, vocab: int, scrub: bool) -> torch.Tensor:
    """[..., V'] scores -> [..., vocab] float32 probabilities, ids >= V' at 0.

    Probabilities are clamped to [0, 1], NaN to 0. Logits with `scrub`: NaN reads as -inf, +inf as the largest float32,
    the maximum is subtracted before dividing by T (no overflow at tiny T), and a row that is all -inf gets
    probability 0 everywhere. Without `scrub` (the CPU's fast path) a row holding any of those comes out NaN.
    A tensor `temperature` is [B] against scores [B, R, V'].
    """
    if type(temperature) is float and temperature == 1.0 and not (from_probs or scrub) and (
            scores.dtype == torch.float32 and scores.shape[-1] == vocab):  # the common case first (CPU: per call)
        return torch.softmax(scores, dim=-1)
    if scores.dtype != torch.float32:
        scores = scores.float()
    t = temperature[:, None, None] if isinstance(temperature, torch.Tensor) else temperature
    if from_probs:
        probs = torch.nan_to_num(scores, nan=0.0).clamp_(0.0, 1.0)
    elif scrub:
        scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=_FMAX, neginf=float("-inf"))
        scores = (scores - scores.amax(dim=-1, keepdim=True).clamp_min(-_FMAX)) / t
        probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    else:
        probs = torch.softmax(scores if isinstance(t, float) and t == 1.0 else scores / t, dim=-1)
    return probs if probs.shape[-1] == vocab else torch.nn.functional.pad(probs, (0, vocab - probs.shape[-1]))


def _argmax(scores: torch.Tensor) -> torch.Tensor:
    """Lowest index of the maximum, NaN treated as -inf."""
    if scores.device.type == "cpu" and scores.shape[-1] >= _CHUNK and scores.numel():
        best = _argmax_cpu(scores.float().reshape(-1, scores.shape[-1]))
        if best is not None:
            return best.reshape(scores.shape[:-1])
    return torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(dim=-1)


def _argmax_cpu(scores: torch.Tensor) -> torch.Tensor | None:
    """[N, V] float32 on the CPU -> [N] int64 lowest index of each row's maximum, or None if a row holds NaN.

    torch's CPU argmax is not vectorised (about 10x slower than amax over a vocabulary, and a scrubbing copy first):
    the maxima of the 256-id chunks (amax), the first chunk holding its row's maximum, then the first id in it.
    """
    rows, vocab = scores.shape
    full = vocab - vocab % _CHUNK
    chunk_max = scores[:, :full].reshape(rows, full // _CHUNK, _CHUNK).amax(dim=-1)
    if full < vocab:
        chunk_max = torch.cat([chunk_max, scores[:, full:].amax(dim=-1, keepdim=True)], dim=1)
    best = chunk_max.amax(dim=-1, keepdim=True)
    if bool(best.isnan().any()):  # (amax propagates NaN)
        return None
    lo = (chunk_max == best).to(torch.uint8).argmax(dim=-1) * _CHUNK
    ids = (lo[:, None] + torch.arange(_CHUNK)[None, :]).clamp_(max=vocab - 1)
    return lo + (scores.gather(1, ids) == best).to(torch.uint8).argmax(dim=-1)


def _draw(dist: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """One id per row of the unnormalised non-negative `dist` [B, V] with `uniform` [B]: the race with `noise`, else
    the inverse CDF."""
    if noise is not None:
        return (dist / noise).argmax(dim=-1)
    cdf = dist.cumsum(dim=-1)
    # u < 1 in float32, so u * total rounds below total (in float32) and the id found has positive mass:
    # cdf[id] > u * total >= cdf[id - 1]. The clamp only matters for a row with no mass at all.
    value = cdf[..., -1:] * uniform[:, None]
    return torch.searchsorted(cdf, value, right=True)[..., 0].clamp_(max=dist.shape[-1] - 1)


class Warp(NamedTuple):
    """Validated warpers, each an int/float for the whole batch or a [B] tensor on the scores' device.

    top_k : int or torch.Tensor
        int64; 0 (or >= V) keeps every logit.
    top_p : float or torch.Tensor
        float32 in [0, 1]; 1 is off.
    min_offset : float or torch.Tensor
        float32 T * ln(min_p): the min-p cut's offset from the row maximum; -inf is off. Computed once by the caller,
        so that both backends compare logits with the same float32 cut.
    """

    top_k: int | torch.Tensor
    top_p: float | torch.Tensor
    min_offset: float | torch.Tensor


def _per_row(value, rows: torch.Tensor, dtype, device) -> torch.Tensor:
    """A batch-wide value or a [B] tensor, as one value per row of `rows` [N] (each row's batch index)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)[rows]
    return torch.full(rows.shape, value, dtype=dtype, device=device)


def warp_cut(scores: torch.Tensor, scale: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
             min_offset: torch.Tensor, top_width: int | None, any_top_p: bool, host: bool = False) -> torch.Tensor:
    """The cut tau of each row (see the module's docstring): the row keeps its logits >= tau.

    Parameters
    ----------
    scores : torch.Tensor
        [N, V] float32 logits, NaN already read as -inf and +inf as the largest float32.
    scale : torch.Tensor
        [N] float32 log2(e) / T (w = exp2((l - max) * scale)).
    top_k, top_p, min_offset : torch.Tensor
        [N] int64, float32, float32, as in :class:`Warp`.
    top_width : int or None
        How many of each row's largest logits the cuts can need: None, whole rows (some row has top-p without a
        top-k); 0 none (no top-k and no top-p anywhere).
    any_top_p : bool
        Whether some row may have top_p < 1.
    host : bool
        Decisions on the host are allowed (CPU tensors): rows with top-p alone look among their 1024 largest logits
        first and sort whole only when the cut lies further down. Without it there is no host synchronisation.

    Returns
    -------
    torch.Tensor
        [N] float32; -inf keeps everything.
    """
    vocab = scores.shape[1]
    neg = torch.full_like(scale, float("-inf"))
    m = scores.amax(dim=1)
    m_safe = torch.where(m == float("-inf"), 0.0, m)
    cut = torch.where(min_offset > float("-inf"), m + min_offset, neg)
    if top_width == 0:
        return cut
    k_on = (top_k > 0) & (top_k < vocab)
    if top_width is None and host:  # the largest top-k, or the first look of top-p alone
        top_width = max(_TOP_P_FIRST, int(torch.where(k_on, top_k, 0).max()))
    whole = top_width is None or top_width >= vocab
    if whole:
        top = scores.sort(dim=1, descending=True).values
    else:
        top = scores.topk(top_width, dim=1).values
    cut_k = torch.where(k_on, top.gather(1, (top_k - 1).clamp(0, top.shape[1] - 1)[:, None])[:, 0], neg)
    if any_top_p:
        p_on = top_p < 1.0
        w_top = torch.exp2((top - m_safe[:, None]) * scale[:, None])
        # The mass top-k keeps: its values are in `top`, but for ties with the k-th beyond the list; top-k off: all.
        listed = top >= cut_k[:, None]
        mass_k = torch.where(listed, w_top, 0.0).sum(dim=1)
        ties = (scores == cut_k[:, None]).sum(dim=1) - (top == cut_k[:, None]).sum(dim=1)
        mass_k = mass_k + ties * torch.exp2((cut_k - m_safe) * scale)
        if whole or not host or bool((p_on & ~k_on).any()):
            full = torch.exp2((scores - m_safe[:, None]) * scale[:, None]).sum(dim=1)
            mass_k = torch.where(k_on, mass_k, full)
        hit = (w_top.cumsum(dim=1) >= (top_p * mass_k)[:, None]) & listed
        found = hit.any(dim=1)
        cut_p = torch.where(found, top.gather(1, hit.to(torch.int8).argmax(dim=1)[:, None])[:, 0], cut_k)
        if not whole and host and bool((p_on & ~k_on & ~found).any()):  # the cut lies past the first 1024: sort
            return warp_cut(scores, scale, top_k, top_p, min_offset, None, any_top_p)
        # (no hit in a whole list: the sums' rounding with top_p near 1; every logit top-k kept)
        cut = torch.maximum(cut, torch.where(p_on, cut_p, neg))
    return torch.maximum(cut, cut_k)


# Rows with top-p and no top-k look for their cut among this many largest logits first (the CPU's per-call path).
_TOP_P_FIRST = 1024


def warp_scores(scores: torch.Tensor, temperature: float | torch.Tensor, warp: Warp,
                host: bool | None = None) -> torch.Tensor:
    """[B, R, V] logits -> [B, R, V] float32 logits with every logit below its row's cut at -inf (sampled rows only).

    NaN reads as -inf and +inf as the largest float32 (as everywhere in both backends); greedy rows (T below
    2**-126) come back unwarped. `host`: decisions on the host allowed (see :func:`warp_cut`); None: on CPU tensors.
    The batched path passes False, so that it runs the same code on the CPU as on CUDA."""
    batch, r, vocab = scores.shape
    device = scores.device
    host = device.type == "cpu" if host is None else host
    flat = scores.float().reshape(-1, vocab)
    if flat.shape[0] == 0:  # (K = 0: no draft rows)
        return flat.reshape(batch, r, vocab)
    if not host or not bool(flat.amax(dim=1).isfinite().all()):  # (a row of -inf has max -inf: scrubbed too)
        flat = torch.nan_to_num(flat, nan=float("-inf"), posinf=_FMAX, neginf=float("-inf"))
    if not isinstance(temperature, torch.Tensor) and not any(isinstance(v, torch.Tensor) for v in warp) and \
            warp.top_p >= 1.0 and temperature >= GREEDY_BELOW:  # the common cases in few operations (CPU: per call)
        if 0 < warp.top_k < vocab:
            cut = flat.topk(warp.top_k, dim=1).values[:, -1:]
            if warp.min_offset > float("-inf"):
                cut = torch.maximum(cut, flat.amax(dim=1, keepdim=True) + warp.min_offset)
        elif warp.min_offset > float("-inf"):
            cut = flat.amax(dim=1, keepdim=True) + warp.min_offset
        else:
            return flat.reshape(batch, r, vocab)
        return flat.masked_fill(flat < cut, float("-inf")).reshape(batch, r, vocab)
    rows = torch.arange(batch, device=device).repeat_interleave(r)
    temp = _per_row(temperature, rows, torch.float32, device)
    sampled = temp >= GREEDY_BELOW
    scale = (1.0 / torch.where(sampled, temp, 1.0)) * LOG2_E
    any_top_p = isinstance(warp.top_p, torch.Tensor) or warp.top_p < 1.0
    if isinstance(warp.top_k, torch.Tensor):
        top_width = None
    elif 0 < warp.top_k < vocab:
        top_width = warp.top_k
    else:
        top_width = None if any_top_p else 0
    cut = warp_cut(flat, scale, _per_row(warp.top_k, rows, torch.int64, device),
                   _per_row(warp.top_p, rows, torch.float32, device),
                   _per_row(warp.min_offset, rows, torch.float32, device), top_width, any_top_p, host)
    cut = torch.where(sampled, cut, float("-inf"))
    return flat.masked_fill(flat < cut[:, None], float("-inf")).reshape(batch, r, vocab)


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
    vectorized: bool | None = None,
    warp: Warp | None = None,
    method: str = "token",
    stream: int = STREAM_VERIFY,
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
        [B] int in [0, K]; None means K for every row. A draft id outside [0, V) ends its row's drafts there, as a
        smaller num_draft_tokens would (:func:`drafts_in_range`).
    temperature : float or torch.Tensor
        A float, or [B] float32; 0 marks a greedy row. Ignored when `from_probs`.
    seed : int or torch.Tensor
        Key of the backend's uniforms (see :func:`draw_uniforms`).
    uniforms, noise : torch.Tensor or None
        Test hook: [B, K] acceptance uniforms in [0, 1) and [B, V] positive exponential noise, replacing the
        backend's own random numbers (the kernel accepts the same two tensors).
    vectorized : bool or None
        Force the batched path (True) or the per-row path (False, CPU tensors only); None: per-row on the CPU.
    warp : Warp or None
        top-k / top-p / min-p, applied to the target's and the draft's logits of sampled rows (not with `from_probs`).
    method : {"token", "block"}
        Token verification (this module), or block verification (``torch_block``: the same paths, the same random
        numbers, another decision).
    stream : int
        The random stream of the entry point (:func:`draw_uniforms`): ``constants.STREAM_SAMPLE`` for a draw.

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
    if target.requires_grad or (draft is not None and draft.requires_grad):  # a model's raw output: no graph here
        target, draft = target.detach(), None if draft is None else draft.detach()
    if from_probs:
        temperature = 1.0
    if num_draft_tokens is not None:  # as the kernel does: no value reads out of bounds
        num_draft_tokens = num_draft_tokens.to(torch.int64).clamp(0, k)
    u = draw_uniforms(seed, batch, k_plus_1, device, stream)
    if uniforms is not None:
        u = torch.cat([uniforms.float(), u[:, k:]], dim=1)
    verify_batch, verify_row = _verify_batch, _verify_row
    if method == "block":
        from .torch_block import block_batch as verify_batch
        from .torch_block import block_row as verify_row
    if vectorized is None:
        vectorized = device.type != "cpu"
    elif not vectorized and device.type != "cpu":
        raise ValueError(f"the per-row path (vectorized=False) runs on CPU tensors only, got {device}")
    if warp is not None and not from_probs and vectorized:
        target = warp_scores(target, temperature, warp, host=False)
        draft = None if draft is None else warp_scores(draft, temperature, warp, host=False)
    if vectorized:
        num_draft_tokens = drafts_in_range(draft_tokens, target.shape[2], num_draft_tokens)
        args = (target, draft_tokens, draft, num_draft_tokens, temperature, u, noise, from_probs)
        tokens, n, clean = verify_batch(*args, scrub=device.type != "cpu")
        if device.type != "cpu":  # scrubbed already: no host synchronisation (CUDA graphs, torch.compile)
            return tokens, n
        return (tokens, n) if bool(clean) else verify_batch(*args, scrub=True)[:2]

    drafts = draft_tokens.tolist()
    k_rows = [k] * batch if num_draft_tokens is None else num_draft_tokens.tolist()
    vocab = target.shape[2]
    k_rows = [next((t for t in range(k_b) if not 0 <= x[t] < vocab), k_b)  # (an out-of-range id ends the drafts)
              for x, k_b in zip(drafts, k_rows, strict=True)]
    temps = temperature.tolist() if isinstance(temperature, torch.Tensor) else [temperature] * batch
    u_rows = u.tolist()
    tokens = np.empty((batch, k_plus_1), dtype=np.int64)
    tokens.fill(-1)
    counts = np.empty(batch, dtype=np.int64)
    # The per-row path warps every row's first position in one batched call (every sampled row reads them), the
    # later ones only when their softmax is needed (warp_scores on that row alone).
    warps = [None] * batch
    first_t = first_d = None
    if warp is not None and not from_probs:
        warps = [Warp(*[v[b].item() if isinstance(v, torch.Tensor) else v for v in warp]) for b in range(batch)]
        first_t = warp_scores(target[:, :1], temperature, warp)[:, 0]
        first_d = None if draft is None or k == 0 else warp_scores(draft[:, :1], temperature, warp)[:, 0]
    for b in range(batch):
        first = None if first_t is None else (first_t[b], None if first_d is None else first_d[b])
        args = (target[b], drafts[b], None if draft is None else draft[b], k_rows[b], temps[b], u_rows[b],
                None if noise is None else noise[b], from_probs, warps[b], first)
        n, token, clean = verify_row(*args, scrub=False)
        if not clean:
            n, token, _ = verify_row(*args, scrub=True)
        tokens[b, :n] = drafts[b][:n]
        tokens[b, n] = token
        counts[b] = n
    return torch.from_numpy(tokens), torch.from_numpy(counts)


def drafts_in_range(draft_tokens: torch.Tensor, vocab: int, num_draft_tokens: torch.Tensor | None) -> torch.Tensor:
    """[B] int64: each row's drafts up to its first id outside [0, `vocab`) (vLLM's -1 placeholder, or any other),
    and at most `num_draft_tokens` (None: K). An out-of-range id ends its row's drafts exactly as a smaller
    num_draft_tokens does: the next token there is the bonus from p, never a residual of a position never drafted.
    No host synchronisation. `draft_tokens` [B, K] int (K may be 0)."""
    x = draft_tokens.to(torch.int64)
    leading = ((x >= 0) & (x < vocab)).to(torch.int64).cumprod(dim=1).sum(dim=1)
    return leading if num_draft_tokens is None else torch.minimum(leading, num_draft_tokens.to(leading.device))


def _row_scores(rows: torch.Tensor, t: int, temperature: float, warp: Warp | None, first) -> torch.Tensor:
    """Row t of [R, V'] logits, warped when `warp` is given (sampled rows); `first` is row 0 already warped."""
    if warp is None or temperature < GREEDY_BELOW:
        return rows[t]
    if t == 0 and first is not None:
        return first
    return warp_scores(rows[t][None, None], temperature, warp)[0, 0]


def _verify_row(target, x, draft, k_b, temperature, u, noise, from_probs, warp, first, scrub):
    """One row on the CPU: target [K+1, V], x K ints, draft [K, Vd] or None, k_b int, temperature float (0: greedy),
    u K+1 floats, noise [V] or None. Returns (n, next token, whether the row drawn from was free of NaN)."""
    vocab = target.shape[-1]
    if temperature < GREEDY_BELOW and not from_probs:
        best = _argmax(target[: k_b + 1]).tolist()
        n = next((t for t in range(k_b) if x[t] != best[t]), k_b)
        return n, best[n], True

    # 1. Decisions, one position at a time: a row's later softmax rows are computed only if its drafts get there.
    # (A decision needs only the row's logsumexp, but the fused softmax is faster than logsumexp on CPUs, and the
    # rejected position needs p and q in full anyway.)
    for t in range(k_b):
        p_t = _softmax(_row_scores(target, t, temperature, warp, first and first[0]), temperature, from_probs, vocab,
                       scrub)
        q_t = None if draft is None else _softmax(_row_scores(draft, t, temperature, warp, first and first[1]),
                                                  temperature, from_probs, vocab, scrub)
        valid = 0 <= x[t] < vocab
        one_hot = q_t is None
        if valid and not one_hot:
            q_x = q_t[x[t]].item()
            if q_x != q_x:  # NaN from an unscrubbed row: redo the row from scrubbed scores
                return t, 0, False
            one_hot = not q_x > 0.0  # q gives its own token nothing: one-hot at x_t (see _verify_batch)
        if valid and u[t] * (1.0 if one_hot else q_x) < p_t[x[t]].item():
            continue
        # 2. Rejected: the correction from r = max(0, p_t - q_t); from p_t itself when r has no mass.
        if one_hot:  # one-hot at x_t: r is p_t without x_t (nothing removed for an id outside the vocabulary)
            r = p_t.clone()
            if valid:
                r[x[t]] = 0.0
        else:
            r = (p_t - q_t).clamp_min_(0.0)
        token, total = _draw_row(r, u[-1], noise)
        if total <= RESIDUAL_EPS:
            token, total = _draw_row(p_t, u[-1], noise)
        return t, token, total == total

    # 2. Every draft accepted: the bonus token from p_{K_b}.
    token, total = _draw_row(_softmax(_row_scores(target, k_b, temperature, warp, first and first[0]), temperature,
                                      from_probs, vocab, scrub), u[-1], noise)
    return k_b, token, total == total


# The inverse CDF of one row walks the vocabulary in chunks: the chunk sums in one matrix-vector product, a cumulative
# sum over them to find the chunk, then one over that chunk alone (a cumulative sum over all of V is sequential and
# several times slower on CPUs).
_CHUNK = 256
_ONES = np.ones(_CHUNK, dtype=np.float32)


def _draw_row(dist: torch.Tensor, uniform: float, noise: torch.Tensor | None) -> tuple[int, float]:
    """Draw one id from the unnormalised non-negative CPU row `dist` [V] float32 with one uniform in [0, 1).

    The race argmax dist / noise instead when `noise` [V] is given (the test hook). Returns (id, total mass); a row of
    no mass gives a uniform id; a row holding NaN gives a NaN total (and a meaningless id).
    """
    values = dist.numpy()
    vocab = values.shape[0]
    full = vocab - vocab % _CHUNK
    cum = (values[:full].reshape(-1, _CHUNK) @ _ONES).cumsum(dtype=np.float64)
    head = float(cum[-1]) if full else 0.0
    total = head + float(values[full:].sum(dtype=np.float64)) if full < vocab else head
    if noise is not None:
        return int(((dist if total != 0.0 else torch.ones(vocab)) / noise).argmax()), total
    if not total > 0.0:  # no mass (uniform), or NaN
        return min(int(uniform * vocab), vocab - 1), total
    # u < 1, so u * total < total: the chunk found has mass, and so has the id found in it, which satisfies
    # cum(id) > u * total >= cum(id - 1) up to the float32 rounding of the chunk sums.
    value = uniform * total
    chunk = int(cum.searchsorted(value, side="right")) if value < head else full // _CHUNK
    lo = chunk * _CHUNK
    inner = values[lo : lo + _CHUNK].cumsum(dtype=np.float64)
    i = int(inner.searchsorted(value - (float(cum[chunk - 1]) if chunk else 0.0), side="right"))
    if i == inner.shape[0]:  # rounding at the chunk's end: its last id with mass
        i = int(np.flatnonzero(values[lo : lo + _CHUNK])[-1])
    return lo + i, total


def _verify_batch(target, draft_tokens, draft, nd, temperature, u, noise, from_probs, scrub):
    """The batched path: shapes as in :func:`verify_torch`, `nd` [B] or None, `u` [B, K+1] float32 (acceptance
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
    p = _softmax(target, temperature, from_probs, vocab, scrub)
    p_x = p[:, :k].gather(2, xs[:, :, None])[:, :, 0]
    if draft is None:
        q, q_x, one_hot = None, valid.float(), valid
    else:
        q = _softmax(draft, temperature, from_probs, vocab, scrub)
        q_x = q.gather(2, xs[:, :, None])[:, :, 0]
        nan_q = q_x.isnan().any()
        # A draft that gives its own token no probability (-inf or NaN logits there, an id past its vocabulary) is
        # one-hot at x: accepted with probability p(x), the correction from p without x (exact whatever made x).
        one_hot = valid & ~(q_x > 0)
        q_x = torch.where(one_hot, 1.0, q_x)
    accepted = (u[:, :k] * q_x < p_x) & valid
    if greedy is not None:
        argmax = _argmax(target)
        accepted = torch.where(greedy[:, None], (xs == argmax[:, :k]) & valid, accepted)
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
    next_token = _draw(dist, u[:, k], None if noise is None else noise.float())
    if greedy is not None:
        next_token = torch.where(greedy, argmax[rows, n], next_token)

    tokens = torch.where(pos < n[:, None], torch.nn.functional.pad(x, (0, 1)), -1)
    tokens.scatter_(1, n[:, None], next_token[:, None])
    return tokens, n, clean
