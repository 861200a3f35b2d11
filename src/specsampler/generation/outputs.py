"""transformers' per-token outputs of ``generate``: ``scores`` (``output_scores``) and ``logits`` (``output_logits``).

For a decoder-only model ``model.generate(..., return_dict_in_generate=True)`` returns one entry per new token, each a
[B, V] float32 tensor: ``scores``, the scores the token was chosen from (the logits processors applied, then, when
sampling, the warpers: temperature divides, top-k / top-p / min-p set the removed ids to -inf), and ``logits``, the
target's raw scores at that position. A speculative step scores K + 1 positions of each row and keeps n_b + 1 of them
(fewer at an EOS id, a stopping criterion or the row's budget): :class:`ScoreRecorder` keeps the scores of exactly
the kept positions, row by row, and assembles the tuples at the end.

The warpers are transformers' own classes (``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``,
``MinPLogitsWarper``, in ``model.generate``'s order), applied to the processed scores of the kept positions only;
``renormalize_logits`` adds transformers' final log-softmax. Nothing is recorded, cloned or warped unless asked for.

Rows shorter than the longest (an EOS id, a stopping criterion) hold pad_token_id in ``sequences`` past their end, as
in transformers; their entries there are filled with 0 at pad_token_id and -inf elsewhere (transformers, which keeps
finished rows in its batch, returns the scores its forward gave them there instead).
"""

from __future__ import annotations

import torch

from .options import warpers_of  # (kept importable here: what the recorder applies)

__all__ = ["ScoreRecorder", "make_recorder", "warpers_of"]


class ScoreRecorder:
    """The scores and / or raw logits of every kept token, per row, for :func:`~.loop.run`.

    Parameters
    ----------
    batch : int
        B, the rows of the call.
    scores, logits : bool
        Record the processed (and warped) scores, the raw logits.
    warpers : list
        transformers' warpers applied to the processed scores (:func:`warpers_of`).
    renormalize : bool
        ``renormalize_logits``: a log-softmax after the warpers, as transformers' ``LogitNormalization``.
    """

    def __init__(self, batch: int, scores: bool, logits: bool, warpers: list, renormalize: bool = False):
        self.scores, self.logits = scores, logits
        self.warpers, self.renormalize = warpers, renormalize
        self.kept: list[int] = [0] * batch  # tokens recorded per row
        self.rows_scores: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        self.rows_logits: list[list[torch.Tensor]] = [[] for _ in range(batch)]

    def raw(self, logits: torch.Tensor, processed_in_place: bool) -> torch.Tensor | None:
        """The step's [B', K+1, V] raw logits to keep (a copy when the processors will update `logits` in place);
        None unless logits are recorded."""
        if not self.logits:
            return None
        return logits.clone() if processed_in_place else logits

    def record(self, ids: list[int], new: list[list[int]], raw: torch.Tensor | None,
               processed: torch.Tensor | None) -> None:
        """Keep the scores of the tokens each running row gained this step.

        Parameters
        ----------
        ids : list of int
            B': each running row's index in the batch (the rows of this step, before eviction).
        new : list of list of int
            Every row's new tokens, this step's included (:class:`~.loop.Rows`).
        raw, processed : torch.Tensor or None
            [B', K+1, V] the step's raw logits and processed scores (position j: row i's j-th token of the step).
        """
        gained = [len(new[r]) - self.kept[r] for r in ids]
        if sum(gained) == 0:
            return
        dev = (processed if processed is not None else raw).device
        i_t = torch.tensor([i for i, g in enumerate(gained) for _ in range(g)], device=dev)
        j_t = torch.tensor([j for g in gained for j in range(g)], device=dev)
        if self.scores:
            self._keep(self.rows_scores, ids, gained, self._warp(processed[i_t, j_t]))
        if self.logits:
            self._keep(self.rows_logits, ids, gained, raw[i_t, j_t])
        for r, g in zip(ids, gained, strict=True):
            self.kept[r] += g

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        for warper in self.warpers:
            x = warper(None, x)
        return x.log_softmax(dim=-1) if self.renormalize else x

    @staticmethod
    def _keep(store: list[list[torch.Tensor]], ids: list[int], gained: list[int], flat: torch.Tensor) -> None:
        for r, part in zip(ids, flat.split(gained), strict=True):
            if part.shape[0]:
                store[r].append(part)

    def result(self, pad_token_id: int, vocab: int, device: torch.device) -> tuple[tuple | None, tuple | None]:
        """(scores, logits): each None when not recorded, else N tensors [B, V] (N: the longest row's new tokens),
        finished rows' entries filled with 0 at `pad_token_id` and -inf elsewhere."""
        width = max(self.kept, default=0)
        fill = torch.full((vocab,), float("-inf"), device=device)
        fill[pad_token_id] = 0.0
        return (self._stack(self.rows_scores, width, fill) if self.scores else None,
                self._stack(self.rows_logits, width, fill) if self.logits else None)

    @staticmethod
    def _stack(store: list[list[torch.Tensor]], width: int, fill: torch.Tensor) -> tuple:
        rows = []
        for parts in store:
            row = torch.cat(parts) if parts else fill[:0].reshape(0, fill.shape[0])
            rows.append(torch.cat([row, fill.expand(width - row.shape[0], -1)]))
        if not rows or width == 0:
            return ()
        return torch.stack(rows, dim=1).contiguous().unbind(0)  # [N, B, V]: each entry one contiguous [B, V]


def make_recorder(settings, batch: int) -> ScoreRecorder | None:
    """The recorder a call's settings ask for (``output_scores`` / ``output_logits``), None otherwise."""
    if not (settings.output_scores or settings.output_logits):
        return None
    renormalize = bool(settings.options.get("renormalize_logits", (False, "default"))[0])
    return ScoreRecorder(batch, settings.output_scores, settings.output_logits, warpers_of(settings.sampling),
                         renormalize)
