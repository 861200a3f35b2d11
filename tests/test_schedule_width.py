"""The "cost" schedule's width for prompt-lookup tries (``prompt_lookup_num_candidates`` = m): each step verifies all
m candidates (wide) or the first continuation only (a chain), from measured times and acceptance. Structural tests
with measurements set by hand (the other candidates kept where they pay, dropped where they do not or add nothing,
wide probes after chain steps), what a wide step measures, and greedy rows equal to target.generate with both widths
used (CPU tiny models)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_generate import _check_rows  # noqa: E402
from util import scripted_costs, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler import PromptLookupDrafter  # noqa: E402
from specsampler.generation.loop import Step  # noqa: E402
from specsampler.generation.schedules import Costs, CostSchedule, CostTuning  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")


class _Trie:
    """Stands in for a TreeLookupRun: m candidates, the width the schedule sets, the last first continuations."""

    def __init__(self, m: int, firsts: list[list[int]]):
        self.m, self.width, self.firsts = m, m, firsts


def _schedule(extra: float | None, gain: list[float], probe_every: int = 8) -> tuple[CostSchedule, _Trie]:
    """A schedule over B' = 2 rows whose target forward costs 1 s whatever its size, drafting and the rest free;
    `extra` seconds per level of a wide step beyond a chain's, `gain` [tokens, levels] the other candidates added."""
    costs = Costs(CostTuning(smoothing=1.0, probe_every=probe_every))
    costs.target, costs.draft, costs.rest = {2: 1.0, 8: 1.0}, {2: 0.0}, {2: 0.0}
    costs.gain = gain
    if extra is not None:
        costs.extra = {2: extra}
    schedule = CostSchedule(costs, k0=3, watch=None, max_k=6)
    trie = _Trie(3, [[], []])
    schedule.attach(trie)
    return schedule, trie


def test_wide_step_measures_what_the_other_candidates_add():
    """A wide step: row 0 accepted 3 through another candidate where its first continuation [1, 2, 3] would have
    had 2, row 1 its first continuation whole: the chain's acceptance counts 2 and 3, the gain 1 token over 6
    levels, and the step's 1.5 s against a chain step of depth 3 (1 s) leaves 0.5 s / 3 levels."""
    schedule, trie = _schedule(None, [0.0, 0.0])
    trie.firsts = [[1, 2, 3], [4, 5, 6]]
    schedule.wide = True
    accepted = [[1, 2, 9, 7], [4, 5, 6, 8]]
    step = Step([7, 3], 8, torch.tensor([3, 3]), accepted, torch.zeros(2), depths=[3, 3])
    schedule.observe(step, spans=[0.0, 1.5, 0.0])
    assert schedule.costs.verified[1:4] == [2.0, 2.0, 2.0] and schedule.costs.rejected[1:4] == [0.0, 0.0, 1.0]
    assert schedule.costs.gain == [1.0, 6.0]
    assert schedule.costs.extra == {2: pytest.approx(0.5 / 3)}
    assert schedule.costs.target == {2: 1.0, 8: 1.0}  # (a branched step's forward is not a chain's)


@pytest.mark.parametrize("extra, gain, wide", [
    (0.0, [1.0, 6.0], True),  # extra nodes free, 1/6 token per level: they pay
    (1.0, [1.0, 6.0], False),  # each level's extra nodes cost a forward's time: they do not
    (0.0, [0.0, 6.0], False),  # free but never accepted: a chain (a tie goes to the chain)
])
def test_cost_schedule_keeps_candidates_only_where_they_pay(extra, gain, wide):
    """The width chosen from the measurements: all m candidates where their expected tokens per second beat the
    chain's, the first continuation only otherwise; the trie's width follows."""
    schedule, trie = _schedule(extra, gain)
    k = schedule.lengths([10, 10])
    assert k[0] > 0 and schedule.wide is wide and trie.width == (3 if wide else 1)


def test_cost_schedule_probes_wide_after_chain_steps():
    """Where the other candidates do not pay, a wide step every `probe_every` chain steps (their gain can change),
    the wait doubling after each probe that changes nothing; before any wide step was measured, a wide step."""
    schedule, trie = _schedule(1.0, [1.0, 6.0], probe_every=2)
    widths = []
    for _ in range(10):
        schedule.lengths([10, 10])
        widths.append(trie.width)
    assert widths == [1, 3, 1, 1, 1, 3, 1, 1, 1, 1]
    fresh, trie = _schedule(1.0, [0.0, 0.0])
    fresh.lengths([10, 10])
    assert trie.width == 3


def test_greedy_lookup_tries_with_cost_width_match_target_generate(monkeypatch):
    """Batch 4, left padded, prompt_lookup_num_candidates=3 under the "cost" schedule (scripted times): steps of both
    widths happen, a narrow step proposes chains only, a wide one branches; rows equal target.generate."""
    from specsampler.generation import tree_drafters

    target = tiny_model(tiny_config("llama", 96, 2, 32), 0)
    ids = torch.tensor([[0, 0, 5, 1, 5, 2, 5, 3, 5], [5, 9, 9, 5, 8, 8, 5, 7, 5], [0, 0, 0, 0, 0, 4, 5, 4, 6],
                        [0, 0, 0, 2, 3, 2, 4, 2, 5]])  # last tokens followed by several others: tries branch
    mask = (torch.arange(9) >= torch.tensor([2, 0, 5, 3])[:, None]).long()
    seen, propose = [], tree_drafters.TreeLookupRun.propose

    def recorded(self, last, limits):
        proposal = propose(self, last, limits)
        seen.append((self.width, proposal))
        return proposal

    monkeypatch.setattr(tree_drafters.TreeLookupRun, "propose", recorded)
    with scripted_costs():
        out = specsampler.generate(target, PromptLookupDrafter(max_ngram=1), ids, mask, max_new_tokens=16,
                                   num_draft_tokens=3, prompt_lookup_num_candidates=3,
                                   num_assistant_tokens_schedule="cost", eos_token_id=[], pad_token_id=0)
    _check_rows(target, out, ids, mask, 16)
    assert {w for w, _ in seen} == {1, 3}
    assert all(p.counts == p.depths for w, p in seen if w == 1)
    assert any(c > d for w, p in seen if w == 3 for c, d in zip(p.counts, p.depths, strict=True))


def test_sampled_lookup_tries_with_cost_width_follow_target_distribution(monkeypatch):
    """3000 copies of one prompt, sampled (T = 1.3, top-p 0.9), prompt_lookup_num_candidates=3 under the "cost"
    schedule (scripted times): the first step is wide (nothing measured), the next ones chains until a target line is
    known; the first two new tokens follow the warped target's joint (chi-square, p > 1e-4)."""
    from test_generate import _exact_two_tokens, _peaked, hf_warp
    from util import chi2_pvalue_pooled

    from specsampler.generation import tree_drafters

    vocab, n, warp_kw = 8, 3000, dict(temperature=1.3, top_p=0.9)
    target = _peaked(tiny_config("llama", vocab, 1, 16), 0, 8.0)
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=0)
    widths, propose = [], tree_drafters.TreeLookupRun.propose

    def recorded(self, last, limits):
        widths.append(self.width)
        return propose(self, last, limits)

    monkeypatch.setattr(tree_drafters.TreeLookupRun, "propose", recorded)
    with scripted_costs():
        out = specsampler.generate(target, PromptLookupDrafter(max_ngram=2), input_ids=prompt.repeat(n, 1),
                                   max_new_tokens=3, do_sample=True, seed=1234, eos_token_id=[], num_draft_tokens=2,
                                   prompt_lookup_num_candidates=3, num_assistant_tokens_schedule="cost", **warp_kw)
    assert widths[:2] == [3, 1]
    new = out.sequences[:, prompt.shape[1]:prompt.shape[1] + 2]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    exact = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
    assert counts[exact == 0].sum() == 0
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    assert 0 < out.stats.accepted < out.stats.drafted
