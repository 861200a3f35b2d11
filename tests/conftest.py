"""Test setup: the Triton kernel runs compiled on CUDA, else on CPU tensors under Triton's interpreter."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device present: the kernel tests run on each (compiled on CUDA, interpreted on the CPU)."""
    return torch.device(request.param)
