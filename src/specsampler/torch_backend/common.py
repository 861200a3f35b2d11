"""Values and operations every rule of the torch backend shares: the constants, the softmax (with its treatment of
hostile values), the argmax, and the rule that an out-of-range draft id ends its row's drafts.

Notation (the whole package): p target, q draft; x_t the drafted token at position t; K_b the drafts row b really has.

Hostile values: NaN logits read as -inf, +inf as the largest float32; a row of -inf has probability 0 everywhere (no
draft is accepted there); probabilities are clamped to [0, 1], NaN to 0; a row drawn from that has no mass at all
gives a uniform draw. The CPU's fast path does not scrub the logits: any of those makes its softmax row NaN, a NaN row
is never accepted, so it can only reach the row drawn from, where it is seen and the row is redone from scrubbed
scores (``chain``).
"""

from __future__ import annotations

import torch

# RESIDUAL_EPS: a residual with at most this much mass is rounding noise (p equals q), the next token is then drawn
# from p; GREEDY_BELOW: temperatures below the smallest normal float32 make a row greedy (1 / T would overflow). One
# definition for both backends, in a module that imports no triton.
from ..triton_kernels.constants import GREEDY_BELOW, RESIDUAL_EPS

__all__ = ["FMAX", "GREEDY_BELOW", "LOG2_E", "RESIDUAL_EPS", "argmax", "drafts_in_range", "softmax"]

FMAX = torch.finfo(torch.float32).max
LOG2_E = 1.4426950408889634


def softmax(scores: torch.Tensor, temperature, from_probs: bool, vocab: int, scrub: bool) -> torch.Tensor:
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
        scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=FMAX, neginf=float("-inf"))
        scores = (scores - scores.amax(dim=-1, keepdim=True).clamp_min(-FMAX)) / t
        probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    else:
        probs = torch.softmax(scores if isinstance(t, float) and t == 1.0 else scores / t, dim=-1)
    return probs if probs.shape[-1] == vocab else torch.nn.functional.pad(probs, (0, vocab - probs.shape[-1]))


def argmax(scores: torch.Tensor) -> torch.Tensor:
    """Lowest index of the maximum, NaN treated as -inf."""
    if scores.device.type == "cpu" and scores.shape[-1] >= _ARGMAX_CHUNK and scores.numel():
        best = _argmax_cpu(scores.float().reshape(-1, scores.shape[-1]))
        if best is not None:
            return best.reshape(scores.shape[:-1])
    return torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(dim=-1)


_ARGMAX_CHUNK = 256


def _argmax_cpu(scores: torch.Tensor) -> torch.Tensor | None:
    """[N, V] float32 on the CPU -> [N] int64 lowest index of each row's maximum, or None if a row holds NaN.

    torch's CPU argmax is not vectorised (about 10x slower than amax over a vocabulary, and a scrubbing copy first):
    the maxima of the 256-id chunks (amax), the first chunk holding its row's maximum, then the first id in it.
    """
    rows, vocab = scores.shape
    chunk = _ARGMAX_CHUNK
    full = vocab - vocab % chunk
    chunk_max = scores[:, :full].reshape(rows, full // chunk, chunk).amax(dim=-1)
    if full < vocab:
        chunk_max = torch.cat([chunk_max, scores[:, full:].amax(dim=-1, keepdim=True)], dim=1)
    best = chunk_max.amax(dim=-1, keepdim=True)
    if bool(best.isnan().any()):  # (amax propagates NaN)
        return None
    lo = (chunk_max == best).to(torch.uint8).argmax(dim=-1) * chunk
    ids = (lo[:, None] + torch.arange(chunk)[None, :]).clamp_(max=vocab - 1)
    return lo + (scores.gather(1, ids) == best).to(torch.uint8).argmax(dim=-1)



def drafts_in_range(draft_tokens: torch.Tensor, vocab: int, num_draft_tokens: torch.Tensor | None) -> torch.Tensor:
    """[B] int64: each row's drafts up to its first id outside [0, `vocab`) (vLLM's -1 placeholder, or any other),
    and at most `num_draft_tokens` (None: K). An out-of-range id ends its row's drafts exactly as a smaller
    num_draft_tokens does: the next token there is the bonus from p, never a residual of a position never drafted.
    No host synchronisation. `draft_tokens` [B, K] int (K may be 0)."""
    x = draft_tokens.to(torch.int64)
    leading = ((x >= 0) & (x < vocab)).to(torch.int64).cumprod(dim=1).sum(dim=1)
    return leading if num_draft_tokens is None else torch.minimum(leading, num_draft_tokens.to(leading.device))
