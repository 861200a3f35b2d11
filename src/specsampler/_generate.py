"""Batched speculative generation for HuggingFace causal LMs: :func:`generate`.

One step, for every unfinished row b at once (gpt-fast's loop, batched):

1. the drafter proposes K_b <= K tokens d_1..d_K (a draft model: K single-token forwards, sampling each d_i from its
   warped distribution q_i; the prompt-lookup drafter: an n-gram match, one-hot q);
2. the target runs one forward over [last, d_1..d_K] and gives K+1 rows of scores;
3. :func:`specsampler.verify` accepts n_b drafts and draws one more token: row b gains n_b + 1 tokens.

In code, :func:`generate` prefills (``_prefill``, ``_start_drafter``) and loops over ``_step`` (steps 1-3, then both
caches trimmed to what each row accepted) and ``_commit_rows`` (append, EOS, length) with ``_evict`` (finished rows
leave the batch). A drafter is anything with the :class:`specsampler.drafters.Drafter` protocol (``propose``,
``accept``, ``select_rows``): ``_DraftModel`` here, ``PromptLookupRun`` for prompt lookup.

KV caches with ragged acceptance: holes
---------------------------------------
Both models keep one ``DynamicCache`` whose slots are shared by the whole batch, plus a [B, L] attention mask over
those slots (left padding of the prompts included). Invariant: each row's last token is in neither cache; it is the
first token fed at the next step. After the target's forward over [last, d_1..d_K] the K+1 new slots of row b hold
valid keys for [last, d_1..d_{n_b}] and stale ones for the rejected drafts; the stale slots become *holes*: their mask
entries are set to 0, so no later query attends to them. Slots stale for every row (past max_b n_b) are cropped off.
Position ids are counted over valid slots only (position = number of valid slots before it), so rotary (Llama,
Qwen2) and learned (GPT-2) positions are those of the contiguous sequence, and every row computes exactly what
``target.generate(row)`` computes, up to floating-point summation order. The draft cache works the same way; its
forward over [last, d_1..d_{K-1}] does not contain d_K, so a row that accepted all K drafts feeds [d_K, last] at the
next step (a hole in place of d_K for the other rows). A cache grows by max_b n_b + 1 slots per step, never more
than the longest row. Rows that finish (EOS, max_new_tokens) are removed from the batch, caches included.

Exactness: greedy rows accept a draft iff it is the target's argmax. Sampling draws each draft with
:func:`specsampler.sample` from the draft's raw scores warped by temperature, top-k, top-p and min-p (transformers'
order), and hands :func:`specsampler.verify` the raw target and draft scores with the same options: verify warps both
with the same code (the same cut, the same tie rule), so q is the distribution each draft was drawn from and the tokens
follow the warped target distribution. Nothing here sorts a vocabulary: on CUDA the Triton kernel finds the warpers'
cuts without a sort; the torch backend (the CPU) sorts rows only for top-p without top-k (with top-k it takes topk).

Host synchronisation: one per step (the accepted counts and tokens come to the host: stopping on EOS and length,
and the prompt-lookup drafter, need them); everything else is queued on the devices.
"""

from __future__ import annotations

import inspect
import math
import numbers
import random
from dataclasses import dataclass, field

import torch

from ._api import sample, verify
from ._distributed import run_seed
from .drafters import Drafter, PromptLookupDrafter, PromptLookupRun, Proposal

__all__ = ["GenerateOutput", "GenerationStats", "generate"]


@dataclass
class GenerationStats:
    """Counters of one :func:`generate` call.

    Attributes
    ----------
    target_forwards : int
        Target forwards after the prefill (one per speculative step).
    draft_forwards : int
        Draft-model forwards after the prefill (0 for the prompt-lookup drafter).
    row_steps : int
        Sum over steps of the rows still running.
    drafted : int
        Draft tokens verified (sum of K_b over rows and steps).
    accepted : int
        Draft tokens accepted.
    new_tokens : int
        Tokens generated (kept), all rows together.
    """

    target_forwards: int = 0
    draft_forwards: int = 0
    row_steps: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted draft tokens."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Mean tokens a row gains per target forward (1 + mean accepted drafts)."""
        return self.new_tokens / self.row_steps if self.row_steps else 0.0

    def __str__(self) -> str:
        return (f"target forwards {self.target_forwards}, draft forwards {self.draft_forwards}, drafted "
                f"{self.drafted}, accepted {self.accepted} ({self.acceptance_rate:.1%}), new tokens {self.new_tokens}, "
                f"{self.tokens_per_forward:.2f} tokens per row per target forward")


@dataclass
class GenerateOutput:
    """Result of :func:`generate`.

    Attributes
    ----------
    sequences : torch.Tensor
        [B, P + N] int64: the input ids (left padding kept), then the new tokens; rows that finish early are padded
        with pad_token_id. N is the longest row's number of new tokens.
    stats : GenerationStats
    """

    sequences: torch.Tensor
    stats: GenerationStats = field(default_factory=GenerationStats)


# ---------------------------------------------------------------------------------------------------------- options
def check_options(*, max_new_tokens, num_draft_tokens, do_sample, temperature, top_k, top_p, seed,
                  min_p=None) -> None:
    """Raise a ValueError (TypeError for a wrong type) naming the first option of :func:`generate` out of range, as
    transformers' generation config does: every check runs before any model is touched."""
    def integer(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    def number(value) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    if not integer(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not integer(num_draft_tokens) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {do_sample!r}")
    if not number(temperature) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not integer(top_k) or top_k < 0):
        raise ValueError(f"top_k must be None or an integer >= 0 (0: off), got {top_k!r}")
    if top_p is not None and (not number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1] (1: off), got {top_p!r}")
    if min_p is not None and (not number(min_p) or not 0 <= min_p <= 1):
        raise ValueError(f"min_p must be None or a number in [0, 1] (0: off), got {min_p!r}")
    if seed is not None and not integer(seed):
        raise TypeError(f"seed must be None or an integer, got {type(seed).__name__}")


def _sampling(do_sample: bool, temperature, top_k, top_p, min_p) -> dict | None:
    """The keyword arguments :func:`specsampler.sample` and :func:`specsampler.verify` take (the same for both, so
    that the draft's q in verify is the distribution its tokens were drawn from); None when greedy."""
    if not do_sample or temperature == 0:
        return None
    return dict(temperature=float(temperature), top_k=int(top_k) if top_k else None,
                top_p=float(top_p) if top_p is not None and top_p < 1 else None,
                min_p=float(min_p) if min_p else None)


# --------------------------------------------------------------------------------------------------- model + cache
def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


class _Cached:
    """A model, its ``DynamicCache`` and the [B, L] mask over the cache's slots (0 = left padding or a hole)."""

    def __init__(self, model, batch: int):
        from transformers import DynamicCache

        self.model = model
        self.device = _input_device(model)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = "logits_to_keep" in params
        try:
            self.cache = DynamicCache(config=model.config)
        except TypeError:  # older signatures
            self.cache = DynamicCache()
        if any(getattr(layer, "is_sliding", False) for layer in getattr(self.cache, "layers", [])):
            raise NotImplementedError("sliding-window attention layers are not supported: a window counts cache "
                                      "slots, and holes would shift it")
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        # Whether some slot is padding or a hole, known on the host: without any, the model gets no attention mask
        # and runs its plain causal path (a single row never has holes).
        self.holes = False

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, last_only: bool = False,
                holes: bool | None = None) -> torch.Tensor:
        """Append [B, T] `tokens` (`valid` [B, T]: 0 marks a hole; None: every token is real) to the cache; return
        their [B, T or 1, V] logits. `holes`: whether `valid` has a 0, when the caller knows (else it is read)."""
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.long)
        else:
            valid = valid.to(torch.long)
            self.holes = self.holes or (holes if holes is not None else not bool(valid.all()))  # (prefill: once)
        positions = self.mask.sum(dim=1, keepdim=True) + valid.cumsum(dim=1) - valid
        self.mask = torch.cat([self.mask, valid], dim=1)
        kwargs = {self.cache_arg: self.cache, "use_cache": True}
        if last_only and self.keep_arg:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=tokens, attention_mask=self.mask if self.holes else None, position_ids=positions,
                         **kwargs)
        return out.logits[:, -1:] if last_only else out.logits

    def keep(self, n: torch.Tensor, width: int, n_max: int, n_min: int) -> None:
        """Of the last `width` slots, keep the first n_b + 1 of row b (`n` [B]; the rest become holes) and crop
        the slots past the first `n_max` + 1, which no row keeps (`n_min`: the fewest any row kept, minus 1)."""
        self.holes = self.holes or n_min < n_max
        self.mask[:, -width:] = (torch.arange(width, device=self.device)[None, :] <= n[:, None]).to(self.mask.dtype)
        drop = width - min(n_max + 1, width)
        if drop:
            self.cache.crop(-drop)
            self.mask = self.mask[:, :-drop]

    def select(self, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` [B'] only."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]


class _DraftModel:
    """A draft model behind the :class:`~specsampler.drafters.Drafter` protocol: ``propose`` K tokens (with their raw
    scores when sampling), ``accept`` n_b of them (holes in its cache), ``select_rows``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The draft LM.
    batch : int
        B, rows at the start.
    k : int
        K, drafts per step.
    vocab : int
        The target's vocabulary size V: draft scores past it are dropped.
    sampling : dict or None
        The options of :func:`specsampler.sample` (temperature, top_k, top_p, min_p); None: greedy drafts.
    rng : random.Random or None
        Draws the seed of each :func:`specsampler.sample` call (sampling).
    """

    def __init__(self, model, batch: int, k: int, vocab: int, sampling: dict | None, rng: random.Random | None):
        self.lm = _Cached(model, batch)
        self.k, self.vocab, self.sampling, self.rng = k, vocab, sampling, rng
        # ids the draft cannot embed (a target vocabulary padded further) are fed as its last id: q stays what it
        # reports, so verification stays exact
        self.max_id = model.get_input_embeddings().weight.shape[0] - 1
        self.forwards = 0
        self.drafts = None  # [B, K'] the last proposal
        self.k_step = k  # K' of the last proposal
        self.behind = None  # [B] d_K of rows that accepted all K drafts (not in the draft cache), else -1
        self.any_behind = False
        self.all_behind = False

    def prefill(self, prompt: torch.Tensor, mask: torch.Tensor) -> None:
        """Feed [B, P - 1] `prompt` (`mask` [B, P - 1], 0 for padding) to the draft cache."""
        if prompt.shape[1]:
            prompt = prompt.to(self.lm.device).clamp(max=self.max_id)
            self.lm.forward(prompt, mask.to(self.lm.device), last_only=True)

    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        """`last` [B] -> drafts [B, K'] and the raw scores they were sampled from, [B, K', min(Vd, V)] (None when
        greedy), with K' = min(K, max limit) draft forwards (at least 1) and K_b = min(K', limit_b)."""
        self.k_step = k = min(self.k, max(1, max(limits)))
        dev = self.lm.device
        last = last.to(dev).clamp(max=self.max_id)
        if self.any_behind:
            tokens = torch.stack([self.behind.clamp_min(0), last], dim=1)
            valid = None if self.all_behind else torch.stack(
                [self.behind >= 0, torch.ones_like(last, dtype=torch.bool)], dim=1)
        else:
            tokens, valid = last[:, None], None
        holes = valid is not None  # some row is not behind: its first slot is a hole
        drafts, scores = [], []
        for i in range(k):
            logits = self.lm.forward(tokens, valid, last_only=True, holes=holes)[:, -1, :self.vocab].float()
            self.forwards += 1
            if self.sampling is None:
                token = logits.argmax(dim=-1)
            else:  # the warpers run inside sample (no sort of the vocabulary on CUDA); verify applies them again
                scores.append(logits)
                token = sample(logits, seed=self.rng.getrandbits(62), **self.sampling)
            drafts.append(token)
            if i + 1 < k:
                tokens, valid, holes = token[:, None].clamp(max=self.max_id), None, False
        self.drafts = torch.stack(drafts, dim=1)
        return Proposal(self.drafts, torch.stack(scores, dim=1) if scores else None, [min(k, m) for m in limits])

    def accept(self, n: torch.Tensor, accepted: list[list[int]]) -> None:
        """Row b accepted `n` [B] of its drafts: holes over the rest of this step's slots, which hold
        [last, d_1..d_{K'-1}]; d_K' is fed at the next step where all K' were accepted."""
        k = self.k_step
        n_max = max(len(tokens) for tokens in accepted) - 1
        n_min = min(len(tokens) for tokens in accepted) - 1
        n = n.to(self.lm.device)
        self.lm.keep(n, k, n_max, n_min)
        self.behind = torch.where(n == k, self.drafts[:, -1].to(n.device).clamp(max=self.max_id), -1)
        self.any_behind = n_max == k
        self.all_behind = n_min == k

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the rows `rows` [B'] only (cache, mask, pending d_K)."""
        self.lm.select(rows)
        if self.behind is not None:
            self.behind = self.behind[rows.to(self.behind.device)]


# -------------------------------------------------------------------------------------------------------- generate
@dataclass
class _Rows:
    """The host-side state of a batch: which rows still run, what every row has generated.

    Attributes
    ----------
    ids : list of int
        B': the index in `input_ids` of each running row.
    new : list of list of int
        B lists: the new tokens of every row, running or finished.
    last : torch.Tensor
        [B'] int64 each running row's last token, in neither cache: the first token fed at the next step.
    k : list of int
        B': each running row's draft length for the next step.
    """

    ids: list[int]
    new: list[list[int]]
    last: torch.Tensor
    k: list[int]

    def budget(self, max_new_tokens: int) -> list[int]:
        """B': how many more tokens each running row may gain."""
        return [max_new_tokens - len(self.new[r]) for r in self.ids]


@dataclass
class _Step:
    """One verified step, on the host (the step's one synchronisation) and on the target's device.

    Attributes
    ----------
    counts : list of int
        B': drafts verified per row (K_b).
    width : int
        K' + 1, the new slots in the target cache this step.
    n : torch.Tensor
        [B'] int64 accepted drafts per row, on the target's device.
    accepted : list of list of int
        B' lists of n_b + 1 tokens: the accepted drafts, then the token verify drew.
    last : torch.Tensor
        [B'] int64 that drawn token, on the target's device.
    """

    counts: list[int]
    width: int
    n: torch.Tensor
    accepted: list[list[int]]
    last: torch.Tensor


def _as_list(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.flatten().tolist()]
    if isinstance(x, int):
        return [x]
    return [int(v) for v in x]


def _prompt_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, P] mask of left-padded prompts (None: all ones); a ValueError unless every row ends with a token."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left padded (attention_mask[:, -1] must be 1)")
    return attention_mask


def _eos_and_pad(target, eos_token_id, pad_token_id) -> tuple[list[int], int]:
    """The EOS ids (default: the target's generation config) and the pad id (config, else first EOS, else 0)."""
    gen_cfg = getattr(target, "generation_config", None)
    eos = _as_list(eos_token_id if eos_token_id is not None else getattr(gen_cfg, "eos_token_id", None))
    if pad_token_id is None:
        pad_token_id = getattr(gen_cfg, "pad_token_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    return eos, pad_token_id


def _prefill(target, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[_Cached, int]:
    """The target's cache over [B, P - 1] prompts (the last prompt token is fed by the first step), and its
    vocabulary size V (its output layer's rows)."""
    lm = _Cached(target, input_ids.shape[0])
    head = target.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else target.config.get_text_config().vocab_size
    if input_ids.shape[1] > 1:
        lm.forward(input_ids[:, :-1].to(lm.device), attention_mask[:, :-1].to(lm.device), last_only=True)
    return lm, vocab


def _start_drafter(draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, vocab: int,
                   sampling: dict | None, rng: random.Random, pad_token_id: int) -> Drafter:
    """The drafter for this call, prefilled with the [B, P] prompts: a :class:`PromptLookupRun` over the prompts'
    tokens, or a :class:`_DraftModel` (sampling: its own random.Random, seeded from `rng`) over prompt[:, :-1]."""
    if isinstance(draft, PromptLookupDrafter):
        seqs = [[t for t, m in zip(r, mk, strict=True) if m]
                for r, mk in zip(input_ids.tolist(), attention_mask.tolist(), strict=True)]
        return PromptLookupRun(draft, seqs, k, pad_token_id)
    draft_rng = None if sampling is None else random.Random(rng.getrandbits(62))
    drafter = _DraftModel(draft, input_ids.shape[0], k, vocab, sampling, draft_rng)
    drafter.prefill(input_ids[:, :-1], attention_mask[:, :-1])
    return drafter


def _step(lm: _Cached, drafter: Drafter, last: torch.Tensor, limits: list[int], sampling: dict | None,
          rng: random.Random) -> _Step:
    """Draft, score [last, d_1..d_K'] with the target, verify, and trim both caches to what each row accepted.

    Parameters
    ----------
    lm : _Cached
        The target and its cache.
    drafter : Drafter
    last : torch.Tensor
        [B'] int64 each running row's last token (target device).
    limits : list of int
        B': the most drafts each row can use.
    sampling : dict or None
        Temperature and warpers for :func:`specsampler.verify` when sampling; None: greedy.
    rng : random.Random
        Draws the verification seed.

    Returns
    -------
    _Step
    """
    drafts, scores, counts = drafter.propose(last, limits)
    k = drafts.shape[1]
    drafts = drafts.to(lm.device)
    tokens = torch.cat([last[:, None], drafts], dim=1)
    logits = lm.forward(tokens, None).float()
    nd = None if all(c == k for c in counts) else torch.tensor(counts, device=logits.device)
    vseed = rng.getrandbits(62)
    if sampling is None:
        res = verify(logits, drafts.to(logits.device), None, num_draft_tokens=nd, temperature=0.0, seed=vseed)
    else:  # raw scores: verify warps target and draft alike
        dscores = None if scores is None else scores.to(logits.device)
        res = verify(logits, drafts.to(logits.device), dscores, num_draft_tokens=nd, seed=vseed, **sampling)
    # the one host synchronisation per step: stopping (EOS, length) and the caches' crop need the counts
    n_host, tok_host = res.num_accepted.tolist(), res.tokens.tolist()
    accepted = [t[:n + 1] for t, n in zip(tok_host, n_host, strict=True)]
    drawn = res.tokens.gather(1, res.num_accepted[:, None].to(res.tokens.device))[:, 0]
    step = _Step(counts, k + 1, res.num_accepted.to(lm.device), accepted, drawn.to(lm.device))
    lm.keep(step.n, step.width, max(n_host), min(n_host))
    drafter.accept(step.n, step.accepted)
    return step


def _commit_rows(rows: _Rows, step: _Step, budget: list[int], eos: list[int], stats: GenerationStats,
                 callback) -> list[int]:
    """Append each running row's new tokens (cut after an EOS id and at its budget), count them, call `callback`.

    Parameters
    ----------
    rows : _Rows
        Updated in place (``new``, ``last``).
    step : _Step
    budget : list of int
        B': how many more tokens each row could gain before this step.
    eos : list of int
    stats : GenerationStats
        Updated in place.
    callback : callable or None
        ``callback(row, tokens)`` for each row that gained tokens.

    Returns
    -------
    list of int
        The indices (into the B' running rows) of the rows that go on: no EOS, budget left.
    """
    stats.target_forwards += 1
    rows.last = step.last
    keep = []
    for i, r in enumerate(rows.ids):
        got = step.accepted[i][: budget[i]]
        done = False
        for j, t in enumerate(got):
            if t in eos:
                got, done = got[: j + 1], True
                break
        rows.new[r] += got
        if callback is not None and got:
            callback(r, got)
        stats.row_steps += 1
        stats.drafted += step.counts[i]
        stats.accepted += len(step.accepted[i]) - 1
        stats.new_tokens += len(got)
        if not (done or len(got) >= budget[i]):
            keep.append(i)
    return keep


def _adapt_draft_lengths(rows: _Rows, step: _Step, max_k: int) -> None:
    """transformers' "heuristic" schedule, per row: K_b + 2 (at most `max_k`) after a step that accepted all K_b
    drafts, K_b - 1 (at least 1) after one that rejected a draft."""
    for i, (count, tokens) in enumerate(zip(step.counts, step.accepted, strict=True)):
        if len(tokens) - 1 < count:
            rows.k[i] = max(1, rows.k[i] - 1)
        elif count == rows.k[i]:
            rows.k[i] = min(rows.k[i] + 2, max_k)


def _evict(rows: _Rows, keep: list[int], lm: _Cached, drafter: Drafter) -> None:
    """Drop the finished rows: keep only the running rows `keep` (indices into them) in `rows`, caches included."""
    if len(keep) == len(rows.ids):
        return
    idx = torch.tensor(keep, dtype=torch.long)
    rows.ids = [rows.ids[i] for i in keep]
    rows.k = [rows.k[i] for i in keep]
    if rows.ids:
        lm.select(idx)
        rows.last = rows.last[idx.to(rows.last.device)]
        drafter.select_rows(idx)


def _sequences(input_ids: torch.Tensor, new: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """[B, P] prompts and B lists of new tokens -> [B, P + N] (N: the longest list; the others padded)."""
    width = max(len(x) for x in new)
    tail = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in new], dtype=input_ids.dtype)
    return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


@torch.no_grad()
def generate(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int, num_draft_tokens: int = 4, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None, seed: int | None = None,
             eos_token_id=None, pad_token_id: int | None = None, callback=None,
             num_assistant_tokens_schedule: str = "constant") -> GenerateOutput:
    """Speculative decoding for a batch of (left-padded, ragged) prompts; every row advances at its own pace.

    Parameters
    ----------
    target : transformers.PreTrainedModel
        The causal LM whose distribution the output follows (full attention: Llama, Qwen2, GPT-2, ...).
    draft : transformers.PreTrainedModel or PromptLookupDrafter
        A smaller causal LM with the same tokenizer (its vocabulary may differ by padding; scores for ids past the
        target's vocabulary are dropped and the draft distribution renormalised), or a
        :class:`specsampler.PromptLookupDrafter` (n-gram matches in the sequence, one-hot drafts).
    input_ids : torch.Tensor
        [B, P] int prompts, left padded.
    attention_mask : torch.Tensor, optional
        [B, P] 1 for tokens, 0 for left padding; None: all ones.
    max_new_tokens : int
        The most new tokens per row.
    num_draft_tokens : int
        K, drafts per step (the prompt-lookup drafter may propose fewer for a row); with the "heuristic" schedule,
        each row's starting draft length.
    do_sample : bool
        False: greedy (each row equals ``target.generate(row, do_sample=False)``). True: sample from the target's
        distribution warped by temperature, top_k, top_p and min_p (applied to target and draft alike).
    temperature, top_k, top_p, min_p
        As transformers' warpers, in their order (temperature, top-k, top-p, min-p); used when do_sample
        (temperature 0 means greedy; top_k None or 0, top_p None or 1 and min_p None or 0 are off). Drafts are drawn
        with :func:`specsampler.sample` and verified with :func:`specsampler.verify`, both given these options.
    seed : int, optional
        Seeds the draft sampling and the verification; None draws from torch's default generator.
    eos_token_id : int or list of int, optional
        Stop a row at any of these. None: ``target.generation_config.eos_token_id`` (as transformers does).
    pad_token_id : int, optional
        Fills rows that finished early. None: the generation config's, else the first EOS id, else 0.
    callback : callable, optional
        ``callback(row, tokens)`` after every step, for each row that gained tokens: the row's index in `input_ids`
        and its new tokens (a list of ints), e.g. to stream text.
    num_assistant_tokens_schedule : {"constant", "heuristic"}
        As transformers' option of that name: "constant" drafts K every step; "heuristic" adapts each row's draft
        length, + 2 (up to 2K) after a step that accepted all its drafts, - 1 (down to 1) after one that rejected;
        the draft model then runs as many forwards as the longest row needs. Exactness does not depend on it.

    Returns
    -------
    GenerateOutput
        ``sequences`` [B, P + N] int64 on input_ids' device and ``stats``.

    Notes
    -----
    Only temperature, top-k, top-p and min-p shape the distribution: other logits processors a model's generation config
    may hold (repetition penalty, bad words, ...) are not applied. Sliding-window attention is not supported.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, P], got {tuple(input_ids.shape)}")
    check_options(max_new_tokens=max_new_tokens, num_draft_tokens=num_draft_tokens, do_sample=do_sample,
                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, min_p=min_p)
    if num_assistant_tokens_schedule not in ("constant", "heuristic"):
        raise ValueError(f"num_assistant_tokens_schedule must be 'constant' or 'heuristic', got "
                         f"{num_assistant_tokens_schedule!r}")
    adaptive = num_assistant_tokens_schedule == "heuristic"
    max_k = 2 * num_draft_tokens if adaptive else num_draft_tokens
    if max_new_tokens < 1:
        return GenerateOutput(input_ids.clone(), GenerationStats())
    attention_mask = _prompt_mask(input_ids, attention_mask)
    eos, pad_token_id = _eos_and_pad(target, eos_token_id, pad_token_id)
    sampling = _sampling(do_sample, temperature, top_k, top_p, min_p)
    rng = random.Random(run_seed(seed, target))
    lm, vocab = _prefill(target, input_ids, attention_mask)
    drafter = _start_drafter(draft, input_ids, attention_mask, max_k, vocab, sampling, rng, pad_token_id)
    batch = input_ids.shape[0]
    rows = _Rows(list(range(batch)), [[] for _ in range(batch)], input_ids[:, -1].to(lm.device),
                 [num_draft_tokens] * batch)
    stats = GenerationStats()
    while rows.ids:
        budget = rows.budget(max_new_tokens)
        step = _step(lm, drafter, rows.last, [min(b - 1, k) for b, k in zip(budget, rows.k, strict=True)], sampling,
                     rng)
        if adaptive:
            _adapt_draft_lengths(rows, step, max_k)
        _evict(rows, _commit_rows(rows, step, budget, eos, stats, callback), lm, drafter)
    stats.draft_forwards = drafter.forwards
    return GenerateOutput(_sequences(input_ids, rows.new, pad_token_id), stats)
