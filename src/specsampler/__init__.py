"""specsampler: exact, fused speculative-decoding verification for PyTorch, and batched speculative generation."""

from ._api import VerifyLogprobsResult, VerifyResult, sample, verify, verify_probs
from ._tree import TreeResult, verify_tree
from .generation import GenerateOutput, GenerationStats, PromptLookupDrafter, generate
from .hf import patch_transformers, patched_transformers, speculative_generate, unpatch_transformers
from .torch_backend import RESIDUAL_EPS

__all__ = [
    "RESIDUAL_EPS",
    "TreeResult",
    "GenerateOutput",
    "GenerationStats",
    "PromptLookupDrafter",
    "VerifyLogprobsResult",
    "VerifyResult",
    "generate",
    "patch_transformers",
    "patched_transformers",
    "sample",
    "speculative_generate",
    "unpatch_transformers",
    "verify",
    "verify_probs",
    "verify_tree",
]
__version__ = "0.1.0"
