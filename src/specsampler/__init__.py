"""specsampler: exact, fused speculative-decoding verification for PyTorch."""

from ._api import VerifyResult, verify, verify_probs
from .torch_backend import RESIDUAL_EPS

__all__ = ["RESIDUAL_EPS", "VerifyResult", "verify", "verify_probs"]
__version__ = "0.1.0"
