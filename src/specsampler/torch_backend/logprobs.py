"""The emitted tokens' log-probabilities in torch (``return_logprobs=True``), for every rule and for trees.

:func:`emitted_logprobs` gives the log-probability of each emitted token under the target's distribution at its
position: softmax of the warped scores / T_b on sampled rows, of the unwarped scores at T = 1 on greedy rows (as
transformers' ``compute_transition_scores(..., normalize_logits=True)`` gives for greedy search), the given
probabilities with `from_probs`; -log V where the row has no mass (a uniform draw); 0 at padding. The kernel's oracle
(``triton_kernels.verify_positions``).
"""

from __future__ import annotations

import math

import torch

from .common import FMAX, GREEDY_BELOW
from .warp import Warp, warp_scores


def emitted_logprobs(target, tokens, num_accepted, temperature, warp: Warp | None, from_probs: bool) -> torch.Tensor:
    """[B, K+1] float32: the log-probability of each emitted token under the target's distribution at its position
    (see the module docstring); 0 at padding. `target` [B, K+1, V] logits (probabilities with `from_probs`), `tokens`
    [B, K+1] int64 with -1 padding, `num_accepted` [B]."""
    batch, k_plus_1, vocab = target.shape
    device = target.device
    ids = tokens.to(device).clamp(min=0)
    emitted = torch.arange(k_plus_1, device=device)[None, :] <= num_accepted.to(device)[:, None]
    if from_probs:
        probs = torch.nan_to_num(target.detach().float(), nan=0.0).clamp_(0.0, 1.0)
        chosen = probs.gather(2, ids[:, :, None])[:, :, 0]
        out = torch.where(probs.sum(dim=2) > 0, torch.log(chosen), -math.log(vocab))
        return torch.where(emitted, out, 0.0)
    temp = temperature if isinstance(temperature, torch.Tensor) else torch.full((batch,), float(temperature),
                                                                                device=device)
    greedy = temp < GREEDY_BELOW
    scores = target.detach().float()
    if warp is not None:  # (greedy rows come back unwarped)
        scores = warp_scores(scores, temp, warp, host=False)
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=FMAX)
    top = scores.amax(dim=2, keepdim=True)
    scores = (scores - torch.where(top > float("-inf"), top, 0.0)) / torch.where(greedy, 1.0, temp)[:, None, None]
    lse = torch.logsumexp(scores, dim=2)
    chosen = scores.gather(2, ids[:, :, None])[:, :, 0]
    out = torch.where(lse > float("-inf"), chosen - lse, -math.log(vocab))
    return torch.where(emitted, out, 0.0)
