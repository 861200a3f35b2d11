"""The verifiers the device check times, ours and the peers, each a no-argument callable on identical inputs.

Providers
---------
specsampler
    ``specsampler.verify(..., backend="triton")``: the fused kernel (interpreted on a CPU).
torch
    ``specsampler.verify(..., backend="torch")``: our torch backend, as a user calls it.
torch_compile
    :func:`race_verify` under ``torch.compile(dynamic=True)`` (inductor; the dry run uses backend="eager", which
    checks that it traces without a C++ build): the torch backend's batched path rewritten without any scan, as
    Inductor in torch 2.11 cannot generate the cumsum of ``verify_token(..., vectorized=True)`` (its ``SplitScan``:
    "InductorError: TypeError: list indices must be integers or slices, not NoneType"). The first rejection is a
    min-reduction instead of a cumprod, and the correction or bonus token is drawn by the exponential race
    argmax r(x) / E_x, E_x ~ Exp(1) (the kernel's method, the same distribution as the inverse CDF), instead of
    cumsum + searchsorted; its random numbers come from torch's generator (``torch.rand``), not from the seeds.
flashinfer
    ``torch.softmax`` of both logit tensors (timed: that path needs probabilities), then
    ``flashinfer.sampling.chain_speculative_sampling``. Sampled rows only: FlashInfer has no greedy verify.
transformers
    ``transformers.generation.utils._speculative_sampling`` called once per row with [1, ...] slices, as its users
    must (it takes batch size 1), after the float32 upcast ``_assisted_decoding`` applies. Greedy rows run the
    argmax-and-compare that ``_assisted_decoding`` inlines for them. Slow at large B: only the first ``row_cap`` rows
    are timed and the time is scaled by B / rows (rows are independent and run one after another).
baseline
    Only with ``--baseline-kernel PATH``: an older copy of the kernels (a ``triton_kernels/`` folder, or the
    single-file ``triton_kernels/verify.py`` of commits before the split into one module per launch) loaded from
    PATH with importlib (:func:`load_baseline`) and called as ``verify`` calls it:
    ``stats = row_stats(target, draft, None, T)``, then ``verify_rows(target, drafts, draft, None, T, seeds, stats)``
    (no argument checks: its host time is the launchers' alone). Old and new are timed side by side in one run.

Reference (not a verifier): :func:`read_roofline_fn` reads the bytes launch 1 reads and sums them with a plain Triton
kernel (per-lane float32 accumulators, one reduction per program, up to 8 programs per SM): the time a kernel that
reads those bytes once cannot beat by much.

All of ours get per-row seeds as a [B] int64 tensor on the device, which keeps them free of host synchronisation
(and CUDA-graph capturable where the code allows).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

PROVIDERS = ("specsampler", "torch", "torch_compile", "flashinfer", "transformers")
PEERS = PROVIDERS[1:]
BASELINE = "baseline"  # an extra provider, with --baseline-kernel only; not a peer
RESIDUAL_EPS = 1e-6  # as specsampler.RESIDUAL_EPS


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


def build(provider: str, case: Case, inputs: dict, *, row_cap: int = 8, compile_backend: str = "inductor",
          baseline=None) -> Built:
    """The callable that runs `provider` once on `inputs`.

    Parameters
    ----------
    provider : str
        One of ``PROVIDERS`` or ``BASELINE``.
    case : Case
    inputs : dict
        From :func:`make_inputs`.
    row_cap : int
        Rows of the transformers path timed (then scaled).
    compile_backend : str
        torch.compile's backend for ``torch_compile``.
    baseline : module or None
        The module :func:`load_baseline` returned, for ``BASELINE``.

    Raises
    ------
    Unavailable
        When the provider cannot run this case here (the message says why).
    """
    if provider in ("specsampler", "torch"):
        return _ours(case, inputs, "triton" if provider == "specsampler" else "torch")
    if provider == BASELINE:
        if baseline is None:
            raise Unavailable("baseline: no --baseline-kernel given")
        return _baseline(case, inputs, baseline)
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


def load_baseline(path: str):
    """An older copy of the kernels, imported from `path`: a ``triton_kernels/`` folder (a package: its ``__init__``
    provides the launchers), or the single ``triton_kernels/verify.py`` of commits before the split.

    Parameters
    ----------
    path : str
        A package folder or a file that defines ``row_stats`` and ``verify_rows`` with the launchers' signatures (and
        the two kernels).

    Returns
    -------
    module
        Registered in ``sys.modules`` under a name of its own, so that it never replaces the current kernels: the
        package (this layout: launchers and kernels as its attributes, the launch machinery as ``.launching``), or
        the module that holds them all (the single-file layout, alone or inside its package).

    Raises
    ------
    ValueError
        When the file is missing or lacks the launchers.
    """
    file = Path(path).resolve()
    name = f"_specsampler_baseline_{abs(hash(str(file))):x}"
    if file.is_dir() and (file / "__init__.py").is_file():  # a package: its modules import one another relatively
        spec = importlib.util.spec_from_file_location(name, file / "__init__.py",
                                                      submodule_search_locations=[str(file)])
    elif file.is_file():
        spec = importlib.util.spec_from_file_location(name, file)
    else:
        raise ValueError(f"--baseline-kernel: no such file or package folder: {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if file.is_dir() and not (file / "launching.py").is_file() and callable(getattr(module, "row_stats", None)):
        module = sys.modules[module.row_stats.__module__]  # a package of the single-module layout: that module
    missing = [f for f in ("row_stats", "verify_rows") if not callable(getattr(module, f, None))]
    if missing:
        raise ValueError(f"--baseline-kernel {file}: defines no {', '.join(missing)}")
    return module


def _baseline(case: Case, inputs: dict, module) -> Built:
    target, draft, drafts, seed, temp = (inputs["target"], inputs["draft"], inputs["drafts"], inputs["seed"],
                                         case.temperature)

    def run():
        stats = module.row_stats(target, draft, None, temp)
        return module.verify_rows(target, drafts, draft, None, temp, seed, stats)

    return Built(run)


def race_verify(target: torch.Tensor, drafts: torch.Tensor, draft: torch.Tensor, temperature: float):
    """The torch backend's batched verification without scans, so that Inductor compiles it (the torch_compile peer).

    Same decisions as ``specsampler.verify`` (module docstring of ``specsampler.torch_backend``) for inputs without
    NaN/inf: acceptance iff u_t * q_t(x_t) < p_t(x_t); n, the first rejection, as a min over positions (no cumprod);
    the correction from max(0, p_n - q_n), or p_n for the bonus row and for a residual of at most RESIDUAL_EPS, drawn
    by the exponential race argmax r(x) / E_x with E_x = -log(U_x) ~ Exp(1) (no cumsum, no searchsorted). Greedy
    rows (temperature 0) compare the drafts with the target's argmax and compute no softmax. U and u come from
    torch's generator.

    Parameters
    ----------
    target : torch.Tensor
        [B, K+1, V] logits, K >= 1.
    drafts : torch.Tensor
        [B, K] int64 draft tokens in [0, V).
    draft : torch.Tensor
        [B, K, V] logits.
    temperature : float
        0 makes every row greedy.

    Returns
    -------
    tokens : torch.Tensor
        [B, K+1] int64: accepted drafts, one more token, then -1.
    num_accepted : torch.Tensor
        [B] int64.
    """
    batch, k_plus_1, vocab = target.shape
    k = k_plus_1 - 1
    x = drafts.long()
    pos = torch.arange(k_plus_1, device=target.device)
    if temperature == 0:
        best = target.float().argmax(dim=-1)
        n = _first_rejection(x == best[:, :k], pos[:k])
        token = best.gather(1, n[:, None])[:, 0]
    else:
        p = torch.softmax(target.float() / temperature, dim=-1)
        q = torch.softmax(draft.float() / temperature, dim=-1)
        p_x = p[:, :k].gather(2, x[:, :, None])[:, :, 0]
        q_x = q.gather(2, x[:, :, None])[:, :, 0]
        n = _first_rejection(torch.rand(batch, k, device=target.device) * q_x < p_x, pos[:k])
        at = n[:, None, None].expand(batch, 1, vocab)
        p_n = p.gather(1, at)[:, 0]
        residual = (p_n - q.gather(1, at.clamp(max=k - 1))[:, 0]).clamp_min(0.0)
        use_p = (n == k) | (residual.sum(dim=-1) <= RESIDUAL_EPS)
        weights = torch.where(use_p[:, None], p_n, residual)
        token = (weights / -torch.log(torch.rand_like(weights))).argmax(dim=-1)
    tokens = torch.where(pos[None, :] < n[:, None], torch.nn.functional.pad(x, (0, 1)), -1)
    return tokens.scatter(1, n[:, None], token[:, None]), n


def _first_rejection(accepted: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """[B] index of the first False in `accepted` [B, K], K if none: a min-reduction, not a cumprod."""
    return torch.where(accepted, accepted.shape[1], pos[None, :]).amin(dim=1)


_COMPILED: dict[str, object] = {}


def _compiled(case: Case, inputs: dict, compile_backend: str) -> Built:
    if compile_backend not in _COMPILED:
        import logging

        import torch._dynamo

        torch._logging.set_logs(dynamo=logging.ERROR)  # the graph-break warnings: the timer notes host syncs itself
        config = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, name):
                setattr(config, name, 64)
        _COMPILED[compile_backend] = torch.compile(race_verify, dynamic=True, backend=compile_backend)
    fn = _COMPILED[compile_backend]
    target, draft, drafts, temp = inputs["target"], inputs["draft"], inputs["drafts"], case.temperature
    return Built(lambda: fn(target, drafts, draft, temp))


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


@triton.jit
def _read_sum_kernel(x_ptr, out_ptr, n, tiles_per_program, BLOCK: tl.constexpr):
    """Program p sums tiles [p * tiles_per_program, (p+1) * tiles_per_program) of x into out[p]: per-lane float32
    accumulators across its tiles, one reduction after the loop."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    start = pid.to(tl.int64) * tiles_per_program * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(tiles_per_program):
        idx = start + t * BLOCK + offs
        acc += tl.load(x_ptr + idx, mask=idx < n, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


READ_BLOCK = 4096  # elements per tile: 16 per thread with 8 warps


def launch1_elements(case: Case) -> int:
    """Elements launch 1 reads: B*(2K+1)*V for sampled rows (target and draft), B*(K+1)*V for greedy rows."""
    rows = case.K + 1 if case.mode == "greedy" else 2 * case.K + 1
    return case.B * rows * case.V


def read_roofline_fn(numel: int, dtype: torch.dtype, device: torch.device):
    """A no-argument callable that reads `numel` elements of `dtype` once and sums them (the read roofline).

    Parameters
    ----------
    numel : int
        Elements to read (see :func:`launch1_elements`).
    dtype : torch.dtype
    device : torch.device

    Returns
    -------
    callable
        Runs the read; its ``.check()`` returns (the kernel's sum, torch's sum) of the same buffer.
    """
    x = torch.zeros(numel, dtype=dtype, device=device)
    tiles = triton.cdiv(numel, READ_BLOCK)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    per_program = triton.cdiv(tiles, min(tiles, 8 * sms))
    programs = triton.cdiv(tiles, per_program)
    out = torch.empty(programs, dtype=torch.float32, device=device)

    def run():
        _read_sum_kernel[(programs,)](x, out, numel, per_program, BLOCK=READ_BLOCK, num_warps=8)
        return out

    def check():
        x.copy_(torch.rand(numel, device=device).to(dtype))
        return float(run().sum()), float(x.float().sum())

    run.check = check
    return run
