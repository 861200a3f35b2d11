"""Stopping criteria checked token by token: transformers' own, called on each row's sequence as ``model.generate``
calls them."""

from __future__ import annotations

import torch

__all__ = ["StopRows", "stopping_criteria"]


def stopping_criteria(stopping_criteria, stop_strings, max_time, tokenizer) -> list:
    """The criteria a row is checked against token by token: the caller's, then MaxTimeCriteria and
    StopStringCriteria as transformers builds them from `max_time` and `stop_strings`."""
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


class StopRows:
    """``stop(row, new_tokens)``: whether any criterion fires on the row's sequence (its prompt, left padding kept,
    then `new_tokens`, all its new tokens so far), called as transformers calls them with a [1, L] sequence and
    ``scores=None``.

    Each row's sequence lives in one preallocated [B, P + max_new_tokens] tensor on the prompts' device; a call writes
    only the tokens the row gained since its last call and hands the criteria a view, so a check costs the same at
    every length (a new tensor per token would make a row's checks quadratic in its length).

    Parameters
    ----------
    input_ids : torch.Tensor
        [B, P] the prompts (left padded), rows in output order.
    criteria : list
        transformers ``StoppingCriteria`` (anything called as ``crit(input_ids, scores)``).
    max_new_tokens : int
        The most new tokens of a row.
    """

    def __init__(self, input_ids: torch.Tensor, criteria: list, max_new_tokens: int):
        self.criteria = list(criteria)
        batch, self.width = input_ids.shape
        self.seq = torch.empty(batch, self.width + max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
        self.seq[:, :self.width] = input_ids
        self.written = [0] * batch  # new tokens of each row in `seq`

    def __call__(self, row: int, new_tokens: list[int]) -> bool:
        have, length = self.written[row], len(new_tokens)
        if length > have:
            start = self.width + have
            self.seq[row, start:self.width + length] = torch.tensor(new_tokens[have:], dtype=self.seq.dtype)
            self.written[row] = length
        seq = self.seq[row:row + 1, :self.width + length]
        for crit in self.criteria:
            fired = crit(seq, None)
            if bool(fired.reshape(-1)[0]) if isinstance(fired, torch.Tensor) else bool(fired):
                return True
        return False
