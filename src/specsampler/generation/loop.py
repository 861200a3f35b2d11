"""The speculative decoding loop of :func:`specsampler.generate`, once its options are resolved.

One step, for every unfinished row b at once (gpt-fast's loop, batched):

1. the drafter proposes K_b <= K tokens d_1..d_K (a draft model: K single-token forwards, sampling each d_i from its
   warped distribution q_i; the prompt-lookup drafter: an n-gram match, one-hot q);
2. the target runs one forward over [last, d_1..d_K] and gives K+1 rows of scores;
3. :func:`specsampler.verify` accepts n_b drafts and draws one more token: row b gains n_b + 1 tokens (token or
   block verification, ``verify_method``; with ``output_scores`` / ``output_logits`` a :mod:`.outputs` recorder
   keeps the scores of the positions kept).

:func:`run` prefills (:func:`prefill`; each model holds its prompt, fed in front of its first forward, as
transformers' assisted generation does: one forward fewer per model), starts the drafter
(:func:`.drafters.start_drafter`, the one factory: a :class:`~.protocol.Drafter` or :class:`~.protocol.TreeDrafter`),
builds the step once (:func:`make_step`: a :class:`ChainStep`, steps 1-3, then both caches trimmed to what each row
accepted: holes, :mod:`.kv_cache`; with ``draft_tree`` or ``prompt_lookup_num_candidates`` > 1 a
:class:`.tree_loop.TreeStep`, a token tree per step, the same :class:`~.protocol.Step` out) and loops: the step,
:func:`commit_rows` (append, EOS, stopping criteria, length), :func:`evict` (finished rows leave the batch). The
schedule (:mod:`.schedules`) sets K_b before each step. Each step hands the drafter the target's step
(:class:`~.protocol.TargetStep`: accepted tokens, the target's scores and, for a drafter that asks, its last hidden
states).

Exactness: greedy rows accept a draft iff it is the target's argmax. Sampling draws each draft with
:func:`specsampler.sample` from the draft's processed scores and hands :func:`specsampler.verify` the processed target
and draft scores with the same temperature and warpers: verify warps both with the same code (the same cut, the same
tie rule), so q is the distribution each draft was drawn from and the tokens follow the warped target distribution.
Logits processors come before the warpers, as in ``model.generate`` (:mod:`.processors`).

Host synchronisation: one per step (the accepted counts and tokens come to the host: stopping on EOS and length,
and the prompt-lookup drafter, need them); everything else is queued on the devices.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from .._api import verify
from .._distributed import run_seed
from .drafters import start_drafter
from .kv_cache import CachedModel, check_tree_attention
from .outputs import ScoreRecorder, make_recorder
from .processors import PrefixProcessors
from .protocol import DraftCall, Drafter, Proposal, Step, TargetStep, TreeDrafter
from .schedules import make_schedule
from .tree_loop import TreeStep

__all__ = ["ChainStep", "GenerateOutput", "GenerationStats", "Step", "make_step", "run", "verify_chain"]


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
        Draft tokens verified (sum of K_b over rows and steps; with a token tree, the nodes verified).
    accepted : int
        Draft tokens accepted (with a token tree, the accepted path's depth).
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
    scores : tuple of torch.Tensor or None
        With ``output_scores=True``: N tensors [B, V] float32, as transformers' ``GenerateDecoderOnlyOutput.scores``:
        the scores each new token was chosen from (logits processors applied, then, when sampling, transformers'
        warpers: temperature divides, top-k / top-p / min-p set the removed ids to -inf). A row's entries past its
        end hold 0 at pad_token_id and -inf elsewhere. None otherwise.
    logits : tuple of torch.Tensor or None
        With ``output_logits=True``: N tensors [B, V] float32, the target's raw scores at those positions (the same
        fill past a row's end). None otherwise.
    """

    sequences: torch.Tensor
    stats: GenerationStats = field(default_factory=GenerationStats)
    scores: tuple | None = None
    logits: tuple | None = None


@dataclass
class Rows:
    """The host-side state of a batch: which rows still run, what every row has generated.

    Attributes
    ----------
    ids : list of int
        B': the index in `input_ids` of each running row.
    new : list of list of int
        B lists: the new tokens of every row, running or finished.
    last : torch.Tensor
        [B'] int64 each running row's last token, in neither cache: the first token fed at the next step.
    """

    ids: list[int]
    new: list[list[int]]
    last: torch.Tensor

    def budget(self, max_new_tokens: int) -> list[int]:
        """B': how many more tokens each running row may gain."""
        return [max_new_tokens - len(self.new[r]) for r in self.ids]


def prefill(target, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[CachedModel, int]:
    """The target and its cache, holding [B, P - 1] prompts for its first forward (the first step feeds them in front
    of the last prompt token and the drafts), and its vocabulary size V (its output layer's rows)."""
    lm = CachedModel(target, input_ids.shape[0])
    head = target.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else target.config.get_text_config().vocab_size
    lm.defer(input_ids[:, :-1], attention_mask[:, :-1])
    return lm, vocab


@dataclass
class ChainStep:
    """The chain step of a call, built once from the settings (:func:`make_step`): draft, score
    [last, d_1..d_K'] with the target, verify, and trim both caches to what each row accepted.

    Attributes
    ----------
    sampling : dict or None
        Temperature and warpers for :func:`specsampler.verify` when sampling; None: greedy.
    rng : random.Random
        Draws the verification seeds.
    method : {"token", "block", "traversal"}
        ``verify_method`` (greedy rows are the same either way; "traversal" verifies a chain by block verification,
        the same rule).
    processors : PrefixProcessors, optional
        Applied to the target's K' + 1 rows of scores, each with its prefix (the drafts before it).
    watch : Stopwatch, optional
        Marks the start, the drafts proposed, the target's forward done and the step's synchronisation (the "cost"
        schedule's measurements).
    recorder : ScoreRecorder, optional
        Asks for the step's raw and processed scores (:attr:`Step.raw`, :attr:`Step.processed`).
    hidden : bool
        Whether the drafter reads the target's last hidden states (``drafter.wants_hidden``): the target's forward
        then returns them, in :attr:`~.protocol.TargetStep.hidden`.
    """

    sampling: dict | None
    rng: random.Random
    method: str = "token"
    processors: PrefixProcessors | None = None
    watch: object = None
    recorder: ScoreRecorder | None = None
    hidden: bool = False

    def __call__(self, lm: CachedModel, drafter: Drafter, last: torch.Tensor, limits: list[int]) -> Step:
        """One step for the running rows: `last` [B'] int64 their last tokens (target device), `limits[b]` the most
        drafts row b can use."""
        if self.watch is not None:
            self.watch.mark()
        proposal = drafter.propose(last, limits)
        if self.watch is not None:
            self.watch.mark()
        step, target = self.verify(lm, proposal, last)
        drafter.accept(target)
        return step

    def verify(self, lm: CachedModel, proposal: Proposal, last: torch.Tensor) -> tuple[Step, TargetStep]:
        """The step once the drafts are proposed (:func:`verify_chain`)."""
        return verify_chain(lm, proposal, last, self)


def verify_chain(lm: CachedModel, proposal: Proposal, last: torch.Tensor, chain: ChainStep) -> tuple[Step, TargetStep]:
    """The rest of a :class:`ChainStep` once the drafts are proposed: score [last, d_1..d_K'] with the target, verify,
    keep in the target's cache what each row accepted (the drafter's cache is the caller's: ``drafter.accept``).
    `chain.watch` marks the forward done and the synchronisation.

    Returns
    -------
    Step
    TargetStep
        For the drafter: the accepted counts and tokens, the scores at [last, d_1..d_K'] (and the hidden states if
        ``chain.hidden``).
    """
    drafts, scores, counts = proposal
    processors, recorder, watch = chain.processors, chain.recorder, chain.watch
    k = drafts.shape[1]
    drafts = drafts.to(lm.device)
    tokens = torch.cat([last[:, None], drafts], dim=1)
    logits = lm.forward(tokens, None, hidden=chain.hidden).float()
    if watch is not None:
        watch.mark()
    raw = None if recorder is None else recorder.raw(logits, processed_in_place=processors is not None)
    if processors is not None:
        logits = processors(logits, drafts, 0, counts)
    nd = None if all(c == k for c in counts) else torch.tensor(counts, device=logits.device)
    vseed = chain.rng.getrandbits(62)
    method = "block" if chain.method == "traversal" else chain.method  # traversal of a chain: block verification
    if chain.sampling is None:
        res = verify(logits, drafts.to(logits.device), None, num_draft_tokens=nd, temperature=0.0, seed=vseed,
                     method=method)
    else:  # raw scores: verify warps target and draft alike
        dscores = None if scores is None else scores.to(logits.device)
        res = verify(logits, drafts.to(logits.device), dscores, num_draft_tokens=nd, seed=vseed, method=method,
                     **chain.sampling)
    # the one host synchronisation per step: stopping (EOS, length) and the caches' crop need the counts
    n_host, tok_host = res.num_accepted.tolist(), res.tokens.tolist()
    if watch is not None:
        watch.mark()
    accepted = [t[:n + 1] for t, n in zip(tok_host, n_host, strict=True)]
    drawn = res.tokens.gather(1, res.num_accepted[:, None].to(res.tokens.device))[:, 0]
    step = Step(counts, k + 1, res.num_accepted.to(lm.device), accepted, drawn.to(lm.device), raw,
                logits if recorder is not None and recorder.scores else None)
    lm.keep(step.n, step.width, max(n_host), min(n_host))
    return step, TargetStep(step.n, accepted, logits, lm.hidden)


def make_step(settings, rng: random.Random, drafter: Drafter | TreeDrafter, processors: PrefixProcessors | None,
              watch, recorder: ScoreRecorder | None) -> ChainStep | TreeStep:
    """The call's step, built once: a :class:`ChainStep`, or with ``settings.tree`` a :class:`.tree_loop.TreeStep`
    around it; the target returns its hidden states where the drafter asks for them (``wants_hidden``)."""
    chain = ChainStep(settings.sampling, rng, settings.verify_method, processors, watch, recorder,
                      bool(getattr(drafter, "wants_hidden", False)))
    return TreeStep(chain) if settings.tree else chain


def commit_rows(rows: Rows, step: Step, budget: list[int], eos: list[int], stats: GenerationStats,
                 callback, stop=None) -> list[int]:
    """Append each running row's new tokens (cut after an EOS id, after the first token where `stop` fires, and at
    its budget), count them, call `callback`.

    Parameters
    ----------
    rows : Rows
        Updated in place (``new``, ``last``).
    step : Step
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


def evict(rows: Rows, keep: list[int], lm: CachedModel, drafter: Drafter) -> None:
    """Drop the finished rows: keep only the running rows `keep` (indices into them) in `rows`, caches included."""
    if len(keep) == len(rows.ids):
        return
    idx = torch.tensor(keep, dtype=torch.long)
    rows.ids = [rows.ids[i] for i in keep]
    if rows.ids:
        lm.select(idx)
        rows.last = rows.last[idx.to(rows.last.device)]
        drafter.select_rows(idx)


def sequences(input_ids: torch.Tensor, new: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """[B, P] prompts and B lists of new tokens -> [B, P + N] (N: the longest list; the others padded)."""
    width = max(len(x) for x in new)
    tail = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in new], dtype=input_ids.dtype)
    return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def run(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings, *, processors: list,
        stop=None, callback=None) -> GenerateOutput:
    """Speculative generation with resolved options: prefill, then steps until every row is done.

    Parameters
    ----------
    target : transformers.PreTrainedModel
    draft : transformers.PreTrainedModel or PromptLookupDrafter
    input_ids, attention_mask : torch.Tensor
        [B, P] left-padded prompts and their mask (rows already repeated for num_return_sequences).
    settings : Settings
        The call's resolved options (:func:`~.settings.resolve_settings`).
    processors : list
        Logits processors applied at every position of target and draft (:class:`PrefixProcessors`).
    stop : callable, optional
        ``stop(row, new_tokens)``, asked token by token (:class:`~.stopping.StopRows`).
    callback : callable, optional
        ``callback(row, tokens)`` after every step for each row that gained tokens.
    """
    max_new, k = settings.max_new_tokens, settings.num_draft_tokens
    if max_new < 1 or input_ids.shape[0] == 0:  # nothing to add: the prompts as they are (B = 0: an empty batch)
        return GenerateOutput(input_ids.clone(), GenerationStats(), () if settings.output_scores else None,
                              () if settings.output_logits else None)
    batch = input_ids.shape[0]
    recorder = make_recorder(settings, batch)
    rng = random.Random(run_seed(settings.seed, target))
    lm, vocab = prefill(target, input_ids, attention_mask)
    schedule = make_schedule(settings.schedule, k, batch, target, draft, lm.device)
    prefix = None if not processors else PrefixProcessors(processors, input_ids,
                                                          input_ids.shape[1] + max_new + schedule.max_k + 1, lm.device)
    if settings.tree:  # a token tree per step (:mod:`.tree_loop`): the same commit, evict and stream
        check_tree_attention(target)
    drafter = start_drafter(draft, DraftCall(input_ids, attention_mask, settings, vocab, schedule.max_k, rng, prefix))
    schedule.attach(drafter)
    step_fn = make_step(settings, rng, drafter, prefix, schedule.watch, recorder)
    rows = Rows(list(range(batch)), [[] for _ in range(batch)], input_ids[:, -1].to(lm.device))
    stats = GenerationStats()
    while rows.ids:
        budget = rows.budget(max_new)
        limits = [b - 1 for b in budget]
        lengths = schedule.lengths(limits)
        if prefix is not None:
            prefix.start_step(rows.ids, rows.new)
        prefill_rows = lm.pending[0].numel() if lm.pending is not None else 0
        done = step_fn(lm, drafter, rows.last, [min(m, n) for m, n in zip(limits, lengths, strict=True)])
        schedule.observe(done, prefill_rows)
        keep = commit_rows(rows, done, budget, settings.eos_token_ids, stats, callback, stop)
        if recorder is not None:
            recorder.record(rows.ids, rows.new, done.raw, done.processed)
        schedule.select(keep)
        evict(rows, keep, lm, drafter)
    stats.draft_forwards = drafter.forwards
    scores, logits = (None, None) if recorder is None else recorder.result(settings.pad_token_id, vocab, lm.device)
    return GenerateOutput(sequences(input_ids, rows.new, settings.pad_token_id), stats, scores, logits)
