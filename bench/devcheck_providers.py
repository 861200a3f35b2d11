"""The verifiers the device check times, ours and the peers, each a no-argument callable on identical inputs.

Providers
---------
specsampler
    ``specsampler.verify(..., backend="triton")``: the fused kernel (interpreted on a CPU).
torch
    ``specsampler.verify(..., backend="torch")``: our torch backend, as a user calls it.
torch_compile
    ``specsampler.torch_backend.verify_torch(..., vectorized=True)`` under ``torch.compile(dynamic=True)`` (inductor;
    the dry run uses backend="eager", which checks the wrapper traces without a C++ build).
flashinfer
    ``torch.softmax`` of both logit tensors (timed: that path needs probabilities), then
    ``flashinfer.sampling.chain_speculative_sampling``. Sampled rows only: FlashInfer has no greedy verify.
transformers
    ``transformers.generation.utils._speculative_sampling`` called once per row with [1, ...] slices, as its users
    must (it takes batch size 1), after the float32 upcast ``_assisted_decoding`` applies. Greedy rows run the
    argmax-and-compare that ``_assisted_decoding`` inlines for them. Slow at large B: only the first ``row_cap`` rows
    are timed and the time is scaled by B / rows (rows are independent and run one after another).

All of ours get per-row seeds as a [B] int64 tensor on the device, which keeps them free of host synchronisation
(and CUDA-graph capturable where the code allows).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

PROVIDERS = ("specsampler", "torch", "torch_compile", "flashinfer", "transformers")
PEERS = PROVIDERS[1:]


class Unavailable(Exception):
    """A provider that cannot run this case here; the message says why."""


@dataclass(frozen=True)
class Case:
    """One point of the grid: B rows of K drafts over a vocabulary of V, logits of `dtype`, sampled or greedy."""

    B: int
    K: int
    V: int
    dtype: torch.dtype
    mode: str  # "sampled" (temperature 1) or "greedy" (temperature 0)

    @property
    def temperature(self) -> float:
        return 0.0 if self.mode == "greedy" else 1.0

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass
class Built:
    """A provider ready to time: `fn` runs one verification (transformers: of its first rows); times `scale`."""

    fn: object
    scale: float = 1.0
    note: str = ""


def make_inputs(case: Case, device: torch.device, seed: int) -> dict:
    """Fresh random logits (never zeros) and drafts that are accepted often but not always.

    Parameters
    ----------
    case : Case
    device : torch.device
    seed : int
        Seeds the generator on `device`.

    Returns
    -------
    dict
        ``target`` [B, K+1, V], ``draft`` [B, K, V] (both `case.dtype`), ``drafts`` [B, K] int64 sampled from the
        draft (greedy: the target's argmax with 30% changed), ``seed`` [B] int64 per-row seeds.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    b, k, v = case.B, case.K, case.V
    target = torch.randn(b, k + 1, v, device=device, dtype=case.dtype, generator=g).mul_(2.0)
    draft = torch.randn(b, k, v, device=device, dtype=case.dtype, generator=g).mul_(0.7).add_(target[:, :k])
    if case.mode == "greedy":
        drafts = target[:, :k].argmax(-1)
        flip = torch.rand(b, k, device=device, generator=g) < 0.3
        drafts = torch.where(flip, (drafts + 1) % v, drafts)
    else:
        probs = torch.softmax(draft.reshape(b * k, v), dim=-1, dtype=torch.float32)
        drafts = torch.multinomial(probs, 1, generator=g).reshape(b, k)
        del probs
    seeds = torch.randint(0, 2**62, (b,), device=device, dtype=torch.int64, generator=g)
    return dict(target=target, draft=draft, drafts=drafts, seed=seeds)


def build(provider: str, case: Case, inputs: dict, *, row_cap: int = 8, compile_backend: str = "inductor") -> Built:
    """The callable that runs `provider` once on `inputs`.

    Raises
    ------
    Unavailable
        When the provider cannot run this case here (the message says why).
    """
    if provider in ("specsampler", "torch"):
        return _ours(case, inputs, "triton" if provider == "specsampler" else "torch")
    if provider == "torch_compile":
        return _compiled(case, inputs, compile_backend)
    if provider == "flashinfer":
        return _flashinfer(case, inputs)
    if provider == "transformers":
        return _transformers(case, inputs, row_cap)
    raise ValueError(f"unknown provider {provider!r}; known: {PROVIDERS}")


def _ours(case: Case, inputs: dict, backend: str) -> Built:
    import specsampler

    target, draft, drafts, seed, temp = (inputs["target"], inputs["draft"], inputs["drafts"], inputs["seed"],
                                         case.temperature)
    return Built(lambda: specsampler.verify(target, drafts, draft, temperature=temp, seed=seed, backend=backend))


_COMPILED: dict[str, object] = {}


def _torch_batched(target, drafts, draft, temperature, seed):
    from specsampler.torch_backend import verify_torch

    return verify_torch(target, drafts, draft, None, temperature, seed, vectorized=True)


def _compiled(case: Case, inputs: dict, compile_backend: str) -> Built:
    if compile_backend not in _COMPILED:
        import logging

        import torch._dynamo

        torch._logging.set_logs(dynamo=logging.ERROR)  # the graph-break warnings: the timer notes host syncs itself
        config = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, 64)
        _COMPILED[compile_backend] = torch.compile(_torch_batched, dynamic=True, backend=compile_backend)
    fn = _COMPILED[compile_backend]
    target, draft, drafts, seed, temp = (inputs["target"], inputs["draft"], inputs["drafts"], inputs["seed"],
                                         case.temperature)
    return Built(lambda: fn(target, drafts, draft, temp, seed))


def flashinfer_status() -> str:
    """'' when FlashInfer imports, else why not."""
    try:
        import flashinfer.sampling  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build (missing CUDA libraries, ABI mismatch)
        return f"flashinfer not importable: {type(exc).__name__}: {exc}"[:300]
    return ""


def _flashinfer(case: Case, inputs: dict) -> Built:
    reason = flashinfer_status()
    if reason:
        raise Unavailable(reason)
    if case.mode == "greedy":
        raise Unavailable("flashinfer: no greedy verify (chain_speculative_sampling samples); greedy rows left out")
    if inputs["target"].device.type != "cuda":
        raise Unavailable("flashinfer needs CUDA tensors")
    import flashinfer.sampling

    chain = flashinfer.sampling.chain_speculative_sampling
    params = inspect.signature(chain).parameters
    target, draft = inputs["target"], inputs["draft"]
    draft_ids = inputs["drafts"].to(torch.int32)
    b, k = draft_ids.shape

    def run():
        target_probs = torch.softmax(target, dim=-1, dtype=torch.float32)
        draft_probs = torch.softmax(draft, dim=-1, dtype=torch.float32)
        if "uniform_samples" in params:  # flashinfer <= 0.1: (draft_probs, draft_token_ids, uniform_samples, target)
            uniforms = torch.rand(b, k + 1, device=target.device)
            return chain(draft_probs, draft_ids, uniforms, target_probs)
        kwargs = dict(deterministic=True) if "deterministic" in params else {}
        return chain(draft_probs, draft_ids, target_probs, **kwargs)

    return Built(run)


def _speculative_sampling():
    """transformers' verify step and whether it wants the 5th positional ``is_done_candidate`` (4.57 to 5.12)."""
    try:
        from transformers.generation.utils import _speculative_sampling as fn
    except Exception as exc:
        raise Unavailable(f"transformers not importable: {type(exc).__name__}: {exc}"[:300]) from exc
    return fn, "is_done_candidate" in inspect.signature(fn).parameters


def _transformers(case: Case, inputs: dict, row_cap: int) -> Built:
    fn, is_done = _speculative_sampling()
    target, draft, drafts = inputs["target"], inputs["draft"], inputs["drafts"]
    k = case.K
    rows = min(case.B, row_cap)
    extra = (False,) if is_done else ()

    def sampled():
        out = None
        for b in range(rows):
            new_logits = target[b : b + 1].float()
            candidate_logits = draft[b : b + 1].float()
            out = fn(drafts[b : b + 1], candidate_logits, k, new_logits, *extra)
        return out

    def greedy():  # _assisted_decoding's inline greedy check
        out = None
        for b in range(rows):
            selected = target[b : b + 1].float().argmax(dim=-1)
            n_matches = ((~(drafts[b : b + 1] == selected[:, :-1])).cumsum(dim=-1) < 1).sum()
            out = selected[:, : n_matches + 1]
        return out

    note = f"transformers: timed {rows} of {case.B} rows, scaled by {case.B / rows:g}" if rows < case.B else ""
    return Built(greedy if case.mode == "greedy" else sampled, scale=case.B / rows, note=note)
