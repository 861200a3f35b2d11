"""The verification methods, declared once: their names, whether they are exact, and which function runs each on
which backend.

A method is a rule for deciding drafts; it may run on chains (:func:`specsampler.verify` and
:func:`specsampler.verify_probs`, ``method=``), on trees (:func:`specsampler.verify_tree`, ``method=``), or both.
Everything that names methods reads them here: the entry points' checks and their error messages, the choice of
backend under ``backend="auto"`` (the torch backend where a rule has no kernel), and the generation options' and CLI's
choices (:data:`NAMES`).

Adding a method: its torch module in ``specsampler.torch_backend`` (a :class:`~.torch_backend.chain.ChainRule` for a
chain, a function with ``verify_tree_token``'s signature for a tree), its kernel where there is one (a launcher of
``specsampler.triton_kernels`` and the options that select the rule), and one :class:`Method` in :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .torch_backend import block, token, traversal, tree

CHAIN = "chain"
TREE = "tree"
SHAPES = (CHAIN, TREE)

#: How a tree's candidates were drawn from their parent's draft row (``verify_tree``'s ``draft_sampling``): i.i.d.,
#: or one after another without the earlier siblings' tokens.
DRAFT_SAMPLINGS = ("iid", "without_replacement")


@dataclass(frozen=True)
class Kernel:
    """A Triton launcher of ``specsampler.triton_kernels`` (by name: triton is imported on first use only), and the
    keyword options that select the rule there."""

    launcher: str
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Rule:
    """One method on one shape (chain or tree): its torch function and its kernel (None: torch backend only).

    torch : callable
        Chains: ``torch(target, draft_tokens, draft, num_draft_tokens, temperature, seed, from_probs=..., uniforms=...,
        noise=..., vectorized=..., warp=..., stream=...)`` -> (tokens, num_accepted) (``torch_backend.chain``).
        Trees: ``torch(target, tokens, parents, draft, num_nodes, temperature, seed, uniforms, noise, warp, max_depth,
        without_replacement=...)`` -> (tokens, num_accepted, path) (``torch_backend.tree``).
    kernel : Kernel or None
    kernel_without_replacement : Kernel or None
        Trees: the kernel for candidates drawn without replacement (``draft_sampling="without_replacement"``).
    """

    torch: Callable
    kernel: Kernel | None = None
    kernel_without_replacement: Kernel | None = None

    def kernel_for(self, without_replacement: bool = False) -> Kernel | None:
        """The kernel for i.i.d. (or point-mass) candidates, or for a tree's candidates drawn without replacement."""
        return self.kernel_without_replacement if without_replacement else self.kernel

    def backends_for(self, without_replacement: bool = False) -> tuple[str, ...]:
        """The backends that implement the rule for those candidates: "torch", and "triton" where it has a kernel."""
        return ("torch",) if self.kernel_for(without_replacement) is None else ("torch", "triton")

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that implement the rule (i.i.d. candidates)."""
        return self.backends_for(False)


@dataclass(frozen=True)
class Method:
    """A verification method.

    name : str
        What callers pass as ``method=`` (and the CLI's ``--verify-method``).
    exact : bool
        Whether the emitted tokens follow the target's distribution exactly (every method here is: a rule that is not
        would say so, and the tests check the claim).
    summary : str
        One line, with the rule's reference.
    chain, tree : Rule or None
        The rule on chains and on trees; None where the method does not apply.
    on_chain : str or None
        For generation, which verifies chains and trees with one option: the method a chain runs where this one has
        no chain rule (Traversal Verification is block verification on a chain).
    """

    name: str
    exact: bool
    summary: str
    chain: Rule | None = None
    tree: Rule | None = None
    on_chain: str | None = None

    def rule(self, shape: str) -> Rule | None:
        """The rule on `shape` ("chain" or "tree"), None where the method does not apply there."""
        return self.chain if shape == CHAIN else self.tree


REGISTRY: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    Method("token", exact=True,
           summary="each draft on its own: accept x with probability min(1, p(x) / q(x)), else draw from "
                   "norm(max(p - q, 0)) (Leviathan et al. 2023; on trees SpecInfer's multi-step rule, Miao et al. "
                   "2023)",
           chain=Rule(token.verify_token, Kernel("verify_rows", (("block", False),))),
           tree=Rule(tree.verify_tree_token, Kernel("verify_tree_rows"),
                     Kernel("verify_tree_rule_rows", (("traversal", False), ("without_replacement", True))))),
    Method("block", exact=True,
           summary="the drafts of a row decided together (Sun et al., ICLR 2025, arXiv 2403.10444): never fewer "
                   "accepted in expectation",
           chain=Rule(block.verify_block, Kernel("verify_rows", (("block", True),)))),
    Method("traversal", exact=True,
           summary="Traversal Verification of trees, from the leaves up on sequence-level weights (Weng et al., "
                   "NeurIPS 2025, arXiv 2505.12398); block verification on a chain",
           tree=Rule(traversal.verify_traversal,
                     Kernel("verify_tree_rule_rows", (("traversal", True), ("without_replacement", False))),
                     Kernel("verify_tree_rule_rows", (("traversal", True), ("without_replacement", True)))),
           on_chain="block"),
)})

#: Every method's name, in the registry's order: the choices of generation's ``verify_method`` and the CLI's
#: ``--verify-method``.
NAMES = tuple(REGISTRY)


def names(shape: str | None = None) -> tuple[str, ...]:
    """The names of the methods that apply to `shape` ("chain", "tree"; None: every method)."""
    return tuple(name for name, m in REGISTRY.items() if shape is None or m.rule(shape) is not None)


def choices(shape: str | None = None) -> str:
    """The names as an error message lists them: "'token' or 'block'", "'token', 'block' or 'traversal'"."""
    quoted = [repr(name) for name in names(shape)]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def get(name, shape: str | None = None, argument: str = "method") -> Method:
    """The method called `name` that applies to `shape` (None: any), else a ValueError naming `argument` and the
    choices."""
    method = REGISTRY.get(name) if isinstance(name, str) else None
    if method is None or (shape is not None and method.rule(shape) is None):
        raise ValueError(f"{argument} must be {choices(shape)}, got {name!r}")
    return method


def chain_method(name: str) -> str:
    """The method a chain runs when generation is asked for `name` (itself, or its ``on_chain``)."""
    method = get(name)
    return name if method.chain is not None else method.on_chain
