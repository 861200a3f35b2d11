"""The sampling warpers in torch: top-k, top-p and min-p, applied to p and q alike after the temperature, in
transformers' order.

They keep the logits at or above one cut per row, tau = max(tau_k, tau_p, tau_m), with w(l) = exp((l - max) / T):
- tau_k: the k-th largest logit (every logit equal to it kept, as transformers' `TopKLogitsWarper` does);
- tau_p: the largest logit v whose kept mass at or above it, sum of w(l) over kept l >= v, reaches top_p times the
  mass kept by top-k: the highest logits until their mass reaches top_p, and every logit equal to the last one
  (transformers keeps the ties in whatever order its sort gives; the set is the same when there is no tie at the cut);
  the maximum is always kept;
- tau_m: max + T * ln(min_p) (w(l) >= min_p: a probability at least min_p times the largest).
p is then w / sum of w over the kept logits. Greedy rows are unaffected (the argmax is always kept). The per-row CPU
path warps a row only when its softmax is needed (:func:`row_scores`), with topk (k values) for top-k and a look among
the 1024 largest logits before any sort for top-p alone; the batched path computes every cut at once with no host
synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .common import FMAX, GREEDY_BELOW, LOG2_E


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
        flat = torch.nan_to_num(flat, nan=float("-inf"), posinf=FMAX, neginf=float("-inf"))
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



def row_scores(rows: torch.Tensor, t: int, temperature: float, warp: Warp | None, first) -> torch.Tensor:
    """Row t of [R, V'] logits, warped when `warp` is given (sampled rows); `first` is row 0 already warped."""
    if warp is None or temperature < GREEDY_BELOW:
        return rows[t]
    if t == 0 and first is not None:
        return first
    return warp_scores(rows[t][None, None], temperature, warp)[0, 0]
