"""The chain rules' driver in torch: the work every rule of :func:`specsampler.verify` shares (uniforms, clamped
counts, warpers, the path), the rule's own decisions given as a :class:`ChainRule` (``token``, ``block``).

Two paths compute a rule:
- On the CPU, where `exp` is slow and every torch call costs microseconds, rows and positions go one at a time with
  the decisions in Python (the rule's `row`): a rule computes a softmax only where a decision needs it, and draws by
  the inverse CDF with one uniform and no per-vocabulary noise (sums of 256-id chunks to find the chunk, then a
  cumulative sum within it: no sequential pass over V; ``sample.draw_row``).
- Elsewhere the whole batch goes through one fixed sequence of batched ops (the rule's `batch`): no loop, no host
  synchronisation (CUDA-graph and torch.compile friendly).
A row whose unscrubbed scores held NaN or infinities (the CPU's fast path, see ``common``) is redone from scrubbed
scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..triton_kernels.constants import STREAM_VERIFY
from .common import drafts_in_range
from .sample import draw_uniforms
from .warp import Warp, warp_scores


class ChainRule(NamedTuple):
    """A chain rule's two paths.

    batch : callable
        ``batch(target, draft_tokens, draft, nd, temperature, u, noise, from_probs, scrub)`` -> (tokens [B, K+1],
        num_accepted [B], whether the rows drawn from were free of NaN): any device, no host synchronisation;
        `target` and `draft` already warped, `nd` [B] or None, `u` [B, K+1] (K decision uniforms, then the draw's).
    row : callable
        ``row(target, x, draft, k_b, temperature, u, noise, from_probs, warp, first, scrub)`` -> (accepted, next
        token, whether the row drawn from was free of NaN): one CPU row, `x` K ints, `temperature` a float, `u` K+1
        floats, `warp` the row's warpers (each row warped when its softmax is needed), `first` its first position
        already warped.
    """

    batch: Callable
    row: Callable


def verify_chain(
    rule: ChainRule,
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
    stream: int = STREAM_VERIFY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify B rows of K drafts each by `rule`; arguments already validated by :func:`specsampler.verify`.

    Parameters
    ----------
    rule : ChainRule
        The rule's paths (``token.RULE``, ``block.RULE``).
    target : torch.Tensor
        [B, K+1, V] float32/bfloat16/float16 logits (probabilities when `from_probs`).
    draft_tokens : torch.Tensor
        [B, K] int32/int64.
    draft : torch.Tensor or None
        [B, K, Vd] (Vd <= V) scores the drafts were sampled from; None for one-hot drafts.
    num_draft_tokens : torch.Tensor or None
        [B] int in [0, K]; None means K for every row. A draft id outside [0, V) ends its row's drafts there, as a
        smaller num_draft_tokens would (:func:`~.common.drafts_in_range`).
    temperature : float or torch.Tensor
        A float, or [B] float32; 0 marks a greedy row. Ignored when `from_probs`.
    seed : int or torch.Tensor
        Key of the backend's uniforms (see :func:`~.sample.draw_uniforms`).
    uniforms, noise : torch.Tensor or None
        Test hook: [B, K] acceptance uniforms in [0, 1) and [B, V] positive exponential noise, replacing the
        backend's own random numbers (the kernel accepts the same two tensors).
    vectorized : bool or None
        Force the batched path (True) or the per-row path (False, CPU tensors only); None: per-row on the CPU.
    warp : Warp or None
        top-k / top-p / min-p, applied to the target's and the draft's logits of sampled rows (not with `from_probs`).
    stream : int
        The random stream of the entry point (:func:`~.sample.draw_uniforms`): ``constants.STREAM_SAMPLE`` for a
        draw.

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
    if vectorized is None:
        vectorized = device.type != "cpu"
    elif not vectorized and device.type != "cpu":
        raise ValueError(f"the per-row path (vectorized=False) runs on CPU tensors only, got {device}")
    if not vectorized:
        return _per_row_path(rule.row, target, draft_tokens, draft, num_draft_tokens, temperature, u, noise,
                             from_probs, warp)
    if warp is not None and not from_probs:
        target = warp_scores(target, temperature, warp, host=False)
        draft = None if draft is None else warp_scores(draft, temperature, warp, host=False)
    num_draft_tokens = drafts_in_range(draft_tokens, target.shape[2], num_draft_tokens)
    args = (target, draft_tokens, draft, num_draft_tokens, temperature, u, noise, from_probs)
    tokens, n, clean = rule.batch(*args, scrub=device.type != "cpu")
    if device.type != "cpu":  # scrubbed already: no host synchronisation (CUDA graphs, torch.compile)
        return tokens, n
    return (tokens, n) if bool(clean) else rule.batch(*args, scrub=True)[:2]


def _per_row_path(verify_row, target, draft_tokens, draft, num_draft_tokens, temperature, u, noise, from_probs, warp):
    """The CPU's path: the rule's `row` on each row, redone from scrubbed scores where the row drawn from held NaN;
    arguments as in :func:`verify_chain`, `u` [B, K+1]."""
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    drafts = draft_tokens.tolist()
    k_rows = [k] * batch if num_draft_tokens is None else num_draft_tokens.tolist()
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
