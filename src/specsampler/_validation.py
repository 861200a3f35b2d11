"""The checks and normalisations :func:`specsampler.verify` (``_api``) and :func:`specsampler.verify_tree` (``_tree``)
share: tensors' shapes, dtypes and devices, per-row values, the seed, the warpers, the temperature, the test hooks, and
the backend.

Metadata only on CUDA tensors (no host synchronisation); CPU tensors' values are range-checked too. Each check names
the argument as the caller wrote it. Process-wide state here: two answers asked once per process, whether triton
imports (:func:`triton_available`) and the kernel package (:func:`kernels`); ``_testing.reset_kernel_state`` clears
them with the kernels' own caches (``triton_kernels/launching.py``).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import os
from typing import NamedTuple

import torch

from . import _checks
from .torch_backend import GREEDY_BELOW, Warp, hash_seed

SCORE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOKEN_DTYPES = (torch.int32, torch.int64)
BACKENDS = ("auto", "triton", "torch")


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


def check_flag(name: str, value) -> None:
    """A keyword that must be True or False (``return_logprobs``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_scores(name: str, x: torch.Tensor, batch: int | None, rows: int | None) -> None:
    """Scores [B, rows, V] (any B, rows and V >= 1 when `batch` is None) of a float dtype the kernels read."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [B, {'K' if rows is None else rows}, V], got {tuple(x.shape)}")
    if x.dtype not in SCORE_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if batch is not None and (x.shape[0], x.shape[1]) != (batch, rows):
        raise ValueError(f"{name} must have shape [B, K, *] = [{batch}, {rows}, *], got {tuple(x.shape)}")
    if x.shape[2] == 0:
        raise ValueError(f"{name} has an empty vocabulary: shape {tuple(x.shape)}")


def check_draft_scores(names: tuple[str, str], draft: torch.Tensor, batch: int, rows: int, vocab: int,
                       device: torch.device) -> None:
    """The draft's scores `names[1]` [B, rows, Vd], Vd <= V of the target's `names[0]`, on its device."""
    target_name, draft_name = names
    check_scores(draft_name, draft, batch, rows)
    check_device(draft_name, draft, device)
    if draft.shape[2] > vocab:
        raise ValueError(f"{draft_name} has a larger vocabulary ({draft.shape[2]}) than {target_name} ({vocab})")


def check_ids(name: str, x, batch: int, n: int, letter: str, target_name: str, device: torch.device) -> None:
    """Token ids or node indices [B, n] (``draft_tokens`` [B, K], ``tree_tokens`` [B, N]), int32 or int64, on
    `device`; `letter` names n, `target_name` the scores whose shape gives it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in TOKEN_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {x.dtype}")
    if tuple(x.shape) != (batch, n):
        raise ValueError(f"{name} must have shape [B, {letter}] = [{batch}, {n}] ({target_name} is "
                         f"[B, {letter}+1, V]), got {tuple(x.shape)}")
    check_device(name, x, device)


def check_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, but the target's scores are on {device}")


def row_tensor(name: str, value, batch: int, device: torch.device, dtypes: tuple) -> torch.Tensor:
    """A [B] tensor of one of `dtypes` on `device`, made contiguous (the kernel reads row b at offset b)."""
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {tuple(value.shape)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {value.dtype}")
    check_device(name, value, device)
    return value.contiguous()


def integer_rows(name: str, value, device: torch.device) -> torch.Tensor:
    """A sequence of integers as an int64 tensor; floats (1.5, or 2.0) are refused by name rather than truncated."""
    try:
        rows = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a [B] integer tensor or a sequence of integers, got {value!r}") from err
    integral = rows.dtype in TOKEN_DTYPES or rows.dtype in (torch.int8, torch.int16, torch.uint8)
    if not integral and rows.numel() > 0:  # (an empty list reads as float32: B = 0 has no counts to check)
        raise TypeError(f"{name} must be a [B] integer tensor or a sequence of integers, got {value!r} "
                        f"({rows.dtype})")
    return rows.to(device=device, dtype=torch.int64)


def counts(name: str, value, batch: int, limit: int, letter: str, device: torch.device) -> torch.Tensor | None:
    """Per-row counts in [0, `limit`] (``num_draft_tokens``, ``num_nodes``; `letter` names the limit) as a [B] int32
    or int64 tensor (a sequence of integers as int64); None stays None."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        value = integer_rows(name, value, device)
    value = row_tensor(name, value, batch, device, TOKEN_DTYPES)
    if device.type == "cpu" and bool(((value < 0) | (value > limit)).any()):
        raise ValueError(f"{name} must lie in [0, {letter}] = [0, {limit}], got {value.tolist()}")
    return value


def temperature_value(value, batch: int, device: torch.device) -> float | torch.Tensor:
    """A float (0.0 below GREEDY_BELOW, where 1 / T would overflow float32: greedy, as on both backends for a
    tensor) or a [B] float32 tensor, finite and >= 0 (checked on CPU tensors)."""
    if isinstance(value, torch.Tensor):
        value = row_tensor("temperature", value, batch, device, SCORE_DTYPES).float()
        if device.type == "cpu" and not bool(((value >= 0) & (value < math.inf)).all()):
            raise ValueError(f"temperature must be finite and >= 0, got {value.tolist()}")
        return value
    value = _checks.temperature(value)
    return 0.0 if value < GREEDY_BELOW else value


def seed_value(value, generator, batch: int, device: torch.device):
    """The seed as the backends take it: an int in [0, 2**62) (any integer, hashed whole: distinct seeds give
    independent streams) or [B] int64 per-row seeds (a tensor as given, or drawn from `generator` on its device)."""
    if generator is not None:
        if value is not None:
            raise ValueError("pass seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        draws = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device, dtype=torch.int64)
        return draws.to(device, non_blocking=True)
    if value is None:
        return int(torch.randint(0, 2**62, ()))
    if isinstance(value, torch.Tensor):
        return row_tensor("seed", value, batch, device, TOKEN_DTYPES).to(torch.int64)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return hash_seed(int(value))
    raise TypeError(f"seed must be None, an integer or a [B] int64 tensor, got {type(value).__name__}")


def _warp_option(name: str, value, batch: int, device: torch.device, integral: bool, off):
    """One warper as a number or a [B] tensor (None: `off`), range-checked where that needs no host synchronisation."""
    if value is None:
        return off
    if isinstance(value, torch.Tensor):
        dtypes = TOKEN_DTYPES if integral else SCORE_DTYPES
        value = row_tensor(name, value, batch, device, dtypes).to(torch.int64 if integral else torch.float32)
        bad = (value < 0) if integral else ~((value >= 0) & (value <= 1))
        if device.type == "cpu" and bool(bad.any()):
            raise ValueError(f"{name} must be {'>= 0' if integral else 'in [0, 1]'}, got {value.tolist()}")
        return value
    value = getattr(_checks, name)(value, name)  # the option's one check and message (generate's too)
    if value is None:  # (0 / 1 / 0: off)
        return off
    return min(value, 2**31 - 1) if integral else value  # a top_k >= V keeps every logit; this fits every backend


def warp_options(top_k, top_p, min_p, temperature, batch: int, device: torch.device) -> Warp | None:
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


def check_hooks(hooks: Hooks, batch: int, k: int, vocab: int, device: torch.device) -> None:
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
        check_device(name, hook, device)
    if (hooks.uniforms is None) != (hooks.noise is None):
        missing = "_noise" if hooks.noise is None else "_uniforms"
        raise ValueError(f"{missing} is missing: _uniforms and _noise go together")


@functools.cache
def kernels():
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


def pick_backend(backend: str, device: torch.device) -> str:
    """"triton" or "torch" for `backend` on tensors on `device`: "auto" runs the kernel on CUDA where triton is
    installed; "triton" is refused, with the reason, where it cannot run."""
    if backend not in BACKENDS:
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


def rule_backend(backend: str, device: torch.device, backends: tuple[str, ...], what: str) -> str:
    """:func:`pick_backend` for a rule that runs on `backends` only: "auto" picks torch where the rule has no kernel,
    "triton" is refused there, naming the rule (`what`, e.g. "method='traversal'")."""
    if backend == "triton" and "triton" not in backends:
        raise ValueError(f"{what} has no Triton kernel yet; use backend='torch' (or 'auto')")
    picked = pick_backend(backend, device)
    return picked if picked in backends else "torch"
