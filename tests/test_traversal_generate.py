"""specsampler.generate with ``verify_method="traversal"`` and ``draft_tree_sampling="without_replacement"``, tiny
models from configs (CPU): greedy rows equal target.generate row by row; sampled tokens follow the enumerated warped
target (chi-square, p > 1e-4), and the draft's own joint is told apart; the options reach verify_tree; refusals by
name."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_generate import _check_rows, _exact_two_tokens, _peaked, _ragged, hf_warp  # noqa: E402
from util import chi2_pvalue_pooled, perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler import PromptLookupDrafter  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 96


@pytest.fixture(scope="module")
def llama_pair():
    target = tiny_model(tiny_config("llama", V, 2, 32), 0)
    return target, perturbed(target, 0.005)


@pytest.mark.parametrize("tree", [dict(draft_tree=(3, 2, 1, 1)), dict(draft_tree=(2, 2),
                                  draft_tree_sampling="without_replacement"), dict(num_draft_tokens=4)],
                         ids=["tree", "tree-wor", "chain"])
def test_greedy_traversal_matches_target_generate(llama_pair, tree):
    target, draft = llama_pair
    ids, mask = _ragged([9, 4, 1, 7])
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=12, verify_method="traversal",
                               eos_token_id=[], pad_token_id=0, **tree)
    _check_rows(target, out, ids, mask, 12)
    assert out.stats.accepted > 0


CASES = [
    ("traversal", dict(draft_tree=(2, 2), draft_tree_sampling="iid"), dict(temperature=0.8, top_k=6)),
    ("traversal", dict(draft_tree=(2, 2), draft_tree_sampling="without_replacement"), dict(temperature=0.8, top_k=6)),
    ("traversal", dict(draft_tree=(2, 2), draft_tree_sampling="without_replacement"), dict(temperature=1.2,
                                                                                           top_p=0.9)),
    ("token", dict(draft_tree=(2, 2), draft_tree_sampling="without_replacement"), dict(temperature=1.0)),
    ("traversal", dict(draft_tree=(2, 2), draft_tree_sampling="top"), dict(temperature=0.8, top_k=6)),
    ("traversal", dict(draft_tree=(1, 1), draft_tree_sampling="top"), dict(temperature=0.8, top_k=6)),
    ("traversal", dict(num_draft_tokens=2), dict(temperature=1.0, top_p=0.9)),
    ("traversal", "lookup", dict(temperature=1.3, top_p=0.9)),
]


@pytest.mark.parametrize("method, tree, warp_kw", CASES, ids=["trav-iid-topk", "trav-wor-topk", "trav-wor-topp",
                                                             "token-wor", "trav-top", "trav-top-chain",
                                                             "trav-chain", "trav-lookup"])
def test_sampled_traversal_follows_target_distribution(method, tree, warp_kw):
    """3000 copies of one prompt, max_new_tokens=3: the first two new tokens follow the warped target's joint."""
    vocab, n = 8, 3000
    target = _peaked(tiny_config("llama", vocab, 1, 16), 0, 8.0)
    draft = perturbed(target, 0.05)
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=0)
    if tree == "lookup":
        tree = dict(draft=PromptLookupDrafter(max_ngram=2), num_draft_tokens=2, prompt_lookup_num_candidates=3)
    else:
        tree = dict(draft=draft) | tree
    out = specsampler.generate(target, input_ids=prompt.repeat(n, 1), max_new_tokens=3, do_sample=True, seed=1234,
                               eos_token_id=[], verify_method=method, **tree, **warp_kw)
    new = out.sequences[:, prompt.shape[1]:prompt.shape[1] + 2]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    exact = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
    assert counts[exact == 0].sum() == 0
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    if tree["draft"] is draft:
        assert chi2_pvalue_pooled(counts, _exact_two_tokens(draft, prompt, lambda x: hf_warp(x, **warp_kw))
                                  .flatten()) < 1e-4
    assert 0 < out.stats.accepted < out.stats.drafted


def test_options_reach_verify_tree(llama_pair, monkeypatch):
    """verify_method and draft_tree_sampling arrive at verify_tree as method and draft_sampling; the candidates drawn
    without replacement are distinct siblings."""
    from specsampler.generation import tree_loop

    target, draft = llama_pair
    seen, real = [], tree_loop.verify_tree

    def spy(logits, tokens, parents, *args, **kw):
        seen.append((kw["method"], kw["draft_sampling"], tokens.clone(), parents.clone()))
        return real(logits, tokens, parents, *args, **kw)

    monkeypatch.setattr(tree_loop, "verify_tree", spy)
    ids, mask = _ragged([5, 3])
    specsampler.generate(target, draft, ids, mask, max_new_tokens=4, do_sample=True, temperature=1.5, seed=3,
                         draft_tree=(3, 2), draft_tree_sampling="without_replacement", verify_method="traversal",
                         eos_token_id=[], pad_token_id=0)
    assert seen and all(m == "traversal" and s == "without_replacement" for m, s, _, _ in seen)
    for _, _, tokens, parents in seen:
        for b in range(tokens.shape[0]):
            for v in set(parents[b].tolist()):
                kids = tokens[b][parents[b] == v].tolist()
                assert len(set(kids)) == len(kids)


@pytest.mark.parametrize("kw, match", [
    (dict(draft_tree=(2,), verify_method="block"), "verify_method='block' does not apply with draft_tree"),
    (dict(verify_method="travesal"), "verify_method must be 'token', 'block' or 'traversal'"),
    (dict(draft_tree=(2, 2), draft_tree_sampling="without_replacement", draft_tree_budget=3),
     "not with draft_tree_sampling='without_replacement'"),
])
def test_refusals_by_name(llama_pair, kw, match):
    target, draft = llama_pair
    with pytest.raises(ValueError, match=match):
        specsampler.generate(target, draft, torch.tensor([[1, 2, 3]]), max_new_tokens=2, **kw)


def test_cli_flags_take_the_new_values():
    from specsampler import cli
    from specsampler.cli import options
    from specsampler.cli.errors import CLIError

    args = cli.build_parser().parse_args(["generate", "--target", "t", "--draft", "d", "--prompt", "x",
                                          "--draft-tree", "3,2,1,1", "--draft-tree-sampling", "without_replacement",
                                          "--verify-method", "traversal"])
    assert options.speculative_options(args) == {"draft_tree": (3, 2, 1, 1),
                                                 "draft_tree_sampling": "without_replacement",
                                                 "verify_method": "traversal"}
    bad = cli.build_parser().parse_args(["generate", "--target", "t", "--prompt", "x", "--verify-method", "leaf"])
    with pytest.raises(CLIError, match=r"^--verify-method: must be 'token', 'block' or 'traversal', got 'leaf'$"):
        options.check_options(bad)  # (the option's declared check and message, as through specsampler.generate)
