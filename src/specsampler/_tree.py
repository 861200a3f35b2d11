"""`specsampler.verify_tree`: validation (``_validation``, shared with ``verify``) and dispatch to the method's tree
rule (``methods``: ``torch_backend.tree``, ``torch_backend.traversal``) on a backend."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from . import methods
from ._validation import (
    NO_HOOKS,
    Hooks,
    check_draft_scores,
    check_flag,
    check_hooks,
    check_ids,
    check_scores,
    counts,
    kernels,
    rule_backend,
    seed_value,
    temperature_value,
    warp_options,
)
from .torch_backend import emitted_logprobs, nodes_in_range, tree_depths

#: The methods :func:`verify_tree` runs (``methods.REGISTRY``'s tree rules).
TREE_METHODS = methods.names(methods.TREE)


class TreeResult(NamedTuple):
    """Output of :func:`verify_tree`.

    Attributes
    ----------
    tokens : torch.Tensor
        [B, D+1] int64: the accepted path's tokens, then the next token, then -1 (D the deepest path).
    num_accepted : torch.Tensor
        [B] int64: the accepted path's length.
    path : torch.Tensor
        [B, D] int64: the accepted nodes' indices in order, -1 padded (for the caller's cache bookkeeping).
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    path: torch.Tensor


class TreeLogprobsResult(NamedTuple):
    """Output of :func:`verify_tree` with ``return_logprobs=True``: :class:`TreeResult` and ``logprobs`` [B, D+1]
    float32, each emitted token's log-probability under the target at its position (as :func:`specsampler.verify`'s;
    0 at padding)."""

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    path: torch.Tensor
    logprobs: torch.Tensor


def verify_tree(target_logits, tree_tokens, tree_parents, draft_logits=None, *, num_nodes=None, temperature=1.0,
                top_k=None, top_p=None, min_p=None, seed=None, generator=None, backend="auto",
                max_depth=None, method="token", draft_sampling="iid",
                return_logprobs=False) -> TreeResult | TreeLogprobsResult:
    """Verify a tree of drafted candidates per row: the deepest accepted path, then one more token.

    At the current node (the root first) with residual r (the target's warped p there), each child x in node order is
    accepted with probability min(1, r(x) / q(x)), q the distribution the children were drawn from (the point mass at
    x with ``draft_logits=None``); a rejection sets r to norm(max(r - q, 0)). An accepted child becomes the current
    node with r its p; when every child is rejected (or there is none), the next token is drawn from r. The emitted
    tokens follow p exactly when each node's children are i.i.d. draws from its q (SpecInfer's multi-step
    speculative sampling) or point masses (any deterministic choice, such as the draft's top tokens). A chain is
    token verification; greedy rows (T = 0) follow the child equal to argmax p.

    ``method="traversal"``: Traversal Verification (Weng et al., NeurIPS 2025, arXiv 2505.12398), which tests the nodes
    from the leaves up on sequence-level weights (``specsampler.torch_backend.traversal`` states the rule and its
    proof): as
    exact, on a chain exactly :func:`specsampler.verify`'s ``method="block"``, and it keeps paths below a rejected
    node that the token rule discards. Both backends (the kernel: ``triton_kernels/tree_traversal.py``).

    Parameters
    ----------
    target_logits : torch.Tensor
        [B, N+1, V] float32, bfloat16 or float16: row 0 the target's scores at the root (after the last committed
        token), row i + 1 its scores after node i's path.
    tree_tokens : torch.Tensor
        [B, N] int32 or int64: each node's token. A token outside [0, V) (a -1 placeholder) ends its row's nodes
        there, exactly as a num_nodes of its index would: it and every later node of the row are never reached.
    tree_parents : torch.Tensor
        [B, N] int32 or int64: each node's parent in [-1, i) (-1: a child of the root), so nodes are in topological
        order; siblings are tried in node order. Checked on CPU tensors; on CUDA a node with another parent is never
        reached.
    draft_logits : torch.Tensor, optional
        [B, N+1, Vd] (Vd <= V): row 0 the scores the root's children were drawn from, row i + 1 node i's children's.
        None: point-mass candidates.
    num_nodes : torch.Tensor or sequence of int, optional
        [B] in [0, N]: the nodes each row really has. None: N.
    temperature, top_k, top_p, min_p, seed, generator
        As in :func:`specsampler.verify`; the tree has its own random stream of a seed (``constants.STREAM_TREE``),
        independent of :func:`specsampler.sample`'s and :func:`specsampler.verify`'s on the same seed.
    backend : {"auto", "triton", "torch"}
        "auto": the Triton kernel on CUDA tensors when triton is installed, else torch; "triton" also runs on CPU
        tensors under TRITON_INTERPRET=1. The kernel's random numbers are Philox, the torch backend's
        torch.Generator: the same seed gives the same distribution, not the same tokens.
    max_depth : int, optional
        The output width D: nodes deeper than it are never reached. None: the deepest path of the trees (one host
        synchronisation on CUDA; pass it under CUDA-graph capture).
    method : {"token", "traversal"}
        The rule: "token" as above, "traversal" Traversal Verification.
    draft_sampling : {"iid", "without_replacement"}
        How each node's children were drawn from its draft row: "iid", or "without_replacement" (one after another,
        each without the earlier siblings' tokens: Gumbel-top-k), verified with Q the draft's row without the earlier
        siblings' tokens, renormalised (Jeon et al., arXiv 2402.14160). Nothing changes for point-mass
        candidates (``draft_logits=None``).
    return_logprobs : bool
        Also return the emitted tokens' log-probabilities (:class:`TreeLogprobsResult`).

    Returns
    -------
    TreeResult or TreeLogprobsResult
        ``tokens`` [B, D+1], ``num_accepted`` [B] and ``path`` [B, D], int64; ``logprobs`` [B, D+1] float32 too
        with `return_logprobs`.
    """
    return _verify_tree(target_logits, tree_tokens, tree_parents, draft_logits, num_nodes=num_nodes,
                        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                        generator=generator, backend=backend, max_depth=max_depth, method=method,
                        draft_sampling=draft_sampling, return_logprobs=return_logprobs)


def _verify_tree(target_logits, tree_tokens, tree_parents, draft_logits=None, *, num_nodes=None, temperature=1.0,
                 top_k=None, top_p=None, min_p=None, seed=None, generator=None, backend="auto", max_depth=None,
                 method="token", draft_sampling="iid", return_logprobs=False,
                 hooks: Hooks = NO_HOOKS) -> TreeResult | TreeLogprobsResult:
    """:func:`verify_tree`, with the `hooks` only ``specsampler._testing`` sets ([B, N] uniforms, [B, V] noise)."""
    method = _check_rule(method, draft_sampling, return_logprobs)
    check_scores("target_logits", target_logits, None, None)
    batch, n_plus_1, vocab = target_logits.shape
    device = target_logits.device
    n = n_plus_1 - 1
    _check_tree(tree_tokens, tree_parents, batch, n, device)
    if draft_logits is not None:
        check_draft_scores(("target_logits", "draft_logits"), draft_logits, batch, n_plus_1, vocab, device)
    num_nodes = counts("num_nodes", num_nodes, batch, n, "N", device)
    num_nodes = None if num_nodes is None else num_nodes.to(torch.int64)
    temperature = temperature_value(temperature, batch, device)
    if max_depth is not None and (not isinstance(max_depth, numbers.Integral) or isinstance(max_depth, bool)
                                  or max_depth < 0):
        raise ValueError(f"max_depth must be None or an integer >= 0, got {max_depth!r}")
    without_replacement = draft_sampling == "without_replacement" and draft_logits is not None
    backend = _tree_backend(backend, device, method, without_replacement)
    seed = seed_value(seed, generator, batch, device)
    if hooks is not NO_HOOKS:
        check_hooks(hooks, batch, n, vocab, device)
    warp = warp_options(top_k, top_p, min_p, temperature, batch, device)
    if batch == 0:
        width = 0 if max_depth is None else int(max_depth)
        empty = torch.empty(0, width + 1, dtype=torch.int64, device=device)
        out = TreeResult(empty, torch.empty(0, dtype=torch.int64, device=device), empty[:, :width])
        return _with_logprobs(out, target_logits, temperature, warp) if return_logprobs else out
    out = _run_tree(target_logits, tree_tokens, tree_parents, draft_logits, num_nodes, temperature, seed, hooks, warp,
                    max_depth, backend, method.tree, draft_sampling == "without_replacement")
    return _with_logprobs(out, target_logits, temperature, warp) if return_logprobs else out


def _run_tree(target_logits, tree_tokens, tree_parents, draft_logits, num_nodes, temperature, seed, hooks, warp,
              max_depth, backend, rule: methods.Rule, without_replacement) -> TreeResult:
    """The method's tree rule on the chosen backend, on validated arguments."""
    if backend == "triton":
        if max_depth is None:  # the deepest path of the trees: one host synchronisation on CUDA
            depth = tree_depths(tree_parents, nodes_in_range(tree_tokens, target_logits.shape[-1], num_nodes))
            max_depth = int(depth.max()) if depth.numel() else 0
        kernel = rule.kernel_for(without_replacement)
        launcher = getattr(kernels(), kernel.launcher)
        return TreeResult(*launcher(target_logits, tree_tokens, tree_parents, draft_logits, num_nodes, temperature,
                                    seed, warp, int(max_depth), hooks.uniforms, hooks.noise, **dict(kernel.options)))
    return TreeResult(*rule.torch(target_logits, tree_tokens, tree_parents, draft_logits, num_nodes, temperature, seed,
                                  hooks.uniforms, hooks.noise, warp, None if max_depth is None else int(max_depth),
                                  without_replacement=without_replacement))


def _check_rule(method, draft_sampling, return_logprobs) -> methods.Method:
    """The method (a tree rule of the registry), the draft sampling and the flag, checked by name."""
    method = methods.get(method, methods.TREE)
    if draft_sampling not in methods.DRAFT_SAMPLINGS:
        raise ValueError(f"draft_sampling must be 'iid' or 'without_replacement', got {draft_sampling!r}")
    check_flag("return_logprobs", return_logprobs)
    return method


def _tree_backend(backend, device: torch.device, method: methods.Method, without_replacement: bool) -> str:
    """The backend: "auto" picks the kernel on CUDA where the rule has one for these candidates (i.i.d. or drawn
    without replacement), torch elsewhere; "triton" is refused by name where there is none."""
    backends = method.tree.backends_for(without_replacement)
    what = f"method={method.name!r}" + (" with draft_sampling='without_replacement'" if without_replacement else "")
    return rule_backend(backend, device, backends, what)


def _check_tree(tree_tokens, tree_parents, batch: int, n: int, device: torch.device) -> None:
    """The nodes' tokens and parents [B, N]; on CPU tensors, every parent in [-1, i) (topological order)."""
    check_ids("tree_tokens", tree_tokens, batch, n, "N", "target_logits", device)
    check_ids("tree_parents", tree_parents, batch, n, "N", "target_logits", device)
    if device.type == "cpu" and n > 0:
        bad = (tree_parents < -1) | (tree_parents >= torch.arange(n))
        if bool(bad.any()):
            raise ValueError(f"tree_parents must hold, at node i, a parent in [-1, i) (topological order); got "
                             f"{tree_parents.tolist()}")


def _with_logprobs(out: TreeResult, target_logits, temperature, warp) -> TreeLogprobsResult:
    """Each emitted token's log-probability: the target's row of its position (the root, then the path's nodes)."""
    batch, width = out.tokens.shape
    rows = torch.cat([torch.zeros(batch, 1, dtype=torch.int64, device=out.path.device), out.path.clamp(min=-1) + 1],
                     dim=1)
    scores = target_logits.gather(1, rows[:, :, None].expand(batch, width, target_logits.shape[2]))
    return TreeLogprobsResult(*out, emitted_logprobs(scores, out.tokens, out.num_accepted, temperature, warp, False))
