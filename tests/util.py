"""Shared test helpers: random cases, structural checks, exact distributions and a chi-square test."""

from __future__ import annotations

import contextlib
import math

import torch

# Tolerances for comparing the kernel's split statistics with torch, per input dtype (both compute in float32 from
# the same upcast values, so only the order of summation differs).
STATS_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-5, atol=1e-5),
}


def make_case(batch, k, vocab, dtype=torch.float32, *, seed=0, draft=True, draft_vocab=None, ragged=False,
              temperature=1.0, device="cpu"):
    """Random verify() inputs whose drafts are accepted often but not always.

    temperature: a float, "row" (per-row positive values), or "mixed" (per-row, some rows 0 = greedy).
    """
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, k + 1, vocab, generator=g) * 2.0
    kwargs = {}
    if isinstance(temperature, str):
        t = 0.5 + torch.rand(batch, generator=g)
        if temperature == "mixed":
            t[torch.arange(batch) % 3 == 0] = 0.0
        kwargs["temperature"] = t.to(device)
    else:
        kwargs["temperature"] = temperature
    vd = vocab if draft_vocab is None else draft_vocab
    draft_logits = target[:, :k, :vd] + 0.7 * torch.randn(batch, k, vd, generator=g)
    if draft:
        gumbel = -torch.log(torch.empty(batch, k, vd).exponential_(generator=g))
        drafts = (draft_logits.float() + gumbel).argmax(-1)  # x_t ~ q_t
    else:  # a drafter that proposes the target's argmax most of the time
        drafts = torch.where(torch.rand(batch, k, generator=g) < 0.7, target[:, :k].argmax(-1),
                             torch.randint(0, vocab, (batch, k), generator=g))
    greedy_rows = kwargs["temperature"] == 0 if isinstance(kwargs["temperature"], torch.Tensor) else None
    if greedy_rows is not None and k > 0:  # greedy rows: mostly the argmax so that some are accepted
        drafts[greedy_rows.cpu()] = target[greedy_rows.cpu(), :k].argmax(-1)
        flip = (torch.rand(batch, k, generator=g) < 0.3) & greedy_rows.cpu()[:, None]
        drafts[flip] = (drafts[flip] + 1) % vocab
    if ragged:
        kwargs["num_draft_tokens"] = torch.randint(0, k + 1, (batch,), generator=g).to(device)
    uniforms = torch.rand(batch, k, generator=g)
    noise = torch.empty(batch, vocab).exponential_(generator=g)
    return dict(
        target_logits=target.to(dtype).to(device),
        draft_tokens=drafts.to(device),
        draft_logits=draft_logits.to(dtype).to(device) if draft else None,
        _uniforms=uniforms.to(device),
        _noise=noise.to(device),
        **kwargs,
    )


def check_structure(res, drafts, num_draft_tokens, vocab):
    """Accepted prefix equals the drafts, one token after it, -1 after that, ids in range, n <= K_b."""
    tokens, n = res.tokens.cpu(), res.num_accepted.cpu()
    batch, k = drafts.shape
    assert tokens.shape == (batch, k + 1) and tokens.dtype == torch.int64
    assert n.shape == (batch,) and n.dtype == torch.int64
    nd = torch.full((batch,), k) if num_draft_tokens is None else num_draft_tokens.cpu()
    assert bool((n >= 0).all()) and bool((n <= nd).all())
    for b in range(batch):
        m = int(n[b])
        assert tokens[b, :m].tolist() == drafts[b, :m].cpu().tolist()
        assert 0 <= int(tokens[b, m]) < vocab
        assert bool((tokens[b, m + 1 :] == -1).all())


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of `counts` against `probs` (cells with probability 0 must have count 0)."""
    counts, probs = counts.double().cpu(), probs.double().cpu()  # counts may come from CUDA, the probabilities not
    assert bool((counts[probs == 0] == 0).all()), f"tokens of probability 0 drawn: {counts} vs {probs}"
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    dof = int(keep.sum()) - 1
    if dof == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2.0))


def expected_accepted(p: torch.Tensor, q: torch.Tensor) -> float:
    """E[n] = sum_i prod_{j<i} beta_j, beta_t = sum_x min(p_t(x), q_t(x)); p [K+1, V], q [K, V]."""
    beta = torch.minimum(p[:-1], q).sum(-1).double()
    return float(sum(math.prod(beta[:i].tolist()) for i in range(1, q.shape[0] + 1)))


# ----------------------------------------------------------------------------------------- tiny models (transformers)
def tiny_config(family: str, vocab: int, layers: int = 2, hidden: int = 32):
    """A config for a tiny random LM of `family` ("llama", "qwen2" or "gpt2"); no hub needed."""
    import transformers

    if family == "llama":
        return transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256)
    if family == "qwen2":
        return transformers.Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256)
    return transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256)


def tiny_model(config, seed: int):
    """A causal LM from `config` with weights drawn after torch.manual_seed(`seed`), in eval mode."""
    import transformers

    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def perturbed(model, noise: float, seed: int = 1):
    """A draft: `model` with Gaussian noise of scale `noise` on every weight (accepts often, not always)."""
    import transformers

    draft = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return draft


def chi2_pvalue_pooled(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of `counts` against `probs`, cells with expected count < 5 pooled."""
    n = counts.sum()
    expected = probs.double() * n
    small = expected < 5
    obs = torch.cat([counts[~small].double(), counts[small].double().sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2))


# ------------------------------------------------------------------ generate: the "cost" schedule, scripted
class ScriptedStopwatch:
    """Stands in for the "cost" schedule's Stopwatch: every third step's drafts took 10 s, the others 0.1 ms; a target
    forward 1 s whatever its size. With no smoothing and a probe after 2 steps without drafts, the "cost" schedule then
    alternates between long drafts and none (K' = 0: plain decoding, the draft catching up afterwards)."""

    def __init__(self, device):
        self.steps = 0

    def mark(self):
        pass

    def spans(self):
        self.steps += 1
        return [10.0 if self.steps % 3 == 0 else 1e-4, 1.0, 0.0]


def record_draft_lengths(monkeypatch):
    """The K' of every draft-model proposal, in order (a list filled as generate runs)."""
    from specsampler.generation.drafters import DraftModel

    seen, propose = [], DraftModel.propose

    def spy(self, last, limits):
        out = propose(self, last, limits)
        seen.append(out[0].shape[1])
        return out

    monkeypatch.setattr(DraftModel, "propose", spy)
    return seen


@contextlib.contextmanager
def scripted_costs():
    """A block in which generate's "cost" schedule follows ScriptedStopwatch's times alone (none kept from earlier
    calls), with no smoothing and a probe after 2 steps without drafts: its K' then varies from step to step, 0
    included, deterministically."""
    from specsampler.generation.schedules import COSTS, CostTuning

    with COSTS.configured(tuning=CostTuning(smoothing=1.0, probe_every=2), clock=ScriptedStopwatch):
        yield


def catches_up(seen):
    """Whether some step drafted after two steps without drafts (the draft model fed what it skipped)."""
    return any(seen[i] == seen[i + 1] == 0 < seen[i + 2] for i in range(len(seen) - 2))


def char_tokenizer(vocab: int):
    """A character tokenizer over `vocab` single characters (one token each), built offline with `tokenizers`."""
    import string

    import pytest
    import transformers

    tokenizers = pytest.importorskip("tokenizers")
    chars = (string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation + " é")[:vocab]
    assert len(chars) == vocab
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tok.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
