"""The transformers drop-ins: patch_transformers (generate(assistant_model=...) at any batch size, and assisted
generation verifying with specsampler) and the custom_generate callable (batched speculative decoding inside
model.generate)."""

from __future__ import annotations

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

import transformers.generation.utils as tf_utils  # noqa: E402
from transformers.generation.logits_process import TopKLogitsWarper  # noqa: E402
from transformers.generation.utils import GenerationMixin  # noqa: E402

import specsampler  # noqa: E402
import specsampler.hf as hf  # noqa: E402

transformers.logging.set_verbosity_error()
V = 64
INSTALLED = inspect.signature(tf_utils._speculative_sampling).parameters


@pytest.fixture(autouse=True)
def _clean():
    """Every test starts and ends unpatched, on one thread (tiny models)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf.unpatch_transformers()
    yield
    hf.unpatch_transformers()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    target = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    draft = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    draft.load_state_dict(target.state_dict())
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.005 * torch.randn_like(p))
    return target, draft


# ------------------------------------------------------------------------------------------------- patching
def test_patch_is_idempotent_and_revertible():
    original = tf_utils._speculative_sampling
    original_generate = GenerationMixin.generate
    specsampler.patch_transformers()
    wrapper = tf_utils._speculative_sampling
    assert wrapper is not original and hf.is_patched()
    assert GenerationMixin.generate is not original_generate
    assert inspect.signature(wrapper) == inspect.signature(original)
    assert inspect.signature(GenerationMixin.generate) == inspect.signature(original_generate)
    specsampler.patch_transformers()
    assert tf_utils._speculative_sampling is wrapper  # no wrapper around the wrapper
    specsampler.unpatch_transformers()
    assert tf_utils._speculative_sampling is original and GenerationMixin.generate is original_generate
    specsampler.unpatch_transformers()
    assert tf_utils._speculative_sampling is original
    with specsampler.patched_transformers():
        assert hf.is_patched()
    assert tf_utils._speculative_sampling is original
    specsampler.patch_transformers()  # a block inside an existing patch leaves it in place
    with specsampler.patched_transformers():
        pass
    assert hf.is_patched()


def _case():
    """transformers' own test case: vocabulary 10, candidates [1, 4, 5]; the target accepts 1 and 4, rejects 5 and
    can only produce 8 instead."""
    inf = float("inf")
    ids = torch.tensor([[8, 0, 3, 9, 8, 1, 4, 5]])
    cand = torch.full((1, 3, 10), -10.0)
    for i, t in enumerate([1, 4, 5]):
        cand[0, i, t] = 10.0
    new = torch.full((1, 4, 10), -10.0)
    new[0, 0, 1] = new[0, 1, 4] = 10.0
    new[0, 2] = -inf
    new[0, 2, 8] = 10.0
    return ids, cand, 3, new


def _args(is_done=False):
    ids, cand, length, new = _case()
    args = [ids, cand, length, new]
    if "is_done_candidate" in INSTALLED:
        args.append(is_done)
    return args


def test_patched_speculative_sampling_on_transformers_case():
    with specsampler.patched_transformers():
        tokens, n_matches = tf_utils._speculative_sampling(*_args())
    assert tokens.tolist() == [[1, 4, 8]] and int(n_matches) == 2
    assert isinstance(n_matches, torch.Tensor) and n_matches.numel() == 1


def _all_accepted_case():
    ids, cand, length, new = _case()
    new[0, 2] = -10.0
    new[0, 2, 5] = 10.0  # now 5 is accepted too
    new[0, 3, 7] = 10.0  # bonus 7
    return ids, cand, length, new


def _fake(signature_src):
    """A stand-in for one transformers version's _speculative_sampling that records its calls."""
    calls = []
    scope = {"calls": calls}
    exec(f"def _speculative_sampling{signature_src}:\n    calls.append(1)\n    return 'original', None", scope)
    return scope["_speculative_sampling"], calls


SIGNATURES = {
    "4.57-5.12": "(candidate_input_ids, candidate_logits, candidate_length, new_logits, is_done_candidate)",
    "5.16": "(candidate_input_ids, candidate_logits, candidate_length, new_logits, is_done_candidate, "
            "assistant_ensemble_weight=None)",
    "5.18+": "(candidate_input_ids, candidate_logits, candidate_length, new_logits, assistant_ensemble_weight=None)",
}


@pytest.mark.parametrize("version", SIGNATURES)
def test_wrapper_each_signature(version):
    fake, calls = _fake(SIGNATURES[version])
    wrapper = hf._make_wrapper(fake)
    assert inspect.signature(wrapper) == inspect.signature(fake)
    has_done = "is_done_candidate" in SIGNATURES[version]
    ids, cand, length, new = _all_accepted_case()
    extra = [False] if has_done else []
    tokens, n = wrapper(ids, cand, length, new, *extra)
    assert tokens.tolist() == [[1, 4, 5, 7]] and int(n) == 3  # all accepted, bonus token
    if has_done:  # the last candidate ends the sequence: no bonus token
        tokens, n = wrapper(ids, cand, length, new, True)
        assert tokens.tolist() == [[1, 4, 5]] and int(n) == 2
        tokens, n = wrapper(*_case(), is_done_candidate=True)  # a rejection: as usual
        assert tokens.tolist() == [[1, 4, 8]] and int(n) == 2
    assert calls == []
    if "assistant_ensemble_weight" in SIGNATURES[version]:
        assert wrapper(ids, cand, length, new, *extra, assistant_ensemble_weight=0.5) == ("original", None)
        assert calls == [1]


@pytest.fixture
def verify_calls(monkeypatch):
    """The number of drafts of every call to specsampler.verify made through the patch (the batched path, or
    transformers' own assisted generation's verify step)."""
    from specsampler.generation import loop

    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1].shape[1])
        return specsampler.verify(*args, **kwargs)

    monkeypatch.setattr(hf, "verify", spy)
    monkeypatch.setattr(loop, "verify", spy)
    return calls


def test_assisted_generation_uses_specsampler(models, verify_calls):
    target, draft = models
    prompt = torch.tensor([[5, 9, 13, 2, 40]])
    with specsampler.patched_transformers():
        torch.manual_seed(0)
        out = target.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=draft, do_sample=True,
                              max_new_tokens=12, top_k=20, pad_token_id=0, eos_token_id=None)
    assert out.shape == (1, 17) and int(out.max()) < V
    assert verify_calls  # transformers called the wrapper


def test_sampled_first_token_follows_target_through_transformers(models, verify_calls):
    """transformers' assisted generation, patched: the first new token's frequencies against p (chi-square)."""
    target, draft = models
    prompt = torch.tensor([[5, 9, 13, 2, 40]])
    with torch.no_grad():
        logits = target(prompt).logits[0, -1].float()
    p = TopKLogitsWarper(3)(None, logits[None])[0].softmax(-1)  # top_k=3: 3 cells
    counts = torch.zeros(V)
    torch.manual_seed(0)
    with specsampler.patched_transformers():
        for _ in range(150):
            out = target.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=draft,
                                  do_sample=True, max_new_tokens=2, top_k=3, pad_token_id=0, eos_token_id=None)
            counts[out[0, prompt.shape[1]]] += 1
    assert len(verify_calls) >= 150 and max(verify_calls) >= 1  # every first token went through specsampler
    assert counts[p == 0].sum() == 0
    expected = p[p > 0] * counts.sum()
    stat = ((counts[p > 0] - expected) ** 2 / expected).sum()
    df = int((p > 0).sum()) - 1
    assert float(torch.special.gammaincc(torch.tensor(df / 2.0), stat / 2)) > 1e-4


# ------------------------------------------------------------------------------------------------ custom_generate
def _prompts():
    ids = torch.tensor([[0, 0, 0, 7, 8, 9], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 11, 12]])
    return ids, (torch.arange(6)[None] >= torch.tensor([[3], [0], [4]])).long()


def test_custom_generate_greedy_batched(models):
    target, draft = models
    ids, mask = _prompts()
    out = target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                          draft_model=draft, num_draft_tokens=3, max_new_tokens=10, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    ref = specsampler.generate(target, draft, ids, mask, max_new_tokens=10, num_draft_tokens=3, eos_token_id=[],
                               pad_token_id=0)
    assert torch.equal(out, ref.sequences)
    for b in range(3):
        row = ids[b, mask[b].bool()][None]
        alone = target.generate(row, attention_mask=torch.ones_like(row), do_sample=False, max_new_tokens=10,
                                pad_token_id=0, eos_token_id=None)
        assert out[b, 6:].tolist() == alone[0, row.shape[1]:].tolist()


def test_custom_generate_sampling_and_return_dict(models):
    target, draft = models
    ids, mask = _prompts()
    out = target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                          draft_model=draft, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=10, top_p=0.9,
                          seed=3, pad_token_id=0, eos_token_id=None, return_dict_in_generate=True)
    assert out.sequences.shape == (3, 14) and torch.equal(out.sequences[:, :6], ids)
    again = target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                            draft_model=draft, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=10,
                            top_p=0.9, seed=3, pad_token_id=0, eos_token_id=None)
    assert torch.equal(again, out.sequences)  # seeded


def test_custom_generate_reads_min_p(models, monkeypatch):
    """The warpers transformers prepared, min-p included, reach specsampler.generate as its options; the other
    processors as processors."""
    from specsampler.generation import api

    target, draft = models
    ids, mask = _prompts()
    seen = []
    real = api.run
    monkeypatch.setattr(api, "run", lambda *a, **kw: seen.append(dict(kw, sampling=a[4].sampling)) or real(*a, **kw))
    kw = dict(attention_mask=mask, custom_generate=specsampler.speculative_generate, draft_model=draft,
              max_new_tokens=6, do_sample=True, temperature=0.9, top_k=12, min_p=0.05, seed=2, pad_token_id=0,
              eos_token_id=None)
    out = target.generate(ids, **kw)
    assert seen[0]["sampling"] == dict(temperature=0.9, top_k=12, top_p=None, min_p=0.05)
    assert seen[0]["processors"] == []
    assert out.shape == (3, 12) and torch.equal(target.generate(ids, **kw), out)  # seeded
    target.generate(ids, **kw, repetition_penalty=1.2)
    assert [type(p).__name__ for p in seen[-1]["processors"]] == ["RepetitionPenaltyLogitsProcessor"]


@pytest.mark.parametrize("value, schedule", [(None, "constant"), ("heuristic", "heuristic"),
                                             ("heuristic_transient", "heuristic"), ("cost", "cost")])
def test_draft_length_schedule_reaches_specsampler(models, monkeypatch, value, schedule):
    """num_assistant_tokens_schedule given to generate (patched, or custom_generate) is the schedule specsampler
    runs; greedy output stays plain generate's; an unknown value raises naming the option."""
    from specsampler.generation import api

    target, draft = models
    ids, mask = _prompts()
    seen = []
    real = api.run
    monkeypatch.setattr(api, "run", lambda *a, **kw: seen.append(a[4].schedule) or real(*a, **kw))
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    extra = {} if value is None else dict(num_assistant_tokens_schedule=value)
    plain = target.generate(ids, **kw)
    with specsampler.patched_transformers():
        out = target.generate(ids, assistant_model=draft, **kw, **extra)
    assert torch.equal(out, plain) and seen == [schedule]
    out = target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, **kw, **extra)
    assert torch.equal(out, plain) and seen == [schedule, schedule]
    if value == "cost":
        with pytest.raises(ValueError, match="num_assistant_tokens_schedule"):
            target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, **kw,
                            num_assistant_tokens_schedule="dynamic")


def test_custom_generate_prompt_lookup(models, monkeypatch):
    """prompt_lookup_num_tokens=N drafts by prompt lookup with K = N; greedy output equals plain generate."""
    from specsampler.generation import api

    target, _ = models
    ids = torch.tensor([[4, 5, 6, 4, 5, 6, 4, 5]])
    seen = []
    real = api.run
    monkeypatch.setattr(api, "run", lambda *a, **kw: seen.append((a, kw)) or real(*a, **kw))
    out = target.generate(ids, custom_generate=specsampler.speculative_generate, prompt_lookup_num_tokens=3,
                          max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = target.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(out, ref)
    assert isinstance(seen[0][0][1], specsampler.PromptLookupDrafter) and seen[0][0][4].num_draft_tokens == 3


def test_custom_generate_without_a_drafter_says_why(models):
    """No draft_model and no prompt_lookup_num_tokens: an error, never a silent fallback; assistant_model= (which
    generate keeps for itself) is named, with what to pass instead."""
    target, draft = models
    ids = torch.tensor([[4, 5, 6, 4, 5, 6, 4, 5]])
    for extra in ({}, {"assistant_model": draft}):
        with pytest.raises(ValueError, match="needs a drafter: pass draft_model=.*assistant_model=.*"
                                             "prompt_lookup_num_tokens"):
            target.generate(ids, custom_generate=specsampler.speculative_generate, max_new_tokens=4,
                            do_sample=False, pad_token_id=0, eos_token_id=None, **extra)


def test_custom_generate_honours_the_prepared_stopping_criteria(models):
    """The stopping criteria transformers prepared (here a caller's own: stop after token 9 appears) cut a row at the
    first token where one fires; greedy output equals plain generate with the same criteria, row by row."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAfter(StoppingCriteria):
        def __init__(self, token):
            self.token = token

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, -1] == self.token).to(torch.bool)

    target, draft = models
    ids, mask = _prompts()
    plain = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                            eos_token_id=None)
    stop_token = int(plain[0, 9])  # a token the first row emits midway
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None,
              stopping_criteria=StoppingCriteriaList([StopAfter(stop_token)]))
    for b in range(3):
        row = ids[b, mask[b].bool()][None]
        ours = target.generate(row, custom_generate=specsampler.speculative_generate, draft_model=draft,
                               num_draft_tokens=3, **kw)
        ref = target.generate(row, **kw)
        assert ours.tolist() == ref.tolist()


@pytest.mark.parametrize("option", [dict(typical_p=0.9, do_sample=True), dict(num_beams=2),
                                    dict(output_attentions=True, return_dict_in_generate=True),
                                    dict(dola_layers="low"),
                                    dict(penalty_alpha=0.6, top_k=4), dict(guidance_scale=1.5)])
def test_refuses_what_it_cannot_apply(models, option):
    """Options the generation config carries that specsampler does not apply (a warper after min-p, beams, attentions
    in the output, DoLa, contrastive search, guidance) raise a ValueError naming them, through custom_generate and
    through the patched generate alike."""
    target, draft = models
    ids, mask = _prompts()
    name = next(iter(option))
    kw = dict(attention_mask=mask, max_new_tokens=4, pad_token_id=0, eos_token_id=None, **option)
    with pytest.raises(ValueError, match=f"does not support {name}="):
        target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, **kw)
    with specsampler.patched_transformers(), pytest.raises(ValueError, match=f"does not support {name}="):
        target.generate(ids, assistant_model=draft, **kw)


def test_warper_values_get_the_resolvers_check_and_message(models):
    """top_p=1.5: transformers builds no TopPLogitsWarper for top_p >= 1, so the value passed custom_generate and the
    patched generate unchecked; now it gets specsampler.generate's check and message (issue 29, item 1)."""
    target, draft = models
    ids, mask = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=4, pad_token_id=0, eos_token_id=None, do_sample=True, top_p=1.5)
    message = r"^top_p must be a number in \[0, 1\] \(1: off\), got 1.5$"
    with pytest.raises(ValueError, match=message):
        specsampler.generate(target, draft, ids, **kw)
    with pytest.raises(ValueError, match=message):
        target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, **kw)
    with specsampler.patched_transformers(), pytest.raises(ValueError, match=message):
        target.generate(ids, assistant_model=draft, **kw)


# ------------------------------------------------------------------------------- the patched generate, any batch
@pytest.mark.parametrize("drafter", ["assistant_model", "prompt_lookup_num_tokens"])
def test_patched_generate_runs_batches(models, verify_calls, drafter):
    """Under the patch, generate(batch, assistant_model=draft) and generate(batch, prompt_lookup_num_tokens=3) run
    specsampler's batched decoding (transformers alone refuses B > 1); greedy rows equal plain generate."""
    target, draft = models
    ids, mask = _prompts()
    extra = dict(assistant_model=draft) if drafter == "assistant_model" else dict(prompt_lookup_num_tokens=3)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with pytest.raises(ValueError, match="batch"):
        target.generate(ids, attention_mask=mask, **extra, **kw)  # transformers' own assisted generation: B = 1
    with specsampler.patched_transformers():
        out = target.generate(ids, attention_mask=mask, **extra, **kw)
    assert verify_calls
    plain = target.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(out, plain)


@pytest.mark.parametrize("drafter", ["assistant_model", "prompt_lookup_num_tokens"])
def test_patched_generate_takes_verify_method(models, drafter):
    """verify_method= (specsampler's own keyword) passes through the patched generate and custom_generate alike:
    greedy rows equal plain generate with "block"; a sampled call with a seed repeats itself."""
    target, draft = models
    ids, mask = _prompts()
    extra = dict(assistant_model=draft) if drafter == "assistant_model" else dict(prompt_lookup_num_tokens=3)
    kw = dict(attention_mask=mask, max_new_tokens=8, pad_token_id=0, eos_token_id=None)
    plain = target.generate(ids, do_sample=False, **kw)
    with specsampler.patched_transformers():
        out = target.generate(ids, do_sample=False, verify_method="block", **extra, **kw)
        sampled = [target.generate(ids, do_sample=True, top_k=10, seed=4, verify_method="block", **extra, **kw)
                   for _ in range(2)]
    assert torch.equal(out, plain)
    assert sampled[0].shape == (3, 14) and torch.equal(sampled[0], sampled[1])
    custom = dict(draft_model=draft) if drafter == "assistant_model" else dict(prompt_lookup_num_tokens=3)
    out = target.generate(ids, custom_generate=specsampler.speculative_generate, do_sample=False,
                          verify_method="block", **custom, **kw)
    assert torch.equal(out, plain)


def test_patched_generate_sampling_and_streamer(models):
    """A sampled batch runs; one row streams exactly the tokens of its result, then end()."""
    from transformers.generation.streamers import BaseStreamer

    class Recorder(BaseStreamer):
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    target, draft = models
    ids, mask = _prompts()
    with specsampler.patched_transformers():
        torch.manual_seed(0)
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, do_sample=True, top_k=10,
                              max_new_tokens=8, pad_token_id=0, eos_token_id=None)
        assert out.shape == (3, 14) and torch.equal(out[:, :6], ids)
        rec = Recorder()
        row = ids[1:2]
        one = target.generate(row, assistant_model=draft, do_sample=True, top_k=10, max_new_tokens=8,
                              pad_token_id=0, eos_token_id=None, streamer=rec)
    assert rec.ended and rec.puts[0] == row[0].tolist()
    assert sum(rec.puts[1:], []) == one[0, row.shape[1]:].tolist()


def test_extra_fields_of_a_models_generation_config_are_left_alone(models):
    """A field GenerationConfig does not define (a model's own) decides nothing in generate: it is not refused."""
    target, draft = models
    ids, mask = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    target.generation_config.chat_format = "chatml"
    try:
        with specsampler.patched_transformers():
            out = target.generate(ids, assistant_model=draft, **kw)
    finally:
        del target.generation_config.chat_format
    assert out.tolist() == target.generate(ids, **kw).tolist()
