"""transformers' logits processors inside speculative generation (tiny models built from configs, on the CPU): greedy
rows equal ``model.generate`` for each processor, with a draft model and with prompt lookup, through
``specsampler.generate`` and through the patched ``model.generate``; sampled tokens follow the processed and warped
target distribution (an enumerated joint of two tokens, chi-square); the prefixes each processor sees; refusals."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.generation import logits_process as lp  # noqa: E402
from util import chi2_pvalue_pooled, perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler.generation.processors import PrefixProcessors, split_processors  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 96
EOS, PAD, NEW = 2, 0, 12


def _model(vocab=V, layers=2, hidden=32, seed=0):
    return tiny_model(tiny_config("llama", vocab, layers, hidden), seed)


@pytest.fixture(scope="module")
def models():
    target = _model()
    return target, perturbed(target, 0.01)


def _prompts():
    """Three left-padded prompts of lengths 5, 9, 3 (pad id 0)."""
    g = torch.Generator().manual_seed(0)
    ids, mask = torch.zeros(3, 9, dtype=torch.long), torch.zeros(3, 9, dtype=torch.long)
    for b, n in enumerate([5, 9, 3]):
        ids[b, 9 - n:], mask[b, 9 - n:] = torch.randint(3, V, (n,), generator=g), 1
    return ids, mask


def _plain(target, ids, mask, **kw):
    return target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=EOS,
                           pad_token_id=PAD, **kw)


def _case(name, base):
    """Options for processor `name`, chosen from the greedy output `base` [3, 9 + NEW] without processors so that
    each changes that output."""
    new = base[:, 9:]
    if name == "repetition_penalty":
        return dict(repetition_penalty=1.6)
    if name == "encoder_repetition_penalty":
        return dict(encoder_repetition_penalty=0.5)
    if name == "no_repeat_ngram_size":
        return dict(no_repeat_ngram_size=2)
    if name == "encoder_no_repeat_ngram_size":
        return dict(encoder_no_repeat_ngram_size=2)
    if name == "bad_words_ids":  # a one-token word and a two-token word of row 0's output
        return dict(bad_words_ids=[[int(new[0, 3])], [int(new[1, 2]), int(new[1, 3])]])
    if name == "sequence_bias":
        return dict(sequence_bias={(int(new[2, 1]),): -4.0, (int(new[0, 0]), 7): 6.0})
    if name == "suppress_tokens":
        return dict(suppress_tokens=[int(new[0, 4]), int(new[2, 2])])
    if name == "begin_suppress_tokens":
        return dict(begin_suppress_tokens=[int(t) for t in new[:, 0]])
    if name == "forced_eos_token_id":
        return dict(forced_eos_token_id=EOS)
    if name == "exponential_decay_length_penalty":
        return dict(exponential_decay_length_penalty=(2, 1.8))
    if name in ("min_new_tokens", "min_length"):  # an EOS id that row 0 would emit early: now it must wait
        eos = int(new[0, 2])
        return dict(eos_token_id=eos, **({"min_new_tokens": 8} if name == "min_new_tokens" else {"min_length": 17}))
    if name == "forced_bos_token_id":  # a one-token prompt: the first new token is forced
        return dict(forced_bos_token_id=int(new[0, 0]) + 1)
    if name == "remove_invalid_values":
        return dict(remove_invalid_values=True)
    raise AssertionError(name)


PROCESSOR_OPTIONS = ["repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                     "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens",
                     "begin_suppress_tokens", "forced_eos_token_id", "exponential_decay_length_penalty",
                     "min_new_tokens", "min_length", "forced_bos_token_id", "remove_invalid_values"]


def test_every_processor_option_is_covered():
    from specsampler.generation.options import PROCESSOR_OPTIONS as BUILT

    assert sorted(BUILT) == sorted(PROCESSOR_OPTIONS)


@pytest.mark.parametrize("drafter", ["model", "lookup"])
@pytest.mark.parametrize("name", PROCESSOR_OPTIONS)
def test_greedy_equals_model_generate(models, name, drafter):
    """Each processor option: specsampler.generate's greedy rows equal model.generate's (same left-padded batch), and
    the option changes that output (so the comparison can fail)."""
    target, draft = models
    ids, mask = _prompts()
    if name == "forced_bos_token_id":
        ids, mask = ids[:, -1:], mask[:, -1:]
    base = _plain(target, ids, mask)
    if name.startswith("encoder_"):  # prompts that run into the cycles a random model falls in: it repeats them
        ids, mask = base[:, :17], torch.cat([mask, torch.ones(3, 8, dtype=torch.long)], dim=1)
    kw = _case(name, torch.nn.functional.pad(base, (9 - ids.shape[1], 0)))
    eos = kw.pop("eos_token_id", EOS)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=eos,
                          pad_token_id=PAD, **kw)
    if name != "remove_invalid_values":  # (finite logits: nothing to remove)
        without = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=eos,
                                  pad_token_id=PAD)
        assert not torch.equal(ref, without), f"{name}: the case does not change the output"
    drafter = draft if drafter == "model" else specsampler.PromptLookupDrafter(max_ngram=2)
    out = specsampler.generate(target, drafter, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD,
                               num_draft_tokens=3, **kw)
    assert out.sequences.tolist() == ref.tolist()
    assert out.stats.target_forwards < out.stats.new_tokens  # speculation ran: several tokens per forward


@pytest.mark.parametrize("drafter, schedule", [("model", "heuristic"), ("model", "cost"), ("lookup", "cost")])
def test_greedy_all_processors_together_adaptive_schedules(models, drafter, schedule, scripted_cost_schedule):
    """Draft lengths that change from step to step (per row: "heuristic"; per step, with scripted times that make
    some steps draft nothing: "cost") keep every prefix right."""
    target, draft = models
    ids, mask = _prompts()
    kw = dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=4, suppress_tokens=[5, 6],
              exponential_decay_length_penalty=(3, 1.2))
    ref = _plain(target, ids, mask, **kw)
    if schedule == "cost":
        scripted_cost_schedule()
    drafter = draft if drafter == "model" else specsampler.PromptLookupDrafter(max_ngram=2)
    out = specsampler.generate(target, drafter, ids, mask, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD,
                               num_draft_tokens=2, num_assistant_tokens_schedule=schedule, **kw)
    assert out.sequences.tolist() == ref.tolist()


class _Shift(lp.LogitsProcessor):
    """A caller's own processor: favours (last token + 1) mod V, records the prefix lengths it sees."""

    def __init__(self):
        self.lengths = []

    def __call__(self, input_ids, scores):
        self.lengths.append(input_ids.shape[1])
        bonus = torch.zeros_like(scores)
        bonus[torch.arange(scores.shape[0]), (input_ids[:, -1] + 1) % scores.shape[1]] = 2.0
        return scores + bonus


def test_callers_logits_processor_and_prefix_allowed_tokens_fn(models):
    """logits_processor= and prefix_allowed_tokens_fn= as model.generate takes them; the function gets each row's
    prompt index as its batch_id (here row b may use ids >= 10 b only)."""
    target, draft = models
    ids, mask = _prompts()
    ref = _plain(target, ids, mask, logits_processor=lp.LogitsProcessorList([_Shift()]))
    assert not torch.equal(ref, _plain(target, ids, mask))
    shift = _Shift()
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD,
                               logits_processor=[shift])
    assert out.sequences.tolist() == ref.tolist()
    assert max(shift.lengths) <= ids.shape[1] + NEW - 1

    def allowed(batch_id, sent):
        return list(range(10 * batch_id + 3, V, 2 + batch_id))

    ref = _plain(target, ids, mask, prefix_allowed_tokens_fn=allowed)
    out = specsampler.generate(target, draft, ids, mask, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=PAD,
                               prefix_allowed_tokens_fn=allowed)
    assert out.sequences.tolist() == ref.tolist()
    for b in range(3):
        assert all(t in allowed(b, None) for t in out.sequences[b, 9:].tolist())
    # with num_return_sequences, the function gets the batch_id model.generate gives it (5.x: the prompt's index;
    # 4.x: the row's), whichever prompt a row samples
    pairs = {"ours": set(), "transformers": set()}

    def recorded(side):
        def fn(batch_id, sent):
            pairs[side].add((batch_id, tuple(sent[:9].tolist())))
            return allowed(batch_id, sent)
        return fn

    kw = dict(max_new_tokens=4, pad_token_id=PAD, do_sample=True, num_return_sequences=2)
    target.generate(ids, attention_mask=mask, eos_token_id=None, prefix_allowed_tokens_fn=recorded("transformers"),
                    **kw)
    out = specsampler.generate(target, draft, ids, mask, eos_token_id=[], seed=5,
                               prefix_allowed_tokens_fn=recorded("ours"), **kw)
    assert pairs["ours"] == pairs["transformers"] and len(pairs["ours"]) in (3, 6)
    per = 6 // len(pairs["ours"])
    for r in range(6):
        assert all(t in allowed(r // per, None) for t in out.sequences[r, 9:].tolist())


@pytest.mark.parametrize("drafter", ["assistant_model", "prompt_lookup_num_tokens"])
def test_patched_generate_applies_the_processors(models, drafter):
    """Under the patch, model.generate(batch, assistant_model=draft, repetition_penalty=..., ...) equals plain
    model.generate with the same options (transformers alone refuses the batch)."""
    target, draft = models
    ids, mask = _prompts()
    kw = dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=3, logits_processor=None)
    ref = _plain(target, ids, mask, **kw)
    extra = dict(assistant_model=draft) if drafter == "assistant_model" else dict(prompt_lookup_num_tokens=2)
    with specsampler.patched_transformers():
        out = _plain(target, ids, mask, **kw, **extra)
    assert out.tolist() == ref.tolist()


def test_draft_scores_are_processed_too(models, monkeypatch):
    """verify gets target and draft scores both processed (here a suppressed id is -inf in both), so q is what each
    draft was drawn from."""
    from specsampler.generation import loop

    target, draft = models
    ids, mask = _prompts()
    seen = []
    real = loop.verify

    def spy(target_logits, drafts, draft_logits, **kw):
        nd = kw.get("num_draft_tokens")
        nd = [drafts.shape[1]] * drafts.shape[0] if nd is None else nd.tolist()
        for i, n in enumerate(nd):  # the positions verify reads
            seen.append((target_logits[i, :n + 1].clone(), draft_logits[i, :n].clone()))
        return real(target_logits, drafts, draft_logits, **kw)

    monkeypatch.setattr(loop, "verify", spy)
    specsampler.generate(target, draft, ids, mask, max_new_tokens=20, do_sample=True, seed=0, top_k=0,
                         suppress_tokens=[7, 8], eos_token_id=[], pad_token_id=PAD)
    assert len(seen) > 9
    for p, q in seen:
        assert bool(torch.isneginf(p[..., [7, 8]]).all()) and bool(torch.isneginf(q[..., [7, 8]]).all())
        assert bool(torch.isfinite(p[..., 9]).all()) and bool(torch.isfinite(q[..., 9]).all())


# ------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def _exact_two_tokens(target, prompt, processors, temperature, top_k, eos=(), pad=0):
    """P(x1, x2 | prompt) [v, v]: the processors applied to each prefix, then transformers' warpers, enumerated; a
    row whose x1 is an EOS id stops there (x2 = pad)."""
    v = target.config.vocab_size
    warpers = [lp.TemperatureLogitsWarper(temperature)] + ([lp.TopKLogitsWarper(top_k)] if top_k else [])

    def dist(ids, scores):
        for proc in processors + warpers:
            scores = proc(ids, scores)
        return scores.softmax(-1)

    p1 = dist(prompt, target(prompt).logits[:, -1].float())[0]
    both = torch.cat([prompt.repeat(v, 1), torch.arange(v)[:, None]], dim=1)
    p2 = dist(both, target(both).logits[:, -1].float())
    joint = p1[:, None] * p2
    for e in eos:
        joint[e] = 0.0
        joint[e, pad] = p1[e]
    return joint


EOS_ID = 4


def _sampled_case(name, target, prompt):
    """(generate's options, transformers' processors for the reference, eos ids, max_new_tokens) for processor
    option `name`, built directly from transformers' classes; banned or favoured tokens are the plain distribution's
    likeliest (a: the first token, (a, b): the likeliest bigram), so that each option changes the distribution."""
    width = prompt.shape[1]
    plain = _exact_two_tokens(target, prompt, [], 1.0, 0)
    a = int(plain.sum(1).argmax())
    b = int(plain[a].argmax())
    eos_t = torch.tensor([EOS_ID])
    cases = {
        "repetition_penalty": (dict(repetition_penalty=3.0), [lp.RepetitionPenaltyLogitsProcessor(3.0)], [], 3),
        "repetition_penalty<1": (dict(repetition_penalty=0.4, temperature=0.8),
                                 [lp.RepetitionPenaltyLogitsProcessor(0.4)], [], 3),
        "no_repeat_ngram_size": (dict(no_repeat_ngram_size=1, top_k=5), [lp.NoRepeatNGramLogitsProcessor(1)], [], 3),
        "min_new_tokens": (dict(min_new_tokens=2), [lp.MinNewTokensLengthLogitsProcessor(width, 2, eos_t)],
                           [EOS_ID], 3),
        "min_length": (dict(min_length=width + 2), [lp.MinLengthLogitsProcessor(width + 2, eos_t)], [EOS_ID], 3),
        "encoder_repetition_penalty": (  # (the prompt given for every row: 4.x's class does not broadcast it)
            dict(encoder_repetition_penalty=0.3),
            [lambda ids, x: lp.EncoderRepetitionPenaltyLogitsProcessor(0.3, prompt.repeat(len(x), 1))(ids, x)], [], 3),
        "encoder_no_repeat_ngram_size": (dict(encoder_no_repeat_ngram_size=2),
                                         [lp.EncoderNoRepeatNGramLogitsProcessor(2, prompt)], [], 3),
        "bad_words_ids": (dict(bad_words_ids=[[a], [a, b]]), [lp.NoBadWordsLogitsProcessor([[a], [a, b]])], [], 3),
        "sequence_bias": (dict(sequence_bias={(a,): -3.0, (a, b): -5.0}),
                          [lp.SequenceBiasLogitsProcessor({(a,): -3.0, (a, b): -5.0})], [], 3),
        "suppress_tokens": (dict(suppress_tokens=[a, b]), [lp.SuppressTokensLogitsProcessor([a, b])], [], 3),
        "begin_suppress_tokens": (dict(begin_suppress_tokens=[a]),
                                  [lp.SuppressTokensAtBeginLogitsProcessor([a], width)], [], 3),
        "forced_eos_token_id": (dict(forced_eos_token_id=EOS_ID),
                                [lp.ForcedEOSTokenLogitsProcessor(width + 2, EOS_ID)], [], 2),
        "exponential_decay_length_penalty": (dict(exponential_decay_length_penalty=(0, 3.0)),
                                             [lp.ExponentialDecayLengthPenalty((0, 3.0), eos_t, width)], [EOS_ID], 3),
    }
    return cases[name]


SAMPLED = [("repetition_penalty", "model"), ("repetition_penalty<1", "lookup"), ("no_repeat_ngram_size", "model"),
           ("min_new_tokens", "model"), ("min_length", "lookup"), ("encoder_repetition_penalty", "model"),
           ("encoder_no_repeat_ngram_size", "model"), ("bad_words_ids", "lookup"), ("sequence_bias", "lookup"),
           ("suppress_tokens", "model"), ("begin_suppress_tokens", "lookup"), ("forced_eos_token_id", "model"),
           ("exponential_decay_length_penalty", "model")]


@pytest.mark.parametrize("name, drafter", SAMPLED)
def test_sampled_tokens_follow_the_processed_distribution(name, drafter):
    """For each processor option: the joint of the first two new tokens equals the processed and warped target's
    (enumerated with transformers' own processor classes on each prefix) at p > 1e-4, and the distribution without
    the processor is told apart (p < 1e-4)."""
    vocab, n = 8, 3000
    target = _model(vocab=vocab, layers=1, hidden=16)
    with torch.no_grad():
        target.get_output_embeddings().weight.mul_(8.0)  # peaked distributions
    draft = perturbed(target, 0.05) if drafter == "model" else specsampler.PromptLookupDrafter(max_ngram=2)
    prompt = target.generate(torch.tensor([[1, 2]]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                             pad_token_id=0)
    options, processors, eos, max_new = _sampled_case(name, target, prompt)
    options = dict(options)
    temperature, top_k = options.pop("temperature", 1.0), options.pop("top_k", 0)
    exact = _exact_two_tokens(target, prompt, processors, temperature, top_k, eos).flatten()
    plain = _exact_two_tokens(target, prompt, [], temperature, top_k, eos).flatten()
    out = specsampler.generate(target, draft, prompt.repeat(n, 1), max_new_tokens=max_new, num_draft_tokens=2,
                               do_sample=True, seed=1234, eos_token_id=eos, temperature=temperature, top_k=top_k,
                               pad_token_id=0, **options)
    width = prompt.shape[1]
    new = out.sequences[:, width:width + 2]
    counts = torch.bincount(new[:, 0] * vocab + new[:, 1], minlength=vocab * vocab)
    assert counts[exact == 0].sum() == 0  # nothing the processors rule out
    assert chi2_pvalue_pooled(counts, exact) > 1e-4
    assert chi2_pvalue_pooled(counts, plain) < 1e-4  # the test has power: without the processor it fails
    assert out.stats.accepted > 0 and out.stats.accepted < out.stats.drafted  # acceptance and residual both ran


# ------------------------------------------------------------------------------------- the prefixes, refusals
class _Record(lp.LogitsProcessor):
    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, scores):
        self.calls.append((input_ids.clone(), scores.clone()))
        return scores + input_ids.shape[1]  # marks each score with its prefix length


def test_prefix_processors_see_each_position_with_its_prefix():
    """Row i's position s is processed with row i's sequence then drafts[i, :first + s]; positions past counts[i] are
    left alone; prefixes of equal length share a call."""
    record = _Record()
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    proc = PrefixProcessors([record], ids, capacity=16, device=torch.device("cpu"))
    proc.start_step([0, 1], [[10], []])  # row 0 has one new token: lengths 4 and 3
    drafts = torch.tensor([[20, 21], [30, 31]])
    scores = torch.zeros(2, 3, 5)
    out = proc(scores, drafts, 0, counts=[2, 1])
    assert out[0, :, 0].tolist() == [4, 5, 6] and out[1, :, 0].tolist() == [3, 4, 0]  # row 1, s = 2: untouched
    seen = sorted((tuple(r) for ids_, _ in record.calls for r in ids_.tolist()), key=len)
    assert seen == [(7, 8, 9), (0, 5, 6, 10), (7, 8, 9, 30), (0, 5, 6, 10, 20), (0, 5, 6, 10, 20, 21)]
    assert [c[0].shape[0] for c in record.calls] == [1, 2, 1, 1]  # lengths 3, 4 (both rows), 5, 6
    record.calls.clear()
    proc.start_step([1], [[10], [40, 41]])  # row 0 finished; row 1 gained two tokens
    out = proc(torch.zeros(1, 1, 5), torch.tensor([[50]]), first=1)  # a draft forward after one draft
    assert record.calls[0][0].tolist() == [[7, 8, 9, 40, 41, 50]] and out[0, 0, 0] == 6


def test_per_row_state_follows_the_rows():
    """RepetitionPenalty's per-row padding length (transformers 5) is taken for the rows of each call."""
    try:
        pen = lp.RepetitionPenaltyLogitsProcessor(2.0, prompt_ignore_length=torch.tensor([2, 0]))
    except (TypeError, ValueError):
        pytest.skip(f"transformers {transformers.__version__} has no per-row prompt padding in RepetitionPenalty")
    ids = torch.tensor([[3, 3, 4], [3, 3, 4]])
    proc = PrefixProcessors([pen], ids, capacity=8, device=torch.device("cpu"))
    proc.start_step([1], [[], []])
    out = proc(torch.ones(1, 1, 6), None)
    assert out[0, 0].tolist() == [1, 1, 1, 0.5, 0.5, 1]  # row 1 ignores no prompt token: 3 and 4 penalised
    proc.start_step([0], [[], []])
    out = proc(torch.ones(1, 1, 6), None)
    assert out[0, 0].tolist() == [1, 1, 1, 1, 0.5, 1]  # row 0 ignores its two padding slots


def test_split_processors():
    procs = [lp.RepetitionPenaltyLogitsProcessor(1.2), lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(5),
             lp.TopPLogitsWarper(0.9), lp.MinPLogitsWarper(0.1), lp.LogitNormalization()]
    kept, warp = split_processors(procs)
    assert kept == procs[:1] and warp == dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1)
    with pytest.raises(ValueError, match="RepetitionPenaltyLogitsProcessor after the warpers"):
        split_processors([lp.TopKLogitsWarper(5), lp.RepetitionPenaltyLogitsProcessor(1.2)])
    with pytest.raises(ValueError, match="TypicalLogitsWarper: typical_p"):
        split_processors([lp.TypicalLogitsWarper(0.9)])


def test_refusals_name_the_option(models):
    target, draft = models
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="logits_processor holds warpers"):
        specsampler.generate(target, draft, ids, mask, max_new_tokens=2, logits_processor=[lp.TopKLogitsWarper(3)])
    with pytest.raises(ValueError, match="typical_p"):
        specsampler.generate(target, draft, ids, mask, max_new_tokens=2, do_sample=True, typical_p=0.5)
