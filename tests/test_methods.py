"""The verification methods' registry (``specsampler.methods``): every entry's torch function runs and is exact on a
small case, its kernel is a launcher of the kernel package, and the names callers see (error messages, the backend
chosen, the CLI's choices) come from the registry.

Exactness here is the first emitted token's distribution, which is the target's p at the first position (the root of
a tree) for an exact rule: 20,000 rows with drafts drawn from a draft q far from p, chi-square p-value > ALPHA (fixed
seeds). The full exactness of each rule (every position, warpers, ragged rows, trees of every kind) is tested in
test_distribution.py, test_block.py, test_tree.py and test_traversal.py.
"""

import types

import pytest
import torch
from util import chi2_pvalue

import specsampler
from specsampler import methods, triton_kernels
from specsampler.cli.parser import build_parser
from specsampler.generation import declared
from specsampler.generation.settings import check_option

ALPHA = 1e-3
ROWS, V = 20000, 5
P = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
Q = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])
RULES = [(m.name, shape) for m in methods.REGISTRY.values() for shape in methods.SHAPES if m.rule(shape)]


def _chain_case(k: int, device):
    """[ROWS, K+1, V] target logits with p = P at every position, [ROWS, K, V] draft logits with q = Q, and drafts
    drawn from q."""
    g = torch.Generator().manual_seed(1)
    target = P.log().expand(ROWS, k + 1, V).contiguous()
    draft = Q.log().expand(ROWS, k, V).contiguous()
    drafts = torch.multinomial(Q, ROWS * k, replacement=True, generator=g).reshape(ROWS, k)
    return target.to(device), drafts.to(device), draft.to(device)


def _tree_case(device):
    """Trees of 2 children per node, 2 deep ([ROWS, 6] nodes, every node's children i.i.d. from Q), with p = P and
    q = Q at every node."""
    g = torch.Generator().manual_seed(2)
    parents = torch.tensor([-1, -1, 0, 0, 1, 1]).expand(ROWS, 6).contiguous()
    tokens = torch.multinomial(Q, ROWS * 6, replacement=True, generator=g).reshape(ROWS, 6)
    target = P.log().expand(ROWS, 7, V).contiguous()
    draft = Q.log().expand(ROWS, 7, V).contiguous()
    return target.to(device), tokens.to(device), parents.to(device), draft.to(device)


def _run_torch(rule: methods.Rule, shape: str, device):
    """The rule's torch function on the small case: the first emitted token of every row."""
    if shape == methods.CHAIN:
        target, drafts, draft = _chain_case(3, device)
        tokens, accepted = rule.torch(target, drafts, draft, None, 1.0, 5)
    else:
        target, tokens, parents, draft = _tree_case(device)
        tokens, accepted, _ = rule.torch(target, tokens, parents, draft, None, 1.0, 5)
    assert bool((accepted >= 0).all()) and bool((tokens[:, 0] >= 0).all()) and bool((tokens[:, 0] < V).all())
    return tokens[:, 0].cpu()


@pytest.mark.parametrize("name,shape", RULES, ids=[f"{n}-{s}" for n, s in RULES])
def test_every_rule_runs_and_its_first_token_follows_p(name, shape, device):
    method = methods.REGISTRY[name]
    assert method.exact
    first = _run_torch(method.rule(shape), shape, device)
    assert chi2_pvalue(torch.bincount(first, minlength=V), P) > ALPHA


def test_the_exactness_check_catches_a_rule_that_keeps_every_draft(device):
    """The same check on the drafts themselves (a rule accepting everything emits them): q, far from p."""
    _, drafts, _ = _chain_case(3, device)
    assert chi2_pvalue(torch.bincount(drafts[:, 0].cpu(), minlength=V), P) < 1e-12


@pytest.mark.parametrize("name,shape", RULES, ids=[f"{n}-{s}" for n, s in RULES])
def test_backends_and_kernels_are_the_registrys(name, shape):
    rule = methods.REGISTRY[name].rule(shape)
    assert rule.backends == (("torch",) if rule.kernel is None else ("torch", "triton"))
    for without_replacement in (False, True):
        kernel = rule.kernel_for(without_replacement)
        assert rule.backends_for(without_replacement) == (("torch",) if kernel is None else ("torch", "triton"))
        if kernel is not None:
            assert kernel.launcher in triton_kernels.__all__
            assert all(isinstance(key, str) for key, _ in kernel.options)
    if shape == methods.TREE:  # every tree rule has a kernel for both kinds of candidates (tree_kernel, tree_traversal)
        assert rule.backends_for(False) == rule.backends_for(True) == ("torch", "triton")


def test_names_and_choices():
    assert methods.NAMES == tuple(methods.REGISTRY) == ("token", "block", "traversal")
    assert methods.names(methods.CHAIN) == ("token", "block") == specsampler._api.METHODS
    assert methods.names(methods.TREE) == ("token", "traversal") == specsampler._tree.TREE_METHODS
    assert methods.choices(methods.CHAIN) == "'token' or 'block'"
    assert methods.choices() == "'token', 'block' or 'traversal'"
    assert methods.chain_method("traversal") == "block" and methods.chain_method("token") == "token"
    with pytest.raises(ValueError, match="method must be 'token', 'block' or 'traversal', got 'x'"):
        methods.get("x")


def test_generation_and_the_cli_accept_every_name():
    for name in methods.NAMES:
        assert check_option("verify_method", name) == name
    generate = next(a for a in build_parser()._subparsers._group_actions[0].choices["generate"]._actions
                    if a.dest == "verify_method")
    assert generate.metavar == "{" + ",".join(methods.NAMES) + "}"  # (the declared check enforces them)
    assert declared.VERIFY_METHODS == methods.NAMES and declared.CHAIN_METHODS == methods.names(methods.CHAIN)


def _with_entry(monkeypatch, method: methods.Method) -> None:
    monkeypatch.setattr(methods, "REGISTRY", types.MappingProxyType({**methods.REGISTRY, method.name: method}))


def test_messages_and_dispatch_read_the_registry(monkeypatch):
    """A method added to the registry (here token verification's rules under another name) is accepted by verify and
    verify_tree, named in their refusals, and run on the torch backend where it has no kernel."""
    token = methods.REGISTRY["token"]
    _with_entry(monkeypatch, methods.Method("copy", exact=True, summary="token verification again",
                                            chain=methods.Rule(token.chain.torch), tree=methods.Rule(token.tree.torch)))
    target, drafts, draft = _chain_case(2, "cpu")
    target, drafts, draft = target[:50], drafts[:50], draft[:50]
    want = specsampler.verify(target, drafts, draft, seed=3, backend="torch")
    got = specsampler.verify(target, drafts, draft, seed=3, method="copy")  # auto: torch, the rule's only backend
    assert torch.equal(got.tokens, want.tokens)
    with pytest.raises(ValueError, match="method='copy' has no Triton kernel yet"):
        specsampler.verify(target, drafts, draft, seed=3, method="copy", backend="triton")
    with pytest.raises(ValueError, match="method must be 'token', 'block' or 'copy', got 'nope'"):
        specsampler.verify(target, drafts, draft, method="nope")
    tree_target, tokens, parents, tree_draft = (t[:50] for t in _tree_case("cpu"))
    want = specsampler.verify_tree(tree_target, tokens, parents, tree_draft, seed=3, backend="torch")
    got = specsampler.verify_tree(tree_target, tokens, parents, tree_draft, seed=3, method="copy")
    assert torch.equal(got.tokens, want.tokens)
    with pytest.raises(ValueError, match="method must be 'token', 'traversal' or 'copy', got 'block'"):
        specsampler.verify_tree(tree_target, tokens, parents, method="block")
