"""Batched speculative generation for HuggingFace causal LMs: :func:`generate`.

One step, for every unfinished row b at once (gpt-fast's loop, batched):

1. the drafter proposes K_b <= K tokens d_1..d_K (a draft model: K single-token forwards, sampling each d_i from its
   warped distribution q_i; the prompt-lookup drafter: an n-gram match, one-hot q);
2. the target runs one forward over [last, d_1..d_K] and gives K+1 rows of scores;
3. :func:`specsampler.verify` accepts n_b drafts and draws one more token: row b gains n_b + 1 tokens.

K comes from ``num_assistant_tokens_schedule``: fixed ("constant"), per row from its last step (transformers'
"heuristic"), or per step from measured forward times and each row's acceptance rate ("cost", ``_CostSchedule``: the
K' with the most expected tokens per second, 0 included, a step of plain decoding).

In code, :func:`generate` prefills (``_prefill``, ``_start_drafter``: each model holds its prompt, fed in front of its
first forward, as transformers' assisted generation does: one forward fewer per model) and loops over ``_step`` (steps
1-3, then both caches trimmed to what each row accepted) and ``_commit_rows`` (append, EOS, length) with ``_evict``
(finished rows leave the batch). A drafter is anything with the :class:`specsampler.drafters.Drafter` protocol
(``propose``, ``accept``, ``select_rows``): ``_DraftModel`` here, ``PromptLookupRun`` for prompt lookup.

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
follow the warped target distribution. Logits processors (repetition penalty, min_new_tokens, ...) come before
the warpers, as in ``model.generate``: :class:`~specsampler._processors.PrefixProcessors` applies transformers' own
to every target and draft position with its prefix (the row so far, then the drafts before that position), so the
processed scores are the p and q that sample and verify see. Nothing here sorts a vocabulary: on CUDA the Triton
kernel finds the warpers' cuts without a sort; the torch backend (the CPU) sorts rows only for top-p without top-k
(with top-k it takes topk).

Host synchronisation: one per step (the accepted counts and tokens come to the host: stopping on EOS and length,
and the prompt-lookup drafter, need them); everything else is queued on the devices.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import random
import time
import warnings
import weakref
from dataclasses import dataclass, field

import torch

from ._api import sample, verify
from ._distributed import rank0_choice, run_seed
from ._processors import PrefixProcessors, split_processors
from .drafters import Drafter, PromptLookupDrafter, PromptLookupRun, Proposal

__all__ = ["GenerateOutput", "GenerationStats", "generate"]


@dataclass
class GenerationStats:
    """Counters of one :func:`generate` call.

    Attributes
    ----------
    target_forwards : int
        Target forwards, one per speculative step (the first also feeds the prompt).
    draft_forwards : int
        Draft-model forwards (the first also feeds the prompt; 0 for the prompt-lookup drafter).
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
        self.pending = None  # (tokens, valid) [B, P]: a prefill deferred to the next forward, which feeds it first

    def defer(self, tokens: torch.Tensor, valid: torch.Tensor, holes: bool | None = None) -> None:
        """Feed [B, P] `tokens` (`valid` [B, P], 0 for padding or a hole) at the start of the next forward, after any
        deferred before: the prefill and the first step share one forward (transformers' assisted generation does the
        same), and a draft that skipped a step catches up. `holes`: whether `valid` has a 0, when the caller knows."""
        if tokens.shape[1]:
            valid = valid.to(self.device, torch.long)
            self.holes = self.holes or (holes if holes is not None else not bool(valid.all()))
            tokens = tokens.to(self.device)
            if self.pending is not None:
                tokens, valid = torch.cat([self.pending[0], tokens], dim=1), torch.cat([self.pending[1], valid], dim=1)
            self.pending = (tokens, valid)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, last_only: bool = False,
                holes: bool | None = None) -> torch.Tensor:
        """Append [B, T] `tokens` (`valid` [B, T]: 0 marks a hole; None: every token is real) to the cache; return
        their [B, T or 1, V] logits. `holes`: whether `valid` has a 0, when the caller knows (else it is read)."""
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.long)
        else:
            valid = valid.to(torch.long)
            self.holes = self.holes or (holes if holes is not None else not bool(valid.all()))  # (prefill: once)
        width = 1 if last_only else tokens.shape[1]
        if self.pending is not None:
            tokens, valid = torch.cat([self.pending[0], tokens], dim=1), torch.cat([self.pending[1], valid], dim=1)
            self.pending, last_only = None, True
        positions = self.mask.sum(dim=1, keepdim=True) + valid.cumsum(dim=1) - valid
        self.mask = torch.cat([self.mask, valid], dim=1)
        kwargs = {self.cache_arg: self.cache, "use_cache": True}
        if last_only and self.keep_arg:
            kwargs["logits_to_keep"] = width
        out = self.model(input_ids=tokens, attention_mask=self.mask if self.holes else None, position_ids=positions,
                         **kwargs)
        return out.logits[:, -width:] if last_only else out.logits

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
        if self.pending is not None:
            self.pending = (self.pending[0][rows], self.pending[1][rows])


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
    processors : PrefixProcessors, optional
        Applied to each draft forward's scores (with the row's sequence and the drafts before it) before a draft is
        chosen from them; the processed scores are the q that verify sees.
    """

    def __init__(self, model, batch: int, k: int, vocab: int, sampling: dict | None, rng: random.Random | None,
                 processors: PrefixProcessors | None = None):
        self.lm = _Cached(model, batch)
        self.k, self.vocab, self.sampling, self.rng = k, vocab, sampling, rng
        self.processors = processors
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
        """Feed [B, P - 1] `prompt` (`mask` [B, P - 1], 0 for padding) to the draft cache (with the first draft)."""
        self.lm.defer(prompt.to(self.lm.device).clamp(max=self.max_id), mask)

    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        """`last` [B] -> drafts [B, K'] and the raw scores they were sampled from, [B, K', min(Vd, V)] (None when
        greedy or K' = 0), with K' = min(K, max limit) draft forwards and K_b = min(K', limit_b). K' = 0 runs no
        forward: what this step would have fed waits for the next forward (the draft catches up then)."""
        self.k_step = k = min(self.k, max(limits))
        dev = self.lm.device
        last = last.to(dev).clamp(max=self.max_id)
        if self.any_behind:
            tokens = torch.stack([self.behind.clamp_min(0), last], dim=1)
            valid = None if self.all_behind else torch.stack(
                [self.behind >= 0, torch.ones_like(last, dtype=torch.bool)], dim=1)
        else:
            tokens, valid = last[:, None], None
        holes = valid is not None  # some row is not behind: its first slot is a hole
        if k == 0:
            self.lm.defer(tokens, torch.ones_like(tokens) if valid is None else valid, holes)
            self.drafts = tokens.new_zeros(tokens.shape[0], 0)
            self.behind, self.any_behind, self.all_behind = None, False, False
            return Proposal(self.drafts, None, [0] * len(limits))
        drafts, scores = [], []
        for i in range(k):
            logits = self.lm.forward(tokens, valid, last_only=True, holes=holes)[:, -1, :self.vocab].float()
            self.forwards += 1
            if self.processors is not None:
                before = torch.stack(drafts, dim=1) if drafts else None
                logits = self.processors(logits[:, None], before, i)[:, 0]
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
        if k == 0:  # no forward ran: nothing to trim
            return
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
    """The target and its cache, holding [B, P - 1] prompts for its first forward (the first step feeds them in front
    of the last prompt token and the drafts), and its vocabulary size V (its output layer's rows)."""
    lm = _Cached(target, input_ids.shape[0])
    head = target.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else target.config.get_text_config().vocab_size
    lm.defer(input_ids[:, :-1], attention_mask[:, :-1])
    return lm, vocab


def _start_drafter(draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, vocab: int,
                   sampling: dict | None, rng: random.Random, pad_token_id: int,
                   processors: PrefixProcessors | None = None) -> Drafter:
    """The drafter for this call, prefilled with the [B, P] prompts: a :class:`PromptLookupRun` over the prompts'
    tokens, or a :class:`_DraftModel` (sampling: its own random.Random, seeded from `rng`; its scores processed by
    `processors`) over prompt[:, :-1]."""
    if isinstance(draft, PromptLookupDrafter):
        seqs = [[t for t, m in zip(r, mk, strict=True) if m]
                for r, mk in zip(input_ids.tolist(), attention_mask.tolist(), strict=True)]
        return PromptLookupRun(draft, seqs, k, pad_token_id)
    draft_rng = None if sampling is None else random.Random(rng.getrandbits(62))
    drafter = _DraftModel(draft, input_ids.shape[0], k, vocab, sampling, draft_rng, processors)
    drafter.prefill(input_ids[:, :-1], attention_mask[:, :-1])
    return drafter


def _step(lm: _Cached, drafter: Drafter, last: torch.Tensor, limits: list[int], sampling: dict | None,
          rng: random.Random, processors: PrefixProcessors | None = None, watch: _Stopwatch | None = None) -> _Step:
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
    processors : PrefixProcessors, optional
        Applied to the target's K' + 1 rows of scores, each with its prefix (the drafts before it).
    watch : _Stopwatch, optional
        Marks the start, the drafts proposed, the target's forward done and the step's synchronisation (the "cost"
        schedule's measurements).

    Returns
    -------
    _Step
    """
    if watch is not None:
        watch.mark()
    drafts, scores, counts = drafter.propose(last, limits)
    if watch is not None:
        watch.mark()
    k = drafts.shape[1]
    drafts = drafts.to(lm.device)
    tokens = torch.cat([last[:, None], drafts], dim=1)
    logits = lm.forward(tokens, None).float()
    if watch is not None:
        watch.mark()
    if processors is not None:
        logits = processors(logits, drafts, 0, counts)
    nd = None if all(c == k for c in counts) else torch.tensor(counts, device=logits.device)
    vseed = rng.getrandbits(62)
    if sampling is None:
        res = verify(logits, drafts.to(logits.device), None, num_draft_tokens=nd, temperature=0.0, seed=vseed)
    else:  # raw scores: verify warps target and draft alike
        dscores = None if scores is None else scores.to(logits.device)
        res = verify(logits, drafts.to(logits.device), dscores, num_draft_tokens=nd, seed=vseed, **sampling)
    # the one host synchronisation per step: stopping (EOS, length) and the caches' crop need the counts
    n_host, tok_host = res.num_accepted.tolist(), res.tokens.tolist()
    if watch is not None:
        watch.mark()
    accepted = [t[:n + 1] for t, n in zip(tok_host, n_host, strict=True)]
    drawn = res.tokens.gather(1, res.num_accepted[:, None].to(res.tokens.device))[:, 0]
    step = _Step(counts, k + 1, res.num_accepted.to(lm.device), accepted, drawn.to(lm.device))
    lm.keep(step.n, step.width, max(n_host), min(n_host))
    drafter.accept(step.n, step.accepted)
    return step


def _commit_rows(rows: _Rows, step: _Step, budget: list[int], eos: list[int], stats: GenerationStats,
                 callback, stop=None) -> list[int]:
    """Append each running row's new tokens (cut after an EOS id, after the first token where `stop` fires, and at
    its budget), count them, call `callback`.

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
    stop : callable or None
        ``stop(row, new_tokens)``: whether the row ends after the last of `new_tokens` (all its new tokens so far,
        the candidate included); asked token by token.

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
            if t in eos or (stop is not None and stop(r, rows.new[r] + got[: j + 1])):
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


class _Stopwatch:
    """Marks within a step, on the target's device: ``time.perf_counter`` on the CPU, CUDA events on a GPU (read after
    the step's one synchronisation: timing adds none). Other devices are timed on the host."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def spans(self) -> list[float]:
        """The seconds between consecutive marks since the last call."""
        marks, self.marks = self.marks, []
        if self.cuda:
            marks[-1].synchronize()  # (reached already: the step synchronised before its last mark)
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:], strict=False)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


#: The draft-length schedules :func:`generate` takes (``num_assistant_tokens_schedule``); transformers'
#: "heuristic_transient" (its "heuristic" without carrying K over to the next call) is "heuristic" here, where every
#: call starts from K.
SCHEDULES = ("constant", "heuristic", "heuristic_transient", "cost")


def _schedule(value) -> str:
    """The schedule `_run` takes for a ``num_assistant_tokens_schedule`` value (None: "constant"); a ValueError names
    the option for any other value."""
    value = value or "constant"
    if value not in SCHEDULES:
        raise ValueError(f"num_assistant_tokens_schedule must be one of {', '.join(map(repr, SCHEDULES))}, got "
                         f"{value!r}")
    return "heuristic" if value == "heuristic_transient" else value

#: After this many steps without drafts the "cost" schedule drafts one token per row (a probe: acceptance can change);
#: the wait doubles after each probe that changes nothing.
PROBE_EVERY = 8

#: Weight of a new measurement in the "cost" schedule's running means of times.
COST_SMOOTHING = 0.5

#: Per step, the "cost" schedule's acceptance counts are multiplied by this (older steps count less).
ACCEPTANCE_MEMORY = 0.8


class _Costs:
    """Measured times and acceptance of one (target, drafter) pair on this machine, kept across :func:`generate` calls
    (the "cost" schedule's model of a step; see :class:`_CostSchedule`).

    Attributes
    ----------
    target : dict of int to float
        Token rows a target forward fed (B' x (K' + 1)) -> its smoothed seconds.
    prefill : tuple of (int, float) or None
        The last first forward of a call (it also fed the prompts): (token rows, seconds).
    draft, rest : dict of int to float
        Running rows B' -> smoothed seconds per draft forward, and of the rest of a step (verify, processors, host).
    verified, rejected : list of float
        Per draft position i (index i, 1 up): drafts verified there (the ones before it accepted) and rejected there,
        summed over rows; older steps count less (ACCEPTANCE_MEMORY per step that drafted).
    """

    def __init__(self):
        self.target: dict[int, float] = {}
        self.prefill: tuple[int, float] | None = None
        self.draft: dict[int, float] = {}
        self.rest: dict[int, float] = {}
        self.verified: list[float] = [0.0]
        self.rejected: list[float] = [0.0]

    def count_acceptance(self, counts: list[int], accepted: list[list[int]]) -> None:
        """Add a step's drafts (`counts`: K_b per row; `accepted`: each row's accepted drafts and drawn token)."""
        width = max(counts) + 1
        if len(self.verified) < width:
            self.verified += [0.0] * (width - len(self.verified))
            self.rejected += [0.0] * (width - len(self.rejected))
        self.verified = [ACCEPTANCE_MEMORY * v for v in self.verified]
        self.rejected = [ACCEPTANCE_MEMORY * r for r in self.rejected]
        for count, tokens in zip(counts, accepted, strict=True):
            n = len(tokens) - 1  # accepted: positions 1..n, then position n + 1 rejected if it was verified
            for i in range(1, min(n + 1, count) + 1):
                self.verified[i] += 1.0
            if n < count:
                self.rejected[n + 1] += 1.0

    def survival(self, max_k: int) -> list[float]:
        """S(0..max_k): the chance that a row's drafts 1..i are all accepted (Kaplan-Meier over the positions, each
        position's rejection rate shrunk towards the rate over all positions, which starts at 1/2)."""
        pooled = (sum(self.rejected) + 0.5) / (sum(self.verified) + 1.0)
        out = [1.0]
        for i in range(1, max_k + 1):
            verified, rejected = (self.verified[i], self.rejected[i]) if i < len(self.verified) else (0.0, 0.0)
            out.append(out[-1] * (1.0 - (rejected + pooled) / (verified + 1.0)))
        return out

    def target_line(self) -> tuple[float, float] | None:
        """(seconds, seconds per token row) of a target forward: least squares through the measured sizes (with the
        first forward while fewer than two are known); None before two sizes."""
        points = list(self.target.items())
        if len(points) < 2 and self.prefill is not None:
            points.append(self.prefill)
        if len({x for x, _ in points}) < 2:
            return None
        n = len(points)
        mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
        slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
        slope = max(slope, 0.0)
        return max(my - slope * mx, 0.0), slope


def _nearest(times: dict[int, float], rows: int, factor: float = math.inf) -> float | None:
    """The time measured at the number of rows closest to `rows` (the larger on a tie); None when none lies within
    `factor` of it."""
    near = min(times, key=lambda r: (abs(r - rows), -r), default=None)
    return None if near is None or not rows / factor <= near <= rows * factor else times[near]


def _smooth(times: dict[int, float], key: int, seconds: float) -> None:
    w = COST_SMOOTHING
    times[key] = seconds if key not in times else (1 - w) * times[key] + w * seconds


#: (target, drafter) -> _Costs, for as long as both live.
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: One PromptLookupDrafter per setting, standing for every drafter with that setting in _COSTS.
_LOOKUP_KEYS: dict[tuple, PromptLookupDrafter] = {}


def _costs_of(target, drafter) -> _Costs:
    """The measured times of this (target, drafter) pair: new ones for a pair not seen in this process. Prompt-lookup
    drafters with the same setting count as one (``prompt_lookup_num_tokens=`` makes a new one per call)."""
    if isinstance(drafter, PromptLookupDrafter):
        key = (type(drafter), drafter.max_ngram, drafter.min_ngram, drafter.max_lookback)
        drafter = _LOOKUP_KEYS.setdefault(key, drafter)
    return _COSTS.setdefault(target, weakref.WeakKeyDictionary()).setdefault(drafter, _Costs())


class _CostSchedule:
    """The "cost" schedule: each step drafts the K' in [0, max_k] that maximises the expected tokens per second,

        sum_b E(min(K', limit_b)) / (T_target(B' (K' + 1)) + K' T_draft(B') + T_rest(B')),
        E(k) = S(0) + S(1) + ... + S(k),

    with S(i) the chance that a row's first i drafts are all accepted, estimated over all rows and recent steps
    position by position (Kaplan-Meier: acceptance comes in runs, so a draft after accepted ones is accepted more
    often than the first; positions not yet drafted take the rate over all positions); T_target the measured time of
    a target forward that fed B' (K' + 1) token rows where that size was measured, else a line through the measured
    sizes (the first forward, which also fed the prompt, is used until two other sizes are known); T_draft the
    measured time per draft forward and T_rest the rest of a step (verify, processors, the host), both at the nearest
    batch size measured. The times and the acceptance counts belong to the (target, drafter) pair and carry over to
    its next calls (:class:`_Costs`); until they suffice (a target line; a draft time measured in this call, or in an
    earlier one within a factor 2 of B': a draft forward's time depends on B) a step drafts K.

    Where a forward's cost grows with its rows (a CPU, a large batch) the schedule drafts less, down to K' = 0 (a
    step of plain decoding: the target's next token; the draft model is fed what it skipped in its next forward).
    Acceptance can change, so after PROBE_EVERY such steps a probe drafts one token per row; each probe after which
    the schedule drafts nothing again doubles the wait for the next. Where the cost stays flat (a GPU at small B) it
    drafts up to max_k. The choice depends on past steps only, so the output distribution is exact whatever it is;
    as it depends on measured times, sampled tokens can differ between runs with the same seed.

    Parameters
    ----------
    costs : _Costs
        The pair's measured times (updated by :meth:`observe`).
    k0 : int
        K' until the measurements suffice.
    max_k : int
        The largest K'.
    batch : int
        B, rows at the start.
    """

    def __init__(self, costs: _Costs, k0: int, max_k: int, batch: int):
        self.costs, self.k0, self.max_k = costs, k0, max_k
        self.plain = 0  # steps since the last one that drafted
        self.probe_every = PROBE_EVERY  # steps without drafts before a probe (doubles while probes find nothing)
        self.timed_draft = False  # whether this call measured a draft forward
        self.probed = False

    def observe(self, step: _Step, spans: list[float], prefill_rows: int = 0) -> None:
        """Take a step's acceptance and its `spans` (propose, target forward, rest; seconds); `prefill_rows`: the
        prompt's token rows the target's forward also fed (the first step: a draft forward then fed the prompt too)."""
        if step.width > 1:  # (a step without drafts says nothing about acceptance)
            self.costs.count_acceptance(step.counts, step.accepted)
        self.plain = self.plain + 1 if step.width == 1 else 0
        propose, forward, rest = spans
        rows = len(step.counts)
        fed = rows * step.width
        if prefill_rows:
            self.costs.prefill = (prefill_rows + fed, forward)
            return
        _smooth(self.costs.target, fed, forward)
        if step.width > 1:  # (K' = 0 ran no draft forward)
            _smooth(self.costs.draft, rows, propose / (step.width - 1))
            self.timed_draft = True
        _smooth(self.costs.rest, rows, rest)

    def choose(self, limits: list[int]) -> int:
        """K' for the next step, given each running row's most drafts `limits`."""
        rows = len(limits)
        line = self.costs.target_line()
        draft = _nearest(self.costs.draft, rows, math.inf if self.timed_draft else 2)
        if line is None or draft is None:
            return self.k0
        base, per_row = line
        rest = _nearest(self.costs.rest, rows) or 0.0
        if self.plain >= self.probe_every:  # a probe: one draft per row measures acceptance again
            self.probed = True
            return 1
        expected = list(itertools.accumulate(self.costs.survival(self.max_k)))  # E(k) = S(0) + ... + S(k)
        best, best_rate = 0, -1.0
        for k in range(self.max_k + 1):
            tokens = sum(expected[min(k, lim)] for lim in limits)
            fed = rows * (k + 1)
            seconds = self.costs.target.get(fed, base + per_row * fed) + k * draft + rest
            rate = tokens / max(seconds, 1e-12)
            if rate > best_rate:
                best, best_rate = k, rate
        if self.probed:  # the step after a probe: back to no drafts doubles the wait for the next one
            self.probe_every = 2 * self.probe_every if best == 0 else PROBE_EVERY
            self.probed = False
        return best


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


# ------------------------------------------------------------------------------------ transformers' options
HONOURED, REFUSED, IRRELEVANT = "honoured", "refused", "irrelevant"

#: Every attribute of transformers' ``GenerationConfig`` (4.57 to 5.24), as :func:`generate` treats it, with why.
#: ``honoured``: applied exactly as ``model.generate`` applies it. ``refused``: a value other than its default (or
#: "off" value) raises a ValueError naming the option and where it came from (an argument, ``generation_config=``,
#: ``target.generation_config``): it would change the output, and specsampler does not apply it. ``irrelevant``: it
#: cannot change the tokens generate returns here (output formatting, caching and compilation, other model kinds,
#: drafting heuristics that only change speed), so any value is accepted. A test walks the installed
#: ``GenerationConfig`` and fails on an attribute missing here; at run time an unknown attribute set to a non-default
#: value is refused too.
GENERATION_CONFIG_OPTIONS: dict[str, tuple[str, str]] = {
    # length and stopping
    "max_new_tokens": (HONOURED, "the most new tokens per row; wins over max_length"),
    "max_length": (HONOURED, "prompt width + new tokens, when max_new_tokens is unset (a prompt as long raises)"),
    "eos_token_id": (HONOURED, "a row stops after any of these"),
    "pad_token_id": (HONOURED, "fills rows that finished early (default: the first EOS id)"),
    "stop_strings": (HONOURED, "transformers' StopStringCriteria, checked token by token; needs tokenizer="),
    "max_time": (HONOURED, "transformers' MaxTimeCriteria, checked token by token"),
    "num_return_sequences": (HONOURED, "each prompt repeated, consecutive rows; greedy with n > 1 raises"),
    "min_length": (HONOURED, "MinLengthLogitsProcessor (EOS masked while the sequence is shorter)"),
    "min_new_tokens": (HONOURED, "MinNewTokensLengthLogitsProcessor (EOS masked before that many new tokens)"),
    # sampling
    "do_sample": (HONOURED, "False: greedy; True: sampling from the warped target distribution"),
    "temperature": (HONOURED, "as TemperatureLogitsWarper"),
    "top_k": (HONOURED, "as TopKLogitsWarper (transformers' default 50 applies when unset, as in model.generate)"),
    "top_p": (HONOURED, "as TopPLogitsWarper"),
    "min_p": (HONOURED, "as MinPLogitsWarper"),
    "typical_p": (REFUSED, "TypicalLogitsWarper is not applied"),
    "epsilon_cutoff": (REFUSED, "EpsilonLogitsWarper is not applied"),
    "eta_cutoff": (REFUSED, "EtaLogitsWarper is not applied"),
    "top_h": (REFUSED, "TopHLogitsWarper is not applied"),
    # logits processors: transformers' own, applied at every position of the target and the draft with its prefix
    "repetition_penalty": (HONOURED, "RepetitionPenaltyLogitsProcessor"),
    "encoder_repetition_penalty": (HONOURED, "EncoderRepetitionPenaltyLogitsProcessor (over the prompt)"),
    "no_repeat_ngram_size": (HONOURED, "NoRepeatNGramLogitsProcessor"),
    "encoder_no_repeat_ngram_size": (HONOURED, "EncoderNoRepeatNGramLogitsProcessor (n-grams of the prompt)"),
    "bad_words_ids": (HONOURED, "NoBadWordsLogitsProcessor"),
    "sequence_bias": (HONOURED, "SequenceBiasLogitsProcessor"),
    "suppress_tokens": (HONOURED, "SuppressTokensLogitsProcessor"),
    "begin_suppress_tokens": (HONOURED, "SuppressTokensAtBeginLogitsProcessor"),
    "forced_bos_token_id": (HONOURED, "ForcedBOSTokenLogitsProcessor"),
    "forced_eos_token_id": (HONOURED, "ForcedEOSTokenLogitsProcessor (EOS forced at max_length - 1)"),
    "exponential_decay_length_penalty": (HONOURED, "ExponentialDecayLengthPenalty"),
    "remove_invalid_values": (HONOURED, "InfNanRemoveLogitsProcessor"),
    "guidance_scale": (REFUSED, "classifier-free guidance is not supported"),
    "watermarking_config": (REFUSED, "watermarking is not applied"),
    "renormalize_logits": (IRRELEVANT, "a final log-softmax: softmax and argmax of the scores are unchanged"),
    # other decoding strategies
    "num_beams": (REFUSED, "beam search (num_beams > 1) is not supported"),
    "num_beam_groups": (REFUSED, "group beam search is not supported"),
    "diversity_penalty": (REFUSED, "group beam search is not supported"),
    "constraints": (REFUSED, "constrained beam search is not supported"),
    "force_words_ids": (REFUSED, "constrained beam search is not supported"),
    "penalty_alpha": (REFUSED, "contrastive search is not supported"),
    "dola_layers": (REFUSED, "DoLa decoding is not supported"),
    "token_healing": (REFUSED, "token healing (rewriting the prompt's tail) is not supported"),
    "length_penalty": (IRRELEVANT, "beam search only (num_beams > 1 is refused)"),
    "early_stopping": (IRRELEVANT, "beam search only (num_beams > 1 is refused)"),
    "low_memory": (IRRELEVANT, "beam and contrastive search only (both refused)"),
    # assisted generation
    "num_assistant_tokens": (HONOURED, "K, drafts per step (transformers' global default 20 is not adopted: "
                                       "specsampler's default 4 applies unless a config sets another value)"),
    "num_assistant_tokens_schedule": (HONOURED, "'constant', 'heuristic' ('heuristic_transient' alike) or "
                                                "specsampler's 'cost' ('dynamic' raises)"),
    "prompt_lookup_num_tokens": (HONOURED, "prompt-lookup drafting with K = this, when no drafter is passed"),
    "max_matching_ngram_size": (HONOURED, "the prompt-lookup drafter's longest n-gram (default 3)"),
    "assistant_confidence_threshold": (IRRELEVANT, "when a draft model stops drafting: speed only, not the output"),
    "assistant_lookbehind": (IRRELEVANT, "draft and target with different tokenizers only (not supported)"),
    "target_lookbehind": (IRRELEVANT, "draft and target with different tokenizers only (not supported)"),
    "is_assistant": (IRRELEVANT, "marks a draft's own config"),
    "assistant_early_exit": (REFUSED, "early-exit self-drafting: pass the drafter instead"),
    "assistant_ensemble_weight": (REFUSED, "lossy ensemble verification: specsampler verifies exactly"),
    "speculation_type": (REFUSED, "DFlash drafting is not supported"),
    "use_mtp": (REFUSED, "multi-token-prediction drafting is not supported"),
    # outputs: generate returns GenerateOutput (sequences and stats), whatever return_dict_in_generate says
    "return_dict_in_generate": (IRRELEVANT, "generate always returns a GenerateOutput with .sequences"),
    "output_scores": (REFUSED, "scores are not returned"),
    "output_logits": (REFUSED, "logits are not returned"),
    "output_attentions": (REFUSED, "attentions are not returned"),
    "output_hidden_states": (REFUSED, "hidden states are not returned"),
    "return_legacy_cache": (IRRELEVANT, "no cache is returned (transformers 4.x)"),
    # cache, compilation, batching, special tokens of other model kinds, metadata
    "use_cache": (IRRELEVANT, "specsampler always runs with its own DynamicCache: the same values"),
    "cache_implementation": (REFUSED, "refused when quantized (other values: specsampler's own DynamicCache computes "
                                      "the same values)"),
    "cache_config": (IRRELEVANT, "options of the cache_implementation (quantized ones are refused)"),
    "max_cache_len": (IRRELEVANT, "static caches only"),
    "prefill_chunk_size": (IRRELEVANT, "memory of the prefill only"),
    "compile_config": (IRRELEVANT, "compilation only"),
    "disable_compile": (IRRELEVANT, "compilation only"),
    "continuous_batching_config": (IRRELEVANT, "transformers' generate_batch only"),
    "bos_token_id": (IRRELEVANT, "used when no input_ids are given; generate needs them"),
    "decoder_start_token_id": (IRRELEVANT, "encoder-decoder models only"),
    "transformers_version": (IRRELEVANT, "metadata"),
}

# values that mean "off" besides None and transformers' default (5.x leaves most defaults None)
_OFF_VALUES = {
    "num_beams": (1,), "num_beam_groups": (1,), "diversity_penalty": (0.0,), "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,),
    "min_length": (0,), "min_new_tokens": (0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,), "eta_cutoff": (0.0,),
    "guidance_scale": (1.0,), "penalty_alpha": (0.0,), "remove_invalid_values": (False,), "token_healing": (False,),
    "output_scores": (False,), "output_logits": (False,), "output_attentions": (False,),
    "output_hidden_states": (False,), "use_mtp": (False,),
}
_NOT_QUANTIZED = {"cache_implementation": lambda v: "quantized" not in str(v)}
_UNSET = object()  # "not passed": the generation configs decide (None passed means what it means to transformers)


def _same(a, b) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # tensors, odd objects
        return False


def _global_defaults() -> dict:
    """transformers' defaults for options no config sets: 5.x's ``_get_default_generation_params()``; 4.x keeps them
    in every ``GenerationConfig`` (``{}`` here)."""
    from transformers import GenerationConfig

    get = getattr(GenerationConfig, "_get_default_generation_params", None)
    return dict(get()) if get is not None else {}


def _is_off(name: str, value, defaults: dict, fresh) -> bool:
    """Whether a refused option's `value` leaves the output as it is (None, the default, an "off" value)."""
    if value is None or _same(value, defaults.get(name, getattr(fresh, name, None))):
        return True
    if isinstance(value, (list, tuple, dict)) and not value:
        return True
    if name in _NOT_QUANTIZED:
        return _NOT_QUANTIZED[name](value)
    return any(_same(value, off) for off in _OFF_VALUES.get(name, ()))


def resolve_generation_options(target, generation_config=None, **explicit) -> dict[str, tuple[object, str]]:
    """Every ``GenerationConfig`` option as ``model.generate`` resolves it: name -> (value, source).

    The order is transformers': an explicit keyword (source "argument"), then `generation_config` where it sets the
    option, then ``target.generation_config`` where it sets it, then transformers' global default ("default"). An
    option counts as set in a config when it differs from a fresh ``GenerationConfig()`` (5.x: not None; 4.x: not
    the built-in default), as transformers decides in ``_prepare_generation_config``; a 4.x model's config that
    unsets an option (``top_k=None``) thus unsets it here too.
    """
    from transformers import GenerationConfig

    fresh = GenerationConfig()
    defaults = _global_defaults()
    model_cfg = getattr(target, "generation_config", None)
    names = [k for k in vars(fresh) if not k.startswith("_")]
    names += [k for k in explicit if k not in names]
    out = {}
    for name in names:
        if name in explicit:
            out[name] = (explicit[name], "argument")
            continue
        unset = getattr(fresh, name, None)
        for source, cfg in (("generation_config", generation_config), ("target.generation_config", model_cfg)):
            if cfg is not None and hasattr(cfg, name) and not _same(getattr(cfg, name), unset):
                out[name] = (getattr(cfg, name), source)
                break
        else:
            out[name] = (defaults.get(name, unset), "default")
    return out


def _refuse_unsupported(options: dict[str, tuple[object, str]], who: str = "specsampler.generate") -> None:
    """A ValueError naming the first refused (or unknown) option set to a value that would change the output."""
    from transformers import GenerationConfig

    fresh, defaults = GenerationConfig(), _global_defaults()
    for name, (value, source) in options.items():
        kind, why = GENERATION_CONFIG_OPTIONS.get(name, (None, "specsampler does not know this option"))
        if kind in (HONOURED, IRRELEVANT) or _is_off(name, value, defaults, fresh):
            continue
        where = "passed" if source == "argument" else f"set in {source}"
        hint = "" if source == "argument" else f" (pass {name}=<its off value> to generate to override it)"
        raise ValueError(f"{who} does not support {name}={value!r} ({where}): {why}{hint}")


#: The options that make ``model.generate`` build a logits processor (applied by :class:`PrefixProcessors`).
PROCESSOR_OPTIONS = ("min_length", "min_new_tokens", "repetition_penalty", "encoder_repetition_penalty",
                     "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias",
                     "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                     "exponential_decay_length_penalty", "remove_invalid_values")


def _logits_processors(target, options, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new: int,
                       eos: list[int], logits_processor=None, prefix_allowed_tokens_fn=None) -> list:
    """The processors ``model.generate`` would build for these options and [B, P] prompts (repeated for
    num_return_sequences already), warpers excluded: transformers' own ``_get_logits_processor`` on a config with the
    resolved values, ``max_length`` = P + `max_new` and ``min_length`` from ``min_new_tokens`` as transformers sets
    them; the caller's `logits_processor` list and `prefix_allowed_tokens_fn` where it puts them."""
    from transformers import GenerationConfig, LogitsProcessorList

    values = {name: options[name][0] for name in PROCESSOR_OPTIONS if options[name][0] is not None}
    if not values and not logits_processor and prefix_allowed_tokens_fn is None:
        return []
    prompt = input_ids.shape[1]
    n_seq = options["num_return_sequences"][0] or 1
    cfg = GenerationConfig(**values, max_length=prompt + max_new, num_beams=1)
    cfg.num_return_sequences = n_seq  # (PrefixConstrained's rows per prompt; set after the greedy-only validation)
    if cfg.min_new_tokens is not None:
        cfg.min_length = cfg.min_new_tokens + prompt
    device = _input_device(target)
    cfg._eos_token_tensor = torch.tensor(eos, device=device) if eos else None
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    procs = target._get_logits_processor(
        generation_config=cfg, input_ids_seq_length=prompt, encoder_input_ids=input_ids.to(device),
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, logits_processor=LogitsProcessorList(logits_processor or []),
        device=device, model_kwargs={"attention_mask": mask.to(device)})
    processors, warp = split_processors(procs)
    if warp:
        raise ValueError(f"logits_processor holds warpers ({sorted(warp)}): pass temperature=, top_k=, top_p=, "
                         f"min_p= instead (specsampler applies them inside verify)")
    return processors


def _stop_rows(input_ids: torch.Tensor, criteria: list):
    """``stop(row, new_tokens)`` for :func:`_commit_rows`: whether any of transformers' StoppingCriteria fires on
    the row's sequence (its prompt, left padding kept, then `new_tokens`), called as transformers calls them with a
    [1, L] tensor (scores: None); None without criteria."""
    if not criteria:
        return None

    def stop(row: int, new_tokens: list[int]) -> bool:
        seq = torch.cat([input_ids[row], torch.tensor(new_tokens, dtype=input_ids.dtype, device=input_ids.device)])
        for crit in criteria:
            fired = crit(seq[None], None)
            if bool(fired.reshape(-1)[0]) if isinstance(fired, torch.Tensor) else bool(fired):
                return True
        return False

    return stop


def _stopping_criteria(stopping_criteria, stop_strings, max_time, tokenizer) -> list:
    """The criteria a row is checked against token by token: the caller's, then MaxTimeCriteria and
    StopStringCriteria as transformers builds them from max_time and stop_strings."""
    crits = list(stopping_criteria) if stopping_criteria is not None else []
    if max_time is not None:
        from transformers.generation.stopping_criteria import MaxTimeCriteria

        crits.append(MaxTimeCriteria(max_time=max_time))
    if stop_strings is not None:
        if tokenizer is None:
            raise ValueError("stop_strings needs tokenizer= (the model's tokenizer), as transformers' generate does: "
                             "the strings are matched against the tokens' text")
        from transformers.generation.stopping_criteria import StopStringCriteria

        crits.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    return crits


def _drafter_of(draft, assistant_model, prompt_lookup_num_tokens, options) -> tuple[object, int | None]:
    """The one drafter of the call and, for prompt_lookup_num_tokens=N, K = N (else None); a ValueError unless
    exactly one of draft, assistant_model, prompt_lookup_num_tokens is given (without any, a
    prompt_lookup_num_tokens set in a generation config is used, as transformers does)."""
    given = [name for name, value in (("draft", draft), ("assistant_model", assistant_model),
                                      ("prompt_lookup_num_tokens", prompt_lookup_num_tokens)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give exactly one drafter: draft, assistant_model or prompt_lookup_num_tokens (got "
                         f"{' and '.join(given)})")
    if not given:
        lookup, source = options.get("prompt_lookup_num_tokens", (None, "default"))
        if lookup is None:
            raise ValueError("specsampler.generate needs a drafter: draft= (or transformers' name, assistant_model=) "
                             "a smaller model or a PromptLookupDrafter, or prompt_lookup_num_tokens=N for prompt "
                             "lookup")
        prompt_lookup_num_tokens = lookup
    if prompt_lookup_num_tokens is not None:
        n = prompt_lookup_num_tokens
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"prompt_lookup_num_tokens must be an integer >= 1, got {n!r}")
        ngram = options.get("max_matching_ngram_size", (None, "default"))[0]
        return (PromptLookupDrafter(max_ngram=int(ngram)) if ngram else PromptLookupDrafter()), int(n)
    return (draft if draft is not None else assistant_model), None


def _draft_length(num_draft_tokens, num_assistant_tokens, lookup_k, options) -> int:
    """K: num_draft_tokens or its transformers name num_assistant_tokens (the same value if both), prompt lookup's
    N, a num_assistant_tokens a generation config sets, else 4."""
    if num_draft_tokens is not None and num_assistant_tokens is not None and num_draft_tokens != num_assistant_tokens:
        raise ValueError(f"num_draft_tokens={num_draft_tokens!r} and num_assistant_tokens={num_assistant_tokens!r} "
                         f"are the same option: give one")
    k = num_draft_tokens if num_draft_tokens is not None else num_assistant_tokens
    if lookup_k is not None:
        if k is not None and k != lookup_k:
            raise ValueError(f"prompt_lookup_num_tokens={lookup_k} is the draft length of prompt lookup: "
                             f"num_draft_tokens / num_assistant_tokens={k!r} contradicts it")
        return lookup_k
    if k is not None:
        return k
    value, source = options.get("num_assistant_tokens", (None, "default"))
    return value if source != "default" and value is not None else 4


def _max_new_tokens(options, prompt_width: int) -> int:
    """max_new_tokens if set anywhere, else max_length minus the prompt width (transformers' rule and errors)."""
    value, _ = options["max_new_tokens"]
    if value is not None:
        return value
    max_length, source = options["max_length"]
    if source == "default":
        warnings.warn(f"Using the model-agnostic default `max_length` (={max_length}) to control the generation "
                      f"length, as transformers does. We recommend setting `max_new_tokens`.", UserWarning,
                      stacklevel=3)
    if not isinstance(max_length, numbers.Integral) or prompt_width >= max_length:
        raise ValueError(f"Input length of input_ids is {prompt_width}, but `max_length` is set to {max_length!r}: "
                         f"set max_new_tokens (or a larger max_length)")
    return int(max_length) - prompt_width


class _StreamRows:
    """The per-step callback that feeds transformers' streamer protocol (``put`` a [1, n] tensor of the row's new
    tokens) and calls the user's ``callback(row, tokens)``."""

    def __init__(self, streamer, callback):
        self.streamer, self.callback = streamer, callback

    def __call__(self, row: int, tokens: list[int]) -> None:
        if self.callback is not None:
            self.callback(row, tokens)
        if self.streamer is not None:
            self.streamer.put(torch.tensor([tokens], dtype=torch.long))


@torch.no_grad()
def generate(target, draft=None, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int | None = None, num_draft_tokens: int | None = None, do_sample: bool | None = None,
             temperature=_UNSET, top_k=_UNSET, top_p=_UNSET, min_p=_UNSET, seed: int | None = None,
             eos_token_id=None, pad_token_id: int | None = None, callback=None,
             num_assistant_tokens_schedule: str | None = None, assistant_model=None,
             prompt_lookup_num_tokens: int | None = None, num_assistant_tokens: int | None = None,
             generation_config=None, streamer=None, stopping_criteria=None, stop_strings=_UNSET, tokenizer=None,
             num_return_sequences: int | None = None, logits_processor=None, prefix_allowed_tokens_fn=None,
             **generation_kwargs) -> GenerateOutput:
    """Speculative decoding for a batch of (left-padded, ragged) prompts; every row advances at its own pace.

    Takes transformers' names too: ``generate(target, input_ids=ids, attention_mask=mask, assistant_model=draft,
    generation_config=cfg, streamer=streamer, ...)``. Every option left unset comes, as in ``target.generate``, from
    `generation_config`, else ``target.generation_config``, else transformers' defaults (do_sample False, top_k 50,
    max_length 20, ...): see :data:`GENERATION_CONFIG_OPTIONS` for what each ``GenerationConfig`` option does here;
    one that would change the output and is not applied raises a ValueError naming it.

    Parameters
    ----------
    target : transformers.PreTrainedModel
        The causal LM whose distribution the output follows (full attention: Llama, Qwen2, GPT-2, ...).
    draft : transformers.PreTrainedModel or PromptLookupDrafter, optional
        A smaller causal LM with the same tokenizer (its vocabulary may differ by padding; scores for ids past the
        target's vocabulary are dropped and the draft distribution renormalised), or a
        :class:`specsampler.PromptLookupDrafter` (n-gram matches in the sequence, one-hot drafts). Exactly one of
        `draft`, `assistant_model` and `prompt_lookup_num_tokens` is given.
    input_ids : torch.Tensor
        [B, P] int prompts, left padded.
    attention_mask : torch.Tensor, optional
        [B, P] 1 for tokens, 0 for left padding; None: all ones.
    max_new_tokens : int, optional
        The most new tokens per row. None: the configs' max_new_tokens, else their max_length minus P.
    num_draft_tokens : int, optional
        K, drafts per step (the prompt-lookup drafter may propose fewer for a row); with the "heuristic" schedule,
        each row's starting draft length. None: `num_assistant_tokens`, else `prompt_lookup_num_tokens`, else a
        ``num_assistant_tokens`` a config sets, else 4 (transformers' global default 20 is meant for its
        confidence-threshold stop, which specsampler does not have).
    do_sample : bool, optional
        False: greedy (each row equals ``target.generate(row, do_sample=False)``). True: sample from the target's
        distribution warped by temperature, top_k, top_p and min_p (applied to target and draft alike). None: the
        configs' (transformers' default False).
    temperature, top_k, top_p, min_p
        As transformers' warpers, in their order (temperature, top-k, top-p, min-p); used when do_sample
        (temperature 0 means greedy; None passed, top_k 0, top_p 1 and min_p 0 are off). Unset: the configs', with
        transformers' defaults (temperature 1, top_k 50, top_p 1, min_p off) as ``target.generate`` applies them.
        Drafts are drawn with :func:`specsampler.sample` and verified with :func:`specsampler.verify`, both given
        these options.
    seed : int, optional
        Seeds the draft sampling and the verification; None draws from torch's default generator.
    eos_token_id : int or list of int, optional
        Stop a row at any of these ([]: never). None: the configs' (as transformers does).
    pad_token_id : int, optional
        Fills rows that finished early. None: the configs', else the first EOS id, else 0.
    callback : callable, optional
        ``callback(row, tokens)`` after every step, for each row that gained tokens: the row's index in the output
        and its new tokens (a list of ints), e.g. to stream the text of a batch.
    num_assistant_tokens_schedule : {"constant", "heuristic", "heuristic_transient", "cost"}, optional
        As transformers' option of that name: "constant" drafts K every step; "heuristic" (or "heuristic_transient":
        every call starts from K) adapts each row's draft
        length, + 2 (up to 2K) after a step that accepted all its drafts, - 1 (down to 1) after one that rejected;
        the draft model then runs as many forwards as the longest row needs. specsampler's "cost" drafts, each step,
        the K' in [0, 2K] with the most expected tokens per second, from the acceptance and the forwards' times
        measured so far with these two models (kept for their next calls): fewer drafts where a forward's cost grows
        with its token rows (a CPU, a large batch), K' = 0 being a step of plain decoding; sampled tokens then depend
        on those times, so the same seed can give other tokens (from the same distribution). Exactness does not
        depend on the schedule. None: the configs' ("constant").
    assistant_model : transformers.PreTrainedModel or PromptLookupDrafter, optional
        transformers' name for `draft`.
    prompt_lookup_num_tokens : int, optional
        Draft by prompt lookup (a :class:`PromptLookupDrafter`, its longest n-gram the configs'
        ``max_matching_ngram_size`` or 3) with K = this.
    num_assistant_tokens : int, optional
        transformers' name for `num_draft_tokens`.
    generation_config : transformers.GenerationConfig, optional
        Options where no keyword sets them, before ``target.generation_config`` (transformers' order).
    streamer : transformers.generation.BaseStreamer, optional
        transformers' protocol: ``put`` the prompt ([1, P]), then each step's new tokens ([1, n]), ``end()`` at the
        end. One row only (as transformers' streamers); use `callback` for batches.
    stopping_criteria : transformers.StoppingCriteriaList, optional
        A row stops after the first token where a criterion fires, checked token by token (each criterion is called
        with the row's [1, L] sequence and ``scores=None``).
    stop_strings : str or list of str, optional
        transformers' StopStringCriteria (needs `tokenizer`). Unset: the configs'.
    tokenizer : transformers tokenizer, optional
        For `stop_strings`.
    num_return_sequences : int, optional
        n: each prompt gives n rows (consecutive, as transformers orders them); n > 1 needs sampling. None: the
        configs' (1).
    logits_processor : list of transformers.LogitsProcessor, optional
        Processors of the caller's, applied after those the options build, as ``model.generate`` merges them (at
        every position of target and draft, with its prefix; each must treat rows independently: it is called on the
        rows whose prefixes have the same length). Warpers are refused: pass temperature, top_k, top_p, min_p.
    prefix_allowed_tokens_fn : callable, optional
        ``fn(batch_id, input_ids) -> list of allowed ids``, as in ``model.generate`` (batch_id: the prompt's index).
    **generation_kwargs
        Any other ``GenerationConfig`` option (e.g. ``repetition_penalty=1.0`` to override a model's config, or
        ``max_length``, ``max_time``, ``max_matching_ngram_size``); refused ones raise a ValueError when set, other
        names a TypeError.

    Returns
    -------
    GenerateOutput
        ``sequences`` [B n, P + N] int64 on input_ids' device and ``stats``.

    Notes
    -----
    The logits processors the options ask for (repetition penalty, min_new_tokens, no_repeat_ngram_size, bad words,
    suppressed and forced tokens, ...) are transformers' own, built as ``model.generate`` builds them and applied to
    the target's and the draft's scores at every position with that position's prefix (the row's sequence and the
    drafts before it); temperature, top-k, top-p and min-p follow inside :func:`specsampler.sample` and
    :func:`specsampler.verify`. So greedy rows equal ``model.generate``'s and sampled rows follow its distribution.
    Warpers after min-p (typical_p, epsilon/eta cutoffs, top_h), classifier-free guidance and watermarking raise a
    ValueError naming their option. Sliding-window attention is not supported.
    """
    if input_ids is None or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a [B, P] tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}")
    unknown = sorted(k for k in generation_kwargs if k not in GENERATION_CONFIG_OPTIONS)
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown} (neither specsampler's nor "
                        f"GenerationConfig options)")
    explicit = dict(generation_kwargs)
    for name, value in (("max_new_tokens", max_new_tokens), ("do_sample", do_sample),
                        ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id),
                        ("num_assistant_tokens_schedule", num_assistant_tokens_schedule),
                        ("num_return_sequences", num_return_sequences)):
        if value is not None:  # None: unset (today's meaning for eos and pad ids)
            explicit[name] = value
    for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p),
                        ("stop_strings", stop_strings)):
        if value is not _UNSET:  # None passed: off, as in transformers
            explicit[name] = value
    if prompt_lookup_num_tokens is not None:
        explicit["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
    options = resolve_generation_options(target, generation_config, **explicit)
    _refuse_unsupported(options)
    drafter, lookup_k = _drafter_of(draft, assistant_model, prompt_lookup_num_tokens, options)
    k = _draft_length(num_draft_tokens, num_assistant_tokens, lookup_k, options)

    def opt(name):
        return options[name][0]

    do_sample = opt("do_sample")
    do_sample = False if do_sample is None else do_sample
    temperature = 1.0 if opt("temperature") is None else opt("temperature")
    max_new = _max_new_tokens(options, input_ids.shape[1])
    check_options(max_new_tokens=max_new, num_draft_tokens=k, do_sample=do_sample, temperature=temperature,
                  top_k=opt("top_k"), top_p=opt("top_p"), seed=seed, min_p=opt("min_p"))
    schedule = _schedule(opt("num_assistant_tokens_schedule"))
    n_seq = 1 if opt("num_return_sequences") is None else opt("num_return_sequences")
    if not isinstance(n_seq, numbers.Integral) or isinstance(n_seq, bool) or n_seq < 1:
        raise ValueError(f"num_return_sequences must be an integer >= 1, got {n_seq!r}")
    if n_seq > 1 and not do_sample:
        raise ValueError(f"Greedy methods (do_sample != True) without beam search do not support "
                         f"`num_return_sequences` different than 1 (got {n_seq}).")
    if streamer is not None and input_ids.shape[0] * n_seq != 1:
        raise ValueError(f"streamer= takes one row, as transformers' streamers do (here {input_ids.shape[0]} prompts "
                         f"x {n_seq} sequences); for batches pass callback=(row, tokens), called after every step "
                         f"with each row's new tokens")
    crits = _stopping_criteria(stopping_criteria, opt("stop_strings"), opt("max_time"), tokenizer)
    if n_seq > 1:
        input_ids = input_ids.repeat_interleave(n_seq, dim=0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(n_seq, dim=0)
    eos, _ = _eos_and_pad(target, opt("eos_token_id"), opt("pad_token_id"))
    processors = _logits_processors(target, options, input_ids, attention_mask, max_new, eos, logits_processor,
                                    prefix_allowed_tokens_fn)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    out = _run(target, drafter, input_ids, attention_mask, max_new_tokens=max_new, num_draft_tokens=k,
               sampling=_sampling(do_sample, temperature, opt("top_k"), opt("top_p"), opt("min_p")), seed=seed,
               eos_token_id=opt("eos_token_id"), pad_token_id=opt("pad_token_id"),
               callback=_StreamRows(streamer, callback) if streamer is not None else callback,
               stop=_stop_rows(input_ids, crits), schedule=schedule, processors=processors)
    if streamer is not None:
        streamer.end()
    return out


def _run(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, max_new_tokens: int,
         num_draft_tokens: int, sampling: dict | None, seed: int | None, eos_token_id, pad_token_id, callback, stop,
         schedule: str = "constant", processors: list | None = None) -> GenerateOutput:
    """:func:`generate` once its options are resolved and checked: prefill, then steps until every row is done
    (`schedule`: "constant", "heuristic" or "cost"; `processors`: logits processors applied at every position of
    target and draft, :class:`PrefixProcessors`)."""
    max_k = num_draft_tokens if schedule == "constant" else 2 * num_draft_tokens
    if max_new_tokens < 1:
        return GenerateOutput(input_ids.clone(), GenerationStats())
    attention_mask = _prompt_mask(input_ids, attention_mask)
    eos, pad_token_id = _eos_and_pad(target, eos_token_id, pad_token_id)
    rng = random.Random(run_seed(seed, target))
    lm, vocab = _prefill(target, input_ids, attention_mask)
    prefix = None if not processors else PrefixProcessors(processors, input_ids,
                                                          input_ids.shape[1] + max_new_tokens + max_k + 1, lm.device)
    drafter = _start_drafter(draft, input_ids, attention_mask, max_k, vocab, sampling, rng, pad_token_id, prefix)
    batch = input_ids.shape[0]
    rows = _Rows(list(range(batch)), [[] for _ in range(batch)], input_ids[:, -1].to(lm.device),
                 [num_draft_tokens] * batch)
    stats = GenerationStats()
    cost = _CostSchedule(_costs_of(target, draft), num_draft_tokens, max_k, batch) if schedule == "cost" else None
    watch = _Stopwatch(lm.device) if cost is not None else None
    if cost is not None:  # (measurements from earlier calls with these models may suffice already)
        rows.k = [rank0_choice(cost.choose([max_new_tokens - 1] * batch), target)] * batch
    while rows.ids:
        budget = rows.budget(max_new_tokens)
        if prefix is not None:
            prefix.start_step(rows.ids, rows.new)
        prefill_rows = lm.pending[0].numel() if lm.pending is not None else 0
        step = _step(lm, drafter, rows.last, [min(b - 1, k) for b, k in zip(budget, rows.k, strict=True)], sampling,
                     rng, prefix, watch)
        if schedule == "heuristic":
            _adapt_draft_lengths(rows, step, max_k)
        keep = _commit_rows(rows, step, budget, eos, stats, callback, stop)
        if cost is not None:
            cost.observe(step, watch.spans(), prefill_rows)
        _evict(rows, keep, lm, drafter)
        if cost is not None and rows.ids:  # (ranks of a split target measure their own times: rank 0's choice)
            rows.k = [rank0_choice(cost.choose([b - 1 for b in rows.budget(max_new_tokens)]), target)] * len(rows.ids)
    stats.draft_forwards = drafter.forwards
    return GenerateOutput(_sequences(input_ids, rows.new, pad_token_id), stats)
