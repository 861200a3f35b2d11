"""vLLM's logits processing at the drafted positions, in the order vLLM's ``Sampler`` applies it without speculation.

vLLM's flattened layout: request b's n_b drafted positions are rows ``start_b .. start_b + n_b - 1`` of the target
rows ([num_tokens, V], ``start_b`` the sum of the n before it). Each drafted position gets its own prefix (the
request's output so far and the drafts before it) for penalties and bad words, as vLLM's rejection sampler gives it.
"""

from __future__ import annotations

import torch


def row_requests(counts: list[int], device: torch.device) -> torch.Tensor:
    """[num_tokens] int64: the request of each drafted row (request b repeated n_b times)."""
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64))
    return rows.to(device, non_blocking=True)


def _logit_bias(proc, logits: torch.Tensor, counts: list[int]) -> None:
    """Add each request's ``logit_bias`` to its drafted rows (vLLM's ``LogitBiasLogitsProcessor`` per row)."""
    rows: list[int] = []
    toks: list[int] = []
    vals: list[float] = []
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    for req, bias in proc.biases.items():
        if req >= len(counts):
            continue
        for r in range(starts[req], starts[req + 1]):
            rows += [r] * len(bias)
            toks += list(bias.keys())
            vals += list(bias.values())
    if rows:
        device = logits.device
        index = (torch.tensor(rows, device=device), torch.tensor(toks, device=device))
        logits.index_put_(index, torch.tensor(vals, dtype=logits.dtype, device=device), accumulate=True)


def process_target_rows(rejection_sampler, logits: torch.Tensor, sampling_metadata, metadata) -> torch.Tensor:
    """Apply vLLM's processors to the drafted rows, in place where vLLM does.

    Order as vLLM's ``Sampler.apply_logits_processors`` (the path without speculation): allowed token ids, bad words,
    the non-argmax-invariant processors (min-tokens, logit bias), penalties, then the thinking-budget holder as vLLM's
    rejection sampler applies it. Each piece is vLLM's own function with the drafted rows' prefixes.

    Parameters
    ----------
    rejection_sampler : vllm.v1.sample.rejection_sampler.RejectionSampler
    logits : torch.Tensor
        [num_tokens, V] float32, the drafted rows.
    sampling_metadata : vllm.v1.sample.metadata.SamplingMetadata
    metadata : vllm.v1.spec_decode.metadata.SpecDecodeMetadata

    Returns
    -------
    torch.Tensor
        [num_tokens, V] float32.
    """
    from vllm.v1.sample.logits_processor.builtin import LogitBiasLogitsProcessor, MinTokensLogitsProcessor
    from vllm.v1.sample.ops.bad_words import apply_bad_words_with_drafts

    sm = sampling_metadata
    counts = metadata.num_draft_tokens
    if logits.shape[0] == 0:
        return logits
    has_penalties = not sm.no_penalties
    output_token_ids = sm.output_token_ids
    if sm.bad_words_token_ids or has_penalties:
        output_token_ids = rejection_sampler._combine_outputs_with_spec_tokens(output_token_ids, sm.spec_token_ids)
    repeat = None
    if sm.allowed_token_ids_mask is not None or has_penalties:
        repeat = row_requests(counts, logits.device)
    if sm.allowed_token_ids_mask is not None:
        logits.masked_fill_(sm.allowed_token_ids_mask[repeat], float("-inf"))
    if sm.bad_words_token_ids:
        apply_bad_words_with_drafts(logits, sm.bad_words_token_ids, output_token_ids, counts)
    for proc in sm.logitsprocs.non_argmax_invariant:
        if isinstance(proc, MinTokensLogitsProcessor):
            logits = proc.apply_with_spec_decode(logits, counts)
        elif isinstance(proc, LogitBiasLogitsProcessor):
            _logit_bias(proc, logits, counts)
    if has_penalties:
        logits = rejection_sampler.apply_penalties(logits, sm, metadata, repeat, output_token_ids)
    holder = sm.thinking_budget_state_holder
    if holder is not None and holder.has_tracked_requests():
        logits = holder.apply_to_logits(logits, predict_bonus_token=False, spec_token_ids=sm.spec_token_ids)
    return logits


def min_p_values(sampling_metadata, batch: int) -> torch.Tensor | None:
    """[B] float32 min_p per request from vLLM's ``MinPLogitsProcessor``, or None when no request sets it."""
    from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor

    for proc in sampling_metadata.logitsprocs.argmax_invariant:
        if isinstance(proc, MinPLogitsProcessor) and proc.min_p_count:
            return proc.min_p.reshape(-1)[:batch]
    return None


def mask_min_p(scores: torch.Tensor, temperature: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """vLLM's min-p on [B, R, V] scores (before top-k and top-p, vLLM's order), as a new tensor: ids whose probability
    at temperature T is below min_p times the largest become -inf. Greedy rows (T = 0) take T = 1 (argmax unchanged)."""
    t = torch.where(temperature > 0, temperature, 1.0).to(scores.dtype)[:, None, None]
    probs = torch.softmax(scores / t, dim=-1)
    cut = probs.amax(dim=-1, keepdim=True) * min_p.to(scores.dtype)[:, None, None]
    return scores.masked_fill(probs < cut, float("-inf"))


def processed_logits(rows: torch.Tensor, temperature, top_k, top_p, min_p, greedy: bool) -> torch.Tensor:
    """The ``processed_logits`` vLLM's logprobs report for [N, V] processed rows: / T (greedy rows 1), min-p, then
    vLLM's own top-k/top-p (its sort); unchanged when every request is greedy.

    `temperature`, `top_k`, `top_p`, `min_p`: [N] per row (or None).
    """
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    if greedy or rows.shape[0] == 0:
        return rows
    t = torch.where(temperature > 0, temperature, 1.0).to(rows.dtype)
    rows = rows / t[:, None]
    if min_p is not None:
        probs = torch.softmax(rows, dim=-1)
        rows = rows.masked_fill(probs < probs.amax(dim=-1, keepdim=True) * min_p[:, None], float("-inf"))
    return apply_top_k_top_p(rows, top_k, top_p)
