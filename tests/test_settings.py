"""One resolver for every entry point (generation/settings.py), and the defects that three resolvers grew: each test
below failed on 5b60d60, where generate, the patched generate / speculative_generate and the CLI resolved options
each their own way."""

import pytest

pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from util import char_tokenizer, perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler.generation import api  # noqa: E402
from specsampler.generation.settings import check_option, resolve_settings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

V = 64
SMALL_V = 60  # a draft vocabulary smaller than the target's
KW = dict(max_new_tokens=8, eos_token_id=[], pad_token_id=0)


@pytest.fixture(scope="module")
def models():
    target = tiny_model(tiny_config("llama", V), 0)
    return target, perturbed(target, 0.005)


@pytest.fixture(scope="module")
def small_draft(models):
    """A draft of SMALL_V ids: the target's weights without its last rows of embeddings and output layer."""
    target = models[0]
    draft = tiny_model(tiny_config("llama", SMALL_V), 0)
    state = {name: (w[:SMALL_V] if "embed_tokens" in name or "lm_head" in name else w)
             for name, w in target.state_dict().items()}
    draft.load_state_dict(state)
    return draft


def _prompts():
    g = torch.Generator().manual_seed(5)
    return torch.randint(1, V, (2, 6), generator=g)


def _plain(target, ids, **kw):
    return target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                           eos_token_id=None, pad_token_id=0, **kw)


# ---------------------------------------------------------------------------- 1: a draft with a smaller vocabulary
@pytest.mark.parametrize("option", [
    dict(bad_words_ids=[[3], [62], [7, 9]]),
    dict(sequence_bias={(5,): -3.0, (61,): 4.0, (2, 62): 3.0}),
    dict(prefix_allowed_tokens_fn=lambda batch_id, ids: [2, 5, 11, 61, 62, 63]),
])
def test_smaller_draft_vocabulary_with_processors(models, small_draft, option):
    """Processors built for the target's V (bad words, sequence bias, allowed tokens, ids past the draft's vocabulary
    included) apply to a draft of fewer ids: greedy output equals plain generate, through specsampler.generate and the
    patched generate; sampling runs and never emits a refused id."""
    target = models[0]
    ids = _prompts()
    ref = _plain(target, ids, **option)
    out = specsampler.generate(target, small_draft, ids, **KW, **option)
    assert torch.equal(out.sequences, ref)
    with specsampler.patched_transformers():
        patched = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=small_draft,
                                  do_sample=False, max_new_tokens=8, eos_token_id=None, pad_token_id=0, **option)
    assert torch.equal(patched, ref)
    sampled = specsampler.generate(target, small_draft, ids, **KW, **option, do_sample=True, seed=3)
    new = sampled.sequences[:, ids.shape[1]:]
    assert bool(((new >= 0) & (new < V)).all())
    if "bad_words_ids" in option:
        assert not bool(((new == 3) | (new == 62)).any())
    if "prefix_allowed_tokens_fn" in option:
        assert set(new.flatten().tolist()) <= {2, 5, 11, 61, 62, 63}


# ---------------------------------------------------------------------------------------- 2: encoder-decoder models
def test_encoder_decoder_models_are_refused(models):
    """An encoder-decoder model (target or draft) raises a ValueError naming it, through generate and
    custom_generate; the patched generate leaves it to transformers' own assisted generation."""
    cfg = transformers.T5Config(vocab_size=V, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    t5 = transformers.T5ForConditionalGeneration(cfg).eval()
    ids = _prompts()
    with pytest.raises(ValueError, match="encoder-decoder"):
        specsampler.generate(t5, t5, ids, max_new_tokens=3)
    with pytest.raises(ValueError, match="draft .*encoder-decoder"):
        specsampler.generate(models[0], t5, ids, max_new_tokens=3)
    with pytest.raises(ValueError, match="encoder-decoder"):
        t5.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=t5, max_new_tokens=3)
    plain = t5.generate(ids[:1], max_new_tokens=3, do_sample=False)
    with specsampler.patched_transformers():
        assert torch.equal(t5.generate(ids[:1], assistant_model=t5, max_new_tokens=3, do_sample=False), plain)


# ---------------------------------------------------------------------- 3: stop_strings with tokenizer= in the patch
def test_stop_strings_with_tokenizer_through_the_patch(models):
    """stop_strings with tokenizer= through the patched generate (assistant_model= and custom_generate=) equals plain
    generate (transformers 5.25 does not hand the tokenizer to a custom_generate callable: the patch builds the
    criterion itself)."""
    target, draft = models
    tok = char_tokenizer(V)
    ids = _prompts()[:1]
    free = _plain(target, ids)
    stop = tok.decode(free[0, ids.shape[1] + 3: ids.shape[1] + 5])
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8, eos_token_id=None,
              pad_token_id=0, stop_strings=[stop], tokenizer=tok)
    ref = target.generate(ids, **kw)
    assert ref.shape[1] < free.shape[1]
    with specsampler.patched_transformers():
        assert torch.equal(target.generate(ids, assistant_model=draft, **kw), ref)
        assert torch.equal(target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft,
                                           **kw), ref)


def test_stop_strings_with_tokenizer_through_custom_generate_without_the_patch(models):
    """Issue 29, defect 3: custom_generate=speculative_generate with stop_strings= and tokenizer=, unpatched, equals
    plain generate (it raised transformers' "could not locate a tokenizer": transformers drops tokenizer= on
    the way to a custom_generate callable); another custom_generate callable is left as transformers treats it."""
    target, draft = models
    tok = char_tokenizer(V)
    ids = _prompts()[:1]
    specsampler.unpatch_transformers()
    free = _plain(target, ids)
    stop = tok.decode(free[0, ids.shape[1] + 3: ids.shape[1] + 5])
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8, eos_token_id=None,
              pad_token_id=0, stop_strings=[stop], tokenizer=tok)
    ref = target.generate(ids, **kw)
    assert ref.shape[1] < free.shape[1]
    out = target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, **kw)
    assert torch.equal(out, ref)

    def other(model, input_ids, tokenizer=None, **rest):  # a callable of someone else's
        return input_ids

    with pytest.raises(ValueError, match="could not locate a tokenizer"):
        target.generate(ids, custom_generate=other, **kw)


# -------------------------------------------------------------------------------- 5, 6, 7: options and their checks
def test_numpy_seed(models):
    target, draft = models
    ids = _prompts()
    a = specsampler.generate(target, draft, ids, **KW, do_sample=True, seed=np.int64(3))
    b = specsampler.generate(target, draft, ids, **KW, do_sample=True, seed=3)
    assert torch.equal(a.sequences, b.sequences)


def test_top_p_zero_keeps_the_most_likely_token(models):
    """top_p=0 keeps one token, as transformers' TopPLogitsWarper does (verify and sample take it too): sampling
    with it is greedy decoding."""
    target, draft = models
    ids = _prompts()
    out = specsampler.generate(target, draft, ids, **KW, do_sample=True, top_p=0.0, seed=1)
    assert torch.equal(out.sequences, _plain(target, ids))
    assert check_option("top_p", 0) == 0.0


def test_draft_length_named_as_given(models):
    """num_assistant_tokens out of range raises naming num_assistant_tokens wherever it comes from: generate's
    argument, the patched generate (before: silently 4), custom_generate."""
    target, draft = models
    ids = _prompts()
    for bad in (0, -2):
        with pytest.raises(ValueError, match="num_assistant_tokens"):
            specsampler.generate(target, draft, ids, num_assistant_tokens=bad, **KW)
        with specsampler.patched_transformers(), pytest.raises(ValueError, match="num_assistant_tokens"):
            target.generate(ids, assistant_model=draft, num_assistant_tokens=bad, max_new_tokens=4)
        with pytest.raises(ValueError, match="num_assistant_tokens"):
            target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft,
                            num_assistant_tokens=bad, max_new_tokens=4)


def test_patched_prompt_lookup_takes_max_matching_ngram_size(models, monkeypatch):
    target, _ = models
    ids = torch.tensor([[4, 5, 6, 4, 5, 6, 4, 5]])
    seen = []
    real = api.run
    monkeypatch.setattr(api, "run", lambda *a, **kw: seen.append(a[1]) or real(*a, **kw))
    with specsampler.patched_transformers():
        out = target.generate(ids, prompt_lookup_num_tokens=3, max_matching_ngram_size=2, max_new_tokens=6,
                              do_sample=False, pad_token_id=0, eos_token_id=None)
    assert seen[0].max_ngram == 2
    assert torch.equal(out, target.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                                            eos_token_id=None))


def test_resolver_defaults_as_model_generate(models):
    """A model config that samples and leaves top_k unset gets transformers' top_k 50, as target.generate applies
    it; the pad id is the config's (else the first EOS id); each value says where it came from."""
    target = models[0]
    cfg = transformers.GenerationConfig(do_sample=True, temperature=0.7, eos_token_id=[9, 4])
    s = resolve_settings(target, cfg, max_new_tokens=4, draft=False)
    assert (s.do_sample, s.temperature, s.top_k, s.top_p) == (True, 0.7, 50, None)
    assert s.eos_token_ids == [9, 4] and s.pad_token_id == 9
    assert s.sources["temperature"] == "generation_config" and s.sources["top_k"] == "default"
    assert s.sampling == dict(temperature=0.7, top_k=50, top_p=None, min_p=None)
    ref, _ = target._prepare_generation_config(cfg)
    assert ref.top_k == s.top_k and ref.temperature == s.temperature


@pytest.mark.parametrize("mask, match", [(torch.ones(2, 5, dtype=torch.long), r"attention_mask .*\(2, 6\)"),
                                         ([[1] * 6] * 2, "attention_mask")])
def test_attention_mask_of_the_wrong_shape(models, mask, match):
    target, draft = models
    with pytest.raises(ValueError, match=match):
        specsampler.generate(target, draft, _prompts(), mask, **KW)


# ------------------------------------------------------------------------------------- 8: stopping checks, linear
def test_stopping_criteria_see_views_of_one_buffer(models):
    """Each row's checks get [1, L] views of one preallocated buffer, one token longer per check (a new tensor per
    token and criterion made a row's checks quadratic in its length), and the output is unchanged."""
    target, draft = models
    ids = _prompts()
    seen = []

    class Record(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            seen.append((input_ids.shape, input_ids.untyped_storage().data_ptr()))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    crits = transformers.StoppingCriteriaList([Record()])
    out = specsampler.generate(target, draft, ids, **KW, stopping_criteria=crits)
    assert torch.equal(out.sequences, _plain(target, ids))
    assert len(seen) == 2 * 8 and len({ptr for _, ptr in seen}) == 1
    assert sorted(shape[1] for shape, _ in seen) == sorted(list(range(7, 15)) * 2)


# ------------------------------------------------------------------------------------ 10: gaps mutation testing found
def test_eos_as_the_bonus_token_after_accepted_drafts(models):
    """With the target as its own draft every step accepts all K drafts; an EOS id that first appears as the first
    step's bonus token (after K_b = 3 accepted drafts) ends the row right there, as in plain generate."""
    target, _ = models
    k = 3
    for seed in range(50):  # the first prompt whose bonus token is new
        ids = torch.randint(1, V, (1, 6), generator=torch.Generator().manual_seed(seed))
        free = _plain(target, ids)[0, ids.shape[1]:].tolist()
        if free[k] not in free[:k]:
            break
    assert free[k] not in free[:k], free
    out = specsampler.generate(target, target, ids, max_new_tokens=8, num_draft_tokens=k, eos_token_id=free[k],
                               pad_token_id=0)
    assert out.sequences[0, ids.shape[1]:].tolist() == free[:k + 1]
    assert out.stats.target_forwards == 1 and out.stats.accepted == k


@pytest.mark.parametrize("temperature", [0.3, 0.5, 1.6, 3.0])
def test_draft_sampled_at_the_call_temperature(models, monkeypatch, temperature):
    """Every draft is drawn at the call's temperature and verify gets the same one (a draft drawn at another
    temperature than verify's q would bias the output)."""
    from specsampler.generation import drafters, loop

    target, draft = models
    samples, verifies = [], []
    monkeypatch.setattr(drafters, "sample", lambda logits, **kw: samples.append(kw) or specsampler.sample(logits, **kw))
    monkeypatch.setattr(loop, "verify", lambda *a, **kw: verifies.append(kw) or specsampler.verify(*a, **kw))
    specsampler.generate(target, draft, _prompts(), **KW, do_sample=True, temperature=temperature, seed=2)
    assert samples and all(kw["temperature"] == temperature for kw in samples)
    assert verifies and all(kw["temperature"] == temperature for kw in verifies)


def test_draft_positions_processed_with_their_own_prefix(models, monkeypatch):
    """The draft's i-th forward is processed with the row and the i - 1 drafts before it: under a processor that
    bans repeating the prefix's last token, no greedy draft repeats the token before it (the draft model alone would:
    these tiny models repeat tokens). A wrong prefix leaves the output exact (q stays what the drafts were drawn
    from), so only the drafts can show it."""
    from specsampler.generation.drafters import DraftModel

    class NoRepeat(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[torch.arange(scores.shape[0]), input_ids[:, -1]] = -float("inf")
            return scores

    target, draft = models
    ids = torch.tensor([[7, 7, 7, 7, 7, 7], [3, 9, 3, 9, 3, 9]])
    proposals, propose = [], DraftModel.propose
    monkeypatch.setattr(DraftModel, "propose",
                        lambda self, last, limits: proposals.append((last, propose(self, last, limits))) or
                        proposals[-1][1])
    out = specsampler.generate(target, draft, ids, max_new_tokens=12, num_draft_tokens=4, eos_token_id=[],
                               pad_token_id=0, logits_processor=[NoRepeat()])
    assert torch.equal(out.sequences, target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                      max_new_tokens=12, eos_token_id=None, pad_token_id=0,
                                                      logits_processor=[NoRepeat()]))
    repeats = 0
    for last, proposal in proposals:
        chain = torch.cat([last[:, None], proposal.drafts], dim=1)
        for b, count in enumerate(proposal.counts):
            repeats += int((chain[b, 1:count + 1] == chain[b, :count]).sum())
    assert proposals and repeats == 0


# ---------------------------------------------------------------------- verify_method: one option, every entry point
@pytest.mark.parametrize("value, want", [(None, "token"), ("token", "token"), ("block", "block")])
def test_verify_method_resolved(models, value, want):
    """specsampler's own option: None means "token"; the resolver keeps it on the Settings."""
    target, draft = models
    assert resolve_settings(target, draft=draft, verify_method=value, max_new_tokens=4).verify_method == want
    assert check_option("verify_method", "block") == "block"


@pytest.mark.parametrize("value", ["blok", "Block", "", 1, True])
def test_verify_method_refused_by_name(models, value):
    """A bad verify_method raises a ValueError naming the option, at every entry point, before any step runs."""
    target, draft = models
    ids = _prompts()
    with pytest.raises(ValueError, match="verify_method must be 'token', 'block' or 'traversal'"):
        resolve_settings(target, draft=draft, verify_method=value, max_new_tokens=4)
    with pytest.raises(ValueError, match="verify_method"):
        specsampler.generate(target, draft, ids, verify_method=value, **KW)
    with pytest.raises(ValueError, match="verify_method"):
        target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft,
                        verify_method=value, **KW)
    with specsampler.patched_transformers(), pytest.raises(ValueError, match="verify_method"):
        target.generate(ids, assistant_model=draft, verify_method=value, **KW)


@pytest.mark.parametrize("entry", ["generate", "custom_generate", "patched", "lookup"])
@pytest.mark.parametrize("method", [None, "token", "block"])
def test_verify_method_reaches_verify(models, monkeypatch, entry, method):
    """Each entry point hands its verify_method to specsampler.verify at every step ("token" when not given),
    sampled and greedy alike, with a draft model and with prompt lookup's one-hot drafts."""
    from specsampler.generation import loop

    target, draft = models
    seen = []
    monkeypatch.setattr(loop, "verify", lambda *a, **kw: seen.append(kw["method"]) or specsampler.verify(*a, **kw))
    given = {} if method is None else dict(verify_method=method)
    kw = dict(KW, do_sample=True, seed=2, **given)
    ids = _prompts()
    if entry == "generate":
        specsampler.generate(target, draft, ids, **kw)
    elif entry == "lookup":
        specsampler.generate(target, None, ids, prompt_lookup_num_tokens=3, **kw)
    elif entry == "custom_generate":
        target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, **kw)
    else:
        with specsampler.patched_transformers():
            target.generate(ids, assistant_model=draft, **kw)
    assert seen and set(seen) == {method or "token"}


@pytest.mark.parametrize("returns_dict, given, want", [
    (True, dict(output_scores=True), (True, False)),
    (True, dict(output_logits=True, return_dict_in_generate=False), (False, True)),
    (False, dict(output_scores=True, output_logits=True), (False, False)),
    (False, dict(output_scores=True, return_dict_in_generate=True), (True, False)),
    (True, {}, (False, False)),
])
def test_outputs_resolved(models, returns_dict, given, want):
    """output_scores / output_logits ask for the outputs where the entry point always returns an output object
    (specsampler.generate); elsewhere only with return_dict_in_generate, as in transformers."""
    target, draft = models
    s = resolve_settings(target, draft=draft, max_new_tokens=4, returns_dict=returns_dict, **given)
    assert (s.output_scores, s.output_logits) == want


def test_output_option_types_refused_by_name(models):
    target, draft = models
    with pytest.raises(ValueError, match="output_scores"):
        resolve_settings(target, draft=draft, max_new_tokens=4, output_scores="yes")


# ------------------------------------------------------------ token trees: resolved once, refused by name everywhere
def test_tree_options_resolved(models):
    """draft_tree (a list too) becomes a tuple and the depth K; draft_tree_sampling defaults to "top" when greedy;
    prompt_lookup_num_candidates defaults to 1 (the chain) and needs prompt lookup."""
    target, draft = models
    s = resolve_settings(target, draft=draft, draft_tree=[3, 2, 1], max_new_tokens=4)
    assert (s.draft_tree, s.num_draft_tokens, s.draft_tree_sampling, s.lookup_candidates, s.tree) == \
        ((3, 2, 1), 3, "top", 1, True)
    s = resolve_settings(target, draft=draft, max_new_tokens=4)
    assert (s.draft_tree, s.lookup_candidates, s.tree) == (None, 1, False)
    s = resolve_settings(target, prompt_lookup_num_tokens=5, prompt_lookup_num_candidates=3, max_new_tokens=4)
    assert (s.num_draft_tokens, s.lookup_candidates, s.tree) == (5, 3, True)
    s = resolve_settings(target, prompt_lookup_num_tokens=5, prompt_lookup_num_candidates=1, max_new_tokens=4)
    assert not s.tree


def test_tree_candidates_default_to_draws_without_replacement_when_sampling(models):
    """Sampled trees draw their candidates without replacement unless pruned or capped (which keep top candidates);
    greedy trees take the top tokens; a value given is kept."""
    target, draft = models
    resolve = lambda **kw: resolve_settings(target, draft=draft, draft_tree=(2, 2), max_new_tokens=4,  # noqa: E731
                                            **kw).draft_tree_sampling
    assert resolve(do_sample=True) == "without_replacement"
    assert resolve(do_sample=False) == "top"
    assert resolve(do_sample=True, draft_tree_budget=4) == "top"
    assert resolve(do_sample=True, draft_tree_min_prob=0.01) == "top"
    assert resolve(do_sample=True, draft_tree_sampling="iid") == "iid"
    assert resolve(do_sample=True, draft_tree_sampling="top") == "top"


def test_tree_options_refused_by_name_at_every_entry_point(models):
    target, draft = models
    ids = _prompts()
    with pytest.raises(ValueError, match="draft_tree=.*replaces num_draft_tokens"):
        specsampler.generate(target, draft, ids, draft_tree=(2, 2), num_draft_tokens=2, **KW)
    with pytest.raises(ValueError, match=r"draft_tree\[0\] must be an integer >= 1"):
        target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, draft_tree=(0,),
                        **KW)
    with specsampler.patched_transformers(), pytest.raises(ValueError, match="draft_tree_sampling must be"):
        target.generate(ids, assistant_model=draft, draft_tree=(2,), draft_tree_sampling="any", **KW)


def test_draft_tree_min_prob_resolved_and_refused_by_name(models):
    """draft_tree_min_prob: a number in [0, 1] (0: no pruning, None); needs draft_tree; a bad value is named at every
    entry point."""
    target, draft = models
    ids = _prompts()
    s = resolve_settings(target, draft=draft, draft_tree=(2, 2), draft_tree_min_prob=0.25, max_new_tokens=4)
    assert s.draft_tree_min_prob == 0.25
    assert resolve_settings(target, draft=draft, draft_tree=(2,), draft_tree_min_prob=0,
                            max_new_tokens=4).draft_tree_min_prob is None
    assert check_option("draft_tree_min_prob", 1) == 1.0
    s = resolve_settings(target, draft=draft, draft_tree=(2, 2), draft_tree_budget=3, max_new_tokens=4)
    assert (s.draft_tree_budget, s.draft_tree_min_prob) == (3, None)
    with pytest.raises(ValueError, match=r"draft_tree_min_prob must be a number in \[0, 1\]"):
        specsampler.generate(target, draft, ids, draft_tree=(2, 2), draft_tree_min_prob=-0.1, **KW)
    with pytest.raises(TypeError, match="draft_tree_min_prob must be a number"):
        target.generate(ids, custom_generate=specsampler.speculative_generate, draft_model=draft, draft_tree=(2,),
                        draft_tree_min_prob="0.1", **KW)
    with specsampler.patched_transformers(), pytest.raises(ValueError, match="draft_tree_min_prob=0.5 prunes"):
        target.generate(ids, assistant_model=draft, draft_tree_min_prob=0.5, **KW)
