"""Edges of speculative generation through every entry point (specsampler.generate, the patched generate,
custom_generate=speculative_generate): empty batches and prompts, tree levels wider than the vocabulary, trees too
large to pay off, and stop strings with a tokenizer (issue #29, defects 3-6)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from util import perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
import specsampler.hf as hf  # noqa: E402
from specsampler.generation.settings import MAX_TREE_NODES, resolve_settings  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 64
ENTRY_POINTS = ["generate", "patched", "custom_generate"]


@pytest.fixture(autouse=True)
def _unpatched():
    hf.unpatch_transformers()
    yield
    hf.unpatch_transformers()


@pytest.fixture(scope="module")
def pair():
    target = tiny_model(tiny_config("llama", V), 0)
    return target, perturbed(target, 0.005)


def _call(entry: str, target, draft, ids, mask, **kw):
    """One generation call through `entry`: its sequences ([B, P + N])."""
    if entry == "generate":
        return specsampler.generate(target, draft, ids, mask, **kw).sequences
    if entry == "patched":
        with specsampler.patched_transformers():
            return target.generate(ids, attention_mask=mask, assistant_model=draft, **kw)
    return target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                           draft_model=draft, **kw)


# ------------------------------------------------------------------------------------- defect 6: empty inputs
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("tree", [None, (2, 1)])
def test_empty_batch_gives_an_empty_result(pair, entry, tree):
    """B = 0 prompts: an empty [0, P] result (no new tokens to add), as for any batch, chains and trees alike."""
    target, draft = pair
    ids = torch.zeros(0, 5, dtype=torch.long)
    extra = {} if tree is None else {"draft_tree": tree}
    out = _call(entry, target, draft, ids, torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                pad_token_id=0, eos_token_id=None, **extra)
    assert out.shape[0] == 0 and out.dtype == torch.long


def test_empty_batch_with_scores(pair):
    """B = 0 with output_scores / output_logits: empty sequences and no score tensors (no token was drawn)."""
    target, draft = pair
    ids = torch.zeros(0, 3, dtype=torch.long)
    out = specsampler.generate(target, draft, ids, max_new_tokens=4, output_scores=True, output_logits=True)
    assert tuple(out.sequences.shape) == (0, 3) and out.scores == () and out.logits == ()
    assert out.stats.target_forwards == 0


def test_zero_length_prompt_is_refused_by_name(pair):
    """A [B, 0] prompt has no last token to continue from: a ValueError naming input_ids. (transformers' own generate,
    which the patched generate and custom_generate go through, fails on it first, with its own IndexError.)"""
    target, draft = pair
    for ids in (torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"input_ids must hold at least one token per row \(got shape"):
            specsampler.generate(target, draft, ids, max_new_tokens=4, do_sample=False, pad_token_id=0)


# ---------------------------------------------------------------------- defect 4: a level wider than the vocabulary
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_tree_level_wider_than_the_vocabulary_is_refused_by_name(pair, entry):
    """draft_tree=(V + 1,): more distinct top candidates than tokens: a ValueError naming draft_tree and V, before
    any forward (not torch.topk's "selected index k out of range")."""
    target, draft = pair
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match=rf"draft_tree=\({V + 1},\).*{V + 1} distinct.*{V} tokens"):
        _call(entry, target, draft, ids, torch.ones_like(ids), max_new_tokens=2, do_sample=False,
              pad_token_id=0, eos_token_id=None, draft_tree=(V + 1,))


def test_tree_level_as_wide_as_the_vocabulary_runs(pair):
    """draft_tree=(V,): every token a candidate, greedy output equals target.generate."""
    target, draft = pair
    ids = torch.tensor([[3, 4, 5]])
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = specsampler.generate(target, draft, ids, draft_tree=(V,), **kw).sequences
    assert out.tolist() == target.generate(ids, **kw).tolist()


def test_iid_tree_level_wider_than_the_vocabulary_is_allowed(pair):
    """With i.i.d. candidates (sampling) a level may hold more draws than tokens (they repeat): it runs, ids in
    range."""
    target, draft = pair
    ids = torch.tensor([[3, 4, 5]])
    out = specsampler.generate(target, draft, ids, max_new_tokens=3, do_sample=True, top_k=None, seed=0,
                               draft_tree=(V + 1,), draft_tree_sampling="iid", pad_token_id=0, eos_token_id=None)
    new = out.sequences[0, 3:]
    assert new.numel() == 3 and bool(((new >= 0) & (new < V)).all())


# ------------------------------------------------------------------------------- defect 5: trees too large to pay
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_tree_over_the_node_limit_is_refused_with_its_count(pair, entry):
    """draft_tree=(10, 10, 10, 10): 11,110 nodes per row: a ValueError naming draft_tree, the node count and the
    limit, before any forward (it ran for minutes without a word)."""
    target, draft = pair
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match=rf"draft_tree=\(10, 10, 10, 10\).*11110 nodes.*{MAX_TREE_NODES}"):
        _call(entry, target, draft, ids, torch.ones_like(ids), max_new_tokens=2, do_sample=False,
              pad_token_id=0, eos_token_id=None, draft_tree=(10, 10, 10, 10))


def test_tree_node_limit_counts_the_budget():
    """The limit applies to the nodes a row can verify: draft_tree_budget under it lets a wide tree run, and a tree of
    exactly MAX_TREE_NODES nodes is accepted."""
    target = tiny_model(tiny_config("llama", V), 0)
    big = (10, 10, 10, 10)
    settings = resolve_settings(target, draft=target, draft_tree=big, draft_tree_budget=64, max_new_tokens=4)
    assert settings.draft_tree == big and settings.draft_tree_budget == 64
    with pytest.raises(ValueError, match="draft_tree_budget"):  # the message says what would let it run
        resolve_settings(target, draft=target, draft_tree=big, max_new_tokens=4)
    edge = (MAX_TREE_NODES,)
    assert resolve_settings(target, draft=target, draft_tree=edge, max_new_tokens=4).draft_tree == edge
    with pytest.raises(ValueError, match=f"{MAX_TREE_NODES + 1} nodes"):
        resolve_settings(target, draft=target, draft_tree=(MAX_TREE_NODES + 1,), max_new_tokens=4)


# ------------------------------------------------------------------ defect 3: how speculative_generate gets tokenizer=
def test_reaching_speculative_generate_keeps_the_tokenizer_and_only_then_imports_transformers():
    """``import specsampler`` imports no transformers; reaching ``specsampler.speculative_generate`` (PEP 562) imports
    it and wraps ``_extract_generation_mode_kwargs`` once, so that transformers hands the callable tokenizer=."""
    code = ("import sys, specsampler\n"
            "assert 'transformers' not in sys.modules\n"
            "f = specsampler.speculative_generate\n"
            "from transformers.generation.utils import GenerationMixin\n"
            "wrapped = GenerationMixin._extract_generation_mode_kwargs\n"
            "assert wrapped._specsampler_keeps_tokenizer\n"
            "from specsampler.hf import speculative_generate\n"
            "assert speculative_generate is f and f.__name__ == 'speculative_generate'\n"
            "specsampler.patch_transformers()\n"
            "assert GenerationMixin._extract_generation_mode_kwargs is wrapped  # (once)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
