"""`specsampler.verify`, `specsampler.verify_probs` and `specsampler.sample`: validation and dispatch to a backend.

The public functions call internal implementations (`_verify`, `_verify_probs`, `_sample`) with no :class:`Hooks`;
only ``specsampler._testing`` passes hooks. Process-wide state here: two answers asked once per process, whether
triton imports (:func:`triton_available`) and the kernel package (:func:`_kernels`); ``_testing.reset_kernel_state``
clears them with the kernels' own caches (``triton_kernels/launching.py``)."""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import os
from typing import NamedTuple

import torch

from . import _checks
from .torch_backend import GREEDY_BELOW, Warp, hash_seed, verify_torch
from .torch_block import emitted_logprobs
from .triton_kernels.constants import STREAM_SAMPLE, STREAM_VERIFY

_SCORE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TOKEN_DTYPES = (torch.int32, torch.int64)


class Hooks(NamedTuple):
    """What the testing entry (``specsampler._testing``) may set, and the public functions never do.

    uniforms, noise : torch.Tensor or None
        [B, K] acceptance uniforms and [B, V] exponential noise replacing both backends' own random numbers (so that
        they can be compared token for token); given together or not at all.
    block_v, num_splits : int or None
        The kernel's tile width and vocabulary splits (None: the launch table's).
    """

    uniforms: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    block_v: int | None = None
    num_splits: int | None = None


NO_HOOKS = Hooks()


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


METHODS = ("token", "block")


def _check_method(method, return_logprobs) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be 'token' or 'block', got {method!r}")
    if not isinstance(return_logprobs, bool):
        raise TypeError(f"return_logprobs must be True or False, got {return_logprobs!r}")


def _check_scores(name: str, x: torch.Tensor, batch: int | None, rows: int | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [B, {'K' if rows is None else rows}, V], got {tuple(x.shape)}")
    if x.dtype not in _SCORE_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if batch is not None and (x.shape[0], x.shape[1]) != (batch, rows):
        raise ValueError(f"{name} must have shape [B, K, *] = [{batch}, {rows}, *], got {tuple(x.shape)}")
    if x.shape[2] == 0:
        raise ValueError(f"{name} has an empty vocabulary: shape {tuple(x.shape)}")


def _check_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, but the target's scores are on {device}")


def _row_tensor(name: str, value, batch: int, device: torch.device, dtypes: tuple) -> torch.Tensor:
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {tuple(value.shape)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {value.dtype}")
    _check_device(name, value, device)
    return value.contiguous()  # the kernel reads row b at offset b


@functools.cache
def _kernels():
    """The Triton launchers, imported on first use (an import statement per call costs microseconds)."""
    from . import triton_kernels

    return triton_kernels


@functools.cache
def triton_available() -> bool:
    """Whether the triton package imports (it ships wheels for Linux only; elsewhere the torch backend runs)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


NO_TRITON = ("backend='triton' needs the triton package, which is not installed here (triton has wheels for Linux "
             "only: pip install triton there); backend='auto' or 'torch' runs the torch backend")


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(NO_TRITON)
        if device.type != "cuda" and not (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
            raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got "
                             f"{device}")
    return backend


def _seed(seed, generator, batch: int, device: torch.device):
    """The seed as the backends take it: an int in [0, 2**62) (any integer, hashed whole: distinct seeds give
    independent streams) or [B] int64 per-row seeds (a tensor as given, or drawn from `generator` on its device)."""
    if generator is not None:
        if seed is not None:
            raise ValueError("pass seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        draws = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device, dtype=torch.int64)
        return draws.to(device, non_blocking=True)
    if seed is None:
        return int(torch.randint(0, 2**62, ()))
    if isinstance(seed, torch.Tensor):
        return _row_tensor("seed", seed, batch, device, _TOKEN_DTYPES).to(torch.int64)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return hash_seed(int(seed))
    raise TypeError(f"seed must be None, an integer or a [B] int64 tensor, got {type(seed).__name__}")


def _warp_option(name: str, value, batch: int, device: torch.device, integral: bool, off):
    """One warper as a number or a [B] tensor (None: `off`), range-checked where that needs no host synchronisation."""
    if value is None:
        return off
    if isinstance(value, torch.Tensor):
        dtypes = _TOKEN_DTYPES if integral else _SCORE_DTYPES
        value = _row_tensor(name, value, batch, device, dtypes).to(torch.int64 if integral else torch.float32)
        bad = (value < 0) if integral else ~((value >= 0) & (value <= 1))
        if device.type == "cpu" and bool(bad.any()):
            raise ValueError(f"{name} must be {'>= 0' if integral else 'in [0, 1]'}, got {value.tolist()}")
        return value
    value = getattr(_checks, name)(value, name)  # the option's one check and message (generate's too)
    if value is None:  # (0 / 1 / 0: off)
        return off
    return min(value, 2**31 - 1) if integral else value  # a top_k >= V keeps every logit; this fits every backend


def _warp(top_k, top_p, min_p, temperature, batch: int, device: torch.device) -> Warp | None:
    """The warpers as the backends take them; None when all three are off for every row."""
    if top_k is None and top_p is None and min_p is None:  # (the usual call: nothing to check)
        return None
    top_k = _warp_option("top_k", top_k, batch, device, True, 0)
    top_p = _warp_option("top_p", top_p, batch, device, False, 1.0)
    min_p = _warp_option("min_p", min_p, batch, device, False, 0.0)
    if not isinstance(top_k, torch.Tensor) and not isinstance(top_p, torch.Tensor) and \
            not isinstance(min_p, torch.Tensor) and top_k == 0 and top_p == 1.0 and min_p == 0.0:
        return None
    # The min-p cut is max + T * ln(min_p), compared in float32 by both backends: the offset is computed once, here.
    if isinstance(min_p, torch.Tensor) or isinstance(temperature, torch.Tensor):
        min_p = torch.as_tensor(min_p, dtype=torch.float32, device=device)
        offset = torch.where(min_p > 0, temperature * torch.log(min_p), float("-inf")).float()
        offset = offset.expand(batch).contiguous()
    else:
        offset = float(torch.tensor(temperature * math.log(min_p), dtype=torch.float32)) if min_p > 0 and \
            temperature > 0 else float("-inf")
    return Warp(top_k, top_p, offset)


def _integer_rows(name: str, value, device: torch.device) -> torch.Tensor:
    """A sequence of integers as an int64 tensor; floats (1.5, or 2.0) are refused by name rather than truncated."""
    try:
        rows = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a [B] integer tensor or a sequence of integers, got {value!r}") from err
    integral = rows.dtype in _TOKEN_DTYPES or rows.dtype in (torch.int8, torch.int16, torch.uint8)
    if not integral and rows.numel() > 0:  # (an empty list reads as float32: B = 0 has no counts to check)
        raise TypeError(f"{name} must be a [B] integer tensor or a sequence of integers, got {value!r} "
                        f"({rows.dtype})")
    return rows.to(device=device, dtype=torch.int64)


def _check_hooks(hooks: Hooks, batch: int, k: int, vocab: int, device: torch.device) -> None:
    """The test hooks are read by the kernel through raw pointers: a wrong device, shape or dtype would fault or read
    garbage there instead of failing here (metadata only, no host synchronisation)."""
    for name, hook, dims, shape in (("_uniforms", hooks.uniforms, "[B, K]", (batch, k)),
                                    ("_noise", hooks.noise, "[B, V]", (batch, vocab))):
        if hook is None:
            continue
        if not isinstance(hook, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(hook).__name__}")
        if tuple(hook.shape) != shape:
            raise ValueError(f"{name} must have shape {dims} = {list(shape)}, got {tuple(hook.shape)}")
        if hook.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {hook.dtype}")
        _check_device(name, hook, device)
    if (hooks.uniforms is None) != (hooks.noise is None):
        missing = "_noise" if hooks.noise is None else "_uniforms"
        raise ValueError(f"{missing} is missing: _uniforms and _noise go together")


def _prepare(names, target, draft_tokens, draft, num_draft_tokens, temperature, seed, backend, hooks: Hooks,
             generator=None, top_k=None, top_p=None, min_p=None):
    """Validate metadata (no host synchronisation on CUDA) and normalise the arguments; `names` are the two score
    arguments' names."""
    target_name, draft_name = names
    _check_scores(target_name, target, None, None)
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    device = target.device
    if not isinstance(draft_tokens, torch.Tensor):
        raise TypeError(f"draft_tokens must be a torch.Tensor, got {type(draft_tokens).__name__}")
    if draft_tokens.dtype not in _TOKEN_DTYPES:
        raise TypeError(f"draft_tokens must be int32 or int64, got {draft_tokens.dtype}")
    if draft_tokens.dim() != 2 or tuple(draft_tokens.shape) != (batch, k):
        raise ValueError(f"draft_tokens must have shape [B, K] = [{batch}, {k}] ({target_name} is [B, K+1, V]), "
                         f"got {tuple(draft_tokens.shape)}")
    _check_device("draft_tokens", draft_tokens, device)
    if draft is not None:
        _check_scores(draft_name, draft, batch, k)
        _check_device(draft_name, draft, device)
        if draft.shape[2] > vocab:
            raise ValueError(f"{draft_name} has a larger vocabulary ({draft.shape[2]}) than {target_name} ({vocab})")
    if num_draft_tokens is not None:
        if not isinstance(num_draft_tokens, torch.Tensor):
            num_draft_tokens = _integer_rows("num_draft_tokens", num_draft_tokens, device)
        num_draft_tokens = _row_tensor("num_draft_tokens", num_draft_tokens, batch, device, _TOKEN_DTYPES)
        if device.type == "cpu" and bool(((num_draft_tokens < 0) | (num_draft_tokens > k)).any()):
            raise ValueError(f"num_draft_tokens must lie in [0, K] = [0, {k}], got {num_draft_tokens.tolist()}")
    if isinstance(temperature, torch.Tensor):
        temperature = _row_tensor("temperature", temperature, batch, device, _SCORE_DTYPES).float()
        if device.type == "cpu" and not bool(((temperature >= 0) & (temperature < math.inf)).all()):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature.tolist()}")
    else:
        temperature = _checks.temperature(temperature)
        if temperature < GREEDY_BELOW:  # 1 / T would overflow float32: greedy, as on both backends for a tensor
            temperature = 0.0
    seed = _seed(seed, generator, batch, device)
    if hooks is not NO_HOOKS:
        _check_hooks(hooks, batch, k, vocab, device)
    warp = _warp(top_k, top_p, min_p, temperature, batch, device)
    return num_draft_tokens, temperature, seed, _pick_backend(backend, device), warp


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
    counts = torch.empty(batch, dtype=torch.int64, device=device)
    if logprobs:
        return VerifyLogprobsResult(tokens, counts, torch.empty(batch, k_plus_1, dtype=torch.float32, device=device))
    return VerifyResult(tokens, counts)


def _torch_verify(scores, draft_tokens, draft, num_draft_tokens, temperature, seed, hooks: Hooks, warp, from_probs,
                  method, return_logprobs, stream=STREAM_VERIFY):
    """The torch backend: token or block verification, then the log-probabilities when asked for."""
    tokens, n = verify_torch(scores, draft_tokens, draft, num_draft_tokens, temperature, seed, from_probs=from_probs,
                             uniforms=hooks.uniforms, noise=hooks.noise, warp=warp, method=method, stream=stream)
    if not return_logprobs:
        return VerifyResult(tokens, n)
    tokens, n = tokens.to(scores.device), n.to(scores.device)
    return VerifyLogprobsResult(tokens, n, emitted_logprobs(scores, tokens, n, temperature, warp, from_probs))


def _kernel_result(out, return_logprobs: bool):
    return VerifyLogprobsResult(*out) if return_logprobs else VerifyResult(*out)


def _verify(target_logits, draft_tokens, draft_logits=None, *, num_draft_tokens=None, temperature=1.0, top_k=None,
            top_p=None, min_p=None, seed=None, generator=None, backend="auto", method="token", return_logprobs=False,
            hooks: Hooks = NO_HOOKS, stream: int = STREAM_VERIFY):
    """:func:`verify`, with the `hooks` only ``specsampler._testing`` sets; `stream` the random stream
    (``constants.STREAM_*``: :func:`sample` draws from its own)."""
    _check_method(method, return_logprobs)
    num_draft_tokens, temperature, seed, backend, warp = _prepare(
        ("target_logits", "draft_logits"), target_logits, draft_tokens, draft_logits, num_draft_tokens, temperature,
        seed, backend, hooks, generator, top_k, top_p, min_p)
    batch, k_plus_1, _ = target_logits.shape
    if batch == 0:
        return _empty_result(batch, k_plus_1, target_logits.device, return_logprobs)
    if backend == "torch":
        return _torch_verify(target_logits, draft_tokens, draft_logits, num_draft_tokens, temperature, seed, hooks,
                             warp, False, method, return_logprobs, stream)
    kernels = _kernels()
    tokens = torch.empty(batch, k_plus_1, dtype=torch.int64, device=target_logits.device)  # launch 1 sets it to -1
    stats = kernels.row_stats(target_logits, draft_logits, num_draft_tokens, temperature, hooks.block_v,
                              hooks.num_splits, tokens, candidates=warp is not None, logprobs=return_logprobs)
    cuts = None
    if warp is not None:
        cuts = kernels.warp_cuts(target_logits, draft_logits, num_draft_tokens, temperature, warp, stats)
    return _kernel_result(kernels.verify_rows(target_logits, draft_tokens, draft_logits, num_draft_tokens,
                                              temperature, seed, stats[:2], hooks.uniforms, hooks.noise,
                                              hooks.block_v, hooks.num_splits, tokens, cuts,
                                              block=method == "block", logprobs=return_logprobs, stream=stream),
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
    _check_method(method, return_logprobs)
    num_draft_tokens, _, seed, backend, _ = _prepare(
        ("target_probs", "draft_probs"), target_probs, draft_tokens, draft_probs, num_draft_tokens, 1.0, seed, backend,
        hooks, generator)
    batch, k_plus_1, _ = target_probs.shape
    if batch == 0:
        return _empty_result(batch, k_plus_1, target_probs.device, return_logprobs)
    if backend == "torch":
        return _torch_verify(target_probs, draft_tokens, draft_probs, num_draft_tokens, 1.0, seed, hooks, None, True,
                             method, return_logprobs)
    return _kernel_result(_kernels().verify_rows(target_probs, draft_tokens, draft_probs, num_draft_tokens, 1.0, seed,
                                                 None, hooks.uniforms, hooks.noise, hooks.block_v, hooks.num_splits,
                                                 block=method == "block", logprobs=return_logprobs),
                          return_logprobs)
