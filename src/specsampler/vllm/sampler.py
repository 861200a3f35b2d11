"""The replacement of vLLM's ``RejectionSampler.forward``: one :func:`specsampler.verify` call per step.

vLLM hands the target's logits flattened, [num_tokens + B, V]: request b's n_b drafted positions, then its bonus
position. Here they are processed as vLLM processes them (:mod:`specsampler.vllm.logits`), laid out as
[B, K+1, V] (K = the step's largest n_b; request b's bonus row at position n_b, the positions past it unused) and
verified in one call with ragged ``num_draft_tokens``, the per-request temperature, top-k, top-p and min-p applied
inside verification, the bonus token drawn by the same call, and per-request seeds (a seeded request draws its seed
from its own ``torch.Generator``; the others from torch's default generator). Draft probabilities (vLLM's draft
model with ``draft_sample_method="probabilistic"``: softmax(draft logits / T), no other warper) are passed as
``T * log q``, which verification turns back into q; where a request also has a warper, whose cut would change q,
the target rows are warped by specsampler's torch warpers and verified by :func:`specsampler.verify_probs` against q
as given. The output is vLLM's: int32 [B, K+1] with -1 placeholders, and vLLM's own logprobs of the emitted tokens
(raw or processed, per its ``logprobs_mode``).

When no request has anything to apply before sampling (the usual case), the logits are read as vLLM hands them: a
view when every request has K drafts (no copy), else one gather of the B (K+1) rows. Otherwise the drafted and bonus
rows are copied out of ``logits`` (as vLLM's own path does), processed, and copied into the [B, K+1, V] buffer.
"""

from __future__ import annotations

import torch

from .logits import mask_min_p, min_p_values, process_target_rows, processed_logits
from .state import STATE

_SAMPLING_EPS = 1e-5  # vLLM's: a request with temperature below it is greedy
_SEED_LOW, _SEED_HIGH = -(2**63), 2**63 - 1


def layout(counts: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where vLLM's flattened rows go in the [B, K+1] layout.

    Returns
    -------
    tuple of torch.Tensor
        (target_dst [num_tokens], bonus_dst [B], draft_mask [B, K] bool), int64 flat positions b (K+1) + t, on the
        CPU.
    """
    n = torch.tensor(counts, dtype=torch.int64)
    base = torch.arange(len(counts), dtype=torch.int64) * (k + 1)
    mask = torch.arange(k, dtype=torch.int64)[None, :] < n[:, None]
    target_dst = (base[:, None] + torch.arange(k, dtype=torch.int64)[None, :])[mask]
    return target_dst, base + n, mask


def row_seeds(generators: dict, batch: int, device: torch.device) -> torch.Tensor:
    """[B] int64 seeds: a seeded request's from its own generator (the same run after run), others fresh."""
    seeds = torch.randint(_SEED_LOW, _SEED_HIGH, (batch,), dtype=torch.int64).to(device, non_blocking=True)
    for row, gen in generators.items():
        if row < batch:
            seeds[row] = torch.randint(_SEED_LOW, _SEED_HIGH, (1,), dtype=torch.int64, generator=gen,
                                       device=gen.device)[0].to(device)
    return seeds


def _options(sm, batch: int):
    """(temperature [B] float32 or 0.0, top_k, top_p, min_p) for verification; None for warpers not set."""
    if sm.all_greedy:
        return 0.0, None, None, None
    temperature = sm.temperature[:batch].float()
    temperature = torch.where(temperature < _SAMPLING_EPS, 0.0, temperature)
    top_k = None if sm.top_k is None else sm.top_k[:batch].to(torch.int64)
    top_p = None if sm.top_p is None else sm.top_p[:batch].float()
    return temperature, top_k, top_p, min_p_values(sm, batch)


def _scores(target: torch.Tensor, bonus: torch.Tensor, counts: list[int], k: int) -> torch.Tensor:
    """[B, K+1, V]: request b's drafted rows at 0..n_b-1, its bonus row at n_b (the rest uninitialised, unused)."""
    batch, vocab = bonus.shape
    target_dst, bonus_dst, _ = layout(counts, k)
    scores = bonus.new_empty(batch * (k + 1), vocab)
    device = bonus.device
    if target.shape[0]:
        scores.index_copy_(0, target_dst.to(device, non_blocking=True), target)
    scores.index_copy_(0, bonus_dst.to(device, non_blocking=True), bonus)
    return scores.view(batch, k + 1, vocab)


def _unprocessed(sm) -> bool:
    """Whether no request has anything vLLM applies before sampling (penalties, bad words, allowed tokens, min-tokens,
    logit bias, a thinking budget): then the logits go to verification as vLLM hands them."""
    from vllm.v1.sample.logits_processor.builtin import LogitBiasLogitsProcessor, MinTokensLogitsProcessor

    if sm.allowed_token_ids_mask is not None or sm.bad_words_token_ids or not sm.no_penalties:
        return False
    holder = sm.thinking_budget_state_holder
    if holder is not None and holder.has_tracked_requests():
        return False
    for proc in sm.logitsprocs.non_argmax_invariant:
        if isinstance(proc, MinTokensLogitsProcessor) and not proc.min_toks:
            continue
        if isinstance(proc, LogitBiasLogitsProcessor) and not proc.biases:
            continue
        return False
    return True


def _scores_unprocessed(logits: torch.Tensor, counts: list[int], k: int) -> torch.Tensor:
    """[B, K+1, V] from vLLM's [num_tokens + B, V] logits (request b's rows at s_b .. s_b + n_b, drafted then bonus):
    a view when every request has K drafts (no copy), else one gather of B (K+1) rows (positions past a request's
    bonus row repeat it)."""
    batch, vocab = len(counts), logits.shape[-1]
    if all(n == k for n in counts):
        return logits.view(batch, k + 1, vocab)
    n = torch.tensor(counts, dtype=torch.int64)
    starts = torch.cumsum(n + 1, 0) - (n + 1)
    rows = starts[:, None] + torch.minimum(torch.arange(k + 1)[None, :], n[:, None])
    return logits.index_select(0, rows.flatten().to(logits.device, non_blocking=True)).view(batch, k + 1, vocab)


def _drafts(flat: torch.Tensor, counts: list[int], k: int, rows: int | None = None) -> torch.Tensor:
    """[B, K] (or [B, K, V] for per-draft rows) from vLLM's flat [num_tokens(, V)]; 0 past a request's drafts."""
    _, _, mask = layout(counts, k)
    out = flat.new_zeros((len(counts), k) + tuple(flat.shape[1:]))
    out[mask.to(flat.device)] = flat
    return out


def _verify(scores, drafts, draft_probs, counts, k, options, seeds, state):
    """The one verification call (two shapes: from logits, or from probabilities where q and a warper meet)."""
    import specsampler
    from specsampler._validation import warp_options as _warp
    from specsampler.torch_backend import warp_scores

    temperature, top_k, top_p, min_p = options
    method, backend = state["method"], state["backend"]
    device = scores.device
    n = torch.tensor(counts, dtype=torch.int64).to(device, non_blocking=True)
    batch = scores.shape[0]
    warped = top_k is not None or top_p is not None or min_p is not None
    q = None
    if draft_probs is not None and isinstance(temperature, torch.Tensor):
        q = _drafts(draft_probs, counts, k)
    if q is not None and warped:  # q was drawn before any warper: verify against it as it is
        warp = _warp(top_k, top_p, min_p, temperature, batch, device)
        p = warp_scores(scores, temperature, warp) if warp is not None else scores.float()
        t = torch.where(temperature > 0, temperature, 1.0)[:, None, None]
        p = torch.softmax(p / t, dim=-1)
        greedy = (temperature == 0)[:, None, None]
        p = torch.where(greedy, torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).to(p.dtype), p)
        return specsampler.verify_probs(p, drafts, q, num_draft_tokens=n, seed=seeds, backend=backend,
                                        method=method)
    draft_logits = None
    if q is not None:  # softmax(T log q / T) = q
        draft_logits = torch.log(q) * torch.where(temperature > 0, temperature, 1.0)[:, None, None]
    return specsampler.verify(scores, drafts, draft_logits, num_draft_tokens=n, temperature=temperature,
                              top_k=top_k, top_p=top_p, min_p=min_p, seed=seeds, backend=backend, method=method)


def forward(self, metadata, draft_probs, logits, sampling_metadata):
    """``RejectionSampler.forward`` (same arguments and result) by :func:`specsampler.verify`.

    Parameters
    ----------
    self : vllm.v1.sample.rejection_sampler.RejectionSampler
    metadata : vllm.v1.spec_decode.metadata.SpecDecodeMetadata
    draft_probs : torch.Tensor or None
        [num_tokens, V] float32: q of each drafted token, or None (n-gram, greedy draft models).
    logits : torch.Tensor
        [num_tokens + B, V]: the target's scores, request by request (drafted positions, then the bonus position).
    sampling_metadata : vllm.v1.sample.metadata.SamplingMetadata

    Returns
    -------
    vllm.v1.outputs.SamplerOutput
        ``sampled_token_ids`` int32 [B, K+1] (-1 placeholders), ``logprobs_tensors`` as vLLM computes them.
    """
    from vllm.v1.outputs import SamplerOutput


    sm = sampling_metadata
    counts = list(metadata.num_draft_tokens)
    batch, k = len(counts), metadata.max_spec_len
    want_logprobs = sm.max_num_logprobs is not None
    if logits.shape[0] == sum(counts) + batch and _unprocessed(sm):  # nothing to apply: vLLM's logits as they are
        scores = _scores_unprocessed(logits, counts, k)
        target = bonus = None
    else:
        keep_raw = want_logprobs and not self.is_processed_logprobs_mode
        bonus_raw = logits[metadata.bonus_logits_indices].to(torch.float32)
        target_raw = logits[metadata.target_logits_indices].to(torch.float32)
        bonus = self.sampler.apply_logits_processors(bonus_raw.clone() if keep_raw else bonus_raw, sm,
                                                     predict_bonus_token=True)
        target = process_target_rows(self, target_raw.clone() if keep_raw else target_raw, sm, metadata)
        scores = _scores(target, bonus, counts, k)
    options = full = _options(sm, batch)
    temperature, top_k, top_p, min_p = options
    if min_p is not None and top_p is not None:  # vLLM applies min-p before top-k and top-p; specsampler after
        scores = mask_min_p(scores, temperature, min_p)
        options = (temperature, top_k, top_p, None)
    drafts = _drafts(metadata.draft_token_ids.to(torch.int64), counts, k)
    seeds = row_seeds(sm.generators, batch, logits.device)
    result = _verify(scores, drafts, draft_probs, counts, k, options, seeds, STATE)
    tokens = result.tokens.to(device=logits.device, dtype=torch.int32)
    logprobs_tensors = None
    if want_logprobs:
        if target is None or not self.is_processed_logprobs_mode:  # raw (or nothing was processed)
            target = logits[metadata.target_logits_indices].to(torch.float32)
            bonus = logits[metadata.bonus_logits_indices].to(torch.float32)
        if self.is_processed_logprobs_mode:
            target, bonus = _processed(target, bonus, counts, sm, full)
        logprobs_tensors = self._get_logprobs_tensors(sm.max_num_logprobs, metadata, logits, target, bonus, tokens)
    return SamplerOutput(sampled_token_ids=tokens, logprobs_tensors=logprobs_tensors)


def _processed(target, bonus, counts, sm, options):
    """vLLM's ``processed_logits`` of the drafted and the bonus rows (for its processed logprobs modes)."""
    temperature, top_k, top_p, min_p = options
    if sm.all_greedy:
        return target, bonus
    repeat = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(target.device)

    def per_row(x, index):
        return None if x is None else x[index]

    every = torch.arange(len(counts), device=target.device)
    out = []
    for rows, index in ((target, repeat), (bonus, every)):
        out.append(processed_logits(rows, per_row(temperature, index), per_row(top_k, index),
                                    per_row(top_p, index), per_row(min_p, index), False))
    return out[0], out[1]
