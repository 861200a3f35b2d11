"""The speculative decoding loop of :func:`specsampler.generate`, once its options are resolved.

One step, for every unfinished row b at once (gpt-fast's loop, batched):

1. the drafter proposes K_b <= K tokens d_1..d_K (a draft model: K single-token forwards, sampling each d_i from its
   warped distribution q_i; the prompt-lookup drafter: an n-gram match, one-hot q);
2. the target runs one forward over [last, d_1..d_K] and gives K+1 rows of scores;
3. :func:`specsampler.verify` accepts n_b drafts and draws one more token: row b gains n_b + 1 tokens (token or
   block verification, ``verify_method``; with ``output_scores`` / ``output_logits`` a :mod:`.outputs` recorder
   keeps the scores of the positions kept).

:func:`run` prefills (:func:`prefill`; each model holds its prompt, fed in front of its first forward, as
transformers' assisted generation does: one forward fewer per model) and loops over :func:`step` (steps 1-3, then
both caches trimmed to what each row accepted: holes, :mod:`.kv_cache`) and :func:`commit_rows` (append, EOS,
stopping criteria, length) with :func:`evict` (finished rows leave the batch). The schedule (:mod:`.schedules`) sets
K_b before each step. With ``draft_tree`` or ``prompt_lookup_num_candidates`` > 1 a step verifies a token tree
instead (:func:`.tree_loop.tree_step`, the same :class:`Step` out).

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
from .drafters import Drafter, Proposal, start_drafter
from .kv_cache import CachedModel, check_tree_attention
from .outputs import ScoreRecorder, make_recorder
from .processors import PrefixProcessors
from .schedules import make_schedule

__all__ = ["GenerateOutput", "GenerationStats", "run"]


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


@dataclass
class Step:
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
    raw, processed : torch.Tensor or None
        [B', K'+1, V] float32 the target's raw scores and the processed ones (logits processors applied), kept only
        for a :class:`~.outputs.ScoreRecorder` (output_logits, output_scores).
    depths : list of int or None
        B': a token tree's deepest proposed path per row (what a schedule's K_b bounds); None for a chain, whose
        depths are its counts (:attr:`levels`).
    """

    counts: list[int]
    width: int
    n: torch.Tensor
    accepted: list[list[int]]
    last: torch.Tensor
    raw: torch.Tensor | None = None
    processed: torch.Tensor | None = None
    depths: list[int] | None = None

    @property
    def levels(self) -> list[int]:
        """B': the drafts each row proposed in sequence (a chain's counts, a tree's depths): what schedules see."""
        return self.counts if self.depths is None else self.depths


def prefill(target, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[CachedModel, int]:
    """The target and its cache, holding [B, P - 1] prompts for its first forward (the first step feeds them in front
    of the last prompt token and the drafts), and its vocabulary size V (its output layer's rows)."""
    lm = CachedModel(target, input_ids.shape[0])
    head = target.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else target.config.get_text_config().vocab_size
    lm.defer(input_ids[:, :-1], attention_mask[:, :-1])
    return lm, vocab


def step(lm: CachedModel, drafter: Drafter, last: torch.Tensor, limits: list[int], sampling: dict | None,
          rng: random.Random, processors: PrefixProcessors | None = None, watch=None, method: str = "token",
          recorder: ScoreRecorder | None = None) -> Step:
    """Draft, score [last, d_1..d_K'] with the target, verify, and trim both caches to what each row accepted.

    Parameters
    ----------
    lm : CachedModel
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
    watch : Stopwatch, optional
        Marks the start, the drafts proposed, the target's forward done and the step's synchronisation (the "cost"
        schedule's measurements).
    method : {"token", "block"}
        :func:`specsampler.verify`'s ``method`` (greedy rows are the same either way).
    recorder : ScoreRecorder, optional
        Asks for the step's raw and processed scores (:attr:`Step.raw`, :attr:`Step.processed`).

    Returns
    -------
    Step
    """
    if watch is not None:
        watch.mark()
    proposal = drafter.propose(last, limits)
    if watch is not None:
        watch.mark()
    out = verify_chain(lm, proposal, last, sampling, rng, processors, watch, method, recorder)
    drafter.accept(out.n, out.accepted)
    return out


def verify_chain(lm: CachedModel, proposal: Proposal, last: torch.Tensor, sampling: dict | None, rng: random.Random,
                 processors: PrefixProcessors | None = None, watch=None, method: str = "token",
                 recorder: ScoreRecorder | None = None) -> Step:
    """The rest of :func:`step` once the drafts are proposed: score [last, d_1..d_K'] with the target, verify, keep in
    the target's cache what each row accepted (the drafter's cache is the caller's: ``drafter.accept``). `watch`
    marks the forward done and the synchronisation; the other arguments are :func:`step`'s."""
    drafts, scores, counts = proposal
    k = drafts.shape[1]
    drafts = drafts.to(lm.device)
    tokens = torch.cat([last[:, None], drafts], dim=1)
    logits = lm.forward(tokens, None).float()
    if watch is not None:
        watch.mark()
    raw = None if recorder is None else recorder.raw(logits, processed_in_place=processors is not None)
    if processors is not None:
        logits = processors(logits, drafts, 0, counts)
    nd = None if all(c == k for c in counts) else torch.tensor(counts, device=logits.device)
    vseed = rng.getrandbits(62)
    method = "block" if method == "traversal" else method  # traversal verification of a chain is block verification
    if sampling is None:
        res = verify(logits, drafts.to(logits.device), None, num_draft_tokens=nd, temperature=0.0, seed=vseed,
                     method=method)
    else:  # raw scores: verify warps target and draft alike
        dscores = None if scores is None else scores.to(logits.device)
        res = verify(logits, drafts.to(logits.device), dscores, num_draft_tokens=nd, seed=vseed, method=method,
                     **sampling)
    # the one host synchronisation per step: stopping (EOS, length) and the caches' crop need the counts
    n_host, tok_host = res.num_accepted.tolist(), res.tokens.tolist()
    if watch is not None:
        watch.mark()
    accepted = [t[:n + 1] for t, n in zip(tok_host, n_host, strict=True)]
    drawn = res.tokens.gather(1, res.num_accepted[:, None].to(res.tokens.device))[:, 0]
    step = Step(counts, k + 1, res.num_accepted.to(lm.device), accepted, drawn.to(lm.device), raw,
                logits if recorder is not None and recorder.scores else None)
    lm.keep(step.n, step.width, max(n_host), min(n_host))
    return step


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
        from .tree_loop import start_tree_drafter, tree_step

        check_tree_attention(target)
        drafter = start_tree_drafter(draft, input_ids, attention_mask, settings, vocab, rng, prefix, schedule.max_k)
        step_fn = tree_step
    else:
        drafter, step_fn = start_drafter(draft, input_ids, attention_mask, schedule.max_k, vocab, settings.sampling,
                                         rng, settings.pad_token_id, prefix), step
    rows = Rows(list(range(batch)), [[] for _ in range(batch)], input_ids[:, -1].to(lm.device))
    stats = GenerationStats()
    while rows.ids:
        budget = rows.budget(max_new)
        limits = [b - 1 for b in budget]
        lengths = schedule.lengths(limits)
        if prefix is not None:
            prefix.start_step(rows.ids, rows.new)
        prefill_rows = lm.pending[0].numel() if lm.pending is not None else 0
        done = step_fn(lm, drafter, rows.last, [min(m, n) for m, n in zip(limits, lengths, strict=True)],
                    settings.sampling, rng, prefix, schedule.watch, settings.verify_method, recorder)
        schedule.observe(done, prefill_rows)
        keep = commit_rows(rows, done, budget, settings.eos_token_ids, stats, callback, stop)
        if recorder is not None:
            recorder.record(rows.ids, rows.new, done.raw, done.processed)
        schedule.select(keep)
        evict(rows, keep, lm, drafter)
    stats.draft_forwards = drafter.forwards
    scores, logits = (None, None) if recorder is None else recorder.result(settings.pad_token_id, vocab, lm.device)
    return GenerateOutput(sequences(input_ids, rows.new, settings.pad_token_id), stats, scores, logits)
