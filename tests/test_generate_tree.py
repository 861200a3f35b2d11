"""specsampler.generate with token trees (draft_tree=, prompt_lookup_num_candidates=), tiny models from configs (CPU):
greedy rows equal target.generate row by row (batch 4, left padded; Llama, Qwen2, GPT-2; a draft model and prompt
lookup tries; logits processors per node), sampled tokens follow the enumerated warped target (chi-square), the
patched generate and speculative_generate take the keywords, options are refused by name."""

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


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def pair(request):
    target = tiny_model(tiny_config(request.param, V, 2, 32), 0)
    return target, perturbed(target, 0.005)


@pytest.fixture(scope="module")
def llama_pair():
    target = tiny_model(tiny_config("llama", V, 2, 32), 0)
    return target, perturbed(target, 0.005)


# ---------------------------------------------------------------------------------------------------- greedy
def test_greedy_draft_tree_matches_target_generate(pair):
    """Batch 4, left padded, ragged: each row equals target.generate on that row alone; a tree accepts more per
    target forward than the chain of its depth."""
    target, draft = pair
    ids, mask = _ragged([9, 4, 1, 7])
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, draft_tree=(3, 2, 1, 1),
                               eos_token_id=[], pad_token_id=0)
    _check_rows(target, out, ids, mask, 16)
    s = out.stats
    assert s.new_tokens == 4 * 16 and 0 < s.accepted and s.drafted > s.accepted
    assert s.draft_forwards <= 4 * s.target_forwards  # one per depth (fewer where every row's budget is shallower)
    chain = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, num_draft_tokens=4, eos_token_id=[],
                                 pad_token_id=0)
    assert torch.equal(chain.sequences, out.sequences)
    assert s.tokens_per_forward >= chain.stats.tokens_per_forward


@pytest.mark.parametrize("prune", [dict(draft_tree_min_prob=0.01), dict(draft_tree_budget=6)], ids=["p", "budget"])
def test_greedy_pruned_tree_matches_target_generate(pair, prune):
    """draft_tree_min_prob=0.01 (confidence pruning) or draft_tree_budget=6: batch 4, left padded, ragged: each row
    equals target.generate on that row alone; the rows verify fewer nodes than the full tree's (at most the budget),
    and the draft's top-1 chain stays."""
    target, draft = pair
    ids, mask = _ragged([9, 4, 1, 7])
    kw = dict(max_new_tokens=16, eos_token_id=[], pad_token_id=0)
    out = specsampler.generate(target, draft, ids, mask, draft_tree=(3, 2, 1, 1), **prune, **kw)
    _check_rows(target, out, ids, mask, 16)
    full = specsampler.generate(target, draft, ids, mask, draft_tree=(3, 2, 1, 1), **kw)
    assert torch.equal(out.sequences, full.sequences)
    s = out.stats
    assert s.new_tokens == 4 * 16 and 0 < s.accepted and s.drafted < full.stats.drafted
    assert s.drafted / s.row_steps < 21 and s.draft_forwards <= 4 * s.target_forwards
    assert s.drafted <= s.row_steps * prune.get("draft_tree_budget", 21)


def test_greedy_lookup_candidates_match_target_generate(pair):
    """prompt_lookup_num_candidates=3: the tries of up to 3 n-gram continuations; rows equal target.generate."""
    target, _ = pair
    ids, mask = _ragged([9, 4, 1, 7], seed=2, repeat=True)
    out = specsampler.generate(target, PromptLookupDrafter(), ids, mask, max_new_tokens=16, num_draft_tokens=3,
                               prompt_lookup_num_candidates=3, eos_token_id=[], pad_token_id=0)
    _check_rows(target, out, ids, mask, 16)
    assert out.stats.drafted > 0 and out.stats.draft_forwards == 0


@pytest.mark.parametrize("schedule", ["heuristic", "cost"])
def test_lookup_candidates_take_draft_length_schedules(pair, schedule, monkeypatch, scripted_cost_schedule):
    """prompt_lookup_num_candidates=3 with a draft-length schedule (scripted times for "cost"): row b's trie is at
    most K_b deep, the schedule's, which varies from step to step; the depth each trie reports is its deepest path;
    rows equal target.generate."""
    from specsampler.generation import tree_drafters
    from specsampler.generation.schedules import CostSchedule, HeuristicSchedule

    target, _ = pair
    ids = torch.tensor([[0, 0, 5, 1, 5, 2, 5, 3, 5], [5, 9, 9, 5, 8, 8, 5, 7, 5], [0, 0, 0, 0, 0, 4, 5, 4, 6],
                        [0, 0, 0, 2, 3, 2, 4, 2, 5]])  # last tokens followed by several others: tries branch
    mask = (torch.arange(9) >= torch.tensor([2, 0, 5, 3])[:, None]).long()
    if schedule == "cost":
        scripted_cost_schedule()
    seen, propose = [], tree_drafters.TreeLookupRun.propose

    def recorded(self, last, limits):
        proposal = propose(self, last, limits)
        seen.append((list(limits), proposal))
        return proposal

    monkeypatch.setattr(tree_drafters.TreeLookupRun, "propose", recorded)
    cls = HeuristicSchedule if schedule == "heuristic" else CostSchedule
    levels, observe = [], cls.observe

    def observed(self, step, *args, **kwargs):
        levels.append(step.levels)
        return observe(self, step, *args, **kwargs)

    monkeypatch.setattr(cls, "observe", observed)
    out = specsampler.generate(target, PromptLookupDrafter(max_ngram=1), ids, mask, max_new_tokens=16,
                               num_draft_tokens=3, prompt_lookup_num_candidates=3,
                               num_assistant_tokens_schedule=schedule, eos_token_id=[], pad_token_id=0)
    _check_rows(target, out, ids, mask, 16)
    assert len({k for limits, _ in seen for k in limits}) >= 3, seen
    assert levels == [proposal.depths for _, proposal in seen]  # what the schedule saw: the depths
    for limits, proposal in seen:
        for b, (limit, count, depth) in enumerate(zip(limits, proposal.counts, proposal.depths, strict=True)):
            levels = []
            for parent in proposal.parents[b, :count].tolist():
                levels.append(1 + (levels[parent] if parent >= 0 else 0))
            assert depth == max(levels, default=0) <= min(limit, 6)  # (6: the heuristic's 2K)
    assert any(c > d for _, prop in seen for c, d in zip(prop.counts, prop.depths, strict=True))  # (tries branch)


def test_schedules_count_a_tree_by_its_depth():
    """A schedule sees a tree step's depths, not its node counts: "heuristic" lengthens K_b after a trie of 9 nodes
    whose deepest path (3 = K_b) was accepted, and shortens it after one whose accepted path stopped short; "cost"
    counts acceptance by depth and prices a draft length by the rows a tree of that depth feeds (3 per level here)."""
    from specsampler.generation.loop import Step
    from specsampler.generation.schedules import Costs, CostSchedule, CostTuning, HeuristicSchedule

    def tree_step(counts, depths, accepted):
        return Step(counts, max(counts) + 1, torch.tensor([len(t) - 1 for t in accepted]), accepted,
                    torch.zeros(len(counts)), depths=depths)

    heuristic = HeuristicSchedule(3, 2)
    heuristic.observe(tree_step([9, 9], [3, 3], [[7] * 4, [7] * 3]), 0)
    assert heuristic.lengths([100, 100]) == [5, 2]
    costs = Costs(CostTuning(smoothing=1.0))
    costs.target, costs.draft, costs.rest = {1: 1.02, 2: 1.04}, {1: 0.0}, {1: 0.0}  # 1 s + 0.02 s per row fed
    schedule = CostSchedule(costs, k0=3, watch=None, max_k=6)
    schedule.observe(tree_step([9], [3], [[7] * 2]), spans=[0.0, 1.2, 0.0])  # 1 of depth 3 accepted, 10 rows fed
    assert costs.verified[1:4] == [1.0, 1.0, 0.0] and costs.rejected[1:4] == [0.0, 1.0, 0.0]
    assert schedule.breadth == 3.0 and costs.target[10] == 1.2
    tree = schedule.choose([100])
    schedule.breadth = 1.0
    assert (tree, schedule.choose([100])) == (2, 4)  # a chain's K' feeds a third of the rows


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_steps_whose_trees_are_chains_take_token_verification(llama_pair, drafter, monkeypatch):
    """A step where every row's point-mass tree is a chain (draft_tree=(1, 1, 1); a lookup trie of one continuation,
    or none) runs the chain's forward and token verification; the other steps verify_tree: rows equal
    target.generate, and both kinds of step happen with lookup tries."""
    from specsampler.generation import loop, tree_loop

    target, draft = llama_pair
    kinds, chain, tree = [], loop.verify_chain, tree_loop.verify_tree
    monkeypatch.setattr(loop, "verify_chain", lambda *a, **k: kinds.append("chain") or chain(*a, **k))
    monkeypatch.setattr(tree_loop, "verify_tree", lambda *a, **k: kinds.append("tree") or tree(*a, **k))
    if drafter == "model":
        ids, mask = _ragged([9, 4, 1, 7])
        options = dict(draft=draft, draft_tree=(1, 1, 1))
    else:
        ids, mask = _ragged([9, 4, 1, 7], seed=2, repeat=True)
        options = dict(draft=PromptLookupDrafter(max_ngram=1), num_draft_tokens=3, prompt_lookup_num_candidates=3)
    out = specsampler.generate(target, input_ids=ids, attention_mask=mask, max_new_tokens=16, eos_token_id=[],
                               pad_token_id=0, **options)
    _check_rows(target, out, ids, mask, 16)
    assert out.stats.accepted > 0
    assert set(kinds) == ({"chain"} if drafter == "model" else {"chain", "tree"}), kinds
    if drafter == "model":  # the draft's cache kept the accepted nodes: it drafts what the chain drafter drafts
        same = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, eos_token_id=[], pad_token_id=0,
                                    num_draft_tokens=3)
        assert (out.stats.accepted, out.stats.drafted) == (same.stats.accepted, same.stats.drafted)


def test_lookup_step_without_any_match(llama_pair, monkeypatch):
    """A step where no row's n-gram matches (a tree of N = 0 nodes: verify_tree draws from the root's p) commits one
    token per row, as target.generate would."""
    from specsampler.generation import tree_drafters

    target, _ = llama_pair
    ids, mask = _ragged([3, 1], seed=7)
    widths, propose = [], tree_drafters.TreeLookupRun.propose

    def recorded(self, *args):
        proposal = propose(self, *args)
        widths.append(proposal.tokens.shape[1])
        return proposal

    monkeypatch.setattr(tree_drafters.TreeLookupRun, "propose", recorded)
    out = specsampler.generate(target, PromptLookupDrafter(max_ngram=2, min_ngram=2), ids, mask, max_new_tokens=4,
                               num_draft_tokens=2, prompt_lookup_num_candidates=2, eos_token_id=[], pad_token_id=0)
    _check_rows(target, out, ids, mask, 4)
    assert widths[0] == 0


def test_one_lookup_candidate_is_the_chain(llama_pair):
    """prompt_lookup_num_candidates=1 runs today's chain step: the same tokens and the same counts."""
    target, _ = llama_pair
    ids, mask = _ragged([9, 4, 1, 7], seed=2, repeat=True)
    kw = dict(max_new_tokens=12, prompt_lookup_num_tokens=3, eos_token_id=[], pad_token_id=0, do_sample=True, seed=3)
    one = specsampler.generate(target, input_ids=ids, attention_mask=mask, prompt_lookup_num_candidates=1, **kw)
    plain = specsampler.generate(target, input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(one.sequences, plain.sequences) and one.stats == plain.stats


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_greedy_tree_with_processors_matches_target_generate(llama_pair, drafter):
    """Logits processors at every node with its own path (repetition penalty, no-repeat n-grams, min_new_tokens
    with an EOS): rows equal target.generate with the same options."""
    target, draft = llama_pair
    ids, mask = _ragged([9, 4, 1, 7], seed=5, repeat=drafter == "lookup")
    opts = dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=4)
    tree = dict(draft_tree=(2, 2, 1)) if drafter == "model" else dict(prompt_lookup_num_candidates=3,
                                                                      num_draft_tokens=3)
    out = specsampler.generate(target, draft if drafter == "model" else PromptLookupDrafter(), ids, mask,
                               max_new_tokens=14, eos_token_id=[5], pad_token_id=0, **tree, **opts)
    for b in range(4):
        row = ids[b, mask[b].bool()][None]
        ref = target.generate(row, attention_mask=torch.ones_like(row), do_sample=False, max_new_tokens=14,
                              eos_token_id=[5], pad_token_id=0, **opts)[0, row.shape[1]:].tolist()
        got = out.sequences[b, ids.shape[1]:].tolist()
        assert got[:len(ref)] == ref, f"row {b}"


def test_tree_eos_budget_streamer_and_scores(llama_pair):
    """EOS ends a row inside an accepted path, the budget cuts a path, the streamer gets the row's tokens; output
    scores equal the chain's (the same kept positions)."""
    from transformers.generation.streamers import BaseStreamer

    class Recorder(BaseStreamer):
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    target, draft = llama_pair
    ids, mask = _ragged([5], seed=1)
    ref = specsampler.generate(target, draft, ids, mask, max_new_tokens=11, eos_token_id=[], pad_token_id=0)
    eos = ref.sequences[0, 5 + 6].item()  # the 7th new token: an EOS, wherever a path holds it
    first = ref.sequences[0, 5:].tolist().index(eos)
    streamer = Recorder()
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=11, eos_token_id=[eos], pad_token_id=0,
                               draft_tree=(2, 2, 2), streamer=streamer, output_scores=True)
    assert out.sequences[0, 5:].tolist() == ref.sequences[0, 5:5 + first + 1].tolist()
    assert streamer.ended and sum(streamer.parts[1:], []) == out.sequences[0, 5:].tolist()
    chain = specsampler.generate(target, draft, ids, mask, max_new_tokens=11, eos_token_id=[eos], pad_token_id=0,
                                 output_scores=True)
    assert len(out.scores) == len(chain.scores) == first + 1
    for a, b in zip(out.scores, chain.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    budget = specsampler.generate(target, draft, ids, mask, max_new_tokens=3, eos_token_id=[], pad_token_id=0,
                                  draft_tree=(3, 2, 1, 1))
    assert budget.sequences[0, 5:].tolist() == ref.sequences[0, 5:8].tolist()


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_rows_leave_the_batch_mid_run(llama_pair, drafter):
    """An EOS that ends one row early (the others go on: rows evicted with a deferred leaf in the draft's cache):
    the same sequences as the chain, which equals target.generate (tests/test_generate.py)."""
    target, draft = llama_pair
    ids, mask = _ragged([9, 4, 1, 7], seed=6, repeat=drafter == "lookup")
    drafter = draft if drafter == "model" else PromptLookupDrafter()
    kw = dict(max_new_tokens=14, pad_token_id=0)
    free = specsampler.generate(target, drafter, ids, mask, eos_token_id=[], **kw)
    eos = free.sequences[1, ids.shape[1] + 2].item()
    chain = specsampler.generate(target, drafter, ids, mask, eos_token_id=[eos], num_draft_tokens=3, **kw)
    tree = dict(draft_tree=(2, 2, 1)) if drafter is draft else dict(prompt_lookup_num_candidates=3,
                                                                    num_draft_tokens=3)
    out = specsampler.generate(target, drafter, ids, mask, eos_token_id=[eos], **tree, **kw)
    assert torch.equal(out.sequences, chain.sequences)
    assert (out.sequences[:, ids.shape[1]:] == 0).any(dim=1).sum() >= 1  # some row ended early


# --------------------------------------------------------------------------------------------- distribution
@pytest.mark.parametrize("drafter, warp_kw", [
    ("top", dict(temperature=0.8, top_k=6)),
    ("chain", dict(temperature=0.8, top_k=6)),
    ("iid", dict(temperature=0.8, top_k=6)),
    ("iid", dict(temperature=1.2, top_p=0.9)),
    ("lookup", dict(temperature=1.3, top_p=0.9)),
])
def test_sampled_tree_follows_target_distribution(drafter, warp_kw):
    """3000 copies of one prompt, max_new_tokens=3 (the first step verifies a tree of depth 2; with "chain" a tree of
    one top candidate per node, verified as a chain): the first two new tokens follow the warped target's joint
    (chi-square, p > 1e-4); power: the draft's own joint is told apart."""
    vocab, n = 8, 3000
    target = _peaked(tiny_config("llama", vocab, 1, 16), 0, 8.0)
    draft = perturbed(target, 0.05)
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=0)
    if drafter == "lookup":
        tree = dict(draft=PromptLookupDrafter(max_ngram=2), num_draft_tokens=2, prompt_lookup_num_candidates=3)
    elif drafter == "chain":  # top candidates, one per node: every step a chain (token verification)
        tree = dict(draft=draft, draft_tree=(1, 1))
    else:
        tree = dict(draft=draft, draft_tree=(2, 2), draft_tree_sampling=drafter)
    out = specsampler.generate(target, input_ids=prompt.repeat(n, 1), max_new_tokens=3, do_sample=True, seed=1234,
                               eos_token_id=[], **tree, **warp_kw)
    new = out.sequences[:, prompt.shape[1]:prompt.shape[1] + 2]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    exact = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
    assert counts[exact == 0].sum() == 0
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    if drafter != "lookup":
        assert chi2_pvalue_pooled(counts, _exact_two_tokens(draft, prompt, lambda x: hf_warp(x, **warp_kw))
                                  .flatten()) < 1e-4
    assert 0 < out.stats.accepted < out.stats.drafted


PRUNINGS = [("top", dict(draft_tree_min_prob=0.1)), ("iid", dict(draft_tree_min_prob=0.2)),
            ("top", dict(draft_tree_budget=3))]


@pytest.mark.parametrize("candidates, prune", PRUNINGS, ids=["top-p", "iid-p", "top-budget"])
def test_sampled_pruned_tree_follows_target_distribution(candidates, prune, monkeypatch):
    """draft_tree_min_prob or draft_tree_budget with (2, 2) trees, sampled: 3000 copies of one prompt, the first two
    new tokens follow the warped target's joint (chi-square, p > 1e-4); power: the draft's own joint is told apart.
    The first step's trees are pruned: "top" (the same tree in every row) keeps the root's 2 candidates and the
    chain's next one (3 of 6 nodes), "iid" prunes some rows and not others."""
    from specsampler.generation import tree_drafters

    vocab, n, warp_kw = 8, 3000, dict(temperature=0.8, top_k=6)
    target = _peaked(tiny_config("llama", vocab, 1, 16), 0, 8.0)
    draft = perturbed(target, 0.05)
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=0)
    counts_seen, propose = [], tree_drafters.TreeDraftModel.propose

    def recorded(self, *args):
        proposal = propose(self, *args)
        counts_seen.append(proposal.counts)
        return proposal

    monkeypatch.setattr(tree_drafters.TreeDraftModel, "propose", recorded)
    out = specsampler.generate(target, draft, prompt.repeat(n, 1), max_new_tokens=3, do_sample=True, seed=4321,
                               eos_token_id=[], draft_tree=(2, 2), draft_tree_sampling=candidates,
                               **prune, **warp_kw)
    new = out.sequences[:, prompt.shape[1]:prompt.shape[1] + 2]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    exact = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
    assert counts[exact == 0].sum() == 0
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    assert chi2_pvalue_pooled(counts, _exact_two_tokens(draft, prompt, lambda x: hf_warp(x, **warp_kw))
                              .flatten()) < 1e-4
    first = counts_seen[0]
    assert set(first) == {3} if candidates == "top" else max(first) == 6 and min(first) < 6
    assert 0 < out.stats.accepted < out.stats.drafted


@torch.no_grad()
def _exact_two_tokens_penalised(target, prompt, penalty, warp):
    """P(x1, x2 | prompt) [v * v] under the target with transformers' repetition penalty (each position with its
    own prefix), then warped."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rep, v = RepetitionPenaltyLogitsProcessor(penalty), target.config.vocab_size
    p1 = warp(rep(prompt, target(prompt).logits[:, -1].float())).softmax(-1)[0]
    both = torch.cat([prompt.repeat(v, 1), torch.arange(v)[:, None]], dim=1)
    p2 = warp(rep(both, target(both).logits[:, -1].float())).softmax(-1)
    return (p1[:, None] * p2).flatten()


@pytest.mark.parametrize("candidates", ["top", "iid"])
def test_sampled_tree_with_a_processor_follows_the_processed_target(candidates):
    """A repetition penalty at every node with its own path, sampled: the first two tokens follow the penalised,
    warped target (chi-square p > 1e-4); power: the unpenalised target's joint is told apart."""
    vocab, n, warp_kw = 8, 3000, dict(temperature=0.9, top_k=6)
    target = _peaked(tiny_config("llama", vocab, 1, 16), 0, 8.0)
    prompt = torch.tensor([[1, 2, 5, 3]])
    out = specsampler.generate(target, perturbed(target, 0.05), prompt.repeat(n, 1), max_new_tokens=3,
                               do_sample=True, seed=99, eos_token_id=[], draft_tree=(2, 2),
                               draft_tree_sampling=candidates, repetition_penalty=3.0, **warp_kw)
    new = out.sequences[:, 4:6]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    exact = _exact_two_tokens_penalised(target, prompt, 3.0, lambda x: hf_warp(x, **warp_kw))
    assert counts[exact == 0].sum() == 0
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    plain = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
    assert chi2_pvalue_pooled(counts, plain) < 1e-4


# ------------------------------------------------------------------------------------------- entry points
def test_patched_generate_and_speculative_generate_take_the_keywords(llama_pair):
    target, draft = llama_pair
    ids, mask = _ragged([6, 3, 5], seed=4, repeat=True)
    kw = dict(attention_mask=mask, max_new_tokens=8, pad_token_id=0, eos_token_id=None, do_sample=False)
    plain = target.generate(ids, **kw)
    with specsampler.patched_transformers():
        tree = target.generate(ids, assistant_model=draft, draft_tree=(2, 2), **kw)
        lookup = target.generate(ids, prompt_lookup_num_tokens=3, prompt_lookup_num_candidates=2, **kw)
        sampled = [target.generate(ids, assistant_model=draft, draft_tree=[2, 1], draft_tree_sampling="iid",
                                   **(kw | dict(do_sample=True, top_k=10)), seed=4) for _ in range(2)]
        pruned = target.generate(ids, assistant_model=draft, draft_tree=(3, 2), draft_tree_min_prob=0.05, **kw)
    assert torch.equal(tree, plain) and torch.equal(lookup, plain) and torch.equal(pruned, plain)
    assert torch.equal(sampled[0], sampled[1])
    out = target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft,
                          draft_tree=(3, 1), **kw)
    assert torch.equal(out, plain)
    out = target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft,
                          draft_tree=(3, 1), draft_tree_min_prob=0.05, **kw)
    assert torch.equal(out, plain)


REFUSALS = [
    (dict(draft_tree=(2, 2), num_draft_tokens=3), ValueError, "draft_tree=.*replaces num_draft_tokens"),
    (dict(draft_tree=(2, 2), num_assistant_tokens=3), ValueError, "replaces num_assistant_tokens"),
    (dict(draft_tree=()), ValueError, "draft_tree must hold at least one depth"),
    (dict(draft_tree=(2, 0)), ValueError, r"draft_tree\[1\] must be an integer >= 1"),
    (dict(draft_tree=(2, 1.5)), TypeError, r"draft_tree\[1\] must be an integer"),
    (dict(draft_tree=3), TypeError, "draft_tree must be a tuple or list"),
    (dict(draft_tree=(2,), draft_tree_sampling="all"), ValueError,
     "draft_tree_sampling must be 'top', 'iid' or 'without_replacement'"),
    (dict(draft_tree_sampling="iid"), ValueError, "draft_tree_sampling='iid' needs draft_tree"),
    (dict(draft_tree=(2,), draft_tree_min_prob=1.5), ValueError, r"draft_tree_min_prob must be a number in \[0, 1\]"),
    (dict(draft_tree=(2,), draft_tree_min_prob="high"), TypeError, "draft_tree_min_prob must be a number"),
    (dict(draft_tree_min_prob=0.1), ValueError, "draft_tree_min_prob=0.1 prunes a draft_tree: it needs draft_tree="),
    (dict(draft_tree_budget=4), ValueError, "draft_tree_budget=4 caps a draft_tree: it needs draft_tree="),
    (dict(draft_tree=(2, 2, 1), draft_tree_budget=2), ValueError, "draft_tree_budget=2 is below the tree's depth 3"),
    (dict(draft_tree=(2, 2), draft_tree_budget=0), ValueError, "draft_tree_budget must be an integer >= 1"),
    (dict(draft_tree=(2, 2), draft_tree_sampling="iid", draft_tree_budget=3), ValueError,
     "draft_tree_budget=3 caps a tree of top candidates: not with draft_tree_sampling='iid'"),
    (dict(draft_tree=(2,), verify_method="block"), ValueError, "verify_method='block' does not apply with draft_tree"),
    (dict(draft_tree=(2,), num_assistant_tokens_schedule="heuristic"), ValueError,
     "num_assistant_tokens_schedule='heuristic' does not apply with draft_tree: a draft tree has a fixed shape"),
    (dict(prompt_lookup_num_candidates=2), ValueError, "prompt_lookup_num_candidates=2 needs prompt lookup"),
    (dict(draft=None, prompt_lookup_num_tokens=3, prompt_lookup_num_candidates=0), ValueError,
     "prompt_lookup_num_candidates must be an integer >= 1"),
    (dict(draft=None, prompt_lookup_num_tokens=3, draft_tree=(2,)), ValueError, "draft_tree is grown by a draft"),
    (dict(draft=None, prompt_lookup_num_tokens=3, prompt_lookup_num_candidates=2, verify_method="block"), ValueError,
     "verify_method='block' does not apply with prompt_lookup_num_candidates=2"),
]


@pytest.mark.parametrize("kw, error, match", REFUSALS)
def test_refusals_by_name(llama_pair, kw, error, match):
    target, draft = llama_pair
    kw = {"draft": draft} | kw
    with pytest.raises(error, match=match):
        specsampler.generate(target, input_ids=torch.tensor([[3, 4, 5]]), max_new_tokens=4, **kw)


def test_model_without_4d_masks_is_refused_through_generate(llama_pair):
    _, draft = llama_pair
    target = tiny_model(tiny_config("gpt2", V, 1, 16), 0)
    target.config._attn_implementation = "flash_attention_2"  # (the name is what is checked: no kernel runs)
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel runs attention with 'flash_attention_2'"):
        specsampler.generate(target, draft, torch.tensor([[3, 4, 5]]), max_new_tokens=4, draft_tree=(2,))
