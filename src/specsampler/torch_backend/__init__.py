"""The torch backend of :func:`specsampler.verify`, :func:`specsampler.sample` and :func:`specsampler.verify_tree`:
runs on any device, and is the oracle for the Triton kernels (``specsampler.triton_kernels``, shaped the same way).

A newcomer reads, in this order:
- ``common``: the constants, the softmax and its treatment of hostile values, the argmax, out-of-range draft ids;
- ``sample``: seeds and random streams, the uniforms, one token drawn from a distribution;
- ``warp``: top-k, top-p and min-p;
- ``chain``: what every chain rule shares (the CPU's per-row path and the batched path), a rule being a
  :class:`~.chain.ChainRule`; ``token`` and ``block``: token and block verification;
- ``logprobs``: the emitted tokens' log-probabilities;
- ``tree``: token-tree verification and what every tree rule shares; ``traversal``: Traversal Verification.

Which rule runs for a method name is said once, in :mod:`specsampler.methods`; the modules here import nothing of
specsampler outside this package but the kernel package's ``constants``.
"""

from .block import verify_block
from .chain import ChainRule, verify_chain
from .common import GREEDY_BELOW, LOG2_E, RESIDUAL_EPS, drafts_in_range
from .logprobs import emitted_logprobs
from .sample import draw_uniforms, hash_seed
from .token import verify_token
from .traversal import verify_traversal
from .tree import nodes_in_range, tree_depths, verify_tree_token
from .warp import Warp, warp_cut, warp_scores

__all__ = [
    "GREEDY_BELOW",
    "LOG2_E",
    "RESIDUAL_EPS",
    "ChainRule",
    "Warp",
    "draw_uniforms",
    "drafts_in_range",
    "emitted_logprobs",
    "hash_seed",
    "nodes_in_range",
    "tree_depths",
    "verify_block",
    "verify_chain",
    "verify_token",
    "verify_traversal",
    "verify_tree_token",
    "warp_cut",
    "warp_scores",
]
