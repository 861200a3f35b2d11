"""Triton kernels of specsampler, installed as ``specsampler.triton_kernels``: speculative-decoding verification in
two launches from logits (three with sampling warpers), one from probabilities.

A newcomer reads, in this order:
- ``stats_kernel``: launch 1, ``row_stats``: each needed row's max and sum of exponentials (argmax for greedy rows),
  in splits;
- ``cut_kernel``: launch 1.5, ``warp_cuts`` (top-k / top-p / min-p only): each warped row's cut and kept mass;
- ``verify_kernel``: launch 2, ``verify_rows``: acceptance (token or block verification), the first rejection, the
  exponential race for the next token, the emitted tokens' log-probabilities; its device functions in
  ``verify_positions`` (values per position, log-probabilities, the row writers), ``verify_token`` (token
  verification's acceptance and finish), ``verify_block`` (block verification) and ``verify_race`` (the exponential
  race, the workspace fold, the fallbacks);
- ``tree_kernel``: ``verify_tree_rows``, token-tree verification after launch 1 (and the cut launch): one program per
  row walks its tree's nodes, the residual kept as max(p - c q, 0) without its removed ids;
- ``jit_helpers``: the @triton.jit helpers more than one launch uses; ``launching``: the launch-configuration table,
  the compiled-launcher cache, the workspace, programmatic dependent launch, and the process-wide state's reset;
- ``constants``: the numbers shared with the torch backend (imports nothing).

Importing this package imports no triton (the torch backend takes its constants from ``constants`` on machines
without it): the launchers and kernels load on first access.
"""

from __future__ import annotations

import importlib

# name -> the module defining it, imported on first access
_LAZY = {
    "row_stats": "stats_kernel",
    "_row_stats_kernel": "stats_kernel",
    "warp_cuts": "cut_kernel",
    "_warp_cut_kernel": "cut_kernel",
    "verify_rows": "verify_kernel",
    "_verify_kernel": "verify_kernel",
    "verify_tree_rows": "tree_kernel",
    "_tree_kernel": "tree_kernel",
    "verify_tree_rule_rows": "tree_traversal",
    "_traversal_kernel": "tree_traversal",
    "gdc_wait": "jit_helpers",
}

_SUBMODULES = ("constants", "cut_kernel", "jit_helpers", "launching", "stats_kernel", "tree_kernel", "tree_residual",
               "tree_traversal", "verify_block", "verify_kernel", "verify_positions", "verify_race", "verify_token")

__all__ = ["row_stats", "verify_rows", "verify_tree_rows", "verify_tree_rule_rows", "warp_cuts"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
