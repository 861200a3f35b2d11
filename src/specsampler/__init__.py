"""specsampler: exact, fused speculative-decoding verification for PyTorch, and batched speculative generation."""

from ._api import VerifyLogprobsResult, VerifyResult, sample, verify, verify_probs
from ._tree import TreeResult, verify_tree
from .generation import GenerateOutput, GenerationStats, PromptLookupDrafter, generate
from .hf import patch_transformers, patched_transformers, unpatch_transformers
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


def __getattr__(name: str):
    """``speculative_generate`` from :mod:`specsampler.hf`, reached lazily (PEP 562): reaching it makes transformers
    hand it ``tokenizer=`` (:func:`specsampler.hf.keep_tokenizer_for_speculative_generate`), which imports
    transformers; ``import specsampler`` alone does not."""
    if name == "speculative_generate":
        from . import hf

        return hf.speculative_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"speculative_generate"})
