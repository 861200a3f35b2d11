"""transformers' per-token outputs (output_scores, output_logits, return_dict_in_generate) through specsampler.generate,
custom_generate=speculative_generate and the patched generate, with tiny Llama / GPT-2 models built from configs
(CPU): greedy scores and logits against target.generate row by row, sampled ones against transformers' own warpers,
the fill of finished rows, and nothing computed unless asked for."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from util import perturbed, tiny_config, tiny_model  # noqa: E402

import specsampler  # noqa: E402
from specsampler.generation import outputs as outputs_module  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")
V = 64
TOL = dict(atol=1e-4, rtol=1e-4)  # float32 scores of a K+1-token forward against one-token forwards
OUT = dict(output_scores=True, output_logits=True)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request):
    target = tiny_model(tiny_config(request.param, V), 0)
    return target, perturbed(target, 0.005)


def _prompts():
    """Three left-padded prompts of 3, 6 and 1 tokens (pad id 0)."""
    ids = torch.tensor([[0, 0, 0, 7, 8, 9], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 12]])
    return ids, (ids != 0).long()


def _row(ids, mask, b):
    row = ids[b, mask[b].bool()][None]
    return row, torch.ones_like(row)


def _run(entry, target, draft, ids, mask, **kw):
    """(sequences, scores, logits) of one entry point asked for both outputs."""
    if entry == "generate":
        out = specsampler.generate(target, draft, ids, mask, **OUT, **kw)
    elif entry == "custom_generate":
        out = target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                              draft_model=draft, return_dict_in_generate=True, **OUT, **kw)
        assert isinstance(out, transformers.generation.utils.GenerateDecoderOnlyOutput)
    else:
        with specsampler.patched_transformers():
            out = target.generate(ids, attention_mask=mask, assistant_model=draft, return_dict_in_generate=True,
                                  **OUT, **kw)
        assert isinstance(out, transformers.generation.utils.GenerateDecoderOnlyOutput)
    return out.sequences, out.scores, out.logits


def _check_fill(entries, b, start, pad):
    """Row b's entries from `start` on: 0 at the pad id, -inf elsewhere."""
    for t in range(start, len(entries)):
        want = torch.full((V,), float("-inf"))
        want[pad] = 0.0
        assert torch.equal(entries[t][b], want), (b, t)


# ---------------------------------------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("entry", ["generate", "custom_generate", "patched"])
@pytest.mark.parametrize("extra", [{}, dict(repetition_penalty=1.3), dict(renormalize_logits=True)])
def test_greedy_outputs_equal_target_generate_row_by_row(pair, entry, extra):
    """Greedy, batch 3 with left padding, an EOS id that ends row 0 early: sequences equal target.generate row by
    row; each row's scores and logits, up to its own length, equal those target.generate returns for that row alone
    (allclose, TOL); past it, 0 at the pad id and -inf elsewhere."""
    target, draft = pair
    ids, mask = _prompts()
    row, row_mask = _row(ids, mask, 0)
    first = target.generate(row, attention_mask=row_mask, do_sample=False, max_new_tokens=10, pad_token_id=0,
                            eos_token_id=None, **extra)
    eos = int(first[0, -6])  # row 0's 5th new token: row 0 ends there (or earlier)
    kw = dict(do_sample=False, max_new_tokens=10, pad_token_id=0, eos_token_id=eos, **extra)
    seqs, scores, logits = _run(entry, target, draft, ids, mask, num_assistant_tokens=3, **kw)
    assert len(scores) == len(logits) == seqs.shape[1] - ids.shape[1]
    assert all(x.shape == (3, V) and x.dtype == torch.float32 for x in scores + logits)
    # transformers 4.x's repetition penalty counts a row's left padding as its tokens (5.x does not), so there its
    # own batched generate is the reference for scores: a row alone has no padding to penalise
    batched = None
    if extra.get("repetition_penalty") and int(transformers.__version__.split(".")[0]) < 5:
        batched = target.generate(ids, attention_mask=mask, return_dict_in_generate=True, **OUT, **kw)
    lengths = []
    for b in range(3):
        row, row_mask = _row(ids, mask, b)
        ref = target.generate(row, attention_mask=row_mask, return_dict_in_generate=True, **OUT, **kw)
        n = ref.sequences.shape[1] - row.shape[1]
        ref_scores, rb = (ref.scores, 0) if batched is None else (batched.scores, b)
        lengths.append(n)
        assert seqs[b, ids.shape[1]:ids.shape[1] + n].tolist() == ref.sequences[0, row.shape[1]:].tolist()
        assert (seqs[b, ids.shape[1] + n:] == 0).all()
        for t in range(n):
            torch.testing.assert_close(scores[t][b], ref_scores[t][rb], **TOL)
            torch.testing.assert_close(logits[t][b], ref.logits[t][0], **TOL)
        _check_fill(scores, b, n, 0)
        _check_fill(logits, b, n, 0)
    assert min(lengths) < max(lengths) == len(scores)  # a row finished early: the fill was exercised


def test_no_new_tokens_and_prompt_lookup(pair):
    """Prompt lookup's drafts give the same greedy outputs; max_new_tokens=0 gives no entries."""
    target, _ = pair
    ids, mask = _prompts()
    kw = dict(do_sample=False, max_new_tokens=7, pad_token_id=0, eos_token_id=[])
    out = specsampler.generate(target, None, ids, mask, prompt_lookup_num_tokens=2, **OUT, **kw)
    for b in range(3):
        row, row_mask = _row(ids, mask, b)
        ref = target.generate(row, attention_mask=row_mask, return_dict_in_generate=True, **OUT, **kw)
        for t in range(7):
            torch.testing.assert_close(out.scores[t][b], ref.scores[t][0], **TOL)
            torch.testing.assert_close(out.logits[t][b], ref.logits[t][0], **TOL)
    empty = specsampler.generate(target, None, ids, mask, prompt_lookup_num_tokens=2, max_new_tokens=0,
                                 output_scores=True, eos_token_id=[])
    assert empty.scores == () and empty.logits is None


# --------------------------------------------------------------------------------------------------------- sampled
def _reference_logits(target, seq: torch.Tensor, prompt_len: int, n: int) -> torch.Tensor:
    """[n, V] the target's raw scores before each of the row's n new tokens (one forward over the row)."""
    with torch.no_grad():
        out = target(seq[None, : prompt_len + n]).logits[0].float()
    return out[prompt_len - 1: prompt_len - 1 + n]


def _hf_warp(x, temperature, top_k=None, top_p=None, min_p=None):
    from transformers.generation import logits_process as lp

    procs = [lp.TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    procs += [lp.TopKLogitsWarper(top_k)] if top_k else []
    procs += [lp.TopPLogitsWarper(top_p)] if top_p is not None else []
    procs += [lp.MinPLogitsWarper(min_p)] if min_p else []
    for proc in procs:
        x = proc(None, x)
    return x


@pytest.mark.parametrize("entry", ["generate", "custom_generate", "patched"])
@pytest.mark.parametrize("warp", [dict(temperature=0.7, top_k=8), dict(temperature=1.3, top_p=0.8),
                                  dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05)])
@pytest.mark.parametrize("method", ["token", "block"])
def test_sampled_outputs(pair, entry, warp, method):
    """Sampled, batch 3 with left padding, an EOS id that ends a row early: one [3, V] float32 entry per new token;
    each row's logits are the target's raw scores before each of its tokens; its scores are transformers' warpers
    applied to them (-inf exactly where the warpers cut); each emitted token is inside the kept set; past a row's
    end, 0 at the pad id and -inf elsewhere."""
    target, draft = pair
    ids, mask = _prompts()
    kw = dict(do_sample=True, seed=11, max_new_tokens=10, pad_token_id=0, verify_method=method, **warp)
    seqs, _, _ = _run(entry, target, draft, ids, mask, eos_token_id=None, **kw)
    eos = int(seqs[1, ids.shape[1] + 2])  # row 1's 3rd token: the same seed ends row 1 there (or earlier)
    seqs, scores, logits = _run(entry, target, draft, ids, mask, eos_token_id=eos, **kw)
    width = ids.shape[1]
    assert len(scores) == len(logits) == seqs.shape[1] - width
    assert all(x.shape == (3, V) and x.dtype == torch.float32 for x in scores + logits)
    lengths = []
    for b in range(3):
        new = seqs[b, width:].tolist()
        n = new.index(eos) + 1 if eos in new else len(new)
        lengths.append(n)
        row = torch.cat([ids[b, mask[b].bool()], seqs[b, width:width + n]])
        ref = _reference_logits(target, row, int(mask[b].sum()), n)
        got_logits = torch.stack([logits[t][b] for t in range(n)])
        got_scores = torch.stack([scores[t][b] for t in range(n)])
        torch.testing.assert_close(got_logits, ref, **TOL)
        want = _hf_warp(got_logits.clone(), **({"top_k": 50} | warp))  # (transformers' default top_k 50 applies)
        assert torch.equal(torch.isinf(got_scores), torch.isinf(want)), b  # -inf exactly where the warpers cut
        torch.testing.assert_close(got_scores, want, **TOL)
        emitted = seqs[b, width:width + n]
        assert torch.isfinite(got_scores.gather(1, emitted[:, None])).all(), b  # each token inside its kept set
        assert torch.isinf(got_scores).any()  # the warpers did cut
        _check_fill(scores, b, n, 0)
        _check_fill(logits, b, n, 0)
    assert min(lengths) < max(lengths)


# ------------------------------------------------------------------------------------- return types, cost, refusals
def test_default_returns_unchanged_and_nothing_recorded(pair, monkeypatch):
    """Without output_scores / output_logits no recorder exists (nothing cloned, warped or kept) and the returns are
    as before: GenerateOutput with scores and logits None (return_dict_in_generate changes nothing there), a tensor
    from transformers' generate; output_scores without return_dict_in_generate computes nothing there either, as in
    transformers."""
    target, draft = pair
    ids, mask = _prompts()

    def refuse(*args, **kwargs):
        raise AssertionError("a ScoreRecorder was made")

    monkeypatch.setattr(outputs_module.ScoreRecorder, "__init__", refuse)
    kw = dict(max_new_tokens=5, pad_token_id=0, eos_token_id=None, do_sample=True, top_k=10)
    out = specsampler.generate(target, draft, ids, mask, seed=1, **kw)
    assert out.scores is None and out.logits is None
    again = specsampler.generate(target, draft, ids, mask, seed=1, return_dict_in_generate=True, **kw)
    assert type(again) is type(out) and torch.equal(again.sequences, out.sequences)
    custom = target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                             draft_model=draft, output_scores=True, output_logits=True, seed=1, **kw)
    assert isinstance(custom, torch.Tensor)
    with specsampler.patched_transformers():
        patched = target.generate(ids, attention_mask=mask, assistant_model=draft, output_scores=True, seed=1, **kw)
    assert isinstance(patched, torch.Tensor) and patched.shape == custom.shape


def test_only_what_is_asked_for(pair):
    """output_scores alone gives scores (logits None), and the other way round; transformers' generate with
    return_dict_in_generate alone gives an output with sequences only."""
    target, draft = pair
    ids, mask = _prompts()
    kw = dict(max_new_tokens=4, pad_token_id=0, eos_token_id=[], do_sample=False)
    only_scores = specsampler.generate(target, draft, ids, mask, output_scores=True, **kw)
    only_logits = specsampler.generate(target, draft, ids, mask, output_logits=True, **kw)
    assert len(only_scores.scores) == 4 and only_scores.logits is None
    assert len(only_logits.logits) == 4 and only_logits.scores is None
    out = target.generate(ids, attention_mask=mask, custom_generate=specsampler.speculative_generate,
                          draft_model=draft, return_dict_in_generate=True, max_new_tokens=4, pad_token_id=0,
                          eos_token_id=None, do_sample=False)
    assert out.scores is None and out.logits is None and out.sequences.shape == (3, 10)


@pytest.mark.parametrize("name", ["output_attentions", "output_hidden_states"])
def test_attentions_and_hidden_states_refused_by_name(pair, name):
    target, draft = pair
    ids, mask = _prompts()
    kw = dict(max_new_tokens=3, pad_token_id=0, eos_token_id=None, return_dict_in_generate=True, **{name: True})
    with pytest.raises(ValueError, match=f"does not support {name}="):
        specsampler.generate(target, draft, ids, mask, **kw)
    with specsampler.patched_transformers(), pytest.raises(ValueError, match=f"does not support {name}="):
        target.generate(ids, attention_mask=mask, assistant_model=draft, **kw)
