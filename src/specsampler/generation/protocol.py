"""What a step and a drafter exchange during one :func:`specsampler.generate` call: the declared protocols.

A drafter is started once per call from what the user passed as ``draft=`` (:func:`.drafters.start_drafter`, the one
factory: a model, a :class:`~.drafters.PromptLookupDrafter`, or any object with a ``start_drafter(call)`` method,
:class:`DrafterSource`). Each step (:class:`.loop.ChainStep`, :class:`.tree_loop.TreeStep`):

1. ``drafter.propose(last, limits)``: a :class:`Proposal` (a chain of drafts per row, :class:`Drafter`) or a
   :class:`TreeProposal` (a token tree per row, :class:`TreeDrafter`);
2. the target scores them in one forward and :func:`specsampler.verify` / :func:`specsampler.verify_tree` accepts;
3. ``drafter.accept(target)``: a :class:`TargetStep`, what the target computed and kept: the accepted tokens, the
   target's scores at the fed positions and, for a drafter whose ``wants_hidden`` is True, the target's last hidden
   states there (what an EAGLE-style head drafts from; tests/test_hidden_drafter.py has one);
4. ``drafter.select_rows(rows)`` when rows finish.

Only the drafter's outputs reach verification (its drafts, and the scores they were drawn from when sampled), so any
drafter keeps the output exact: greedy rows equal the target's greedy generation and sampled rows follow the
target's distribution, whatever it proposes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch

__all__ = ["DraftCall", "Drafter", "DrafterSource", "Proposal", "Step", "TargetStep", "TreeDrafter", "TreeProposal"]


class Proposal(NamedTuple):
    """One step's drafts for the running rows (a :class:`Drafter`'s).

    Attributes
    ----------
    drafts : torch.Tensor
        [B, K'] int64 draft tokens (K' <= K; a row's drafts past its count are filler).
    scores : torch.Tensor or None
        [B, K', V'] float32 raw draft scores the drafts were drawn from with :func:`specsampler.sample` (sampling with
        a draft model; verify applies the same temperature and warpers to them, giving q), else None (greedy, or
        one-hot drafts: any deterministic choice is a point mass, exact).
    counts : list of int
        B numbers of drafts to verify per row, each <= K' and <= the row's limit.
    """

    drafts: torch.Tensor
    scores: torch.Tensor | None
    counts: list[int]


class TreeProposal(NamedTuple):
    """One step's candidate trees for the running rows (a :class:`TreeDrafter`'s).

    Attributes
    ----------
    tokens, parents : torch.Tensor
        [B, N] int64 node tokens and parents in [-1, i) (breadth-first for a draft model, trie order for lookup).
    scores : torch.Tensor or None
        [B, N + 1, V'] the draft scores the children were drawn from (i.i.d. candidates), else None (point masses).
    counts : list of int
        B: the nodes each row verifies (the rest are fed as holes).
    depths : list of int
        B: the deepest path among each row's verified nodes (what a draft-length schedule's K_b bounds).
    draft_sampling : {"iid", "without_replacement"}
        How a node's children were drawn (``verify_tree``'s ``draft_sampling``; point masses: either).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    scores: torch.Tensor | None
    counts: list[int]
    depths: list[int]
    draft_sampling: str = "iid"


class TargetStep(NamedTuple):
    """What the target computed and kept at one step, handed to ``drafter.accept``.

    The fed slots S are [last, d_1..d_K'] for a chain, [last, node_0..node_{N-1}] for a tree: slot j's scores are the
    target's for the token after slot j's path.

    Attributes
    ----------
    n : torch.Tensor
        [B] int64 accepted drafts per row (a tree: the accepted path's depth), on the target's device.
    accepted : list of list of int
        B lists of n_b + 1 tokens: the accepted drafts, then the token verification drew (the next ``last``).
    logits : torch.Tensor
        [B, S, V] float32 the target's scores at the fed slots as verification saw them (logits processors applied,
        before temperature and warpers).
    hidden : torch.Tensor or None
        [B, S, H] the target's last hidden states at the fed slots (what its output layer reads), for a drafter with
        ``wants_hidden = True``; None otherwise.
    path : torch.Tensor or None
        [B, D] int64 the accepted node indices, -1 padded (trees: node i is fed slot i + 1); None for a chain, whose
        accepted slots are 0..n_b.
    """

    n: torch.Tensor
    accepted: list[list[int]]
    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    path: torch.Tensor | None = None

    def slots(self) -> torch.Tensor:
        """[B, D + 1] int64 the fed slots along each row's accepted path, slot 0 (last) first, 0 past its end."""
        if self.path is None:
            width = self.logits.shape[1]
            ar = torch.arange(width, device=self.n.device)
            return torch.where(ar[None, :] <= self.n[:, None], ar[None, :], 0)
        path = self.path.to(self.n.device)
        slots = torch.where(path >= 0, path + 1, 0)
        return torch.cat([slots.new_zeros(slots.shape[0], 1), slots], dim=1)  # (D may be 0)

    def at_end(self, values: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] values at the fed slots -> [B, ...] each row's at its last accepted slot: the slot whose scores
        drew the next ``last`` (``at_end(hidden)`` is the feature an EAGLE-style head continues from)."""
        slots = self.slots()
        end = slots.gather(1, self.n[:, None].to(slots.device))[:, 0].to(values.device)
        return values[torch.arange(values.shape[0], device=values.device), end]


@dataclass
class Step:
    """One verified step, on the host (the step's one synchronisation) and on the target's device.

    Attributes
    ----------
    counts : list of int
        B': drafts verified per row (K_b; a tree's nodes).
    width : int
        K' + 1 (a tree: N + 1), the new slots in the target cache this step.
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


class Drafter(Protocol):
    """A chain drafter during one call (state for the rows still running).

    Attributes
    ----------
    forwards : int
        Draft-model forwards so far (0 without a draft model).
    wants_hidden : bool
        Whether ``accept`` needs :attr:`TargetStep.hidden` (the target then returns its hidden states; a class
        attribute, read once when the step is built).
    """

    forwards: int
    wants_hidden: bool

    def propose(self, last: torch.Tensor, limits: list[int]) -> Proposal:
        """Drafts for every running row.

        Parameters
        ----------
        last : torch.Tensor
            [B] int64 each row's last token (in no cache yet), on the target's device.
        limits : list of int
            B: the most drafts each row can use (its remaining budget minus the token verify draws, and the
            schedule's K_b).
        """

    def accept(self, target: TargetStep) -> None:
        """Row b kept the first n_b of its drafts, then the token verify drew (``target.accepted[b]``)."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the running rows `rows` ([B'] int64 indices into the current B rows)."""


class TreeDrafter(Protocol):
    """A tree drafter during one call: :class:`Drafter` with a :class:`TreeProposal` out; ``accept`` reads the
    accepted path (:attr:`TargetStep.path`). `limits[b]` bounds row b's tree depth."""

    forwards: int
    wants_hidden: bool

    def propose(self, last: torch.Tensor, limits: list[int]) -> TreeProposal:
        """A token tree per running row, at most ``limits[b]`` levels deep."""

    def accept(self, target: TargetStep) -> None:
        """Row b kept the path ``target.path[b]``, then the token verify drew."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the running rows `rows`."""


class DraftCall(NamedTuple):
    """What a drafter is started with, once per call (:func:`.drafters.start_drafter`).

    Attributes
    ----------
    input_ids, attention_mask : torch.Tensor
        [B, P] the left-padded prompts (a drafter with its own cache feeds them, e.g. ``CachedModel.defer``).
    settings : Settings
        The call's resolved options (``settings.tree``: a :class:`TreeDrafter` is wanted; ``settings.sampling``,
        ``settings.pad_token_id``, the tree options).
    vocab : int
        The target's vocabulary size V.
    max_k : int
        The most drafts a row may get in one step (the schedule's).
    rng : random.Random
        The call's random stream: a sampling drafter seeds its own ``random.Random`` from it.
    processors : PrefixProcessors or None
        Logits processors a drafter with scores applies before choosing (as the draft model does).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    settings: object
    vocab: int
    max_k: int
    rng: random.Random
    processors: object = None


@runtime_checkable
class DrafterSource(Protocol):
    """What ``generate(target, draft=...)`` takes besides a model: an object that starts a drafter per call."""

    def start_drafter(self, call: DraftCall) -> Drafter | TreeDrafter:
        """The call's drafter, prefilled with ``call.input_ids``: a :class:`TreeDrafter` when ``call.settings.tree``
        (raise a ValueError naming the option if it has none), else a :class:`Drafter`."""
