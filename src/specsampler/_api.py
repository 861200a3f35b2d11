"""`specsampler.verify`, `specsampler.verify_probs` and `specsampler.sample`: validation (``_validation``, shared with
``verify_tree``) and dispatch to the method's rule (``methods``) on a backend.

The public functions call internal implementations (`_verify`, `_verify_probs`, `_sample`) with no :class:`Hooks`;
only ``specsampler._testing`` passes hooks."""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import methods
from ._validation import (
    NO_HOOKS,
    Hooks,
    check_draft_scores,
    check_flag,
    check_hooks,
    check_ids,
    check_scores,
    counts,
    kernels,
    rule_backend,
    seed_value,
    temperature_value,
    warp_options,
)
from .torch_backend import emitted_logprobs
from .triton_kernels.constants import STREAM_SAMPLE, STREAM_VERIFY


class VerifyResult(NamedTuple):
    """Output of :func:`verify`.

    Attributes
    ----------
    tokens : torch.Tensor
        [B, K+1] int64: the accepted drafts, then one more token (correction or bonus), then -1.
    num_accepted : torch.Tensor
        [B] int64: the number of accepted drafts of each row.
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor


class VerifyLogprobsResult(NamedTuple):
    """Output of :func:`verify` with ``return_logprobs=True``: :class:`VerifyResult` and the log-probabilities.

    Attributes
    ----------
    tokens : torch.Tensor
        [B, K+1] int64, as in :class:`VerifyResult`.
    num_accepted : torch.Tensor
        [B] int64.
    logprobs : torch.Tensor
        [B, K+1] float32: the log-probability of each emitted token under the target's distribution at its position
        (sampled rows: softmax of the warped scores / T; greedy rows: softmax of the scores at T = 1); finite for every
        emitted token (-log V where the target's row has no mass and the token was drawn uniformly); 0 at padding, so
        that a row's sum is its emitted tokens' log-probability.
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    logprobs: torch.Tensor


#: The methods :func:`verify` and :func:`verify_probs` run (``methods.REGISTRY``'s chain rules).
METHODS = methods.names(methods.CHAIN)


def _prepare(names, target, draft_tokens, draft, num_draft_tokens, temperature, seed, backend, hooks: Hooks,
             method: methods.Method, generator=None, top_k=None, top_p=None, min_p=None):
    """Validate metadata (no host synchronisation on CUDA) and normalise the arguments; `names` are the two score
    arguments' names; the backend is the one `method`'s chain rule runs on."""
    target_name, draft_name = names
    check_scores(target_name, target, None, None)
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    check_ids("draft_tokens", draft_tokens, batch, k, "K", target_name, device)
    if draft is not None:
        check_draft_scores(names, draft, batch, k, vocab, device)
    num_draft_tokens = counts("num_draft_tokens", num_draft_tokens, batch, k, "K", device)
    temperature = temperature_value(temperature, batch, device)
    seed = seed_value(seed, generator, batch, device)
    if hooks is not NO_HOOKS:
        check_hooks(hooks, batch, k, vocab, device)
    warp = warp_options(top_k, top_p, min_p, temperature, batch, device)
    backend = rule_backend(backend, device, method.chain.backends, f"method={method.name!r}")
    return num_draft_tokens, temperature, seed, backend, warp


def verify(target_logits, draft_tokens, draft_logits=None, *, num_draft_tokens=None, temperature=1.0, top_k=None,
           top_p=None, min_p=None, seed=None, generator=None, backend="auto", method="token",
           return_logprobs=False) -> VerifyResult | VerifyLogprobsResult:
    """Verify K drafted tokens per row against the target model: the speculative-decoding acceptance step.

    Draft token x_t is accepted iff u_t * q_t(x_t) < p_t(x_t), u_t ~ U[0, 1), with p_t = softmax(target_logits[b, t]
    / T_b) and q_t likewise from `draft_logits`, both warped by `top_k`, `top_p` and `min_p` when given. At the first
    rejection n < K_b one correction token is drawn from norm(max(0, p_n - q_n)) (from p_n when that has no mass);
    when all K_b drafts are accepted a bonus token is drawn from p_{K_b}. The emitted tokens follow p exactly. Rows
    with T_b = 0 are greedy: drafts are accepted while they equal argmax p_t (lowest index on ties) and the next token
    is argmax p_n.

    Parameters
    ----------
    target_logits : torch.Tensor
        [B, K+1, V] float32, bfloat16 or float16: the target's scores at the K draft positions and one more.
    draft_tokens : torch.Tensor
        [B, K] int32 or int64: the drafted tokens. Positions at or past a row's K_b are ignored (-1 is fine). An id
        outside [0, V) at an active position (vLLM's -1 placeholder) ends the row's drafts there, exactly as a
        num_draft_tokens of its position would: the next token there is the bonus, drawn from p.
    draft_logits : torch.Tensor, optional
        [B, K, Vd] (Vd <= V; ids >= Vd have q = 0): the scores the drafts were sampled from (before warping: the
        warpers are applied here). None means one-hot drafts (greedy or n-gram drafters): x_t is accepted with
        probability p_t(x_t); so is a drafted id to which the draft gives q = 0 (a -inf or NaN logit, an id past Vd,
        an id the warpers remove), whose correction then comes from p without it.
    num_draft_tokens : torch.Tensor, optional
        [B] int32/int64 in [0, K]: the drafts each row really has (a ragged batch). None: K for every row.
    temperature : float or torch.Tensor
        A float, or [B] float tensor, finite and >= 0; 0 makes a row greedy, and so does any T below 2**-126 (the
        smallest normal float32, where 1 / T would overflow). Floats and CPU tensors are checked; CUDA tensors are not
        (that would synchronise): the kernel makes rows with T < 2**-126, negative ones included, greedy.
    top_k : int or torch.Tensor, optional
        Keep the logits >= the k-th largest of their row (every tie with it kept), as transformers' top_k; an int or
        [B] int tensor, 0 (or >= V) off.
    top_p : float or torch.Tensor, optional
        After top-k: keep the highest probabilities until their mass reaches top_p, and every logit equal to the last
        one kept (transformers keeps such ties in its sort's order; without a tie at the cut the sets are equal); the
        largest is always kept. A number or [B] tensor in [0, 1], 1 off.
    min_p : float or torch.Tensor, optional
        After top-p: keep the probabilities >= min_p times the largest (logits >= max + T ln(min_p)). A number or [B]
        tensor in [0, 1], 0 off.
    seed : int or torch.Tensor, optional
        Any Python or numpy integer (hashed whole: distinct seeds give independent streams), or [B] int64 per-row
        seeds (a row's tokens then do not depend on its place in the batch). None draws a seed from torch's default
        CPU generator. Under CUDA-graph capture pass a device tensor and advance it. Each entry point draws from its
        own stream of a seed (:func:`sample`, :func:`verify` and :func:`verify_probs`, ``verify_tree``): drafts drawn
        with ``sample(..., seed=s)`` may be verified with ``seed=s``, their numbers are independent.
    generator : torch.Generator, optional
        Instead of `seed`: [B] per-row seeds are drawn from it (on its device; no host synchronisation).
    backend : {"auto", "triton", "torch"}
        "auto" runs the Triton kernel on CUDA tensors and the torch backend elsewhere.
    method : {"token", "block"}
        "token": each draft on its own, as above. "block": block verification (Sun et al., ICLR 2025, arXiv
        2403.10444), which decides the K_b drafts together: with w_0 = 1, w_i = min(1, w_{i-1} p(x_i) / q(x_i)),
        residual masses r_i = sum max(w_i p_{i+1} - q_{i+1}, 0) and h_i = r_i / (r_i + 1 - w_i) (h_{K_b} = w_{K_b}),
        the number accepted is the largest i with eta_i < h_i (eta_i uniform), and the next token comes from
        norm(max(w_i p_{i+1} - q_{i+1}, 0)), or p_{K_b + 1} after all. As exact, and in expectation never fewer
        accepted drafts; K_b = 1 is token verification; greedy rows are unchanged.
    return_logprobs : bool
        Also return each emitted token's log-probability (:class:`VerifyLogprobsResult`).

    Returns
    -------
    VerifyResult or VerifyLogprobsResult
        ``tokens`` [B, K+1] int64 (accepted drafts, the next token, then -1) and ``num_accepted`` [B] int64; with
        `return_logprobs`, ``logprobs`` [B, K+1] float32 too.

    Examples
    --------
    >>> import torch, specsampler
    >>> target = torch.randn(2, 4, 100)                  # B = 2, K = 3, V = 100
    >>> draft = target[:, :3] + 0.1 * torch.randn(2, 3, 100)
    >>> drafts = torch.distributions.Categorical(logits=draft).sample()
    >>> res = specsampler.verify(target, drafts, draft, seed=0)
    >>> res.tokens.shape, res.num_accepted.shape
    (torch.Size([2, 4]), torch.Size([2]))
    """
    return _verify(target_logits, draft_tokens, draft_logits, num_draft_tokens=num_draft_tokens,
                   temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, generator=generator,
                   backend=backend, method=method, return_logprobs=return_logprobs)


def _empty_result(batch: int, k_plus_1: int, device: torch.device, logprobs: bool):
    """The result of a batch of no rows (B = 0): no launch, no draw."""
    tokens = torch.empty(batch, k_plus_1, dtype=torch.int64, device=device)
    accepted = torch.empty(batch, dtype=torch.int64, device=device)
    if logprobs:
        return VerifyLogprobsResult(tokens, accepted, torch.empty(batch, k_plus_1, dtype=torch.float32, device=device))
    return VerifyResult(tokens, accepted)


def _torch_verify(rule: methods.Rule, scores, draft_tokens, draft, num_draft_tokens, temperature, seed, hooks: Hooks,
                  warp, from_probs, return_logprobs, stream=STREAM_VERIFY):
    """The torch backend: the method's chain rule, then the log-probabilities when asked for."""
    tokens, n = rule.torch(scores, draft_tokens, draft, num_draft_tokens, temperature, seed, from_probs=from_probs,
                           uniforms=hooks.uniforms, noise=hooks.noise, warp=warp, stream=stream)
    if not return_logprobs:
        return VerifyResult(tokens, n)
    tokens, n = tokens.to(scores.device), n.to(scores.device)
    return VerifyLogprobsResult(tokens, n, emitted_logprobs(scores, tokens, n, temperature, warp, from_probs))


def _launch(rule: methods.Rule, *args, **options):
    """The method's kernel launcher on `args`, with its options (the rule's, then `options`)."""
    return getattr(kernels(), rule.kernel.launcher)(*args, **dict(rule.kernel.options), **options)


def _kernel_result(out, return_logprobs: bool):
    return VerifyLogprobsResult(*out) if return_logprobs else VerifyResult(*out)


def _verify(target_logits, draft_tokens, draft_logits=None, *, num_draft_tokens=None, temperature=1.0, top_k=None,
            top_p=None, min_p=None, seed=None, generator=None, backend="auto", method="token", return_logprobs=False,
            hooks: Hooks = NO_HOOKS, stream: int = STREAM_VERIFY):
    """:func:`verify`, with the `hooks` only ``specsampler._testing`` sets; `stream` the random stream
    (``constants.STREAM_*``: :func:`sample` draws from its own)."""
    method = methods.get(method, methods.CHAIN)
    check_flag("return_logprobs", return_logprobs)
    num_draft_tokens, temperature, seed, backend, warp = _prepare(
        ("target_logits", "draft_logits"), target_logits, draft_tokens, draft_logits, num_draft_tokens, temperature,
        seed, backend, hooks, method, generator, top_k, top_p, min_p)
    batch, k_plus_1, _ = target_logits.shape
    if batch == 0:
        return _empty_result(batch, k_plus_1, target_logits.device, return_logprobs)
    if backend == "torch":
        return _torch_verify(method.chain, target_logits, draft_tokens, draft_logits, num_draft_tokens, temperature,
                             seed, hooks, warp, False, return_logprobs, stream)
    launchers = kernels()
    tokens = torch.empty(batch, k_plus_1, dtype=torch.int64, device=target_logits.device)  # launch 1 sets it to -1
    stats = launchers.row_stats(target_logits, draft_logits, num_draft_tokens, temperature, hooks.block_v,
                                hooks.num_splits, tokens, candidates=warp is not None, logprobs=return_logprobs)
    cuts = None
    if warp is not None:
        cuts = launchers.warp_cuts(target_logits, draft_logits, num_draft_tokens, temperature, warp, stats)
    return _kernel_result(_launch(method.chain, target_logits, draft_tokens, draft_logits, num_draft_tokens,
                                  temperature, seed, stats[:2], hooks.uniforms, hooks.noise, hooks.block_v,
                                  hooks.num_splits, tokens, cuts, logprobs=return_logprobs, stream=stream),
                          return_logprobs)


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, seed=None, generator=None,
           backend="auto") -> torch.Tensor:
    """One token per row from softmax(logits / T) warped by top-k, top-p and min-p: the draft side's sampler.

    The same warpers, tie rule and random numbers as :func:`verify` (a draw is a verification of zero drafts: its
    bonus token), with no sort of the vocabulary on CUDA.

    Parameters
    ----------
    logits : torch.Tensor
        [B, V] float32, bfloat16 or float16.
    temperature, top_k, top_p, min_p, seed, generator, backend
        As in :func:`verify`; temperature 0 (per row with a tensor) takes the argmax, lowest id on ties. A draw has
        its own random stream (``constants.STREAM_SAMPLE``): ``verify`` on the same seed draws independent numbers.

    Returns
    -------
    torch.Tensor
        [B] int64 token ids in [0, V).

    Examples
    --------
    >>> import torch, specsampler
    >>> specsampler.sample(torch.randn(3, 100), temperature=0.7, top_k=50, top_p=0.9, seed=0).shape
    torch.Size([3])
    """
    return _sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                   generator=generator, backend=backend)


def _sample(logits, *, hooks: Hooks = NO_HOOKS, **options) -> torch.Tensor:
    """:func:`sample`, with the `hooks` only ``specsampler._testing`` sets (the noise [B, V]; no uniforms: a draw
    decides no draft)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be a [B, V] tensor with V >= 1, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    batch = logits.shape[0]
    drafts = torch.empty(batch, 0, dtype=torch.int64, device=logits.device)
    if hooks.noise is not None:
        hooks = hooks._replace(uniforms=torch.empty(batch, 0, dtype=torch.float32, device=logits.device))
    try:
        res = _verify(logits[:, None, :], drafts, hooks=hooks, stream=STREAM_SAMPLE, **options)
    except (TypeError, ValueError) as err:  # name the argument as the caller wrote it
        raise type(err)(str(err).replace("target_logits", "logits")) from None
    return res.tokens[:, 0]


def verify_probs(target_probs, draft_tokens, draft_probs=None, *, num_draft_tokens=None, seed=None, generator=None,
                 backend="auto", method="token", return_logprobs=False) -> VerifyResult | VerifyLogprobsResult:
    """:func:`verify` from already-normalised probabilities: one kernel launch, every row sampled.

    Parameters
    ----------
    target_probs : torch.Tensor
        [B, K+1, V] float32, bfloat16 or float16 probabilities (NaN and negative entries count as 0).
    draft_tokens : torch.Tensor
        [B, K] int32 or int64.
    draft_probs : torch.Tensor, optional
        [B, K, Vd] probabilities, Vd <= V; None for one-hot drafts.
    num_draft_tokens, seed, generator, backend, method, return_logprobs
        As in :func:`verify`; the log-probabilities are the logs of `target_probs` at the emitted tokens.

    Returns
    -------
    VerifyResult or VerifyLogprobsResult
    """
    return _verify_probs(target_probs, draft_tokens, draft_probs, num_draft_tokens=num_draft_tokens, seed=seed,
                         generator=generator, backend=backend, method=method, return_logprobs=return_logprobs)


def _verify_probs(target_probs, draft_tokens, draft_probs=None, *, num_draft_tokens=None, seed=None, generator=None,
                  backend="auto", method="token", return_logprobs=False, hooks: Hooks = NO_HOOKS):
    """:func:`verify_probs`, with the `hooks` only ``specsampler._testing`` sets."""
    method = methods.get(method, methods.CHAIN)
    check_flag("return_logprobs", return_logprobs)
    num_draft_tokens, _, seed, backend, _ = _prepare(
        ("target_probs", "draft_probs"), target_probs, draft_tokens, draft_probs, num_draft_tokens, 1.0, seed, backend,
        hooks, method, generator)
    batch, k_plus_1, _ = target_probs.shape
    if batch == 0:
        return _empty_result(batch, k_plus_1, target_probs.device, return_logprobs)
    if backend == "torch":
        return _torch_verify(method.chain, target_probs, draft_tokens, draft_probs, num_draft_tokens, 1.0, seed, hooks,
                             None, True, return_logprobs)
    return _kernel_result(_launch(method.chain, target_probs, draft_tokens, draft_probs, num_draft_tokens, 1.0, seed,
                                  None, hooks.uniforms, hooks.noise, hooks.block_v, hooks.num_splits,
                                  logprobs=return_logprobs),
                          return_logprobs)
