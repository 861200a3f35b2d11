"""specsampler.generate with tiny models built from configs (CPU): greedy equality with target.generate row by row,
the sampled distribution against the target's exact one (chi-square), EOS, max_new_tokens, K, prompt lookup."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from util import (  # noqa: E402
    catches_up,
    char_tokenizer,
    chi2_pvalue_pooled,
    perturbed,
    record_draft_lengths,
    tiny_config,
    tiny_model,
)

import specsampler  # noqa: E402
from specsampler import PromptLookupDrafter  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 96


def hf_warp(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """The reference: transformers' own warpers, in the order its generate applies them (temperature, top-k, top-p,
    min-p), on [..., V] float32 scores; masked scores become -inf."""
    from transformers.generation import logits_process as lp

    shape = logits.shape
    x = logits.reshape(-1, shape[-1])
    procs = [lp.TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    procs += [lp.TopKLogitsWarper(top_k)] if top_k else []
    procs += [lp.TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1.0 else []
    procs += [lp.MinPLogitsWarper(min_p)] if min_p else []
    for proc in procs:
        x = proc(None, x)
    return x.reshape(shape)


def _config(family, vocab=V, layers=2, hidden=32):
    return tiny_config(family, vocab, layers, hidden)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def pair(request):
    target = tiny_model(_config(request.param), 0)
    return target, perturbed(target, 0.005)


@pytest.fixture(scope="module")
def llama_pair():
    target = tiny_model(_config("llama"), 0)
    return target, perturbed(target, 0.005)


def _ragged(lengths, seed=0, vocab=V, repeat=False):
    """Left-padded prompts of the given lengths (pad id 0); `repeat`: each row repeats a short pattern."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        row = torch.randint(3, vocab, (n,), generator=g)
        if repeat:
            row = torch.randint(3, vocab, (3,), generator=g).repeat(n // 3 + 1)[:n]
        ids[b, width - n:], mask[b, width - n:] = row, 1
    return ids, mask


def _reference(target, ids, mask, b, **kw):
    """target.generate on row b alone, without padding: its new tokens."""
    row = ids[b, mask[b].bool()][None]
    out = target.generate(row, attention_mask=torch.ones_like(row), do_sample=False, **kw)
    return out[0, row.shape[1]:].tolist()


def _check_rows(target, out, ids, mask, max_new_tokens, eos=None, pad=0):
    width = ids.shape[1]
    for b in range(ids.shape[0]):
        ref = _reference(target, ids, mask, b, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        got = out.sequences[b, width:].tolist()
        assert got[: len(ref)] == ref, f"row {b}"
        assert all(t == pad for t in got[len(ref):]), f"row {b} not padded"
    assert torch.equal(out.sequences[:, :width], ids)


# ---------------------------------------------------------------------------------------------------- greedy
def test_greedy_matches_target_generate_ragged(pair):
    target, draft = pair
    ids, mask = _ragged([9, 4, 1, 7])
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, num_draft_tokens=3, eos_token_id=[],
                               pad_token_id=0)
    _check_rows(target, out, ids, mask, 16)
    assert out.sequences.shape == (4, 9 + 16)
    s = out.stats
    assert s.new_tokens == 4 * 16 and 0 < s.accepted < s.drafted  # ragged acceptance was exercised
    assert s.target_forwards < 16 and s.tokens_per_forward > 1


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_greedy_block_verification_matches_target_generate(pair, drafter):
    """verify_method="block" leaves greedy rows as they are: each equals target.generate on that row alone (a
    ragged, left-padded batch; a draft model and prompt lookup's one-hot drafts)."""
    target, draft = pair
    ids, mask = _ragged([9, 4, 1, 7], seed=3, repeat=drafter == "lookup")
    drafter = draft if drafter == "model" else PromptLookupDrafter()
    out = specsampler.generate(target, drafter, ids, mask, max_new_tokens=14, num_draft_tokens=3, eos_token_id=[],
                               pad_token_id=0, verify_method="block")
    _check_rows(target, out, ids, mask, 14)
    assert out.stats.drafted > 0


def test_greedy_heuristic_schedule_matches_target_generate(pair):
    """Per-row adaptive draft lengths (transformers' "heuristic" schedule) keep greedy output equal to
    target.generate row by row, and adapt: fewer drafts per step than a constant 6 where drafts are rejected."""
    target, draft = pair
    ids, mask = _ragged([9, 4, 1, 7])
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, num_draft_tokens=6, eos_token_id=[],
                               pad_token_id=0, num_assistant_tokens_schedule="heuristic")
    _check_rows(target, out, ids, mask, 16)
    fixed = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, num_draft_tokens=6, eos_token_id=[],
                                 pad_token_id=0)
    assert torch.equal(out.sequences, fixed.sequences)
    assert out.stats.drafted / out.stats.row_steps != fixed.stats.drafted / fixed.stats.row_steps
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule"):
        specsampler.generate(target, draft, ids, mask, max_new_tokens=2, num_assistant_tokens_schedule="dynamic")


def test_greedy_cost_schedule_matches_target_generate(pair, monkeypatch, scripted_cost_schedule):
    """The "cost" schedule (K' per step from measured times and acceptance) keeps greedy output equal to
    target.generate row by row: with this machine's own times, and with scripted ones that make K' vary."""
    target, draft = pair
    ids, mask = _ragged([9, 4, 1, 7])
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, num_draft_tokens=3, eos_token_id=[],
                               pad_token_id=0, num_assistant_tokens_schedule="cost")
    _check_rows(target, out, ids, mask, 16)
    scripted_cost_schedule()
    seen = record_draft_lengths(monkeypatch)
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=16, num_draft_tokens=3, eos_token_id=[],
                               pad_token_id=0, num_assistant_tokens_schedule="cost")
    _check_rows(target, out, ids, mask, 16)
    assert seen[0] == 3 and len(set(seen)) >= 3 and catches_up(seen), seen  # K until measured, then long, none


def _step_of(counts, accepted):
    from specsampler.generation.loop import Step

    width = max(counts) + 1
    return Step(counts, width, torch.tensor([len(t) - 1 for t in accepted]), accepted, torch.zeros(len(counts)))


def test_cost_schedule_choice():
    """The choice itself: K until a target line is known; max K where forwards cost the same whatever their size
    and drafts are cheap and accepted; K' = 0 (plain decoding) where each token row fed costs as much as a forward's
    fixed part and drafts are rejected half the time, with a draft again every PROBE_EVERY steps; K' never past what
    the rows can use; what carries over to the next call."""
    from specsampler.generation.schedules import Costs, CostSchedule, CostTuning

    PROBE_EVERY = CostTuning().probe_every

    def schedule(acc, forward, draft, k=4):
        """Two rows; the first (prefill) step, then steps of K' = 2 and 4 with `forward(rows fed)` seconds."""
        s = CostSchedule(Costs(), k0=k, watch=None, max_k=2 * k)
        assert s.choose([100, 100]) == k  # nothing measured yet
        s.observe(_step_of([k, k], acc(k)), spans=[1.0, forward(40 + 2 * (k + 1)), 0.0], prefill_rows=40)
        assert s.choose([100, 100]) == k  # the first forward also fed the prompt: no draft time yet
        for kk in (2, 4):
            s.observe(_step_of([kk, kk], acc(kk)), spans=[draft * kk, forward(2 * (kk + 1)), 0.01])
        return s

    def all_accepted(k):
        return [[7] * (k + 1)] * 2

    def half(k):  # one row rejects its first draft, the other accepts all
        return [[7], [7] * (k + 1)]

    flat = schedule(all_accepted, lambda rows: 1.0, draft=0.01)
    assert flat.costs.target_line() == pytest.approx((1.0, 0.0))
    assert flat.choose([100, 100]) == 8
    assert flat.choose([3, 2]) == 3  # drafts past every row's limit cost without gaining
    steep = schedule(half, lambda rows: 0.1 + 0.1 * rows, draft=0.01)
    assert steep.costs.target_line() == pytest.approx((0.1, 0.1))
    assert steep.choose([100, 100]) == 0  # a step of plain decoding
    counts = list(steep.costs.verified), list(steep.costs.rejected)
    for _ in range(PROBE_EVERY - 1):
        steep.observe(_step_of([0, 0], [[7], [7]]), spans=[0.0, 0.3, 0.01])
        assert steep.choose([100, 100]) == 0  # no drafts: nothing learnt about acceptance
        assert (steep.costs.verified, steep.costs.rejected) == counts
    steep.observe(_step_of([0, 0], [[7], [7]]), spans=[0.0, 0.3, 0.01])
    assert steep.choose([100, 100]) == 1  # a probe (one draft per row) after PROBE_EVERY steps without
    steep.observe(_step_of([1, 1], [[7], [7, 7]]), spans=[0.01, 0.5, 0.01])
    assert steep.choose([100, 100]) == 0
    choices = []  # the probe changed nothing: the next one waits twice as long
    for _ in range(2 * PROBE_EVERY):
        steep.observe(_step_of([0, 0], [[7], [7]]), spans=[0.0, 0.3, 0.01])
        choices.append(steep.choose([100, 100]))
    assert choices == [0] * (2 * PROBE_EVERY - 1) + [1]
    # times and acceptance carry over: a later call with the same pair chooses from its first step
    assert CostSchedule(steep.costs, k0=4, watch=None, max_k=8).choose([100, 100]) == 0
    assert CostSchedule(flat.costs, k0=4, watch=None, max_k=8).choose([100, 100, 100]) == 8
    # a fresh pair's acceptance starts at 1/2 per draft: a sixth draft adds 1/64 of a token for 1% more time
    fresh = Costs()
    fresh.target, fresh.draft, fresh.rest = dict(flat.costs.target), dict(flat.costs.draft), dict(flat.costs.rest)
    assert CostSchedule(fresh, k0=4, watch=None, max_k=8).choose([100, 100, 100]) == 5
    # draft times at another batch size: measured within a factor 2 of B' (eight rows: K until measured there)
    assert CostSchedule(flat.costs, k0=4, watch=None, max_k=8).choose([100] * 8) == 4
    # a size measured is taken as measured, not from the line (here a 5-token forward cheaper than 1-3 token ones)
    odd = Costs()
    odd.target, odd.draft, odd.rest = {2: 1.0, 4: 2.0, 6: 3.0, 10: 1.2}, {2: 0.01}, {2: 0.0}
    assert CostSchedule(odd, k0=1, watch=None, max_k=8).choose([100, 100]) == 4


def test_cost_schedule_acceptance_by_position():
    """S(i), the chance that drafts 1..i are all accepted, position by position (Kaplan-Meier over rows): runs of
    0, 1, 3 and 3 accepted drafts of 3 give rejection rates 1/4, 1/3, 0/2 at positions 1-3, each shrunk towards the
    rate over all positions (2.5 / 10) with the weight of one draft; position 4, never drafted, takes that rate."""
    from specsampler.generation.schedules import Costs, CostTuning

    costs = Costs()
    costs.count_acceptance([3, 3, 3, 3], [[7], [7, 7], [7] * 4, [7] * 4])
    assert costs.verified == [0.0, 4.0, 3.0, 2.0] and costs.rejected == [0.0, 1.0, 1.0, 0.0]
    pooled = 2.5 / 10
    hazards = [(1 + pooled) / 5, (1 + pooled) / 4, pooled / 3, pooled]
    expected = [1.0]
    for h in hazards:
        expected.append(expected[-1] * (1 - h))
    assert costs.survival(4) == pytest.approx(expected)
    costs.count_acceptance([1], [[7, 7]])  # older steps count acceptance_memory times less per step
    m = CostTuning().acceptance_memory
    assert costs.verified == pytest.approx([0.0, 4 * m + 1, 3 * m, 2 * m])


def test_cost_schedule_times_belong_to_a_model_pair():
    """One Costs per (target, drafter) pair, the same object on the next call (prompt-lookup drafters: per
    setting), gone with the models; reset() forgets them all; scoped(key) blocks keep theirs apart, per key."""
    import gc

    from specsampler.generation.schedules import CostRegistry

    registry = CostRegistry()

    class Model:
        pass

    target, draft, other = Model(), Model(), Model()
    costs = registry.costs_of(target, draft)
    assert registry.costs_of(target, draft) is costs
    assert registry.costs_of(target, other) is not costs and registry.costs_of(other, draft) is not costs
    lookup = registry.costs_of(draft, PromptLookupDrafter(max_ngram=2))
    assert registry.costs_of(draft, PromptLookupDrafter(max_ngram=2)) is lookup  # one per setting, not per object
    assert registry.costs_of(draft, PromptLookupDrafter(max_ngram=3)) is not lookup
    n = len(registry._pairs)
    del target, other
    gc.collect()
    assert len(registry._pairs) == n - 2
    registry.reset()
    assert registry.costs_of(draft, PromptLookupDrafter(max_ngram=2)) is not lookup and len(registry._pairs) == 1
    outside = registry.costs_of(draft, PromptLookupDrafter(max_ngram=2))
    with registry.scoped("a"):  # a scope keeps its own, from none, across its blocks
        first = registry.costs_of(draft, PromptLookupDrafter(max_ngram=2))
        assert first is not outside
    with registry.scoped("b"):
        assert registry.costs_of(draft, PromptLookupDrafter(max_ngram=2)) not in (first, outside)
    with registry.scoped("a"):
        assert registry.costs_of(draft, PromptLookupDrafter(max_ngram=2)) is first
    assert registry.costs_of(draft, PromptLookupDrafter(max_ngram=2)) is outside


@torch.no_grad()
def _exact_pair_after(target, prompt, skip):
    """P(x_{skip+1}, x_{skip+2} | prompt) [v, v] under the target, by enumeration of x1..x_{skip+2} (product of
    conditionals)."""
    v = target.config.vocab_size
    joint, seqs = torch.ones(1), prompt
    for _ in range(skip + 2):
        p = target(seqs).logits[:, -1].float().softmax(-1)  # [v^i, v]
        joint = (joint[:, None] * p).flatten()
        seqs = torch.cat([seqs.repeat_interleave(v, dim=0), torch.arange(v).repeat(seqs.shape[0])[:, None]], dim=1)
    return joint.reshape(-1, v, v).sum(0)


def test_sampled_cost_schedule_follows_target_distribution(monkeypatch, scripted_cost_schedule):
    """Sampled tokens under the "cost" schedule, its K' varied by scripted times: the joint of the fifth and sixth
    new tokens (made in the steps after the first, where K' is the schedule's: drafts, none, drafts after a catch-up)
    against the exact target marginal (chi-square p > 1e-4; the draft's own marginal rejected at p < 1e-4)."""
    vocab, n = 8, 3000
    target = _peaked(_config("llama", vocab=vocab, layers=1, hidden=16), 0, 8.0)
    draft = perturbed(target, 0.05)
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=0)
    scripted_cost_schedule()
    seen = record_draft_lengths(monkeypatch)
    out = specsampler.generate(target, draft, prompt.repeat(n, 1), max_new_tokens=8, num_draft_tokens=2,
                               do_sample=True, seed=1234, eos_token_id=[], num_assistant_tokens_schedule="cost")
    assert catches_up(seen), seen  # the schedule varied K' in the steps checked
    new = out.sequences[:, prompt.shape[1] + 4:prompt.shape[1] + 6]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    assert chi2_pvalue_pooled(counts, _exact_pair_after(target, prompt, 4).flatten()) > 1e-4
    assert chi2_pvalue_pooled(counts, _exact_pair_after(draft, prompt, 4).flatten()) < 1e-4
    assert 0 < out.stats.accepted < out.stats.drafted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events")
def test_stopwatch_times_a_cuda_stream():
    """On a GPU the marks are CUDA events, read after the work they close: spans in order, positive."""
    from specsampler.generation.schedules import Stopwatch

    watch = Stopwatch(torch.device("cuda"))
    x = torch.randn(2048, 2048, device="cuda")
    float((x @ x).sum())  # (cuBLAS set up, the stream idle, before the first mark)
    watch.mark()
    y = x @ x
    watch.mark()
    z = y @ y @ y
    watch.mark()
    float(z.sum())
    spans = watch.spans()
    assert len(spans) == 2 and all(s > 0 for s in spans) and spans[1] > spans[0]
    assert watch.spans() == []


@pytest.mark.parametrize("k, schedule", [(1, "constant"), (3, "constant"), (3, "cost")])
def test_draft_cache_proposes_what_a_fresh_draft_proposes(pair, k, schedule, monkeypatch, scripted_cost_schedule):
    """The draft's cache (holes, the d_K fed late, rows leaving; with the scripted "cost" schedule also steps without
    drafts, whose tokens the draft is fed later) is right iff every step proposes the draft's own greedy continuation
    of the row: replay the steps with uncached draft.generate and count the accepted drafts."""
    target, draft = pair
    ids, mask = _ragged([7, 3, 9, 5], seed=11)
    max_new = 14 if schedule == "constant" else 24
    if schedule == "cost":
        scripted_cost_schedule()
    seen = record_draft_lengths(monkeypatch)  # K' of each step: every running row takes part in every step
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=max_new, num_draft_tokens=k, eos_token_id=[],
                               num_assistant_tokens_schedule=schedule)
    if schedule == "cost":
        assert catches_up(seen), seen
    accepted = 0
    for b in range(ids.shape[0]):
        prompt = ids[b, mask[b].bool()].tolist()
        new = out.sequences[b, ids.shape[1]:].tolist()
        pos = 0
        for k_step in seen:
            if pos >= max_new:
                break
            k_b = min(k_step, max_new - pos - 1)
            seq = torch.tensor([prompt + new[:pos]])
            drafts = draft.generate(seq, attention_mask=torch.ones_like(seq), do_sample=False, max_new_tokens=k_b,
                                    eos_token_id=None, pad_token_id=0)[0, seq.shape[1]:].tolist() if k_b else []
            n = next((i for i, (d, t) in enumerate(zip(drafts, new[pos:], strict=False)) if d != t), len(drafts))
            accepted += n
            pos += n + 1
        assert pos >= max_new, f"row {b} ran past the steps recorded"
    assert out.stats.accepted == accepted
    assert 0 < accepted < out.stats.drafted


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_num_draft_tokens(llama_pair, k):
    target, draft = llama_pair
    ids, mask = _ragged([6, 3, 8], seed=k)
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=12, num_draft_tokens=k, eos_token_id=[],
                               pad_token_id=0)
    _check_rows(target, out, ids, mask, 12)


def test_greedy_draft_equal_to_target_accepts_everything(llama_pair):
    target, _ = llama_pair
    ids, mask = _ragged([5, 8])
    out = specsampler.generate(target, target, ids, mask, max_new_tokens=13, num_draft_tokens=4, eos_token_id=[])
    _check_rows(target, out, ids, mask, 13)
    assert out.stats.acceptance_rate == 1.0
    assert out.stats.target_forwards == 3  # 5 + 5 + 3 tokens (the last step drafts only 2)


def test_callback_sees_every_new_token_in_order(llama_pair):
    target, draft = llama_pair
    ids, mask = _ragged([5, 8, 3], seed=4)
    seen = {0: [], 1: [], 2: []}
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=9, num_draft_tokens=3, eos_token_id=[],
                               callback=lambda row, tokens: seen[row].extend(tokens))
    for b in range(3):
        assert seen[b] == out.sequences[b, ids.shape[1]:].tolist()


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7])
def test_max_new_tokens(llama_pair, max_new_tokens):
    target, draft = llama_pair
    ids, mask = _ragged([5, 2, 6], seed=3)
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=max_new_tokens, num_draft_tokens=4,
                               eos_token_id=[])
    assert out.sequences.shape == (3, 6 + max_new_tokens)
    _check_rows(target, out, ids, mask, max_new_tokens)


def test_one_token_prompts(llama_pair):
    target, draft = llama_pair
    ids, mask = torch.tensor([[17], [40]]), torch.ones(2, 1, dtype=torch.long)
    for drafter in (draft, PromptLookupDrafter()):
        out = specsampler.generate(target, drafter, ids, mask, max_new_tokens=9, eos_token_id=[])
        _check_rows(target, out, ids, mask, 9)


def test_eos_per_row(llama_pair):
    target, draft = llama_pair
    ids, mask = _ragged([7, 4, 9, 3], seed=5)
    free = specsampler.generate(target, draft, ids, mask, max_new_tokens=20, eos_token_id=[])
    new = free.sequences[:, ids.shape[1]:]
    eos = int(new[0, 4])  # row 0 stops at its 5th token; the others wherever this token first shows up, or never
    pad = V - 1
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=pad)
    _check_rows(target, out, ids, mask, 20, eos=eos, pad=pad)
    assert out.sequences[0, ids.shape[1] + 4] == eos and (out.sequences[0, ids.shape[1] + 5:] == pad).all()
    # a list of EOS ids works too
    out2 = specsampler.generate(target, draft, ids, mask, max_new_tokens=20, eos_token_id=[V - 2, eos],
                                pad_token_id=pad)
    _check_rows(target, out2, ids, mask, 20, eos=[V - 2, eos], pad=pad)


def test_draft_vocab_differs_by_padding(llama_pair):
    target, _ = llama_pair
    ids, mask = _ragged([6, 2], seed=7)
    for vocab in (V - 8, V + 16):  # smaller: q = 0 past it; larger: trimmed and renormalised
        draft = tiny_model(_config("llama", vocab=vocab), 2)
        with torch.no_grad():  # share the target's weights where the shapes allow, so that drafts are accepted
            for (name, p), q in zip(draft.named_parameters(), target.parameters(), strict=True):
                if p.shape == q.shape:
                    p.copy_(q)
                elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                    n = min(p.shape[0], q.shape[0])
                    p[:n].copy_(q[:n])
        out = specsampler.generate(target, draft, ids, mask, max_new_tokens=10, num_draft_tokens=3,
                                   eos_token_id=[])
        _check_rows(target, out, ids, mask, 10)
        assert out.stats.accepted > 0
        sampled = specsampler.generate(target, draft, ids, mask, max_new_tokens=6, do_sample=True, seed=0,
                                       eos_token_id=[])
        assert int(sampled.sequences.max()) < V


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_run(dtype):
    target = tiny_model(_config("llama"), 0)
    draft = perturbed(target, 0.005).to(dtype)
    target = target.to(dtype)
    ids, mask = _ragged([5, 3], seed=2)
    for do_sample in (False, True):
        out = specsampler.generate(target, draft, ids, mask, max_new_tokens=8, do_sample=do_sample, seed=0,
                                   top_k=10, eos_token_id=[])
        assert out.sequences.shape == (2, 13) and int(out.sequences.min()) >= 0 and int(out.sequences.max()) < V


def test_rejects_what_it_cannot_do(llama_pair):
    target, draft = llama_pair
    ids = torch.tensor([[5, 6, 0]])
    with pytest.raises(ValueError, match="left padded"):
        specsampler.generate(target, draft, ids, torch.tensor([[1, 1, 0]]), max_new_tokens=3)
    out = specsampler.generate(target, draft, ids, max_new_tokens=0)
    assert torch.equal(out.sequences, ids)
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                   sliding_window=8, max_window_layers=0)
    sliding = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(NotImplementedError, match="sliding"):
        specsampler.generate(sliding, PromptLookupDrafter(), ids, max_new_tokens=3)


# ------------------------------------------------------------------------------------------------ prompt lookup
def test_prompt_lookup_drafter_proposals():
    d = PromptLookupDrafter(max_ngram=3)
    assert d.propose_row([1, 2, 3, 4, 1, 2, 3], 2) == [4, 1]  # 3-gram [1, 2, 3] matched
    assert d.propose_row([5, 2, 3, 9, 7, 2, 3], 3) == [9, 7, 2]  # 2-gram [2, 3]
    assert d.propose_row([1, 9, 2, 9, 8, 9], 4) == [8, 9]  # 1-gram, the latest occurrence first
    assert d.propose_row([1, 2, 3, 4], 3) == []  # nothing
    assert d.propose_row([7], 3) == []
    drafts, counts = d.propose([[1, 2, 1], [4, 5]], 2)
    assert drafts == [[2, 1], []] and counts == [2, 0]


def test_greedy_prompt_lookup_matches_target_generate(llama_pair):
    target, _ = llama_pair
    ids, mask = _ragged([12, 7, 2, 10], seed=4, repeat=True)
    out = specsampler.generate(target, PromptLookupDrafter(), ids, mask, max_new_tokens=15, num_draft_tokens=4,
                               eos_token_id=[])
    _check_rows(target, out, ids, mask, 15)
    assert out.stats.draft_forwards == 0 and out.stats.drafted > 0


# --------------------------------------------------------------------------------------------- distribution
def _peaked(config, seed, scale):
    """A tiny model whose next-token distributions are far from uniform (a scaled-up output layer)."""
    model = tiny_model(config, seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


@torch.no_grad()
def _exact_two_tokens(target, prompt, warp):
    """P(x1, x2 | prompt) [v, v] under the warped target, by enumeration (product of conditionals)."""
    v = target.config.vocab_size
    p1 = warp(target(prompt).logits[0, -1].float()).softmax(-1)
    both = torch.cat([prompt.repeat(v, 1), torch.arange(v)[:, None]], dim=1)
    p2 = warp(target(both).logits[:, -1].float()).softmax(-1)
    return p1[:, None] * p2


@pytest.mark.parametrize("drafter, warp_kw", [
    ("model", {}),
    ("model", dict(temperature=0.7, top_k=5, top_p=0.8)),
    ("lookup", dict(temperature=1.3, top_p=0.9)),
    ("model", dict(num_assistant_tokens_schedule="heuristic")),
    ("model", dict(temperature=0.7, top_k=6, min_p=0.3)),
    ("lookup", dict(temperature=0.8, top_p=0.9, min_p=0.35)),
    ("model", dict(verify_method="block")),
    ("model", dict(verify_method="block", temperature=0.7, top_k=5, top_p=0.8)),
    ("lookup", dict(verify_method="block", temperature=1.3, top_p=0.9)),
])
def test_sampled_tokens_follow_target_distribution(drafter, warp_kw):
    vocab, n = 8, 3000
    target = _peaked(_config("llama", vocab=vocab, layers=1, hidden=16), 0, 8.0)
    draft = perturbed(target, 0.05) if drafter == "model" else PromptLookupDrafter(max_ngram=2)
    # the target's own greedy continuation cycles soon (a peaked random model): the lookup drafter finds n-grams
    # whose continuations the target likes
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                             pad_token_id=0)
    schedule = {"num_assistant_tokens_schedule": warp_kw.pop("num_assistant_tokens_schedule", "constant"),
                "verify_method": warp_kw.pop("verify_method", "token")}
    exact = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
    # max_new_tokens=3 so that the first step verifies both drafts; the first two new tokens are checked
    out = specsampler.generate(target, draft, prompt.repeat(n, 1), max_new_tokens=3, num_draft_tokens=2,
                               do_sample=True, seed=1234, eos_token_id=[], **warp_kw, **schedule)
    new = out.sequences[:, prompt.shape[1]:prompt.shape[1] + 2]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    assert counts[exact == 0].sum() == 0  # nothing the warped target rules out
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    if drafter == "model":  # the test has power: the draft's own distribution is told apart
        draft_exact = _exact_two_tokens(draft, prompt, lambda x: hf_warp(x, **warp_kw)).flatten()
        assert chi2_pvalue_pooled(counts, draft_exact) < 1e-4
    if "min_p" in warp_kw:  # min-p cuts mass here: the distribution without it is told apart
        no_min_p = {k: v for k, v in warp_kw.items() if k != "min_p"}
        unwarped = _exact_two_tokens(target, prompt, lambda x: hf_warp(x, **no_min_p)).flatten()
        assert chi2_pvalue_pooled(counts, unwarped) < 1e-4
    assert 0 < out.stats.accepted < out.stats.drafted  # both acceptance and the residual were exercised


def test_sampled_generation_never_sorts(llama_pair, monkeypatch):
    """Drafts are drawn by specsampler.sample from the draft's raw scores and verify gets the raw target and draft
    scores with the warpers: no step sorts a vocabulary (torch.sort and argsort raise here; with top_k set the torch
    backend takes topk, and the Triton kernel never sorts)."""
    from specsampler.generation import drafters, loop

    target, draft = llama_pair
    ids, mask = _ragged([6, 3, 8], seed=9)
    opts = dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.01)
    samples, verifies = [], []

    def spy_sample(logits, **kw):
        samples.append((logits.shape, kw))
        return specsampler.sample(logits, **kw)

    def spy_verify(target_logits, drafts, draft_logits, **kw):
        verifies.append(kw)
        assert bool(torch.isfinite(target_logits).all()), "verify got warped (masked) target scores"
        assert draft_logits is None or bool(torch.isfinite(draft_logits).all())
        return specsampler.verify(target_logits, drafts, draft_logits, **kw)

    def no_sort(*args, **kwargs):
        raise AssertionError("a vocabulary was sorted")

    monkeypatch.setattr(drafters, "sample", spy_sample)
    monkeypatch.setattr(loop, "verify", spy_verify)
    for owner in (torch, torch.Tensor):
        for name in ("sort", "argsort", "msort"):
            if hasattr(owner, name):
                monkeypatch.setattr(owner, name, no_sort)
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=9, num_draft_tokens=3, do_sample=True,
                               seed=5, eos_token_id=[], **opts)
    monkeypatch.undo()
    assert out.sequences.shape == (3, 8 + 9)
    assert samples and all(shape[1] == V and {k: kw[k] for k in opts} == opts and isinstance(kw["seed"], int)
                           for shape, kw in samples)
    assert len({kw["seed"] for _, kw in samples}) == len(samples)  # a fresh seed per draw
    assert verifies and all({k: kw[k] for k in opts} == opts for kw in verifies)
    again = specsampler.generate(target, draft, ids, mask, max_new_tokens=9, num_draft_tokens=3, do_sample=True,
                                 seed=5, eos_token_id=[], **opts)
    assert torch.equal(again.sequences, out.sequences)  # seed= keeps sampled generation reproducible


@pytest.mark.parametrize("option, value, error", [
    ("temperature", -1.0, ValueError), ("temperature", float("nan"), ValueError),
    ("temperature", float("inf"), ValueError), ("top_k", -3, ValueError), ("top_k", 2.5, ValueError),
    ("top_p", -0.1, ValueError), ("top_p", 1.5, ValueError), ("top_p", float("nan"), ValueError),
    ("min_p", -0.1, ValueError), ("min_p", 1.5, ValueError), ("min_p", float("nan"), ValueError),
    ("min_p", True, ValueError),
    ("max_new_tokens", -1, ValueError), ("num_draft_tokens", 0, ValueError), ("do_sample", "yes", TypeError),
    ("seed", 1.5, TypeError), ("temperature", "1", TypeError), ("num_assistant_tokens", -2, ValueError),
])
def test_generate_validates_every_option(option, value, error):
    """Each sampling option out of range raises before any model is touched, naming the option."""
    kw = dict(max_new_tokens=4, num_draft_tokens=2, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1,
              seed=1)
    kw[option] = value
    untouched = object()  # no model: validation comes first
    with pytest.raises(error, match=option):
        specsampler.generate(untouched, untouched, torch.ones(1, 3, dtype=torch.int64), **kw)


def test_prompt_lookup_run_follows_the_drafter_protocol():
    """The per-call prompt-lookup state: drafts capped by each row's limit and padded, token lists kept per row."""
    from specsampler.generation.drafters import PromptLookupRun
    from specsampler.generation.protocol import TargetStep

    run = PromptLookupRun(PromptLookupDrafter(max_ngram=2), [[1, 2, 3, 1, 2], [4, 5]], k=3, fill=0)
    drafts, scores, counts = run.propose(torch.tensor([2, 5]), [2, 3])
    assert drafts.tolist() == [[3, 1], [0, 0]] and scores is None and counts == [2, 0]
    run.accept(TargetStep(torch.tensor([1, 0]), [[3, 7], [4]], torch.zeros(2, 3, V)))
    assert run.seqs == [[1, 2, 3, 1, 2, 3, 7], [4, 5, 4]]
    run.select_rows(torch.tensor([1]))
    assert run.seqs == [[4, 5, 4]] and run.forwards == 0


# ------------------------------------------------------------------------------ transformers' names and configs
def _tiny_tokenizer(vocab=V):
    return char_tokenizer(vocab)


@pytest.fixture
def gen_config(llama_pair):
    """The target's generation_config, restored after the test (which may change it)."""
    import copy

    target = llama_pair[0]
    saved = copy.deepcopy(target.generation_config)
    yield target.generation_config
    target.generation_config = saved


def _rows_equal_reference(target, out, ids, mask, **kw):
    """Each row of `out` equals target.generate on that row alone (greedy, same options), padding after it."""
    width = ids.shape[1]
    pad = kw.get("pad_token_id", 0)
    for b in range(ids.shape[0]):
        ref = _reference(target, ids, mask, b, **kw)
        got = out.sequences[b, width:].tolist()
        assert got[: len(ref)] == ref and all(t == pad for t in got[len(ref):]), f"row {b}: {got} vs {ref}"


def test_transformers_drafter_names(llama_pair):
    """assistant_model= is draft=, prompt_lookup_num_tokens=N is a PromptLookupDrafter with K = N,
    num_assistant_tokens= is num_draft_tokens=; all by keyword, as target.generate takes them."""
    target, draft = llama_pair
    ids, mask = _ragged([9, 4, 7], seed=21, repeat=True)
    kw = dict(max_new_tokens=10, eos_token_id=[], pad_token_id=0)
    base = specsampler.generate(target, draft, ids, mask, num_draft_tokens=3, **kw)
    named = specsampler.generate(target, input_ids=ids, attention_mask=mask, assistant_model=draft,
                                 num_assistant_tokens=3, **kw)
    assert torch.equal(named.sequences, base.sequences) and named.stats == base.stats
    _check_rows(target, named, ids, mask, 10)
    lookup = specsampler.generate(target, input_ids=ids, attention_mask=mask, prompt_lookup_num_tokens=2, **kw)
    same = specsampler.generate(target, PromptLookupDrafter(), ids, mask, num_draft_tokens=2, **kw)
    assert torch.equal(lookup.sequences, same.sequences) and lookup.stats == same.stats
    assert lookup.stats.draft_forwards == 0 and 0 < lookup.stats.drafted <= 2 * lookup.stats.row_steps
    _check_rows(target, lookup, ids, mask, 10)


@pytest.mark.parametrize("kw, match", [
    ({}, "needs a drafter"),
    (dict(draft="D", assistant_model="D"), "draft and assistant_model"),
    (dict(draft="D", prompt_lookup_num_tokens=3), "draft and prompt_lookup_num_tokens"),
    (dict(assistant_model="D", prompt_lookup_num_tokens=3), "assistant_model and prompt_lookup_num_tokens"),
    (dict(draft="D", num_draft_tokens=3, num_assistant_tokens=4), "num_draft_tokens=3 and num_assistant_tokens=4"),
    (dict(prompt_lookup_num_tokens=3, num_draft_tokens=4), "prompt_lookup_num_tokens=3"),
    (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens must be"),
])
def test_exactly_one_drafter(llama_pair, kw, match):
    target, draft = llama_pair
    kw = {k: draft if v == "D" else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=match):
        specsampler.generate(target, input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, **kw)


def test_options_default_to_the_generation_configs(llama_pair, gen_config):
    """Unset options come from generation_config=, else target.generation_config, keywords winning, as in
    target.generate: max_new_tokens, eos and pad ids, max_length."""
    target, draft = llama_pair
    ids, mask = _ragged([6, 3, 8], seed=13)
    free = specsampler.generate(target, draft, ids, mask, max_new_tokens=12, eos_token_id=[])
    eos = int(free.sequences[0, ids.shape[1] + 3])
    gen_config.max_new_tokens, gen_config.eos_token_id, gen_config.pad_token_id = 9, eos, V - 1
    out = specsampler.generate(target, draft, ids, mask)
    for b in range(3):  # target.generate with no options at all: the same config
        row = ids[b, mask[b].bool()][None]
        ref = target.generate(row, attention_mask=torch.ones_like(row))[0, row.shape[1]:].tolist()
        got = out.sequences[b, ids.shape[1]:].tolist()
        assert got[: len(ref)] == ref and all(t == V - 1 for t in got[len(ref):])
    assert out.sequences.shape[1] <= ids.shape[1] + 9 and eos in out.sequences[0].tolist()
    # generation_config= before the model's, keywords before both
    cfg = transformers.GenerationConfig(max_new_tokens=5, eos_token_id=V - 3, pad_token_id=0)
    out = specsampler.generate(target, draft, ids, mask, generation_config=cfg)
    _check_rows(target, out, ids, mask, 5, eos=V - 3, pad=0)
    out = specsampler.generate(target, draft, ids, mask, generation_config=cfg, max_new_tokens=3, eos_token_id=[])
    _check_rows(target, out, ids, mask, 3, eos=[], pad=0)
    # max_length: prompt width + new tokens when max_new_tokens is unset anywhere
    gen_config.max_new_tokens = None
    out = specsampler.generate(target, draft, ids, mask, max_length=ids.shape[1] + 4, eos_token_id=[])
    assert out.sequences.shape == (3, ids.shape[1] + 4)
    with pytest.raises(ValueError, match="max_length"):
        specsampler.generate(target, draft, ids, mask, max_length=ids.shape[1], eos_token_id=[])


@pytest.mark.parametrize("config, kw", [
    ({}, dict(do_sample=True)),
    ({}, dict(do_sample=True, top_k=None)),
    (dict(do_sample=True, top_k=7, top_p=0.8, temperature=0.6), {}),
    (dict(do_sample=True, top_k=7, min_p=0.1), dict(top_k=3, temperature=1.5)),
    (dict(top_k=0), dict(do_sample=True, top_p=0.9)),
])
def test_sampling_options_resolve_as_model_generate(llama_pair, gen_config, monkeypatch, config, kw):
    """The warpers specsampler applies are those target.generate applies for the same call (its own resolution,
    transformers' default top_k=50 included); checked on the options verify receives."""
    from specsampler.generation import loop

    target, draft = llama_pair
    for name, value in config.items():
        setattr(gen_config, name, value)
    ref, _ = target._prepare_generation_config(None, **kw)
    seen = []

    def spy_verify(*args, **vkw):
        seen.append(vkw)
        return specsampler.verify(*args, **vkw)

    monkeypatch.setattr(loop, "verify", spy_verify)
    specsampler.generate(target, draft, torch.tensor([[5, 6, 7]]), max_new_tokens=3, seed=0, **kw)
    assert ref.do_sample and seen
    want = dict(temperature=float(ref.temperature if ref.temperature is not None else 1.0),
                top_k=int(ref.top_k) if ref.top_k else None,
                top_p=float(ref.top_p) if ref.top_p is not None and ref.top_p < 1 else None,
                min_p=float(ref.min_p) if ref.min_p else None)
    assert all({k: v[k] for k in want} == want for v in seen), (want, seen[0])
    if not config and "top_k" not in kw:
        assert want["top_k"] == 50  # transformers' default, as target.generate(do_sample=True) applies it


def test_every_generation_config_option_is_classified():
    """Each attribute of the installed transformers' GenerationConfig is honoured, refused or irrelevant: a new
    option fails here until it is classified in GENERATION_CONFIG_OPTIONS."""
    from specsampler.generation.options import GENERATION_CONFIG_OPTIONS, HONOURED, IRRELEVANT, REFUSED

    names = {k for k in vars(transformers.GenerationConfig()) if not k.startswith("_")}
    assert names - set(GENERATION_CONFIG_OPTIONS) == set()
    assert {kind for kind, _ in GENERATION_CONFIG_OPTIONS.values()} == {HONOURED, REFUSED, IRRELEVANT}


REFUSED_VALUES = dict(
    guidance_scale=1.5, typical_p=0.9, epsilon_cutoff=1e-3, eta_cutoff=1e-3, top_h=0.5,
    num_beams=2, num_beam_groups=2, diversity_penalty=0.5, penalty_alpha=0.6, dola_layers="low", token_healing=True,
    output_attentions=True, output_hidden_states=True,
    assistant_early_exit=1, assistant_ensemble_weight=0.5, speculation_type="dflash", use_mtp=True,
    cache_implementation="quantized", constraints=["c"], force_words_ids=[[5]], watermarking_config={"bias": 2.0},
)


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_refused_options_raise_by_name(llama_pair, gen_config, name):
    """A refused option set to a non-default value raises a ValueError naming it, whether passed, given in
    generation_config= or set in the model's config; passing its off value overrides the model's config."""
    from specsampler.generation.options import GENERATION_CONFIG_OPTIONS, REFUSED

    if name not in vars(transformers.GenerationConfig()):
        pytest.skip(f"{name} is not an option of transformers {transformers.__version__}")
    assert GENERATION_CONFIG_OPTIONS[name][0] == REFUSED
    target, draft = llama_pair
    ids = torch.tensor([[5, 6, 7]])
    value = REFUSED_VALUES[name]
    with pytest.raises(ValueError, match=f"{name}=.*passed"):
        specsampler.generate(target, draft, ids, max_new_tokens=2, **{name: value})
    cfg = transformers.GenerationConfig()
    setattr(cfg, name, value)  # (no validation: some values need other options to pass it)
    with pytest.raises(ValueError, match=f"{name}=.*set in generation_config"):
        specsampler.generate(target, draft, ids, max_new_tokens=2, generation_config=cfg)
    setattr(gen_config, name, value)
    with pytest.raises(ValueError, match=f"{name}=.*set in target.generation_config"):
        specsampler.generate(target, draft, ids, max_new_tokens=2)


def test_refused_option_overridden_and_unknown_names(llama_pair, gen_config):
    target, draft = llama_pair
    ids, mask = _ragged([5, 3], seed=8)
    gen_config.repetition_penalty = 1.3
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=6, eos_token_id=[], repetition_penalty=1.0)
    gen_config.repetition_penalty = 1.0  # (the reference, target.generate, would apply the model's 1.3)
    _check_rows(target, out, ids, mask, 6)
    out2 = specsampler.generate(target, draft, ids, mask, max_new_tokens=6, eos_token_id=[], use_cache=True,
                                return_dict_in_generate=True, renormalize_logits=True, length_penalty=2.0)
    assert torch.equal(out2.sequences, out.sequences)  # irrelevant options change nothing
    with pytest.raises(TypeError, match="repetition_penalti"):
        specsampler.generate(target, draft, ids, mask, max_new_tokens=6, repetition_penalti=1.0)


class _Recorder(transformers.generation.BaseStreamer if hasattr(transformers, "generation") else object):
    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ends += 1


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_streamer_gets_exactly_the_result(llama_pair, drafter):
    """transformers' protocol: the prompt first, then each step's new tokens, end() once; together they are the
    returned sequence (EOS included, no padding); a TextIteratorStreamer gives the result's text."""
    target, draft = llama_pair
    ids = _ragged([7], seed=3, repeat=True)[0]
    kw = dict(assistant_model=draft) if drafter == "model" else dict(prompt_lookup_num_tokens=3)
    free = specsampler.generate(target, input_ids=ids, max_new_tokens=14, eos_token_id=[], **kw)
    eos = int(free.sequences[0, -4])
    rec = _Recorder()
    out = specsampler.generate(target, input_ids=ids, max_new_tokens=14, eos_token_id=eos, streamer=rec, **kw)
    assert rec.ends == 1 and torch.equal(rec.puts[0], ids)
    assert all(p.shape[0] == 1 and p.dim() == 2 and p.dtype == torch.long for p in rec.puts)
    assert len(rec.puts) - 1 == out.stats.target_forwards
    assert torch.equal(torch.cat(rec.puts, dim=1), out.sequences)
    ref = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=14,
                          eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out.sequences, ref)
    tok = _tiny_tokenizer()
    text = transformers.TextIteratorStreamer(tok, skip_prompt=True)
    specsampler.generate(target, input_ids=ids, max_new_tokens=14, eos_token_id=eos, streamer=text, **kw)
    assert "".join(text) == tok.decode(out.sequences[0, ids.shape[1]:])


def test_streamer_refuses_batches(llama_pair):
    target, draft = llama_pair
    ids, mask = _ragged([5, 3], seed=8)
    with pytest.raises(ValueError, match="callback="):
        specsampler.generate(target, draft, ids, mask, max_new_tokens=4, streamer=_Recorder())
    with pytest.raises(ValueError, match="callback="):
        specsampler.generate(target, draft, ids[:1], mask[:1], max_new_tokens=4, do_sample=True,
                             num_return_sequences=2, streamer=_Recorder())


class _StopAt(transformers.StoppingCriteria):
    """Stop a row when its last token is `token` (a custom criterion, as users write them)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_stopping_criteria_match_model_generate(llama_pair, drafter):
    """A row stops at the first token where a criterion fires, inside a step's accepted tokens too: greedy rows
    equal target.generate(row, stopping_criteria=...)."""
    target, draft = llama_pair
    ids, mask = _ragged([9, 4, 7, 6], seed=17, repeat=True)
    kw = dict(max_new_tokens=16, eos_token_id=[], pad_token_id=0)
    drafter_kw = dict(assistant_model=draft) if drafter == "model" else dict(prompt_lookup_num_tokens=4)
    free = specsampler.generate(target, input_ids=ids, attention_mask=mask, **drafter_kw, **kw)
    stop_token = int(free.sequences[1, ids.shape[1] + 5])
    crits = transformers.StoppingCriteriaList([_StopAt(stop_token)])
    out = specsampler.generate(target, input_ids=ids, attention_mask=mask, stopping_criteria=crits, **drafter_kw,
                               **kw)
    _rows_equal_reference(target, out, ids, mask, stopping_criteria=crits, **kw)
    assert out.sequences.shape[1] < free.sequences.shape[1] or (out.sequences != free.sequences).any()
    assert out.sequences[1, ids.shape[1] + 5] == stop_token and (out.sequences[1, ids.shape[1] + 6:] == 0).all()


def test_stop_strings_match_model_generate(llama_pair):
    """stop_strings with a tokenizer (transformers' StopStringCriteria): greedy rows equal target.generate(row,
    stop_strings=..., tokenizer=...); without a tokenizer a ValueError says what to pass."""
    target, draft = llama_pair
    tok = _tiny_tokenizer()
    ids, mask = _ragged([8, 5, 7], seed=19)
    kw = dict(max_new_tokens=14, eos_token_id=[], pad_token_id=0)
    free = specsampler.generate(target, draft, ids, mask, **kw)
    stop = tok.decode(free.sequences[0, ids.shape[1] + 4: ids.shape[1] + 6])  # two tokens of row 0
    out = specsampler.generate(target, draft, ids, mask, stop_strings=[stop], tokenizer=tok, **kw)
    _rows_equal_reference(target, out, ids, mask, stop_strings=[stop], tokenizer=tok, **kw)
    assert tok.decode(out.sequences[0, ids.shape[1]:]).rstrip(tok.decode([0])).endswith(stop)
    assert out.sequences.shape[1] < free.sequences.shape[1] or (out.sequences != free.sequences).any()
    with pytest.raises(ValueError, match="tokenizer="):
        specsampler.generate(target, draft, ids, mask, stop_strings=[stop], **kw)


def test_num_return_sequences(llama_pair):
    """n rows per prompt, consecutive as transformers orders them; with a seed reproducible; greedy with n > 1
    raises as target.generate does."""
    target, draft = llama_pair
    ids, mask = _ragged([6, 3], seed=23)
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=8, do_sample=True, seed=3,
                               num_return_sequences=3, eos_token_id=[])
    width = ids.shape[1]
    assert out.sequences.shape == (6, width + 8)
    assert torch.equal(out.sequences[:, :width], ids.repeat_interleave(3, dim=0))
    assert len({tuple(r) for r in out.sequences[:3, width:].tolist()}) > 1  # distinct samples of one prompt
    rows = specsampler.generate(target, draft, ids.repeat_interleave(3, dim=0), mask.repeat_interleave(3, dim=0),
                                max_new_tokens=8, do_sample=True, seed=3, eos_token_id=[])
    assert torch.equal(rows.sequences, out.sequences)
    ref_shape = target.generate(ids, attention_mask=mask, do_sample=True, num_return_sequences=3, max_new_tokens=2,
                                pad_token_id=0).shape
    assert ref_shape[0] == out.sequences.shape[0]
    with pytest.raises(ValueError, match="num_return_sequences"):
        target.generate(ids, attention_mask=mask, do_sample=False, num_return_sequences=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        specsampler.generate(target, draft, ids, mask, max_new_tokens=8, num_return_sequences=2)
